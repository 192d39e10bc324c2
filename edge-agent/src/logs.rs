//! Container logs within a size. A container writes its stdout and stderr straight
//! into `logs/<id>.log` (opened with `O_APPEND`, no copying process in between, which
//! keeps the agent small). Every few seconds the agent looks at each log; one over
//! `max_log_bytes` has its newest `max_log_bytes` copied to `<id>.log.1` (replacing
//! the previous one) and is emptied, as logrotate's `copytruncate` does. The container
//! keeps writing to the same file, from its new end. A container writes at most a
//! check interval's worth past the cap, and lines written between the copy and the
//! truncation are lost: the price of not standing between a container and its log.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_MAX_LOG_BYTES: u64 = 10 << 20;
/// Smallest cap the config may set.
pub const MIN_MAX_LOG_BYTES: u64 = 4 << 10;
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Rotates every log in `dir` over `max` bytes; returns how many were rotated.
pub fn rotate_once(dir: &Path, max: u64) -> io::Result<usize> {
    let mut rotated = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || meta.len() <= max {
            continue;
        }
        match rotate(&path, max) {
            Ok(()) => rotated += 1,
            Err(e) => tracing::warn!(log = %path.display(), error = %e, "rotating a container log"),
        }
    }
    Ok(rotated)
}

/// Keeps the newest `max` bytes of `path` in `<path>.1` and empties `path`.
fn rotate(path: &Path, max: u64) -> io::Result<()> {
    let mut log = OpenOptions::new().read(true).write(true).open(path)?;
    let len = log.metadata()?.len();
    log.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut old = PathBuf::from(path).into_os_string();
    old.push(".1");
    let old = PathBuf::from(old);
    let tmp = old.with_extension("1.tmp");
    {
        let mut out = File::create(&tmp)?;
        io::copy(&mut io::Read::take(&mut log, max), &mut out)?;
    }
    std::fs::rename(&tmp, &old)?;
    log.set_len(0)?;
    Ok(())
}

/// When each log grew, sampled at every check: what `flotilla logs --since` reads
/// (a container writes its log straight, so its lines carry no time). Kept in memory:
/// samples cost the SD card nothing, and an agent restart forgets them (a `--since`
/// older than the restart then reads the whole retained log).
#[derive(Debug, Default)]
pub struct LogClock {
    logs: std::collections::HashMap<String, Vec<(u64, u64)>>,
}

/// Samples kept per log; past it every other old one goes (older times get coarser).
const MAX_SAMPLES: usize = 2048;

impl LogClock {
    /// `file` (a log's name) was `size` bytes at `now_ms`.
    pub fn sample(&mut self, file: &str, now_ms: u64, size: u64) {
        let samples = self.logs.entry(file.to_string()).or_default();
        match samples.last() {
            Some((_, last)) if *last == size => return,
            // Emptied by a rotation: what came before is in `.log.1` now.
            Some((_, last)) if *last > size => samples.clear(),
            _ => {}
        }
        samples.push((now_ms, size));
        if samples.len() > MAX_SAMPLES {
            let mut i = 0;
            samples.retain(|_| {
                i += 1;
                i % 2 == 0 || i > MAX_SAMPLES / 2
            });
        }
    }

    /// Where in `file` the lines written since `since_ms` start, and whether its
    /// rotated part (`.log.1`) may hold some too.
    pub fn offset_since(&self, file: &str, since_ms: u64) -> (u64, bool) {
        let samples = self.logs.get(file).map(Vec::as_slice).unwrap_or_default();
        match samples.iter().rev().find(|(t, _)| *t <= since_ms) {
            Some((_, size)) => (*size, false),
            None => (0, true),
        }
    }

    pub fn forget_missing(&mut self, present: &std::collections::HashSet<String>) {
        self.logs.retain(|k, _| present.contains(k));
    }
}

fn now_ms() -> u64 {
    shared_proto::Timestamp::from_system_time(std::time::SystemTime::now()).millis()
}

/// Samples the size of every log in `dir` into `clock`.
fn sample_all(dir: &Path, clock: &std::sync::Mutex<LogClock>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let now = now_ms();
    let mut clock = clock.lock().unwrap_or_else(|p| p.into_inner());
    let mut present = std::collections::HashSet::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".log") {
            continue;
        }
        if let Ok(m) = e.metadata() {
            clock.sample(&name, now, m.len());
            present.insert(name);
        }
    }
    clock.forget_missing(&present);
}

/// What a log request first sends: the retained log of `id` (its rotated part when it
/// may hold lines asked for), from `since`, the last `tail` lines; and the offset of
/// the current file it read to (where following goes on).
pub fn read_log(
    dir: &Path,
    id: &str,
    clock: &std::sync::Mutex<LogClock>,
    since_ms: Option<u64>,
    tail: Option<u32>,
) -> io::Result<(Vec<u8>, u64)> {
    use std::io::Read;
    let file = format!("{id}.log");
    let path = dir.join(&file);
    let (offset, with_rotated) = match since_ms {
        Some(since) => clock.lock().unwrap_or_else(|p| p.into_inner()).offset_since(&file, since),
        None => (0, true),
    };
    let mut out = Vec::new();
    if with_rotated {
        match File::open(dir.join(format!("{file}.1"))) {
            Ok(f) => {
                f.take(MAX_READ).read_to_end(&mut out)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = File::open(&path)?;
    let len = f.metadata()?.len();
    let start = if offset > len { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    f.take(len - start).read_to_end(&mut out)?;
    if let Some(n) = tail {
        out = last_lines(&out, n as usize).to_vec();
    }
    Ok((out, len))
}

/// Most bytes of a rotated log read at once.
const MAX_READ: u64 = 64 << 20;

/// The last `n` lines of `text` (a last line without its newline counts).
pub fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    match body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(n - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

/// Rotates the logs in `dir` every few seconds, forever, and samples when they grew.
pub async fn run(dir: PathBuf, max: u64, clock: std::sync::Arc<std::sync::Mutex<LogClock>>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (d, c) = (dir.clone(), clock.clone());
        let _ = tokio::task::spawn_blocking(move || sample_all(&d, &c)).await;
        let d = dir.clone();
        match tokio::task::spawn_blocking(move || rotate_once(&d, max)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(rotated = n, "container logs rotated"),
            Ok(Err(e)) => tracing::warn!(dir = %dir.display(), error = %e, "checking container logs"),
            Err(e) => tracing::warn!(error = %e, "the log rotation task failed"),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn since_reads_from_the_size_sampled_before_it_and_tail_keeps_the_last_lines() {
        let mut clock = LogClock::default();
        clock.sample("a.log", 1_000, 10);
        clock.sample("a.log", 3_000, 10);
        clock.sample("a.log", 5_000, 30);
        assert_eq!(clock.offset_since("a.log", 4_000), (10, false));
        assert_eq!(clock.offset_since("a.log", 6_000), (30, false));
        assert_eq!(clock.offset_since("a.log", 500), (0, true), "before anything seen: all of it");
        // A rotation empties the log: earlier samples go with it.
        clock.sample("a.log", 7_000, 0);
        assert_eq!(clock.offset_since("a.log", 6_000), (0, true));
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\n", 5), b"a\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
        // Thinned, never unbounded.
        for t in 0..5_000u64 {
            clock.sample("b.log", t, t + 1);
        }
        assert!(clock.logs["b.log"].len() <= MAX_SAMPLES);
    }

    #[test]
    fn a_log_is_read_with_its_rotated_part_and_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.log.1"), "old\n").unwrap();
        std::fs::write(dir.path().join("x.log"), "one\ntwo\n").unwrap();
        let clock = std::sync::Mutex::new(LogClock::default());
        let (all, end) = read_log(dir.path(), "x", &clock, None, None).unwrap();
        assert_eq!((all.as_slice(), end), (&b"old\none\ntwo\n"[..], 8));
        clock.lock().unwrap().sample("x.log", 100, 4);
        let (since, _) = read_log(dir.path(), "x", &clock, Some(200), None).unwrap();
        assert_eq!(since, b"two\n");
        let (tail, _) = read_log(dir.path(), "x", &clock, None, Some(1)).unwrap();
        assert_eq!(tail, b"two\n");
    }

    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_over_its_cap_keeps_its_newest_bytes_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c1.log");
        let mut writer = OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&data).unwrap();
        std::fs::write(dir.path().join("small.log"), b"short").unwrap();
        std::fs::write(dir.path().join("other.txt"), vec![0u8; 10_000]).unwrap();
        assert_eq!(rotate_once(dir.path(), 4096).unwrap(), 1);
        assert_eq!(std::fs::read(dir.path().join("c1.log.1")).unwrap(), &data[data.len() - 4096..]);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        // The writer (O_APPEND, as a container's stdout) goes on from the new end.
        writer.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"after");
        assert_eq!(std::fs::read(dir.path().join("small.log")).unwrap(), b"short");
        assert_eq!(rotate_once(dir.path(), 4096).unwrap(), 0, "nothing over the cap");
    }
}
