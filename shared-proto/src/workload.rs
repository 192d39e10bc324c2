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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecAction {
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 256))]
    pub command: Vec<String>,
}

/// An HTTP GET to the container; success is a status from 200 to 399.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    #[cfg_attr(feature = "openapi", schema(pattern = "^/[^\\x00-\\x20\\x7f]*$", max_length = 1024))]
    #[serde(default = "slash")]
    pub path: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub port: u16,
    #[cfg_attr(feature = "openapi", schema(max_items = 16))]
    /// Extra request headers, `(name, value)`.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

fn slash() -> String {
    "/".into()
}

/// A TCP connection to the container's port; success is an accepted connection.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub port: u16,
}

/// A health check. Exactly one of `exec`, `httpGet` and `tcpSocket` is set.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default)]
    pub exec: Option<ExecAction>,
    #[serde(default)]
    pub http_get: Option<HttpGetAction>,
    #[serde(default)]
    pub tcp_socket: Option<TcpSocketAction>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3600))]
    /// Seconds after the container starts before the first check.
    #[serde(default)]
    pub initial_delay_seconds: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    #[serde(default = "ten")]
    pub period_seconds: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    #[serde(default = "one")]
    pub timeout_seconds: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
    /// Consecutive successes that make a failing probe pass (1 for liveness and startup).
    #[serde(default = "one")]
    pub success_threshold: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 3600))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Handler {
    #[serde(default)]
    pub exec: Option<ExecAction>,
    #[serde(default)]
    pub http_get: Option<HttpGetAction>,
}

/// Hooks around a container's life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeSpec {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::DnsLabel))]
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

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistentVolume {}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathVolume {
    #[cfg_attr(feature = "openapi", schema(pattern = "^/", max_length = 4096))]
    pub path: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TmpfsVolume {
    #[cfg_attr(feature = "openapi", schema(minimum = 4096, maximum = 1073741824))]
    /// Upper bound in bytes; unset means 64 MiB.
    #[serde(default)]
    pub size_bytes: Option<u64>,
}

/// Names another object (a `Config` or a `Secret`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::DnsLabel))]
    pub name: String,
}

/// One of the app's volumes, mounted into a container.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::DnsLabel))]
    /// A volume of the app.
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^/.", max_length = 4096))]
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A device node passed through to a container, allowed only under the agent's
/// `devices` allow-list.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceMapping {
    #[cfg_attr(feature = "openapi", schema(pattern = "^/dev/.", max_length = 4096))]
    /// `/dev/ttyUSB0`, `/dev/gpiochip0`, `/dev/video0`…
    pub host_path: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^(/dev/.*)?$", max_length = 4096))]
    /// Where the container sees it; unset means the same path.
    #[serde(default)]
    pub container_path: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[rwm]{0,3}$"))]
    /// Any of `r`, `w` and `m` (mknod); unset means `rw`.
    #[serde(default)]
    pub permissions: String,
}

/// Where an environment variable's value comes from instead of `value`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvSource {
    #[serde(default)]
    pub config: Option<KeyRef>,
    #[serde(default)]
    pub secret: Option<KeyRef>,
}

/// One key of a `Config` or a `Secret`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRef {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::DnsLabel))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::ConfigKey))]
    pub key: String,
}

/// How much of the sandbox a container gives up. The defaults are the sandbox: a
/// small capability set without `CAP_NET_RAW`, `no_new_privileges`, the default seccomp
/// profile and a default pids limit.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecuritySpec {
    /// Every capability, every device, no seccomp: for what truly needs the host.
    #[serde(default)]
    pub privileged: bool,
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
    /// Capabilities beyond the default set, e.g. `NET_RAW`, `SYS_TIME`.
    #[serde(default)]
    pub add_capabilities: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(max_items = 64))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<crate::openapi::DnsLabel>>, max_items = 64))]
    /// Apps on the same device that may connect to this one.
    #[serde(default)]
    pub ingress_apps: Option<Vec<String>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<crate::openapi::DnsLabel>>, max_items = 64))]
    /// Apps on the same device this one may connect to.
    #[serde(default)]
    pub egress_apps: Option<Vec<String>>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<crate::openapi::Cidr>>, max_items = 64))]
    /// Networks outside the device (CIDRs, `10.0.0.0/8`, `203.0.113.7/32`) this app may
    /// connect to.
    #[serde(default)]
    pub egress_cidrs: Option<Vec<String>>,
}
