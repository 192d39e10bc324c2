//! Per-device desired state (what the hub wants one device to run) and observed
//! state (what the agent reports it runs). Both travel over QUIC and are kept on disk
//! by the agent, so a device keeps running its last desired state without the hub.

use crate::resource::{NetworkMode, PortSpec, RestartPolicy};
use crate::time::Timestamp;
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
}

/// A container with its image resolved to a content digest for this device's platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLimits {
    /// CFS quota in millicores; `None` means unlimited.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// The state of one container as the agent observes it.
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
    /// Why it is pending or failed, in words an operator can act on.
    pub reason: String,
}
