//! Real containers through `HelperRuntime` (root, busybox, overlay roots, cgroup v1):
//! the create → start → exit → delete cycle, logs, limits, network modes, stop.

mod common;

use std::time::Duration;

use agent_runtime::{ContainerRuntime, ContainerStatus, stop};
use common::*;
use shared_proto::NetworkMode;
use shared_proto::manifest::ContainerLimits;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_logs_exits_with_its_code_and_deletes_cleanly() {
    let env = TestEnv::new();
    let id = unique_id("exit3");
    // Waits for a file the test creates, so "running" can be observed before the exit.
    let script = "echo $GREETING; echo to-stderr >&2; while [ ! -e /tmp/go ]; do sleep 0.02; done; exit 3";
    let bundle = env.bundle(&id, &["/bin/sh", "-c", script], NetworkMode::None, ContainerLimits::default());
    let mut exits = env.runtime.subscribe_exits();

    env.runtime.create(&id, &bundle).await.unwrap();
    let created = env.runtime.state(&id).await.unwrap().expect("created container has a state");
    assert_eq!(created.status, ContainerStatus::Created);
    assert!(created.pid.is_some());
    for c in CGROUP_CONTROLLERS {
        assert!(cgroup_dir(c, &id).is_dir(), "cgroup {c} exists while the container does");
    }

    env.runtime.start(&id).await.unwrap();
    let running = env.runtime.state(&id).await.unwrap().unwrap();
    assert_eq!((running.status, running.pid), (ContainerStatus::Running, created.pid));
    wait_until("the container's output in its log", || env.log(&id).contains("hello-from-container")).await;

    std::fs::write(env.rootfs.merged_path(&id).join("tmp/go"), "").unwrap();
    let exit = wait_exit(&mut exits, &id).await;
    assert_eq!((exit.exit_code, Some(exit.pid)), (Some(3), created.pid));
    let stopped = env.runtime.state(&id).await.unwrap().unwrap();
    assert_eq!((stopped.status, stopped.pid), (ContainerStatus::Stopped, None));
    let log = env.log(&id);
    assert!(log.contains("hello-from-container\n") && log.contains("to-stderr\n"), "log: {log:?}");

    env.runtime.delete(&id, false).await.unwrap();
    assert_eq!(env.runtime.state(&id).await.unwrap(), None);
    assert!(!env.state_dir(&id).exists(), "state dir removed");
    for c in CGROUP_CONTROLLERS {
        assert!(!cgroup_dir(c, &id).exists(), "cgroup {c} removed");
    }
    assert!(env.runtime.list().await.unwrap().is_empty());
    env.rootfs.release(&id).unwrap();
    assert!(!env.rootfs.merged_path(&id).exists());
    env.finish().await;
}

fn read_cgroup(controller: &str, id: &str, file: &str) -> String {
    std::fs::read_to_string(cgroup_dir(controller, id).join(file)).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_land_in_cgroup_files_and_stop_escalates_to_sigkill() {
    let env = TestEnv::new();
    let id = unique_id("limits");
    let limits = ContainerLimits {
        cpu_millis: Some(250),
        memory_bytes: Some(64 << 20),
        pids: Some(32),
        ..Default::default()
    };
    // `sleep` as pid 1 has no SIGTERM handler, so the kernel drops SIGTERM.
    let bundle = env.bundle(&id, &["/bin/sleep", "1000"], NetworkMode::None, limits);
    let mut exits = env.runtime.subscribe_exits();
    env.runtime.create(&id, &bundle).await.unwrap();
    env.runtime.start(&id).await.unwrap();
    let pid = env.runtime.state(&id).await.unwrap().unwrap().pid.unwrap();

    assert_eq!(read_cgroup("memory", &id, "memory.limit_in_bytes"), (64u64 << 20).to_string());
    assert_eq!(read_cgroup("pids", &id, "pids.max"), "32");
    assert_eq!(read_cgroup("cpu", &id, "cpu.cfs_quota_us"), "25000");
    assert_eq!(read_cgroup("cpu", &id, "cpu.cfs_period_us"), "100000");
    assert_eq!(read_cgroup("cpu", &id, "cpu.shares"), "256");
    assert!(read_cgroup("memory", &id, "cgroup.procs").lines().any(|l| l == pid.to_string()));

    let grace = Duration::from_millis(300);
    let t0 = std::time::Instant::now();
    stop(&env.runtime, &id, grace).await.unwrap();
    assert!(t0.elapsed() >= grace, "SIGTERM was ignored, so stop waited out the grace period");
    let exit = wait_exit(&mut exits, &id).await;
    assert_eq!(exit.exit_code, Some(128 + libc::SIGKILL));
    assert_eq!(env.runtime.state(&id).await.unwrap(), None, "stop deletes");
    for c in CGROUP_CONTROLLERS {
        assert!(!cgroup_dir(c, &id).exists(), "cgroup {c} removed");
    }
    env.rootfs.release(&id).unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_sigterm_handler_is_prompt() {
    let env = TestEnv::new();
    let id = unique_id("term");
    let script = "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.05; done";
    let bundle = env.bundle(&id, &["/bin/sh", "-c", script], NetworkMode::None, ContainerLimits::default());
    let mut exits = env.runtime.subscribe_exits();
    env.runtime.create(&id, &bundle).await.unwrap();
    env.runtime.start(&id).await.unwrap();
    wait_until("the trap to be installed", || env.log(&id).contains("ready")).await;
    stop(&env.runtime, &id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(wait_exit(&mut exits, &id).await.exit_code, Some(0));
    assert!(env.log(&id).contains("got-term"));
    env.rootfs.release(&id).unwrap();
    env.finish().await;
}

/// Interface names as `ip -o link` prints them ("2: eth0: <...>" or "2: eth0@if3: <...>").
fn interfaces(ip_link_output: &str) -> Vec<(String, String)> {
    ip_link_output
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ": ");
            parts.next()?;
            let name = parts.next()?.split('@').next()?.to_string();
            Some((name, parts.next()?.to_string()))
        })
        .collect()
}

fn host_interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect()
}

async fn run_to_completion(env: &TestEnv, id: &str, command: &[&str], network: NetworkMode) -> String {
    let bundle = env.bundle(id, command, network, ContainerLimits::default());
    let mut exits = env.runtime.subscribe_exits();
    env.runtime.create(id, &bundle).await.unwrap();
    env.runtime.start(id).await.unwrap();
    assert_eq!(wait_exit(&mut exits, id).await.exit_code, Some(0), "log: {}", env.log(id));
    env.runtime.delete(id, false).await.unwrap();
    env.rootfs.release(id).unwrap();
    env.log(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_has_only_loopback_and_it_is_up() {
    let env = TestEnv::new();
    let id = unique_id("netnone");
    let out = run_to_completion(&env, &id, &["/bin/ip", "-o", "link"], NetworkMode::None).await;
    let seen = interfaces(&out);
    let lo = seen.iter().find(|(n, _)| n == "lo").unwrap_or_else(|| panic!("no lo in {out:?}"));
    assert!(lo.1.contains("UP"), "lo is up: {}", lo.1);
    for host_if in host_interfaces().iter().filter(|n| *n != "lo") {
        assert!(!seen.iter().any(|(n, _)| n == host_if), "host interface {host_if} visible: {out:?}");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_host_sees_host_interfaces_and_resolv_conf() {
    let env = TestEnv::new();
    let id = unique_id("nethost");
    let script = "/bin/ip -o link; cat /etc/resolv.conf";
    let out = run_to_completion(&env, &id, &["/bin/sh", "-c", script], NetworkMode::Host).await;
    let seen = interfaces(&out);
    let host = host_interfaces();
    assert!(host.len() > 1, "the host has more than loopback");
    for host_if in &host {
        assert!(seen.iter().any(|(n, _)| n == host_if), "host interface {host_if} missing: {out:?}");
    }
    if let Ok(resolv) = std::fs::read_to_string("/etc/resolv.conf") {
        assert!(out.contains(resolv.trim()), "host resolv.conf is bind-mounted: {out:?}");
    }
    env.finish().await;
}

/// `privileged` is what Docker's `--privileged` is: every capability the agent holds
/// (this host's bounding set may lack some), no seccomp filter, a writable `/sys`; a
/// default container runs under the seccomp profile, which refuses
/// `unshare(CLONE_NEWUSER)` (a call that needs no capability) with EPERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_is_unconfined_and_the_default_is_confined() {
    let env = TestEnv::new();
    let script = "unshare -U true 2>&1; echo rc=$?; \
                  grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; grep ' /sys ' /proc/self/mounts";
    let run = |id: &str, privileged: bool| {
        let bundle = env.bundle_with(id, &["/bin/sh", "-c", script], NetworkMode::None, |c| {
            c.security.privileged = privileged;
        });
        let env = &env;
        let id = id.to_string();
        async move {
            let mut exits = env.runtime.subscribe_exits();
            env.runtime.create(&id, &bundle).await.unwrap();
            env.runtime.start(&id).await.unwrap();
            assert_eq!(wait_exit(&mut exits, &id).await.exit_code, Some(0), "log: {}", env.log(&id));
            env.runtime.delete(&id, false).await.unwrap();
            env.rootfs.release(&id).unwrap();
            env.log(&id)
        }
    };
    let confined = run(&unique_id("confined"), false).await;
    assert!(confined.contains("Operation not permitted") && confined.contains("rc=1"), "{confined:?}");
    assert!(confined.contains("Seccomp:\t2") && confined.contains("NoNewPrivs:\t1"), "{confined:?}");
    let privileged = run(&unique_id("privileged"), true).await;
    assert!(privileged.contains("rc=0"), "{privileged:?}");
    assert!(privileged.contains("Seccomp:\t0") && privileged.contains("NoNewPrivs:\t0"), "{privileged:?}");
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let own_caps = own.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(
        privileged.contains(own_caps),
        "every capability this process holds: {own_caps:?} in {privileged:?}"
    );
    assert!(privileged.contains("sysfs /sys sysfs rw,"), "{privileged:?}");
    assert!(
        // Docker's default set without NET_RAW.
        confined.contains("sysfs /sys sysfs ro,") && confined.contains("CapEff:\t00000000a80405fb"),
        "{confined:?}"
    );
    env.finish().await;
}
