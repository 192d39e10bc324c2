//! The wire format of hub-to-hub Raft RPCs, shared by the client (`network.rs`) and the server
//! (`server.rs`): paths, the target-node header, body limits and the versioned envelope.
//!
//! Bodies are openraft's own serde messages encoded with postcard behind a version number.
//! Both sides of one cluster must run the same openraft version: its messages are encoded
//! positionally, so an upgrade that changes them must bump [`RPC_FORMAT_VERSION`].

use crate::types::{SnapshotMeta, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared_proto::CodecError;

pub(crate) const RPC_FORMAT_VERSION: u32 = 1;

pub(crate) const PATH_APPEND: &str = "/raft/append";
pub(crate) const PATH_VOTE: &str = "/raft/vote";
pub(crate) const PATH_PRE_VOTE: &str = "/raft/pre-vote";
pub(crate) const PATH_SNAPSHOT: &str = "/raft/snapshot";

/// The node id the sender means to reach. A hub refuses RPCs meant for another node, so a
/// stale address that now belongs to a different hub cannot feed it the wrong log.
pub(crate) const HEADER_TARGET_NODE: &str = "x-flotilla-raft-node";

/// Append, vote and pre-vote bodies: at most `MAX_PAYLOAD_ENTRIES` entries of at most
/// `MAX_COMMAND_BYTES` each, plus per-entry framing.
pub(crate) const RPC_BODY_LIMIT: usize =
    crate::config::MAX_PAYLOAD_ENTRIES as usize * (crate::MAX_COMMAND_BYTES + 4096) + 1024 * 1024;
/// A snapshot is the whole store in one body.
pub(crate) const SNAPSHOT_BODY_LIMIT: usize = 1024 * 1024 * 1024;

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
