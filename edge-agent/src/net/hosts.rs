//! A pod's `/etc/hosts` (pure content, and its in-place rewrite).
//!
//! Its containers reach each other by name at the pod's loopback; an isolated pod
//! also finds every isolated app of the device by the app's name at its address on
//! the bridge. The file is bind-mounted into the containers, so it is rewritten in
//! place (same inode) when apps come and go: a rename would leave the containers
//! holding the old file.

use shared_proto::NetworkMode;
use shared_proto::manifest::DesiredApp;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

/// The content: the device's own entries for a host-network app, localhost
/// otherwise; then the app's containers at loopback; then, for an isolated app,
/// `peers` (isolated apps of the device and their addresses).
pub fn hosts_file(app: &DesiredApp, device_hosts: Option<&str>, peers: &[(String, Ipv4Addr)]) -> String {
    let names: Vec<&str> =
        app.containers.iter().chain(&app.init_containers).map(|c| c.name.as_str()).collect();
    let mut out = match device_hosts {
        Some(h) if app.network == NetworkMode::Host => format!("{}\n", h.trim_end()),
        _ => "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string(),
    };
    if !names.is_empty() {
        out.push_str(&format!("127.0.0.1\t{}\n", names.join(" ")));
    }
    if app.network == NetworkMode::Isolated {
        for (name, address) in peers {
            out.push_str(&format!("{address}\t{name}\n"));
        }
    }
    out
}

/// Writes `text` to `path` unless it already holds it, truncating and writing the
/// same file (never a rename: containers hold this inode through a bind mount).
pub fn write_in_place(path: &Path, text: &str) -> std::io::Result<bool> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(false);
    }
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::manifest::DesiredContainer;
    use std::os::unix::fs::MetadataExt;

    fn app(network: NetworkMode) -> DesiredApp {
        DesiredApp {
            name: "pos".into(),
            containers: vec![
                DesiredContainer { name: "web".into(), ..Default::default() },
                DesiredContainer { name: "db".into(), ..Default::default() },
            ],
            network,
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_s_containers_are_reachable_by_name() {
        let own = hosts_file(&app(NetworkMode::None), Some("10.0.0.1 router"), &[]);
        assert!(own.starts_with("127.0.0.1\tlocalhost\n"), "{own}");
        assert!(own.ends_with("127.0.0.1\tweb db\n"), "{own}");
        assert!(!own.contains("router"), "a pod of its own does not see the device's names");
        let host = hosts_file(&app(NetworkMode::Host), Some("127.0.0.1 localhost\n10.0.0.1 router\n"), &[]);
        assert!(host.contains("10.0.0.1 router") && host.ends_with("127.0.0.1\tweb db\n"), "{host}");
    }

    #[test]
    fn an_isolated_pod_names_the_device_s_isolated_apps() {
        let peers = vec![
            ("pos".to_string(), Ipv4Addr::new(10, 88, 0, 9)),
            ("till".to_string(), Ipv4Addr::new(10, 88, 0, 2)),
        ];
        let text = hosts_file(&app(NetworkMode::Isolated), None, &peers);
        assert!(text.ends_with("127.0.0.1\tweb db\n10.88.0.9\tpos\n10.88.0.2\ttill\n"), "{text}");
        // Other modes do not see them.
        assert!(!hosts_file(&app(NetworkMode::None), None, &peers).contains("till"));
    }

    #[test]
    fn a_rewrite_keeps_the_inode_a_bind_mount_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        assert!(write_in_place(&path, "a long first version\n").unwrap());
        let ino = std::fs::metadata(&path).unwrap().ino();
        assert!(!write_in_place(&path, "a long first version\n").unwrap(), "unchanged: not written");
        assert!(write_in_place(&path, "short\n").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n", "truncated");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    }
}
