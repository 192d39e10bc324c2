//! The real [`Host`]: overlay root filesystems, OCI bundles, pods (with their place
//! on the device bridge, [`crate::net`]), volumes and devices on this device.

use crate::executor::{Host, Prepare};
use crate::net::device::DeviceNet;
use crate::net::hosts::{hosts_file, write_in_place};
use crate::volumes::{self, Allowed};
use agent_runtime::bundle::{BundleSpec, PodNamespaces};
use agent_runtime::pod::{self, PodPaths, UserPod};
use agent_runtime::rootfs::OverlayRootfs;
use agent_runtime::userns::restrict_dir;
use shared_proto::NetworkMode;
use shared_proto::manifest::DesiredApp;
use std::path::{Path, PathBuf};

pub struct DeviceHost {
    pub rootfs: OverlayRootfs,
    pub bundles_dir: PathBuf,
    pub configs_dir: PathBuf,
    pub pods_dir: PathBuf,
    pub volumes_dir: PathBuf,
    pub cgroup_parent: String,
    pub allowed: Allowed,
    pub net: std::sync::Arc<DeviceNet>,
    /// The agent's own binary: started as the pod holder of apps with a user namespace.
    pub holder_exe: PathBuf,
}

impl DeviceHost {
    /// `db` keeps isolated apps' addresses (see [`crate::net::ipam`]).
    pub fn new(config: &crate::config::AgentConfig, db: Option<crate::state::StateDb>) -> DeviceHost {
        DeviceHost {
            net: std::sync::Arc::new(DeviceNet::new(config.net.clone(), db)),
            rootfs: OverlayRootfs::new(config.containers_dir()),
            bundles_dir: config.bundles_dir(),
            configs_dir: config.configs_dir(),
            pods_dir: config.pods_dir(),
            volumes_dir: config.volumes_dir(),
            cgroup_parent: config.cgroup_parent.clone(),
            holder_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            allowed: Allowed {
                host_paths: config
                    .allowed_host_paths
                    .iter()
                    .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
                    .collect(),
                devices: config.allowed_devices.clone(),
            },
        }
    }

    fn pod_paths(&self, app: &str) -> PodPaths {
        PodPaths::new(&self.pods_dir, app)
    }

    fn write_hosts(&self, path: &std::path::Path, app: &DesiredApp) -> std::io::Result<()> {
        let device = std::fs::read_to_string("/etc/hosts").ok();
        write_in_place(path, &hosts_file(app, device.as_deref(), &self.net.peers())).map(drop)
    }
}

fn private_net(app: &DesiredApp) -> bool {
    app.network != NetworkMode::Host
}

/// The app's ids on the device when it runs in a user namespace.
fn id_range(app: &DesiredApp) -> Option<agent_runtime::userns::IdRange> {
    app.user_namespace.then(|| agent_runtime::userns::range_for(&app.name))
}

/// A persistent volume belongs to the app's root: its range's first id with a user
/// namespace, the device's root without (turning the option off hands it back).
/// Only the directory itself: what the app wrote inside is the app's business.
fn own_volume(dir: &std::path::Path, app: &DesiredApp) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let range = agent_runtime::userns::range_for(&app.name);
    let meta = std::fs::metadata(dir).map_err(|e| format!("volume {}: {e}", dir.display()))?;
    let owner = match id_range(app) {
        Some(r) => r.host_first,
        None if meta.uid() == range.host_first => 0,
        None => return Ok(()),
    };
    if meta.uid() != owner || meta.gid() != owner {
        let id = Some(nix::unistd::Uid::from_raw(owner));
        nix::unistd::chown(dir, id, Some(nix::unistd::Gid::from_raw(owner)))
            .map_err(|e| format!("handing volume {} to the app's root: {e}", dir.display()))?;
    }
    Ok(())
}

impl Host for DeviceHost {
    fn prepare(&self, p: &Prepare) -> Result<PathBuf, String> {
        // Variables from Configs and Secrets become plain ones of this container.
        let mut with_env = p.container.clone();
        for (name, from) in &p.container.env_from {
            with_env.env.push((name.clone(), crate::secrets::env_value(&p.configs, from)?));
        }
        let c = &with_env;
        let app_root = id_range(&p.app).map(|r| r.host_first);
        // Restricted before anything is written in them: the parents are passages.
        let configs_dir = self.configs_dir.join(&p.id);
        let app_volumes = self.volumes_dir.join(&p.app.name);
        let volume = |name: &str| p.app.volumes.iter().find(|v| v.name == name);
        let has_files = c
            .volume_mounts
            .iter()
            .any(|m| volume(&m.name).is_some_and(|v| v.config.is_some() || v.secret.is_some()));
        let has_persistent =
            c.volume_mounts.iter().any(|m| volume(&m.name).is_some_and(|v| v.persistent.is_some()));
        let dirs = [(has_files, &configs_dir), (has_persistent, &app_volumes)];
        for (_, dir) in dirs.into_iter().filter(|(needed, _)| *needed) {
            std::fs::create_dir_all(dir)
                .and_then(|()| restrict_dir(dir, app_root))
                .map_err(|e| format!("restricting {}: {e}", dir.display()))?;
        }
        let mounts = volumes::mounts(&p.app, c, &self.volumes_dir, &self.allowed, &configs_dir, &p.configs)?;
        let devices = volumes::devices(c, &self.allowed)?;
        for m in &mounts {
            if let agent_runtime::bundle::VolumeSource::Bind(dir) = &m.source
                && dir.starts_with(&app_volumes)
            {
                own_volume(dir, &p.app)?;
            }
        }
        let pod = self.pod_paths(&p.app.name);
        if !pod.exists(private_net(&p.app)) || pod.has_user() != p.app.user_namespace {
            return Err(format!("the pod of app {} is missing", p.app.name));
        }
        let (net, ipc, user) = (pod.net(), pod.ipc(), pod.user());
        let hosts = pod.dir.join("hosts");
        self.write_hosts(&hosts, &p.app).map_err(|e| format!("writing the pod's hosts file: {e}"))?;
        let image_root = std::path::Path::new(&p.image.rootfs);
        let merged = match id_range(&p.app) {
            Some(range) => self.rootfs.prepare_mapped(&p.id, image_root, &user, range.host_first),
            None => self.rootfs.prepare(&p.id, image_root),
        }
        .map_err(|e| format!("preparing the root filesystem: {e}"))?;
        let spec = BundleSpec {
            id: &p.id,
            cgroup_parent: &self.cgroup_parent,
            container: c,
            network: p.app.network,
            image: &p.image.config,
            rootfs: &merged,
            hostname: &c.name,
            pod: PodNamespaces {
                net: private_net(&p.app).then_some(net.as_path()),
                ipc: Some(ipc.as_path()),
                user: p.app.user_namespace.then_some(user.as_path()),
            },
            etc_hosts: Some(hosts.as_path()),
            mounts: &mounts,
            devices: &devices,
        };
        agent_runtime::bundle::write_bundle(&self.bundles_dir.join(&p.id), &spec).map_err(|e| e.to_string())
    }

    fn release(&self, id: &str) -> Result<(), String> {
        self.rootfs.release(id).map_err(|e| e.to_string())?;
        for dir in [self.bundles_dir.join(id), self.configs_dir.join(id)] {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.to_string()),
                _ => {}
            }
        }
        Ok(())
    }

    fn create_pod(&self, app: &DesiredApp) -> Result<(), String> {
        let user = id_range(app).map(|range| UserPod { range, holder: &self.holder_exe });
        let paths =
            pod::create_pod(&self.pods_dir, &app.name, private_net(app), user).map_err(|e| e.to_string())?;
        if app.network == NetworkMode::Isolated
            && let Err(e) = self.net.attach(&app.name, &paths.net())
        {
            // All or nothing: a pod is only listed once it is on the bridge, so the
            // next pass makes it again.
            let _ = self.net.detach(&app.name);
            let _ = pod::remove_pod(&self.pods_dir, &app.name);
            return Err(format!("putting the pod on the bridge: {e}"));
        }
        Ok(())
    }

    fn remove_pod(&self, app: &str) -> Result<(), String> {
        self.net.detach(app)?;
        pod::remove_pod(&self.pods_dir, app).map_err(|e| e.to_string())
    }

    fn sync_network(&self, apps: &[DesiredApp]) -> Result<(), String> {
        // An app that turned its user namespace on or off needs a pod of the other kind.
        // Its containers are all being replaced (their ids hash the option), so the old
        // pod goes now and the next pass makes the new one.
        for app in apps {
            let pod = self.pod_paths(&app.name);
            if pod.exists(private_net(app)) && pod.has_user() != app.user_namespace {
                tracing::info!(app = %app.name, "user namespace changed: replacing the app's pod");
                self.remove_pod(&app.name)?;
            }
        }
        let pods = self.pods();
        self.net.sync(apps, &pods)?;
        // Names of isolated apps, in every pod that runs (rewritten in place).
        for app in apps.iter().filter(|a| pods.contains(&a.name)) {
            let hosts = self.pod_paths(&app.name).dir.join("hosts");
            if hosts.exists() {
                self.write_hosts(&hosts, app).map_err(|e| format!("rewriting {}: {e}", hosts.display()))?;
            }
        }
        Ok(())
    }

    fn pods(&self) -> Vec<String> {
        pod::list_pods(&self.pods_dir)
    }

    fn netns(&self, app: &str) -> Option<PathBuf> {
        let net = self.pod_paths(app).net();
        net.exists().then_some(net)
    }

    fn oom_killed(&self, id: &str) -> bool {
        oom_killed(&self.cgroup_parent, id)
    }

    fn usage(&self, id: &str) -> Option<(u64, u64)> {
        usage(&self.cgroup_parent, id)
    }

    fn prepared(&self) -> Vec<String> {
        let mut ids = std::collections::BTreeSet::new();
        for dir in [self.rootfs.state_dir(), self.bundles_dir.as_path(), self.configs_dir.as_path()] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                ids.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|id| agent_runtime::validate_container_id(id).is_ok()),
                );
            }
        }
        ids.into_iter().collect()
    }
}

/// The container's memory cgroup counted an OOM kill (v2 `memory.events`, v1
/// `memory.oom_control`). Read right after the exit, before the cgroup goes.
pub fn oom_killed(cgroup_parent: &str, id: &str) -> bool {
    oom_killed_under(Path::new(CGROUP_ROOT), cgroup_parent, id)
}

/// CPU time (ns) and working-set memory (bytes) of a container's cgroup: v2
/// (`cpu.stat` usage_usec, `memory.current` minus `inactive_file`) or v1
/// (`cpuacct.usage`, `memory.usage_in_bytes` minus `total_inactive_file`).
pub fn usage(cgroup_parent: &str, id: &str) -> Option<(u64, u64)> {
    usage_under(Path::new(CGROUP_ROOT), cgroup_parent, id)
}

/// Where cgroup file systems are mounted: the v2 hierarchy itself on a v2 host, the
/// v1 hierarchies (and hybrid's `unified`) below it otherwise.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// [`oom_killed`] with the cgroup mounts under `root`.
fn oom_killed_under(root: &Path, cgroup_parent: &str, id: &str) -> bool {
    let candidates = [
        root.join(cgroup_parent).join(id).join("memory.events"),
        root.join("unified").join(cgroup_parent).join(id).join("memory.events"),
        root.join("memory").join(cgroup_parent).join(id).join("memory.oom_control"),
    ];
    candidates.iter().any(|path| {
        std::fs::read_to_string(path).is_ok_and(|text| stat_field(&text, "oom_kill").is_some_and(|n| n > 0))
    })
}

/// The number after `key` in a flat-keyed cgroup file (`key value` lines).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(key)).then(|| f.next()?.parse::<u64>().ok()).flatten()
    })
}

/// [`usage`] with the cgroup mounts under `root`.
fn usage_under(root: &Path, cgroup_parent: &str, id: &str) -> Option<(u64, u64)> {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    // v2, or hybrid's unified hierarchy when it holds the memory controller.
    for v2 in [root.to_path_buf(), root.join("unified")] {
        let dir = v2.join(cgroup_parent).join(id);
        if let (Some(cpu), Some(mem)) = (read(dir.join("cpu.stat")), read(dir.join("memory.current"))) {
            let usec = stat_field(&cpu, "usage_usec")?;
            let current: u64 = mem.trim().parse().ok()?;
            let inactive =
                read(dir.join("memory.stat")).and_then(|s| stat_field(&s, "inactive_file")).unwrap_or(0);
            return Some((usec * 1000, current.saturating_sub(inactive)));
        }
    }
    let cpu = read(root.join("cpuacct").join(cgroup_parent).join(id).join("cpuacct.usage"))
        .or_else(|| read(root.join("cpu,cpuacct").join(cgroup_parent).join(id).join("cpuacct.usage")))?;
    let mem_dir = root.join("memory").join(cgroup_parent).join(id);
    let current: u64 = read(mem_dir.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
    let inactive =
        read(mem_dir.join("memory.stat")).and_then(|s| stat_field(&s, "total_inactive_file")).unwrap_or(0);
    Some((cpu.trim().parse().ok()?, current.saturating_sub(inactive)))
}

#[cfg(test)]
mod cgroup_reader_tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn v2_usage_and_oom_come_from_the_unified_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "flotilla/a/cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n");
        write(r, "flotilla/a/memory.current", "10485760\n");
        write(r, "flotilla/a/memory.stat", "anon 8388608\nfile 2097152\ninactive_file 1048576\n");
        assert_eq!(usage_under(r, "flotilla", "a"), Some((1_500_000, 9_437_184)));
        write(r, "flotilla/a/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n");
        assert!(!oom_killed_under(r, "flotilla", "a"), "oom without a kill is not OOMKilled");
        write(r, "flotilla/a/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        assert!(oom_killed_under(r, "flotilla", "a"));
        assert_eq!(usage_under(r, "flotilla", "b"), None);
    }

    #[test]
    fn v1_usage_and_oom_come_from_the_controllers_and_hybrid_unified_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        // Hybrid: the unified hierarchy has cpu.stat (always there) but no memory
        // controller, so the figures come from v1.
        write(r, "unified/flotilla/a/cpu.stat", "usage_usec 1\n");
        write(r, "cpu,cpuacct/flotilla/a/cpuacct.usage", "2000000\n");
        write(r, "memory/flotilla/a/memory.usage_in_bytes", "4194304\n");
        write(r, "memory/flotilla/a/memory.stat", "inactive_file 7\ntotal_inactive_file 1048576\n");
        assert_eq!(usage_under(r, "flotilla", "a"), Some((2_000_000, 3_145_728)));
        write(r, "memory/flotilla/a/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        assert!(oom_killed_under(r, "flotilla", "a"));
    }
}
