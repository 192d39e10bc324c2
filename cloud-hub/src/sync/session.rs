//! The async shell around one device's [`HubSession`]: it admits or refuses the
//! device, feeds the session the bytes one reader task pulls off the stream, wakes it
//! when the fan-out says the device's manifest changed, writes what it queues and
//! records reports and heartbeats in the liveness table. Every decision is the
//! session's (`shared_proto::session`); this file only moves bytes and runs timers.

use super::SyncError;
use super::clones;
use super::fanout::ManifestNews;
use crate::state::HubState;
use shared_proto::manifest::DesiredManifest;
use shared_proto::session::{HubEvent, HubSession, HubSessionConfig, SessionEnd};
use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::wire::{AgentHello, FrameDecoder};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A device that does not take a frame within this long is not reading: give up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn current_manifest(state: &HubState, device: &str) -> Result<Option<DesiredManifest>, SyncError> {
    match state.store.get_local(StoreKind::Manifest, device)? {
        Some(Object::Manifest(m)) => Ok(Some(with_secrets(state, &m)?.into_owned())),
        _ => Ok(None),
    }
}

/// The manifest as the device gets it: the stored one names its `Secret`s without
/// their data, which is unsealed here, for this device's authenticated session only.
fn with_secrets<'a>(
    state: &HubState,
    m: &'a DesiredManifest,
) -> Result<std::borrow::Cow<'a, DesiredManifest>, SyncError> {
    if !m.configs.iter().any(|c| c.secret) {
        return Ok(std::borrow::Cow::Borrowed(m));
    }
    let mut out = m.clone();
    for c in out.configs.iter_mut().filter(|c| c.secret) {
        let sealed = match state.store.get_local(StoreKind::Secret, &c.name)? {
            Some(Object::Secret(s)) => s,
            _ => return Err(SyncError::Protocol(format!("secret {:?} of the manifest is gone", c.name))),
        };
        // Changed since the manifest was planned (its digest differs), the newer data
        // goes now; the manifest the planner writes next recreates the containers
        // again, with the same data.
        c.data = state.key.unseal(&sealed).map_err(|e| SyncError::Protocol(e.to_string()))?;
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// What the reader task hands over.
pub enum Read {
    Bytes(Vec<u8>),
    Eof,
    Failed(std::io::Error),
}

/// Owns the read half of a stream for its whole life, so a read is never cancelled
/// half-way: whatever arrives is handed over whole, in order. For TCP streams; QUIC
/// streams use [`spawn_quic_reader`].
pub fn spawn_reader<R>(mut reader: R) -> mpsc::Receiver<Read>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4 * 1024];
        loop {
            // When the session ends (a malformed frame, say), the receiver goes and so
            // does this task with its half of the stream: the connection closes even
            // if the peer never writes again.
            let msg = tokio::select! {
                read = reader.read(&mut buf) => match read {
                    Ok(0) => Read::Eof,
                    Ok(n) => Read::Bytes(buf[..n].to_vec()),
                    Err(e) => Read::Failed(e),
                },
                () = tx.closed() => return,
            };
            let last = !matches!(msg, Read::Bytes(_));
            if tx.send(msg).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

/// [`spawn_reader`] for a QUIC stream: it takes the chunks quinn already holds, so an
/// idle session keeps no read buffer of its own (ten thousand idle devices, ten
/// thousand buffers saved).
pub fn spawn_quic_reader(mut recv: quinn::RecvStream) -> mpsc::Receiver<Read> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            // As in `spawn_reader`: the stream goes when its session does.
            let msg = tokio::select! {
                read = recv.read_chunk(64 * 1024, true) => match read {
                    Ok(Some(chunk)) => Read::Bytes(chunk.bytes.to_vec()),
                    Ok(None) => Read::Eof,
                    Err(e) => Read::Failed(e.into()),
                },
                () = tx.closed() => return,
            };
            let last = !matches!(msg, Read::Bytes(_));
            if tx.send(msg).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

pub fn session_config(state: &HubState) -> HubSessionConfig {
    HubSessionConfig::new(state.config.heartbeat_interval, env!("CARGO_PKG_VERSION"))
}

/// Serves one device's sync stream until it ends. `decoder` holds what followed the
/// hello; `reads` is the stream's reader task.
#[allow(clippy::too_many_arguments)]
pub async fn serve<W>(
    state: Arc<HubState>,
    transport: crate::metrics::Transport,
    cert: provisioning::identity::DeviceCert,
    remote: std::net::SocketAddr,
    hello: AgentHello,
    version: u32,
    decoder: FrameDecoder,
    mut reads: mpsc::Receiver<Read>,
    mut writer: W,
) -> Result<(), SyncError>
where
    W: AsyncWrite + Unpin + Send,
{
    let clock = state.clock.clone();
    let device = cert.name.clone();
    let mut session =
        HubSession::new(clock.monotonic(), session_config(&state), &device, &hello, version, decoder);
    let mut registration = None;
    let book_id = state.sessions.next_id();
    let mut booked = false;
    if !session.is_ended() {
        if state.store.get_local(StoreKind::Device, &device)?.is_none() {
            session.refuse(format!(
                "device {device:?} is not enrolled with this hub (deleted?): re-enrol it with a new token"
            ));
        } else if let Err(wait) = state.admit_session(clock.monotonic()) {
            session.retry_after(wait, "the hub is taking back many devices at once");
        } else if let clones::Verdict::Clone { holder } =
            state.sessions.start(&cert.serial, &hello.boot_id, book_id, clock.monotonic())
        {
            tracing::warn!(%device, %remote, boot_id = %hello.boot_id, holder = %holder, "two machines hold one device's certificate; refusing the one that came back");
            record_conflict(&state, &device, &holder, &hello.boot_id, remote).await;
            session.refuse(format!(
                "another machine (boot {holder}) holds device {device:?} and is connected: two machines share one certificate, as a cloned SD card does; decommission or delete this device and enrol each machine with its own"
            ));
        } else {
            booked = true;
            // Register before reading the manifest, so no change can slip in between.
            let reg = state.fanout.register(&device);
            let live = state.live.connected(&device, hello.facts.clone(), hello.held_revision, clock.now());
            registration = Some((reg, live, state.metrics.session_opened(transport)));
            session.welcome(clock.monotonic(), current_manifest(&state, &device)?.as_ref());
            certificates_follow(&state, &cert, &mut session);
            session.send_hubs(&state.hubs.current());
            let state = state.clone();
            let cert = cert.clone();
            tokio::spawn(async move { drop_superseded(&state, &cert).await });
        }
    }
    // Logs and exec requests for this device come through its open session.
    let mut attach = registration.is_some().then(|| state.attach.register(&device));
    // Its site's peers, for the published ports of its isolated apps.
    let mut site = None;
    if registration.is_some()
        && let Some(Object::Device(d)) = state.store.get_local(StoreKind::Device, &device)?
        && !d.spec.site.is_empty()
    {
        let (membership, watch) = state.peers.join(&d.spec.site, &device);
        tell_peers(&state, &mut session, &membership);
        site = Some((membership, watch));
    }
    let result = drive(
        &state,
        &cert,
        &mut session,
        registration.as_mut().map(|(r, _, _)| &mut r.changes),
        attach.as_mut().map(|(q, _)| q),
        site.as_mut().map(|(m, w)| (&*m, w)),
        &mut reads,
        &mut writer,
    )
    .await;
    drop(attach);
    if let Some((m, _)) = &site {
        state.peers.leave(m);
    }
    if let Some((reg, live, connected)) = registration {
        state.fanout.unregister(&device, reg.id);
        state.live.disconnected(&device, live, clock.now());
        drop(connected);
    }
    if booked {
        state.sessions.end(&cert.serial, book_id);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
    result
}

/// Writes the conflict on the device, once per pair of machines (retries write nothing).
async fn record_conflict(
    state: &HubState,
    device: &str,
    holder: &str,
    refused: &str,
    remote: std::net::SocketAddr,
) {
    let current = match state.store.get_revisioned(StoreKind::Device, device).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => return tracing::warn!(%device, error = %e, "cannot record an identity conflict"),
    };
    let Object::Device(mut d) = current.object else { return };
    let boot_ids = vec![holder.to_string(), refused.to_string()];
    if d.status.identity_conflict.as_ref().is_some_and(|c| c.boot_ids == boot_ids) {
        return;
    }
    d.status.identity_conflict = Some(Box::new(shared_proto::IdentityConflict {
        since: state.clock.now(),
        boot_ids,
        refused_from: remote.to_string(),
    }));
    let cmd = StoreCommand::put(Object::Device(d), Precondition::RevisionIs(current.revision));
    if let Err(e) = state.store.write(cmd).await {
        tracing::warn!(%device, error = %e, "cannot record an identity conflict");
    }
}

/// Tells the device which CAs to trust and when to renew its certificate: after the
/// welcome, and again whenever the fleet's CAs change.
fn certificates_follow(
    state: &HubState,
    cert: &provisioning::identity::DeviceCert,
    session: &mut HubSession,
) {
    session.send_trust(state.pki.trusted_der());
    let due = super::pki::renewal_due(cert, state.config.device_cert_validity, state.pki.ca_changed_at());
    let wait = Duration::from_millis(due.0.saturating_sub(state.clock.now().0));
    session.schedule_renewal(Some(state.clock.monotonic() + wait));
}

/// The device connected with `cert`: certificates it was issued before this one
/// (renewals it completed) open nothing from now on. One write per renewal.
async fn drop_superseded(state: &HubState, cert: &provisioning::identity::DeviceCert) {
    // Almost always nothing to drop: tell from the local copy, without a read through
    // the leader (a reconnecting fleet would pay one per device).
    let superseded = |d: &shared_proto::Device| {
        let this = d.status.certificates.iter().find(|c| c.serial == cert.serial);
        this.is_some_and(|t| {
            d.status.certificates.iter().any(|c| c.serial != t.serial && c.issued_at <= t.issued_at)
        })
    };
    match state.store.get_local(StoreKind::Device, &cert.name) {
        Ok(Some(Object::Device(d))) if superseded(&d) => {}
        _ => return,
    }
    // A report or a transition may move the device meanwhile: read and try again.
    for _ in 0..8 {
        let Ok(Some(current)) = state.store.get_revisioned(StoreKind::Device, &cert.name).await else {
            return;
        };
        let Object::Device(mut d) = current.object else { return };
        let Some(this) = d.status.certificates.iter().find(|c| c.serial == cert.serial).cloned() else {
            return;
        };
        let before = d.status.certificates.len();
        d.status.certificates.retain(|c| c.serial == this.serial || c.issued_at > this.issued_at);
        if d.status.certificates.len() == before {
            return;
        }
        let cmd = StoreCommand::put(Object::Device(d), Precondition::RevisionIs(current.revision));
        match state.store.write(cmd).await {
            Ok(StoreOutcome::Applied { .. }) => {
                return tracing::info!(device = %cert.name, serial = %cert.serial, "the renewed certificate is in use; older ones are dropped");
            }
            Ok(_) => continue,
            // Tried again on the next connection.
            Err(e) => {
                return tracing::debug!(device = %cert.name, error = %e, "cannot drop superseded certificates");
            }
        }
    }
}

// What a session follows besides its stream: the manifest fan-out, logs and exec
// requests, its site's peers; each optional (a refused session follows none).
#[allow(clippy::too_many_arguments)]
async fn drive<W>(
    state: &HubState,
    cert: &provisioning::identity::DeviceCert,
    session: &mut HubSession,
    mut changes: Option<&mut tokio::sync::watch::Receiver<ManifestNews>>,
    mut asks: Option<&mut mpsc::Receiver<super::attach::SessionAsk>>,
    mut site: Option<(&super::peers::Membership, &mut tokio::sync::watch::Receiver<u64>)>,
    reads: &mut mpsc::Receiver<Read>,
    writer: &mut W,
) -> Result<(), SyncError>
where
    W: AsyncWrite + Unpin + Send,
{
    let clock = state.clock.clone();
    let device = session.device().to_string();
    let mut cas = state.pki.subscribe();
    let mut hubs = state.hubs.subscribe();
    loop {
        while let Some(bytes) = session.poll_transmit() {
            tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes))
                .await
                .map_err(|_| SyncError::Protocol("the device stopped reading".into()))??;
        }
        while let Some(event) = session.poll_event() {
            match event {
                HubEvent::Heartbeat => state.live.heartbeat(&device, clock.now()),
                HubEvent::Usage(u) => state.live.usage(&device, u, clock.now()),
                HubEvent::Report(r) => {
                    if let Some((m, _)) = &site {
                        state.peers.set_report(m, &r.containers);
                    }
                    state.live.report(&device, r.held_revision, r.containers, clock.now())
                }
                HubEvent::Addresses(a) => {
                    if let Some((m, _)) = &site {
                        state.peers.set_address(m, &a);
                    }
                }
                HubEvent::Ended(end) => {
                    let _ = writer.flush().await;
                    return match end {
                        SessionEnd::PeerClosed | SessionEnd::Refused(_) | SessionEnd::RetryAfter { .. } => {
                            Ok(())
                        }
                        SessionEnd::TimedOut(m) => Err(SyncError::TimedOut(m)),
                        SessionEnd::Protocol(m) => Err(SyncError::Protocol(m)),
                    };
                }
            }
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        let changed = async {
            match changes.as_deref_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let ask = async {
            match asks.as_deref_mut() {
                Some(q) => q.recv().await,
                None => std::future::pending().await,
            }
        };
        let site_moved = async {
            match site.as_mut() {
                Some((_, w)) => w.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            true = site_moved => {
                if let Some((m, _)) = &site {
                    tell_peers(state, session, m);
                }
            }
            Some((req, sent)) = ask => {
                let _ = sent.send(session.attach(req));
            }
            read = reads.recv() => match read {
                Some(Read::Bytes(b)) => session.handle_bytes(clock.monotonic(), &b),
                Some(Read::Eof) | None => session.handle_eof(clock.monotonic()),
                Some(Read::Failed(e)) => return Err(SyncError::Io(e)),
            },
            open = changed => {
                if !open {
                    // A newer session of the same device replaced this one.
                    return Ok(());
                }
                let news = changes.as_deref_mut().map(|rx| rx.borrow_and_update().clone()).unwrap_or_default();
                match news {
                    ManifestNews::Changed(Some(object)) => match object.as_ref() {
                        Object::Manifest(m) => {
                            session.handle_manifest(clock.monotonic(), Some(&*with_secrets(state, m)?))
                        }
                        _ => session.handle_manifest(clock.monotonic(), current_manifest(state, &device)?.as_ref()),
                    },
                    ManifestNews::Changed(None) => session.handle_manifest(clock.monotonic(), None),
                    ManifestNews::None | ManifestNews::ReadStore => {
                        session.handle_manifest(clock.monotonic(), current_manifest(state, &device)?.as_ref())
                    }
                }
                // Its apps may have changed: so may the peers it needs.
                if let Some((m, _)) = &site {
                    tell_peers(state, session, m);
                }
            }
            _ = sleep_until(deadline) => session.handle_timeout(clock.monotonic()),
            Ok(()) = cas.changed() => certificates_follow(state, cert, session),
            Ok(()) = hubs.changed() => {
                let list = hubs.borrow_and_update().clone();
                session.send_hubs(&list);
            }
        }
    }
}

/// Tells the device the site peers of its isolated apps with published ports (the
/// session sends only a change).
fn tell_peers(state: &HubState, session: &mut HubSession, m: &super::peers::Membership) {
    let apps = match state.store.get_local(StoreKind::Manifest, &m.device) {
        Ok(Some(Object::Manifest(manifest))) => super::peers::published_apps(&manifest),
        _ => vec![],
    };
    session.send_peers(state.peers.peers_of(&m.site, &m.device, &apps));
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
