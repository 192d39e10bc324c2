//! The wire format of hub-to-hub Raft RPCs, shared by the client (`network.rs`) and the server
//! (`server.rs`): paths, the target-node header, body limits and the versioned envelope.
//!
//! Bodies are openraft's own serde messages encoded with postcard behind a version number.
//! Both sides of one cluster must run the same openraft version: its messages are encoded
//! positionally, so an upgrade that changes them must bump [`RPC_FORMAT_VERSION`].

use crate::StoreError;
use crate::types::{NodeId, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shared_proto::CodecError;

pub(crate) const RPC_FORMAT_VERSION: u32 = 1;

pub(crate) const PATH_APPEND: &str = "/raft/append";
pub(crate) const PATH_VOTE: &str = "/raft/vote";
pub(crate) const PATH_PRE_VOTE: &str = "/raft/pre-vote";
pub(crate) const PATH_SNAPSHOT: &str = "/raft/snapshot";
/// A follower hands a client write to the leader: body an encoded `StoreCommand` (as in a log
/// entry), answer a [`Forwarded`]`<(ApplyResponse, u64)>` with the entry's log index.
pub(crate) const PATH_FORWARD_WRITE: &str = "/raft/forward/write";
/// A follower asks the leader for a read index: answer a [`Forwarded`]`<u64>`, the log index
/// the follower must have applied before its local read is linearizable.
pub(crate) const PATH_FORWARD_READ_INDEX: &str = "/raft/forward/read-index";
/// A membership change made on a follower: body a [`MembershipChange`], answer a
/// [`Forwarded`]`<()>`.
pub(crate) const PATH_FORWARD_MEMBERSHIP: &str = "/raft/forward/membership";

/// The node id the sender means to reach. A hub refuses RPCs meant for another node, so a
/// stale address that now belongs to a different hub cannot feed it the wrong log.
pub(crate) const HEADER_TARGET_NODE: &str = "x-flotilla-raft-node";

/// Append, vote and pre-vote bodies: at most `MAX_PAYLOAD_ENTRIES` entries of at most
/// `MAX_COMMAND_BYTES` each, plus per-entry framing.
pub(crate) const RPC_BODY_LIMIT: usize =
    crate::config::MAX_PAYLOAD_ENTRIES as usize * (crate::MAX_COMMAND_BYTES + 4096) + 1024 * 1024;
/// A snapshot is the whole store in one body.
pub(crate) const SNAPSHOT_BODY_LIMIT: usize = 1024 * 1024 * 1024;

/// The answer to a forwarded request. Forwarding handlers always answer 200 with one of these,
/// so that any other status means the request was not processed (and a write may be retried).
pub(crate) type Forwarded<T> = Result<T, WireError>;

/// A store error as it crosses between hubs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireError {
    /// The receiver is not (or no longer) the leader: nothing was proposed.
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    Unavailable(String),
    Rejected(String),
    Fatal(String),
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotLeader { leader, leader_addr } => WireError::NotLeader { leader, leader_addr },
            StoreError::Unavailable(m) => WireError::Unavailable(m),
            StoreError::Rejected(m) => WireError::Rejected(m),
            StoreError::Compacted { .. } => WireError::Unavailable(e.to_string()),
            StoreError::Fatal(m) => WireError::Fatal(format!("on the leader: {m}")),
            StoreError::Codec(c) => WireError::Rejected(c.to_string()),
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotLeader { leader, leader_addr } => StoreError::NotLeader { leader, leader_addr },
            WireError::Unavailable(m) => StoreError::Unavailable(m),
            WireError::Rejected(m) => StoreError::Rejected(m),
            // The leader's storage failing does not make this hub's broken.
            WireError::Fatal(m) => StoreError::Unavailable(m),
        }
    }
}

/// A membership change forwarded to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MembershipChange {
    Add { id: NodeId, raft_addr: String },
    Remove { id: NodeId },
}

pub(crate) fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    shared_proto::encode_versioned(RPC_FORMAT_VERSION, what, value)
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    shared_proto::decode_versioned(RPC_FORMAT_VERSION, what, bytes)
}

/// A snapshot body: the envelope with the leader's vote and the snapshot meta, then the blob
/// as raw bytes (no per-byte encoding of a possibly large blob).
pub(crate) fn encode_snapshot(vote: &Vote, meta: &SnapshotMeta, blob: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut body = encode("raft snapshot header", &(vote, meta))?;
    body.extend_from_slice(blob);
    Ok(body)
}

pub(crate) fn decode_snapshot(body: &[u8]) -> Result<(Vote, SnapshotMeta, Vec<u8>), CodecError> {
    let what = "raft snapshot header";
    let (version, rest) = shared_proto::codec::peek_version(body, what)?;
    if version != RPC_FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version, supported: RPC_FORMAT_VERSION });
    }
    let ((vote, meta), blob) = postcard::take_from_bytes::<(Vote, SnapshotMeta)>(rest)
        .map_err(|source| CodecError::Malformed { what, source })?;
    Ok((vote, meta, blob.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogId, StoredMembership, TypeConfig};
    use openraft::raft::VoteRequest;
    use openraft::vote::RaftLeaderIdExt;
    use openraft::{Membership, RaftTypeConfig};
    use std::collections::BTreeSet;

    type LeaderId = <TypeConfig as RaftTypeConfig>::LeaderId;

    /// Pins how openraft's messages encode, so an openraft upgrade that changes them fails here
    /// and gets a new `RPC_FORMAT_VERSION` (and `db::RECORD_FORMAT_VERSION`, as the log stores entries).
    #[test]
    fn golden_vote_request() {
        let req = VoteRequest::<TypeConfig>::new(
            Vote::new(3, 2),
            Some(LogId::new(LeaderId::new_committed(2, 1), 7)),
        );
        let bytes = encode("test", &req).unwrap();
        assert_eq!(bytes, [1, 3, 2, 0, 1, 2, 1, 7, 0], "{bytes:?}");
        let back: VoteRequest<TypeConfig> = decode("test", &bytes).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn snapshot_body_round_trip() {
        let membership = Membership::new_with_defaults(vec![BTreeSet::from([1, 2])], []);
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(LeaderId::new_committed(4, 1), 90)),
            last_membership: StoredMembership::new(
                Some(LogId::new(LeaderId::new_committed(1, 1), 0)),
                membership,
            ),
        };
        let vote = Vote::new_committed(4, 1);
        let body = encode_snapshot(&vote, &meta, b"blob").unwrap();
        assert!(body.ends_with(b"blob"));
        assert_eq!(decode_snapshot(&body).unwrap(), (vote, meta, b"blob".to_vec()));
        let mut newer = body.clone();
        newer[0] = 2;
        assert!(matches!(decode_snapshot(&newer), Err(CodecError::UnsupportedVersion { found: 2, .. })));
        assert!(decode_snapshot(&body[..5]).is_err());
    }
}
