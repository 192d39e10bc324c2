//! The current snapshot's blob, in its own file beside the store database.
//!
//! A snapshot is every object (`snapshot.rs`), tens of megabytes in a large fleet. Written into
//! redb, it held the database's only writer for as long as it took to copy and fdatasync
//! (twice: quick-repair commits are two-phase), and every apply waited behind it: the slowest
//! one in a hundred writes came from there. Written to a file, it takes no database lock; the
//! database keeps only the snapshot's meta, which names the file.
//!
//! Each blob is `snapshot-<last log index, 20 digits>.bin`, written under a temporary name,
//! fdatasync'ed and renamed, so a file with a final name is always whole. The meta in redb is
//! updated after the rename; a crash in between leaves a file no meta names, removed at the
//! next write. Stores before file format 2 kept the blob in redb's `snapshot` table:
//! [`SnapshotFiles::move_out_of`] moves it out once.

use crate::db::{
    DbError, KEY_SNAPSHOT_BLOB, KEY_SNAPSHOT_META, LEGACY_SNAPSHOT, SM_META, begin_read, begin_write,
};
use crate::types::SnapshotMeta;
use crate::wal::WalError;
use redb::Database;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory, in the store's data directory, that holds the snapshot files.
pub(crate) const SNAPSHOT_DIR_NAME: &str = "snapshots";

pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// Held from writing a file to removing the ones it replaced, and while reading, so that
    /// a build and an install never remove each other's file.
    lock: std::sync::Mutex<()>,
}

fn io_err(path: &Path, source: std::io::Error) -> DbError {
    DbError::Wal(WalError::Io { path: path.display().to_string(), source })
}

fn index_of(meta: &SnapshotMeta) -> u64 {
    meta.last_log_id.as_ref().map_or(0, |id| id.index)
}

impl SnapshotFiles {
    /// The snapshot files in `data_dir`, creating their directory when missing.
    pub(crate) fn open(data_dir: &Path) -> Result<SnapshotFiles, DbError> {
        let dir = data_dir.join(SNAPSHOT_DIR_NAME);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(SnapshotFiles { dir, lock: std::sync::Mutex::new(()) })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("snapshot-{index:020}.bin"))
    }

    /// Writes the blob of the snapshot `meta` durably under its final name.
    pub(crate) fn write(&self, meta: &SnapshotMeta, blob: &[u8]) -> Result<(), DbError> {
        let path = self.path(index_of(meta));
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(blob)?;
            file.sync_data()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(&path, e)
        })
    }

    /// The blob of the snapshot `meta`.
    pub(crate) fn read(&self, meta: &SnapshotMeta) -> Result<Vec<u8>, DbError> {
        let path = self.path(index_of(meta));
        std::fs::read(&path).map_err(|e| io_err(&path, e))
    }

    /// Removes every snapshot file but `keep`'s (older snapshots, and files a crash left before
    /// the meta named them). Failures only leave garbage behind: logged, not returned.
    pub(crate) fn remove_all_but(&self, keep: &SnapshotMeta) {
        let keep = self.path(index_of(keep));
        let Ok(items) = std::fs::read_dir(&self.dir) else { return };
        for item in items.flatten() {
            let path = item.path();
            if path != keep
                && let Err(e) = std::fs::remove_file(&path)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old snapshot file");
            }
        }
    }

    /// Moves a blob that a store before file format 2 kept in redb into its file, then drops
    /// redb's table. Safe to repeat after a crash at any point.
    pub(crate) fn move_out_of(&self, db: &Database) -> Result<(), DbError> {
        let found = {
            let txn = begin_read(db)?;
            let table = match txn.open_table(LEGACY_SNAPSHOT) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let meta: Option<SnapshotMeta> =
                crate::db::read_record(&txn.open_table(SM_META)?, KEY_SNAPSHOT_META, "snapshot meta")?;
            let blob = table.get(KEY_SNAPSHOT_BLOB)?.map(|b| b.value().to_vec());
            meta.zip(blob)
        };
        if let Some((meta, blob)) = found {
            self.write(&meta, &blob)?;
        }
        let txn = begin_write(db)?;
        txn.delete_table(LEGACY_SNAPSHOT)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogId, TypeConfig};
    use openraft::vote::RaftLeaderIdExt;
    use redb::ReadableDatabase;

    fn meta(index: u64) -> SnapshotMeta {
        let leader = <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(1, 1);
        SnapshotMeta { last_log_id: Some(LogId::new(leader, index)), last_membership: Default::default() }
    }

    #[test]
    fn written_read_and_only_the_current_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        files.write(&meta(5), b"five").unwrap();
        files.write(&meta(9), b"nine").unwrap();
        std::fs::write(dir.path().join("snapshots/snapshot-00000000000000000012.tmp"), b"torn").unwrap();
        assert_eq!(files.read(&meta(5)).unwrap(), b"five");
        files.remove_all_but(&meta(9));
        assert_eq!(files.read(&meta(9)).unwrap(), b"nine");
        assert!(files.read(&meta(5)).is_err());
        assert_eq!(std::fs::read_dir(dir.path().join("snapshots")).unwrap().count(), 1);
    }

    #[test]
    fn a_blob_kept_in_the_store_file_moves_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open_database(&dir.path().join("store.redb")).unwrap();
        let txn = begin_write(&db).unwrap();
        {
            let bytes = crate::db::encode("snapshot meta", &meta(7)).unwrap();
            txn.open_table(SM_META).unwrap().insert(KEY_SNAPSHOT_META, bytes.as_slice()).unwrap();
            txn.open_table(LEGACY_SNAPSHOT).unwrap().insert(KEY_SNAPSHOT_BLOB, &b"seven"[..]).unwrap();
        }
        txn.commit().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        files.move_out_of(&db).unwrap();
        files.move_out_of(&db).unwrap();
        assert_eq!(files.read(&meta(7)).unwrap(), b"seven");
        let txn = db.begin_read().unwrap();
        assert!(matches!(txn.open_table(LEGACY_SNAPSHOT), Err(redb::TableError::TableDoesNotExist(_))));
    }
}
