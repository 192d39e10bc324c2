//! Records the agent keeps in its state database, so that it can run its last desired
//! state after a restart or a reboot with no hub in reach.

use crate::manifest::DesiredManifest;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Version of every record encoded here. Version 2 moved the held manifest to
/// manifest shape 2 and gave container records their stop policy; every other record
/// kept its shape.
pub const AGENT_STATE_VERSION: u32 = 2;
/// Oldest version still read: what the previous agent release stored.
pub const MIN_AGENT_STATE_VERSION: u32 = 1;

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
    /// Version 2: one of the app's init containers.
    pub init: bool,
    /// Version 2: how it stops, kept so that a container whose app is gone from the
    /// desired state still gets its app's grace period and pre-stop hook.
    pub grace_period_seconds: u32,
    pub pre_stop: Option<crate::workload::Handler>,
}

/// The addresses isolated apps hold on the device bridge (`edge-agent`'s `net::ipam`),
/// kept so that an app keeps its address across agent restarts and device reboots.
/// A record of its own, added at version 2 (no earlier agent wrote one).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BridgeAddresses {
    /// The network they were given from (`10.88.0.0/16`); a new one starts afresh.
    pub subnet: String,
    /// App name and its IPv4 address, sorted by name.
    pub apps: Vec<(String, [u8; 4])>,
}

/// The site peers the hub last named, per app: kept so that a device balances its
/// published ports across the store's devices with the hub out of reach.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SitePeers {
    pub apps: Vec<crate::wire::AppPeers>,
}

/// The cluster's hubs as the hub last named them (`wire::HubFrame::Hubs`): kept so
/// that a device restarted while its hub is gone still knows the others.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KnownHubs {
    pub hubs: Vec<crate::wire::HubEndpoint>,
}

/// How a record written at an older version reads: through a frozen shape, or as
/// it is when its shape did not change.
trait OlderShapes: Sized + serde::de::DeserializeOwned {
    fn decode_older(_version: u32, what: &'static str, body: &[u8]) -> Result<Self, crate::CodecError> {
        crate::codec::decode_body(what, body)
    }
}

/// `HeldDesired` as version 1 wrote it.
#[derive(Deserialize)]
struct HeldDesiredV1 {
    manifest: crate::manifest::v1::DesiredManifest,
    received_at: Timestamp,
}

impl OlderShapes for HeldDesired {
    fn decode_older(_version: u32, what: &'static str, body: &[u8]) -> Result<Self, crate::CodecError> {
        let old: HeldDesiredV1 = crate::codec::decode_body(what, body)?;
        Ok(HeldDesired { manifest: old.manifest.into(), received_at: old.received_at })
    }
}
/// `ContainerRecord` as version 1 wrote it.
#[derive(Deserialize)]
struct ContainerRecordV1 {
    id: String,
    app: String,
    name: String,
    generation: u64,
    spec_hash: String,
    image_digest: String,
    created_at: Timestamp,
    restarts: u32,
}

impl OlderShapes for ContainerRecord {
    fn decode_older(_version: u32, what: &'static str, body: &[u8]) -> Result<Self, crate::CodecError> {
        let old: ContainerRecordV1 = crate::codec::decode_body(what, body)?;
        Ok(ContainerRecord {
            id: old.id,
            app: old.app,
            name: old.name,
            generation: old.generation,
            spec_hash: old.spec_hash,
            image_digest: old.image_digest,
            created_at: old.created_at,
            restarts: old.restarts,
            init: false,
            grace_period_seconds: crate::manifest::v1::DEFAULT_GRACE_SECONDS,
            pre_stop: None,
        })
    }
}
impl OlderShapes for AgentIdentity {}
impl OlderShapes for ImageRecord {}
impl OlderShapes for BridgeAddresses {}
impl OlderShapes for SitePeers {}
impl OlderShapes for KnownHubs {}

macro_rules! record_codec {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl $t {
            pub fn encode(&self) -> Result<Vec<u8>, crate::CodecError> {
                crate::codec::encode_versioned(AGENT_STATE_VERSION, $what, self)
            }
            pub fn decode(bytes: &[u8]) -> Result<Self, crate::CodecError> {
                crate::codec::decode_versioned_range(
                    MIN_AGENT_STATE_VERSION,
                    AGENT_STATE_VERSION,
                    $what,
                    bytes,
                    |v, body| match v {
                        AGENT_STATE_VERSION => crate::codec::decode_body($what, body),
                        older => <$t as OlderShapes>::decode_older(older, $what, body),
                    },
                )
                .map(|(_, r)| r)
            }
        }
    )*};
}

record_codec!(
    AgentIdentity => "agent identity",
    HeldDesired => "held desired manifest",
    ImageRecord => "image record",
    ContainerRecord => "container record",
    BridgeAddresses => "bridge addresses",
    SitePeers => "site peers",
    KnownHubs => "known hubs",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_manifest_of_version_1_reads_with_the_new_fields_defaulted() {
        let old = crate::manifest::v1::DesiredManifest {
            device: "pi".into(),
            revision: 7,
            apps: vec![crate::manifest::v1::DesiredApp {
                name: "web".into(),
                generation: 2,
                restart_policy: crate::RestartPolicy::Always,
                network: crate::NetworkMode::Host,
                containers: vec![],
            }],
        };
        let bytes = crate::codec::encode_versioned(1, "held", &(old, Timestamp(5))).unwrap();
        let held = HeldDesired::decode(&bytes).unwrap();
        assert_eq!(held.manifest.revision, 7);
        assert_eq!(held.manifest.apps[0].grace_period_seconds, crate::manifest::v1::DEFAULT_GRACE_SECONDS);
        assert_eq!(HeldDesired::decode(&held.encode().unwrap()).unwrap(), held);
        // Records whose shape did not change read at either version.
        let c = ContainerRecord {
            id: "web_a_1".into(),
            app: "web".into(),
            name: "a".into(),
            generation: 1,
            spec_hash: "1".into(),
            image_digest: "sha256:x".into(),
            created_at: Timestamp(1),
            restarts: 0,
            init: false,
            grace_period_seconds: 10,
            pre_stop: None,
        };
        let v1 = crate::codec::encode_versioned(
            1,
            "c",
            &(&c.id, &c.app, &c.name, c.generation, &c.spec_hash, &c.image_digest, c.created_at, c.restarts),
        )
        .unwrap();
        assert_eq!(
            ContainerRecord::decode(&v1).unwrap(),
            c,
            "a version-1 record gets the default stop policy"
        );
        assert_eq!(ContainerRecord::decode(&c.encode().unwrap()).unwrap(), c);
        // Identity records kept their shape: version 1 reads as it is.
        let id = AgentIdentity { device: "pi".into(), hub: "h:1".into(), enrolled_at: Timestamp(3) };
        assert_eq!(AgentIdentity::decode(&crate::codec::encode_versioned(1, "i", &id).unwrap()).unwrap(), id);
    }
}
