//! Crash-safe file writes for keys, certificates and the CLI context file.
//!
//! A write goes to a new temporary file in the target's directory, created with its final mode
//! (so a private key is never readable by others, not even for a moment), is fsynced, renamed
//! over the target and the directory is fsynced. After a crash the target holds either the old
//! or the new contents, never a mix; a leftover `.<name>.tmp-*` file is harmless.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of files holding secrets: owner read/write only.
pub const PRIVATE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}: it has no file name")]
    NoFileName { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes a file only its owner can read (mode 0600), atomically.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_file_atomic(path, bytes, PRIVATE_MODE)
}

/// Replaces `path` with `bytes` atomically and durably; the file ends with exactly `mode`.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let file_name = path.file_name().ok_or_else(|| FileError::NoFileName { path: path.to_owned() })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (tmp_path, mut file) = create_temp(dir, &file_name.to_string_lossy(), mode)?;
    let guard = RemoveOnDrop(Some(tmp_path.clone()));
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| FileError::Io { op, path: p, source }
    };
    // The umask may have cleared bits of `mode` at creation; set exactly what was asked for.
    file.set_permissions(Permissions::from_mode(mode)).map_err(io_err("set permissions of", &tmp_path))?;
    file.write_all(bytes).map_err(io_err("write", &tmp_path))?;
    file.sync_all().map_err(io_err("fsync", &tmp_path))?;
    drop(file);
    fs::rename(&tmp_path, path).map_err(io_err("rename into place", path))?;
    guard.disarm();
    // Make the rename itself durable.
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))?;
    Ok(())
}

fn create_temp(dir: &Path, file_name: &str, mode: u32) -> Result<(PathBuf, File), FileError> {
    static N_TEMP: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = N_TEMP.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
        // create_new: never follow or reuse something already there; mode applies from creation.
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(FileError::Io { op: "create", path: tmp, source }),
        }
    }
}

/// Removes the temporary file if the write fails half-way.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn private_file_is_0600_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device.key");
        write_private_file(&path, b"secret").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"secret");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(names_in(dir.path()), vec!["device.key".to_owned()]);
    }

    #[test]
    fn replacing_a_readable_file_swaps_the_inode_and_tightens_the_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("device.key");
        fs::write(&path, b"old contents that are longer").expect("seed");
        fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        let old = File::open(&path).expect("open old");
        write_private_file(&path, b"new").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert_eq!(mode_of(&path), 0o600);
        // A reader of the old file still sees the complete old contents: nothing was
        // overwritten in place.
        let mut old_contents = String::new();
        io::Read::read_to_string(&mut &old, &mut old_contents).expect("read old");
        assert_eq!(old_contents, "old contents that are longer");
        assert_eq!(names_in(dir.path()), vec!["device.key".to_owned()]);
    }

    #[test]
    fn atomic_write_sets_the_requested_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        write_file_atomic(&path, b"cert", 0o644).expect("write");
        assert_eq!(mode_of(&path), 0o644);
        write_file_atomic(&path, b"cert2", 0o640).expect("rewrite");
        assert_eq!(mode_of(&path), 0o640);
        assert_eq!(fs::read(&path).expect("read"), b"cert2");
    }

    #[test]
    fn failure_names_the_path_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing-dir").join("key");
        let err = write_private_file(&path, b"x").expect_err("no such dir");
        assert!(err.to_string().contains("missing-dir"), "{err}");
        // Renaming a file over a directory fails after the temp file was written.
        let target = dir.path().join("occupied");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("inside"), b"x").expect("fill");
        let err = write_private_file(&target, b"x").expect_err("target is a directory");
        assert!(matches!(err, FileError::Io { op: "rename into place", .. }), "{err}");
        assert_eq!(names_in(dir.path()), vec!["occupied".to_owned()]);
        assert!(matches!(write_private_file(Path::new("/"), b"x"), Err(FileError::NoFileName { .. })));
    }
}
