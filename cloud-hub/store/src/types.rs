//! The openraft type configuration of the hub's store, and the short names the rest of the
//! crate uses for openraft's generic types. This is the only place the pinned alpha's type
//! machinery is spelled out, so an openraft upgrade starts here.

use serde::{Deserialize, Serialize};
use shared_proto::store::StoreOutcome;
use std::fmt;

/// Identifies one hub in the Raft cluster. Never reuse the id of a removed hub for a hub that
/// starts from an empty data directory (openraft: "node ids must not be reused").
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's view of the hub store: log entries carry encoded [`StoreCommand`]s.
    ///
    /// [`StoreCommand`]: shared_proto::store::StoreCommand
    pub TypeConfig:
        D = CommandBytes,
        R = ApplyResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// The payload of a normal log entry: a `StoreCommand` in its versioned envelope.
///
/// Entries keep the encoded bytes rather than the decoded command so that a command this build
/// cannot read (a newer format, a corrupt entry) reaches the state machine, which rejects it
/// deterministically instead of failing the whole replication RPC or crashing the node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBytes(pub Vec<u8>);

impl fmt::Debug for CommandBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandBytes({} bytes)", self.0.len())
    }
}

impl fmt::Display for CommandBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store command ({} bytes)", self.0.len())
    }
}

/// What the state machine answers the proposer of one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResponse {
    /// The command was read and evaluated: applied or refused by a precondition.
    Outcome(StoreOutcome),
    /// The command could not be read or stored; nothing was written.
    Rejected(String),
}

/// The in-memory snapshot handle: the whole snapshot blob (see `snapshot.rs` for its layout).
pub type SnapshotBlob = Vec<u8>;

pub(crate) type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub(crate) type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub(crate) type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotBlob>;
pub(crate) type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachineStore>;
