//! The agent on a cgroup v2 device, for real: a guest whose only cgroup hierarchy is
//! v2 (see `firmware_tests::vm` for why a guest), a hub and an agent inside it, real
//! containers. The agent's preflight sees v2, limits land in the v2 files and hold
//! (pids, CPU), the agent's usage reader sees what a container uses, an OOM kill is
//! reported as `OOMKilled`, and a removed container's cgroup goes.
//!
//! The same test function runs twice: on the host it boots the guest and runs this
//! test binary in it (with `FLOTILLA_CGROUP_V2_GUEST` set); in the guest it is the
//! scenario. Nothing on the host's cgroups changes.

use firmware_tests::{Agent, Hub, busybox_image, require_root, vm, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const GUEST_ENV: &str = "FLOTILLA_CGROUP_V2_GUEST";
/// The guest's CPU is emulated: its waits are long, the test is not.
const IN_GUEST: Duration = Duration::from_secs(150);
/// What the scenario prints when every assertion held.
const PASSED: &str = "cgroup v2 scenario passed";

const APPS: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: limited
spec:
  selector:
    matchLabels: {role: v2}
  containers:
    - name: burn
      image: v2:1
      command: ["/bin/sh", "-c", "i=0; while [ $i -lt 40 ]; do sleep 600 & i=$((i+1)); done; while :; do :; done"]
      resources:
        limits: {memory: 64Mi, cpu: 250m, pids: 32}
---
apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: hog
spec:
  selector:
    matchLabels: {role: v2}
  restartPolicy: Never
  containers:
    - name: hog
      image: v2:1
      command: ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
      resources:
        limits: {memory: 16Mi}
---
apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: nodes
spec:
  selector:
    matchLabels: {role: v2}
  restartPolicy: Never
  containers:
    # No device rules on v2 (libcontainer without its eBPF filter): no CAP_MKNOD, so
    # no node of the guest's serial console.
    - name: mknod
      image: v2:1
      command: ["/bin/busybox", "mknod", "/tmp/s", "c", "4", "64"]
"#;

#[test]
fn limits_usage_and_oom_kills_on_a_cgroup_v2_device() {
    require_root();
    if std::env::var_os(GUEST_ENV).is_some() {
        return scenario();
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut env = vec![
        (GUEST_ENV, "1".to_string()),
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("HOME", "/run/tmp".to_string()),
        ("RUST_BACKTRACE", "1".to_string()),
    ];
    // The guest finds the binaries where the host's harness would.
    for key in ["CARGO_TARGET_DIR", "FLOTILLA_TEST_PROFILE", "FLOTILLA_TEST_LOGS"] {
        if let Ok(v) = std::env::var(key) {
            env.push((key, v));
        }
    }
    let command = format!(
        "{} --exact limits_usage_and_oom_kills_on_a_cgroup_v2_device --nocapture --test-threads=1",
        exe.display()
    );
    let t0 = Instant::now();
    let run = vm::run_in_guest(dir.path(), &command, &env, Duration::from_secs(480));
    eprintln!("guest run took {:.1}s", t0.elapsed().as_secs_f64());
    // The scenario's steps, for the CI log.
    for line in run.console.lines().filter(|l| l.contains("s] ")) {
        eprintln!("guest: {line}");
    }
    assert_eq!(
        run.exit_code,
        Some(0),
        "the scenario failed in the guest; console:\n{}",
        run.console_tail(120)
    );
    assert!(
        run.console.contains(PASSED),
        "the guest's test binary ran no scenario; console:\n{}",
        run.console_tail(120)
    );
}

/// In the guest: a hub, an agent and two apps.
fn scenario() {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let controllers = assert_pure_v2();
    step(&format!("cgroup v2 at /sys/fs/cgroup, controllers: {controllers}"));
    // The agent's preflight reads the same host as v2, with what it needs.
    let check =
        std::process::Command::new(firmware_tests::bin("flotilla-agent")).arg("check").output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    for line in ["ok    cgroups: v2 (unified)", "ok    cgroup controllers: cpu, memory, pids"] {
        assert!(said.lines().any(|l| l == line), "flotilla-agent check did not say {line:?}:\n{said}");
    }

    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-v2", &hub.quic, &token, &[("role", "v2")]);
    agent.start();
    let image = busybox_image(dir.path(), "v2:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let out = hub.apply(dir.path(), APPS);
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
    step("hub and agent up, apps applied");

    // The limited container runs in its own v2 cgroup, with every limit in the v2
    // files (libcontainer wrote them; the agent enabled nothing by hand).
    let (id, pid) = wait_until("the limited container to run", IN_GUEST, || {
        let id = agent.runtime_containers().into_iter().find(|id| id.starts_with("limited_burn_"))?;
        let pid = agent.container_pid(&id)?;
        firmware_tests::pid_alive(pid).then_some((id, pid))
    });
    let cgroup = Path::new("/sys/fs/cgroup").join(agent.cgroup_parent()).join(&id);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(own.trim(), format!("0::/{}/{id}", agent.cgroup_parent()), "the container's only cgroup");
    assert_eq!(read(&cgroup, "memory.max"), "67108864", "64Mi");
    assert_eq!(read(&cgroup, "cpu.max"), "25000 100000", "250m: 25 ms per 100 ms period");
    assert_eq!(read(&cgroup, "pids.max"), "32");
    step(&format!("{id}: memory.max, cpu.max and pids.max set"));

    // The limits hold: the shell's 40 background sleeps stop at 32 tasks, and the busy
    // loop at 250m is throttled.
    wait_until("forks over pids.max to be refused", IN_GUEST, || {
        (stat_field(&read(&cgroup, "pids.events"), "max")? > 0).then_some(())
    });
    let tasks: u64 = read(&cgroup, "pids.current").parse().unwrap();
    assert!(tasks <= 32, "pids.current {tasks} over pids.max");
    wait_until("the busy loop to be throttled", IN_GUEST, || {
        (stat_field(&read(&cgroup, "cpu.stat"), "nr_throttled")? > 0).then_some(())
    });
    // The agent's usage reader (what it sends the hub) sees the container's CPU time
    // and memory through the v2 files.
    let (cpu_ns, memory) = wait_until("the agent's usage reader to see CPU and memory", IN_GUEST, || {
        edge_agent::host::usage(agent.cgroup_parent(), &id).filter(|(cpu, mem)| *cpu > 0 && *mem > 0)
    });
    let usec = stat_field(&read(&cgroup, "cpu.stat"), "usage_usec").unwrap();
    assert!(cpu_ns <= usec * 1000, "usage is cpu.stat's usage_usec in ns: {cpu_ns} vs {usec} µs");
    assert!(memory < 64 << 20, "working set within the limit: {memory}");
    step(&format!("usage: {cpu_ns} ns CPU, {memory} bytes"));

    // The hog goes over its 16Mi: the kernel kills it, memory.events counts it, and
    // the device reports it to the hub as OOMKilled.
    let hog = wait_until("the hog's OOM kill to reach the hub", IN_GUEST, || {
        let c = reported(&hub, "pi-v2", "hog", "hog")?;
        (c["phase"] == "Exited").then_some(c)
    });
    assert_eq!(hog["exitCode"], 137, "{hog}");
    assert!(hog["reason"].as_str().unwrap_or("").contains("(OOMKilled)"), "{hog}");
    step("hog reported OOMKilled");
    let nodes = wait_until("the mknod container to end", IN_GUEST, || {
        let c = reported(&hub, "pi-v2", "nodes", "mknod")?;
        (c["phase"] == "Exited").then_some(c)
    });
    assert_ne!(nodes["exitCode"], 0, "a default container made a device node on v2: {nodes}");
    step("no device node without device rules");

    // A removed container's cgroup goes with it.
    hub.cli_ok(&["delete", "app", "limited"]);
    wait_until("the limited container's cgroup to be removed", IN_GUEST, || (!cgroup.exists()).then_some(()));
    step("cgroup removed with the container");
    drop(agent);
    drop(hub);
    println!("{PASSED}");
}

/// `/sys/fs/cgroup` is a cgroup2 mount, no v1 hierarchy is mounted anywhere, and
/// the controllers the agent uses are available. Returns the controllers.
fn assert_pure_v2() -> String {
    let st = nix::sys::statfs::statfs("/sys/fs/cgroup").expect("statfs /sys/fs/cgroup");
    assert_eq!(st.filesystem_type(), nix::sys::statfs::CGROUP2_SUPER_MAGIC, "/sys/fs/cgroup is not cgroup2");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("cgroup")),
        "a cgroup v1 hierarchy is mounted in the guest:\n{mounts}"
    );
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap();
    for c in ["cpu", "memory", "pids"] {
        assert!(controllers.split_whitespace().any(|x| x == c), "no {c} controller in v2: {controllers}");
    }
    controllers.trim().to_string()
}

fn read(dir: &Path, file: &str) -> String {
    let path: PathBuf = dir.join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(key)).then(|| f.next()?.parse().ok()).flatten()
    })
}

/// The device's report of one container, as the hub stores it.
fn reported(hub: &Hub, device: &str, app: &str, container: &str) -> Option<Value> {
    let dev = hub.get("devices", Some(device))?;
    dev["status"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["app"] == app && c["name"] == container)
        .cloned()
}
