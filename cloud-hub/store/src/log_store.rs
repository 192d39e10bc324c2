//! openraft's log storage (log entries, vote, committed id) over the hub's raft log files
//! (`wal.rs`), beside the redb file that holds the state machine.
//!
//! Every write that openraft must be able to rely on after a crash (appends, vote, truncation,
//! purge) is durable before openraft hears it is done.
//!
//! Appends are two steps, as openraft's `append` asks: the entries are written to the log file
//! (readable at once, so replication to the followers starts while this hub's disk is still
//! busy), then one flusher thread makes them durable with one fdatasync and only then reports
//! them flushed. The flusher takes every append that queued up during its last fdatasync into
//! the next one (group commit), and reports in append order. A crash before the flush loses
//! only entries openraft never counted as this hub's.
//!
//! Hubs before store format 2 kept the log in the redb file; [`open_log`] moves it out once.

use crate::db::{
    self, DB_FORMAT_VERSION, DbError, KEY_COMMITTED, KEY_FLUSHES, KEY_FORMAT, KEY_LAST_PURGED, KEY_VOTE,
    LEGACY_LOG, RAFT_META, begin_read, begin_write,
};
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::{Wal, WalError};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, ReadableTable, ReadableTableMetadata};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

/// The directory, in the store's data directory, that holds the raft log's segments.
pub(crate) const LOG_DIR_NAME: &str = "raft-log";

/// Opens the raft log in `data_dir`. A store without one (written before store format 2, or
/// just restored from a backup) has its log and raft records in the redb file: they are copied
/// into a new log, which is put in place with one rename, and only then removed from redb.
pub(crate) fn open_log(data_dir: &Path, db: &Database) -> Result<Arc<Wal>, DbError> {
    let dir = data_dir.join(LOG_DIR_NAME);
    if !dir.exists() {
        let staging = data_dir.join(format!("{LOG_DIR_NAME}.new"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| wal_io(&staging, e))?;
        }
        let n_moved = copy_legacy_log(db, &staging)?;
        std::fs::rename(&staging, &dir).map_err(|e| wal_io(&dir, e))?;
        std::fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(|e| wal_io(data_dir, e))?;
        if n_moved > 0 {
            tracing::info!(n_entries = n_moved, "moved the raft log out of the store database");
        }
    }
    clear_legacy_log(db)?;
    let (wal, recovery) = Wal::open(&dir)?;
    if recovery.n_torn_bytes > 0 {
        tracing::warn!(?recovery, "recovered the raft log after a crash");
    }
    Ok(Arc::new(wal))
}

fn wal_io(path: &Path, source: io::Error) -> DbError {
    DbError::Wal(WalError::Io { path: path.display().to_string(), source })
}

/// Writes the redb file's log and raft records into a new log at `dir`, durably.
fn copy_legacy_log(db: &Database, dir: &Path) -> Result<usize, DbError> {
    let (wal, _) = Wal::open(dir)?;
    let txn = begin_read(db)?;
    let meta = txn.open_table(RAFT_META)?;
    if let Some(vote) = meta.get(KEY_VOTE)? {
        wal.save_vote(vote.value())?;
    }
    if let Some(committed) = meta.get(KEY_COMMITTED)? {
        wal.save_committed(committed.value())?;
    }
    if let Some(purged) = meta.get(KEY_LAST_PURGED)? {
        let log_id: LogId = db::decode("last purged log id", purged.value())?;
        wal.purge_through(log_id.index, purged.value())?;
    }
    let mut n_moved = 0;
    if let Some(log) = legacy_log(&txn)? {
        let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
        for item in log.iter()? {
            let (index, bytes) = item?;
            batch.push((index.value(), bytes.value().to_vec()));
            if batch.len() == 1024 {
                wal.append(batch.iter().map(|(i, b)| (*i, b.as_slice())))?;
                n_moved += batch.len();
                batch.clear();
            }
        }
        wal.append(batch.iter().map(|(i, b)| (*i, b.as_slice())))?;
        n_moved += batch.len();
    }
    wal.sync()?;
    Ok(n_moved)
}

fn legacy_log(
    txn: &redb::ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>, DbError> {
    match txn.open_table(LEGACY_LOG) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes what [`copy_legacy_log`] copied from the redb file, if anything is left, and marks
/// the file as format 2.
fn clear_legacy_log(db: &Database) -> Result<(), DbError> {
    let leftover = {
        let txn = begin_read(db)?;
        let meta = txn.open_table(RAFT_META)?;
        let format: Option<u32> = db::read_record(&meta, KEY_FORMAT, "format version")?;
        let mut any = format != Some(DB_FORMAT_VERSION);
        for key in [KEY_VOTE, KEY_COMMITTED, KEY_LAST_PURGED, KEY_FLUSHES] {
            any |= meta.get(key)?.is_some();
        }
        any || legacy_log(&txn)?.map(|log| log.len()).transpose()?.unwrap_or(0) > 0
    };
    if leftover {
        let txn = begin_write(db)?;
        {
            let mut meta = txn.open_table(RAFT_META)?;
            for key in [KEY_VOTE, KEY_COMMITTED, KEY_LAST_PURGED, KEY_FLUSHES] {
                meta.remove(key)?;
            }
            meta.insert(KEY_FORMAT, db::encode("format version", &DB_FORMAT_VERSION)?.as_slice())?;
        }
        txn.delete_table(LEGACY_LOG)?;
        txn.commit()?;
    }
    Ok(())
}

/// Cheap to clone: openraft hands a clone to every replication task as its log reader.
#[derive(Clone)]
pub(crate) struct LogStore {
    wal: Arc<Wal>,
    flusher: Arc<Flusher>,
}

impl LogStore {
    pub(crate) fn new(wal: Arc<Wal>) -> Self {
        let flusher = Arc::new(Flusher::spawn(wal.clone()));
        LogStore { wal, flusher }
    }
}

/// The thread that makes appended entries durable (see the module's comment). It ends when
/// the last `LogStore` clone is dropped.
struct Flusher {
    queue: std::sync::Mutex<std::sync::mpsc::Sender<IOFlushed<TypeConfig>>>,
}

impl Flusher {
    fn spawn(wal: Arc<Wal>) -> Flusher {
        let (tx, rx) = std::sync::mpsc::channel::<IOFlushed<TypeConfig>>();
        let run = move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let result = wal.sync().map_err(|e| e.to_string());
                for callback in waiting {
                    callback.io_completed(result.clone().map_err(io::Error::other));
                }
            }
        };
        if let Err(e) = std::thread::Builder::new().name("store-flush".into()).spawn(run) {
            // Without a thread, every append reports an error: openraft stops this node.
            tracing::error!(error = %e, "cannot start the store's flusher thread");
        }
        Flusher { queue: std::sync::Mutex::new(tx) }
    }

    fn flush(&self, callback: IOFlushed<TypeConfig>) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(std::sync::mpsc::SendError(callback)) = queue.send(callback) {
            callback.io_completed(Err(io::Error::other("the store's flusher thread is gone")));
        }
    }
}

/// `[start, end)` of a range of log indexes; `end == None` is unbounded.
fn index_range(start: Bound<&u64>, end: Bound<&u64>) -> (u64, Option<u64>) {
    let start = match start {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match end {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

fn to_io(e: impl Into<DbError>) -> io::Error {
    io::Error::other(e.into().to_string())
}

/// Runs a log write that fdatasyncs off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WalError> + Send + 'static,
) -> Result<T, io::Error> {
    db::run_blocking(move || f().map_err(DbError::Wal)).await.map_err(to_io)
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// Reads from the log files, which the page cache holds for the entries replication and
    /// apply ask for (the newest): no blocking thread for these.
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = index_range(range.start_bound(), range.end_bound());
        let raw = self.wal.read(start, end).map_err(to_io)?;
        raw.iter().map(|(_, bytes)| db::decode::<Entry>("log entry", bytes).map_err(to_io)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.wal.vote().map(|v| db::decode("vote", &v)).transpose().map_err(to_io)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self
            .wal
            .purged()
            .map(|(_, bytes)| db::decode("last purged log id", &bytes))
            .transpose()
            .map_err(to_io)?;
        let last_log_id = match self.wal.last().map_err(to_io)? {
            Some((_, bytes)) => Some(db::decode::<Entry>("log entry", &bytes).map_err(to_io)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = db::encode("vote", vote).map_err(to_io)?;
        let wal = self.wal.clone();
        blocking(move || wal.save_vote(&bytes)).await
    }

    /// Written without an fdatasync of its own: the next one carries it to disk, and losing the
    /// latest value in a crash only means openraft learns the commit index again from the
    /// leader, which it tolerates.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = db::encode("committed log id", &committed).map_err(to_io)?;
        self.wal.save_committed(&bytes).map_err(to_io)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let committed: Option<Option<LogId>> =
            self.wal.committed().map(|c| db::decode("committed log id", &c)).transpose().map_err(to_io)?;
        Ok(committed.flatten())
    }

    /// Writes all of openraft's entries at once, readable when this returns (a write to the
    /// page cache, done here rather than on a blocking thread); the flusher reports them
    /// flushed once they are durable.
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, db::encode("log entry", &entry)?)))
            .collect::<Result<Vec<(u64, Vec<u8>)>, DbError>>();
        let res = encoded
            .and_then(|encoded| Ok(self.wal.append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))?));
        match res {
            Ok(()) => {
                self.flusher.flush(callback);
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.io_completed(Err(io::Error::other(msg.clone())));
                Err(io::Error::other(msg))
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        let wal = self.wal.clone();
        blocking(move || wal.truncate_from(first_removed)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = db::encode("last purged log id", &log_id).map_err(to_io)?;
        let wal = self.wal.clone();
        blocking(move || wal.purge_through(log_id.index, &bytes)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{Publisher, StateMachineStore};
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::{ErrorSubject, ErrorVerb, StorageError};

    /// Builds a fresh log store and state machine over a redb file in a temp dir.
    struct TempStoreBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStoreBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
            let err = |e: io::Error| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e);
            let dir = tempfile::tempdir().map_err(err)?;
            let db = Arc::new(db::open_database(&dir.path().join("store.redb")).map_err(|e| err(e.into()))?);
            let wal = open_log(dir.path(), &db).map_err(|e| err(e.into()))?;
            let files = crate::snapshot_files::SnapshotFiles::open(dir.path()).map_err(|e| err(e.into()))?;
            let sm = StateMachineStore::new(
                db.clone(),
                wal.clone(),
                Arc::new(files),
                Arc::new(Publisher::new(0, Default::default(), Default::default())),
            );
            Ok((dir, LogStore::new(wal), sm))
        }
    }

    /// openraft's own conformance suite for log storage and state machines.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        Suite::test_all(TempStoreBuilder).await.expect("storage suite");
    }

    /// A store written before format 2 keeps its log, vote, committed id and purge point in the
    /// redb file: the first open moves them into the raft log, once, and marks the file.
    #[tokio::test]
    async fn a_log_inside_the_store_file_moves_out_once() {
        use openraft::vote::RaftLeaderIdExt;
        let dir = tempfile::tempdir().unwrap();
        let db = db::open_database(&dir.path().join("store.redb")).unwrap();
        let leader = <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(2, 1);
        let vote = Vote::new_committed(2, 1);
        let purged = LogId::new(leader, 4);
        let committed = Some(LogId::new(leader, 6));
        let entries: Vec<Entry> = (5..=7)
            .map(|i| Entry { log_id: LogId::new(leader, i), payload: openraft::EntryPayload::Blank })
            .collect();
        {
            let txn = begin_write(&db).unwrap();
            {
                let mut meta = txn.open_table(RAFT_META).unwrap();
                meta.insert(KEY_FORMAT, db::encode("f", &db::DB_FORMAT_LOG_INSIDE).unwrap().as_slice())
                    .unwrap();
                meta.insert(KEY_VOTE, db::encode("v", &vote).unwrap().as_slice()).unwrap();
                meta.insert(KEY_COMMITTED, db::encode("c", &committed).unwrap().as_slice()).unwrap();
                meta.insert(KEY_LAST_PURGED, db::encode("p", &purged).unwrap().as_slice()).unwrap();
                meta.insert(KEY_FLUSHES, db::encode("n", &3u64).unwrap().as_slice()).unwrap();
                let mut log = txn.open_table(LEGACY_LOG).unwrap();
                for e in &entries {
                    log.insert(e.log_id.index, db::encode("e", e).unwrap().as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        // A crash during an earlier attempt left a half-built log behind: it is rebuilt.
        std::fs::create_dir(dir.path().join("raft-log.new")).unwrap();
        std::fs::write(dir.path().join("raft-log.new/junk"), b"x").unwrap();

        for _ in 0..2 {
            let mut store = LogStore::new(open_log(dir.path(), &db).unwrap());
            assert_eq!(store.read_vote().await.unwrap(), Some(vote));
            assert_eq!(store.read_committed().await.unwrap(), committed);
            let state = store.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(purged));
            assert_eq!(state.last_log_id, Some(LogId::new(leader, 7)));
            assert_eq!(store.try_get_log_entries(0..100).await.unwrap(), entries);
        }
        assert!(!dir.path().join("raft-log.new").exists());
        let txn = begin_read(&db).unwrap();
        let meta = txn.open_table(RAFT_META).unwrap();
        let format: Option<u32> = db::read_record(&meta, KEY_FORMAT, "format").unwrap();
        assert_eq!(format, Some(DB_FORMAT_VERSION));
        for key in [KEY_VOTE, KEY_COMMITTED, KEY_LAST_PURGED, KEY_FLUSHES] {
            assert!(meta.get(key).unwrap().is_none(), "{key} left in the store file");
        }
        assert!(legacy_log(&txn).unwrap().is_none());
    }

    #[test]
    fn index_ranges() {
        use Bound::*;
        assert_eq!(index_range(Included(&3), Excluded(&7)), (3, Some(7)));
        assert_eq!(index_range(Excluded(&3), Included(&7)), (4, Some(8)));
        assert_eq!(index_range(Unbounded, Unbounded), (0, None));
        assert_eq!(index_range(Included(&5), Included(&u64::MAX)), (5, None));
    }
}
