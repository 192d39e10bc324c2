//! The hub's side of one device's sync stream.
//!
//! The shell reads the stream's first frame (a `Sync` hello), checks the device
//! against its store and its admission limits, and then either welcomes the device,
//! refuses it, or asks it to come back later. After the welcome the shell calls
//! [`HubSession::handle_manifest`] with the device's current manifest whenever it may
//! have changed; the session alone decides what to send, with [`desired_frame`], so
//! the first answer and every later push follow one rule. Reports and heartbeats come
//! out as events; a device that stays silent past the deadline is timed out.

use super::SessionEnd;
use crate::manifest::DesiredManifest;
use crate::wire::{
    self, AgentFrame, AgentHello, AgentReport, AppPeers, AttachRequest, FrameDecoder, HubEndpoint, HubFrame,
    HubWelcome,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct HubSessionConfig {
    /// How often the device should send a heartbeat when it has nothing else to say.
    pub heartbeat_interval: Duration,
    /// A device silent this long is gone: its session ends.
    pub silence_timeout: Duration,
    pub hub_version: String,
    /// Most containers one report may list.
    pub max_report_containers: usize,
    /// A device asked to renew its certificate that is still connected with the old
    /// one this long after is asked again.
    pub renew_repeat: Duration,
}

impl HubSessionConfig {
    pub fn new(heartbeat_interval: Duration, hub_version: impl Into<String>) -> HubSessionConfig {
        HubSessionConfig {
            heartbeat_interval,
            // Three missed heartbeats.
            silence_timeout: (heartbeat_interval * 3).max(Duration::from_secs(2)),
            hub_version: hub_version.into(),
            max_report_containers: 1024,
            renew_repeat: Duration::from_secs(60),
        }
    }
}

/// What the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// What the device runs: record it (in memory; transitions reach the store).
    Report(AgentReport),
    /// The device is alive.
    Heartbeat,
    /// What its containers use: keep it in memory only.
    Usage(crate::wire::UsageReport),
    /// Its addresses on the site's network (memory only).
    Addresses(Vec<String>),
    /// The session is over; the shell closes the stream.
    Ended(SessionEnd),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Hello read; the shell has not yet welcomed or refused the device.
    Hello,
    Open,
    Ended,
}

#[derive(Debug)]
pub struct HubSession {
    device: String,
    /// The protocol version the device speaks; everything is written in it.
    version: u32,
    state: State,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<HubEvent>,
    /// The revision the device holds, as far as the hub knows: from the hello, then
    /// whatever was sent since.
    agent_holds: u64,
    last_heard: Instant,
    /// When to ask the device for a new certificate, if ever.
    renew_at: Option<Instant>,
    /// The peers last sent (repeats are not sent).
    peers_sent: Option<Vec<AppPeers>>,
    /// The hubs last named (repeats are not sent).
    hubs_sent: Option<Vec<HubEndpoint>>,
    cfg: HubSessionConfig,
}

/// What to tell a device that holds `held`, given the store's manifest for it, or
/// `None` when there is nothing to say. `first` is the answer to the hello, which is
/// always sent. Differences in either direction are sent: after a restore from backup
/// the hub's revision may be lower than the device's, and the hub is the source of
/// truth. A device whose manifest is gone (deleted) is sent an empty one.
pub fn desired_frame(
    held: u64,
    manifest: Option<&DesiredManifest>,
    device: &str,
    first: bool,
) -> Option<HubFrame> {
    match manifest {
        Some(m) if m.revision == held => first.then_some(HubFrame::UpToDate { revision: held }),
        Some(m) => Some(HubFrame::Desired(m.clone())),
        None if held == 0 => first.then_some(HubFrame::UpToDate { revision: 0 }),
        None => Some(HubFrame::Desired(DesiredManifest {
            device: device.to_string(),
            revision: 0,
            ..Default::default()
        })),
    }
}

impl HubSession {
    /// A session for `device` (the name on its certificate) after its hello, written
    /// at `version`. `decoder` holds whatever followed the hello on the stream.
    pub fn new(
        now: Instant,
        cfg: HubSessionConfig,
        device: &str,
        hello: &AgentHello,
        version: u32,
        decoder: FrameDecoder,
    ) -> HubSession {
        let mut s = HubSession {
            device: device.to_string(),
            version,
            state: State::Hello,
            decoder,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            agent_holds: hello.held_revision,
            last_heard: now,
            renew_at: None,
            peers_sent: None,
            hubs_sent: None,
            cfg,
        };
        if let Some(p) = hello.problem() {
            let msg = format!("bad hello: {p}");
            s.queue(&HubFrame::Refused { message: msg.clone() });
            s.end(SessionEnd::Protocol(msg));
        } else if hello.device != device {
            let msg = format!("hello names device {:?} but the certificate is for {device:?}", hello.device);
            s.queue(&HubFrame::Refused { message: msg.clone() });
            s.end(SessionEnd::Protocol(msg));
        }
        s
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Welcomes the device and answers its hello with `manifest`, its current one.
    pub fn welcome(&mut self, now: Instant, manifest: Option<&DesiredManifest>) {
        if self.state != State::Hello {
            return;
        }
        let welcome = HubWelcome {
            hub_version: self.cfg.hub_version.clone(),
            heartbeat_interval_ms: u32::try_from(self.cfg.heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
        };
        self.queue(&HubFrame::Welcome(welcome));
        self.state = State::Open;
        self.last_heard = now;
        self.send_desired(manifest, true);
        // The decoder may hold frames that came in the same read as the hello. Read
        // them now: otherwise they wait for more bytes that may never come, and an
        // EOF right behind them is taken for a stream cut inside a frame.
        self.handle_bytes(now, &[]);
    }

    /// Tells the device which CAs to trust for the hub (after the welcome; devices
    /// older than protocol version 3 keep the one they enrolled with).
    pub fn send_trust(&mut self, ca_der: Vec<Vec<u8>>) {
        if self.state == State::Open && self.version >= 3 {
            self.queue(&HubFrame::Trust { ca_der });
        }
    }

    /// Asks the device to open an attach stream for `req` (a log or an exec). Devices
    /// older than protocol version 5 cannot, and are not asked: the error says so.
    pub fn attach(&mut self, req: AttachRequest) -> Result<(), String> {
        if self.state != State::Open {
            return Err(format!("device {} is not connected", self.device));
        }
        if self.version < 5 {
            return Err(format!(
                "the agent on {} speaks protocol {}: logs and exec need version 5 (upgrade the agent)",
                self.device, self.version
            ));
        }
        self.queue(&HubFrame::Attach(req));
        Ok(())
    }

    /// Tells the device where its published ports are balanced to, when that changed
    /// since it was last told (devices older than protocol version 5 are not told).
    pub fn send_peers(&mut self, peers: Vec<AppPeers>) {
        if self.state != State::Open || self.version < 5 || self.peers_sent.as_ref() == Some(&peers) {
            return;
        }
        self.queue(&HubFrame::Peers(peers.clone()));
        self.peers_sent = Some(peers);
    }

    /// Names the cluster's hubs to the device, when they changed since it was last
    /// told (devices older than protocol version 6 are not told; an empty list, a hub
    /// that knows no addresses, says nothing).
    pub fn send_hubs(&mut self, hubs: &[HubEndpoint]) {
        let hubs = &hubs[..hubs.len().min(wire::MAX_HUBS)];
        if self.state != State::Open
            || self.version < 6
            || hubs.is_empty()
            || self.hubs_sent.as_deref() == Some(hubs)
        {
            return;
        }
        self.queue(&HubFrame::Hubs(hubs.to_vec()));
        self.hubs_sent = Some(hubs.to_vec());
    }

    /// Refuses the device: it is not (or no longer) enrolled here.
    pub fn refuse(&mut self, message: impl Into<String>) {
        let message = message.into();
        self.queue(&HubFrame::Refused { message: message.clone() });
        self.end(SessionEnd::Refused(message));
    }

    /// Asks the device to come back after `after` (a reconnect storm is being spread).
    pub fn retry_after(&mut self, after: Duration, message: impl Into<String>) {
        let message = message.into();
        let after_ms = u32::try_from(after.as_millis()).unwrap_or(u32::MAX);
        self.queue(&HubFrame::RetryAfter { after_ms, message: message.clone() });
        self.end(SessionEnd::RetryAfter { after, message });
    }

    /// When the device's certificate should be renewed (`None`: not while this session
    /// lasts). The session asks the device then, and again every `renew_repeat` for as
    /// long as it stays connected with that certificate. Devices older than protocol
    /// version 3 cannot renew and are never asked.
    pub fn schedule_renewal(&mut self, at: Option<Instant>) {
        self.renew_at = at.filter(|_| self.version >= 3);
    }

    fn renewal_due(&self, now: Instant) -> bool {
        self.state == State::Open && self.renew_at.is_some_and(|at| now >= at)
    }

    /// The device's manifest may have changed; `manifest` is the current one.
    /// Stale or repeated notifications are harmless: only a difference is sent.
    pub fn handle_manifest(&mut self, _now: Instant, manifest: Option<&DesiredManifest>) {
        if self.state == State::Open {
            self.send_desired(manifest, false);
        }
    }

    fn send_desired(&mut self, manifest: Option<&DesiredManifest>, first: bool) {
        if let Some(frame) = desired_frame(self.agent_holds, manifest, &self.device, first) {
            if let HubFrame::Desired(m) = &frame {
                self.agent_holds = m.revision;
            }
            self.queue(&frame);
        }
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
                Err(e) => return self.end(SessionEnd::Protocol(format!("bad frame from the device: {e}"))),
            };
            self.last_heard = now;
            match wire::decode_frame_body::<AgentFrame>(&body) {
                Ok(AgentFrame::Heartbeat { .. }) => self.events.push_back(HubEvent::Heartbeat),
                Ok(AgentFrame::Report(r)) if r.containers.len() > self.cfg.max_report_containers => {
                    let msg = format!(
                        "a report lists {} containers, more than {}",
                        r.containers.len(),
                        self.cfg.max_report_containers
                    );
                    return self.end(SessionEnd::Protocol(msg));
                }
                Ok(AgentFrame::Report(r)) => match r.problem() {
                    Some(p) => return self.end(SessionEnd::Protocol(format!("bad report: {p}"))),
                    None => self.events.push_back(HubEvent::Report(r)),
                },
                Ok(AgentFrame::Usage(u)) => match u.problem() {
                    Some(p) => return self.end(SessionEnd::Protocol(format!("bad usage report: {p}"))),
                    None => self.events.push_back(HubEvent::Usage(u)),
                },
                Ok(AgentFrame::Addresses(a)) => match wire::addresses_problem(&a, wire::MAX_ADDRESSES) {
                    Some(p) => return self.end(SessionEnd::Protocol(format!("bad addresses: {p}"))),
                    None => self.events.push_back(HubEvent::Addresses(a)),
                },
                Err(e) => return self.end(SessionEnd::Protocol(format!("bad frame from the device: {e}"))),
            }
        }
    }

    /// The device ended the stream.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.decoder.buffered() > 0 {
            self.end(SessionEnd::Protocol("the stream ended inside a frame".into()));
        } else {
            self.end(SessionEnd::PeerClosed);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Open && now >= self.last_heard + self.cfg.silence_timeout {
            let msg = format!("nothing heard from the device for {:?}", self.cfg.silence_timeout);
            return self.end(SessionEnd::TimedOut(msg));
        }
        if self.renewal_due(now) {
            self.renew_at = Some(now + self.cfg.renew_repeat);
            self.queue(&HubFrame::Renew { reason: "the certificate is due for renewal".into() });
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = (self.state == State::Open).then(|| self.last_heard + self.cfg.silence_timeout)?;
        Some(match self.renew_at {
            Some(at) => silence.min(at),
            None => silence,
        })
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    fn queue(&mut self, frame: &HubFrame) {
        match wire::encode_frame_for(self.version, frame) {
            Ok(bytes) => self.transmit.push_back(bytes),
            // Only a manifest over the frame limit can fail; the controllers bound
            // manifests well below it, so this is a bug worth ending the session for.
            Err(e) => self.end(SessionEnd::Protocol(format!("cannot encode a frame for the device: {e}"))),
        }
    }

    fn end(&mut self, why: SessionEnd) {
        if self.state != State::Ended {
            self.state = State::Ended;
            self.events.push_back(HubEvent::Ended(why));
        }
    }
}
