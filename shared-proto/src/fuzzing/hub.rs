//! The `hub_session` harness: a [`HubSession`] and a model of it (S1–S7).

use super::{DEVICE, EndWatch, Input, Op, hello, manifest, same_end, step_clock, whole_frame};
use crate::manifest::DesiredManifest;
use crate::session::{HubEvent, HubSession, HubSessionConfig, SessionEnd};
use crate::wire::{self, AgentFrame, AgentHello, FrameDecoder, HubFrame};
use std::time::{Duration, Instant};

const HUB_HEARTBEAT: Duration = Duration::from_secs(10);
const HUB_MAX_REPORT_CONTAINERS: usize = 2;

/// A hub session after a hello, admitted as `data[0]` says with the store's manifest
/// `data[1]`, then driven by the script in the rest; checks S1–S7.
///
/// `data[0]`: bit 0 the version (1 or 2); bits 1–3 the shell's decision (0–5 welcome,
/// 6 refuse, 7 retry-after); bits 4–5: 3 the hello names another device, 2 the first
/// read arrived together with the hello, so the shell hands its bytes over inside the
/// decoder; bits 6–7 the revision the hello says the device holds.
pub fn hub_session(data: &[u8]) {
    let mut input = Input(data);
    let setup = input.byte().unwrap_or(0);
    let store = manifest(input.byte().unwrap_or(0));
    let version = 1 + u32::from(setup & 1);
    let decision = (setup >> 1) & 7;
    let mut hello = hello(u64::from(setup >> 6));
    if (setup >> 4) & 3 == 3 {
        hello.device = "impostor".into();
    }
    let mut decoder = FrameDecoder::new();
    let mut with_hello: &[u8] = &[];
    if (setup >> 4) & 3 == 2 {
        let mut peek = input;
        if let Some(Op::Bytes(bytes)) = Op::next(&mut peek) {
            (with_hello, input) = (bytes, peek);
            decoder.push(bytes);
        }
    }

    let t0 = Instant::now();
    let mut cfg = HubSessionConfig::new(HUB_HEARTBEAT, "fuzz");
    cfg.max_report_containers = HUB_MAX_REPORT_CONTAINERS;
    let silence = cfg.silence_timeout;
    let mut hub = HubSession::new(t0, cfg, DEVICE, &hello, version, decoder);
    assert_eq!(hub.version(), version);
    // As the hub's shell does: a session that did not end at once is admitted or not.
    if !hub.is_ended() {
        match decision {
            6 => hub.refuse("not enrolled"),
            7 => hub.retry_after(Duration::from_millis(1500), "busy"),
            _ => hub.welcome(t0, store.as_ref()),
        }
    }
    let mut watch = HubWatch {
        now: t0,
        version,
        model: FrameDecoder::new(),
        last_heard: t0,
        silence,
        agent_holds: hello.held_revision,
        ends: EndWatch::default(),
    };
    watch.check_setup(&mut hub, &hello, decision, store.as_ref(), with_hello);

    while let Some(op) = Op::next(&mut input) {
        let was_ended = hub.is_ended();
        let deadline = hub.poll_timeout();
        let mut want_events = vec![];
        let mut want_desired = None;
        let mut now = watch.now;
        let fired = step_clock(op, &mut now, deadline);
        watch.now = now;
        if fired {
            if !was_ended && now >= watch.last_heard + silence {
                want_events.push(HubEvent::Ended(SessionEnd::TimedOut(String::new())));
            }
            hub.handle_timeout(now);
        }
        match op {
            Op::Bytes(bytes) => {
                if !was_ended {
                    want_events = watch.model_read(bytes);
                }
                hub.handle_bytes(now, bytes);
            }
            Op::Update(k) => {
                let m = manifest(k);
                if !was_ended {
                    want_desired = watch.model_push(m.as_ref());
                }
                hub.handle_manifest(now, m.as_ref());
            }
            Op::Eof => {
                if !was_ended {
                    let end = if watch.model.buffered() > 0 {
                        SessionEnd::Protocol(String::new())
                    } else {
                        SessionEnd::PeerClosed
                    };
                    want_events.push(HubEvent::Ended(end));
                }
                hub.handle_eof(now);
            }
            Op::Advance(_) | Op::Sleep | Op::Timeout => {}
        }
        watch.check_step(&mut hub, op, was_ended, &want_events, want_desired);
    }
}

/// The model of one hub session, and the checks against it.
struct HubWatch {
    now: Instant,
    version: u32,
    /// A second decoder fed the same bytes as the session (S5).
    model: FrameDecoder,
    last_heard: Instant,
    silence: Duration,
    /// The revision the device holds as far as the hub knows (S7).
    agent_holds: u64,
    ends: EndWatch,
}

impl HubWatch {
    fn check_setup(
        &mut self,
        hub: &mut HubSession,
        hello: &AgentHello,
        decision: u8,
        store: Option<&DesiredManifest>,
        with_hello: &[u8],
    ) {
        let sent: Vec<HubFrame> = std::iter::from_fn(|| hub.poll_transmit())
            .map(|b| whole_frame(&b, self.version, "hub"))
            .collect();
        let events: Vec<HubEvent> = std::iter::from_fn(|| hub.poll_event()).collect();
        let end = self.ends.check(events.iter().map(hub_end));
        let welcomed = hello.device == DEVICE && decision < 6;
        if !welcomed {
            assert_eq!(events.len(), 1, "a session that was not welcomed emitted {events:?}");
        }
        if hello.device != DEVICE {
            assert!(matches!(&sent[..], [HubFrame::Refused { .. }]), "an impostor was sent {sent:?}");
            assert!(matches!(end, Some(SessionEnd::Protocol(_))), "an impostor ended as {end:?}");
        } else if decision == 6 {
            assert!(matches!(&sent[..], [HubFrame::Refused { .. }]), "a refusal sent {sent:?}");
            assert!(matches!(end, Some(SessionEnd::Refused(_))), "a refusal ended as {end:?}");
        } else if decision == 7 {
            // S4: version 1 has no RetryAfter; it is told in words.
            let ok = match &sent[..] {
                [HubFrame::RetryAfter { after_ms: 1500, .. }] => self.version >= 2,
                [HubFrame::Refused { message }] => self.version == 1 && message.contains("try again in 2 s"),
                _ => false,
            };
            assert!(ok, "a retry-after at version {} sent {sent:?}", self.version);
            assert!(matches!(end, Some(SessionEnd::RetryAfter { .. })), "a retry-after ended as {end:?}");
        } else {
            // S5: what came with the hello is read once the device is welcomed.
            let want_events = self.model_read(with_hello);
            assert!(
                same_events(&events, &want_events),
                "S5: the welcome gave events {events:?}, the model says {want_events:?}"
            );
            let [HubFrame::Welcome(w), answer] = &sent[..] else { panic!("a welcome sent {sent:?}") };
            assert_eq!(w.heartbeat_interval_ms, HUB_HEARTBEAT.as_millis() as u32);
            // The first answer is always sent: the manifest, or that the device is up to date.
            match (answer, store) {
                (HubFrame::UpToDate { revision }, Some(m)) => {
                    assert_eq!((*revision, m.revision), (self.agent_holds, self.agent_holds))
                }
                (HubFrame::UpToDate { revision }, None) => assert_eq!((*revision, self.agent_holds), (0, 0)),
                (HubFrame::Desired(_), _) => {
                    let want = self.model_push(store);
                    assert_eq!(Some(answer), want.as_ref(), "S7: the first answer");
                }
                _ => panic!("the answer to a hello was {answer:?}"),
            }
        }
        self.check_timer(hub);
    }

    /// S5: the events the hub owes for these bytes.
    fn model_read(&mut self, bytes: &[u8]) -> Vec<HubEvent> {
        let protocol_error = || HubEvent::Ended(SessionEnd::Protocol(String::new()));
        let mut want = vec![];
        self.model.push(bytes);
        loop {
            let body = match self.model.next_body() {
                Ok(Some(body)) => body,
                Ok(None) => return want,
                Err(_) => {
                    want.push(protocol_error());
                    return want;
                }
            };
            self.last_heard = self.now;
            match wire::decode_frame_body::<AgentFrame>(&body) {
                Ok(AgentFrame::Heartbeat { .. }) => want.push(HubEvent::Heartbeat),
                Ok(AgentFrame::Report(r))
                    if r.containers.len() <= HUB_MAX_REPORT_CONTAINERS && r.problem().is_none() =>
                {
                    want.push(HubEvent::Report(r))
                }
                Ok(AgentFrame::Usage(u)) if u.problem().is_none() => want.push(HubEvent::Usage(u)),
                Ok(AgentFrame::Addresses(a))
                    if wire::addresses_problem(&a, wire::MAX_ADDRESSES).is_none() =>
                {
                    want.push(HubEvent::Addresses(a))
                }
                Ok(AgentFrame::Report(_))
                | Ok(AgentFrame::Usage(_))
                | Ok(AgentFrame::Addresses(_))
                | Err(_) => {
                    want.push(protocol_error());
                    return want;
                }
            }
        }
    }

    /// S7: what the hub must push when the store holds `m`: a difference only.
    fn model_push(&mut self, m: Option<&DesiredManifest>) -> Option<HubFrame> {
        let empty = DesiredManifest { device: DEVICE.into(), revision: 0, ..Default::default() };
        let want = match m {
            Some(m) if m.revision == self.agent_holds => return None,
            Some(m) => m.clone(),
            None if self.agent_holds == 0 => return None,
            None => empty,
        };
        self.agent_holds = want.revision;
        Some(HubFrame::Desired(want))
    }

    fn check_step(
        &mut self,
        hub: &mut HubSession,
        op: Op<'_>,
        was_ended: bool,
        want_events: &[HubEvent],
        want_desired: Option<HubFrame>,
    ) {
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| hub.poll_transmit()).collect();
        let events: Vec<HubEvent> = std::iter::from_fn(|| hub.poll_event()).collect();
        if was_ended {
            assert!(
                sent.is_empty() && events.is_empty(),
                "S1: after the end, {op:?} gave {sent:?} {events:?}"
            );
            assert!(hub.is_ended(), "S1: the session came back to life");
        }
        self.ends.check(events.iter().map(hub_end));
        assert!(
            same_events(&events, want_events),
            "S5/S6: {op:?} gave events {events:?}, the model says {want_events:?}"
        );
        let sent: Vec<HubFrame> = sent.iter().map(|b| whole_frame(b, self.version, "hub")).collect();
        assert_eq!(sent, want_desired.into_iter().collect::<Vec<_>>(), "S7: {op:?} made the hub send this");
        self.check_timer(hub);
    }

    /// S2, S3, S6 on the state after a step.
    fn check_timer(&self, hub: &HubSession) {
        assert_eq!(hub.is_ended(), self.ends.ended, "S2: is_ended() disagrees with the events");
        match hub.poll_timeout() {
            None => assert!(hub.is_ended(), "S3: an open session without a deadline"),
            Some(t) => {
                assert!(!hub.is_ended(), "S3: an ended session with a deadline");
                assert_eq!(
                    t,
                    self.last_heard + self.silence,
                    "S6: the deadline is not silence after the last frame"
                );
                assert!(t > self.now, "S3: the deadline has passed and nothing fired");
            }
        }
    }
}

/// Whether the events are the ones wanted, ignoring the wording of errors.
fn same_events(got: &[HubEvent], want: &[HubEvent]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(got, want)| match (got, want) {
            (HubEvent::Ended(got), HubEvent::Ended(want)) => same_end(got, want),
            _ => got == want,
        })
}

fn hub_end(e: &HubEvent) -> Option<&SessionEnd> {
    match e {
        HubEvent::Ended(end) => Some(end),
        _ => None,
    }
}
