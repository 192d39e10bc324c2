//! The product's promise: with the hub unreachable, a device keeps its store running.
//! Each case starts from a pod (an init container, a persistent volume, a main
//! container behind a readiness probe and a sidecar that reaches it over the pod's
//! localhost), then kills the hub for good and breaks something on the device:
//! 1. the main container crashes: it is restarted per its policy;
//! 2. the agent is SIGKILLed: the restarted agent adopts every container, duplicates
//!    none and restarts none;
//! 3. the device "reboots": every container and the agent are killed, and their
//!    cgroups, mounts, namespaces and `/run` state are removed; the agent alone brings
//!    the whole app back from its local store, volume data and secrets included.

use firmware_tests::{Agent, Hub, assert_during, busybox_image, pid_alive, require_root, wait_until};
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

const STORE: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: till
spec:
  selector:
    matchLabels: {role: till}
  network: None
  terminationGracePeriodSeconds: 3
  volumes:
    - name: ledger
      persistent: {}
    - name: key
      secret: {name: till-key}
  initContainers:
    - name: open-day
      image: till:1
      # Opens the day only with the till's PIN, from the Secret as a file and a variable.
      command: ["/bin/sh", "-c", "test -n \"$PIN\" && test \"$(cat /key/pin)\" = \"$PIN\" && echo open >> /ledger/days && echo till > /ledger/index.html"]
      env: [{name: PIN, valueFrom: {secret: {name: till-key, key: pin}}}]
      volumeMounts: [{name: ledger, mountPath: /ledger}, {name: key, mountPath: /key}]
  containers:
    - name: main
      image: till:1
      command: ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/ledger"]
      volumeMounts: [{name: ledger, mountPath: /ledger}]
      readinessProbe:
        httpGet: {path: /index.html, port: 8080}
        periodSeconds: 1
    - name: printer
      image: till:1
      command: ["/bin/sh", "-c", "while true; do wget -q -O /ledger/printed http://127.0.0.1:8080/index.html && date +%s%N > /ledger/heartbeat; sleep 1; done"]
      volumeMounts: [{name: ledger, mountPath: /ledger}]
"#;

/// Fields drop in order: the agent (which resets its containers) before the
/// directory holding its state.
struct Store {
    agent: Agent,
    ledger: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A device running the store app, its hub killed for good.
fn store_offline(name: &str) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path());
    let image = busybox_image(dir.path(), "till:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), name, &hub.quic, &token, &[("role", "till")]);
    agent.start();
    hub.cli_ok(&["create", "secret", "till-key", "--from-literal", "pin=4242-offline"]);
    let out = hub.apply(dir.path(), STORE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the store app to be Running", LONG, || {
        (hub.get("apps", Some("till"))?["status"]["phase"] == "Running").then_some(())
    });
    hub.kill();
    let ledger = agent.state_dir.join("volumes/till/ledger");
    assert_eq!(std::fs::read_to_string(ledger.join("days")).unwrap(), "open\n");
    Store { _dir: dir, agent, ledger }
}

/// The printer keeps reaching the till over the pod's localhost: its heartbeat moves.
fn printer_works(ledger: &Path) {
    let beat = || std::fs::read_to_string(ledger.join("heartbeat")).unwrap_or_default();
    let before = beat();
    wait_until("the printer to reach the till over localhost", LONG, || {
        let now = beat();
        (!now.is_empty() && now != before).then_some(())
    });
}

fn container(agent: &Agent, name: &str) -> Option<String> {
    agent.runtime_containers().into_iter().find(|id| id.starts_with(&format!("till_{name}_")))
}

#[test]
fn offline_a_crashed_container_is_restarted_per_its_policy() {
    require_root();
    let s = store_offline("pi-crash");
    let id = container(&s.agent, "main").unwrap();
    let pid = s.agent.container_pid(&id).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let new_pid = wait_until("the till to be restarted with no hub", LONG, || {
        s.agent.container_pid(&id).filter(|p| *p != pid && pid_alive(*p))
    });
    assert!(pid_alive(new_pid));
    printer_works(&s.ledger);
    assert_eq!(
        std::fs::read_to_string(s.ledger.join("days")).unwrap(),
        "open\n",
        "a container's crash does not run the init containers again"
    );
}

#[test]
fn offline_a_sigkilled_agent_adopts_its_containers_without_duplicates() {
    require_root();
    let mut s = store_offline("pi-adopt");
    let before = s.agent.runtime_containers();
    let pids: Vec<i32> = before.iter().filter_map(|id| s.agent.container_pid(id)).collect();
    assert_eq!(before.len(), 3, "init, main and printer: {before:?}");
    s.agent.kill();
    s.agent.start();
    wait_until("the restarted agent to be running", LONG, || {
        s.agent.log().matches("agent running").nth(1).map(drop)
    });
    assert_during("the containers to be adopted, not replaced", Duration::from_secs(8), || {
        let now = s.agent.runtime_containers();
        if now != before {
            return Err(format!("containers changed: {before:?} → {now:?}"));
        }
        let live: Vec<i32> = now.iter().filter_map(|id| s.agent.container_pid(id)).collect();
        if live != pids {
            return Err(format!("pids changed: {pids:?} → {live:?}"));
        }
        Ok(())
    });
    printer_works(&s.ledger);
    assert_eq!(std::fs::read_to_string(s.ledger.join("days")).unwrap(), "open\n", "init did not run again");
}

#[test]
fn offline_a_rebooted_device_brings_its_store_back_alone() {
    require_root();
    let mut s = store_offline("pi-reboot");
    s.agent.power_cycle();
    assert!(s.agent.runtime_containers().is_empty());
    s.agent.start();
    wait_until("the init container to run again after the reboot", LONG, || {
        (std::fs::read_to_string(s.ledger.join("days")).ok()? == "open\nopen\n").then_some(())
    });
    printer_works(&s.ledger);
    let running = s.agent.runtime_containers();
    assert_eq!(running.len(), 3, "{running:?}");
    assert_eq!(
        std::fs::read_to_string(s.ledger.join("index.html")).unwrap(),
        "till\n",
        "the volume kept its data"
    );
}
