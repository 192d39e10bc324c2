//! The `agent_session` harness: an [`AgentSession`] and a model of it (S1–S7).

use super::{DEVICE, EndWatch, Input, Op, hello, report, same_end, step_clock, whole_frame};
use crate::session::{AgentEvent, AgentSession, AgentSessionConfig, SessionEnd};
use crate::wire::{self, AgentFrame, AgentReport, FrameDecoder, HubFrame, StreamOpen};
use std::time::{Duration, Instant};

/// An agent session from its first moment, driven by the script after `data[0]`;
/// checks S1–S7.
///
/// `data[0]`: bit 0 the version (1 or 2); bits 1–2 the revision the device holds;
/// bits 3–7 its first report ([`report`]).
pub fn agent_session(data: &[u8]) {
    let mut input = Input(data);
    let setup = input.byte().unwrap_or(0);
    let version = 1 + u32::from(setup & 1);
    let hello = hello(u64::from((setup >> 1) & 3));
    let cfg = AgentSessionConfig::default();
    let t0 = Instant::now();
    let mut agent = AgentSession::new(t0, hello.clone(), version, report(setup >> 3), &cfg);
    assert_eq!(agent.version(), version);
    let open = agent.poll_transmit().expect("S4: the hello is queued at once");
    assert_eq!(whole_frame::<StreamOpen>(&open, version, "agent"), StreamOpen::Sync(hello));
    assert_eq!(agent.poll_transmit(), None, "S4: only the hello before the welcome");
    assert_eq!(agent.poll_event(), None);

    let mut watch = AgentWatch {
        now: t0,
        version,
        model: FrameDecoder::new(),
        welcome_deadline: t0 + cfg.welcome_timeout,
        heartbeat_every: None,
        report: report(setup >> 3),
        last_report_sent: None,
        last_sent: t0,
        heartbeat_seq: 0,
        ends: EndWatch::default(),
    };
    watch.check_timer(&agent);

    while let Some(op) = Op::next(&mut input) {
        let was_ended = agent.is_ended();
        let deadline = agent.poll_timeout();
        let mut want_events = vec![];
        let mut now = watch.now;
        let fired = step_clock(op, &mut now, deadline);
        watch.now = now;
        if fired {
            if !was_ended && watch.heartbeat_every.is_none() && now >= watch.welcome_deadline {
                want_events.push(AgentEvent::Ended(SessionEnd::TimedOut(String::new())));
            }
            agent.handle_timeout(now);
        }
        match op {
            Op::Bytes(bytes) => {
                if !was_ended {
                    want_events = watch.model_read(bytes);
                }
                agent.handle_bytes(now, bytes);
            }
            Op::Update(k) => {
                watch.report = report(k);
                agent.set_report(now, report(k));
            }
            Op::Eof => {
                if !was_ended {
                    let end = if watch.model.buffered() > 0 {
                        SessionEnd::Protocol(String::new())
                    } else {
                        SessionEnd::PeerClosed
                    };
                    want_events.push(AgentEvent::Ended(end));
                }
                agent.handle_eof(now);
            }
            Op::Advance(_) | Op::Sleep | Op::Timeout => {}
        }
        watch.check_step(&mut agent, op, fired, was_ended, &want_events);
    }
}

/// The model of one agent session, and the checks against it.
struct AgentWatch {
    now: Instant,
    version: u32,
    /// A second decoder fed the same bytes as the session (S5).
    model: FrameDecoder,
    welcome_deadline: Instant,
    /// Set by the welcome.
    heartbeat_every: Option<Duration>,
    /// The latest report the shell gave.
    report: AgentReport,
    last_report_sent: Option<AgentReport>,
    /// When the agent last queued a frame after the welcome.
    last_sent: Instant,
    heartbeat_seq: u64,
    ends: EndWatch,
}

impl AgentWatch {
    /// S5: the events the agent owes for these bytes, by the protocol's rules: the
    /// welcome first and once, manifests for this device only, a refusal or a
    /// retry-after ends the session at any time.
    fn model_read(&mut self, bytes: &[u8]) -> Vec<AgentEvent> {
        let protocol_error = || AgentEvent::Ended(SessionEnd::Protocol(String::new()));
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
            let Ok(frame) = wire::decode_frame_body::<HubFrame>(&body) else {
                want.push(protocol_error());
                return want;
            };
            let welcomed = self.heartbeat_every.is_some();
            let event = match frame {
                HubFrame::Refused { message } => AgentEvent::Ended(SessionEnd::Refused(message)),
                HubFrame::RetryAfter { after_ms, message } => AgentEvent::Ended(SessionEnd::RetryAfter {
                    after: Duration::from_millis(u64::from(after_ms)),
                    message,
                }),
                HubFrame::Welcome(w) if !welcomed => {
                    let every = Duration::from_millis(u64::from(w.heartbeat_interval_ms));
                    self.heartbeat_every = Some(every.max(Duration::from_secs(1)));
                    AgentEvent::Welcomed { hub_version: w.hub_version }
                }
                HubFrame::Desired(m) if welcomed && m.device == DEVICE => AgentEvent::Desired(m),
                HubFrame::UpToDate { revision } if welcomed => AgentEvent::UpToDate { revision },
                HubFrame::Renew { reason } if welcomed => AgentEvent::Renew { reason },
                HubFrame::Trust { ca_der }
                    if welcomed && (1..=wire::MAX_TRUSTED_CAS).contains(&ca_der.len()) =>
                {
                    AgentEvent::Trust { ca_der }
                }
                HubFrame::Attach(req) if welcomed && req.problem().is_none() => AgentEvent::Attach(req),
                HubFrame::Peers(p) if welcomed && wire::peers_problem(&p).is_none() => AgentEvent::Peers(p),
                HubFrame::Hubs(h) if welcomed && wire::hubs_problem(&h).is_none() => AgentEvent::Hubs(h),
                HubFrame::Welcome(_)
                | HubFrame::Desired(_)
                | HubFrame::UpToDate { .. }
                | HubFrame::Renew { .. }
                | HubFrame::Trust { .. }
                | HubFrame::Attach(_)
                | HubFrame::Peers(_)
                | HubFrame::Hubs(_) => protocol_error(),
            };
            let ends = matches!(event, AgentEvent::Ended(_));
            want.push(event);
            if ends {
                return want;
            }
        }
    }

    fn check_step(
        &mut self,
        agent: &mut AgentSession,
        op: Op<'_>,
        fired: bool,
        was_ended: bool,
        want_events: &[AgentEvent],
    ) {
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| agent.poll_transmit()).collect();
        let events: Vec<AgentEvent> = std::iter::from_fn(|| agent.poll_event()).collect();
        if was_ended {
            assert!(
                sent.is_empty() && events.is_empty(),
                "S1: after the end, {op:?} gave {sent:?} {events:?}"
            );
            assert!(agent.is_ended(), "S1: the session came back to life");
        }
        self.ends.check(events.iter().map(agent_end));
        assert!(
            same_events(&events, want_events),
            "S5/S6: {op:?} gave events {events:?}, the model says {want_events:?}"
        );
        for bytes in &sent {
            let every = self.heartbeat_every.expect("S4: the agent sent a frame before the welcome");
            match whole_frame::<AgentFrame>(bytes, self.version, "agent") {
                AgentFrame::Report(r) => {
                    assert_ne!(Some(&r), self.last_report_sent.as_ref(), "S7: the same report twice");
                    assert_eq!(r, self.report, "S7: a report that is not the latest");
                    self.last_report_sent = Some(r);
                }
                AgentFrame::Heartbeat { seq } => {
                    assert!(fired, "S6: a heartbeat without the timer");
                    assert!(self.now >= self.last_sent + every, "S6: a heartbeat before the interval passed");
                    assert_eq!(seq, self.heartbeat_seq + 1, "S6: heartbeats out of sequence");
                    self.heartbeat_seq = seq;
                }
                AgentFrame::Usage(_) => panic!("S4: usage the shell never gave"),
                AgentFrame::Addresses(_) => panic!("S4: addresses the shell never gave"),
            }
            self.last_sent = self.now;
        }
        if self.heartbeat_every.is_some() && !agent.is_ended() {
            assert_eq!(
                self.last_report_sent.as_ref(),
                Some(&self.report),
                "S7: the hub lacks the latest report"
            );
        }
        self.check_timer(agent);
    }

    /// S2, S3, S6 on the state after a step.
    fn check_timer(&self, agent: &AgentSession) {
        assert_eq!(agent.is_ended(), self.ends.ended, "S2: is_ended() disagrees with the events");
        match agent.poll_timeout() {
            None => assert!(agent.is_ended(), "S3: a live session without a deadline"),
            Some(t) => {
                assert!(!agent.is_ended(), "S3: an ended session with a deadline");
                let want = match self.heartbeat_every {
                    None => self.welcome_deadline,
                    Some(every) => self.last_sent + every,
                };
                assert_eq!(t, want, "S6: the deadline is not the welcome's or the next heartbeat's");
                assert!(t > self.now, "S3: the deadline has passed and nothing fired");
            }
        }
    }
}

/// Whether the events are the ones wanted, ignoring the wording of errors.
fn same_events(got: &[AgentEvent], want: &[AgentEvent]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(got, want)| match (got, want) {
            (AgentEvent::Ended(got), AgentEvent::Ended(want)) => same_end(got, want),
            _ => got == want,
        })
}

fn agent_end(e: &AgentEvent) -> Option<&SessionEnd> {
    match e {
        AgentEvent::Ended(end) => Some(end),
        _ => None,
    }
}
