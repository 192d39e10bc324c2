//! Manifest shape 1, frozen: desired and observed state as protocol versions 1 to 3,
//! store formats 1 to 4 and agent state version 1 wrote them. Never edit: these
//! decode what older hubs and agents sent and stored, and encode what they expect.
//!
//! Shape 2 added the manifest's `configs`; each app's init containers, volumes, grace
//! period, network policy and user namespace; each container's `env_from`, volume
//! mounts, devices, probes, lifecycle hooks and security settings, and `cpu_shares`;
//! and each observed container's `ready` and `init`. Reading shape 1 fills them with
//! their defaults (a grace period of [`DEFAULT_GRACE_SECONDS`]); writing shape 1 for an
//! older peer leaves them out, so an older agent runs what it can of an app.

use crate::resource::{NetworkMode, PortSpec, RestartPolicy};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// The grace period of a manifest that did not say (shape 1 always meant 10 s).
pub const DEFAULT_GRACE_SECONDS: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredManifest {
    pub device: String,
    pub revision: u64,
    pub apps: Vec<DesiredApp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredApp {
    pub name: String,
    pub generation: u64,
    pub restart_policy: RestartPolicy,
    pub network: NetworkMode,
    pub containers: Vec<DesiredContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredContainer {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<PortSpec>,
    pub limits: ContainerLimits,
    pub working_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLimits {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub app: String,
    pub generation: u64,
    pub name: String,
    pub id: String,
    pub phase: super::ContainerPhase,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub started_at: Option<Timestamp>,
    pub reason: String,
}

impl From<DesiredManifest> for super::DesiredManifest {
    fn from(m: DesiredManifest) -> Self {
        super::DesiredManifest {
            device: m.device,
            revision: m.revision,
            apps: m.apps.into_iter().map(Into::into).collect(),
            configs: vec![],
        }
    }
}

impl From<DesiredApp> for super::DesiredApp {
    fn from(a: DesiredApp) -> Self {
        super::DesiredApp {
            name: a.name,
            generation: a.generation,
            restart_policy: a.restart_policy,
            // Shape 1 knew only Host and None, which keep their positions.
            network: a.network,
            containers: a.containers.into_iter().map(Into::into).collect(),
            init_containers: vec![],
            volumes: vec![],
            grace_period_seconds: DEFAULT_GRACE_SECONDS,
            network_policy: None,
            user_namespace: false,
        }
    }
}

impl From<DesiredContainer> for super::DesiredContainer {
    fn from(c: DesiredContainer) -> Self {
        super::DesiredContainer {
            name: c.name,
            image: c.image,
            image_digest: c.image_digest,
            command: c.command,
            args: c.args,
            env: c.env,
            ports: c.ports,
            limits: super::ContainerLimits {
                cpu_millis: c.limits.cpu_millis,
                memory_bytes: c.limits.memory_bytes,
                pids: c.limits.pids,
                cpu_shares: None,
            },
            working_dir: c.working_dir,
            ..Default::default()
        }
    }
}

impl From<ObservedContainer> for super::ObservedContainer {
    fn from(c: ObservedContainer) -> Self {
        super::ObservedContainer {
            app: c.app,
            generation: c.generation,
            name: c.name,
            id: c.id,
            ready: c.phase == super::ContainerPhase::Running,
            phase: c.phase,
            exit_code: c.exit_code,
            restarts: c.restarts,
            started_at: c.started_at,
            reason: c.reason,
            init: false,
        }
    }
}

impl From<&super::DesiredManifest> for DesiredManifest {
    fn from(m: &super::DesiredManifest) -> Self {
        DesiredManifest {
            device: m.device.clone(),
            revision: m.revision,
            apps: m.apps.iter().map(Into::into).collect(),
        }
    }
}

impl From<&super::DesiredApp> for DesiredApp {
    fn from(a: &super::DesiredApp) -> Self {
        DesiredApp {
            name: a.name.clone(),
            generation: a.generation,
            restart_policy: a.restart_policy,
            // An older agent cannot build the bridge: it gets a private namespace, which
            // is what it can honour of "isolated".
            network: match a.network {
                NetworkMode::Isolated => NetworkMode::None,
                n => n,
            },
            containers: a.containers.iter().map(Into::into).collect(),
        }
    }
}

impl From<&super::DesiredContainer> for DesiredContainer {
    fn from(c: &super::DesiredContainer) -> Self {
        DesiredContainer {
            name: c.name.clone(),
            image: c.image.clone(),
            image_digest: c.image_digest.clone(),
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            ports: c.ports.clone(),
            limits: ContainerLimits {
                cpu_millis: c.limits.cpu_millis,
                memory_bytes: c.limits.memory_bytes,
                pids: c.limits.pids,
            },
            working_dir: c.working_dir.clone(),
        }
    }
}

impl From<&super::ObservedContainer> for ObservedContainer {
    fn from(c: &super::ObservedContainer) -> Self {
        ObservedContainer {
            app: c.app.clone(),
            generation: c.generation,
            name: c.name.clone(),
            id: c.id.clone(),
            phase: c.phase,
            exit_code: c.exit_code,
            restarts: c.restarts,
            started_at: c.started_at,
            reason: c.reason.clone(),
        }
    }
}
