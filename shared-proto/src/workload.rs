//! What an app's containers need beyond a process and an image: probes and hooks,
//! volumes and devices, configuration and secrets, the sandbox, and the network
//! policy of an isolated app. These types appear twice with the same shape: in the
//! [`crate::resource::AppSpec`] operators write and in the per-device
//! [`crate::manifest::DesiredApp`] the agent runs, so what the hub validates is what the
//! device receives.
//!
//! Several actions are shaped like Kubernetes' (one optional field per kind, exactly
//! one set: `exec`, `httpGet`, `tcpSocket`), so operators' habits carry over; the
//! validator names the field when none or two are set. Postcard needs every field, so
//! none is skipped on output (see [`crate::resource`]).

use serde::{Deserialize, Serialize};

/// Run a command inside the container; success is exit code 0.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecAction {
    pub command: Vec<String>,
}

/// An HTTP GET to the container; success is a status from 200 to 399.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    #[serde(default = "slash")]
    pub path: String,
    pub port: u16,
    /// Extra request headers, `(name, value)`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

fn slash() -> String {
    "/".into()
}

/// A TCP connection to the container's port; success is an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    pub port: u16,
}

/// A health check. Exactly one of `exec`, `httpGet` and `tcpSocket` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub exec: Option<ExecAction>,
    #[serde(default)]
    pub http_get: Option<HttpGetAction>,
    #[serde(default)]
    pub tcp_socket: Option<TcpSocketAction>,
    /// Seconds after the container starts before the first check.
    #[serde(default)]
    pub initial_delay_seconds: u32,
    #[serde(default = "ten")]
    pub period_seconds: u32,
    #[serde(default = "one")]
    pub timeout_seconds: u32,
    /// Consecutive successes that make a failing probe pass (1 for liveness and startup).
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// Consecutive failures that make a passing probe fail.
    #[serde(default = "three")]
    pub failure_threshold: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            exec: None,
            http_get: None,
            tcp_socket: None,
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten() -> u32 {
    10
}

/// What a lifecycle hook runs. Exactly one of `exec` and `httpGet` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handler {
    #[serde(default)]
    pub exec: Option<ExecAction>,
    #[serde(default)]
    pub http_get: Option<HttpGetAction>,
}

/// Hooks around a container's life.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifecycle {
    /// Runs right after the container starts; a failure kills and restarts it.
    #[serde(default)]
    pub post_start: Option<Handler>,
    /// Runs before the container is sent SIGTERM; its time counts against the grace
    /// period.
    #[serde(default)]
    pub pre_stop: Option<Handler>,
}

/// Where an app's volume comes from. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeSpec {
    pub name: String,
    /// A directory the agent keeps on the device's disk under the app's name: it
    /// survives updates of the app, agent restarts and reboots, and goes when the app
    /// leaves the device.
    #[serde(default)]
    pub persistent: Option<PersistentVolume>,
    /// A path on the device, allowed only under the agent's `host_paths` allow-list.
    #[serde(default)]
    pub host_path: Option<HostPathVolume>,
    /// Memory-backed, emptied whenever the app's containers are all recreated.
    #[serde(default)]
    pub tmpfs: Option<TmpfsVolume>,
    /// The keys of a `Config` as files.
    #[serde(default)]
    pub config: Option<ObjectRef>,
    /// The keys of a `Secret` as files, on tmpfs on the device.
    #[serde(default)]
    pub secret: Option<ObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolume {}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathVolume {
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TmpfsVolume {
    /// Upper bound in bytes; unset means 64 MiB.
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// Names another object (a `Config` or a `Secret`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub name: String,
}

/// One of the app's volumes, mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    /// A volume of the app.
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A device node passed through to a container, allowed only under the agent's
/// `devices` allow-list.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceMapping {
    /// `/dev/ttyUSB0`, `/dev/gpiochip0`, `/dev/video0`…
    pub host_path: String,
    /// Where the container sees it; unset means the same path.
    #[serde(default)]
    pub container_path: String,
    /// Any of `r`, `w` and `m` (mknod); unset means `rw`.
    #[serde(default)]
    pub permissions: String,
}

/// Where an environment variable's value comes from instead of `value`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvSource {
    #[serde(default)]
    pub config: Option<KeyRef>,
    #[serde(default)]
    pub secret: Option<KeyRef>,
}

/// One key of a `Config` or a `Secret`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

/// How much of the sandbox a container gives up. The defaults are the sandbox: a
/// small capability set without `CAP_NET_RAW`, `no_new_privileges`, the default seccomp
/// profile and a default pids limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecuritySpec {
    /// Every capability, every device, no seccomp: for what truly needs the host.
    #[serde(default)]
    pub privileged: bool,
    /// Capabilities beyond the default set, e.g. `NET_RAW`, `SYS_TIME`.
    #[serde(default)]
    pub add_capabilities: Vec<String>,
    /// Capabilities of the default set to drop (`ALL` drops them all).
    #[serde(default)]
    pub drop_capabilities: Vec<String>,
    #[serde(default)]
    pub run_as_user: Option<u32>,
    #[serde(default)]
    pub run_as_group: Option<u32>,
    #[serde(default)]
    pub read_only_root_filesystem: bool,
}

/// Which connections an isolated app's containers may open and accept. Unset lists
/// allow everything; an empty list allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Apps on the same device that may connect to this one.
    #[serde(default)]
    pub ingress_apps: Option<Vec<String>>,
    /// Apps on the same device this one may connect to.
    #[serde(default)]
    pub egress_apps: Option<Vec<String>>,
    /// Networks outside the device (CIDRs, `10.0.0.0/8`, `203.0.113.7/32`) this app may
    /// connect to.
    #[serde(default)]
    pub egress_cidrs: Option<Vec<String>>,
}
