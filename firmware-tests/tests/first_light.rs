//! The first-light path end to end, with real processes and real containers:
//! apply → Raft → scheduler → manifest → QUIC → agent → libcontainer → status.
//! Also: the agent dies and comes back (adopts, no duplicate), the hub restarts
//! (nothing applied is lost), and a bad manifest is refused with the field named.

use firmware_tests::{
    Agent, Hub, busybox_image, free_port, http_status, pid_alive, require_root, wait_until,
};
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

macro_rules! phase {
    ($t:expr, $what:expr) => {
        eprintln!("[{:>6.1}s] {}", $t.elapsed().as_secs_f64(), $what)
    };
}

fn app_yaml(port: u16, memory: &str) -> String {
    format!(
        r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: web
spec:
  selector:
    matchLabels: {{role: web}}
  containers:
    - name: httpd
      image: busybox-test:1
      command: ["/bin/busybox", "httpd", "-f", "-p", "127.0.0.1:{port}", "-h", "/etc"]
      ports: [{{containerPort: {port}}}]
      resources:
        limits: {{memory: {memory}, cpu: 500m, pids: 32}}
"#
    )
}

fn device_phase(hub: &Hub, name: &str) -> Option<String> {
    hub.get("devices", Some(name)).and_then(|d| d["status"]["phase"].as_str().map(str::to_string))
}

fn app_phase(hub: &Hub, name: &str) -> Option<String> {
    hub.get("apps", Some(name)).and_then(|a| a["status"]["phase"].as_str().map(str::to_string))
}

#[test]
fn apply_to_running_container_and_back() {
    require_root();
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path());
    phase!(t0, "hub started");
    let image = busybox_image(dir.path(), "busybox-test:1");
    let out = hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    assert!(out.contains("busybox-test:1"), "{out}");

    let token = hub.enrolment_token(&["--label", "site-kind=store", "--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-1", &hub.quic, &token, &[("role", "web")]);
    agent.start();
    wait_until("the device to be Online", LONG, || (device_phase(&hub, "pi-1")? == "Online").then_some(()));
    phase!(t0, "device online");
    let device = hub.get("devices", Some("pi-1")).unwrap();
    assert_eq!(device["metadata"]["labels"]["site-kind"], "store", "token labels apply");
    assert_eq!(device["metadata"]["labels"]["role"], "web", "agent labels apply");

    // An invalid manifest is refused, names the field, and stores nothing.
    let port = free_port();
    let bad = app_yaml(port, "64Mi").replace("image: busybox-test:1", "image: \"\"");
    let out = hub.apply(dir.path(), &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.containers[0].image"), "{err}");
    assert!(hub.get("apps", Some("web")).is_none(), "nothing stored");

    let out = hub.apply(dir.path(), &app_yaml(port, "64Mi"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the app to be Running", LONG, || (app_phase(&hub, "web")? == "Running").then_some(()));
    phase!(t0, "app running");
    assert_eq!(http_status(port, "/passwd"), Some(200), "the container serves HTTP");

    let ids = agent.runtime_containers();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids[0].clone();
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/{id}/memory.limit_in_bytes",
        agent.cgroup_parent()
    ))
    .unwrap();
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let pid = agent.container_pid(&id).expect("container pid");

    // The agent dies: the container keeps running, and the restarted agent adopts it.
    agent.kill();
    assert!(pid_alive(pid), "container must outlive the agent");
    assert_eq!(http_status(port, "/passwd"), Some(200));
    agent.start();
    wait_until("the restarted agent to report the container running", LONG, || {
        let d = hub.get("devices", Some("pi-1"))?;
        let running = d["status"]["containers"].as_array()?.iter().any(|c| c["phase"] == "Running");
        (running && agent.log().matches("agent running").count() == 2).then_some(())
    });
    phase!(t0, "agent restarted");
    assert_eq!(agent.runtime_containers(), vec![id.clone()], "no duplicate container");
    assert_eq!(agent.container_pid(&id), Some(pid), "same process, adopted");

    // The hub restarts: nothing applied is lost and the device comes back.
    hub.restart();
    let app = hub.get("apps", Some("web")).expect("the app survives a hub restart");
    assert_eq!(app["spec"]["containers"][0]["image"], "busybox-test:1");
    assert!(hub.get("images", Some("busybox-test:1")).is_some());
    // lastSeenAt comes from the new hub's memory: present only once the agent reconnected.
    // Within the agent's QUIC idle timeout (40 s): the bound on noticing a hub that died
    // while a handshake was under way and whose reset never reached the agent. Usually
    // under two seconds; once in CI (2026-12-02) more than 15 s, cause not found (the
    // agent now logs its sync attempts at debug in these tests, to tell next time).
    wait_until("the device to reconnect to the new hub", Duration::from_secs(40), || {
        let d = hub.get("devices", Some("pi-1"))?;
        let seen = d["status"]["lastSeenAt"].is_string();
        (seen && d["status"]["phase"] == "Online" && app_phase(&hub, "web")? == "Running").then_some(())
    });

    phase!(t0, "hub restarted");
    // An update with a new limit replaces the container.
    let out = hub.apply(dir.path(), &app_yaml(port, "48Mi"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new_id = wait_until("the container to be replaced", LONG, || {
        let ids = agent.runtime_containers();
        (ids.len() == 1 && ids[0] != id && app_phase(&hub, "web")? == "Running").then(|| ids[0].clone())
    });
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/{}/{new_id}/memory.limit_in_bytes",
        agent.cgroup_parent()
    ))
    .unwrap();
    assert_eq!(limit.trim(), (48u64 << 20).to_string());
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/memory/{}/{id}", agent.cgroup_parent())).exists(),
        "old cgroup removed"
    );

    phase!(t0, "updated");
    // Deleting the app removes the container and its cgroup.
    hub.cli_ok(&["delete", "app", "web"]);
    wait_until("the container to be removed", LONG, || agent.runtime_containers().is_empty().then_some(()));
    wait_until("the cgroup to be removed", LONG, || {
        (!std::path::Path::new(&format!("/sys/fs/cgroup/memory/{}/{new_id}", agent.cgroup_parent())).exists())
            .then_some(())
    });
    phase!(t0, "deleted");
    assert_eq!(http_status(port, "/passwd"), None);
}

#[test]
fn wrong_and_expired_tokens_get_clear_errors() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());

    // A well-formed token this hub never issued.
    let real = hub.enrolment_token(&[]);
    let mut parts: Vec<&str> = real.split('.').collect();
    let forged_secret = "A".repeat(parts[2].len());
    parts[2] = &forged_secret;
    let forged = parts.join(".");
    let agent = Agent::configure(dir.path(), "pi-forged", &hub.quic, &forged, &[]);
    let (code, out) = agent.run_to_exit(LONG);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("enrolment refused") && out.contains("not valid"), "{out}");
    // A token id the hub never issued gets the very same answer: nobody learns which
    // ids exist.
    let refusal = |out: &str| out.lines().find(|l| l.contains("enrolment refused")).map(str::to_string);
    let mut parts: Vec<&str> = real.split('.').collect();
    let unknown_id = "b".repeat(parts[1].len());
    parts[1] = &unknown_id;
    let unknown = parts.join(".");
    let agent = Agent::configure(dir.path(), "pi-unknown", &hub.quic, &unknown, &[]);
    let (code2, out2) = agent.run_to_exit(LONG);
    assert_eq!(code2, Some(2), "{out2}");
    let strip = |l: Option<String>| l.map(|l| l[l.find("enrolment refused").unwrap()..].to_string());
    let (wrong_secret, unknown_id) = (strip(refusal(&out)), strip(refusal(&out2)));
    assert!(wrong_secret.is_some(), "{out}");
    assert_eq!(wrong_secret, unknown_id, "{out}\n{out2}");

    // Labels a device sets itself must be allowed by its token.
    let zoned = hub.enrolment_token(&["--allow-label", "zone=front", "--label", "site-kind=store"]);
    let agent = Agent::configure(dir.path(), "pi-greedy", &hub.quic, &zoned, &[("role", "pos")]);
    let (code, out) = agent.run_to_exit(LONG);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("label role=pos is not allowed by the enrolment token"), "{out}");
    let agent = Agent::configure(dir.path(), "pi-back", &hub.quic, &zoned, &[("zone", "back")]);
    let (code, out) = agent.run_to_exit(LONG);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("zone=back is not allowed") && out.contains("zone=front"), "{out}");
    let agent = Agent::configure(dir.path(), "pi-store", &hub.quic, &zoned, &[("site-kind", "warehouse")]);
    let (code, out) = agent.run_to_exit(LONG);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("set by the enrolment token"), "{out}");
    assert!(hub.get("devices", Some("pi-greedy")).is_none() && hub.get("devices", Some("pi-back")).is_none());

    // Garbage is refused before anything is sent.
    let agent = Agent::configure(dir.path(), "pi-garbage", &hub.quic, "not-a-token", &[]);
    let (code, out) = agent.run_to_exit(LONG);
    assert_ne!(code, Some(0));
    assert!(out.contains("enrolment_token"), "{out}");

    // An expired token.
    let expiring = hub.enrolment_token(&["--ttl", "1s"]);
    let tokens = hub.cli_ok(&["token", "list"]);
    assert!(tokens.lines().count() >= 3, "{tokens}");
    let start = std::time::Instant::now();
    wait_until("the token to expire", Duration::from_secs(10), || {
        (start.elapsed() > Duration::from_millis(1500)).then_some(())
    });
    let agent = Agent::configure(dir.path(), "pi-late", &hub.quic, &expiring, &[]);
    let (code, out) = agent.run_to_exit(LONG);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("expired") && out.contains("flotilla token create"), "{out}");

    // A single-use token works once.
    let once = hub.enrolment_token(&["--max-uses", "1"]);
    let mut first = Agent::configure(dir.path(), "pi-once", &hub.quic, &once, &[]);
    first.start();
    wait_until("the first device to enrol", LONG, || hub.get("devices", Some("pi-once")));
    let second = Agent::configure(dir.path(), "pi-twice", &hub.quic, &once, &[]);
    let (code, out) = second.run_to_exit(LONG);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("used"), "{out}");
    let devices: Value = hub.get("devices", None).unwrap();
    let names: Vec<&str> = devices["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["pi-once"], "refused enrolments create no devices");
}

#[test]
fn agent_runs_its_last_desired_state_without_the_hub() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path());
    let image = busybox_image(dir.path(), "busybox-test:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-off", &hub.quic, &token, &[("role", "web")]);
    agent.start();
    let port = free_port();
    assert!(hub.apply(dir.path(), &app_yaml(port, "32Mi")).status.success());
    wait_until("the app to be Running", LONG, || (app_phase(&hub, "web")? == "Running").then_some(()));

    // Hub gone, agent restarted, and the device "rebooted": no containers, no runtime state.
    hub.kill();
    agent.kill();
    agent.reset();
    let _ = std::fs::remove_dir_all(&agent.runtime_dir);
    assert_eq!(http_status(port, "/passwd"), None);
    agent.start();
    wait_until("the container to run again with no hub", LONG, || {
        (http_status(port, "/passwd") == Some(200)).then_some(())
    });
    assert_eq!(agent.runtime_containers().len(), 1);
}
