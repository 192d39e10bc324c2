//! The faulty-link harness end to end, and the wiring other whole-system tests copy:
//! the hub in its own network namespace, an agent in another, the link emulator in
//! the root namespace between them. The agent comes Online through the emulator,
//! keeps its session when the NAT forgets its mapping (QUIC migration), and a second
//! agent behind a network that drops UDP comes Online over the TCP fallback.

use firmware_tests::link::{LinkConfig, LinkEmulator};
use firmware_tests::netns::Netns;
use firmware_tests::{Agent, Hub, HubOptions, require_root, wait_until};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn device_phase(hub: &Hub, name: &str) -> Option<String> {
    hub.get("devices", Some(name)).and_then(|d| d["status"]["phase"].as_str().map(str::to_string))
}

#[test]
fn agent_in_a_namespace_reaches_the_hub_through_the_emulator() {
    require_root();
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let hub_ns = Netns::create("hub");
    let hub_link = hub_ns.link_to_root(1);
    let edge_ns = Netns::create("edge");
    let edge_link = edge_ns.link_to_root(2);
    // The agent dials the emulator, so the hub's certificate must name its address.
    let hub = Hub::start_with(
        dir.path(),
        HubOptions::default().netns(&hub_ns).listen_ip(hub_link.ns_ip).advertise(edge_link.root_ip),
    );
    phase("hub ready");
    let link = LinkEmulator::start(LinkConfig::new(edge_link.root_ip, hub.quic_addr()).seed(1));
    let token = hub.enrolment_token(&[]);
    let token2 = hub.enrolment_token(&[]);
    let mut agent = Agent::configure(dir.path(), "edge-1", &link.addr().to_string(), &token, &[]);
    agent.start_in(&edge_ns);
    wait_until("the device to be Online", LONG, || (device_phase(&hub, "edge-1")? == "Online").then_some(()));
    phase("device online through the emulator");
    let s = link.stats();
    assert!(s.up.packets > 0 && s.down.packets > 0, "the session goes through the emulator: {s:?}");
    assert_eq!(s.udp_flows, 1);

    // The NAT forgets the mapping: the hub sees the device from a new port and
    // answers there (heartbeats every second keep packets flowing).
    link.rebind();
    let down_before = link.stats().down.packets;
    wait_until("the hub to answer on the new flow", Duration::from_secs(20), || {
        let s = link.stats();
        (s.udp_flows == 1 && s.down.packets >= down_before + 3).then_some(())
    });
    assert_eq!(device_phase(&hub, "edge-1").as_deref(), Some("Online"));
    assert_eq!(agent.log().matches("connected to the hub").count(), 1, "migrated, not reconnected");
    phase("session migrated to the new flow");

    // A second device behind a network that drops UDP comes Online over TCP. Its
    // own emulator listens on the same address (another port), so the hub's
    // certificate covers it too.
    let udp_blocked = LinkEmulator::start(LinkConfig::new(edge_link.root_ip, hub.quic_addr()).seed(2));
    udp_blocked.set_block_udp(true);
    let mut agent2 = Agent::configure(dir.path(), "edge-2", &udp_blocked.addr().to_string(), &token2, &[]);
    agent2.start_in(&edge_ns);
    wait_until("the second device to be Online over TCP", LONG, || {
        (device_phase(&hub, "edge-2")? == "Online").then_some(())
    });
    phase("second device online over TCP");
    let s = udp_blocked.stats();
    assert!(s.up.tcp_bytes > 0 && s.down.tcp_bytes > 0, "the session runs over the TCP fallback: {s:?}");
    assert_eq!(s.up.packets, 0, "no UDP got through: {s:?}");
    assert!(s.up.dropped_packets > 0, "the agent tried QUIC first: {s:?}");
}
