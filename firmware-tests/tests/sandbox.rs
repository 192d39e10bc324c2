//! The container sandbox on a real agent: the default seccomp profile (a syscall that
//! needs no capability, `unshare(CLONE_NEWUSER)`, fails with EPERM in a default
//! container and works in a privileged one), and `userNamespace: true` (root inside is
//! an unprivileged id of the app's range on the device, writes its persistent volume,
//! binds a low port in the pod's network and is reached there by its sidecar).

use firmware_tests::{Agent, Hub, busybox_image, require_root, wait_until};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);

fn start(dir: &Path, name: &str) -> (Hub, Agent) {
    let hub = Hub::start(dir);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir, name, &hub.quic, &token, &[("role", "sandbox")]);
    agent.start();
    let image = busybox_image(dir, "box:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    (hub, agent)
}

fn apply(hub: &Hub, dir: &Path, yaml: &str) {
    let out = hub.apply(dir, yaml);
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The running container of `app` named `container`: its id and host pid.
fn running(agent: &Agent, app: &str, container: &str) -> (String, i32) {
    let prefix = format!("{app}_{container}_");
    wait_until(&format!("{app}/{container} to run"), WAIT, || {
        let id = agent.runtime_containers().into_iter().find(|id| id.starts_with(&prefix))?;
        let pid = agent.container_pid(&id)?;
        firmware_tests::pid_alive(pid).then_some((id, pid))
    })
}

/// A field of `/proc/<pid>/status`, as the kernel prints it (tabs between values).
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line =
        status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{field}"));
    line[field.len() + 1..].trim().to_string()
}

fn container_log(agent: &Agent, id: &str) -> String {
    std::fs::read_to_string(agent.state_dir.join("logs").join(format!("{id}.log"))).unwrap_or_default()
}

const SECCOMP_APPS: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: confined
spec:
  selector:
    matchLabels: {role: sandbox}
  network: None
  containers:
    - name: main
      image: box:1
      command: ["/bin/sh", "-c", "unshare -U true 2>&1; echo rc=$?; exec sleep 3600"]
---
apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: unconfined
spec:
  selector:
    matchLabels: {role: sandbox}
  network: None
  containers:
    - name: main
      image: box:1
      command: ["/bin/sh", "-c", "unshare -U true 2>&1; echo rc=$?; exec sleep 3600"]
      security: {privileged: true}
"#;

#[test]
fn the_default_profile_denies_what_docker_denies_and_privileged_is_unconfined() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (hub, agent) = start(dir.path(), "pi-seccomp");
    apply(&hub, dir.path(), SECCOMP_APPS);

    // Creating a user namespace needs no capability, so only seccomp stops it.
    let (confined, pid) = running(&agent, "confined", "main");
    let log = wait_until("the confined container's verdict", WAIT, || {
        let log = container_log(&agent, &confined);
        log.contains("rc=").then_some(log)
    });
    assert!(log.contains("Operation not permitted") && log.contains("rc=1"), "confined: {log:?}");
    assert_eq!(status_field(pid, "Seccomp"), "2", "a seccomp filter on the confined container");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    let (unconfined, pid) = running(&agent, "unconfined", "main");
    let log = wait_until("the privileged container's verdict", WAIT, || {
        let log = container_log(&agent, &unconfined);
        log.contains("rc=").then_some(log)
    });
    assert!(log.contains("rc=0"), "privileged: {log:?}");
    assert_eq!(status_field(pid, "Seccomp"), "0", "privileged: no filter");
    assert!(
        hub.cli_ok(&["describe", "app", "unconfined"]).contains("seccomp: unconfined"),
        "describe app names what privileged gives up"
    );
}

const SHIFTED: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: shifted
spec:
  selector:
    matchLabels: {role: sandbox}
  network: None
  userNamespace: true
  volumes:
    - name: data
      persistent: {}
    - name: creds
      secret: {name: shifted-creds}
  containers:
    - name: main
      image: box:1
      command: ["/bin/sh", "-c", "id -u > /data/uid && cat /creds/token > /data/token && echo served > /data/page && touch /etc/written && exec httpd -f -p 127.0.0.1:80 -h /data"]
      volumeMounts: [{name: data, mountPath: /data}, {name: creds, mountPath: /creds}]
    - name: sidecar
      image: box:1
      command: ["/bin/sh", "-c", "while true; do wget -q -O /data/fetched http://127.0.0.1:80/page; sleep 1; done"]
      volumeMounts: [{name: data, mountPath: /data}]
"#;

#[test]
fn a_user_namespace_app_is_root_inside_and_an_unprivileged_id_on_the_device() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (hub, agent) = start(dir.path(), "pi-userns");
    hub.cli_ok(&["create", "secret", "shifted-creds", "--from-literal", "token=s3cret"]);
    apply(&hub, dir.path(), SHIFTED);

    // The sidecar fetched from main over the pod's loopback (port 80: the pod's network
    // belongs to the app's user namespace) and wrote it to the shared volume.
    let volume = agent.state_dir.join("volumes/shifted/data");
    wait_until("the sidecar to fetch the page over the pod's localhost", WAIT, || {
        (std::fs::read_to_string(volume.join("fetched")).ok()? == "served\n").then_some(())
    });
    assert_eq!(std::fs::read_to_string(volume.join("uid")).unwrap(), "0\n", "root inside");
    assert_eq!(
        std::fs::read_to_string(volume.join("token")).unwrap(),
        "s3cret",
        "its Secret's files readable"
    );

    let (_, pid) = running(&agent, "shifted", "main");
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let fields: Vec<u64> = uid_map.split_whitespace().map(|f| f.parse().unwrap()).collect();
    assert_eq!(fields.len(), 3, "one mapping: {uid_map:?}");
    let (inside, host_first, len) = (fields[0], fields[1], fields[2]);
    assert_eq!((inside, len), (0, 65536), "{uid_map:?}");
    assert!(host_first >= 1 << 30, "a high range on the device: {host_first}");
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap(), uid_map);
    // Seen from the device, the container's root is that unprivileged id.
    let uids = status_field(pid, "Uid");
    assert!(uids.split_whitespace().all(|u| u == host_first.to_string()), "Uid: {uids}");
    assert_eq!(status_field(pid, "Seccomp"), "2", "the default profile applies too");
    // What it wrote belongs to that id on the device.
    use std::os::unix::fs::MetadataExt;
    let page = std::fs::metadata(volume.join("page")).unwrap();
    assert_eq!((u64::from(page.uid()), u64::from(page.gid())), (host_first, host_first));
    // The image's files are root's inside: root could write to /etc (copy-up), and the
    // shared image on the device was not touched.
    let sidecar_log = container_log(&agent, &running(&agent, "shifted", "sidecar").0);
    assert!(!sidecar_log.contains("denied"), "{sidecar_log}");
    let images = agent.state_dir.join("images");
    let touched = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .any(|image| image.path().join("rootfs/etc/written").exists());
    assert!(!touched, "the write went to the container's upper layer, not the image");
    assert!(
        hub.cli_ok(&["describe", "app", "shifted"]).contains("user namespace"),
        "describe app shows the user namespace"
    );

    // The way there is open to the app's root and to no one else: the agent's
    // directories can be searched, not listed; what is the app's is its group's; the
    // device's keys stay the device root's.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    let run = &agent.runtime_dir;
    for passage in
        [agent.state_dir.clone(), agent.state_dir.join("containers"), run.clone(), run.join("private")]
    {
        assert_eq!(mode(&passage), 0o701, "{}", passage.display());
    }
    assert_eq!(mode(&agent.state_dir.join("secrets.key")), 0o600);
    assert_eq!(mode(&agent.state_dir.join("images")), 0o700);
    let (main_id, _) = running(&agent, "shifted", "main");
    for own in [agent.state_dir.join("containers").join(&main_id), run.join("private/configs").join(&main_id)]
    {
        let meta = std::fs::metadata(&own).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), u64::from(meta.gid())),
            (0o710, 0, host_first),
            "{}",
            own.display()
        );
    }
    assert_eq!(mode(&run.join("private/bundles")), 0o700, "bundles carry secret values");
}
