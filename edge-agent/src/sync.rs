//! The agent's side of desired-state sync. Level-triggered: on every (re)connect the
//! agent says which desired revision it holds and the hub answers with what is newer;
//! while connected the hub pushes changes and the agent sends what it runs whenever
//! that changes, plus small heartbeats. Losing the link loses nothing: the agent keeps
//! converging on the last manifest it stored, and catches up on reconnect.

use crate::enrol::Identity;
use crate::state::StateDb;
use anyhow::{anyhow, bail};
use quinn::Connection;
use shared_proto::agent_state::HeldDesired;
use shared_proto::manifest::DesiredManifest;
use shared_proto::wire::{self, AgentFrame, AgentHello, AgentReport, HubFrame, StreamOpen};
use std::time::Duration;
use tokio::sync::watch;

/// How long the hub has to answer the hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// A session that lasted this long counts as healthy: the next reconnect starts fast.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

pub struct SyncChannels {
    /// Manifests received from the hub, already stored on disk.
    pub desired: watch::Sender<DesiredManifest>,
    /// What the agent runs, published by the reconcile loop.
    pub report: watch::Receiver<AgentReport>,
    /// The current connection, for image pulls.
    pub connection: watch::Sender<Option<Connection>>,
}

/// Runs forever: connect, sync, and reconnect with back-off when the link drops.
pub async fn run(
    identity: &Identity,
    hub: &str,
    endpoint: quinn::Endpoint,
    db: StateDb,
    mut ch: SyncChannels,
) -> anyhow::Result<()> {
    let tls = provisioning::tls::device_quic_client_config(
        identity.cert_chain.clone(),
        identity.key.clone_key(),
        &identity.ca,
    )?;
    let quic = crate::transport::client_config(tls)?;
    let mut backoff = crate::transport::Backoff::new(Duration::from_secs(30));
    loop {
        let started = tokio::time::Instant::now();
        match crate::transport::connect(&endpoint, hub, quic.clone()).await {
            Ok(conn) => {
                ch.connection.send_replace(Some(conn.clone()));
                let result = session(identity, &conn, &db, &mut ch).await;
                ch.connection.send_replace(None);
                conn.close(0u32.into(), b"session ended");
                match result {
                    Ok(()) => tracing::info!("hub closed the session"),
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "sync session ended"),
                }
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot reach the hub"),
        }
        if started.elapsed() >= HEALTHY_SESSION {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

async fn session(
    identity: &Identity,
    conn: &Connection,
    db: &StateDb,
    ch: &mut SyncChannels,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let held = ch.desired.borrow().revision;
    let hello = AgentHello {
        device: identity.device.clone(),
        facts: crate::facts::device_facts(),
        held_revision: held,
        boot_id: crate::facts::boot_id(),
    };
    wire::write_frame(&mut send, &StreamOpen::Sync(hello)).await?;
    let welcome =
        match tokio::time::timeout(WELCOME_TIMEOUT, wire::read_frame::<HubFrame, _>(&mut recv)).await {
            Err(_) => bail!("the hub did not answer within {WELCOME_TIMEOUT:?}"),
            Ok(frame) => match frame? {
                Some(HubFrame::Welcome(w)) => w,
                Some(HubFrame::Refused { message }) => bail!("the hub refused this device: {message}"),
                Some(other) => bail!("protocol error: expected a welcome, got {other:?}"),
                None => bail!("the hub closed the stream"),
            },
        };
    tracing::info!(hub_version = %welcome.hub_version, held, "connected to the hub");
    let heartbeat_every = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(1000)));
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let report = ch.report.borrow_and_update().clone();
    wire::write_frame(&mut send, &AgentFrame::Report(report)).await?;
    loop {
        tokio::select! {
            frame = wire::read_frame::<HubFrame, _>(&mut recv) => match frame? {
                Some(HubFrame::Desired(m)) => accept_desired(identity, db, ch, m).await?,
                Some(HubFrame::UpToDate { revision }) => tracing::debug!(revision, "desired state up to date"),
                Some(HubFrame::Refused { message }) => bail!("the hub refused this device: {message}"),
                Some(HubFrame::Welcome(_)) => bail!("protocol error: a second welcome"),
                None => return Ok(()),
            },
            changed = ch.report.changed() => {
                changed.map_err(|_| anyhow!("the reconcile loop stopped"))?;
                let report = ch.report.borrow_and_update().clone();
                wire::write_frame(&mut send, &AgentFrame::Report(report)).await?;
            }
            _ = heartbeat.tick() => {
                seq += 1;
                wire::write_frame(&mut send, &AgentFrame::Heartbeat { seq }).await?;
            }
        }
    }
}

/// Stores a new manifest durably, then hands it to the reconcile loop: after a crash
/// the agent never runs something it has not recorded.
async fn accept_desired(
    identity: &Identity,
    db: &StateDb,
    ch: &SyncChannels,
    m: DesiredManifest,
) -> anyhow::Result<()> {
    if m.device != identity.device {
        bail!("protocol error: the hub sent the manifest of {:?}", m.device);
    }
    tracing::info!(revision = m.revision, apps = m.apps.len(), "new desired state");
    let held = HeldDesired { manifest: m.clone(), received_at: crate::agent::now() };
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.set_desired(&held)).await??;
    ch.desired.send_replace(m);
    Ok(())
}
