//! How a hub's store is started ([`StoreConfig`]) and tuned ([`RaftTuning`]), and the openraft
//! configuration derived from them.

use crate::history::HistoryLimits;
use crate::types::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where a hub keeps its replica and how it finds its peers.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Store files live here (created if missing).
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// Address this node's Raft RPC listener binds, and that peers use. `None` = single-node,
    /// no listener.
    pub raft_addr: Option<SocketAddr>,
    /// On first start with an empty store: initialise a new cluster with exactly these members
    /// (node id -> raft addr). Empty = a one-member cluster of this node.
    ///
    /// A node that will join an existing cluster through [`Store::add_member`] must not form its
    /// own: give it a map that does not contain its own id (for example the running cluster's
    /// members); it then waits, uninitialised, for the leader to add it.
    ///
    /// [`Store::add_member`]: crate::Store::add_member
    pub initial_members: BTreeMap<NodeId, String>,
    /// Mutual TLS with the other hubs (see `peer_tls.rs`). `None`: plain HTTP, for tests and
    /// benchmarks on loopback only; the hub always sets it when it has peers.
    pub peer_tls: Option<crate::PeerTls>,
}

impl StoreConfig {
    /// A one-member store with no Raft listener.
    pub fn single_node(data_dir: PathBuf) -> StoreConfig {
        StoreConfig {
            data_dir,
            node_id: 1,
            raft_addr: None,
            initial_members: BTreeMap::new(),
            peer_tls: None,
        }
    }
}

/// The most entries one AppendEntries RPC carries. With [`MAX_COMMAND_BYTES`] it bounds an RPC
/// body; small entries still replicate at tens of thousands per second per follower on a LAN.
///
/// [`MAX_COMMAND_BYTES`]: crate::MAX_COMMAND_BYTES
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// Raft timing and log-compaction knobs. The defaults suit hubs on loopback or a LAN.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_min, election_timeout_max)` starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and then purge the log behind it) every this many applied entries.
    pub snapshot_every_n_logs: u64,
    /// Entries already covered by a snapshot that are kept anyway, so that a briefly lagging
    /// follower catches up from the log instead of receiving a whole snapshot.
    pub n_logs_kept_after_snapshot: u64,
    /// Most entries in one AppendEntries RPC, at most [`MAX_PAYLOAD_ENTRIES`].
    pub max_payload_entries: u64,
    /// How much recent history this hub keeps in memory for watches and list pages that
    /// start at a past revision (see `history.rs`).
    pub watch_history: HistoryLimits,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            // Like etcd (100,000 and 5,000): a snapshot serialises the whole store, and the
            // state machine is durable in its own file, so the log only has to bound disk use
            // and how far a follower may fall behind before it gets a snapshot instead.
            snapshot_every_n_logs: 50_000,
            n_logs_kept_after_snapshot: 5_000,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            watch_history: HistoryLimits::default(),
        }
    }
}

impl RaftTuning {
    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, openraft::ConfigError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: "flotilla-hub".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            // Sending and installing a whole store over a LAN; openraft's default (200 ms) is
            // for tiny test snapshots.
            install_snapshot_timeout: 60_000,
            max_payload_entries: self.max_payload_entries.clamp(1, MAX_PAYLOAD_ENTRIES),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every_n_logs),
            max_in_snapshot_log_to_keep: self.n_logs_kept_after_snapshot,
            // openraft wants this above the snapshot interval: a follower further behind than
            // this gets a snapshot, and one snapshot must be enough to catch it up.
            replication_lag_threshold: self.snapshot_every_n_logs.saturating_mul(2),
            // Purge in batches rather than after every applied entry past the kept window.
            purge_batch_size: self.n_logs_kept_after_snapshot.clamp(1, 256),
            // Applies are not fdatasync'ed on their own (see `state_machine::APPLY_DURABILITY`),
            // so after a crash the state machine may be behind what this node acknowledged as
            // leader: it must win a fresh election, whose first committed entry makes it
            // re-apply everything, before it serves linearizable reads again.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
    }
}
