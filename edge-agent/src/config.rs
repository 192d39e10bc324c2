//! Loading `flotilla-agent run --config FILE` and filling in defaults.

use anyhow::{Context, bail};
use shared_proto::config::AgentConfigFile;
use shared_proto::validate::{dns_label_problem, label_problem};
use std::path::{Path, PathBuf};

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 64 << 10;

/// The agent's settings with defaults resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub hub: String,
    /// The hub's TCP fallback address.
    pub hub_tcp: String,
    pub enrolment_token: Option<String>,
    pub name: String,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Cgroup parent of every container: `/<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    /// A container's log is rotated past this many bytes.
    pub max_log_bytes: u64,
    /// Host directories apps may bind-mount.
    pub allowed_host_paths: Vec<PathBuf>,
    /// Device nodes apps may use (exact, or a prefix ending in `*`).
    pub allowed_devices: Vec<String>,
    /// Bridge, network and nftables table of isolated apps.
    pub net: crate::net::NetConfig,
}

impl AgentConfig {
    /// The configured hub, as the cluster names hubs.
    pub fn hub_endpoint(&self) -> shared_proto::wire::HubEndpoint {
        shared_proto::wire::HubEndpoint { quic: self.hub.clone(), tcp: self.hub_tcp.clone() }
    }

    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if meta.len() > MAX_CONFIG_BYTES {
            bail!("{}: larger than {MAX_CONFIG_BYTES} bytes", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<AgentConfig> {
        let file: AgentConfigFile = toml::from_str(text)?;
        let net = net_config(&file)?;
        let name = match file.name {
            Some(n) => n,
            None => crate::facts::hostname().to_ascii_lowercase(),
        };
        if let Some(p) = dns_label_problem(&name) {
            bail!("name: {p} (set `name = \"...\"` to a valid device name)");
        }
        if file.hub.is_empty() || !file.hub.contains(':') {
            bail!("hub: must be host:port of the hub's QUIC endpoint, e.g. \"hub.example:7441\"");
        }
        let cgroup_parent = file.cgroup_parent.unwrap_or_else(|| "flotilla".to_string());
        if let Some(p) = dns_label_problem(&cgroup_parent) {
            bail!("cgroup_parent: {p}");
        }
        let max_log_bytes = file.max_log_bytes.unwrap_or(crate::logs::DEFAULT_MAX_LOG_BYTES);
        if max_log_bytes < crate::logs::MIN_MAX_LOG_BYTES {
            bail!("max_log_bytes: must be at least {}", crate::logs::MIN_MAX_LOG_BYTES);
        }
        let hub_tcp = file.hub_tcp.unwrap_or_else(|| file.hub.clone());
        if !hub_tcp.contains(':') {
            bail!("hub_tcp: must be host:port of the hub's TCP fallback, e.g. \"hub.example:443\"");
        }
        for p in &file.allowed_host_paths {
            if let Some(problem) = shared_proto::validate::path_problem(p) {
                bail!("allowed_host_paths: {p:?} {problem}");
            }
        }
        for d in &file.allowed_devices {
            let path = d.strip_suffix('*').unwrap_or(d);
            if !path.starts_with("/dev/")
                || shared_proto::validate::path_problem(path).is_some()
                || path.contains('*')
            {
                bail!("allowed_devices: {d:?} must be a path under /dev/, optionally ending in *");
            }
        }
        for (k, v) in &file.labels {
            if let Some(p) = label_problem(k, v) {
                bail!("labels.{k}: {p}");
            }
        }
        Ok(AgentConfig {
            hub: file.hub,
            hub_tcp,
            enrolment_token: file.enrolment_token.filter(|t| !t.trim().is_empty()),
            name,
            state_dir: PathBuf::from(file.state_dir),
            runtime_dir: PathBuf::from(file.runtime_dir),
            labels: file.labels,
            cgroup_parent,
            max_log_bytes,
            allowed_host_paths: file.allowed_host_paths.iter().map(PathBuf::from).collect(),
            allowed_devices: file.allowed_devices,
            net,
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("state.redb")
    }
    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("device.key")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join("device.crt")
    }
    pub fn ca_path(&self) -> PathBuf {
        self.state_dir.join("ca.crt")
    }
    pub fn blobs_dir(&self) -> PathBuf {
        self.state_dir.join("blobs")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }
    /// The agent's private tmpfs: bundles (their environment may hold secrets) and
    /// the Config and Secret files containers mount.
    pub fn private_dir(&self) -> PathBuf {
        self.runtime_dir.join("private")
    }
    pub fn bundles_dir(&self) -> PathBuf {
        self.private_dir().join("bundles")
    }
    /// `<private>/configs/<container id>/<volume>/<key>`.
    pub fn configs_dir(&self) -> PathBuf {
        self.private_dir().join("configs")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    /// Persistent volumes: `<state_dir>/volumes/<app>/<volume>`.
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }
    /// Pods' namespace files, on tmpfs.
    pub fn pods_dir(&self) -> PathBuf {
        self.runtime_dir.join("pods")
    }
    pub fn runtime_state_dir(&self) -> PathBuf {
        self.runtime_dir.join("containers")
    }
}

fn net_config(file: &AgentConfigFile) -> anyhow::Result<crate::net::NetConfig> {
    let bridge = file.bridge.clone().unwrap_or_else(|| crate::net::DEFAULT_BRIDGE.into());
    let ifname_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if bridge.is_empty() || bridge.len() > 15 || !bridge.bytes().all(ifname_char) {
        bail!("bridge: {bridge:?} must be an interface name of 1 to 15 letters, digits, '-', '_' or '.'");
    }
    let subnet =
        crate::net::Subnet::parse(file.bridge_subnet.as_deref().unwrap_or(crate::net::DEFAULT_SUBNET))
            .map_err(|e| anyhow::anyhow!("bridge_subnet: {e}"))?;
    let table = file.nft_table.clone().unwrap_or_else(|| crate::net::DEFAULT_TABLE.into());
    let ident = table.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && table.len() <= 32
        && table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ident {
        bail!("nft_table: {table:?} must start with a letter and hold at most 32 letters, digits or '_'");
    }
    Ok(crate::net::NetConfig { bridge, subnet, table })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = AgentConfig::parse("hub = \"h:7441\"\nname = \"pi-1\"\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/flotilla-agent"));
        assert_eq!(c.enrolment_token, None);
        let e = AgentConfig::parse("hub = \"h:7441\"\nname = \"Pi_1\"\n").unwrap_err();
        assert!(e.to_string().starts_with("name:"), "{e}");
        let e = AgentConfig::parse("hub = \"h\"\nname = \"pi\"\n").unwrap_err();
        assert!(e.to_string().starts_with("hub:"), "{e}");
        let e = AgentConfig::parse("hub = \"h:1\"\nname = \"pi\"\nhbu = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
    }

    #[test]
    fn isolated_networking_has_defaults_and_may_be_moved() {
        let c = AgentConfig::parse("hub = \"h:7441\"\nname = \"pi\"\n").unwrap();
        assert_eq!(c.net, crate::net::NetConfig::default());
        let c = AgentConfig::parse(
            "hub = \"h:7441\"\nname = \"pi\"\nbridge = \"flt7\"\nbridge_subnet = \"172.31.0.0/24\"\nnft_table = \"flt_7\"\n",
        )
        .unwrap();
        assert_eq!(
            (c.net.bridge.as_str(), c.net.subnet.to_string(), c.net.table.as_str()),
            ("flt7", "172.31.0.0/24".into(), "flt_7")
        );
        for (line, field) in [
            ("bridge = \"a-bridge-name-too-long\"", "bridge:"),
            ("bridge_subnet = \"10.88.0.0/31\"", "bridge_subnet:"),
            ("nft_table = \"1x\"", "nft_table:"),
        ] {
            let e = AgentConfig::parse(&format!("hub = \"h:7441\"\nname = \"pi\"\n{line}\n")).unwrap_err();
            assert!(e.to_string().starts_with(field), "{e}");
        }
    }
}
