//! The device's side of one sync stream.
//!
//! It opens with the hello (the revision the device holds), waits for the hub's
//! welcome, then passes on every desired manifest the hub sends and sends what the
//! device runs whenever that changes, plus a heartbeat when nothing else was sent for
//! a heartbeat interval. Storing a manifest durably before acting on it is the shell's
//! job: [`AgentEvent::Desired`] comes out, the shell writes it to disk, and the next
//! report carries the new revision.

use super::SessionEnd;
use crate::manifest::DesiredManifest;
use crate::wire::{
    self, AgentFrame, AgentHello, AgentReport, AppPeers, AttachRequest, FrameDecoder, HubEndpoint, HubFrame,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, StreamOpen,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Shortest heartbeat interval the agent accepts from a hub.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct AgentSessionConfig {
    /// How long the hub has to answer the hello.
    pub welcome_timeout: Duration,
    /// Where in [0, 1) this device's heartbeat falls: it sends at 80 % to 100 % of the
    /// hub's interval. The shell picks it at random, so that devices which all
    /// reported at once (after a fleet-wide change) do not heartbeat in step for ever.
    pub heartbeat_spread: f64,
}

impl Default for AgentSessionConfig {
    fn default() -> Self {
        AgentSessionConfig { welcome_timeout: Duration::from_secs(15), heartbeat_spread: 1.0 }
    }
}

/// What the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The hub accepted the session.
    Welcomed { hub_version: String },
    /// A new desired manifest: store it durably, then converge on it.
    Desired(DesiredManifest),
    /// The device already holds the hub's current revision.
    UpToDate { revision: u64 },
    /// The hub asks for a new certificate: open a renewal stream with a new key.
    Renew { reason: String },
    /// The CAs to trust for the hub from the next connection on: store them.
    Trust { ca_der: Vec<Vec<u8>> },
    /// The hub asks for a container's log or a command run in it: open an attach
    /// stream for it (version 5).
    Attach(AttachRequest),
    /// Where the device's published ports are balanced to: store it, apply it.
    Peers(Vec<AppPeers>),
    /// The cluster's hubs: store them, and move to another when this one goes away.
    Hubs(Vec<HubEndpoint>),
    /// The session is over; the shell closes the stream.
    Ended(SessionEnd),
}

#[derive(Debug)]
enum State {
    AwaitWelcome { deadline: Instant },
    Established { heartbeat_every: Duration, next_heartbeat: Instant },
    Ended,
}

#[derive(Debug)]
pub struct AgentSession {
    device: String,
    version: u32,
    state: State,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<AgentEvent>,
    /// The latest report the shell gave, and the last one sent.
    report: AgentReport,
    sent_report: Option<AgentReport>,
    heartbeat_seq: u64,
    heartbeat_spread: f64,
}

impl AgentSession {
    /// Starts a session: the hello is queued for sending at once. `version` is the
    /// protocol version to speak (the current one, or the older one after a hub of the
    /// previous version refused it); `report` is what the device runs now.
    pub fn new(
        now: Instant,
        hello: AgentHello,
        version: u32,
        report: AgentReport,
        cfg: &AgentSessionConfig,
    ) -> AgentSession {
        let version = version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        let mut s = AgentSession {
            device: hello.device.clone(),
            version,
            state: State::AwaitWelcome { deadline: now + cfg.welcome_timeout },
            decoder: FrameDecoder::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            report,
            sent_report: None,
            heartbeat_seq: 0,
            heartbeat_spread: cfg.heartbeat_spread.clamp(0.0, 1.0),
        };
        match wire::encode_frame_for(version, &StreamOpen::Sync(hello)) {
            Ok(frame) => s.transmit.push_back(frame),
            Err(e) => s.end(SessionEnd::Protocol(format!("cannot encode the hello: {e}"))),
        }
        s
    }

    /// The protocol version this session speaks.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended)
    }

    /// Bytes read from the stream, in any pieces.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.is_ended() {
            return;
        }
        self.decoder.push(bytes);
        loop {
            let body = match self.decoder.next_body() {
                Ok(Some(body)) => body,
                Ok(None) => return,
                Err(e) => return self.end(SessionEnd::Protocol(format!("bad frame from the hub: {e}"))),
            };
            match wire::decode_frame_body::<HubFrame>(&body) {
                Ok(frame) => self.handle_frame(now, frame),
                Err(e) => return self.end(SessionEnd::Protocol(format!("bad frame from the hub: {e}"))),
            }
            if self.is_ended() {
                return;
            }
        }
    }

    /// The hub ended the stream.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.is_ended() {
            return;
        }
        let end = if self.decoder.buffered() > 0 {
            SessionEnd::Protocol("the stream ended inside a frame".into())
        } else {
            SessionEnd::PeerClosed
        };
        self.end(end);
    }

    fn handle_frame(&mut self, now: Instant, frame: HubFrame) {
        match (&self.state, frame) {
            (_, HubFrame::Refused { message }) => self.end(SessionEnd::Refused(message)),
            (_, HubFrame::RetryAfter { after_ms, message }) => self
                .end(SessionEnd::RetryAfter { after: Duration::from_millis(u64::from(after_ms)), message }),
            (State::AwaitWelcome { .. }, HubFrame::Welcome(w)) => {
                let interval = Duration::from_millis(u64::from(w.heartbeat_interval_ms)).max(MIN_HEARTBEAT);
                let heartbeat_every = interval.mul_f64(0.8 + 0.2 * self.heartbeat_spread).max(MIN_HEARTBEAT);
                self.state = State::Established { heartbeat_every, next_heartbeat: now + heartbeat_every };
                self.events.push_back(AgentEvent::Welcomed { hub_version: w.hub_version });
                // The hub learns what runs at once, after every (re)connect.
                self.send_report(now);
            }
            (State::AwaitWelcome { .. }, other) => {
                self.end(SessionEnd::Protocol(format!("expected a welcome, got {}", frame_name(&other))))
            }
            (State::Established { .. }, HubFrame::Welcome(_)) => {
                self.end(SessionEnd::Protocol("a second welcome".into()))
            }
            (State::Established { .. }, HubFrame::Desired(m)) => {
                if m.device != self.device {
                    let msg = format!("the hub sent the manifest of {:?}", m.device);
                    return self.end(SessionEnd::Protocol(msg));
                }
                self.events.push_back(AgentEvent::Desired(m));
            }
            (State::Established { .. }, HubFrame::UpToDate { revision }) => {
                self.events.push_back(AgentEvent::UpToDate { revision })
            }
            (State::Established { .. }, HubFrame::Renew { reason }) => {
                self.events.push_back(AgentEvent::Renew { reason })
            }
            (State::Established { .. }, HubFrame::Trust { ca_der }) => {
                if ca_der.is_empty() || ca_der.len() > wire::MAX_TRUSTED_CAS {
                    let msg = format!("the hub named {} CAs to trust", ca_der.len());
                    return self.end(SessionEnd::Protocol(msg));
                }
                self.events.push_back(AgentEvent::Trust { ca_der })
            }
            (State::Established { .. }, HubFrame::Peers(peers)) => {
                if let Some(p) = wire::peers_problem(&peers) {
                    return self.end(SessionEnd::Protocol(format!("peers with {p}")));
                }
                self.events.push_back(AgentEvent::Peers(peers))
            }
            (State::Established { .. }, HubFrame::Hubs(hubs)) => {
                if let Some(p) = wire::hubs_problem(&hubs) {
                    return self.end(SessionEnd::Protocol(format!("hubs with {p}")));
                }
                self.events.push_back(AgentEvent::Hubs(hubs))
            }
            (State::Established { .. }, HubFrame::Attach(req)) => {
                if let Some(p) = req.problem() {
                    return self.end(SessionEnd::Protocol(format!("an attach request with {p}")));
                }
                self.events.push_back(AgentEvent::Attach(req))
            }
            (State::Ended, _) => {}
        }
    }

    /// What the device runs now. Sent when it differs from the last report sent.
    pub fn set_report(&mut self, now: Instant, report: AgentReport) {
        self.report = report;
        if self.is_established() {
            self.send_report(now);
        }
    }

    /// Sends what the containers use, if the session is up and the hub speaks
    /// version 4 or later (an older one has no place for it); `false` otherwise, and
    /// nothing is kept: the shell sends the next sample.
    pub fn send_usage(&mut self, now: Instant, usage: crate::wire::UsageReport) -> bool {
        self.is_established() && self.version >= 4 && self.queue(now, &AgentFrame::Usage(usage))
    }

    /// Sends the device's addresses on its site's network (hubs of protocol 5 and up
    /// only); `false` when not sent.
    pub fn send_addresses(&mut self, now: Instant, addresses: Vec<String>) -> bool {
        self.is_established() && self.version >= 5 && self.queue(now, &AgentFrame::Addresses(addresses))
    }

    fn send_report(&mut self, now: Instant) {
        if self.sent_report.as_ref() == Some(&self.report) {
            return;
        }
        let frame = AgentFrame::Report(self.report.clone());
        if self.queue(now, &frame) {
            self.sent_report = Some(self.report.clone());
        }
    }

    /// Queues a frame; any frame sent also proves liveness, so the heartbeat waits.
    fn queue(&mut self, now: Instant, frame: &AgentFrame) -> bool {
        match wire::encode_frame_for(self.version, frame) {
            Ok(bytes) => {
                self.transmit.push_back(bytes);
                if let State::Established { heartbeat_every, next_heartbeat } = &mut self.state {
                    *next_heartbeat = now + *heartbeat_every;
                }
                true
            }
            Err(e) => {
                self.end(SessionEnd::Protocol(format!("cannot encode a frame: {e}")));
                false
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitWelcome { deadline } if now >= deadline => {
                self.end(SessionEnd::TimedOut("the hub did not answer the hello".into()))
            }
            State::Established { next_heartbeat, .. } if now >= next_heartbeat => {
                self.heartbeat_seq += 1;
                let seq = self.heartbeat_seq;
                self.queue(now, &AgentFrame::Heartbeat { seq });
            }
            _ => {}
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitWelcome { deadline } => Some(deadline),
            State::Established { next_heartbeat, .. } => Some(next_heartbeat),
            State::Ended => None,
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    fn end(&mut self, why: SessionEnd) {
        if !self.is_ended() {
            self.state = State::Ended;
            self.events.push_back(AgentEvent::Ended(why));
        }
    }
}

fn frame_name(f: &HubFrame) -> &'static str {
    match f {
        HubFrame::Welcome(_) => "a welcome",
        HubFrame::Desired(_) => "a desired manifest",
        HubFrame::UpToDate { .. } => "up-to-date",
        HubFrame::Refused { .. } => "a refusal",
        HubFrame::RetryAfter { .. } => "retry-after",
        HubFrame::Renew { .. } => "a renewal request",
        HubFrame::Trust { .. } => "the CAs to trust",
        HubFrame::Attach(_) => "an attach request",
        HubFrame::Peers(_) => "the site's peers",
        HubFrame::Hubs(_) => "the cluster's hubs",
    }
}
