//! Shared fixtures for the runtime's integration tests: a busybox "image", a real
//! overlay root per container, bundles written by `bundle.rs`, and a `HelperRuntime`
//! running the crate's helper binary. Everything lives in one temp dir per test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use agent_runtime::bundle::{BundleSpec, write_bundle};
use agent_runtime::rootfs::OverlayRootfs;
use agent_runtime::{ContainerExit, HelperConfig, HelperRuntime};
use shared_proto::NetworkMode;
use shared_proto::agent_state::ImageRunConfig;
use shared_proto::manifest::{ContainerLimits, DesiredContainer};
use tokio::sync::broadcast;
use tokio::time::Instant;

pub const HELPER_BIN: &str = env!("CARGO_BIN_EXE_flotilla-runtime-helper");
pub const DEADLINE: Duration = Duration::from_secs(20);
const APPLETS: [&str; 11] =
    ["sh", "echo", "sleep", "cat", "ls", "true", "ip", "test", "[", "unshare", "grep"];

/// Cgroup v1 hierarchies the tests look into.
pub const CGROUP_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub image_rootfs: PathBuf,
    pub rootfs: OverlayRootfs,
    pub config: HelperConfig,
    pub runtime: HelperRuntime,
    ids: std::sync::Mutex<Vec<String>>,
}

/// Ids are global (cgroup names), so they carry the test process id.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/{controller}/flotilla/{id}"))
}

fn make_image(root: &Path) {
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = root.join("bin/busybox");
    // A hard link is instant when /tmp and /bin share a filesystem; copy otherwise.
    if std::fs::hard_link("/bin/busybox", &busybox).is_err() {
        std::fs::copy("/bin/busybox", &busybox).expect("busybox-static must be installed at /bin/busybox");
    }
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("flotilla-rt-").tempdir().unwrap();
        let image_rootfs = dir.path().join("image");
        make_image(&image_rootfs);
        let config =
            HelperConfig::new(dir.path().join("state"), dir.path().join("logs")).with_helper_exe(HELPER_BIN);
        TestEnv {
            image_rootfs,
            rootfs: OverlayRootfs::new(dir.path().join("roots")),
            runtime: HelperRuntime::new(config.clone()),
            config,
            dir,
            ids: Default::default(),
        }
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.config.state_root.join(id)
    }

    /// Mounts an overlay root for `id` and writes its bundle; returns the bundle dir.
    pub fn bundle(
        &self,
        id: &str,
        command: &[&str],
        network: NetworkMode,
        limits: ContainerLimits,
    ) -> PathBuf {
        self.bundle_with(id, command, network, |c| c.limits = limits)
    }

    /// [`TestEnv::bundle`] with the container adjusted by `adjust` (security settings).
    pub fn bundle_with(
        &self,
        id: &str,
        command: &[&str],
        network: NetworkMode,
        adjust: impl FnOnce(&mut DesiredContainer),
    ) -> PathBuf {
        self.ids.lock().unwrap().push(id.to_string());
        let rootfs = self.rootfs.prepare(id, &self.image_rootfs).unwrap();
        let mut container = DesiredContainer {
            name: "test".into(),
            image: "busybox".into(),
            image_digest: "sha256:00".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: vec![],
            env: vec![("GREETING".into(), "hello-from-container".into())],
            ports: vec![],
            working_dir: String::new(),
            ..Default::default()
        };
        adjust(&mut container);
        let image = ImageRunConfig::default();
        let spec = BundleSpec {
            id,
            cgroup_parent: "flotilla",
            container: &container,
            network,
            image: &image,
            rootfs: &rootfs,
            hostname: "",
            pod: Default::default(),
            etc_hosts: None,
            mounts: &[],
            devices: &[],
        };
        write_bundle(&self.dir.path().join("bundles").join(id), &spec).unwrap()
    }

    /// Ends the test's helper and waits for it, so no zombie outlives the test.
    pub async fn finish(self) {
        self.runtime.shutdown().await;
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.runtime.log_path(id)).unwrap_or_default()
    }
}

impl Drop for TestEnv {
    /// Best-effort cleanup when a test failed halfway: kill what is left in the test's
    /// cgroups, remove them, unmount the roots. Passing tests leave nothing for it.
    fn drop(&mut self) {
        for id in self.ids.lock().unwrap().iter() {
            if let Ok(procs) = std::fs::read_to_string(cgroup_dir("pids", id).join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
            // Killed processes take a moment to leave their cgroups.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
                let dir = controller.path().join("flotilla").join(id);
                while dir.exists()
                    && std::fs::remove_dir(&dir).is_err()
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = self.rootfs.release(id);
        }
    }
}

/// Waits for `id`'s exit notification.
pub async fn wait_exit(exits: &mut broadcast::Receiver<ContainerExit>, id: &str) -> ContainerExit {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, exits.recv()).await {
            Ok(Ok(exit)) if exit.id == id => return exit,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("exit channel: {e}"),
            Err(_) => panic!("no exit notification for {id} within {DEADLINE:?}"),
        }
    }
}

/// Polls `cond` until it holds, failing the test at the deadline.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}
