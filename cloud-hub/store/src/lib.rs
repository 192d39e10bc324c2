//! The hub's replicated store: objects (sites, devices, apps, images, manifests, tokens, the
//! fleet CA) kept by openraft over one redb file and a raft log per hub. The only crate that uses openraft.
//!
//! Writes go through Raft and return once committed and applied on this node; the revision of
//! a write is the log index of its entry, identical on every hub. Reads are either linearizable
//! ([`Store::get`], [`Store::list`]: a read-index barrier on the leader, then a local read) or
//! local and possibly stale ([`Store::get_local`], [`Store::list_local`]). Watchers subscribe
//! to every applied change in revision order ([`Store::subscribe`]).
//!
//! Map of the crate: `types.rs` declares openraft's type configuration; `db.rs` the redb layout;
//! `wal.rs` the raft log's own files; `log_store.rs` and `state_machine.rs` implement openraft's storage traits; `apply.rs` is the
//! pure state-machine semantics; `snapshot.rs` the snapshot blob; `snapshot_files.rs` where the current one is kept; `backup.rs` backup
//! files and the offline restore; `rpc.rs`, `network.rs` and
//! `server.rs` the hub-to-hub Raft RPCs over HTTP (mutual TLS with `peer_tls.rs`), the
//! frequent ones as frames (`frames.rs`); `forward.rs`
//! how a follower hands writes, read indexes and membership changes to the leader; `history.rs` the window of recent changes that
//! watches and list pages at a past revision read; `paging.rs` those pages; `store.rs` the [`Store`] facade tying them
//! together; `progress.rs` Raft's progress for metrics and the liveness probe.

mod apply;
mod backup;
mod config;
mod db;
mod forward;
mod frames;
mod history;
mod log_store;
mod network;
mod paging;
mod peer_tls;
mod progress;
mod rpc;
mod server;
mod snapshot;
mod snapshot_files;
mod state_machine;
mod store;
mod types;
mod wal;

pub use backup::{
    BACKUP_FORMAT_VERSION, BackupError, BackupHeader, MAX_BACKUP_FILE_BYTES, RestoreError, RestoreTarget,
    VerifiedBackup, decode_backup, read_backup_file, restore_store,
};
pub use config::{MAX_PAYLOAD_ENTRIES, RaftTuning, StoreConfig};
pub use history::{HistoryLimits, HistoryPage, RevisionEvents, WatchEvent, is_watched_kind};
pub use peer_tls::{PEER_NAME_SUFFIX, PeerTls, peer_ids, peer_name};
pub use progress::RaftProgress;
pub use store::Store;
pub use types::NodeId;

use crate::db::DbError;
use shared_proto::store::{Object, StoreKind};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The file, in `data_dir`, that holds the whole replica.
pub const DB_FILE_NAME: &str = "store.redb";

/// The largest encoded command `write` accepts. Every entry travels in one RPC body to every
/// follower, so a bound on entries bounds RPC bodies (see `rpc.rs`).
pub const MAX_COMMAND_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request went to a follower; send it to `leader` (at `leader_addr`, its raft address)
    /// if one is known, or retry later if not.
    #[error(
        "this hub is not the leader (leader: {leader:?} at {leader_addr:?}): send the request to the leader"
    )]
    NotLeader { leader: Option<NodeId>, leader_addr: Option<String> },
    /// No quorum, an election or leader change in progress, or shutting down: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request itself is unacceptable (an unreadable command, a conflicting membership
    /// change): retrying it unchanged will fail again.
    #[error("request rejected: {0}")]
    Rejected(String),
    /// The revision asked for is older than this hub's history window: list again, and
    /// watch from the list's revision.
    #[error(
        "revision {requested} is too old: this hub keeps the changes after revision {oldest}; list again and watch from the list's revision"
    )]
    Compacted { requested: u64, oldest: u64 },
    /// Storage is broken: this node is broken and must be taken out of service.
    #[error("store failed: {0}")]
    Fatal(String),
    /// The command could not be encoded: the caller built an object postcard cannot carry.
    #[error(transparent)]
    Codec(#[from] shared_proto::CodecError),
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::Fatal(e.to_string())
    }
}

/// Everything one applied log entry changed (one change per key, ordered by key). Batches
/// arrive in revision order. Installing a snapshot from the leader arrives as one batch, at the
/// snapshot's revision, holding the net difference.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeBatch {
    /// The entry's log index: the new revision of every changed key.
    pub revision: u64,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: StoreKind,
    pub name: String,
    /// The object as stored now; `None` when it was deleted.
    pub object: Option<Arc<Object>>,
}

/// An object with the revisions the store keeps for its key, for every kind (only the API
/// kinds also carry them in their `metadata`).
#[derive(Debug, Clone, PartialEq)]
pub struct Revisioned {
    pub object: Object,
    /// Revision of the last write to the key: what `Precondition::RevisionIs` compares with.
    pub revision: u64,
    pub create_revision: u64,
}

/// Which page of a list to read (see [`Store::list_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Start after this name (the last one of the previous page).
    pub after: Option<String>,
    /// Read the list as it was at this revision (the first page's); `None` for the first
    /// page: a linearizable read of the current state.
    pub at: Option<u64>,
    /// Most objects returned; `None` for all.
    pub limit: Option<usize>,
}

/// One page of a list, as of one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The revision the whole list is read at.
    pub revision: u64,
    /// Objects that passed the filter, sorted by name.
    pub items: Vec<Object>,
    /// Set when the page is full and more names follow: where the next page starts after.
    pub next_after: Option<String>,
}

/// A point-in-time view of this node's Raft state, for health endpoints and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    /// Same as [`Store::revision`].
    pub revision: u64,
    pub last_log_index: Option<u64>,
    /// Last log index covered by this node's current snapshot.
    pub snapshot_revision: Option<u64>,
    /// Log entries up to this index have been purged from this node's log.
    pub purged_revision: Option<u64>,
    /// Voting members, id -> raft address.
    pub voters: BTreeMap<NodeId, String>,
    /// Non-voting members catching up, id -> raft address.
    pub learners: BTreeMap<NodeId, String>,
}
