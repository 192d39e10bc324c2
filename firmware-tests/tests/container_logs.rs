//! A chatty container cannot fill the device's disk with its log: past the agent's
//! `max_log_bytes` the log is rotated, the newest bytes kept in `<id>.log.1`, and the
//! live log starts again from empty while the container goes on writing.

use firmware_tests::{Agent, Hub, assert_during, busybox_image, require_root, wait_until};
use std::time::Duration;

const CAP: u64 = 64 << 10;
const LONG: Duration = Duration::from_secs(60);

/// About 400 KB a second: the cap fills in a fraction of a second, and without
/// rotation the log would pass 2 MiB within seconds.
const APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: chatty
spec:
  selector:
    matchLabels: {role: chatty}
  containers:
    - name: talk
      image: busybox-test:1
      command: ["/bin/busybox", "sh", "-c", "l=$(head -c 4000 /dev/zero | tr '\\000' x); while true; do echo $l; usleep 10000; done"]
"#;

#[test]
fn a_chatty_container_s_log_is_rotated_at_its_cap() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let image = busybox_image(dir.path(), "busybox-test:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-logs", &hub.quic, &token, &[("role", "chatty")]);
    agent.set_config(&format!("max_log_bytes = {CAP}"));
    agent.start();
    let out = hub.apply(dir.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = wait_until("the container to run", LONG, || agent.runtime_containers().into_iter().next());
    let logs = agent.state_dir.join("logs");
    let (log, rotated) = (logs.join(format!("{id}.log")), logs.join(format!("{id}.log.1")));
    wait_until("the log to be rotated", LONG, || rotated.exists().then_some(()));

    // From now on the log stays near its cap while the container keeps talking.
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut shrank = false;
    let mut last = size(&log);
    assert_during("the log to stay near its cap", Duration::from_secs(12), || {
        let now = size(&log);
        shrank |= now < last;
        last = now;
        if now > 2 << 20 {
            return Err(format!("the live log holds {now} bytes"));
        }
        if size(&rotated) != CAP {
            return Err(format!("the rotated log holds {} bytes, not the newest {CAP}", size(&rotated)));
        }
        Ok(())
    });
    assert!(shrank, "the log was emptied again while the container wrote");
    let kept = std::fs::read(&rotated).unwrap();
    assert!(kept.ends_with(b"x\n"), "the newest lines are kept");
    assert!(agent.runtime_containers().contains(&id), "the container was not restarted");
}
