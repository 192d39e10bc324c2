//! What the hub's Raft-replicated store holds and the commands that change it.
//!
//! Commands are the payload of Raft log entries, so they travel between hubs and sit
//! in every hub's log on disk. The state machine applies them deterministically: every
//! object written by the entry at log index `i` gets `metadata.revision = i`, which
//! makes revisions global, monotonic and identical on every hub.

use crate::manifest::DesiredManifest;
use crate::resource::{App, Device, Image, Kind, ObjectMeta, Site};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

mod v1;
mod v2;

/// Version of every record and command this build writes.
pub const STORE_FORMAT_VERSION: u32 = 3;
/// Oldest version this build reads: records, snapshots and logs written by the
/// previous version of the hub.
pub const MIN_STORE_FORMAT_VERSION: u32 = 1;

/// Every kind of record the store keeps: the API's kinds plus the hub's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StoreKind {
    Site,
    Device,
    App,
    Image,
    /// The desired manifest of one device, named after the device.
    Manifest,
    EnrolmentToken,
    ApiToken,
    /// The fleet CA, a single record named `fleet`.
    FleetCa,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Site => "site",
            StoreKind::Device => "device",
            StoreKind::App => "app",
            StoreKind::Image => "image",
            StoreKind::Manifest => "manifest",
            StoreKind::EnrolmentToken => "enrolment-token",
            StoreKind::ApiToken => "api-token",
            StoreKind::FleetCa => "fleet-ca",
        }
    }

    /// The storage key of `name` under this kind: `kind/name`. Keys of one kind share a
    /// prefix, so a range scan lists them.
    pub fn key(self, name: &str) -> String {
        format!("{}/{}", self.as_str(), name)
    }

    pub fn prefix(self) -> String {
        format!("{}/", self.as_str())
    }
}

impl From<Kind> for StoreKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Site => StoreKind::Site,
            Kind::Device => StoreKind::Device,
            Kind::App => StoreKind::App,
            Kind::Image => StoreKind::Image,
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Object {
    Site(Site),
    Device(Device),
    App(App),
    Image(Image),
    Manifest(DesiredManifest),
    EnrolmentToken(EnrolmentTokenRecord),
    ApiToken(ApiTokenRecord),
    FleetCa(FleetCaRecord),
}

impl Object {
    pub fn kind(&self) -> StoreKind {
        match self {
            Object::Site(_) => StoreKind::Site,
            Object::Device(_) => StoreKind::Device,
            Object::App(_) => StoreKind::App,
            Object::Image(_) => StoreKind::Image,
            Object::Manifest(_) => StoreKind::Manifest,
            Object::EnrolmentToken(_) => StoreKind::EnrolmentToken,
            Object::ApiToken(_) => StoreKind::ApiToken,
            Object::FleetCa(_) => StoreKind::FleetCa,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Object::Site(o) => &o.metadata.name,
            Object::Device(o) => &o.metadata.name,
            Object::App(o) => &o.metadata.name,
            Object::Image(o) => &o.metadata.name,
            Object::Manifest(m) => &m.device,
            Object::EnrolmentToken(t) => &t.id,
            Object::ApiToken(t) => &t.id,
            Object::FleetCa(_) => "fleet",
        }
    }

    pub fn key(&self) -> String {
        self.kind().key(self.name())
    }

    pub fn metadata(&self) -> Option<&ObjectMeta> {
        match self {
            Object::Site(o) => Some(&o.metadata),
            Object::Device(o) => Some(&o.metadata),
            Object::App(o) => Some(&o.metadata),
            Object::Image(o) => Some(&o.metadata),
            _ => None,
        }
    }

    pub fn metadata_mut(&mut self) -> Option<&mut ObjectMeta> {
        match self {
            Object::Site(o) => Some(&mut o.metadata),
            Object::Device(o) => Some(&mut o.metadata),
            Object::App(o) => Some(&mut o.metadata),
            Object::Image(o) => Some(&mut o.metadata),
            _ => None,
        }
    }

    /// Stamps the revisions the state machine assigns when it applies a write.
    /// `create_revision` is the revision of the first write of this incarnation.
    pub fn stamp(&mut self, revision: u64, create_revision: u64) {
        if let Some(meta) = self.metadata_mut() {
            meta.revision = revision;
            meta.create_revision = create_revision;
        }
        if let Object::Manifest(m) = self {
            m.revision = revision;
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, crate::CodecError> {
        crate::codec::encode_versioned(STORE_FORMAT_VERSION, "stored object", self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Object, crate::CodecError> {
        decode_record::<Object, v1::Object, v2::Object>("stored object", bytes)
    }
}

/// Decodes a record of the current format, or of an earlier one through its frozen
/// shape (`V1`, `V2`).
fn decode_record<T, V1, V2>(what: &'static str, bytes: &[u8]) -> Result<T, crate::CodecError>
where
    T: serde::de::DeserializeOwned,
    V1: serde::de::DeserializeOwned + Into<T>,
    V2: serde::de::DeserializeOwned + Into<T>,
{
    let decode = |v: u32, body: &[u8]| match v {
        1 => crate::codec::decode_body::<V1>(what, body).map(Into::into),
        2 => crate::codec::decode_body::<V2>(what, body).map(Into::into),
        _ => crate::codec::decode_body(what, body),
    };
    crate::codec::decode_versioned_range(MIN_STORE_FORMAT_VERSION, STORE_FORMAT_VERSION, what, bytes, decode)
        .map(|(_, r)| r)
}

/// A condition on the current state of a key that a write needs to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    None,
    MustNotExist,
    MustExist,
    /// The key exists and was last written at exactly this revision.
    RevisionIs(u64),
}

/// The payload of one Raft log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StoreCommand {
    Put {
        object: Box<Object>,
        precondition: Precondition,
    },
    Delete {
        kind: StoreKind,
        name: String,
        precondition: Precondition,
    },
    /// All or nothing: if any precondition fails, nothing in the batch applies.
    Batch(Vec<StoreCommand>),
    /// Each command on its own, in order: a failed precondition skips only that
    /// command (format 2). Controllers write a fleet's changes this way, so one
    /// device's conflict holds back no other device.
    Each(Vec<StoreCommand>),
}

impl StoreCommand {
    pub fn put(object: Object, precondition: Precondition) -> StoreCommand {
        StoreCommand::Put { object: Box::new(object), precondition }
    }

    pub fn encode(&self) -> Result<Vec<u8>, crate::CodecError> {
        crate::codec::encode_versioned(STORE_FORMAT_VERSION, "store command", self)
    }

    pub fn decode(bytes: &[u8]) -> Result<StoreCommand, crate::CodecError> {
        decode_record::<StoreCommand, v1::StoreCommand, v2::StoreCommand>("store command", bytes)
    }
}

/// What applying one command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOutcome {
    /// Applied at `revision`, the log index of the entry.
    Applied { revision: u64 },
    /// A precondition failed; nothing was written.
    Conflict {
        kind: StoreKind,
        name: String,
        /// Revision of the key now, `None` when it does not exist.
        current_revision: Option<u64>,
    },
    /// One outcome per command of an `Each`, in order.
    Each(Vec<StoreOutcome>),
}

/// An enrolment token. The secret is kept only as its SHA-256: tokens are 256-bit
/// random values, so a fast hash is as strong as a slow one here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrolmentTokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// `None`: unlimited uses until expiry.
    pub max_uses: Option<u32>,
    pub n_used: u32,
    /// Labels every device enrolled with this token gets.
    pub labels: BTreeMap<String, String>,
    /// Site every device enrolled with this token joins, or empty.
    pub site: String,
    pub description: String,
}

/// An API bearer token, stored hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub description: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Read and change fleet objects (apply, delete, import images, enrolment tokens).
    Operator,
    /// Everything, including API tokens.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// The fleet CA. Replicated so that any hub can sign device certificates.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetCaRecord {
    pub cert_der: Vec<u8>,
    /// PKCS#8 private key. Never served by the API, never logged.
    pub key_pkcs8_der: Vec<u8>,
    pub created_at: Timestamp,
}

impl fmt::Debug for FleetCaRecord {
    // The private key must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCaRecord")
            .field("cert_der", &format_args!("<{} bytes>", self.cert_der.len()))
            .field("key_pkcs8_der", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}
