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

/// Rotates the logs in `dir` every few seconds, forever.
pub async fn run(dir: PathBuf, max: u64) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
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
