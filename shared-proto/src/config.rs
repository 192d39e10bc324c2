//! Files operators and tools keep on disk: the CLI context written by the hub and
//! read by the `flotilla` CLI (JSON), and the agent's configuration file (TOML).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a hub is and how to talk to it. Written by `flotilla hub serve` and
/// `flotilla demo` (mode 0600: it holds a token), read by the CLI.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CliContext {
    /// Base URL of the hub's HTTPS API, e.g. `https://127.0.0.1:7440`.
    pub hub: String,
    /// `host:port` of the hub's QUIC endpoint for agents.
    #[serde(default)]
    pub quic: String,
    /// An API bearer token.
    pub token: String,
    /// PEM of the fleet CA, which the hub's certificate chains to.
    pub ca_cert_pem: String,
}

/// `flotilla-agent run --config FILE`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfigFile {
    /// `host:port` of the hub's QUIC endpoint.
    pub hub: String,
    /// `host:port` of the hub's TCP fallback, for networks that drop UDP (for example
    /// `hub.example:443`). Defaults to `hub`, over TCP.
    #[serde(default)]
    pub hub_tcp: Option<String>,
    /// Needed only until the device has enrolled; ignored afterwards.
    #[serde(default)]
    pub enrolment_token: Option<String>,
    /// The device's name in the fleet; defaults to the host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Where the agent keeps its identity, desired state and images.
    #[serde(default = "default_state_dir")]
    pub state_dir: String,
    /// Where container runtime state lives; a tmpfs, so a reboot clears it.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: String,
    /// Labels the device asks for at enrolment (the token's labels win).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The cgroup every container of this agent lives under (`/<parent>/<id>`).
    /// Default `flotilla`; two agents on one host need different ones.
    #[serde(default)]
    pub cgroup_parent: Option<String>,
    /// Bytes a container's log may grow to before it is rotated (one older file is
    /// kept). Default 10 MiB.
    #[serde(default)]
    pub max_log_bytes: Option<u64>,
    /// Directories of the device apps may bind-mount (a `hostPath` volume), with
    /// everything under them. Empty: none.
    #[serde(default)]
    pub allowed_host_paths: Vec<String>,
    /// Device nodes apps may use: exact paths, or a prefix ending in `*`
    /// (`/dev/ttyUSB*`). Empty: none.
    #[serde(default)]
    pub allowed_devices: Vec<String>,
    /// The bridge isolated apps are attached to. Default `flotilla0`; two agents on
    /// one host need different ones.
    #[serde(default)]
    pub bridge: Option<String>,
    /// The IPv4 network of the bridge, from which each isolated app gets an address
    /// (the first one is the bridge's own). Default `10.88.0.0/16`.
    #[serde(default)]
    pub bridge_subnet: Option<String>,
    /// The nftables table (family `inet`) holding isolated apps' NAT, published ports
    /// and network policy. Default `flotilla`.
    #[serde(default)]
    pub nft_table: Option<String>,
}

fn default_state_dir() -> String {
    "/var/lib/flotilla-agent".into()
}

fn default_runtime_dir() -> String {
    "/run/flotilla-agent".into()
}

impl std::fmt::Debug for AgentConfigFile {
    // The enrolment token is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfigFile")
            .field("hub", &self.hub)
            .field("hub_tcp", &self.hub_tcp)
            .field("enrolment_token", &self.enrolment_token.as_ref().map(|_| "<redacted>"))
            .field("name", &self.name)
            .field("state_dir", &self.state_dir)
            .field("runtime_dir", &self.runtime_dir)
            .field("labels", &self.labels)
            .field("cgroup_parent", &self.cgroup_parent)
            .field("max_log_bytes", &self.max_log_bytes)
            .field("allowed_host_paths", &self.allowed_host_paths)
            .field("allowed_devices", &self.allowed_devices)
            .field("bridge", &self.bridge)
            .field("bridge_subnet", &self.bridge_subnet)
            .field("nft_table", &self.nft_table)
            .finish()
    }
}

impl std::fmt::Debug for CliContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliContext").field("hub", &self.hub).field("quic", &self.quic).finish_non_exhaustive()
    }
}
