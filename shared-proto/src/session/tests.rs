//! Both state machines driven against each other: simulated time, byte streams cut
//! at arbitrary points, connections dropped with bytes in flight, repeated manifest
//! notifications. Whatever happens, once the link holds the device converges on the
//! hub's current manifest and the hub learns it.

use super::*;
use crate::manifest::{DesiredApp, DesiredManifest};
use crate::wire::{
    self, AgentHello, AgentReport, DeviceFacts, FrameDecoder, HubFrame, PROTOCOL_VERSION, StreamOpen,
};
use crate::{NetworkMode, RestartPolicy};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const DEVICE: &str = "pi-1";

/// A hub session and an agent session of the current version, neither started.
fn current_pair(t0: Instant) -> (HubSession, AgentSession) {
    let hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
    let agent = AgentSession::new(
        t0,
        hello(0),
        PROTOCOL_VERSION,
        AgentReport::default(),
        &AgentSessionConfig::default(),
    );
    (hub, agent)
}

fn hub_cfg() -> HubSessionConfig {
    HubSessionConfig::new(Duration::from_secs(10), "test")
}

fn hello(held: u64) -> AgentHello {
    AgentHello {
        device: DEVICE.into(),
        facts: DeviceFacts::default(),
        held_revision: held,
        boot_id: "b".into(),
    }
}

fn manifest(revision: u64, n_apps: usize) -> DesiredManifest {
    DesiredManifest {
        device: DEVICE.into(),
        revision,
        apps: (0..n_apps)
            .map(|i| DesiredApp {
                name: format!("app{i}"),
                generation: revision,
                restart_policy: RestartPolicy::Always,
                network: NetworkMode::Host,
                containers: vec![],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// One connection: both machines and the bytes in flight each way.
struct Conn {
    agent: AgentSession,
    /// `None` until the hub has read the hello.
    hub: Option<HubSession>,
    hub_decoder: FrameDecoder,
    to_hub: VecDeque<u8>,
    to_agent: VecDeque<u8>,
}

struct World {
    now: Instant,
    /// The hub's store: the device's manifest.
    store: Option<DesiredManifest>,
    next_revision: u64,
    /// What the device has stored.
    held: DesiredManifest,
    /// Every revision the device stored, in order.
    applied: Vec<u64>,
    /// The latest report the hub received.
    hub_saw: Option<AgentReport>,
    conn: Option<Conn>,
    n_sessions: u32,
}

impl World {
    fn new() -> World {
        World {
            now: Instant::now(),
            store: None,
            next_revision: 1,
            held: DesiredManifest { device: DEVICE.into(), revision: 0, apps: vec![], ..Default::default() },
            applied: vec![],
            hub_saw: None,
            conn: None,
            n_sessions: 0,
        }
    }

    fn report(&self) -> AgentReport {
        AgentReport { held_revision: self.held.revision, containers: vec![] }
    }

    fn connect(&mut self) {
        if self.conn.is_none() {
            let agent = AgentSession::new(
                self.now,
                hello(self.held.revision),
                PROTOCOL_VERSION,
                self.report(),
                &AgentSessionConfig::default(),
            );
            self.conn = Some(Conn {
                agent,
                hub: None,
                hub_decoder: FrameDecoder::new(),
                to_hub: VecDeque::new(),
                to_agent: VecDeque::new(),
            });
            self.n_sessions += 1;
        }
    }

    fn change(&mut self, n_apps: usize) {
        self.next_revision += 1 + n_apps as u64;
        self.store = Some(manifest(self.next_revision, n_apps));
        self.notify();
    }

    fn delete(&mut self) {
        self.store = None;
        self.notify();
    }

    /// The fan-out wakes the session; it reads the store as it is now.
    fn notify(&mut self) {
        let now = self.now;
        if let Some(hub) = self.conn.as_mut().and_then(|c| c.hub.as_mut()) {
            hub.handle_manifest(now, self.store.as_ref());
        }
        self.pump();
    }

    /// Moves queued output into flight and carries out events.
    fn pump(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        let mut ended = false;
        while let Some(b) = c.agent.poll_transmit() {
            c.to_hub.extend(b);
        }
        while let Some(ev) = c.agent.poll_event() {
            match ev {
                AgentEvent::Desired(m) => {
                    self.applied.push(m.revision);
                    self.held = m;
                    let report = AgentReport { held_revision: self.held.revision, containers: vec![] };
                    c.agent.set_report(self.now, report);
                }
                AgentEvent::Ended(_) => ended = true,
                AgentEvent::Welcomed { .. }
                | AgentEvent::UpToDate { .. }
                | AgentEvent::Renew { .. }
                | AgentEvent::Trust { .. }
                | AgentEvent::Attach(_)
                | AgentEvent::Peers(_)
                | AgentEvent::Hubs(_) => {}
            }
        }
        while let Some(b) = c.agent.poll_transmit() {
            c.to_hub.extend(b);
        }
        if let Some(hub) = c.hub.as_mut() {
            while let Some(b) = hub.poll_transmit() {
                c.to_agent.extend(b);
            }
            while let Some(ev) = hub.poll_event() {
                match ev {
                    HubEvent::Report(r) => self.hub_saw = Some(r),
                    HubEvent::Heartbeat | HubEvent::Usage(_) | HubEvent::Addresses(_) => {}
                    HubEvent::Ended(_) => ended = true,
                }
            }
        }
        if ended {
            // The shell closes the stream; whatever was in flight is lost.
            self.conn = None;
        }
    }

    /// Delivers up to `to_hub` and `to_agent` bytes.
    fn deliver(&mut self, to_hub: usize, to_agent: usize) {
        let now = self.now;
        let Some(c) = self.conn.as_mut() else { return };
        let n = to_hub.min(c.to_hub.len());
        let bytes: Vec<u8> = c.to_hub.drain(..n).collect();
        match c.hub.as_mut() {
            Some(hub) => hub.handle_bytes(now, &bytes),
            None => {
                c.hub_decoder.push(&bytes);
                match c.hub_decoder.next_body() {
                    Ok(Some(body)) => {
                        let (version, open) = wire::decode_frame_body_versioned::<StreamOpen>(&body).unwrap();
                        let StreamOpen::Sync(hello) = open else { panic!("not a sync stream") };
                        let decoder = std::mem::take(&mut c.hub_decoder);
                        let mut hub = HubSession::new(now, hub_cfg(), DEVICE, &hello, version, decoder);
                        hub.welcome(now, self.store.as_ref());
                        // Whatever followed the hello in this delivery.
                        hub.handle_bytes(now, &[]);
                        c.hub = Some(hub);
                    }
                    Ok(None) => {}
                    Err(e) => panic!("the agent sent a bad frame: {e}"),
                }
            }
        }
        let n = to_agent.min(c.to_agent.len());
        let bytes: Vec<u8> = c.to_agent.drain(..n).collect();
        c.agent.handle_bytes(now, &bytes);
        self.pump();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        if let Some(c) = self.conn.as_mut() {
            if c.agent.poll_timeout().is_some_and(|t| t <= now) {
                c.agent.handle_timeout(now);
            }
            if let Some(hub) = c.hub.as_mut()
                && hub.poll_timeout().is_some_and(|t| t <= now)
            {
                hub.handle_timeout(now);
            }
        }
        self.pump();
    }

    fn settle(&mut self) {
        for _ in 0..50 {
            self.connect();
            self.deliver(usize::MAX, usize::MAX);
            self.advance(Duration::from_millis(100));
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Change(usize),
    Delete,
    Deliver(usize, usize),
    Advance(u64),
    Drop,
    Connect,
    Notify,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..4).prop_map(Op::Change),
        1 => Just(Op::Delete),
        6 => (0usize..64, 0usize..64).prop_map(|(a, b)| Op::Deliver(a, b)),
        2 => (0u64..40_000).prop_map(Op::Advance),
        1 => Just(Op::Drop),
        3 => Just(Op::Connect),
        1 => Just(Op::Notify),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_device_converges_whatever_the_link_does(ops in prop::collection::vec(op(), 0..120)) {
        let mut w = World::new();
        for op in ops {
            match op {
                Op::Change(n) => w.change(n),
                Op::Delete => w.delete(),
                Op::Deliver(a, b) => w.deliver(a, b),
                Op::Advance(ms) => w.advance(Duration::from_millis(ms)),
                Op::Drop => w.conn = None,
                Op::Connect => w.connect(),
                Op::Notify => w.notify(),
            }
            // Revisions only move forward, except to the empty manifest of a
            // deleted one.
            let moving: Vec<u64> = w.applied.iter().copied().filter(|r| *r != 0).collect();
            prop_assert!(moving.windows(2).all(|p| p[0] <= p[1]), "went back: {:?}", w.applied);
        }
        w.settle();
        let want = w.store.clone().unwrap_or(DesiredManifest { device: DEVICE.into(), revision: 0, apps: vec![], ..Default::default() });
        prop_assert_eq!(&w.held, &want);
        prop_assert_eq!(w.hub_saw.as_ref().map(|r| r.held_revision), Some(want.revision));
        // A quiet, healthy link stays up: heartbeats keep the hub from timing out.
        let sessions = w.n_sessions;
        for _ in 0..20 {
            w.advance(Duration::from_secs(9));
            w.deliver(usize::MAX, usize::MAX);
        }
        prop_assert_eq!(w.n_sessions, sessions);
        prop_assert!(w.conn.is_some());
    }
}

#[test]
fn first_answer_and_pushes_follow_one_rule() {
    let m = |r| manifest(r, 1);
    assert_eq!(desired_frame(5, Some(&m(5)), DEVICE, true), Some(HubFrame::UpToDate { revision: 5 }));
    assert_eq!(desired_frame(5, Some(&m(5)), DEVICE, false), None);
    assert_eq!(desired_frame(4, Some(&m(5)), DEVICE, false), Some(HubFrame::Desired(m(5))));
    assert_eq!(
        desired_frame(9, Some(&m(5)), DEVICE, true),
        Some(HubFrame::Desired(m(5))),
        "restored hub wins"
    );
    assert_eq!(desired_frame(0, None, DEVICE, true), Some(HubFrame::UpToDate { revision: 0 }));
    // An emptied manifest is sent, at the first answer and later alike.
    let empty = HubFrame::Desired(DesiredManifest {
        device: DEVICE.into(),
        revision: 0,
        apps: vec![],
        ..Default::default()
    });
    assert_eq!(desired_frame(3, None, DEVICE, true), Some(empty.clone()));
    assert_eq!(desired_frame(3, None, DEVICE, false), Some(empty));
}

#[test]
fn a_deleted_manifest_reaches_a_connected_device() {
    let mut w = World::new();
    w.change(2);
    w.settle();
    assert_eq!(w.held.apps.len(), 2);
    w.delete();
    w.settle();
    assert_eq!(w.held.revision, 0);
    assert!(w.held.apps.is_empty());
    assert_eq!(w.n_sessions, 1, "no reconnect was needed");
}

#[test]
fn exact_frames_of_a_session() {
    let t0 = Instant::now();
    let mut agent = AgentSession::new(
        t0,
        hello(3),
        PROTOCOL_VERSION,
        AgentReport::default(),
        &AgentSessionConfig::default(),
    );
    let open = agent.poll_transmit().unwrap();
    assert_eq!(agent.poll_timeout(), Some(t0 + Duration::from_secs(15)), "welcome deadline");
    let mut d = FrameDecoder::new();
    d.push(&open);
    let (v, StreamOpen::Sync(h)) =
        wire::decode_frame_body_versioned(&d.next_body().unwrap().unwrap()).unwrap()
    else {
        panic!()
    };
    assert_eq!((v, h.held_revision), (PROTOCOL_VERSION, 3));
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &h, v, d);
    hub.welcome(t0, Some(&manifest(3, 1)));
    let mut out = Vec::new();
    while let Some(b) = hub.poll_transmit() {
        out.push(wire::decode_frame::<HubFrame>(&b).unwrap());
    }
    assert!(matches!(&out[..], [HubFrame::Welcome(_), HubFrame::UpToDate { revision: 3 }]), "{out:?}");
    // The agent's report goes right after the welcome; a heartbeat only after a quiet interval.
    let bytes: Vec<u8> = out.iter().flat_map(|f| wire::encode_frame(f).unwrap()).collect();
    agent.handle_bytes(t0, &bytes);
    assert!(matches!(agent.poll_event(), Some(AgentEvent::Welcomed { .. })));
    assert_eq!(agent.poll_event(), Some(AgentEvent::UpToDate { revision: 3 }));
    assert!(agent.poll_transmit().is_some(), "the report");
    assert!(agent.poll_transmit().is_none());
    assert_eq!(
        agent.poll_timeout(),
        Some(t0 + Duration::from_secs(10)),
        "the default spread is the full interval"
    );
    agent.handle_timeout(t0 + Duration::from_secs(10));
    let hb = agent.poll_transmit().unwrap();
    assert!(matches!(wire::decode_frame(&hb).unwrap(), wire::AgentFrame::Heartbeat { seq: 1 }));
}

#[test]
fn heartbeats_spread_over_80_to_100_percent_of_the_interval() {
    let t0 = Instant::now();
    for (spread, every) in [(0.0, 8_000), (0.5, 9_000), (1.0, 10_000)] {
        let cfg = AgentSessionConfig { heartbeat_spread: spread, ..Default::default() };
        let mut agent = AgentSession::new(t0, hello(0), PROTOCOL_VERSION, AgentReport::default(), &cfg);
        let mut hub =
            HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
        hub.welcome(t0, None);
        while let Some(b) = hub.poll_transmit() {
            agent.handle_bytes(t0, &b);
        }
        assert_eq!(agent.poll_timeout(), Some(t0 + Duration::from_millis(every)), "spread {spread}");
    }
}

#[test]
fn a_silent_device_times_out_and_a_wrong_name_is_refused() {
    let t0 = Instant::now();
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
    hub.welcome(t0, None);
    hub.handle_timeout(t0 + Duration::from_secs(29));
    assert!(!hub.is_ended());
    hub.handle_timeout(t0 + Duration::from_secs(30));
    assert!(hub.is_ended());

    let mut other = hello(0);
    other.device = "someone-else".into();
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &other, PROTOCOL_VERSION, FrameDecoder::new());
    assert!(matches!(wire::decode_frame(&hub.poll_transmit().unwrap()).unwrap(), HubFrame::Refused { .. }));
    assert!(matches!(hub.poll_event(), Some(HubEvent::Ended(SessionEnd::Protocol(_)))));
}

#[test]
fn retry_after_reaches_the_agent_as_a_deadline() {
    let t0 = Instant::now();
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
    hub.retry_after(Duration::from_millis(4_500), "the hub is busy");
    let mut agent = AgentSession::new(
        t0,
        hello(0),
        PROTOCOL_VERSION,
        AgentReport::default(),
        &AgentSessionConfig::default(),
    );
    agent.handle_bytes(t0, &hub.poll_transmit().unwrap());
    assert_eq!(
        agent.poll_event(),
        Some(AgentEvent::Ended(SessionEnd::RetryAfter {
            after: Duration::from_millis(4_500),
            message: "the hub is busy".into()
        }))
    );
}

#[test]
fn a_version_one_agent_is_answered_in_version_one() {
    let t0 = Instant::now();
    let mut agent =
        AgentSession::new(t0, hello(0), 1, AgentReport::default(), &AgentSessionConfig::default());
    let open = agent.poll_transmit().unwrap();
    assert_eq!(open[4], 1, "the hello is written at version 1");
    let mut d = FrameDecoder::new();
    d.push(&open);
    let (v, StreamOpen::Sync(h)) =
        wire::decode_frame_body_versioned(&d.next_body().unwrap().unwrap()).unwrap()
    else {
        panic!()
    };
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &h, v, d);
    hub.welcome(t0, Some(&manifest(8, 1)));
    hub.retry_after(Duration::from_secs(1), "busy");
    while let Some(b) = hub.poll_transmit() {
        assert_eq!(b[4], 1, "every answer is written at version 1");
        assert!(!matches!(wire::decode_frame(&b).unwrap(), HubFrame::RetryAfter { .. }));
    }
}

#[test]
fn the_hub_asks_for_renewal_when_due_and_again_until_the_device_renews() {
    let t0 = Instant::now();
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
    hub.schedule_renewal(Some(t0 + Duration::from_secs(5)));
    hub.welcome(t0, None);
    let mut agent = AgentSession::new(
        t0,
        hello(0),
        PROTOCOL_VERSION,
        AgentReport::default(),
        &AgentSessionConfig::default(),
    );
    while let Some(b) = hub.poll_transmit() {
        agent.handle_bytes(t0, &b);
    }
    assert_eq!(hub.poll_timeout(), Some(t0 + Duration::from_secs(5)), "the renewal is the next deadline");
    hub.handle_timeout(t0 + Duration::from_secs(4));
    assert!(hub.poll_transmit().is_none(), "not before it is due");
    let due = t0 + Duration::from_secs(5);
    hub.handle_bytes(due, &wire::encode_frame(&wire::AgentFrame::Heartbeat { seq: 1 }).unwrap());
    hub.handle_timeout(due);
    let ask = hub.poll_transmit().expect("asked");
    assert!(matches!(wire::decode_frame(&ask).unwrap(), HubFrame::Renew { .. }));
    agent.handle_bytes(due, &ask);
    let events: Vec<AgentEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(e, AgentEvent::Renew { .. })), "{events:?}");
    assert!(!agent.is_ended(), "a renewal request ends nothing");
    // Still on the old certificate a minute later: asked again.
    for secs in [20, 40] {
        let t = due + Duration::from_secs(secs);
        hub.handle_bytes(t, &wire::encode_frame(&wire::AgentFrame::Heartbeat { seq: secs }).unwrap());
        hub.handle_timeout(t);
        assert!(hub.poll_transmit().is_none());
    }
    let later = due + hub_cfg().renew_repeat;
    hub.handle_bytes(later, &wire::encode_frame(&wire::AgentFrame::Heartbeat { seq: 2 }).unwrap());
    hub.handle_timeout(later);
    assert!(matches!(wire::decode_frame(&hub.poll_transmit().unwrap()).unwrap(), HubFrame::Renew { .. }));
}

#[test]
fn the_trusted_cas_follow_the_welcome_and_are_bounded() {
    let t0 = Instant::now();
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
    hub.welcome(t0, None);
    hub.send_trust(vec![vec![1], vec![2]]);
    let mut agent = AgentSession::new(
        t0,
        hello(0),
        PROTOCOL_VERSION,
        AgentReport::default(),
        &AgentSessionConfig::default(),
    );
    while let Some(b) = hub.poll_transmit() {
        agent.handle_bytes(t0, &b);
    }
    let events: Vec<AgentEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
    assert!(events.contains(&AgentEvent::Trust { ca_der: vec![vec![1], vec![2]] }), "{events:?}");
    let too_many = HubFrame::Trust { ca_der: vec![vec![0]; wire::MAX_TRUSTED_CAS + 1] };
    agent.handle_bytes(t0, &wire::encode_frame(&too_many).unwrap());
    assert!(matches!(agent.poll_event(), Some(AgentEvent::Ended(SessionEnd::Protocol(_)))));
}

#[test]
fn an_agent_older_than_version_three_is_never_asked_to_renew() {
    let t0 = Instant::now();
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), 2, FrameDecoder::new());
    hub.schedule_renewal(Some(t0));
    hub.welcome(t0, None);
    hub.send_trust(vec![vec![1]]);
    hub.handle_timeout(t0 + Duration::from_secs(1));
    while let Some(b) = hub.poll_transmit() {
        assert_eq!(b[4], 2);
        assert!(!matches!(wire::decode_frame(&b).unwrap(), HubFrame::Renew { .. } | HubFrame::Trust { .. }));
    }
    assert_eq!(hub.poll_timeout(), Some(t0 + hub_cfg().silence_timeout));
}

proptest! {
    #[test]
    fn arbitrary_bytes_end_a_session_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let t0 = Instant::now();
        let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
        hub.welcome(t0, None);
        hub.handle_bytes(t0, &bytes);
        hub.handle_eof(t0);
        let mut agent = AgentSession::new(t0, hello(0), PROTOCOL_VERSION, AgentReport::default(), &AgentSessionConfig::default());
        agent.handle_bytes(t0, &bytes);
        agent.handle_eof(t0);
        prop_assert!(hub.is_ended() && agent.is_ended());
    }
}

#[test]
fn usage_reaches_a_hub_of_version_4_and_never_an_older_one() {
    let t0 = Instant::now();
    let usage = wire::UsageReport {
        containers: vec![wire::ContainerUsage {
            app: "pos".into(),
            name: "main".into(),
            cpu_millis: 120,
            memory_bytes: 1 << 20,
        }],
    };
    for version in [3, PROTOCOL_VERSION] {
        let mut agent =
            AgentSession::new(t0, hello(0), version, AgentReport::default(), &AgentSessionConfig::default());
        let mut d = FrameDecoder::new();
        d.push(&agent.poll_transmit().unwrap());
        let (v, StreamOpen::Sync(h)) =
            wire::decode_frame_body_versioned(&d.next_body().unwrap().unwrap()).unwrap()
        else {
            panic!()
        };
        let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &h, v, d);
        assert!(!agent.send_usage(t0, usage.clone()), "not before the welcome");
        hub.welcome(t0, None);
        while let Some(b) = hub.poll_transmit() {
            agent.handle_bytes(t0, &b);
        }
        while agent.poll_transmit().is_some() {}
        let sent = agent.send_usage(t0, usage.clone());
        assert_eq!(sent, version >= 4, "version {version}");
        while let Some(b) = agent.poll_transmit() {
            hub.handle_bytes(t0, &b);
        }
        let events: Vec<HubEvent> = std::iter::from_fn(|| hub.poll_event()).collect();
        assert_eq!(events.contains(&HubEvent::Usage(usage.clone())), version >= 4, "{events:?}");
    }
    // A usage report past the bounds ends that one session.
    let mut hub = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), PROTOCOL_VERSION, FrameDecoder::new());
    hub.welcome(t0, None);
    let huge = wire::UsageReport { containers: vec![Default::default(); wire::MAX_REPORT_CONTAINERS + 1] };
    hub.handle_bytes(t0, &wire::encode_frame(&wire::AgentFrame::Usage(huge)).unwrap());
    assert!(hub.is_ended());
}

#[test]
fn attach_requests_reach_agents_of_version_5_only_and_malformed_ones_end_the_session() {
    let t0 = Instant::now();
    let req = wire::AttachRequest {
        id: 3,
        app: "web".into(),
        container: String::new(),
        what: wire::AttachKind::Exec(wire::ExecRequest { command: vec!["ls".into()], ..Default::default() }),
    };
    let mut old = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), 4, FrameDecoder::new());
    old.welcome(t0, None);
    while old.poll_transmit().is_some() {}
    assert!(old.attach(req.clone()).unwrap_err().contains("version 5"));
    assert!(old.poll_transmit().is_none(), "nothing sent to an agent that cannot read it");

    let (mut hub, mut agent) = current_pair(t0);
    hub.welcome(t0, None);
    hub.attach(req.clone()).unwrap();
    while let Some(b) = hub.poll_transmit() {
        agent.handle_bytes(t0, &b);
    }
    let events: Vec<AgentEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
    assert!(events.contains(&AgentEvent::Attach(req.clone())), "{events:?}");

    let mut bad = req;
    bad.app = "x".repeat(300);
    let frame = wire::encode_frame(&HubFrame::Attach(bad)).unwrap();
    agent.handle_bytes(t0, &frame);
    let events: Vec<AgentEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
    assert!(matches!(events.last(), Some(AgentEvent::Ended(SessionEnd::Protocol(_)))), "{events:?}");
}

#[test]
fn addresses_and_peers_travel_between_version_5_peers_only_and_repeats_are_not_sent() {
    let t0 = Instant::now();
    let (mut hub, mut agent) = current_pair(t0);
    hub.welcome(t0, None);
    while let Some(b) = hub.poll_transmit() {
        agent.handle_bytes(t0, &b);
    }
    while agent.poll_event().is_some() {}
    // Its hello and first report went before; the hub built from the hello above.
    while agent.poll_transmit().is_some() {}
    assert!(agent.send_addresses(t0, vec!["192.168.1.20".into()]));
    while let Some(b) = agent.poll_transmit() {
        hub.handle_bytes(t0, &b);
    }
    let events: Vec<HubEvent> = std::iter::from_fn(|| hub.poll_event()).collect();
    assert!(events.contains(&HubEvent::Addresses(vec!["192.168.1.20".into()])), "{events:?}");
    let peers = vec![wire::AppPeers { app: "pos".into(), addresses: vec!["192.168.1.21".into()] }];
    hub.send_peers(peers.clone());
    hub.send_peers(peers.clone());
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| hub.poll_transmit()).collect();
    assert_eq!(frames.len(), 1, "a repeat is not sent");
    agent.handle_bytes(t0, &frames[0]);
    assert_eq!(agent.poll_event(), Some(AgentEvent::Peers(peers)));
    // A bad address from the device ends the session.
    let frame = wire::encode_frame(&wire::AgentFrame::Addresses(vec!["not-an-ip".into()])).unwrap();
    hub.handle_bytes(t0, &frame);
    let events: Vec<HubEvent> = std::iter::from_fn(|| hub.poll_event()).collect();
    assert!(matches!(events.last(), Some(HubEvent::Ended(SessionEnd::Protocol(_)))), "{events:?}");
    // A version-4 hub is not sent addresses.
    let mut old = AgentSession::new(t0, hello(0), 4, AgentReport::default(), &AgentSessionConfig::default());
    assert!(!old.send_addresses(t0, vec!["192.168.1.20".into()]));
}

#[test]
fn the_cluster_s_hubs_reach_version_6_agents_once_and_bad_ones_end_the_session() {
    let t0 = Instant::now();
    let hubs = vec![
        wire::HubEndpoint { quic: "hub-1.example:7441".into(), tcp: "hub-1.example:7441".into() },
        wire::HubEndpoint { quic: "10.0.0.2:7441".into(), tcp: "10.0.0.2:443".into() },
    ];
    let (mut hub, mut agent) = current_pair(t0);
    hub.send_hubs(&hubs);
    assert!(hub.poll_transmit().is_none(), "nothing before the welcome");
    hub.welcome(t0, None);
    while let Some(b) = hub.poll_transmit() {
        agent.handle_bytes(t0, &b);
    }
    while agent.poll_event().is_some() {}
    hub.send_hubs(&hubs);
    hub.send_hubs(&hubs);
    hub.send_hubs(&[]);
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| hub.poll_transmit()).collect();
    assert_eq!(frames.len(), 1, "a repeat, or no hubs at all, is not sent");
    agent.handle_bytes(t0, &frames[0]);
    assert_eq!(agent.poll_event(), Some(AgentEvent::Hubs(hubs.clone())));

    // A version-5 agent is not told.
    let mut old = HubSession::new(t0, hub_cfg(), DEVICE, &hello(0), 5, FrameDecoder::new());
    old.welcome(t0, None);
    while old.poll_transmit().is_some() {}
    old.send_hubs(&hubs);
    assert!(old.poll_transmit().is_none());

    // An endpoint without a port ends the session.
    let bad = vec![wire::HubEndpoint { quic: "hub-1.example".into(), tcp: "hub-1.example:443".into() }];
    agent.handle_bytes(t0, &wire::encode_frame(&HubFrame::Hubs(bad)).unwrap());
    let events: Vec<AgentEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
    assert!(matches!(events.last(), Some(AgentEvent::Ended(SessionEnd::Protocol(_)))), "{events:?}");
}
