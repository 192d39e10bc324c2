//! One simulated agent: a real device identity (its own key, a certificate the hub
//! signed from its CSR), a real QUIC connection with mutual TLS, and the agent's own
//! sync core (`shared_proto::session::AgentSession`) in a thin shell that applies
//! every desired manifest at once and reports it running, with no containers.
//! Reconnects like the real agent: full-jitter back-off, or the hub's `RetryAfter`; and
//! like it, keeps the hubs the cluster names and moves to another when its own is gone.

use super::stats::SimStats;
use crate::sync::session::{Read, spawn_quic_reader};
use anyhow::{Context, anyhow, bail};
use provisioning::device_key::DeviceKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shared_proto::clock::SharedClock;
use shared_proto::manifest::{ContainerPhase, DesiredManifest, ObservedContainer};
use shared_proto::session::{AgentEvent, AgentSession, AgentSessionConfig, SessionEnd};
use shared_proto::wire::{
    self, AgentHello, AgentReport, DeviceFacts, EnrolReply, EnrolRequest, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, StreamOpen,
};
use shared_proto::{Bytes, Capacity, CpuMillis};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Below NAT UDP timeouts, as the real agent.
const KEEP_ALIVE: Duration = Duration::from_secs(25);
const IDLE_TIMEOUT: Duration = Duration::from_secs(40);

/// A simulated device's credentials.
pub struct SimIdentity {
    pub name: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl SimIdentity {
    /// Loads an identity kept by an earlier run.
    pub fn load(dir: &Path, name: &str) -> Option<SimIdentity> {
        let key = std::fs::read_to_string(dir.join(format!("{name}.key"))).ok()?;
        let crt = std::fs::read_to_string(dir.join(format!("{name}.crt"))).ok()?;
        Some(SimIdentity {
            name: name.to_string(),
            chain: provisioning::pem::decode_certs(&crt).ok()?,
            key: DeviceKey::from_pem(&key).ok()?.private_key_der(),
        })
    }
}

pub fn facts(name: &str) -> DeviceFacts {
    DeviceFacts {
        arch: "amd64".into(),
        os: "linux".into(),
        agent_version: concat!("sim-", env!("CARGO_PKG_VERSION")).into(),
        capacity: Capacity { cpu: CpuMillis(4000), memory: Bytes(4 << 30) },
        hostname: name.to_string(),
    }
}

/// `host` of `host:port`, the TLS server name.
pub fn server_name(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

pub fn client_config(tls: Arc<rustls::ClientConfig>) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // As the real agent: each at its own pace, 80–100 % of the interval.
    transport.keep_alive_interval(Some(KEEP_ALIVE.mul_f64(0.8 + 0.2 * unit())));
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into()?));
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    hub: SocketAddr,
    name: &str,
    config: quinn::ClientConfig,
) -> anyhow::Result<quinn::Connection> {
    let connecting = endpoint.connect_with(config, hub, name)?;
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow!("no answer from the hub within {CONNECT_TIMEOUT:?}"))?
        .context("connecting to the hub")
}

/// Enrols one simulated device with a key of its own; keeps it in `keep` if given.
pub async fn enrol(
    endpoint: &quinn::Endpoint,
    hub: SocketAddr,
    hub_name: &str,
    token: &str,
    name: &str,
    keep: Option<&Path>,
) -> anyhow::Result<SimIdentity> {
    let parsed =
        provisioning::token::EnrolmentToken::parse(token).map_err(|e| anyhow!("enrolment token: {e}"))?;
    let tls = provisioning::tls::enrolment_client_config(parsed.ca_fingerprint())?;
    let key = DeviceKey::generate()?;
    let request = EnrolRequest {
        token: token.to_string(),
        device_name: name.to_string(),
        csr_der: key.csr_der(name)?,
        facts: facts(name),
        labels: Default::default(),
    };
    let mut wait = Duration::from_millis(200);
    let reply = loop {
        let attempt = async {
            let conn = connect(endpoint, hub, hub_name, client_config(tls.clone())?).await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            wire::write_frame_for(&mut send, MIN_PROTOCOL_VERSION, &StreamOpen::Enrol(request.clone()))
                .await?;
            let reply =
                tokio::time::timeout(Duration::from_secs(30), wire::read_frame::<EnrolReply, _>(&mut recv))
                    .await
                    .map_err(|_| anyhow!("no enrolment answer within 30s"))??;
            conn.close(0u32.into(), b"enrolled");
            anyhow::Ok(reply)
        };
        match attempt.await {
            Ok(Some(EnrolReply::Refused { reason: wire::EnrolRefusal::Unavailable, .. })) | Err(_) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            Ok(Some(r)) => break r,
            Ok(None) => bail!("the hub closed the enrolment stream"),
        }
    };
    let chain = match reply {
        EnrolReply::Accepted { cert_chain_der, .. } => {
            cert_chain_der.into_iter().map(CertificateDer::from).collect::<Vec<_>>()
        }
        EnrolReply::Refused { message, .. } => bail!("enrolment of {name} refused: {message}"),
    };
    if let Some(dir) = keep {
        provisioning::files::write_private_file(
            &dir.join(format!("{name}.key")),
            key.to_pkcs8_pem().as_bytes(),
        )?;
        provisioning::files::write_file_atomic(
            &dir.join(format!("{name}.crt")),
            provisioning::pem::encode_cert_chain(&chain).as_bytes(),
            0o644,
        )?;
    }
    Ok(SimIdentity { name: name.to_string(), chain, key: key.private_key_der() })
}

/// What the simulated device reports: every desired container running.
fn report(held: &DesiredManifest) -> AgentReport {
    let containers = held
        .apps
        .iter()
        .flat_map(|a| {
            a.containers.iter().map(move |c| ObservedContainer {
                app: a.name.clone(),
                generation: a.generation,
                name: c.name.clone(),
                id: format!("{}_{}_sim", a.name, c.name),
                phase: ContainerPhase::Running,
                ready: true,
                ..Default::default()
            })
        })
        .collect();
    AgentReport { held_revision: held.revision, containers }
}

/// Everything an agent task needs.
pub struct AgentTask {
    pub idx: usize,
    pub identity: SimIdentity,
    pub endpoint: quinn::Endpoint,
    pub hub: SocketAddr,
    pub hub_name: String,
    pub ca: CertificateDer<'static>,
    pub stats: Arc<SimStats>,
    pub clock: SharedClock,
}

/// Runs one simulated agent until the task is dropped.
pub async fn run(task: AgentTask) {
    let tls = provisioning::tls::device_quic_client_config(
        task.identity.chain.clone(),
        task.identity.key.clone_key(),
        &task.ca,
    )
    .map_err(anyhow::Error::from)
    .and_then(client_config);
    let tls = match tls {
        Ok(c) => c,
        Err(e) => return tracing::warn!(device = %task.identity.name, error = %e, "bad client configuration"),
    };
    let mut held = DesiredManifest {
        device: task.identity.name.clone(),
        revision: 0,
        apps: vec![],
        ..Default::default()
    };
    let mut step = Duration::from_secs(1);
    let mut n_sessions = 0u64;
    // As the real agent: the hubs the cluster named, the one that worked last first.
    let mut hubs: Vec<(SocketAddr, String)> = vec![(task.hub, task.hub_name.clone())];
    let mut current = 0usize;
    loop {
        let (hub, name) = hubs[current % hubs.len()].clone();
        let wait = match connect(&task.endpoint, hub, &name, tls.clone()).await {
            Err(_) => {
                task.stats.connect_failed();
                current = (current + 1) % hubs.len();
                full_jitter(&mut step)
            }
            Ok(conn) => {
                task.stats.set_connection(task.idx, Some(conn.clone()));
                let mut named = None;
                let (welcomed, end) = session(&task, &conn, &mut held, n_sessions > 0, &mut named).await;
                task.stats.set_connection(task.idx, None);
                conn.close(0u32.into(), b"session ended");
                if let Some(list) = named {
                    hubs = resolved_hubs(&list, (hub, name.clone()));
                    current = hubs.iter().position(|(a, _)| *a == hub).unwrap_or(0);
                }
                if !matches!(end, Ok(SessionEnd::PeerClosed | SessionEnd::RetryAfter { .. }))
                    && hubs.len() > 1
                {
                    // The link died without a word from the hub: another first.
                    current = (current + 1) % hubs.len();
                }
                if welcomed {
                    n_sessions += 1;
                    task.stats.session_ended();
                    step = Duration::from_secs(1);
                }
                match end {
                    Ok(SessionEnd::RetryAfter { after, .. }) => {
                        task.stats.retry_after();
                        after + after.mul_f64(unit() / 10.0)
                    }
                    _ => full_jitter(&mut step),
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The hubs the cluster named that a simulated agent can dial (IP addresses; names are
/// skipped), with `working` kept in the list.
fn resolved_hubs(
    named: &[shared_proto::wire::HubEndpoint],
    working: (SocketAddr, String),
) -> Vec<(SocketAddr, String)> {
    let mut out: Vec<(SocketAddr, String)> = named
        .iter()
        .filter_map(|h| h.quic.parse::<SocketAddr>().ok().map(|a| (a, server_name(&h.quic).to_string())))
        .collect();
    if !out.iter().any(|(a, _)| *a == working.0) {
        out.push(working);
    }
    out
}

fn unit() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Full jitter: uniform in [0, step), then the step doubles up to the cap.
fn full_jitter(step: &mut Duration) -> Duration {
    let wait = step.mul_f64(unit());
    *step = (*step * 2).min(MAX_BACKOFF);
    wait
}

async fn session(
    task: &AgentTask,
    conn: &quinn::Connection,
    held: &mut DesiredManifest,
    again: bool,
    named: &mut Option<Vec<shared_proto::wire::HubEndpoint>>,
) -> (bool, anyhow::Result<SessionEnd>) {
    let mut welcomed = false;
    let end = drive(task, conn, held, again, &mut welcomed, named).await;
    (welcomed, end)
}

async fn drive(
    task: &AgentTask,
    conn: &quinn::Connection,
    held: &mut DesiredManifest,
    again: bool,
    welcomed: &mut bool,
    named: &mut Option<Vec<shared_proto::wire::HubEndpoint>>,
) -> anyhow::Result<SessionEnd> {
    let clock = &task.clock;
    let (mut send, recv) = conn.open_bi().await?;
    let mut reads = spawn_quic_reader(recv);
    let hello = AgentHello {
        device: task.identity.name.clone(),
        facts: facts(&task.identity.name),
        held_revision: held.revision,
        boot_id: "sim".into(),
    };
    let cfg = AgentSessionConfig { heartbeat_spread: unit(), ..Default::default() };
    let mut s = AgentSession::new(clock.monotonic(), hello, PROTOCOL_VERSION, report(held), &cfg);
    loop {
        while let Some(bytes) = s.poll_transmit() {
            send.write_all(&bytes).await?;
        }
        while let Some(event) = s.poll_event() {
            match event {
                AgentEvent::Welcomed { .. } => {
                    *welcomed = true;
                    task.stats.welcomed(again);
                }
                AgentEvent::Desired(m) => {
                    task.stats.desired(&m, held, clock.now());
                    *held = m;
                    s.set_report(clock.monotonic(), report(held));
                }
                // Simulated devices hold year-long certificates and keep the CA they
                // enrolled with: they never renew.
                AgentEvent::UpToDate { .. }
                | AgentEvent::Renew { .. }
                | AgentEvent::Trust { .. }
                | AgentEvent::Peers(_) => {}
                AgentEvent::Hubs(list) => *named = Some(list),
                // Simulated devices run nothing to read or enter: they say so at once.
                AgentEvent::Attach(req) => {
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let Ok((mut send, _recv)) = conn.open_bi().await else { return };
                        let open = shared_proto::wire::StreamOpen::Attach(shared_proto::wire::AttachOpen {
                            id: req.id,
                        });
                        let no = shared_proto::wire::AttachFrame::Error {
                            message: "a simulated device runs no containers".into(),
                        };
                        for frame in
                            [shared_proto::wire::encode_frame(&open), shared_proto::wire::encode_frame(&no)]
                        {
                            let Ok(bytes) = frame else { return };
                            if send.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        let _ = send.finish();
                    });
                }
                AgentEvent::Ended(end) => {
                    let _ = send.shutdown().await;
                    return Ok(end);
                }
            }
        }
        let deadline = s.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            read = reads.recv() => match read {
                Some(Read::Bytes(b)) => s.handle_bytes(clock.monotonic(), &b),
                Some(Read::Eof) | None => s.handle_eof(clock.monotonic()),
                Some(Read::Failed(e)) => return Err(e.into()),
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => s.handle_timeout(clock.monotonic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_hubs_it_can_dial_and_the_working_one_stay() {
        let hub = |q: &str| shared_proto::wire::HubEndpoint { quic: q.into(), tcp: q.into() };
        let working: SocketAddr = "10.0.0.9:7441".parse().unwrap();
        let list = resolved_hubs(&[hub("10.0.0.1:7441"), hub("hub-2.example:7441")], (working, "lb".into()));
        let addrs: Vec<String> = list.iter().map(|(a, _)| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:7441", "10.0.0.9:7441"], "names skipped, the working one kept");
        assert_eq!(list[0].1, "10.0.0.1");
    }
}
