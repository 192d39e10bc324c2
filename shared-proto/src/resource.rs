//! The resource model the hub's API serves and operators apply: `Site`, `Device`, `App`,
//! `Image`, `Config` and `Secret`, each shaped `apiVersion / kind / metadata / spec / status`.
//!
//! The same types serialise to JSON/YAML for the API and to postcard for the store, so
//! no field may be skipped on output (`skip_serializing_if` would break positional
//! decoding); optional input fields use `#[serde(default)]` instead.

use crate::manifest::ObservedContainer;
use crate::quantity::{Bytes, CpuMillis};
use crate::selector::LabelSelector;
use crate::time::Timestamp;
pub use crate::workload::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub const API_VERSION: &str = "flotilla.dev/v1";

/// The kinds of object the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Site,
    Device,
    App,
    Image,
    Config,
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::Site, Kind::Device, Kind::App, Kind::Image, Kind::Config, Kind::Secret];

    /// Whether objects of this kind live in a namespace: apps, configs and secrets do;
    /// sites, devices and images belong to the whole fleet.
    pub fn is_namespaced(self) -> bool {
        matches!(self, Kind::App | Kind::Config | Kind::Secret)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Site => "Site",
            Kind::Device => "Device",
            Kind::App => "App",
            Kind::Image => "Image",
            Kind::Config => "Config",
            Kind::Secret => "Secret",
        }
    }

    /// The lower-case plural used in API paths and on the command line.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Site => "sites",
            Kind::Device => "devices",
            Kind::App => "apps",
            Kind::Image => "images",
            Kind::Config => "configs",
            Kind::Secret => "secrets",
        }
    }

    /// Accepts the kind, its plural or a short form, in any case: `app`, `Apps`, `dev`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "site" | "sites" => Some(Kind::Site),
            "device" | "devices" | "dev" | "devs" => Some(Kind::Device),
            "app" | "apps" | "application" | "applications" => Some(Kind::App),
            "image" | "images" | "img" => Some(Kind::Image),
            "config" | "configs" | "cfg" | "configmap" | "configmaps" | "cm" => Some(Kind::Config),
            "secret" | "secrets" => Some(Kind::Secret),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity and bookkeeping shared by every object. The hub owns every field but
/// `name`, `labels` and `annotations`; values sent for the others are ignored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[cfg_attr(feature = "openapi", schema(max_length = 255, example = "web"))]
    pub name: String,
    /// The namespace of an `App`, `Config` or `Secret` (`default` when not given);
    /// empty for the other kinds, which belong to the whole fleet. Format 8.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$", max_length = 63, example = "default"))]
    #[serde(default)]
    pub namespace: String,
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, crate::openapi::LabelValue>))]
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[cfg_attr(feature = "openapi", schema(read_only))]
    /// Unique for this incarnation of the object: a re-created object gets a new one.
    #[serde(default)]
    pub uid: String,
    /// Store revision of the last write to this object. Sent back on apply, it makes
    /// the write conditional (optimistic concurrency).
    #[serde(default)]
    pub revision: u64,
    #[cfg_attr(feature = "openapi", schema(read_only))]
    /// Store revision at which the object was created.
    #[serde(default)]
    pub create_revision: u64,
    #[cfg_attr(feature = "openapi", schema(read_only))]
    /// Bumped whenever `spec` changes.
    #[serde(default)]
    pub generation: u64,
    #[cfg_attr(feature = "openapi", schema(read_only, value_type = Option<crate::Timestamp>))]
    #[serde(default)]
    pub created_at: Option<Timestamp>,
}

impl ObjectMeta {
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta { name: name.into(), ..Default::default() }
    }

    /// Named `name` in `namespace`.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectMeta { name: name.into(), namespace: namespace.into(), ..Default::default() }
    }

    /// The object's name in the store and on devices: [`qualified_name`].
    pub fn qualified_name(&self) -> String {
        qualified_name(&self.namespace, &self.name)
    }
}

/// The namespace of apps, configs and secrets that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The name an `App`, `Config` or `Secret` has in the store and on devices: `name` in
/// the default namespace (so the records of hubs older than namespaces keep their
/// keys), `name.namespace` in any other. Both parts are DNS labels, which have no dot,
/// so the two forms never meet and [`split_qualified_name`] undoes either.
pub fn qualified_name(namespace: &str, name: &str) -> String {
    if namespace.is_empty() || namespace == DEFAULT_NAMESPACE {
        name.to_string()
    } else {
        format!("{name}.{namespace}")
    }
}

/// `(namespace, name)` of a [`qualified_name`].
pub fn split_qualified_name(qualified: &str) -> (&str, &str) {
    match qualified.split_once('.') {
        Some((name, namespace)) => (namespace, name),
        None => (DEFAULT_NAMESPACE, qualified),
    }
}

macro_rules! resource {
    ($(#[$doc:meta])* $name:ident, $spec:ty, $status:ty, $kind:expr, $kind_pattern:literal) => {
        $(#[$doc])*
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            #[cfg_attr(feature = "openapi", schema(pattern = "^flotilla\\.dev/v1$", example = "flotilla.dev/v1"))]
            pub api_version: String,
            #[cfg_attr(feature = "openapi", schema(pattern = $kind_pattern))]
            pub kind: String,
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: $spec,
            /// Kept by the hub: what is sent is ignored.
            #[cfg_attr(feature = "openapi", schema(read_only))]
            #[serde(default)]
            pub status: $status,
        }

        impl $name {
            pub const KIND: Kind = $kind;

            pub fn new(metadata: ObjectMeta, spec: $spec) -> Self {
                $name {
                    api_version: API_VERSION.to_string(),
                    kind: $kind.as_str().to_string(),
                    metadata,
                    spec,
                    status: Default::default(),
                }
            }
        }
    };
}

resource!(
    /// A place devices live in: a retail store, a plant, a depot.
    Site, SiteSpec, SiteStatus, Kind::Site, "^Site$"
);
resource!(
    /// An enrolled edge device. Created by enrolment; `apply` may change its labels
    /// and spec, the hub owns its status.
    Device, DeviceSpec, DeviceStatus, Kind::Device, "^Device$"
);
resource!(
    /// A set of containers placed on the devices its selector matches.
    App, AppSpec, AppStatus, Kind::App, "^App$"
);
resource!(
    /// An OCI image imported into the hub, named by its reference (`demo-httpd:1.0`).
    Image, ImageSpec, ImageStatus, Kind::Image, "^Image$"
);
resource!(
    /// Configuration files or values apps mount or read into their environment.
    Config, ConfigSpec, ConfigStatus, Kind::Config, "^Config$"
);
resource!(
    /// Like a `Config`, for credentials: sealed with the hub's key in the store, never
    /// returned by the API, kept in memory or sealed on devices.
    Secret, ConfigSpec, ConfigStatus, Kind::Secret, "^Secret$"
);

impl App {
    /// The app as the controllers and devices know it: its name, and every app, config
    /// and secret it names, made [`qualified_name`]s of its namespace, so that apps of
    /// different namespaces never meet on a device and each finds its own namespace's
    /// configs. An app of the default namespace is unchanged.
    pub fn qualified(&self) -> App {
        let namespace = self.metadata.namespace.as_str();
        let mut app = self.clone();
        if namespace.is_empty() || namespace == DEFAULT_NAMESPACE {
            return app;
        }
        let q = |name: &mut String| *name = qualified_name(namespace, name);
        q(&mut app.metadata.name);
        let placement = &mut app.spec.placement;
        for other in placement.affinity.iter_mut().chain(placement.anti_affinity.iter_mut()) {
            q(&mut other.app);
        }
        if let Some(policy) = &mut app.spec.network_policy {
            for other in policy.ingress_apps.iter_mut().chain(policy.egress_apps.iter_mut()).flatten() {
                q(other);
            }
        }
        for v in &mut app.spec.volumes {
            for r in v.config.iter_mut().chain(v.secret.iter_mut()) {
                q(&mut r.name);
            }
        }
        for c in app.spec.containers.iter_mut().chain(app.spec.init_containers.iter_mut()) {
            for from in c.env.iter_mut().filter_map(|e| e.value_from.as_mut()) {
                for r in from.config.iter_mut().chain(from.secret.iter_mut()) {
                    q(&mut r.name);
                }
            }
        }
        app
    }
}

/// The data of a `Config` or a `Secret`: keys are file names when mounted and
/// variable sources in `valueFrom`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSpec {
    /// UTF-8 values.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Binary values, base64 (standard alphabet, padded).
    #[serde(default)]
    pub binary_data: BTreeMap<String, String>,
}

impl ConfigSpec {
    /// Every key with its bytes, sorted by key; `None` when a binary value is not valid
    /// base64 (validation says which).
    pub fn entries(&self) -> Option<Vec<(String, Vec<u8>)>> {
        use base64::Engine;
        let mut out: Vec<(String, Vec<u8>)> =
            self.data.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
        for (k, v) in &self.binary_data {
            out.push((k.clone(), base64::engine::general_purpose::STANDARD.decode(v).ok()?));
        }
        out.sort();
        Some(out)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigStatus {
    /// The keys it holds (a `Secret`'s values are never shown).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Changes whenever the data does; apps using it are rolled then. Keyed with the
    /// hub's key for a `Secret`, so it says nothing about the values.
    #[serde(default)]
    pub digest: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteSpec {
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    #[serde(default)]
    pub display_name: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 256))]
    #[serde(default)]
    pub location: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteStatus {
    #[serde(default, rename = "devices")]
    pub n_devices: u32,
    #[serde(default, rename = "onlineDevices")]
    pub n_online: u32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceSpec {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::DnsLabelOrEmpty))]
    /// The site this device belongs to (a `Site` name), or empty.
    #[serde(default)]
    pub site: String,
    /// When true the scheduler places nothing new on the device.
    #[serde(default)]
    pub unschedulable: bool,
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    /// Reserve the device for apps that tolerate these (store format 2).
    #[serde(default)]
    pub taints: Vec<Taint>,
}

/// Keeps apps off a device unless they tolerate it, as Kubernetes taints do: a POS
/// terminal tainted `dedicated=pos` runs only the apps meant for it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::LabelKey))]
    pub key: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::LabelValue))]
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub effect: TaintEffect,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TaintEffect {
    /// Nothing new is placed unless it tolerates the taint; what runs stays.
    #[default]
    NoSchedule,
    /// Apps that do not tolerate the taint are removed too.
    NoExecute,
}

/// Lets an app onto devices with a matching taint.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^$|^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"))]
    /// Empty with `Exists` tolerates every taint.
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: TolerationOperator,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::LabelValue))]
    #[serde(default)]
    pub value: String,
    /// Only taints with this effect; unset tolerates both.
    #[serde(default)]
    pub effect: Option<TaintEffect>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TolerationOperator {
    /// Key and value must both match.
    #[default]
    Equal,
    /// The key must match (any value); an empty key matches every taint.
    Exists,
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        let key = match self.operator {
            TolerationOperator::Exists => self.key.is_empty() || self.key == taint.key,
            TolerationOperator::Equal => self.key == taint.key && self.value == taint.value,
        };
        key && self.effect.is_none_or(|e| e == taint.effect)
    }
}

/// Where an app must (affinity) or must not (anti-affinity) run relative to another.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppAffinity {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::DnsLabel))]
    /// The other app's name.
    pub app: String,
    #[serde(default)]
    pub scope: AffinityScope,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AffinityScope {
    /// The same device.
    #[default]
    Device,
    /// The same site: some device of the site.
    Site,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DevicePhase {
    /// Enrolled, never connected.
    #[default]
    Pending,
    Online,
    Offline,
    /// Retired by an operator (format 3): kept for the record, its certificates open
    /// nothing and nothing is placed on it. Delete it to enrol the name anew.
    Decommissioned,
    /// Came back with a certificate that expired while it was away (format 4): it keeps
    /// running what it ran, and gets a new certificate only once an operator approves
    /// (`flotilla device approve`); `status.quarantine` says what it asked for.
    Quarantined,
}

impl fmt::Display for DevicePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a device offers to workloads.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capacity {
    #[serde(default)]
    pub cpu: CpuMillis,
    #[serde(default)]
    pub memory: Bytes,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceStatus {
    #[serde(default)]
    pub phase: DevicePhase,
    /// OCI architecture name: `amd64`, `arm64`, `arm`.
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub enrolled_at: Option<Timestamp>,
    /// When `phase` last changed.
    #[serde(default)]
    pub last_transition_at: Option<Timestamp>,
    /// When the hub last heard from the device. Filled in from the hub's memory when
    /// served; the stored value is only as fresh as the last status transition.
    #[serde(default)]
    pub last_seen_at: Option<Timestamp>,
    /// Revision of the desired manifest the hub holds for this device.
    #[serde(default)]
    pub desired_revision: u64,
    /// Revision of the desired manifest the agent last reported holding.
    #[serde(default)]
    pub applied_revision: u64,
    /// The containers the agent last reported (written when they change, not per heartbeat).
    #[serde(default)]
    pub containers: Vec<ObservedContainer>,
    #[serde(default)]
    pub message: String,
    /// The certificates the hub accepts for this device, newest last (store format 3).
    /// Only these open a session: a certificate of a deleted device, or of an earlier
    /// device under the same name, names a device that no longer lists it. Empty for a
    /// device enrolled before format 3, which any certificate the fleet CA issued for
    /// its name still opens.
    #[serde(default)]
    pub certificates: Vec<DeviceCertificate>,
    /// Id of the enrolment token the device enrolled with (store format 3).
    #[serde(default)]
    pub enrolled_with: String,
    /// Two machines holding this device's certificate at once, a cloned SD card most
    /// likely (store format 3): the one connected keeps its session, the other is
    /// refused until an operator acts.
    #[serde(default)]
    pub identity_conflict: Option<Box<IdentityConflict>>,
    /// Set while the device is `Quarantined` (store format 4).
    #[serde(default)]
    pub quarantine: Option<Box<Quarantine>>,
}

/// A device that proved it holds an expired certificate of its own and asks for a new
/// one. Nothing is issued until an operator approves: the device may have been stolen
/// while it was away.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quarantine {
    /// When it first asked.
    pub since: Timestamp,
    /// Serial of the expired certificate it connected with.
    pub expired_serial: String,
    /// Hex SHA-256 of the new key it asks a certificate for.
    pub key_sha256: String,
    /// Where it asked from, `ip:port`.
    pub from: String,
    /// An operator approved: its next request with that key is answered.
    pub approved: bool,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConflict {
    /// When the hub first saw both.
    pub since: Timestamp,
    /// Boot ids of the machines: the one keeping the session first.
    pub boot_ids: Vec<String>,
    /// Where the refused one connected from.
    pub refused_from: String,
}

/// A certificate the fleet CA issued to a device.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceCertificate {
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// Hex SHA-256 of the certified public key (its DER SubjectPublicKeyInfo): the key
    /// the device generated and keeps.
    pub key_sha256: String,
    pub not_after: Timestamp,
    /// When it was issued (store format 4; zero for earlier records).
    #[serde(default)]
    pub issued_at: Timestamp,
    /// Hex SHA-256 of the CA certificate that signed it (store format 4; empty for
    /// earlier records): tells which devices still hold a certificate of a CA that is
    /// being retired.
    #[serde(default)]
    pub ca: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// Devices whose labels match run the app. Empty matches every device.
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(default)]
    pub placement: Placement,
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 16))]
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub network: NetworkMode,
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    /// Run one after the other, each to a successful exit, before `containers` start
    /// (store format 5, like every field below).
    #[serde(default)]
    pub init_containers: Vec<ContainerSpec>,
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3600))]
    /// Seconds between SIGTERM and SIGKILL when a container stops; unset means 10.
    #[serde(default)]
    pub termination_grace_period_seconds: Option<u32>,
    /// Only with `network: Isolated`.
    #[serde(default)]
    pub network_policy: Option<NetworkPolicy>,
    /// Run the app's containers in a user namespace: root inside is an unprivileged
    /// user on the device.
    #[serde(default)]
    pub user_namespace: bool,
}

impl AppSpec {
    /// The `Secret`s (`secrets`) or `Config`s (not) the app mounts or reads.
    pub fn config_refs(&self, secrets: bool) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for v in &self.volumes {
            if let Some(r) = if secrets { &v.secret } else { &v.config } {
                names.insert(r.name.clone());
            }
        }
        for c in self.containers.iter().chain(&self.init_containers) {
            for e in &c.env {
                let Some(from) = &e.value_from else { continue };
                if let Some(r) = if secrets { &from.secret } else { &from.config } {
                    names.insert(r.name.clone());
                }
            }
        }
        names
    }
}

/// Narrows where an app runs beyond its selector.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::openapi::DnsLabel>))]
    /// Only devices in these sites; empty means every site (and devices with none).
    #[serde(default)]
    pub sites: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    /// At most this many devices per site, picked by name; unset means all that fit.
    /// Devices with no site are not limited.
    #[serde(default)]
    pub max_per_site: Option<u32>,
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    /// Taints this app accepts (store format 2).
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    /// Run only beside these apps: on a device (or in a site) where they run.
    #[serde(default)]
    pub affinity: Vec<AppAffinity>,
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    /// Keep away from these apps: never on a device (or in a site) where they run.
    #[serde(default)]
    pub anti_affinity: Vec<AppAffinity>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::DnsLabel))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::ImageReference))]
    /// An image reference imported into the hub, e.g. `demo-httpd:1.0`.
    pub image: String,
    #[cfg_attr(feature = "openapi", schema(max_items = 256))]
    /// Replaces the image's entrypoint when non-empty.
    #[serde(default)]
    pub command: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(max_items = 256))]
    /// Replaces the image's cmd when non-empty.
    #[serde(default)]
    pub args: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(max_items = 256))]
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub resources: ResourceRequirements,
    #[cfg_attr(feature = "openapi", schema(pattern = "^(/.*)?$", max_length = 4096))]
    #[serde(default)]
    pub working_dir: String,
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    /// Store format 5, like every field below.
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    #[serde(default)]
    pub devices: Vec<DeviceMapping>,
    /// Failing it restarts the container.
    #[serde(default)]
    pub liveness_probe: Option<Probe>,
    /// Failing it marks the container not ready (reported; not restarted).
    #[serde(default)]
    pub readiness_probe: Option<Probe>,
    /// Until it passes, liveness and readiness are not checked; failing it restarts.
    #[serde(default)]
    pub startup_probe: Option<Probe>,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub security: SecuritySpec,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    #[cfg_attr(feature = "openapi", schema(pattern = "^[^=\\x00]{1,256}$"))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 4096))]
    #[serde(default)]
    pub value: String,
    /// Instead of `value`, a key of a `Config` or a `Secret` (store format 5).
    #[serde(default)]
    pub value_from: Option<EnvSource>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSpec {
    #[serde(default)]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub container_port: u16,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    /// With `network: Host` the container binds the host port itself, so this must
    /// be unset or equal to `containerPort`.
    #[serde(default)]
    pub host_port: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortSpec {
    pub fn effective_host_port(&self) -> u16 {
        self.host_port.unwrap_or(self.container_port)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, Hash)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default)]
    pub limits: ResourceLimits,
    /// What the scheduler reserves; defaults to the limits.
    #[serde(default)]
    pub requests: ResourceRequests,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceLimits {
    #[serde(default)]
    pub cpu: Option<CpuMillis>,
    #[serde(default)]
    pub memory: Option<Bytes>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    #[serde(default)]
    pub pids: Option<u64>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequests {
    #[serde(default)]
    pub cpu: Option<CpuMillis>,
    #[serde(default)]
    pub memory: Option<Bytes>,
}

impl ResourceRequirements {
    /// What the scheduler must reserve for this container.
    pub fn reserved(&self) -> Capacity {
        Capacity {
            cpu: self.requests.cpu.or(self.limits.cpu).unwrap_or_default(),
            memory: self.requests.memory.or(self.limits.memory).unwrap_or_default(),
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
pub enum NetworkMode {
    /// Share the device's network namespace (ports bind on the device directly).
    #[default]
    Host,
    /// A private network namespace with only a loopback interface.
    None,
    /// A private network namespace on the device's app bridge: outbound traffic is
    /// NATed, `hostPort`s are published, other apps are reached by name, and the app's
    /// `networkPolicy` applies (store format 5).
    Isolated,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AppPhase {
    /// Accepted; no device runs it yet (none matches, or images are missing).
    #[default]
    Pending,
    /// Devices are converging on the current generation.
    Progressing,
    /// Every placed device runs every container of the current generation.
    Running,
    /// Some placed devices are offline or report failed containers.
    Degraded,
}

impl fmt::Display for AppPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppStatus {
    #[serde(default)]
    pub phase: AppPhase,
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: u64,
    #[serde(default, rename = "desiredDevices")]
    pub n_desired: u32,
    #[serde(default, rename = "runningDevices")]
    pub n_running: u32,
    #[serde(default)]
    pub devices: Vec<AppDeviceStatus>,
    #[serde(default)]
    pub message: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AppDevicePhase {
    #[default]
    Pending,
    Running,
    /// Every container exited successfully and its restart policy keeps it down.
    Completed,
    Failed,
    Offline,
}

impl fmt::Display for AppDevicePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppDeviceStatus {
    pub device: String,
    #[serde(default)]
    pub phase: AppDevicePhase,
    #[serde(default)]
    pub message: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    /// Digest of the OCI index (or single manifest) the image was imported from.
    #[serde(default)]
    pub digest: String,
    /// One manifest per platform.
    #[serde(default)]
    pub platforms: Vec<ImagePlatform>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: String,
    /// Digest of the platform's image manifest: what devices pull.
    pub manifest_digest: String,
    /// Manifest, config and layer bytes together.
    #[serde(default)]
    pub size: u64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageStatus {
    #[serde(default)]
    pub imported_at: Option<Timestamp>,
}
