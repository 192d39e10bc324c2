//! Per-device desired state (what the hub wants one device to run) and observed
//! state (what the agent reports it runs). Both travel over QUIC and are kept on disk
//! by the agent, so a device keeps running its last desired state without the hub.

use crate::resource::{NetworkMode, PortSpec, RestartPolicy};
use crate::time::Timestamp;
use crate::workload::{
    DeviceMapping, EnvSource, Lifecycle, NetworkPolicy, Probe, SecuritySpec, VolumeMount, VolumeSpec,
};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Everything one device should run. `revision` is the hub's store revision at which
/// this device's manifest last changed; the agent reports the revision it holds and
/// the hub answers with a newer manifest or "up to date" (level-triggered sync).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredManifest {
    pub device: String,
    pub revision: u64,
    pub apps: Vec<DesiredApp>,
    /// The `Config`s and `Secret`s the apps use (manifest shape 2, like every field
    /// added below). In the hub's store a secret's `data` is empty: the hub fills it in
    /// when it sends the manifest over the device's mutually authenticated connection.
    pub configs: Vec<DesiredConfig>,
}

/// A `Config` or `Secret` as a device receives it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct DesiredConfig {
    pub name: String,
    pub secret: bool,
    /// `sha256:…` of the data: containers that use it are recreated when it changes.
    pub digest: String,
    pub data: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct DesiredApp {
    pub name: String,
    /// The app's `metadata.generation` this entry was derived from.
    pub generation: u64,
    pub restart_policy: RestartPolicy,
    pub network: NetworkMode,
    pub containers: Vec<DesiredContainer>,
    /// Run in order, each to a successful exit, before `containers`.
    pub init_containers: Vec<DesiredContainer>,
    pub volumes: Vec<VolumeSpec>,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_period_seconds: u32,
    pub network_policy: Option<NetworkPolicy>,
    pub user_namespace: bool,
}

impl DesiredApp {
    /// The `Config`s (`false`) and `Secret`s (`true`) the app mounts or reads, by name.
    pub fn config_refs(&self) -> std::collections::BTreeSet<(bool, String)> {
        let mut refs = std::collections::BTreeSet::new();
        for v in &self.volumes {
            if let Some(r) = &v.config {
                refs.insert((false, r.name.clone()));
            }
            if let Some(r) = &v.secret {
                refs.insert((true, r.name.clone()));
            }
        }
        for c in self.containers.iter().chain(&self.init_containers) {
            for (_, from) in &c.env_from {
                if let Some(r) = &from.config {
                    refs.insert((false, r.name.clone()));
                }
                if let Some(r) = &from.secret {
                    refs.insert((true, r.name.clone()));
                }
            }
        }
        refs
    }
}

impl Default for DesiredApp {
    fn default() -> Self {
        DesiredApp {
            name: String::new(),
            generation: 0,
            restart_policy: RestartPolicy::default(),
            network: NetworkMode::default(),
            containers: vec![],
            init_containers: vec![],
            volumes: vec![],
            grace_period_seconds: v1::DEFAULT_GRACE_SECONDS,
            network_policy: None,
            user_namespace: false,
        }
    }
}

/// A container with its image resolved to a content digest for this device's platform.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct DesiredContainer {
    pub name: String,
    /// The reference the operator wrote, for display.
    pub image: String,
    /// `sha256:…` of the platform image manifest; what the agent pulls and verifies.
    pub image_digest: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<PortSpec>,
    pub limits: ContainerLimits,
    pub working_dir: String,
    /// Variables whose values the device takes from a `Config` or `Secret` of the
    /// manifest.
    pub env_from: Vec<(String, EnvSource)>,
    pub volume_mounts: Vec<VolumeMount>,
    pub devices: Vec<DeviceMapping>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub lifecycle: Lifecycle,
    pub security: SecuritySpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLimits {
    /// CFS quota in millicores; `None` means unlimited.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Relative CPU weight from the request (1024 per core); `None` means the default.
    pub cpu_shares: Option<u64>,
}

/// The state of one container as the agent observes it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
pub enum ContainerPhase {
    /// Desired, not yet started: image being fetched or container being created.
    #[default]
    Pending,
    Running,
    /// The process ended; see `exit_code`.
    Exited,
    /// It cannot run: bad image, failed create, crash loop backing off. See `reason`.
    Failed,
}

impl fmt::Display for ContainerPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ObservedContainer {
    pub app: String,
    /// The app generation this container was created for.
    pub generation: u64,
    pub name: String,
    /// Runtime id on the device.
    pub id: String,
    pub phase: ContainerPhase,
    /// Set when the process exited and its status was seen; `None` when it ended while
    /// no agent was watching.
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub started_at: Option<Timestamp>,
    /// Why it is pending or failed, in words an operator can act on. `OOMKilled`
    /// when the kernel killed it for its memory limit.
    pub reason: String,
    /// Its readiness probe passes (true without one once it runs).
    pub ready: bool,
    /// One of the app's init containers.
    pub init: bool,
}

pub mod v1;
