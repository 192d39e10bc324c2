//! Operating a fleet, with real agents: the hub's metrics count a real agent
//! (`flotilla_connected_devices` goes to 1 when its session is welcomed and back to 0
//! when it is SIGKILLed and its session times out; its enrolment and the image bytes it
//! pulls are counted), read
//! through `--metrics-listen`, the hub's plain loopback listener; and the agent tells
//! systemd it is ready (`Type=notify`) without waiting for a hub.

use firmware_tests::{Agent, Hub, HubOptions, busybox_image, free_port, require_root, wait_until};
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

const APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: idle
spec:
  selector:
    matchLabels: {role: metrics}
  containers:
    - name: idle
      image: busybox-metrics:1
      command: ["/bin/busybox", "sleep", "3600"]
"#;

/// The sizes of every file under `dir`.
fn walk_sizes(dir: &std::path::Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            sizes.extend(walk_sizes(&entry.path()));
        } else {
            sizes.push(meta.len());
        }
    }
    sizes
}

/// `GET /metrics` on loopback; the body, or `None` if nothing answers 200.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn connected_devices_follow_a_real_agent() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hub = Hub::start_with(
        dir.path(),
        HubOptions::default().arg("--metrics-listen").arg(format!("127.0.0.1:{port}")),
    );
    const CONNECTED: &str = r#"flotilla_connected_devices{transport="quic"}"#;
    let before = scrape(port).expect("the hub serves /metrics on its loopback listener");
    assert_eq!(sample(&before, CONNECTED).unwrap_or(0.0), 0.0, "{before}");

    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "gauge-1", &hub.quic, &token, &[("role", "metrics")]);
    agent.start();
    let connected = wait_until("the agent to count as connected", Duration::from_secs(60), || {
        scrape(port).filter(|m| sample(m, CONNECTED) == Some(1.0))
    });
    assert_eq!(sample(&connected, r#"flotilla_enrolments_total{outcome="accepted"}"#), Some(1.0));
    assert_eq!(sample(&connected, r#"flotilla_sync_sessions_opened_total{transport="quic"}"#), Some(1.0));
    assert_eq!(sample(&connected, "flotilla_blob_bytes_served_total"), Some(0.0));

    // An app for it: the agent pulls the image's blobs from the hub, every byte counted.
    let image = busybox_image(dir.path(), "busybox-metrics:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let out = hub.apply(dir.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the container to run", Duration::from_secs(90), || {
        agent.runtime_containers().into_iter().next()
    });
    let largest_blob = walk_sizes(&hub.data_dir.join("blobs")).into_iter().max().expect("the image's blobs");
    let served = sample(&scrape(port).unwrap(), "flotilla_blob_bytes_served_total").unwrap();
    assert!(served >= largest_blob as f64, "{served} bytes served, the layer alone has {largest_blob}");

    // SIGKILL: no goodbye; the hub's session ends at its silence deadline (3 s here).
    agent.kill();
    let gone = wait_until("the agent to count as gone", Duration::from_secs(30), || {
        scrape(port).filter(|m| sample(m, CONNECTED) == Some(0.0))
    });
    assert_eq!(sample(&gone, r#"flotilla_sync_sessions_closed_total{transport="quic"}"#), Some(1.0));
    drop(hub);
}

#[test]
fn the_agent_is_ready_for_systemd_with_no_hub_in_reach() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // Nothing listens at the hub's address: the agent keeps trying to enrol.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let token = format!("FLT1.0123abcd.{zeros}.{zeros}", zeros = "A".repeat(43));
    let mut agent = Agent::configure(dir.path(), "ready-1", &nowhere, &token, &[]);
    agent.start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 1024];
    let n = socket.recv(&mut buf).expect("READY=1 from the agent within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(agent.is_running(), "the agent is up, not on its way out:\n{}", agent.log());
    assert!(agent.log().contains("starting from the stored desired state"), "{}", agent.log());
}
