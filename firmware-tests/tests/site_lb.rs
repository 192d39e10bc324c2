//! A store with two devices running the same isolated app with a published port: a
//! client that reaches either device's port is served by both devices' pods in turn
//! (the hub tells each device its ready site peers; the device balances in nftables
//! and keeps a peer's connection for itself). Each device and the hub live in their
//! own network namespace; the root namespace routes between them, as a store's LAN
//! would.

use firmware_tests::netns::Netns;
use firmware_tests::{Agent, Hub, HubOptions, busybox_image, require_root, wait_until};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

const SITE: &str = r#"apiVersion: flotilla.dev/v1
kind: Site
metadata: {name: store-1}
spec: {displayName: Store 1}
"#;

// Each pod serves the id of its own network namespace: which device answered.
const APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata: {name: till}
spec:
  selector:
    matchLabels: {role: till}
  network: Isolated
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: till:1
      command: ["/bin/sh", "-c", "mkdir -p /www && readlink /proc/self/ns/net > /www/index.html && exec httpd -f -p 80 -h /www"]
      ports: [{containerPort: 80, hostPort: 8080}]
      readinessProbe:
        httpGet: {path: /index.html, port: 80}
        periodSeconds: 1
"#;

/// One HTTP GET; the body, or `None` if nothing answered.
fn get(ip: Ipv4Addr, port: u16) -> Option<String> {
    let addr = SocketAddr::from((ip, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET /index.html HTTP/1.0\r\nHost: till\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_string()).filter(|b| b.starts_with("net:"))
}

/// The distinct answers of `n` requests to `ip`.
fn answers(ip: Ipv4Addr, n: usize) -> (BTreeSet<String>, usize) {
    let mut seen = BTreeSet::new();
    let mut failed = 0;
    for _ in 0..n {
        match get(ip, 8080) {
            Some(b) => {
                seen.insert(b);
            }
            None => failed += 1,
        }
    }
    (seen, failed)
}

#[test]
fn a_published_port_is_balanced_across_the_sites_devices() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub_ns = Netns::create("lbhub");
    let hub_link = hub_ns.link_to_root(1);
    let a_ns = Netns::create("lba");
    let a_link = a_ns.link_to_root(2);
    let b_ns = Netns::create("lbb");
    let b_link = b_ns.link_to_root(3);
    let hub = Hub::start_with(dir.path(), HubOptions::default().netns(&hub_ns).listen_ip(hub_link.ns_ip));
    let out = hub.apply(dir.path(), SITE);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = busybox_image(dir.path(), "till:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let mut agents = Vec::new();
    for (name, ns) in [("pi-a", &a_ns), ("pi-b", &b_ns)] {
        let token = hub.enrolment_token(&["--site", "store-1", "--allow-label", "role"]);
        let mut agent = Agent::configure(dir.path(), name, &hub.quic, &token, &[("role", "till")]);
        agent.start_in(ns);
        agents.push(agent);
    }
    let out = hub.apply(dir.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the app to run, ready, on both devices", LONG, || {
        let s = hub.get("apps", Some("till"))?["status"].clone();
        (s["phase"] == "Running" && s["runningDevices"] == 2).then_some(())
    });

    // Each device alone answers with its own pod first, then, once the hub named its
    // peer, both pods answer on either device's port.
    for ip in [a_link.ns_ip, b_link.ns_ip] {
        let (seen, failed) = wait_until("both devices' pods to answer on one device's port", LONG, || {
            let (seen, failed) = answers(ip, 30);
            (seen.len() == 2).then_some((seen, failed))
        });
        assert_eq!(failed, 0, "every request answered at {ip}: {seen:?}");
    }
    // Balanced, not just reachable: 60 requests are not all served by one pod.
    let (seen, failed) = answers(a_link.ns_ip, 60);
    assert_eq!((seen.len(), failed), (2, 0));

    // The peer's copy goes (one per site now: the first device by name keeps it):
    // the other device serves alone, with no request lost to a peer that no longer
    // runs it.
    let one = APP.replace("  network: Isolated\n", "  network: Isolated\n  placement: {maxPerSite: 1}\n");
    let out = hub.apply(dir.path(), &one);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("pi-a to serve alone", LONG, || {
        let (seen, failed) = answers(a_link.ns_ip, 20);
        (seen.len() == 1 && failed == 0).then_some(())
    });
    drop(agents);
}
