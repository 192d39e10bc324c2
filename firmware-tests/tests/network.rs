//! Isolated networking on a real agent with real containers: each `network: Isolated`
//! app gets an address on the device bridge, its `hostPort`s are published (from the
//! device itself and from outside), apps find each other by name, network policies
//! hold between apps and towards the outside, outbound traffic is NATed, and all of it
//! comes back after a simulated reboot.
//!
//! Needs root and `nft` (nftables); a missing `nft` fails the test, it never skips.
//! Probes use `timeout 2 wget`: busybox 1.35's `wget -T` crashes.

use firmware_tests::netns::Netns;
use firmware_tests::{Agent, Hub, assert_during, busybox_image, http_status, require_root, wait_until};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(45);

fn require_nft() {
    require_root();
    let ok = std::process::Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "nft is missing: isolated networking needs nftables (apt-get install -y nftables)");
}

/// A hub and an agent with a bridge of its own, the image `net:1` imported.
fn start(dir: &Path, name: &str, role: &str) -> (Hub, Agent) {
    require_nft();
    let hub = Hub::start(dir);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir, name, &hub.quic, &token, &[("role", role)]);
    agent.own_bridge();
    agent.start();
    let image = busybox_image(dir, "net:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    (hub, agent)
}

fn apply(hub: &Hub, dir: &Path, yaml: &str) {
    let out = hub.apply(dir, yaml);
    assert!(out.status.success(), "apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The table our agent applied, as `nft` lists it.
fn table(agent: &Agent) -> String {
    let (_, table) = agent.bridge.as_ref().expect("own bridge");
    let out = std::process::Command::new("nft").args(["list", "table", "inet", table]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bridge_ports(agent: &Agent) -> String {
    let (bridge, _) = agent.bridge.as_ref().expect("own bridge");
    let out =
        std::process::Command::new("ip").args(["-o", "link", "show", "master", bridge]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a probing container last wrote to its volume.
fn result(agent: &Agent, app: &str, file: &str) -> String {
    std::fs::read_to_string(volume(agent, app).join(file)).unwrap_or_default().trim().to_string()
}

fn volume(agent: &Agent, app: &str) -> PathBuf {
    agent.state_dir.join(format!("volumes/{app}/out"))
}

fn web_app(role: &str, port: u16) -> String {
    format!(
        r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: web
spec:
  selector:
    matchLabels: {{role: {role}}}
  network: Isolated
  containers:
    - name: httpd
      image: net:1
      command: ["/bin/sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec /bin/busybox httpd -f -p 80 -h /www"]
      ports: [{{containerPort: 80, hostPort: {port}}}]
"#
    )
}

/// GET `/index.html` from `ip:port`, inside whatever namespace the thread is in.
fn get_from(ip: Ipv4Addr, port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

#[test]
fn a_published_port_reaches_the_pod_from_the_device_and_from_outside_and_goes_with_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, agent) = start(dir.path(), "pi-pub", "pub");
    let port = firmware_tests::free_port();
    apply(&hub, dir.path(), &web_app("pub", port));

    // From the device itself, at its loopback (DNAT in the output hook).
    wait_until("the published port to answer on the device's loopback", LONG, || {
        (http_status(port, "/index.html") == Some(200)).then_some(())
    });
    // From outside: a host in a namespace of its own, reaching the device's address on
    // their link (DNAT in the prerouting hook).
    let outside = Netns::create("pubout");
    let link = outside.link_to_root(7);
    let device_ip = link.root_ip;
    let page = outside
        .spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match get_from(device_ip, port) {
                    Some(p) => return Some(p),
                    None if std::time::Instant::now() > deadline => return None,
                    None => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .join()
        .unwrap();
    assert!(page.is_some_and(|p| p.contains("hello")), "the published port did not answer from outside");
    assert!(!bridge_ports(&agent).is_empty(), "the pod's veth is on the bridge");
    assert!(table(&agent).contains(&format!("dport {port} dnat ip to")), "{}", table(&agent));

    // The app goes: its veth and its rules go with it.
    hub.cli_ok(&["delete", "app", "web"]);
    wait_until("the pod's veth and rules to go", LONG, || {
        (bridge_ports(&agent).trim().is_empty() && !table(&agent).contains("dnat")).then_some(())
    });
    assert_eq!(http_status(port, "/index.html"), None, "the port is no longer published");
}

const POLICY: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: server
spec:
  selector:
    matchLabels: {role: ROLE}
  network: Isolated
  networkPolicy:
    ingressApps: [allowed]
  containers:
    - name: httpd
      image: net:1
      command: ["/bin/sh", "-c", "mkdir -p /www && echo server > /www/index.html && exec /bin/busybox httpd -f -p 7000 -h /www"]
---
apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: allowed
spec:
  selector:
    matchLabels: {role: ROLE}
  network: Isolated
  volumes: [{name: out, persistent: {}}]
  containers:
    - name: web
      image: net:1
      command: ["/bin/sh", "-c", "mkdir -p /www && echo allowed > /www/index.html && exec /bin/busybox httpd -f -p 7000 -h /www"]
    - name: probe
      image: net:1
      volumeMounts: [{name: out, mountPath: /out}]
      command: ["/bin/sh", "-c", "while true; do if timeout 2 wget -q -O /dev/null http://server:7000/index.html; then echo ok > /out/server; else echo fail > /out/server; fi; cat /etc/hosts > /out/hosts; sleep 0.5; done"]
---
apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: blocked
spec:
  selector:
    matchLabels: {role: ROLE}
  network: Isolated
  volumes: [{name: out, persistent: {}}]
  containers:
    - name: probe
      image: net:1
      volumeMounts: [{name: out, mountPath: /out}]
      command: ["/bin/sh", "-c", "while true; do if timeout 2 wget -q -O /dev/null http://server:7000/index.html; then echo ok > /out/server; else echo fail > /out/server; fi; if timeout 2 wget -q -O /dev/null http://allowed:7000/index.html; then echo ok > /out/allowed; else echo fail > /out/allowed; fi; sleep 0.5; done"]
"#;

#[test]
fn a_network_policy_lets_one_app_reach_another_by_name_and_blocks_a_third() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, agent) = start(dir.path(), "pi-policy", "policy");
    apply(&hub, dir.path(), &POLICY.replace("ROLE", "policy"));

    wait_until("allowed to reach server by name", LONG, || {
        (result(&agent, "allowed", "server") == "ok").then_some(())
    });
    // blocked's network and names work (it reaches allowed, which has no policy)…
    wait_until("blocked to reach allowed by name", LONG, || {
        (result(&agent, "blocked", "allowed") == "ok").then_some(())
    });
    // …but server's policy turns it away, every time.
    wait_until("blocked to have tried server", LONG, || {
        (result(&agent, "blocked", "server") == "fail").then_some(())
    });
    assert_during("server's policy to keep blocked out", Duration::from_secs(5), || {
        match (result(&agent, "blocked", "server").as_str(), result(&agent, "allowed", "server").as_str()) {
            ("fail", "ok") => Ok(()),
            other => Err(format!("blocked → server, allowed → server: {other:?}")),
        }
    });

    // A new isolated app is named in the running pods' /etc/hosts, rewritten in place
    // under the containers that bind-mount it.
    apply(
        &hub,
        dir.path(),
        r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: late
spec:
  selector:
    matchLabels: {role: policy}
  network: Isolated
  containers:
    - name: idle
      image: net:1
      command: ["/bin/sleep", "3600"]
"#,
    );
    wait_until("a running container to see the new app in /etc/hosts", LONG, || {
        result(&agent, "allowed", "hosts").lines().any(|l| l.ends_with("\tlate")).then_some(())
    });
}

#[test]
fn outbound_traffic_is_natted_and_an_egress_policy_blocks_it() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, agent) = start(dir.path(), "pi-egress", "egress");
    // A host beyond the device: a listener in a namespace of its own, recording who
    // connects.
    let outside = Netns::create("egrout");
    let link = outside.link_to_root(9);
    let (ns_ip, root_ip) = (link.ns_ip, link.root_ip);
    let peers: Arc<Mutex<Vec<std::net::IpAddr>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let listener = {
        let (peers, stop) = (peers.clone(), stop.clone());
        outside.spawn(move || {
            let l = TcpListener::bind((ns_ip, 9000)).expect("binding in the namespace");
            l.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        peers.lock().unwrap().push(peer.ip());
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
    };
    let probe = |name: &str, policy: &str| {
        format!(
            r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{role: egress}}
  network: Isolated
{policy}  volumes: [{{name: out, persistent: {{}}}}]
  containers:
    - name: probe
      image: net:1
      volumeMounts: [{{name: out, mountPath: /out}}]
      command: ["/bin/sh", "-c", "while true; do if timeout 2 wget -q -O /dev/null http://{ns_ip}:9000/; then echo ok > /out/outside; else echo fail > /out/outside; fi; sleep 0.5; done"]
"#
        )
    };
    let yaml = format!(
        "{}---\n{}",
        probe("free", ""),
        probe("fenced", "  networkPolicy:\n    egressCidrs: [192.0.2.0/24]\n")
    );
    apply(&hub, dir.path(), &yaml);

    wait_until("an app without a policy to reach the outside", LONG, || {
        (result(&agent, "free", "outside") == "ok").then_some(())
    });
    let seen = peers.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|p| *p == std::net::IpAddr::V4(root_ip)),
        "connections arrive masqueraded as the device's address on that link ({root_ip}): {seen:?}"
    );
    wait_until("the fenced app to have tried", LONG, || {
        (result(&agent, "fenced", "outside") == "fail").then_some(())
    });
    assert_during("egressCidrs to keep the fenced app in", Duration::from_secs(4), || {
        match result(&agent, "fenced", "outside").as_str() {
            "fail" => Ok(()),
            other => Err(format!("fenced → outside: {other}")),
        }
    });
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap();
}

#[test]
fn after_a_reboot_an_isolated_app_is_reachable_again_at_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hub, mut agent) = start(dir.path(), "pi-netboot", "netboot");
    let port = firmware_tests::free_port();
    apply(&hub, dir.path(), &web_app("netboot", port));
    wait_until("the published port to answer", LONG, || {
        (http_status(port, "/index.html") == Some(200)).then_some(())
    });
    let hosts = agent.runtime_dir.join("pods/web/hosts");
    let address =
        std::fs::read_to_string(&hosts).unwrap().lines().find(|l| l.ends_with("\tweb")).map(str::to_string);
    assert!(address.is_some(), "the pod names its own app");
    hub.kill();

    agent.power_cycle();
    assert!(table(&agent).is_empty() && bridge_ports(&agent).is_empty(), "the reboot took the network");
    assert_eq!(http_status(port, "/index.html"), None);
    agent.start();
    wait_until("the app to be reachable again after the reboot, with no hub", LONG, || {
        (http_status(port, "/index.html") == Some(200)).then_some(())
    });
    let again =
        std::fs::read_to_string(&hosts).unwrap().lines().find(|l| l.ends_with("\tweb")).map(str::to_string);
    assert_eq!(again, address, "the app kept its address");
}
