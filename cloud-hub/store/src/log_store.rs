//! openraft's log storage (log entries, vote, committed id) over the store's redb file.
//!
//! Every write that openraft must be able to rely on after a crash (appends, vote, truncation,
//! purge) is a durable redb commit before openraft hears it is done.
//!
//! Appends are two steps, as openraft's `append` asks: the entries are committed without an
//! fdatasync (readable at once, so replication to the followers starts while this hub's disk
//! is still busy), then one flusher thread makes them durable and only then reports them
//! flushed. The flusher takes every append that queued up during its last fdatasync into the
//! next one (group commit), and reports in append order. A crash before the flush loses only
//! entries openraft never counted as this hub's.

use crate::db::{
    self, DbError, KEY_COMMITTED, KEY_FLUSHES, KEY_LAST_PURGED, KEY_VOTE, LOG, RAFT_META, begin_read,
    begin_write, begin_write_with, read_record, run_blocking,
};
use crate::types::{Entry, LogId, TypeConfig, Vote};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, Durability, ReadableTable};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

/// Cheap to clone: openraft hands a clone to every replication task as its log reader.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
    flusher: Arc<Flusher>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> Self {
        let flusher = Arc::new(Flusher::spawn(db.clone()));
        LogStore { db, flusher }
    }
}

/// The thread that makes appended entries durable (see the module's comment). It ends when
/// the last `LogStore` clone is dropped.
struct Flusher {
    queue: std::sync::Mutex<std::sync::mpsc::Sender<IOFlushed<TypeConfig>>>,
}

impl Flusher {
    fn spawn(db: Arc<Database>) -> Flusher {
        let (tx, rx) = std::sync::mpsc::channel::<IOFlushed<TypeConfig>>();
        let run = move || {
            let mut n_flushes: u64 = 0;
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                n_flushes = n_flushes.wrapping_add(1);
                // A durable commit carries every earlier non-durable one to disk; it writes a
                // counter so that it is never an empty transaction.
                let result =
                    write_raft_record(&db, Durability::Immediate, KEY_FLUSHES, "flush count", &n_flushes)
                        .map_err(|e| e.to_string());
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

fn read_entries(db: &Database, start: u64, end: Option<u64>) -> Result<Vec<Entry>, DbError> {
    if end.is_some_and(|end| end <= start) {
        return Ok(Vec::new());
    }
    let txn = begin_read(db)?;
    let log = txn.open_table(LOG)?;
    let range = match end {
        Some(end) => log.range(start..end)?,
        None => log.range(start..)?,
    };
    let mut entries = Vec::new();
    for item in range {
        let (_, value) = item?;
        entries.push(db::decode("log entry", value.value())?);
    }
    Ok(entries)
}

fn write_raft_record<T: serde::Serialize>(
    db: &Database,
    durability: Durability,
    key: &'static str,
    what: &'static str,
    value: &T,
) -> Result<(), DbError> {
    let bytes = db::encode(what, value)?;
    let txn = begin_write_with(db, durability)?;
    txn.open_table(RAFT_META)?.insert(key, bytes.as_slice())?;
    txn.commit()?;
    Ok(())
}

fn read_raft_record<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &'static str,
    what: &'static str,
) -> Result<Option<T>, DbError> {
    let txn = begin_read(db)?;
    let table = txn.open_table(RAFT_META)?;
    read_record(&table, key, what)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = index_range(range.start_bound(), range.end_bound());
        let db = self.db.clone();
        Ok(run_blocking(move || read_entries(&db, start, end)).await?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        let db = self.db.clone();
        Ok(run_blocking(move || read_raft_record(&db, KEY_VOTE, "vote")).await?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let db = self.db.clone();
        let state = run_blocking(move || {
            let txn = begin_read(&db)?;
            let meta = txn.open_table(RAFT_META)?;
            let last_purged_log_id: Option<LogId> =
                read_record(&meta, KEY_LAST_PURGED, "last purged log id")?;
            let log = txn.open_table(LOG)?;
            let last_log_id = match log.last()? {
                Some((_, value)) => Some(db::decode::<Entry>("log entry", value.value())?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState { last_purged_log_id, last_log_id })
        })
        .await?;
        Ok(state)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let db = self.db.clone();
        let vote = *vote;
        run_blocking(move || write_raft_record(&db, Durability::Immediate, KEY_VOTE, "vote", &vote)).await?;
        Ok(())
    }

    /// Saved without its own fdatasync: the next durable commit (an append or an apply) carries
    /// it to disk, and losing the latest value in a crash only means openraft learns the commit
    /// index again from the leader, which it tolerates.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let db = self.db.clone();
        run_blocking(move || {
            write_raft_record(&db, Durability::None, KEY_COMMITTED, "committed log id", &committed)
        })
        .await?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let db = self.db.clone();
        let committed: Option<Option<LogId>> =
            run_blocking(move || read_raft_record(&db, KEY_COMMITTED, "committed log id")).await?;
        Ok(committed.flatten())
    }

    /// Commits all of openraft's entries in one transaction, readable at once; the flusher
    /// reports them flushed once they are durable.
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let res = run_blocking(move || {
            let txn = begin_write_with(&db, Durability::None)?;
            {
                let mut log = txn.open_table(LOG)?;
                for entry in &entries {
                    let bytes = db::encode("log entry", entry)?;
                    log.insert(entry.log_id.index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await;
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
        let db = self.db.clone();
        run_blocking(move || {
            let txn = begin_write(&db)?;
            txn.open_table(LOG)?.retain_in(first_removed.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let db = self.db.clone();
        run_blocking(move || {
            let bytes = db::encode("last purged log id", &log_id)?;
            let txn = begin_write(&db)?;
            txn.open_table(LOG)?.retain_in(..=log_id.index, |_, _| false)?;
            txn.open_table(RAFT_META)?.insert(KEY_LAST_PURGED, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await?;
        Ok(())
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
            let sm = StateMachineStore::new(db.clone(), Arc::new(Publisher::new(0, Default::default())));
            Ok((dir, LogStore::new(db), sm))
        }
    }

    /// openraft's own conformance suite for log storage and state machines.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        Suite::test_all(TempStoreBuilder).await.expect("storage suite");
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
