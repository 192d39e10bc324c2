//! An app's volumes and devices on this device: persistent directories under the
//! agent's state, host paths and device nodes only where the agent's configuration
//! allows them (`allowed_host_paths`, `allowed_devices`), and tmpfs.
//!
//! The hub validates shapes; the device decides what it lends. A host path is
//! resolved (symlinks included) before it is checked, so a link inside an allowed
//! directory cannot lend what lies outside it.

use agent_runtime::bundle::{ContainerMount, HostDevice, VolumeSource};
use shared_proto::manifest::{DesiredApp, DesiredConfig, DesiredContainer};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Size of a tmpfs volume that sets none.
pub const DEFAULT_TMPFS_BYTES: u64 = 64 << 20;

/// What this device lends to apps.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    pub host_paths: Vec<PathBuf>,
    /// Exact paths, or prefixes ending in `*`.
    pub devices: Vec<String>,
}

impl Allowed {
    /// `path` (already resolved) is one of the allowed directories or under one.
    pub fn host_path(&self, path: &Path) -> bool {
        self.host_paths.iter().any(|a| path.starts_with(a))
    }

    pub fn device(&self, path: &str) -> bool {
        self.devices.iter().any(|d| match d.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => d == path,
        })
    }
}

/// Where a persistent volume of `app` lives.
pub fn persistent_dir(volumes_dir: &Path, app: &str, volume: &str) -> PathBuf {
    volumes_dir.join(app).join(volume)
}

/// The container's mounts, with persistent directories created and host paths
/// checked. Errors are meant for the operator (they become the container's reason).
pub fn mounts(
    app: &DesiredApp,
    c: &DesiredContainer,
    volumes_dir: &Path,
    allowed: &Allowed,
    configs_dir: &Path,
    configs: &[DesiredConfig],
) -> Result<Vec<ContainerMount>, String> {
    let mut out = Vec::with_capacity(c.volume_mounts.len());
    for m in &c.volume_mounts {
        let v = app
            .volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volume {:?} is not one of the app's volumes", m.name))?;
        let source = if v.persistent.is_some() {
            let dir = persistent_dir(volumes_dir, &app.name, &v.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating volume {}: {e}", dir.display()))?;
            VolumeSource::Bind(dir)
        } else if let Some(h) = &v.host_path {
            let resolved = std::fs::canonicalize(&h.path)
                .map_err(|e| format!("host path {} of volume {}: {e}", h.path, v.name))?;
            if !allowed.host_path(&resolved) {
                return Err(format!(
                    "host path {} of volume {} is not allowed on this device (allowed_host_paths in the agent's config)",
                    resolved.display(),
                    v.name
                ));
            }
            VolumeSource::Bind(resolved)
        } else if let Some(t) = &v.tmpfs {
            VolumeSource::Tmpfs { size_bytes: t.size_bytes.unwrap_or(DEFAULT_TMPFS_BYTES) }
        } else {
            // A Config or a Secret: its keys as files, read-only whatever the mount says.
            let (secret, r) = match (&v.config, &v.secret) {
                (Some(r), _) => (false, r),
                (None, Some(r)) => (true, r),
                (None, None) => return Err(format!("volume {} has no source", v.name)),
            };
            let what = if secret { "Secret" } else { "Config" };
            let c = configs
                .iter()
                .find(|c| c.secret == secret && c.name == r.name)
                .ok_or_else(|| format!("{what} {:?} of volume {} is not on this device", r.name, v.name))?;
            let dir = configs_dir.join(&v.name);
            crate::secrets::write_files(&dir, c)
                .map_err(|e| format!("writing {what} {:?} for volume {}: {e}", r.name, v.name))?;
            out.push(ContainerMount {
                source: VolumeSource::Bind(dir),
                destination: m.mount_path.clone(),
                read_only: true,
            });
            continue;
        };
        out.push(ContainerMount { source, destination: m.mount_path.clone(), read_only: m.read_only });
    }
    Ok(out)
}

/// The container's devices, checked against the allow-list and looked up.
pub fn devices(c: &DesiredContainer, allowed: &Allowed) -> Result<Vec<HostDevice>, String> {
    let mut out = Vec::with_capacity(c.devices.len());
    for d in &c.devices {
        // Resolve links (`/dev/serial/by-id/…` → `/dev/ttyUSB0`) before checking.
        let resolved =
            std::fs::canonicalize(&d.host_path).map_err(|e| format!("device {}: {e}", d.host_path))?;
        let resolved_str = resolved.to_string_lossy();
        if !allowed.device(&d.host_path) && !allowed.device(&resolved_str) {
            return Err(format!(
                "device {} is not allowed on this device (allowed_devices in the agent's config)",
                d.host_path
            ));
        }
        let meta = std::fs::metadata(&resolved).map_err(|e| format!("device {}: {e}", d.host_path))?;
        let kind = if meta.file_type().is_char_device() {
            'c'
        } else if meta.file_type().is_block_device() {
            'b'
        } else {
            return Err(format!("{} is not a device node", d.host_path));
        };
        let rdev = meta.rdev();
        let access = if d.permissions.is_empty() { "rw".to_string() } else { d.permissions.clone() };
        out.push(HostDevice {
            host_path: resolved.clone(),
            container_path: if d.container_path.is_empty() {
                d.host_path.clone()
            } else {
                d.container_path.clone()
            },
            kind,
            major: i64::from(nix::sys::stat::major(rdev) as u32),
            minor: i64::from(nix::sys::stat::minor(rdev) as u32),
            access,
        });
    }
    Ok(out)
}

/// Removes the persistent volumes of apps that are no longer desired here.
pub fn remove_departed(volumes_dir: &Path, desired: &[&str]) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(volumes_dir) else { return removed };
    for e in entries.flatten() {
        let Some(app) = e.file_name().to_str().map(String::from) else { continue };
        if desired.contains(&app.as_str()) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => removed.push(app),
            Err(err) => tracing::warn!(%app, error = %err, "could not remove a departed app's volumes"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::workload::{
        DeviceMapping, HostPathVolume, PersistentVolume, TmpfsVolume, VolumeMount, VolumeSpec,
    };

    fn app(volumes: Vec<VolumeSpec>) -> DesiredApp {
        DesiredApp { name: "pos".into(), volumes, ..Default::default() }
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount { name: name.into(), mount_path: path.into(), read_only: false }
    }

    #[test]
    fn persistent_tmpfs_and_allowed_host_paths() {
        let dir = tempfile::tempdir().unwrap();
        let allowed_dir = dir.path().join("lent");
        std::fs::create_dir_all(allowed_dir.join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("private")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("private"), allowed_dir.join("escape")).unwrap();
        let allowed =
            Allowed { host_paths: vec![std::fs::canonicalize(&allowed_dir).unwrap()], devices: vec![] };
        let a = app(vec![
            VolumeSpec { name: "db".into(), persistent: Some(PersistentVolume {}), ..Default::default() },
            VolumeSpec {
                name: "tmp".into(),
                tmpfs: Some(TmpfsVolume { size_bytes: None }),
                ..Default::default()
            },
            VolumeSpec {
                name: "logs".into(),
                host_path: Some(HostPathVolume { path: allowed_dir.join("sub").to_string_lossy().into() }),
                ..Default::default()
            },
            VolumeSpec {
                name: "sneaky".into(),
                host_path: Some(HostPathVolume { path: allowed_dir.join("escape").to_string_lossy().into() }),
                ..Default::default()
            },
        ]);
        let volumes = dir.path().join("volumes");
        let c = DesiredContainer {
            volume_mounts: vec![mount("db", "/data"), mount("tmp", "/tmp"), mount("logs", "/logs")],
            ..Default::default()
        };
        let m = mounts(&a, &c, &volumes, &allowed, &volumes.join("configs"), &[]).unwrap();
        assert_eq!(m[0].source, VolumeSource::Bind(volumes.join("pos/db")));
        assert!(volumes.join("pos/db").is_dir(), "created on first use");
        assert_eq!(m[1].source, VolumeSource::Tmpfs { size_bytes: DEFAULT_TMPFS_BYTES });
        assert!(matches!(&m[2].source, VolumeSource::Bind(p) if p.ends_with("lent/sub")));
        let c = DesiredContainer { volume_mounts: vec![mount("sneaky", "/x")], ..Default::default() };
        let err = mounts(&a, &c, &volumes, &allowed, &volumes.join("configs"), &[]).unwrap_err();
        assert!(err.contains("not allowed on this device"), "{err}");
        // Departed apps lose their volumes; desired ones keep them.
        std::fs::create_dir_all(volumes.join("old/data")).unwrap();
        let removed = remove_departed(&volumes, &["pos"]);
        assert_eq!(removed, vec!["old".to_string()]);
        assert!(volumes.join("pos/db").is_dir());
    }

    #[test]
    fn devices_only_from_the_allow_list() {
        let allowed = Allowed { host_paths: vec![], devices: vec!["/dev/nul*".into()] };
        let c = DesiredContainer {
            devices: vec![DeviceMapping { host_path: "/dev/null".into(), ..Default::default() }],
            ..Default::default()
        };
        let d = devices(&c, &allowed).unwrap();
        assert_eq!((d[0].kind, d[0].major, d[0].minor), ('c', 1, 3));
        assert_eq!(d[0].container_path, "/dev/null");
        assert_eq!(d[0].access, "rw");
        let c = DesiredContainer {
            devices: vec![DeviceMapping { host_path: "/dev/zero".into(), ..Default::default() }],
            ..Default::default()
        };
        assert!(devices(&c, &allowed).unwrap_err().contains("not allowed"));
        assert!(
            Allowed { devices: vec!["/dev/ttyUSB0".into()], ..Default::default() }.device("/dev/ttyUSB0")
        );
        assert!(
            !Allowed { devices: vec!["/dev/ttyUSB0".into()], ..Default::default() }.device("/dev/ttyUSB01")
        );
    }
}
