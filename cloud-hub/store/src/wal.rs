//! The Raft log's own files: segments of checksummed records, appended with plain writes and
//! made durable by one fdatasync for every group of appends.
//!
//! The log used to live in the redb file beside the objects. Every durable redb commit is
//! two-phase in quick-repair mode (two fdatasyncs) and rewrites B-tree and allocator pages, and
//! a write paid one such commit on the leader and another on each follower before its 2xx. An
//! append-only file pays one fdatasync for a whole group of appends and writes only the new
//! bytes, as etcd's WAL does. Hand-written rather than a crate: raft-engine (TiKV) brings its
//! own compression, protobuf and thread pools for what is here a few hundred lines, and the
//! small WAL crates are unmaintained.
//!
//! Layout: `dir/NNNNNNNNNNNNNNNNNNNN.wal`, segment numbers increasing. A segment starts with
//! [`SEGMENT_MAGIC`] and [`WAL_FORMAT_VERSION`] (u32 LE), then records:
//! `body length (u32 LE) | crc32 of the body (u32 LE) | body`, a body being one kind byte and
//! its payload:
//! - `ENTRY`: log index (u64 LE), then the encoded entry. An entry replaces every entry at or
//!   after its index (Raft appends only ever extend or overwrite a suffix);
//! - `TRUNCATE`: the first index removed (u64 LE);
//! - `PURGE`: the last index removed (u64 LE), then the encoded last purged log id;
//! - `VOTE`, `COMMITTED`: the encoded record; the latest one wins.
//!
//! Reading the segments in order rebuilds the state. A new segment starts with the current
//! vote, committed id and purge point, so deleting the segments a purge left without live
//! entries never loses them. Recovery truncates a torn record at the end of the last segment
//! (a crash during a write); a bad record anywhere else is corruption and refuses to open.
//!
//! Writes are serialised by one mutex; `sync` runs outside it, so appends go on during an
//! fdatasync. A failed write or fdatasync poisons the log: after a failed fdatasync the kernel
//! may have dropped the dirty pages, so nothing written since can be trusted (PostgreSQL's
//! "fsyncgate"), and openraft stops the node on the error.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"FLOTWAL\0";
/// Version of the segment and record layout above (not of the encoded entries, which carry the
/// `db::RECORD_FORMAT_VERSION` envelope).
pub(crate) const WAL_FORMAT_VERSION: u32 = 1;
const HEADER_LEN: u64 = 12;
const RECORD_HEADER_LEN: usize = 8;
/// A segment is closed and a new one started once it passes this size.
/// Segments are deleted whole once purged, so this is also how much dead log a hub may keep.
pub(crate) const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// The largest record body: one entry of the largest command with openraft's framing. A length
/// above it in a file is a torn or corrupt record, never an allocation.
pub(crate) const MAX_RECORD_BODY: usize = crate::MAX_COMMAND_BYTES + 64 * 1024;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_VOTE: u8 = 4;
const KIND_COMMITTED: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WalError {
    #[error("raft log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "raft log segment {path} is corrupt at byte {offset}: {why}; restore this hub from a \
         backup or remove it from the cluster and join it again"
    )]
    Corrupt { path: String, offset: u64, why: String },
    #[error(
        "raft log segment {path} has format version {found}, this build reads {supported}: use a matching hub version"
    )]
    UnsupportedFormat { path: String, found: u32, supported: u32 },
    #[error("a raft log record of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("the raft log failed earlier and takes no more writes: {0}")]
    Failed(String),
}

fn io_err(path: &Path, source: io::Error) -> WalError {
    WalError::Io { path: path.display().to_string(), source }
}

/// Where one entry's record starts.
#[derive(Debug, Clone, Copy)]
struct Location {
    segment: u64,
    offset: u64,
    body_len: u32,
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// The highest entry index written to this segment (an upper bound after truncations).
    max_index: Option<u64>,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    active: u64,
    entries: BTreeMap<u64, Location>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
    failed: Option<String>,
    scratch: Vec<u8>,
}

/// What recovery found, for the hub's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub n_segments: usize,
    pub n_entries: usize,
    /// Bytes of a torn record cut from the end of the last segment.
    pub n_torn_bytes: u64,
}

pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

/// Appends one framed record to `buf`.
fn push_record(buf: &mut Vec<u8>, kind: u8, head: &[u8], payload: &[u8]) -> Result<(), WalError> {
    let body_len = 1 + head.len() + payload.len();
    if body_len > MAX_RECORD_BODY {
        return Err(WalError::TooLarge(body_len));
    }
    let start = buf.len();
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind);
    buf.extend_from_slice(head);
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn segment_header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    h
}

/// One record read back from a segment.
enum Record<'a> {
    Entry(u64, &'a [u8]),
    Truncate(u64),
    Purge(u64, &'a [u8]),
    Vote(&'a [u8]),
    Committed(&'a [u8]),
}

fn read_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

fn parse_body(body: &[u8]) -> Result<Record<'_>, String> {
    let (&kind, payload) = body.split_first().ok_or("empty record")?;
    let short = || format!("record of kind {kind} is too short");
    Ok(match kind {
        KIND_ENTRY => {
            let (index, rest) = read_u64(payload).ok_or_else(short)?;
            Record::Entry(index, rest)
        }
        KIND_TRUNCATE => Record::Truncate(read_u64(payload).ok_or_else(short)?.0),
        KIND_PURGE => {
            let (index, rest) = read_u64(payload).ok_or_else(short)?;
            Record::Purge(index, rest)
        }
        KIND_VOTE => Record::Vote(payload),
        KIND_COMMITTED => Record::Committed(payload),
        other => return Err(format!("unknown record kind {other} (written by a newer hub?)")),
    })
}

/// The record at `bytes[pos..]`: `Ok(Some((body, next)))`, `Ok(None)` when torn or unreadable
/// (a short tail, an impossible length, a checksum mismatch).
fn next_record(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = &bytes[pos..];
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let (crc, rest) = rest.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if len == 0 || len > MAX_RECORD_BODY || rest.len() < len {
        return None;
    }
    let body = &rest[..len];
    (crc32fast::hash(body) == u32::from_le_bytes(*crc)).then_some((body, pos + RECORD_HEADER_LEN + len))
}

impl State {
    fn check(&self) -> Result<(), WalError> {
        match &self.failed {
            Some(why) => Err(WalError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn active(&mut self) -> &mut Segment {
        self.segments.get_mut(&self.active).expect("the active segment is always open")
    }

    fn drop_from(&mut self, first_removed: u64) {
        drop(self.entries.split_off(&first_removed));
    }

    fn replay(&mut self, segment: u64, offset: u64, body_len: u32, record: Record<'_>) {
        match record {
            Record::Entry(index, _) => {
                self.drop_from(index);
                self.entries.insert(index, Location { segment, offset, body_len });
                if let Some(seg) = self.segments.get_mut(&segment) {
                    seg.max_index = Some(seg.max_index.map_or(index, |m| m.max(index)));
                }
            }
            Record::Truncate(first_removed) => self.drop_from(first_removed),
            Record::Purge(last_removed, log_id) => {
                self.entries = self.entries.split_off(&last_removed.saturating_add(1));
                self.purged = Some((last_removed, log_id.to_vec()));
            }
            Record::Vote(v) => self.vote = Some(v.to_vec()),
            Record::Committed(c) => self.committed = Some(c.to_vec()),
        }
    }

    /// Writes `self.scratch` at the end of the active segment. On failure the segment is cut
    /// back to where it was, and the log refuses further writes.
    fn write_scratch(&mut self) -> Result<u64, WalError> {
        self.check()?;
        let buf = std::mem::take(&mut self.scratch);
        let seg = self.active();
        let at = seg.len;
        let result = seg.file.write_all_at(&buf, at);
        let result = match result {
            Ok(()) => {
                seg.len += buf.len() as u64;
                Ok(at)
            }
            Err(e) => {
                let _ = seg.file.set_len(at);
                let err = io_err(&seg.path, e);
                self.failed = Some(err.to_string());
                Err(err)
            }
        };
        self.scratch = buf;
        self.scratch.clear();
        result
    }

    fn fail(&mut self, err: WalError) -> WalError {
        if self.failed.is_none() {
            self.failed = Some(err.to_string());
        }
        err
    }
}

impl Wal {
    /// Opens the log in `dir`, creating it when missing, and recovers its state.
    pub(crate) fn open(dir: &Path) -> Result<(Wal, Recovery), WalError> {
        Wal::open_with(dir, SEGMENT_BYTES)
    }

    pub(crate) fn open_with(dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovery), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let item = item.map_err(|e| io_err(dir, e))?;
            if let Some(seq) = item.file_name().to_str().and_then(parse_segment_name) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut state = State {
            segments: BTreeMap::new(),
            active: 0,
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
            failed: None,
            scratch: Vec::new(),
        };
        let mut n_torn_bytes = 0;
        if seqs.is_empty() {
            let seg = create_segment(dir, 1, &[])?;
            state.segments.insert(1, seg);
            state.active = 1;
        }
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            let path = segment_path(dir, seq);
            let mut file =
                OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io_err(&path, e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| io_err(&path, e))?;
            let corrupt = |offset: u64, why: String| WalError::Corrupt {
                path: path.display().to_string(),
                offset,
                why,
            };
            let header_ok = bytes.len() >= HEADER_LEN as usize && bytes[..8] == SEGMENT_MAGIC[..];
            if !header_ok {
                // A crash while a new segment was being started leaves it short: start it again.
                if is_last && bytes.len() < HEADER_LEN as usize {
                    n_torn_bytes += bytes.len() as u64;
                    file.set_len(0).map_err(|e| io_err(&path, e))?;
                    file.write_all_at(&segment_header(), 0).map_err(|e| io_err(&path, e))?;
                    file.sync_data().map_err(|e| io_err(&path, e))?;
                    state.segments.insert(
                        seq,
                        Segment { path, file: Arc::new(file), len: HEADER_LEN, max_index: None },
                    );
                    state.active = seq;
                    continue;
                }
                return Err(corrupt(0, "no segment header".to_string()));
            }
            let version = u32::from_le_bytes(bytes[8..12].try_into().expect("four bytes"));
            if version != WAL_FORMAT_VERSION {
                return Err(WalError::UnsupportedFormat {
                    path: path.display().to_string(),
                    found: version,
                    supported: WAL_FORMAT_VERSION,
                });
            }
            state
                .segments
                .insert(seq, Segment { path: path.clone(), file: Arc::new(file), len: 0, max_index: None });
            let mut pos = HEADER_LEN as usize;
            while pos < bytes.len() {
                let Some((body, next)) = next_record(&bytes, pos) else {
                    if !is_last {
                        return Err(corrupt(pos as u64, "unreadable record".to_string()));
                    }
                    break;
                };
                let record = parse_body(body).map_err(|why| corrupt(pos as u64, why))?;
                state.replay(seq, pos as u64, body.len() as u32, record);
                pos = next;
            }
            let seg = state.segments.get_mut(&seq).expect("inserted above");
            seg.len = pos as u64;
            if pos < bytes.len() {
                n_torn_bytes += (bytes.len() - pos) as u64;
                tracing::warn!(
                    segment = %path.display(),
                    offset = pos,
                    n_bytes = bytes.len() - pos,
                    "cutting a torn record from the end of the raft log"
                );
                seg.file.set_len(pos as u64).map_err(|e| io_err(&path, e))?;
                seg.file.sync_data().map_err(|e| io_err(&path, e))?;
            }
            state.active = seq;
        }
        let recovery =
            Recovery { n_segments: state.segments.len(), n_entries: state.entries.len(), n_torn_bytes };
        Ok((Wal { dir: dir.to_path_buf(), segment_bytes, state: Mutex::new(state) }, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends entries `(index, encoded entry)`, readable at once, durable after the next
    /// [`Wal::sync`].
    pub(crate) fn append<'a>(
        &self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), WalError> {
        let mut state = self.lock();
        state.check()?;
        if state.active().len >= self.segment_bytes {
            self.rotate(&mut state)?;
        }
        let mut scratch = std::mem::take(&mut state.scratch);
        let mut placed = Vec::new();
        for (index, bytes) in entries {
            let offset = scratch.len() as u64;
            push_record(&mut scratch, KIND_ENTRY, &index.to_le_bytes(), bytes)?;
            placed.push((index, offset, (scratch.len() as u64 - offset) as u32 - RECORD_HEADER_LEN as u32));
        }
        state.scratch = scratch;
        if placed.is_empty() {
            return Ok(());
        }
        let at = state.write_scratch()?;
        let segment = state.active;
        for (index, offset, body_len) in placed {
            state.drop_from(index);
            state.entries.insert(index, Location { segment, offset: at + offset, body_len });
            let seg = state.active();
            seg.max_index = Some(seg.max_index.map_or(index, |m| m.max(index)));
        }
        Ok(())
    }

    /// Closes the active segment (durably) and starts the next, which begins with the current
    /// vote, committed id and purge point.
    fn rotate(&self, state: &mut State) -> Result<(), WalError> {
        let old = state.active();
        if let Err(e) = old.file.sync_data() {
            let err = io_err(&old.path, e);
            return Err(state.fail(err));
        }
        let mut meta = Vec::new();
        if let Some(v) = &state.vote {
            push_record(&mut meta, KIND_VOTE, &[], v)?;
        }
        if let Some(c) = &state.committed {
            push_record(&mut meta, KIND_COMMITTED, &[], c)?;
        }
        if let Some((index, log_id)) = &state.purged {
            push_record(&mut meta, KIND_PURGE, &index.to_le_bytes(), log_id)?;
        }
        let seq = state.active + 1;
        let seg = create_segment(&self.dir, seq, &meta).map_err(|e| state.fail(e))?;
        state.segments.insert(seq, seg);
        state.active = seq;
        Ok(())
    }

    /// Makes every earlier append and record durable.
    pub(crate) fn sync(&self) -> Result<(), WalError> {
        let (file, path) = {
            let mut state = self.lock();
            state.check()?;
            let seg = state.active();
            (seg.file.clone(), seg.path.clone())
        };
        // Earlier segments were synced when they were closed.
        if let Err(e) = file.sync_data() {
            let err = io_err(&path, e);
            return Err(self.lock().fail(err));
        }
        Ok(())
    }

    fn write_record(&self, kind: u8, head: &[u8], payload: &[u8], durable: bool) -> Result<(), WalError> {
        {
            let mut state = self.lock();
            state.check()?;
            let mut scratch = std::mem::take(&mut state.scratch);
            let pushed = push_record(&mut scratch, kind, head, payload);
            state.scratch = scratch;
            pushed?;
            state.write_scratch()?;
        }
        if durable { self.sync() } else { Ok(()) }
    }

    /// Records the vote, durably.
    pub(crate) fn save_vote(&self, vote: &[u8]) -> Result<(), WalError> {
        self.write_record(KIND_VOTE, &[], vote, true)?;
        self.lock().vote = Some(vote.to_vec());
        Ok(())
    }

    /// Records the committed log id; durable with the next sync.
    pub(crate) fn save_committed(&self, committed: &[u8]) -> Result<(), WalError> {
        self.write_record(KIND_COMMITTED, &[], committed, false)?;
        self.lock().committed = Some(committed.to_vec());
        Ok(())
    }

    /// Removes every entry at or after `first_removed`, durably.
    pub(crate) fn truncate_from(&self, first_removed: u64) -> Result<(), WalError> {
        self.write_record(KIND_TRUNCATE, &first_removed.to_le_bytes(), &[], true)?;
        self.lock().drop_from(first_removed);
        Ok(())
    }

    /// Removes every entry up to `last_removed` included, durably, recording `log_id` as the
    /// last purged, and deletes the segments left with no live entry.
    pub(crate) fn purge_through(&self, last_removed: u64, log_id: &[u8]) -> Result<(), WalError> {
        self.write_record(KIND_PURGE, &last_removed.to_le_bytes(), log_id, true)?;
        let mut removed = Vec::new();
        {
            let mut state = self.lock();
            state.entries = state.entries.split_off(&last_removed.saturating_add(1));
            state.purged = Some((last_removed, log_id.to_vec()));
            let active = state.active;
            while let Some((&seq, seg)) = state.segments.first_key_value() {
                if seq == active || seg.max_index.is_some_and(|m| m > last_removed) {
                    break;
                }
                removed.push(seg.path.clone());
                state.segments.remove(&seq);
            }
        }
        if !removed.is_empty() {
            for path in &removed {
                std::fs::remove_file(path).map_err(|e| io_err(path, e))?;
            }
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Entries with `start <= index < end` (`end == None`: to the last), in index order.
    pub(crate) fn read(&self, start: u64, end: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let wanted: Vec<(u64, Location, Arc<File>, PathBuf)> = {
            let state = self.lock();
            let range = match end {
                Some(end) => state.entries.range(start..end),
                None => state.entries.range(start..),
            };
            range
                .map(|(&index, &loc)| {
                    let seg = &state.segments[&loc.segment];
                    (index, loc, seg.file.clone(), seg.path.clone())
                })
                .collect()
        };
        wanted
            .into_iter()
            .map(|(index, loc, file, path)| Ok((index, read_entry(&file, &path, index, loc)?)))
            .collect()
    }

    /// The highest index held, with its encoded entry.
    pub(crate) fn last(&self) -> Result<Option<(u64, Vec<u8>)>, WalError> {
        let found = {
            let state = self.lock();
            state.entries.last_key_value().map(|(&index, &loc)| {
                let seg = &state.segments[&loc.segment];
                (index, loc, seg.file.clone(), seg.path.clone())
            })
        };
        found.map(|(index, loc, file, path)| Ok((index, read_entry(&file, &path, index, loc)?))).transpose()
    }

    pub(crate) fn vote(&self) -> Option<Vec<u8>> {
        self.lock().vote.clone()
    }

    pub(crate) fn committed(&self) -> Option<Vec<u8>> {
        self.lock().committed.clone()
    }

    /// The last purged index and its encoded log id.
    pub(crate) fn purged(&self) -> Option<(u64, Vec<u8>)> {
        self.lock().purged.clone()
    }
}

fn read_entry(file: &File, path: &Path, index: u64, loc: Location) -> Result<Vec<u8>, WalError> {
    let mut buf = vec![0; RECORD_HEADER_LEN + loc.body_len as usize];
    file.read_exact_at(&mut buf, loc.offset).map_err(|e| io_err(path, e))?;
    let corrupt = |why: &str| WalError::Corrupt {
        path: path.display().to_string(),
        offset: loc.offset,
        why: why.to_string(),
    };
    let Some((body, _)) = next_record(&buf, 0) else {
        return Err(corrupt("the record no longer matches its checksum"));
    };
    match parse_body(body) {
        Ok(Record::Entry(found, bytes)) if found == index => Ok(bytes.to_vec()),
        _ => Err(corrupt("the record is not the entry the index points to")),
    }
}

/// Creates segment `seq` with its header and `records`, durably (file and directory).
fn create_segment(dir: &Path, seq: u64, records: &[u8]) -> Result<Segment, WalError> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    let mut bytes = segment_header().to_vec();
    bytes.extend_from_slice(records);
    file.write_all_at(&bytes, 0).map_err(|e| io_err(&path, e))?;
    file.sync_data().map_err(|e| io_err(&path, e))?;
    sync_dir(dir)?;
    Ok(Segment { path, file: Arc::new(file), len: bytes.len() as u64, max_index: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
        wal.read(0, None).unwrap()
    }

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}").into_bytes()
    }

    fn append_range(wal: &Wal, range: std::ops::Range<u64>) {
        let data: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i))).collect();
        wal.append(data.iter().map(|(i, b)| (*i, b.as_slice()))).unwrap();
    }

    #[test]
    fn golden_segment_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        wal.append([(7, &b"ab"[..])]).unwrap();
        wal.save_vote(b"v").unwrap();
        drop(wal);
        let bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        let body = [1, 7, 0, 0, 0, 0, 0, 0, 0, b'a', b'b'];
        let mut want = b"FLOTWAL\0\x01\0\0\0".to_vec();
        want.extend_from_slice(&(body.len() as u32).to_le_bytes());
        want.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        want.extend_from_slice(&body);
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&crc32fast::hash(&[4, b'v']).to_le_bytes());
        want.extend_from_slice(&[4, b'v']);
        assert_eq!(bytes, want);
    }

    #[test]
    fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, recovery) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovery, Recovery { n_segments: 1, n_entries: 0, n_torn_bytes: 0 });
        append_range(&wal, 1..11);
        wal.save_vote(b"vote-1").unwrap();
        wal.save_committed(b"c-5").unwrap();
        wal.truncate_from(8).unwrap();
        append_range(&wal, 8..9);
        wal.purge_through(3, b"p-3").unwrap();
        wal.sync().unwrap();
        let before = entries(&wal);
        assert_eq!(before.iter().map(|e| e.0).collect::<Vec<_>>(), (4..9).collect::<Vec<_>>());
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovery.n_entries, 5);
        assert_eq!(entries(&wal), before);
        assert_eq!(wal.vote().as_deref(), Some(&b"vote-1"[..]));
        assert_eq!(wal.committed().as_deref(), Some(&b"c-5"[..]));
        assert_eq!(wal.purged(), Some((3, b"p-3".to_vec())));
        assert_eq!(wal.last().unwrap(), Some((8, payload(8))));
        assert_eq!(wal.read(5, Some(7)).unwrap().iter().map(|e| e.0).collect::<Vec<_>>(), vec![5, 6]);
        assert!(wal.read(7, Some(7)).unwrap().is_empty());
    }

    #[test]
    fn an_append_replaces_the_suffix_it_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        append_range(&wal, 1..6);
        wal.append([(3, &b"new-3"[..])]).unwrap();
        let want = vec![(1, payload(1)), (2, payload(2)), (3, b"new-3".to_vec())];
        assert_eq!(entries(&wal), want);
        drop(wal);
        assert_eq!(entries(&Wal::open(dir.path()).unwrap().0), want);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        append_range(&wal, 1..4);
        wal.sync().unwrap();
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the last record loses exactly that record.
        let last_record_len = RECORD_HEADER_LEN + 1 + 8 + payload(3).len();
        for cut in 1..last_record_len {
            std::fs::write(&path, &full[..full.len() - cut]).unwrap();
            let (wal, recovery) = Wal::open(dir.path()).unwrap();
            assert_eq!(recovery.n_torn_bytes, (last_record_len - cut) as u64, "cut {cut}");
            assert_eq!(entries(&wal).len(), 2, "cut {cut}");
            drop(wal);
        }
        // A flipped byte in the last record's body is found by its checksum.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let (wal, recovery) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovery.n_torn_bytes, last_record_len as u64);
        append_range(&wal, 3..5);
        drop(wal);
        let (wal, _) = Wal::open(dir.path()).unwrap();
        assert_eq!(entries(&wal).iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn corruption_before_the_last_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open_with(dir.path(), 64).unwrap();
        for i in 1..10 {
            append_range(&wal, i..i + 1);
        }
        drop(wal);
        assert!(segment_path(dir.path(), 2).exists());
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Wal::open(dir.path()).err().expect("corrupt segment refused");
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("restore this hub from a backup"), "{err}");
    }

    #[test]
    fn a_huge_claimed_length_is_a_torn_record_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        append_range(&wal, 1..3);
        drop(wal);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 12]);
        std::fs::write(&path, &bytes).unwrap();
        let (wal, recovery) = Wal::open(dir.path()).unwrap();
        assert_eq!(recovery.n_torn_bytes, 16);
        assert_eq!(entries(&wal).len(), 2);
    }

    #[test]
    fn segments_rotate_carry_the_meta_and_purge_deletes_the_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open_with(dir.path(), 200).unwrap();
        wal.save_vote(b"vote").unwrap();
        for i in 1..=40 {
            append_range(&wal, i..i + 1);
        }
        wal.save_committed(b"c-40").unwrap();
        let n_segments = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
        let before = n_segments(dir.path());
        assert!(before > 5, "{before} segments");
        wal.purge_through(30, b"p-30").unwrap();
        let after = n_segments(dir.path());
        assert!(after < before && after >= 2, "{before} -> {after}");
        drop(wal);
        let (wal, recovery) = Wal::open_with(dir.path(), 200).unwrap();
        assert_eq!(recovery.n_segments, after);
        assert_eq!(entries(&wal).iter().map(|e| e.0).collect::<Vec<_>>(), (31..=40).collect::<Vec<_>>());
        assert_eq!(wal.vote().as_deref(), Some(&b"vote"[..]));
        assert_eq!(wal.committed().as_deref(), Some(&b"c-40"[..]));
        assert_eq!(wal.purged(), Some((30, b"p-30".to_vec())));
        // Everything purged: only the active segment is left, and the purge point survives.
        wal.purge_through(40, b"p-40").unwrap();
        assert_eq!(n_segments(dir.path()), 1);
        drop(wal);
        let (wal, _) = Wal::open_with(dir.path(), 200).unwrap();
        assert!(entries(&wal).is_empty());
        assert_eq!(wal.purged(), Some((40, b"p-40".to_vec())));
        assert_eq!(wal.vote().as_deref(), Some(&b"vote"[..]));
    }

    #[test]
    fn a_short_new_segment_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open_with(dir.path(), 64).unwrap();
        append_range(&wal, 1..4);
        drop(wal);
        // A crash right after creating the next segment's file.
        let next = std::fs::read_dir(dir.path()).unwrap().count() as u64 + 1;
        std::fs::write(segment_path(dir.path(), next), b"FLOT").unwrap();
        let (wal, recovery) = Wal::open_with(dir.path(), 64).unwrap();
        assert_eq!(recovery.n_torn_bytes, 4);
        append_range(&wal, 4..5);
        drop(wal);
        let (wal, _) = Wal::open_with(dir.path(), 64).unwrap();
        assert_eq!(entries(&wal).len(), 4);
    }

    #[test]
    fn oversized_records_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path()).unwrap();
        let big = vec![0; MAX_RECORD_BODY];
        assert!(matches!(wal.append([(1, big.as_slice())]), Err(WalError::TooLarge(_))));
        append_range(&wal, 1..2);
        assert_eq!(entries(&wal).len(), 1);
    }
}
