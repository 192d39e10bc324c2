//! Store workloads on a real agent with real containers: an app is a pod (its
//! containers share a network namespace, IPC and volumes; init containers run first),
//! probes decide readiness and restarts, volumes outlive updates, and devices are
//! passed through only where the agent's configuration allows.

use firmware_tests::{Agent, Hub, busybox_image, busybox_image_running, require_root, wait_until};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn start(dir: &Path, name: &str, role: &str, extra: &[String]) -> (Hub, Agent) {
    let hub = Hub::start(dir);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir, name, &hub.quic, &token, &[("role", role)]);
    for line in extra {
        agent.set_config(line);
    }
    agent.start();
    (hub, agent)
}

fn apply(hub: &Hub, dir: &Path, yaml: &str) {
    let out = hub.apply(dir, yaml);
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
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

fn app_status(hub: &Hub, app: &str) -> Value {
    hub.get("apps", Some(app)).map(|a| a["status"].clone()).unwrap_or(Value::Null)
}

const POS_V1: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: pos
spec:
  selector:
    matchLabels: {role: pos}
  network: None
  terminationGracePeriodSeconds: 5
  volumes:
    - name: data
      persistent: {}
  initContainers:
    - name: prepare
      image: pos:1
      command: ["/bin/sh", "-c", "echo run >> /data/runs && echo prepared > /data/page.txt"]
      volumeMounts: [{name: data, mountPath: /data}]
  containers:
    - name: main
      image: pos:IMAGE
      command: ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/data"]
      volumeMounts: [{name: data, mountPath: /data}]
      readinessProbe:
        httpGet: {path: /page.txt, port: 8080}
        periodSeconds: 1
    - name: sidecar
      image: pos:1
      command: ["/bin/sh", "-c", "while true; do wget -q -O /shared/fetched.txt http://127.0.0.1:8080/page.txt; sleep 1; done"]
      volumeMounts: [{name: data, mountPath: /shared}]
"#;

#[test]
fn a_pod_shares_localhost_and_volumes_runs_init_first_and_keeps_its_data_across_an_update() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (hub, agent) = start(dir.path(), "pi-pod", "pos", &[]);
    let v1 = busybox_image(dir.path(), "pos:1");
    let v2 = busybox_image_running(dir.path(), "pos:2", &["/bin/sleep", "7200"]);
    hub.cli_ok(&["image", "import", v1.to_str().unwrap()]);
    hub.cli_ok(&["image", "import", v2.to_str().unwrap()]);
    apply(&hub, dir.path(), &POS_V1.replace("IMAGE", "1"));

    // The sidecar reached the main container over the pod's localhost, and wrote what
    // it fetched into the volume they share; the init container ran first.
    let volume = agent.state_dir.join("volumes/pos/data");
    wait_until("the sidecar to fetch the page over localhost", LONG, || {
        (std::fs::read_to_string(volume.join("fetched.txt")).ok()? == "prepared\n").then_some(())
    });
    assert_eq!(std::fs::read_to_string(volume.join("runs")).unwrap(), "run\n");
    // Readiness passes and the hub says so.
    wait_until("the app to be Running on the hub", LONG, || {
        (app_status(&hub, "pos")["phase"] == "Running").then_some(())
    });
    let main = reported(&hub, "pi-pod", "pos", "main").unwrap();
    assert_eq!(main["ready"], true, "{main}");
    let init = reported(&hub, "pi-pod", "pos", "prepare").unwrap();
    assert_eq!(
        (init["init"].clone(), init["exitCode"].clone()),
        (Value::Bool(true), Value::from(0)),
        "{init}"
    );
    // Nothing listens on the device's own loopback: 8080 is the pod's.
    assert_eq!(firmware_tests::http_status(8080, "/page.txt"), None, "the pod's port leaked to the host");

    // An image update replaces the main container; the volume's data stays, and the new
    // version serves it (its readiness probe asks for it).
    let before = agent.runtime_containers();
    apply(&hub, dir.path(), &POS_V1.replace("IMAGE", "2"));
    wait_until("the updated app to be Running", LONG, || {
        let s = app_status(&hub, "pos");
        let generation = hub.get("apps", Some("pos"))?["metadata"]["generation"].clone();
        (s["phase"] == "Running" && s["observedGeneration"] == generation).then_some(())
    });
    let after = agent.runtime_containers();
    assert!(after.iter().any(|id| id.starts_with("pos_main_") && !before.contains(id)), "main was replaced");
    assert!(
        after.iter().any(|id| before.contains(id) && id.starts_with("pos_sidecar_")),
        "the sidecar's spec did not change: {before:?} → {after:?}"
    );
    assert_eq!(std::fs::read_to_string(volume.join("page.txt")).unwrap(), "prepared\n");
    assert_eq!(
        std::fs::read_to_string(volume.join("runs")).unwrap(),
        "run\n",
        "the init container's spec did not change: it is not run again under a running app"
    );
}

const PROBED: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: hangs
spec:
  selector:
    matchLabels: {role: probes}
  network: None
  containers:
    - name: worker
      image: probe:1
      command: ["/bin/sh", "-c", "touch /tmp/alive; sleep 4; rm /tmp/alive; sleep 3600"]
      livenessProbe:
        exec: {command: ["/bin/cat", "/tmp/alive"]}
        periodSeconds: 1
        failureThreshold: 2
---
apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: unready
spec:
  selector:
    matchLabels: {role: probes}
  network: None
  containers:
    - name: web
      image: probe:1
      readinessProbe:
        tcpSocket: {port: 9}
        periodSeconds: 1
        failureThreshold: 1
"#;

#[test]
fn liveness_restarts_a_hung_container_and_a_failing_readiness_probe_shows_on_the_hub() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (hub, agent) = start(dir.path(), "pi-probes", "probes", &[]);
    let image = busybox_image(dir.path(), "probe:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    apply(&hub, dir.path(), PROBED);

    // The worker "hangs" after 4 s (its liveness file goes); the probe kills it and
    // the agent starts it again: the restart and its reason reach the hub.
    let seen = wait_until("the hung worker to be restarted", LONG, || {
        let c = reported(&hub, "pi-probes", "hangs", "worker")?;
        (c["restarts"].as_u64()? >= 1).then_some(c)
    });
    let log = agent.log();
    assert!(log.contains("liveness probe failed 2 times"), "the agent logged why: {seen}");
    wait_until("the restarted worker to run again", LONG, || {
        let c = reported(&hub, "pi-probes", "hangs", "worker")?;
        (c["phase"] == "Running").then_some(())
    });

    // Nothing listens on port 9 in the unready app's pod: running, never ready, and
    // the hub's app status says why.
    let c = wait_until("the readiness failure to reach the hub", LONG, || {
        let c = reported(&hub, "pi-probes", "unready", "web")?;
        (c["phase"] == "Running" && c["reason"].as_str()?.contains("readiness probe")).then_some(c)
    });
    assert_eq!(c["ready"], false, "{c}");
    assert_eq!(c["restarts"], 0, "readiness never restarts: {c}");
    let status = wait_until("the app status to name the probe", LONG, || {
        let s = app_status(&hub, "unready");
        s["message"].as_str()?.contains("not ready").then_some(s)
    });
    assert_ne!(status["phase"], "Running", "{status}");
    assert!(status["message"].as_str().unwrap().contains("port 9: connection refused"), "{status}");

    // What the containers use reaches the hub (in memory) and `describe device`.
    let used = wait_until("the containers' usage to reach the hub", LONG, || {
        let out = hub.cli(&["describe", "device", "pi-probes"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.trim_start().starts_with("unready/web"))?.to_string();
        // APP/CONTAINER PHASE READY CPU MEMORY …
        let cols: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        (cols.len() > 4 && cols[3] != "-").then_some(cols)
    });
    assert!(used[3].ends_with('m') && used[4].ends_with("Mi"), "{used:?}");
    let mib: f64 = used[4].trim_end_matches("Mi").parse().unwrap();
    assert!(mib > 0.0, "a running shell uses some memory: {used:?}");
}

const SERIAL: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: APP
spec:
  selector:
    matchLabels: {role: modbus}
  network: None
  containers:
    - name: reader
      image: serial:1
      command: ["/bin/sh", "-c", "ls -l /dev/ttyUSB0 > /dev/ttyUSB0 && echo hello-from-APP > /dev/ttyUSB0; sleep 3600"]
      devices:
        - hostPath: PTY
          containerPath: /dev/ttyUSB0
"#;

/// A pty pair: (master, path of the slave). The slave stands in for a serial port.
fn pty() -> (std::fs::File, String) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    let path = std::fs::read_link(format!("/proc/self/fd/{slave}")).unwrap().to_string_lossy().into_owned();
    // The slave stays open (never closed) so the master sees no hang-up between
    // writers; the master is ours.
    // SAFETY: a fresh fd from openpty, owned from here on.
    (unsafe { std::fs::File::from_raw_fd(master) }, path)
}

fn read_until(master: &mut std::fs::File, needle: &str, timeout: Duration) -> String {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let fd = master.as_raw_fd();
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
    let mut seen = String::new();
    wait_until(&format!("{needle:?} on the serial line"), timeout, || {
        let mut buf = [0u8; 512];
        if let Ok(n) = master.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen.contains(needle).then_some(())
    });
    seen
}

#[test]
fn a_serial_device_reaches_a_container_only_when_the_agent_allows_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (mut allowed_master, allowed) = pty();
    let (_denied_master, denied) = pty();
    let (hub, _agent) =
        start(dir.path(), "pi-serial", "modbus", &[format!("allowed_devices = [\"{allowed}\"]")]);
    let image = busybox_image(dir.path(), "serial:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    apply(&hub, dir.path(), &SERIAL.replace("APP", "modbus").replace("PTY", &allowed));
    apply(&hub, dir.path(), &SERIAL.replace("APP", "rogue").replace("PTY", &denied));

    let line = read_until(&mut allowed_master, "hello-from-modbus", LONG);
    assert!(line.contains("/dev/ttyUSB0"), "the container saw the device node: {line}");
    // The other one is not on the allow-list: it never runs, and the hub says why.
    let c = wait_until("the refusal to reach the hub", LONG, || {
        let c = reported(&hub, "pi-serial", "rogue", "reader")?;
        c["reason"].as_str()?.contains("not allowed on this device").then_some(c)
    });
    assert_ne!(c["phase"], "Running", "{c}");
    assert!(c["reason"].as_str().unwrap().contains(&denied), "{c}");
}
