//! A fleet on bad links, end to end with real processes: the hub in one network
//! namespace, agents in another, joined through the userspace link emulator.
//!
//! - a lossy, slow link (30 % loss, 300 ± 100 ms) still carries a change and its status;
//! - a partition (2 minutes by default) keeps containers running; after the heal the
//!   agent reconnects within its back-off bound, and nothing is duplicated or restarted;
//! - with UDP dropped, an agent converges over the TCP fallback, image pull included;
//! - 1,000 simulated agents ride out a SIGKILLed hub: the hub spreads their return
//!   (`RetryAfter`), every one reconnects and resyncs, and a change that touches all
//!   of them shows in the API as applied.
//!
//! The tests run concurrently (each builds its own namespaces); durations are
//! parameters: `FLOTILLA_PARTITION_SECS`, `FLOTILLA_SIM_AGENTS`.

use firmware_tests::link::{LinkConfig, LinkEmulator, LinkHandle};
use firmware_tests::netns::{Netns, NsLink};
use firmware_tests::{
    Agent, Hub, HubOptions, Sim, assert_during, busybox_image, devices_in_sync, pid_alive, require_root,
    wait_until,
};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(180);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn phase(t0: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// A hub in its own namespace, an edge namespace for agents, and an emulated link
/// from the edge to the hub.
struct Site {
    hub: Hub,
    edge: Netns,
    link: LinkEmulator,
    _hub_ns: Netns,
    _edge_link: NsLink,
}

fn site(dir: &Path) -> Site {
    let hub_ns = Netns::create("hub");
    let hub_link = hub_ns.link_to_root(1);
    let edge = Netns::create("edge");
    let edge_link = edge.link_to_root(2);
    let hub = Hub::start_with(
        dir,
        HubOptions::default().netns(&hub_ns).listen_ip(hub_link.ns_ip).advertise(edge_link.root_ip),
    );
    let link = LinkEmulator::start(LinkConfig::new(edge_link.root_ip, hub.quic_addr()).seed(7));
    Site { hub, edge, link, _hub_ns: hub_ns, _edge_link: edge_link }
}

fn app_yaml(selector: &str, marker: &str) -> String {
    format!(
        r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: shelf
spec:
  selector:
    matchLabels: {{role: {selector}}}
  containers:
    - name: worker
      image: busybox-test:1
      command: ["/bin/busybox", "sleep", "3600"]
      env: [{{name: MARKER, value: "{marker}"}}]
"#
    )
}

fn app(hub: &Hub) -> Option<Value> {
    hub.get("apps", Some("shelf"))
}

/// The app runs its `generation` on `n` devices.
fn app_running(hub: &Hub, generation: u64, n: u64) -> Option<()> {
    let a = app(hub)?;
    let s = &a["status"];
    (s["phase"] == "Running"
        && s["observedGeneration"].as_u64() == Some(generation)
        && s["runningDevices"].as_u64() == Some(n))
    .then_some(())
}

fn device_phase(hub: &Hub, name: &str) -> Option<String> {
    hub.get("devices", Some(name)).and_then(|d| d["status"]["phase"].as_str().map(str::to_string))
}

/// One agent behind the site's link, enrolled, with the app running.
fn agent_with_app(dir: &Path, s: &Site, name: &str, link: &LinkHandle) -> Agent {
    let image = busybox_image(dir, "busybox-test:1");
    s.hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let token = s.hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir, name, &link.addr().to_string(), &token, &[("role", name)]);
    agent.start_in(&s.edge);
    let out = s.hub.apply(dir, &app_yaml(name, "one"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the app to run", LONG, || app_running(&s.hub, 1, 1));
    agent
}

#[test]
fn a_lossy_slow_link_carries_a_change_and_its_status() {
    require_root();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path());
    let _agent = agent_with_app(dir.path(), &s, "lossy", &s.link);
    phase(t0, "app running over a clean link");

    s.link.set_delay(Duration::from_millis(300), Duration::from_millis(100));
    s.link.set_loss(0.3);
    let out = s.hub.apply(dir.path(), &app_yaml("lossy", "two"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the change to run and its status to come back", LONG, || app_running(&s.hub, 2, 1));
    phase(t0, "generation 2 running, reported through 30% loss and 300±100 ms");
    let st = s.link.stats();
    assert!(st.up.dropped_packets > 0 && st.down.dropped_packets > 0, "the link did lose packets: {st:?}");
}

#[test]
fn a_partition_keeps_containers_running_and_heals_without_restarts() {
    require_root();
    let t0 = Instant::now();
    let partition = Duration::from_secs(env_or("FLOTILLA_PARTITION_SECS", 120));
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path());
    let agent = agent_with_app(dir.path(), &s, "cut", &s.link);
    let ids = agent.runtime_containers();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let pid = agent.container_pid(&ids[0]).expect("the container's pid");
    phase(t0, "app running; cutting the link");

    s.link.set_partition(true);
    let cut_at = Instant::now();
    wait_until("the hub to mark the device Offline", LONG, || {
        (device_phase(&s.hub, "cut")? == "Offline").then_some(())
    });
    phase(t0, "device Offline at the hub");
    // For the whole partition, the store keeps working.
    assert_during(
        "the container running, alone, during the partition",
        partition.saturating_sub(cut_at.elapsed()),
        || {
            if !pid_alive(pid) {
                return Err(format!("pid {pid} is gone"));
            }
            let now = agent.runtime_containers();
            if now != ids {
                return Err(format!("containers are now {now:?}, were {ids:?}"));
            }
            Ok(())
        },
    );
    // The agent notices after its idle timeout (40 s) and warns 30 s later.
    if partition >= Duration::from_secs(80) {
        assert!(agent.log().contains("the hub has been unreachable"), "the agent warns when the hub is gone");
    }
    s.link.set_partition(false);
    let healed = Instant::now();
    phase(t0, "link healed");
    wait_until("the device to be Online again", LONG, || {
        (device_phase(&s.hub, "cut")? == "Online").then_some(())
    });
    let took = healed.elapsed();
    phase(t0, &format!("reconnected {:.1}s after the heal", took.as_secs_f64()));
    // The agent waits at most its back-off cap (30 s) between attempts, and one
    // attempt takes at most its connect timeout (10 s).
    assert!(took <= Duration::from_secs(45), "reconnecting took {took:?}");
    wait_until("the app to be Running again", LONG, || app_running(&s.hub, 1, 1));
    assert_eq!(agent.runtime_containers(), ids, "no container was duplicated or replaced");
    assert_eq!(agent.container_pid(&ids[0]), Some(pid), "the container was not restarted");
    assert!(pid_alive(pid));
    let dev = s.hub.get("devices", Some("cut")).unwrap();
    assert_eq!(dev["status"]["containers"][0]["restarts"], 0, "{dev}");
}

#[test]
fn with_udp_dropped_an_agent_converges_over_tcp() {
    require_root();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path());
    s.link.set_block_udp(true);
    // Enrolment, sync and the image pull all go over TCP.
    let _agent = agent_with_app(dir.path(), &s, "tcp-only", &s.link);
    phase(t0, "app running over the TCP fallback");
    let st = s.link.stats();
    assert!(st.up.tcp_bytes > 0 && st.down.tcp_bytes > 100_000, "the image came over TCP: {st:?}");
    assert_eq!(st.up.packets, 0, "no UDP got through: {st:?}");
    let out = s.hub.apply(dir.path(), &app_yaml("tcp-only", "two"));
    assert!(out.status.success());
    wait_until("the change to run over TCP", LONG, || app_running(&s.hub, 2, 1));
    phase(t0, "generation 2 running over TCP");
}

#[test]
fn a_thousand_agents_ride_out_a_hub_restart() {
    require_root();
    let t0 = Instant::now();
    let n = env_or("FLOTILLA_SIM_AGENTS", 1000);
    let dir = tempfile::tempdir().unwrap();
    // Admitting 50 sessions a second (the fleet comes back faster than that: each device
    // at its next keep-alive or heartbeat), the hub must spread it out.
    let mut hub = Hub::start_with(
        dir.path(),
        HubOptions::default().heartbeat_interval("10s").arg("--session-rate").arg("50"),
    );
    let image = busybox_image(dir.path(), "busybox-test:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let sim = Sim::start(
        dir.path(),
        &hub,
        n as usize,
        &["--sites", "100", "--prefix", "fleet", "--label", "role=sim"],
    );
    wait_until("every simulated agent to connect", LONG, || (sim.count("connected") == n).then_some(()));
    phase(t0, &format!("{n} simulated agents connected"));

    let out = hub.apply(dir.path(), &app_yaml("sim", "one"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("every agent to apply the app", LONG, || {
        let (synced, total) = devices_in_sync(&hub, "fleet-");
        (synced as u64 == n && total as u64 == n).then_some(())
    });
    wait_until("the app to be Running everywhere", LONG, || app_running(&hub, 1, n));
    phase(t0, "app applied on every device (appliedRevision = desiredRevision)");

    hub.kill();
    let sessions_before = sim.count("sessions");
    phase(t0, "hub SIGKILLed");
    hub.restart();
    phase(t0, "hub restarted");
    wait_until("every agent to reconnect", LONG, || {
        (sim.count("sessions") >= sessions_before + n && sim.count("connected") == n).then_some(())
    });
    phase(t0, &format!("every agent reconnected ({} told to come back later)", sim.count("retry_after")));
    assert!(sim.count("retry_after") > 0, "the hub spread the reconnect storm with RetryAfter");

    let out = hub.apply(dir.path(), &app_yaml("sim", "two"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("every agent to receive generation 2", LONG, || (sim.received("shelf", 2) == n).then_some(()));
    wait_until("the hub to see every agent in sync", LONG, || {
        let (synced, total) = devices_in_sync(&hub, "fleet-");
        (synced as u64 == n && total as u64 == n).then_some(())
    });
    wait_until("generation 2 to be Running everywhere", LONG, || app_running(&hub, 2, n));
    phase(t0, "after the restart, a change reached every agent and the API shows it applied");
}
