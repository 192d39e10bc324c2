//! Records the agent keeps in its state database, so that it can run its last desired
//! state after a restart or a reboot with no hub in reach.

use crate::manifest::DesiredManifest;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Version of every record encoded here.
pub const AGENT_STATE_VERSION: u32 = 1;

/// Who this agent is, written once enrolment succeeds. Key and certificates live in
/// files next to the database (`device.key`, `device.crt`, `ca.crt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    pub device: String,
    /// `host:port` of the hub's QUIC endpoint at enrolment.
    pub hub: String,
    pub enrolled_at: Timestamp,
}

/// The last desired manifest received from the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDesired {
    pub manifest: DesiredManifest,
    pub received_at: Timestamp,
}

/// How to run a process from an image, taken from its OCI config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    /// `uid[:gid]` or a name; empty means root.
    pub user: String,
}

/// An image unpacked on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:…` of the platform image manifest.
    pub manifest_digest: String,
    pub config: ImageRunConfig,
    /// Directory holding the unpacked, read-only root filesystem.
    pub rootfs: String,
    /// Bytes of the unpacked tree.
    pub size: u64,
    pub unpacked_at: Timestamp,
}

/// A container this agent created; lets a restarted agent adopt what runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    pub generation: u64,
    /// Hash of the desired container spec it was created from.
    pub spec_hash: String,
    pub image_digest: String,
    pub created_at: Timestamp,
    pub restarts: u32,
}

macro_rules! record_codec {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl $t {
            pub fn encode(&self) -> Result<Vec<u8>, crate::CodecError> {
                crate::codec::encode_versioned(AGENT_STATE_VERSION, $what, self)
            }
            pub fn decode(bytes: &[u8]) -> Result<Self, crate::CodecError> {
                crate::codec::decode_versioned(AGENT_STATE_VERSION, $what, bytes)
            }
        }
    )*};
}

record_codec!(
    AgentIdentity => "agent identity",
    HeldDesired => "held desired manifest",
    ImageRecord => "image record",
    ContainerRecord => "container record",
);
