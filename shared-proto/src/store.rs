//! What the hub's Raft-replicated store holds and the commands that change it.
//!
//! Commands are the payload of Raft log entries, so they travel between hubs and sit
//! in every hub's log on disk. The state machine applies them deterministically: every
//! object written by the entry at log index `i` gets `metadata.revision = i`, which
//! makes revisions global, monotonic and identical on every hub.

use crate::manifest::DesiredManifest;
use crate::resource::{App, Config, Device, Image, Kind, ObjectMeta, Site};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

fn qualified(meta: &ObjectMeta) -> Cow<'_, str> {
    if meta.namespace.is_empty() || meta.namespace == crate::resource::DEFAULT_NAMESPACE {
        Cow::Borrowed(&meta.name)
    } else {
        Cow::Owned(crate::resource::qualified_name(&meta.namespace, &meta.name))
    }
}

mod v1;
mod v2;
mod v3;
mod v4;
mod v7;

/// Version of every record and command this build writes.
pub const STORE_FORMAT_VERSION: u32 = 8;
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
    /// One entry of the audit log (format 3), named so that names sort by time.
    Audit,
    /// The fleet CA's rotation (format 4), a single record named `fleet`: the CA staged
    /// to replace it and the ones it replaced that are still trusted.
    CaRotation,
    /// The images of a device's previous desired manifest (format 4), named after the
    /// device: kept so that it may fetch them again to roll back.
    PreviousImages,
    /// A `Config` (format 6).
    Config,
    /// A `Secret`, sealed (format 6).
    Secret,
    /// One hub of the cluster as devices reach it (format 7), named `hub-<node id>`.
    Hub,
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
            StoreKind::Audit => "audit",
            StoreKind::CaRotation => "ca-rotation",
            StoreKind::PreviousImages => "previous-images",
            StoreKind::Config => "config",
            StoreKind::Secret => "secret",
            StoreKind::Hub => "hub",
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

    /// Whether records of this kind live in a namespace (their store names are
    /// [`crate::resource::qualified_name`]s).
    pub fn is_namespaced(self) -> bool {
        matches!(self, StoreKind::App | StoreKind::Config | StoreKind::Secret)
    }
}

impl From<Kind> for StoreKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Site => StoreKind::Site,
            Kind::Device => StoreKind::Device,
            Kind::App => StoreKind::App,
            Kind::Image => StoreKind::Image,
            Kind::Config => StoreKind::Config,
            Kind::Secret => StoreKind::Secret,
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
    Audit(AuditRecord),
    CaRotation(CaRotationRecord),
    PreviousImages(PreviousImagesRecord),
    Config(Config),
    Secret(SealedSecret),
    Hub(HubRecord),
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
            Object::Audit(_) => StoreKind::Audit,
            Object::CaRotation(_) => StoreKind::CaRotation,
            Object::PreviousImages(_) => StoreKind::PreviousImages,
            Object::Config(_) => StoreKind::Config,
            Object::Secret(_) => StoreKind::Secret,
            Object::Hub(_) => StoreKind::Hub,
        }
    }

    /// The record's name in the store: for apps, configs and secrets, the
    /// [`crate::resource::qualified_name`] of name and namespace.
    pub fn name(&self) -> Cow<'_, str> {
        match self {
            Object::Site(o) => Cow::Borrowed(&o.metadata.name),
            Object::Device(o) => Cow::Borrowed(&o.metadata.name),
            Object::App(o) => qualified(&o.metadata),
            Object::Image(o) => Cow::Borrowed(&o.metadata.name),
            Object::Manifest(m) => Cow::Borrowed(&m.device),
            Object::EnrolmentToken(t) => Cow::Borrowed(&t.id),
            Object::ApiToken(t) => Cow::Borrowed(&t.id),
            Object::FleetCa(_) => Cow::Borrowed("fleet"),
            Object::Audit(a) => Cow::Borrowed(&a.id),
            Object::CaRotation(_) => Cow::Borrowed("fleet"),
            Object::PreviousImages(p) => Cow::Borrowed(&p.device),
            Object::Config(o) => qualified(&o.metadata),
            Object::Secret(o) => qualified(&o.metadata),
            Object::Hub(h) => Cow::Borrowed(&h.name),
        }
    }

    /// Gives apps, configs and secrets that name no namespace the default one (records
    /// of hubs older than namespaces), and nothing else a namespace.
    pub fn fill_namespace(&mut self) {
        let namespaced = self.kind().is_namespaced();
        if let Some(meta) = self.metadata_mut() {
            if !namespaced {
                meta.namespace.clear();
            } else if meta.namespace.is_empty() {
                meta.namespace = crate::resource::DEFAULT_NAMESPACE.to_string();
            }
        }
    }

    pub fn key(&self) -> String {
        self.kind().key(&self.name())
    }

    pub fn metadata(&self) -> Option<&ObjectMeta> {
        match self {
            Object::Site(o) => Some(&o.metadata),
            Object::Device(o) => Some(&o.metadata),
            Object::App(o) => Some(&o.metadata),
            Object::Image(o) => Some(&o.metadata),
            Object::Config(o) => Some(&o.metadata),
            Object::Secret(o) => Some(&o.metadata),
            _ => None,
        }
    }

    pub fn metadata_mut(&mut self) -> Option<&mut ObjectMeta> {
        match self {
            Object::Site(o) => Some(&mut o.metadata),
            Object::Device(o) => Some(&mut o.metadata),
            Object::App(o) => Some(&mut o.metadata),
            Object::Image(o) => Some(&mut o.metadata),
            Object::Config(o) => Some(&mut o.metadata),
            Object::Secret(o) => Some(&mut o.metadata),
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
        let mut object = decode_record::<Object, v1::Object, v2::Object, v3::Object, v4::Object, v7::Object>(
            "stored object",
            bytes,
        )?;
        object.fill_namespace();
        Ok(object)
    }
}

/// Decodes a record of the current format, or of an earlier one through its frozen
/// shape (`V1` to `V4`, and `V7` for formats 5 to 7, which only added variants).
fn decode_record<T, V1, V2, V3, V4, V7>(what: &'static str, bytes: &[u8]) -> Result<T, crate::CodecError>
where
    T: serde::de::DeserializeOwned,
    V1: serde::de::DeserializeOwned + Into<T>,
    V2: serde::de::DeserializeOwned + Into<T>,
    V3: serde::de::DeserializeOwned + Into<T>,
    V4: serde::de::DeserializeOwned + Into<T>,
    V7: serde::de::DeserializeOwned + Into<T>,
{
    let decode = |v: u32, body: &[u8]| match v {
        1 => crate::codec::decode_body::<V1>(what, body).map(Into::into),
        2 => crate::codec::decode_body::<V2>(what, body).map(Into::into),
        3 => crate::codec::decode_body::<V3>(what, body).map(Into::into),
        4 => crate::codec::decode_body::<V4>(what, body).map(Into::into),
        5..=7 => crate::codec::decode_body::<V7>(what, body).map(Into::into),
        _ => crate::codec::decode_body(what, body),
    };
    crate::codec::decode_versioned_range(MIN_STORE_FORMAT_VERSION, STORE_FORMAT_VERSION, what, bytes, decode)
        .map(|(_, r)| r)
}

/// A `Secret` as the store keeps it: its data sealed with the hub's key, so neither the
/// store file, the Raft log, snapshots nor backups hold it in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedSecret {
    pub metadata: ObjectMeta,
    /// The keys, in the clear (shown by the API).
    pub keys: Vec<String>,
    /// `hmac-sha256:…` of the data under a key derived from the hub's: equal data gives
    /// equal digests (an unchanged apply is a no-op), and it reveals nothing else.
    pub digest: String,
    /// Names the hub key that sealed it (a short fingerprint), so a hub given the wrong
    /// key says so instead of failing to decrypt.
    pub key_id: String,
    /// Nonce and AEAD ciphertext of the postcard-encoded `(key, value)` list.
    pub sealed: Vec<u8>,
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
        let mut cmd = decode_record::<
            StoreCommand,
            v1::StoreCommand,
            v2::StoreCommand,
            v3::StoreCommand,
            v4::StoreCommand,
            v7::StoreCommand,
        >("store command", bytes)?;
        cmd.fill_namespaces();
        Ok(cmd)
    }

    /// [`Object::fill_namespace`] on every object the command puts.
    fn fill_namespaces(&mut self) {
        match self {
            StoreCommand::Put { object, .. } => object.fill_namespace(),
            StoreCommand::Delete { .. } => {}
            StoreCommand::Batch(cmds) | StoreCommand::Each(cmds) => {
                cmds.iter_mut().for_each(StoreCommand::fill_namespaces)
            }
        }
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
    /// Which labels a device may ask for itself (format 3).
    pub device_labels: LabelPolicy,
}

/// Which labels a device enrolling with a token may set itself, beside the token's own
/// labels (which it may always repeat). A device that could pick any label could
/// attract the workloads, and their configuration, meant for other devices.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LabelPolicy {
    /// None but the token's own: the default for new tokens.
    #[default]
    TokenOnly,
    /// Any label: tokens created before the hub had label policies.
    Any,
    /// These keys; a key with values allows only those values.
    Keys(BTreeMap<String, Vec<String>>),
}

impl LabelPolicy {
    /// Parses `--allow-label` arguments: `key` allows any value, `key=value` that value
    /// (repeat for more). `*` alone allows any label.
    pub fn from_rules<'a>(rules: impl IntoIterator<Item = &'a str>) -> Result<LabelPolicy, String> {
        let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rule in rules {
            if rule == "*" {
                return Ok(LabelPolicy::Any);
            }
            let (key, value) = match rule.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (rule, None),
            };
            if let Some(p) = crate::validate::label_problem(key, value.unwrap_or("")) {
                return Err(format!("{rule:?}: {p}"));
            }
            let values = keys.entry(key.to_string()).or_default();
            match value {
                // A bare key allows every value, whatever else was listed.
                None => values.push(String::new()),
                Some(v) => values.push(v.to_string()),
            }
        }
        for values in keys.values_mut() {
            if values.iter().any(String::is_empty) {
                values.clear();
            } else {
                values.sort();
                values.dedup();
            }
        }
        Ok(if keys.is_empty() { LabelPolicy::TokenOnly } else { LabelPolicy::Keys(keys) })
    }

    /// Whether a device may ask for `key=value` when the token itself sets `token_labels`.
    pub fn check(
        &self,
        token_labels: &BTreeMap<String, String>,
        key: &str,
        value: &str,
    ) -> Result<(), String> {
        match token_labels.get(key) {
            Some(v) if v == value => return Ok(()),
            Some(v) => return Err(format!("label {key:?} is set by the enrolment token to {v:?}")),
            None => {}
        }
        let allowed = match self {
            LabelPolicy::Any => true,
            LabelPolicy::TokenOnly => false,
            LabelPolicy::Keys(keys) => {
                keys.get(key).is_some_and(|vs| vs.is_empty() || vs.iter().any(|v| v == value))
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "label {key}={value} is not allowed by the enrolment token ({}); create a token that allows it (flotilla token create --allow-label {key}) or remove it from the agent's config",
                self.describe()
            ))
        }
    }

    /// A human summary: `none`, `any`, or `role, zone=a|b`.
    pub fn describe(&self) -> String {
        match self {
            LabelPolicy::TokenOnly => "it allows no labels of the device's own".into(),
            LabelPolicy::Any => "it allows any".into(),
            LabelPolicy::Keys(keys) => {
                let rules: Vec<String> = keys
                    .iter()
                    .map(|(k, vs)| if vs.is_empty() { k.clone() } else { format!("{k}={}", vs.join("|")) })
                    .collect();
                format!("it allows {}", rules.join(", "))
            }
        }
    }
}

/// One mutating API call by an authenticated caller: who, what, when, from where,
/// and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// `<unix milliseconds, 16 digits>-<8 hex>`: names sort by time.
    pub id: String,
    pub at: Timestamp,
    /// The API token's id (never its secret).
    pub token_id: String,
    pub role: Role,
    /// Client address, `ip:port`.
    pub remote: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// HTTP status of the answer.
    pub status: u16,
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
    /// After this the token is refused (format 3); `None` never expires (the admin
    /// token a hub makes at its first start).
    pub expires_at: Option<Timestamp>,
    /// The sites the token may see and change (format 3); empty: every site.
    pub sites: Vec<String>,
    /// The namespaces whose apps, configs and secrets the token may see and change
    /// (format 8); empty: every namespace.
    pub namespaces: Vec<String>,
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

/// The image digests of the manifest a device held before its current one: the device
/// may still fetch their blobs (to roll back), and nothing older.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousImagesRecord {
    pub device: String,
    /// Revision of the manifest they were in.
    pub revision: u64,
    /// `sha256:…` of each platform image manifest, sorted.
    pub image_digests: Vec<String>,
}

/// One hub of the cluster as devices reach it, named `hub-<node id>`: each hub writes
/// its own when it starts with addresses other than the recorded ones, and the record
/// goes when the hub is removed from the cluster. Every hub tells its devices the list
/// (`wire::HubFrame::Hubs`), so that a device moves to another hub when its own goes
/// away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRecord {
    pub name: String,
    pub node_id: u64,
    /// Where devices reach it.
    pub agents: crate::wire::HubEndpoint,
    /// The URL of its API, for operators (empty if unknown).
    pub api: String,
}

impl HubRecord {
    /// The record name of hub `node_id`.
    pub fn name_of(node_id: u64) -> String {
        format!("hub-{node_id}")
    }
}

/// The fleet CA's rotation: `flotilla ca rotate` stages a new CA (`next`), which the
/// hub trusts and hands to every device with its next certificate; `flotilla ca
/// activate` makes it the fleet CA (the old one moves to `previous`, still trusted
/// for the certificates it signed); `flotilla ca retire` stops trusting `previous`.
/// Devices learn the CAs to trust on every connection (`HubFrame::Trust`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaRotationRecord {
    /// The CA staged to replace the fleet CA, private key included.
    pub next: Option<FleetCaRecord>,
    /// Certificates of CAs the fleet CA replaced, still trusted until retired.
    pub previous: Vec<Vec<u8>>,
    /// When the fleet CA last changed (`flotilla ca activate`): a device whose
    /// certificate is older renews, and gets one the new fleet CA signed.
    pub changed_at: Timestamp,
}

#[cfg(test)]
mod label_policy_tests {
    use super::*;

    fn token_labels() -> BTreeMap<String, String> {
        BTreeMap::from([("site-kind".to_string(), "store".to_string())])
    }

    #[test]
    fn rules_parse_into_keys_values_or_any() {
        assert_eq!(LabelPolicy::from_rules([]), Ok(LabelPolicy::TokenOnly));
        assert_eq!(LabelPolicy::from_rules(["role", "zone=a"]).unwrap().describe(), "it allows role, zone=a");
        // A bare key wins over values listed for it.
        assert_eq!(LabelPolicy::from_rules(["zone=a", "zone"]).unwrap().describe(), "it allows zone");
        assert_eq!(
            LabelPolicy::from_rules(["zone=b", "zone=a", "zone=b"]).unwrap().describe(),
            "it allows zone=a|b"
        );
        assert_eq!(LabelPolicy::from_rules(["role", "*"]), Ok(LabelPolicy::Any));
        assert!(LabelPolicy::from_rules(["bad key"]).is_err());
    }

    #[test]
    fn a_device_sets_only_what_its_token_allows() {
        let t = token_labels();
        let keys = LabelPolicy::from_rules(["role", "zone=a"]).unwrap();
        assert!(keys.check(&t, "role", "anything").is_ok());
        assert!(keys.check(&t, "zone", "a").is_ok());
        assert!(keys.check(&t, "zone", "b").unwrap_err().contains("zone=b is not allowed"));
        assert!(keys.check(&t, "gpu", "yes").is_err());
        // The token's own labels may be repeated, never changed, whatever the policy.
        for policy in [LabelPolicy::TokenOnly, LabelPolicy::Any, keys] {
            assert!(policy.check(&t, "site-kind", "store").is_ok());
            assert!(
                policy
                    .check(&t, "site-kind", "warehouse")
                    .unwrap_err()
                    .contains("set by the enrolment token")
            );
        }
        assert!(LabelPolicy::TokenOnly.check(&t, "role", "x").is_err());
        assert!(LabelPolicy::Any.check(&t, "role", "x").is_ok());
    }
}
