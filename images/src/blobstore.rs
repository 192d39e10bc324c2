//! A content-addressed blob directory (`<root>/blobs/sha256/<hex>`), the same shape as an
//! OCI image layout's, where every blob is verified before it becomes visible.

use crate::digest::{Digest, DigestError, Hasher};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    #[error("blob {digest}: {source}")]
    Content {
        digest: Digest,
        #[source]
        source: DigestError,
    },
    #[error("reading the content of blob {digest}: {source}")]
    Read {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("blob store {path}: {source}; check the disk and the directory's permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = BlobError> = std::result::Result<T, E>;

/// Temp files start with a dot so they never parse as a digest.
const TEMP_PREFIX: &str = ".tmp-";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Blobs live in files named by their digest. A blob appears under its name only once
/// it was written in full, verified and synced, so a reader never sees a partial blob
/// and a crash leaves at most a temp file, which the next `open` removes.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.to_path_buf(), source }
}

impl BlobStore {
    /// Opens (creating if needed) the store under `root`, and removes temp files that
    /// crashed writers left behind.
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobStore> {
        let root = root.into();
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let store = BlobStore { root, dir };
        store.remove_stale_temp_files()?;
        Ok(store)
    }

    /// The directory that holds `blobs/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.path(digest)).is_ok_and(|m| m.is_file())
    }

    pub fn size(&self, digest: &Digest) -> Result<u64> {
        let path = self.path(digest);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(BlobError::NotFound(*digest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(*digest)),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path).map_err(
            |e| match e.kind() {
                io::ErrorKind::NotFound => BlobError::NotFound(*digest),
                _ => io_err(&path)(e),
            },
        )
    }

    /// Reads a whole blob of at most `max_size` bytes, checking its digest on the way:
    /// for manifests and configs, which are parsed from memory.
    pub fn read_to_vec(&self, digest: &Digest, max_size: u64) -> Result<Vec<u8>> {
        let file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.take(max_size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| BlobError::Read { digest: *digest, source })?;
        if bytes.len() as u64 > max_size {
            return Err(BlobError::Content {
                digest: *digest,
                source: DigestError::TooLarge { limit: max_size },
            });
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(BlobError::Content {
                digest: *digest,
                source: DigestError::Mismatch { expected: *digest, actual },
            });
        }
        Ok(bytes)
    }

    /// Streams `reader` into the store as the blob `digest`, refusing content larger
    /// than `max_size` or not matching `digest`. Returns the blob's size. A blob already
    /// present is kept as it is (its name proves its content) and `reader` is not read.
    /// Writers racing on the same digest are harmless: each renames identical content.
    pub fn put(&self, reader: impl Read, digest: &Digest, max_size: u64) -> Result<u64> {
        if let Ok(size) = self.size(digest) {
            return Ok(size);
        }
        let temp = self.create_temp()?;
        let n_bytes = self.fill_temp(&temp, reader, digest, max_size)?;
        let path = self.path(digest);
        fs::rename(&temp.path, &path).map_err(io_err(&path))?;
        temp.keep();
        // The rename is only durable once the directory entry is.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        Ok(n_bytes)
    }

    /// Stores `bytes`, returning their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        self.put(bytes, &digest, bytes.len() as u64)?;
        Ok(digest)
    }

    fn fill_temp(
        &self,
        temp: &TempFile,
        mut reader: impl Read,
        digest: &Digest,
        max_size: u64,
    ) -> Result<u64> {
        let mut hasher = Hasher::new();
        let mut writer = io::BufWriter::with_capacity(256 * 1024, &temp.file);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(BlobError::Read { digest: *digest, source }),
            };
            if hasher.n_bytes() + n as u64 > max_size {
                return Err(BlobError::Content {
                    digest: *digest,
                    source: DigestError::TooLarge { limit: max_size },
                });
            }
            hasher.update(&buf[..n]);
            writer.write_all(&buf[..n]).map_err(io_err(&temp.path))?;
        }
        writer.flush().map_err(io_err(&temp.path))?;
        drop(writer);
        let (actual, n_bytes) = hasher.finish();
        if actual != *digest {
            return Err(BlobError::Content {
                digest: *digest,
                source: DigestError::Mismatch { expected: *digest, actual },
            });
        }
        temp.file.sync_all().map_err(io_err(&temp.path))?;
        Ok(n_bytes)
    }

    /// Creates a temp file that holds an exclusive lock for as long as it is open, which
    /// is how [`Self::remove_stale_temp_files`] tells a live writer from a dead one.
    fn create_temp(&self) -> Result<TempFile> {
        loop {
            let name = format!(
                "{TEMP_PREFIX}{}-{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = self.dir.join(name);
            let file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            file.lock().map_err(io_err(&path))?;
            // A cleaner may have taken the lock between our create and our lock and
            // unlinked the file: then the path is gone (or another file) and we retry.
            let ours = file.metadata().map_err(io_err(&path))?;
            match fs::symlink_metadata(&path) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {
                    return Ok(TempFile { file, path, keep: false });
                }
                _ => continue,
            }
        }
    }

    /// Removes temp files whose writer is gone (its lock is free). Returns how many.
    pub fn remove_stale_temp_files(&self) -> Result<usize> {
        let mut n_removed = 0;
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            let Ok(file) = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() {
                match fs::remove_file(&path) {
                    Ok(()) => n_removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
        }
        Ok(n_removed)
    }

    /// Removes a blob; returns whether it was there.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every blob in the store, sorted.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut digests = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(d) = entry.file_name().to_str().and_then(Digest::from_hex) {
                digests.push(d);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Re-reads a stored blob and checks it still matches its name (disk rot, tampering).
    pub fn verify(&self, digest: &Digest) -> Result<u64> {
        let file = self.open_blob(digest)?;
        let mut hasher = Hasher::new();
        let mut reader = io::BufReader::with_capacity(256 * 1024, file);
        loop {
            let buf = io::BufRead::fill_buf(&mut reader)
                .map_err(|source| BlobError::Read { digest: *digest, source })?;
            if buf.is_empty() {
                break;
            }
            let n = buf.len();
            hasher.update(buf);
            io::BufRead::consume(&mut reader, n);
        }
        let (actual, n_bytes) = hasher.finish();
        if actual != *digest {
            return Err(BlobError::Content {
                digest: *digest,
                source: DigestError::Mismatch { expected: *digest, actual },
            });
        }
        Ok(n_bytes)
    }
}

/// A temp file that removes itself unless kept.
struct TempFile {
    file: File,
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_names(store: &BlobStore) -> Vec<String> {
        fs::read_dir(&store.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    #[test]
    fn put_open_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let data = b"some layer bytes";
        let d = Digest::of(data);
        assert!(!store.contains(&d));
        assert_eq!(store.put(&data[..], &d, 1024).unwrap(), data.len() as u64);
        assert!(store.contains(&d));
        assert_eq!(store.size(&d).unwrap(), data.len() as u64);
        assert_eq!(fs::read(store.path(&d)).unwrap(), data);
        assert_eq!(store.path(&d), tmp.path().join("blobs/sha256").join(d.hex()));
        let mut read_back = Vec::new();
        store.open_blob(&d).unwrap().read_to_end(&mut read_back).unwrap();
        assert_eq!(read_back, data);
        assert_eq!(store.read_to_vec(&d, 1024).unwrap(), data);
        assert_eq!(store.verify(&d).unwrap(), data.len() as u64);

        let d2 = store.put_bytes(b"other").unwrap();
        let mut expected = vec![d, d2];
        expected.sort();
        assert_eq!(store.list().unwrap(), expected);

        assert!(store.remove(&d).unwrap());
        assert!(!store.remove(&d).unwrap());
        assert!(matches!(store.open_blob(&d), Err(BlobError::NotFound(_))));
        assert_eq!(store.list().unwrap(), vec![d2]);
        assert!(temp_names(&store).is_empty());
    }

    #[test]
    fn rejects_mismatch_and_oversize_leaving_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let claimed = Digest::of(b"what the index says");
        let err = store.put(&b"something else"[..], &claimed, 1024).unwrap_err();
        assert!(matches!(err, BlobError::Content { source: DigestError::Mismatch { .. }, .. }), "{err}");
        assert!(!store.contains(&claimed));

        let big = vec![7u8; 5000];
        let d = Digest::of(&big);
        let err = store.put(&big[..], &d, 4999).unwrap_err();
        assert!(matches!(err, BlobError::Content { source: DigestError::TooLarge { limit: 4999 }, .. }));
        assert!(!store.contains(&d));
        assert!(store.list().unwrap().is_empty());
        assert!(temp_names(&store).is_empty(), "temp files left: {:?}", temp_names(&store));
    }

    #[test]
    fn reader_error_is_reported_as_read_error() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("connection reset"))
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let err = store.put(Failing, &Digest::of(b"x"), 10).unwrap_err();
        assert!(matches!(err, BlobError::Read { .. }), "{err}");
        assert!(temp_names(&store).is_empty());
    }

    #[test]
    fn stale_temp_from_a_crash_is_removed_but_a_live_writers_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        // What a writer killed mid-put leaves: a partial temp file nobody holds a lock on.
        let stale = store.dir.join(format!("{TEMP_PREFIX}99999-0"));
        fs::write(&stale, b"half a blo").unwrap();
        // A live writer in another process holds its lock.
        let live = store.create_temp().unwrap();

        assert!(store.list().unwrap().is_empty(), "temp files must never list as blobs");
        let reopened = BlobStore::open(tmp.path()).unwrap();
        assert!(!stale.exists());
        assert!(live.path.exists(), "a temp file whose writer is alive was removed");
        assert_eq!(reopened.remove_stale_temp_files().unwrap(), 0);
        drop(live);
        assert!(temp_names(&store).is_empty());
    }

    #[test]
    fn concurrent_puts_of_the_same_blob_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let fresh = BlobStore::open(tmp.path()).unwrap();
                    assert_eq!(fresh.put(&data[..], &d, u64::MAX).unwrap(), data.len() as u64);
                });
            }
        });
        assert_eq!(store.verify(&d).unwrap(), data.len() as u64);
        assert_eq!(store.list().unwrap(), vec![d]);
        assert!(temp_names(&store).is_empty());
    }

    #[test]
    fn verify_detects_rot() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path()).unwrap();
        let d = store.put_bytes(b"pristine").unwrap();
        fs::write(store.path(&d), b"rotten!!").unwrap();
        assert!(matches!(store.verify(&d), Err(BlobError::Content { .. })));
        assert!(matches!(store.read_to_vec(&d, 100), Err(BlobError::Content { .. })));
    }
}
