//! The redb file every hub keeps its replica in: table layout, the versioned postcard
//! envelope for openraft's own records, and the storage error type.
//!
//! The database holds the state machine (objects, applied state, snapshot), so every change
//! that must be atomic is one redb transaction and a crash can never leave a half-written state
//! behind. The Raft log and its records (vote, committed, purge point) live beside it in their
//! own files (`wal.rs`), which are fdatasync'ed before the state machine's durable commits.

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared_proto::CodecError;
use std::path::Path;

/// The Raft log before file format 2: log index -> encoded openraft `Entry`. The log now lives in
/// its own files (`wal.rs`); `log_store::open_log` moves an old one out and deletes the table.
pub(crate) const LEGACY_LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
/// [`KEY_FORMAT`]; before file format 2 also Raft's own records ([`KEY_VOTE`], [`KEY_COMMITTED`],
/// [`KEY_LAST_PURGED`], [`KEY_FLUSHES`]), which now live in the raft log's files.
pub(crate) const RAFT_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");
/// The state machine's small records: [`KEY_APPLIED`], [`KEY_MEMBERSHIP`], [`KEY_SNAPSHOT_META`].
pub(crate) const SM_META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sm_meta");
/// Before file format 2, the current snapshot blob under [`KEY_SNAPSHOT_BLOB`]; it now lives in
/// a file (`snapshot_files.rs`), named by the meta in [`SM_META`].
pub(crate) const LEGACY_SNAPSHOT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshot");
/// The objects: `kind/name` -> (mod revision, create revision, `Object::encode()` bytes).
///
/// Revisions live beside the bytes rather than inside the object because only the API kinds
/// carry `ObjectMeta`; tokens, the CA and manifests still need them for preconditions.
pub(crate) const OBJECTS: TableDefinition<'_, &str, (u64, u64, &[u8])> = TableDefinition::new("objects");

pub(crate) const KEY_FORMAT: &str = "format";
pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
/// Before file format 2: how many times the log's flusher made appends durable.
pub(crate) const KEY_FLUSHES: &str = "flushes";
pub(crate) const KEY_APPLIED: &str = "applied";
pub(crate) const KEY_MEMBERSHIP: &str = "membership";
pub(crate) const KEY_SNAPSHOT_META: &str = "snapshot_meta";
pub(crate) const KEY_SNAPSHOT_BLOB: &str = "current";

/// Version of this file's layout, under [`KEY_FORMAT`]. 2: the Raft log and its records live in
/// their own files. A format-1 file is migrated when opened (`log_store::open_log`); a hub
/// from before refuses a format-2 file rather than mistaking it for a node that never voted.
pub(crate) const DB_FORMAT_VERSION: u32 = 2;
/// The last file format that kept the Raft log inside this file.
pub(crate) const DB_FORMAT_LOG_INSIDE: u32 = 1;

/// Version of the envelope of every openraft record (in this file and in the raft log's
/// entries). openraft's serde types are encoded positionally by postcard, so an openraft upgrade
/// that changes one of them must bump this and migrate (openraft marks such changes
/// `DataChange:` in its change log).
pub(crate) const RECORD_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("store database: {0}")]
    Redb(#[from] redb::Error),
    #[error("stored {what} is unreadable: {source}")]
    Corrupt {
        what: &'static str,
        #[source]
        source: CodecError,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: CodecError,
    },
    #[error(
        "the store database has format version {found}, this build reads version {supported}: \
         use a matching hub version"
    )]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("snapshot is unusable: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error("storage task failed: {0}")]
    Task(String),
}

/// redb has one error type per operation; they all mean "the storage failed".
macro_rules! redb_errors_are_db_errors {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Redb(e.into())
            }
        })*
    };
}
redb_errors_are_db_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

impl From<DbError> for std::io::Error {
    fn from(e: DbError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Opens (creating if needed) the store database and makes sure every table exists, so read
/// transactions never meet a missing table.
pub(crate) fn open_database(path: &Path) -> Result<Database, DbError> {
    let db = Database::builder().create(path)?;
    let txn = begin_write(&db)?;
    {
        let mut raft_meta = txn.open_table(RAFT_META)?;
        let format = raft_meta.get(KEY_FORMAT)?.map(|v| decode_u32(v.value())).transpose()?;
        match format {
            Some(DB_FORMAT_VERSION | DB_FORMAT_LOG_INSIDE) => {}
            Some(found) => {
                return Err(DbError::UnsupportedFormat { found, supported: DB_FORMAT_VERSION });
            }
            None => {
                let bytes = encode("format version", &DB_FORMAT_VERSION)?;
                raft_meta.insert(KEY_FORMAT, bytes.as_slice())?;
            }
        }
        txn.open_table(SM_META)?;
        txn.open_table(OBJECTS)?;
    }
    txn.commit()?;
    Ok(db)
}

fn decode_u32(bytes: &[u8]) -> Result<u32, DbError> {
    decode("format version", bytes)
}

/// Starts a durable write transaction: commit returns only after fdatasync.
pub(crate) fn begin_write(db: &Database) -> Result<WriteTransaction, DbError> {
    begin_write_with(db, Durability::Immediate)
}

pub(crate) fn begin_write_with(db: &Database, durability: Durability) -> Result<WriteTransaction, DbError> {
    let mut txn = db.begin_write()?;
    // Recovery after a crash must not scan the whole file before the hub can serve again.
    txn.set_quick_repair(true);
    txn.set_durability(durability)?;
    Ok(txn)
}

/// Encodes one of openraft's records (or our own small values) in the versioned envelope.
pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, DbError> {
    shared_proto::encode_versioned(RECORD_FORMAT_VERSION, what, value)
        .map_err(|source| DbError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DbError> {
    shared_proto::decode_versioned(RECORD_FORMAT_VERSION, what, bytes)
        .map_err(|source| DbError::Corrupt { what, source })
}

/// Reads and decodes one small record, `None` when it was never written.
pub(crate) fn read_record<T, Tbl>(table: &Tbl, key: &str, what: &'static str) -> Result<Option<T>, DbError>
where
    T: DeserializeOwned,
    Tbl: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key)? {
        Some(guard) => Ok(Some(decode(what, guard.value())?)),
        None => Ok(None),
    }
}

/// Runs synchronous redb work off the async workers: redb blocks on fdatasync.
pub(crate) async fn run_blocking<T, F>(f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DbError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| DbError::Task(e.to_string()))?
}

/// Reads with a fresh read transaction on the calling thread. redb reads are MVCC snapshots that
/// never wait for writers, so this is cheap enough for the synchronous local-read API.
pub(crate) fn begin_read(db: &Database) -> Result<redb::ReadTransaction, DbError> {
    Ok(db.begin_read()?)
}
