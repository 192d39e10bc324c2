//! The async shell around the agent's [`AgentSession`]: connect (QUIC or the TCP
//! fallback), run one session, and reconnect with back-off when the link drops.
//! Level-triggered: on every (re)connect the agent says which revision it holds and
//! the hub answers with what is newer. Losing the link loses nothing: the agent keeps
//! converging on the last manifest it stored, and catches up on reconnect.
//!
//! Every protocol decision is the session's (`shared_proto::session`); this file
//! moves bytes, stores manifests durably before handing them on, and decides how long
//! to wait between attempts.

use crate::config::AgentConfig;
use crate::enrol::Identity;
use crate::renew::Renewal;
use crate::state::StateDb;
use crate::transport::{Backoff, Dialer, HubLink, hub_list};
use anyhow::anyhow;
use shared_proto::agent_state::HeldDesired;
use shared_proto::clock::SharedClock;
use shared_proto::manifest::DesiredManifest;
use shared_proto::session::{AgentEvent, AgentSession, AgentSessionConfig, SessionEnd};
use shared_proto::wire::{
    AgentHello, AgentReport, HubEndpoint, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, close_code,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// A session that lasted this long counts as healthy: the next reconnect starts fast.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// Longest wait between two connection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The hub unreachable this long is worth a warning (and again every `WARN_EVERY`).
const WARN_AFTER: Duration = Duration::from_secs(30);
const WARN_EVERY: Duration = Duration::from_secs(600);
/// A hub that does not take a frame within this long is not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SyncChannels {
    /// Manifests received from the hub, already stored on disk.
    pub desired: watch::Sender<DesiredManifest>,
    /// What the agent runs, published by the reconcile loop.
    pub report: watch::Receiver<AgentReport>,
    /// The current link to the hub, for image pulls.
    pub link: watch::Sender<Option<HubLink>>,
    /// What the containers use, published by the reconcile loop when worth sending.
    pub usage: watch::Receiver<Option<shared_proto::wire::UsageReport>>,
    /// Serves the hub's logs and exec requests (`None`: refuse them).
    pub attach: Option<crate::exec::AttachContext>,
    /// The device network: its site peers go there (`None`: not kept).
    pub net: Option<std::sync::Arc<crate::net::device::DeviceNet>>,
}

/// Tracks how long the hub has been out of reach, to warn when it matters.
#[derive(Debug, Default)]
struct Reachability {
    since: Option<Instant>,
    warned_at: Option<Instant>,
}

impl Reachability {
    /// A session ended at `at`: the hub is out of reach from then until a new one.
    fn lost(&mut self, at: Instant) {
        self.since.get_or_insert(at);
    }

    fn failed(&mut self, now: Instant, why: &str) {
        let since = *self.since.get_or_insert(now);
        let out_for = now.saturating_duration_since(since);
        let due = self.warned_at.is_none_or(|w| now.saturating_duration_since(w) >= WARN_EVERY);
        if out_for >= WARN_AFTER && due {
            self.warned_at = Some(now);
            tracing::warn!(
                unreachable_for = %humantime_secs(out_for),
                reason = %why,
                "the hub has been unreachable; containers keep running on the last desired state"
            );
        } else {
            tracing::debug!(reason = %why, "cannot reach the hub");
        }
    }

    fn reached(&mut self) {
        if let Some(since) = self.since.take()
            && self.warned_at.is_some()
        {
            tracing::info!(after = %humantime_secs(since.elapsed()), "the hub is reachable again");
        }
        self.warned_at = None;
    }
}

fn humantime_secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// How one session went.
#[derive(Default)]
struct Outcome {
    welcomed: bool,
    end: Option<Result<SessionEnd, anyhow::Error>>,
    /// The certificate was renewed during the session: reconnect with it.
    renewed: Option<Identity>,
    /// The hub named new CAs to trust (already stored).
    trusted: Option<Vec<rustls_pki_types::CertificateDer<'static>>>,
    /// The hub named the cluster's hubs (already stored).
    hubs: Option<Vec<HubEndpoint>>,
}

fn dialer_for(
    config: &AgentConfig,
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    known: &[HubEndpoint],
) -> anyhow::Result<Dialer> {
    Dialer::new(endpoint.clone(), &hub_list(&config.hub_endpoint(), known), identity.client_config()?)
}

/// Runs forever: connect, sync, and reconnect with back-off when the link drops;
/// renew the certificate when the hub asks, or when it expired while offline.
pub async fn run(
    config: &AgentConfig,
    mut identity: Identity,
    endpoint: quinn::Endpoint,
    db: StateDb,
    clock: SharedClock,
    mut ch: SyncChannels,
) -> anyhow::Result<()> {
    // The cluster's hubs as last named, kept across restarts.
    let mut known: Vec<HubEndpoint> = match db.known_hubs() {
        Ok(k) => k.map(|k| k.hubs).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster's hubs; starting with the configured one");
            vec![]
        }
    };
    let mut dialer = dialer_for(config, &endpoint, &identity, &known)?;
    let mut backoff = Backoff::new(MAX_BACKOFF);
    let mut reach = Reachability::default();
    let mut version = PROTOCOL_VERSION;
    // The hub said the certificate expired (whatever this device's clock says).
    let mut told_expired = false;
    let mut quarantined = false;
    loop {
        let started = clock.monotonic();
        if told_expired || identity.not_after().is_some_and(|t| clock.now() >= t) {
            let wait = match dialer.connect().await {
                Err(e) => {
                    reach.failed(clock.monotonic(), &format!("{e:#}"));
                    backoff.next_wait()
                }
                Ok(link) => {
                    let renewal = crate::renew::renew(config, &identity, &link).await;
                    link.close(b"renewal");
                    match renewal {
                        Ok(Renewal::Renewed(new)) => {
                            if quarantined {
                                tracing::info!(
                                    "approved: the device has a new certificate and rejoins the hub"
                                );
                            }
                            identity = new;
                            dialer = dialer_for(config, &endpoint, &identity, &known)?;
                            (told_expired, quarantined) = (false, false);
                            Duration::ZERO
                        }
                        Ok(Renewal::Pending { retry_after, message }) => {
                            if !quarantined {
                                tracing::warn!(%message, "quarantined: the certificate expired while the hub was out of reach; containers keep running until an operator approves the device");
                            }
                            quarantined = true;
                            retry_after
                        }
                        Ok(Renewal::Refused(message)) => {
                            tracing::error!(%message, "the hub refuses to renew this device's certificate; enrol it anew with a fresh token");
                            MAX_BACKOFF
                        }
                        Err(e) => {
                            reach.failed(clock.monotonic(), &format!("renewal: {e:#}"));
                            backoff.next_wait()
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
            continue;
        }
        let wait = match dialer.connect().await {
            Err(e) => {
                reach.failed(clock.monotonic(), &format!("{e:#}"));
                backoff.next_wait()
            }
            Ok(link) => {
                ch.link.send_replace(Some(link.clone()));
                let mut outcome = session(config, &identity, &link, version, &db, &clock, &mut ch).await;
                ch.link.send_replace(None);
                link.close(b"session ended");
                if let Some(hubs) = outcome.hubs.take()
                    && hubs != known
                {
                    known = hubs;
                    if let Err(e) = dialer.set_hubs(&hub_list(&config.hub_endpoint(), &known)) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot use the hubs the cluster named");
                    }
                }
                if let Some(cas) = outcome.trusted.take() {
                    identity.trusted = cas;
                    dialer = dialer_for(config, &endpoint, &identity, &known)?;
                }
                if let Some(new) = outcome.renewed.take() {
                    identity = new;
                    dialer = dialer_for(config, &endpoint, &identity, &known)?;
                    tokio::time::sleep(Duration::ZERO).await;
                    continue;
                }
                if link.hub_close_code() == Some(u64::from(close_code::CERT_EXPIRED)) {
                    tracing::warn!("the hub says this device's certificate expired; asking for a new one");
                    told_expired = true;
                    continue;
                }
                let end = outcome.end.unwrap_or_else(|| Err(anyhow!("the session ended without a reason")));
                if outcome.welcomed {
                    reach.reached();
                    reach.lost(clock.monotonic());
                    if clock.monotonic().saturating_duration_since(started) >= HEALTHY_SESSION {
                        backoff.reset();
                    }
                }
                match end {
                    Ok(SessionEnd::RetryAfter { after, message }) => {
                        tracing::info!(%message, after_ms = after.as_millis() as u64, "the hub asked to come back later");
                        // The hub already spread the fleet out; a little jitter on top.
                        after + after.mul_f64(crate::transport::random_unit() / 10.0)
                    }
                    Ok(SessionEnd::PeerClosed) if outcome.welcomed => {
                        tracing::info!("the hub closed the session");
                        backoff.next_wait()
                    }
                    end => {
                        let why = match &end {
                            Ok(e) => e.to_string(),
                            Err(e) => format!("{e:#}"),
                        };
                        let code = link.hub_close_code();
                        let is = |c: u32| code == Some(u64::from(c));
                        let old_hub = !outcome.welcomed
                            && (is(close_code::PROTOCOL) || is(close_code::UNSUPPORTED_VERSION))
                            && version > MIN_PROTOCOL_VERSION;
                        if is(close_code::REVOKED) {
                            // Permanent until an operator acts; keep the workloads
                            // running and keep asking, slowly.
                            tracing::error!(
                                "the hub no longer accepts this device's certificate: the device was deleted, or enrolled again with another key; enrol it anew with a fresh token"
                            );
                            reach.failed(clock.monotonic(), &why);
                            MAX_BACKOFF
                        } else if old_hub {
                            version -= 1;
                            tracing::info!(
                                version,
                                "the hub speaks an older protocol; speaking version {version}"
                            );
                            Duration::ZERO
                        } else if outcome.welcomed {
                            if code.is_none() {
                                // No word from the hub: it may be gone; another first.
                                dialer.avoid_current();
                            }
                            tracing::info!(reason = %why, "sync session ended; reconnecting");
                            reach.failed(clock.monotonic(), &why);
                            backoff.next_wait()
                        } else {
                            reach.failed(clock.monotonic(), &why);
                            backoff.next_wait()
                        }
                    }
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

async fn session(
    config: &AgentConfig,
    identity: &Identity,
    link: &HubLink,
    version: u32,
    db: &StateDb,
    clock: &SharedClock,
    ch: &mut SyncChannels,
) -> Outcome {
    let mut outcome = Outcome::default();
    let end = drive(config, identity, link, version, db, clock, ch, &mut outcome).await;
    outcome.end = Some(end);
    outcome
}

/// What the reader task hands over.
enum Read {
    Bytes(Vec<u8>),
    Eof,
    Failed(std::io::Error),
}

/// Owns the read half for the stream's whole life, so no read is ever cut short.
fn spawn_reader(mut reader: crate::transport::BoxRead) -> mpsc::Receiver<Read> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let msg = match reader.read(&mut buf).await {
                Ok(0) => Read::Eof,
                Ok(n) => Read::Bytes(buf[..n].to_vec()),
                Err(e) => Read::Failed(e),
            };
            let last = !matches!(msg, Read::Bytes(_));
            if tx.send(msg).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    config: &AgentConfig,
    identity: &Identity,
    link: &HubLink,
    version: u32,
    db: &StateDb,
    clock: &SharedClock,
    ch: &mut SyncChannels,
    outcome: &mut Outcome,
) -> anyhow::Result<SessionEnd> {
    let (reader, mut writer) = link.open_stream().await?;
    let mut reads = spawn_reader(reader);
    let hello = AgentHello {
        device: identity.device.clone(),
        facts: crate::facts::device_facts(),
        held_revision: ch.desired.borrow().revision,
        boot_id: crate::facts::boot_id(),
    };
    let report = ch.report.borrow_and_update().clone();
    let cfg = AgentSessionConfig { heartbeat_spread: crate::transport::random_unit(), ..Default::default() };
    let mut s = AgentSession::new(clock.monotonic(), hello, version, report, &cfg);
    // The addresses last sent, and when to look again.
    let mut addresses: Vec<String> = vec![];
    let mut address_check = tokio::time::interval(crate::net::ADDRESS_CHECK);
    address_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A renewal the hub asked for, under way beside the session.
    let mut renewing: Option<
        std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Renewal>> + Send + '_>>,
    > = None;
    loop {
        while let Some(bytes) = s.poll_transmit() {
            tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes))
                .await
                .map_err(|_| anyhow!("the hub stopped reading"))??;
        }
        while let Some(event) = s.poll_event() {
            match event {
                AgentEvent::Welcomed { hub_version } => {
                    outcome.welcomed = true;
                    tracing::info!(%hub_version, transport = %link.transport(), version = s.version(), "connected to the hub");
                    let usage = ch.usage.borrow_and_update().clone();
                    if let Some(u) = usage {
                        s.send_usage(clock.monotonic(), u);
                    }
                    if let Some(net) = &ch.net {
                        let now = crate::net::site_addresses(&net.cfg);
                        s.send_addresses(clock.monotonic(), now.clone());
                        addresses = now;
                    }
                }
                AgentEvent::Desired(m) => accept_desired(db, clock, ch, m).await?,
                AgentEvent::UpToDate { revision } => tracing::debug!(revision, "desired state up to date"),
                AgentEvent::Renew { reason } => {
                    if renewing.is_none() {
                        tracing::info!(%reason, "the hub asks for a certificate renewal");
                        renewing = Some(Box::pin(crate::renew::renew(config, identity, link)));
                    }
                }
                AgentEvent::Trust { ca_der } => match crate::renew::store_trusted(config, &ca_der) {
                    Ok(Some(cas)) => outcome.trusted = Some(cas),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot store the CAs the hub named"),
                },
                AgentEvent::Peers(peers) => {
                    if let Some(net) = &ch.net {
                        match net.set_site_peers(peers) {
                            // Wake the reconcile loop: the ruleset changes.
                            Ok(true) => ch.desired.send_modify(|_| {}),
                            Ok(false) => {}
                            Err(e) => tracing::warn!(error = %e, "cannot keep the site's peers"),
                        }
                    }
                }
                AgentEvent::Hubs(hubs) => {
                    let record = shared_proto::agent_state::KnownHubs { hubs: hubs.clone() };
                    let db = db.clone();
                    match tokio::task::spawn_blocking(move || db.set_known_hubs(&record)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot keep the cluster's hubs"),
                        Err(e) => tracing::warn!(error = %e, "cannot keep the cluster's hubs"),
                    }
                    if outcome.hubs.as_ref() != Some(&hubs) {
                        tracing::info!(hubs = hubs.len(), "the hub named the cluster's hubs");
                    }
                    outcome.hubs = Some(hubs);
                }
                AgentEvent::Attach(req) => match &ch.attach {
                    Some(ctx) => {
                        tokio::spawn(crate::exec::serve(ctx.clone(), link.clone(), req));
                    }
                    None => tracing::warn!("the hub asked for logs or exec, which this agent does not serve"),
                },
                AgentEvent::Ended(end) => {
                    let _ = writer.shutdown().await;
                    return Ok(end);
                }
            }
        }
        let deadline = s.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            read = reads.recv() => match read {
                Some(Read::Bytes(b)) => s.handle_bytes(clock.monotonic(), &b),
                Some(Read::Eof) | None => s.handle_eof(clock.monotonic()),
                Some(Read::Failed(e)) => return Err(anyhow!(e).context("reading from the hub")),
            },
            changed = ch.report.changed() => {
                changed.map_err(|_| anyhow!("the reconcile loop stopped"))?;
                let report = ch.report.borrow_and_update().clone();
                s.set_report(clock.monotonic(), report);
            }
            _ = address_check.tick() => {
                if let Some(net) = &ch.net {
                    let now = crate::net::site_addresses(&net.cfg);
                    if now != addresses && s.send_addresses(clock.monotonic(), now.clone()) {
                        addresses = now;
                    }
                }
            }
            changed = ch.usage.changed() => {
                changed.map_err(|_| anyhow!("the reconcile loop stopped"))?;
                let usage = ch.usage.borrow_and_update().clone();
                if let Some(u) = usage {
                    s.send_usage(clock.monotonic(), u);
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => s.handle_timeout(clock.monotonic()),
            renewal = async { renewing.as_mut().expect("guarded").await }, if renewing.is_some() => {
                renewing = None;
                match renewal {
                    Ok(Renewal::Renewed(new)) => {
                        // Reconnect with the new certificate: the hub drops the old one
                        // once it sees the new one in use.
                        outcome.renewed = Some(new);
                        let _ = writer.shutdown().await;
                        return Ok(SessionEnd::PeerClosed);
                    }
                    Ok(Renewal::Pending { message, .. } | Renewal::Refused(message)) => {
                        tracing::warn!(%message, "the hub did not renew the certificate");
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "certificate renewal failed; the hub will ask again"),
                }
            }
        }
    }
}

/// Stores a new manifest durably, then hands it to the reconcile loop: after a crash
/// the agent never runs something it has not recorded.
async fn accept_desired(
    db: &StateDb,
    clock: &SharedClock,
    ch: &SyncChannels,
    m: DesiredManifest,
) -> anyhow::Result<()> {
    tracing::info!(revision = m.revision, apps = m.apps.len(), "new desired state");
    let held = HeldDesired { manifest: m.clone(), received_at: clock.now() };
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.set_desired(&held)).await??;
    ch.desired.send_replace(m);
    Ok(())
}
