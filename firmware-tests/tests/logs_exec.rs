//! `flotilla logs` and `flotilla exec` through a real hub to a real agent's containers:
//! the device opens the stream over the connection it keeps to the hub (nothing dials
//! the device).

use firmware_tests::{Agent, Hub, busybox_image, require_root, wait_until};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

const APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: till
spec:
  selector:
    matchLabels: {role: till}
  network: None
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: till:1
      command: ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo \"sale $i\"; sleep 0.2; done"]
    - name: side
      image: till:1
      command: ["/bin/sleep", "3600"]
"#;

fn cli(hub: &Hub, args: &[&str]) -> Command {
    let mut c = Command::new(firmware_tests::bin("flotilla"));
    c.args(args)
        .env("FLOTILLA_CONTEXT", &hub.context)
        .env_remove("FLOTILLA_HUB")
        .env_remove("FLOTILLA_TOKEN");
    c
}

/// The highest `sale N` in `text`.
fn last_sale(text: &str) -> u64 {
    text.lines().filter_map(|l| l.strip_prefix("sale ")?.trim().parse().ok()).max().unwrap_or(0)
}

#[test]
fn logs_follow_a_container_and_exec_returns_the_commands_exit_code() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-till", &hub.quic, &token, &[("role", "till")]);
    agent.start();
    let image = busybox_image(dir.path(), "till:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let out = hub.apply(dir.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the app to run", LONG, || {
        (hub.get("apps", Some("till"))?["status"]["phase"] == "Running").then_some(())
    });

    // Two containers: the CLI must be told which.
    let out = hub.cli(&["logs", "till"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("choose one (-c)"), "{out:?}");

    // The log so far, and its last lines.
    let text = wait_until("the log to hold a few sales", LONG, || {
        let t = hub.cli_ok(&["logs", "till", "-c", "main"]);
        (last_sale(&t) >= 3).then_some(t)
    });
    assert!(text.starts_with("sale 1\n"), "{text}");
    let tail = hub.cli_ok(&["logs", "till", "-c", "main", "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail:?}");
    assert!(last_sale(&tail) >= last_sale(&text));

    // Since a while ago: what the container wrote before it is left out (the agent
    // knows when its log grew to within its 2 s sampling).
    let recent = wait_until("the log to span more than a few seconds", LONG, || {
        let t = hub.cli_ok(&["logs", "till", "-c", "main", "--since", "2s"]);
        (last_sale(&hub.cli_ok(&["logs", "till", "-c", "main"])) > 40).then_some(t)
    });
    assert!(!recent.starts_with("sale 1\n") && !recent.is_empty(), "{recent}");
    assert!(recent.lines().count() < 30, "2 s to 4 s of sales, not all: {recent}");

    // Following: lines the container writes after the call begins arrive as they come.
    let mut follow = cli(&hub, &["logs", "till", "-c", "main", "-f", "--tail", "1", "--device", "pi-till"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = last_sale(&lines.next().unwrap().unwrap());
    let mut seen = first;
    let deadline = std::time::Instant::now() + LONG;
    while seen < first + 5 {
        assert!(std::time::Instant::now() < deadline, "the followed log stopped at sale {seen}");
        seen = last_sale(&lines.next().expect("the followed log ended").unwrap()).max(seen);
    }
    follow.kill().unwrap();
    let _ = follow.wait();

    // Exec: output, the command's own exit code.
    let out =
        hub.cli(&["exec", "till", "-c", "side", "--", "/bin/sh", "-c", "echo from-inside; hostname; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("from-inside") && stdout.contains("side"), "{stdout}");
    let out = hub.cli(&["exec", "till", "-c", "side", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Input: what the operator types reaches the command, and its end ends it.
    let mut cat =
        cli(&hub, &["exec", "-i", "till", "-c", "side", "--", "/bin/sh", "-c", "tr a-z A-Z; exit 3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    cat.stdin.take().unwrap().write_all(b"hello till\n").unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO TILL\n");

    // A terminal when asked: the command's stdin and stdout are one.
    let out = hub.cli(&[
        "exec",
        "-t",
        "till",
        "-c",
        "side",
        "--",
        "/bin/sh",
        "-c",
        "tty && test -t 0 && test -t 1 && exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/dev/pts/"), "{stdout}");

    // Audited, with the command.
    let audit = hub.cli_ok(&["audit", "-o", "json"]);
    assert!(audit.contains("/api/v1/apps/till/exec"), "{audit}");

    // Nothing to run in: a clear error, not a hang.
    let out = hub.cli(&["exec", "till", "-c", "nope", "--", "/bin/true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no container \"nope\""), "{out:?}");
    drop(agent);
}
