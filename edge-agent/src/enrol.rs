//! First start: enrol with the hub using the operator's token, keeping the key this
//! device generated and the certificate the hub signed. Later starts load them.

use crate::config::AgentConfig;
use crate::state::StateDb;
use crate::transport::Dialer;
use anyhow::{Context, anyhow, bail};
use provisioning::device_key::DeviceKey;
use provisioning::token::EnrolmentToken;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shared_proto::agent_state::AgentIdentity;
use shared_proto::clock::SharedClock;
use shared_proto::wire::{self, EnrolRefusal, EnrolReply, EnrolRequest, MIN_PROTOCOL_VERSION, StreamOpen};
use std::time::Duration;

/// What the agent authenticates with, and the CAs it trusts for the hub.
pub struct Identity {
    pub device: String,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The fleet CA first; during a CA rotation, the one rotating in or out too.
    pub trusted: Vec<CertificateDer<'static>>,
}

impl Identity {
    /// When the device certificate stops being valid.
    pub fn not_after(&self) -> Option<shared_proto::Timestamp> {
        let leaf = self.cert_chain.first()?;
        provisioning::identity::device_cert(leaf).ok().map(|c| c.not_after)
    }

    /// The TLS configuration to reach the hub with.
    pub fn client_config(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        Ok(provisioning::tls::device_quic_client_config_trusting(
            self.cert_chain.clone(),
            self.key.clone_key(),
            &self.trusted,
        )?)
    }
}

/// An enrolment the hub refused for a reason retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[error("enrolment refused: {message}")]
pub struct EnrolRefused {
    pub reason: EnrolRefusal,
    pub message: String,
}

fn load(config: &AgentConfig, device: &str) -> anyhow::Result<Identity> {
    crate::renew::finish_interrupted(config)?;
    let key_pem = std::fs::read_to_string(config.key_path()).context("reading device.key")?;
    let cert_pem = std::fs::read_to_string(config.cert_path()).context("reading device.crt")?;
    let ca_pem = std::fs::read_to_string(config.ca_path()).context("reading ca.crt")?;
    let key = DeviceKey::from_pem(&key_pem).context("parsing device.key")?;
    Ok(Identity {
        device: device.to_string(),
        cert_chain: provisioning::pem::decode_certs(&cert_pem)?,
        key: key.private_key_der(),
        trusted: provisioning::pem::decode_certs(&ca_pem)?,
    })
}

/// The identity this agent has, enrolling first if it has none. Network trouble is
/// retried with back-off; a refusal the operator must fix is returned as
/// [`EnrolRefused`].
pub async fn ensure_identity(
    config: &AgentConfig,
    db: &StateDb,
    endpoint: &quinn::Endpoint,
    clock: &SharedClock,
) -> anyhow::Result<Identity> {
    if let Some(id) = db.identity()? {
        return load(config, &id.device)
            .with_context(|| format!("loading the identity in {}", config.state_dir.display()));
    }
    let token_text = config.enrolment_token.as_deref().ok_or_else(|| {
        anyhow!("this device is not enrolled and the config has no enrolment_token: create one with `flotilla token create`")
    })?;
    let token = EnrolmentToken::parse(token_text).map_err(|e| anyhow!("enrolment_token: {e}"))?;
    let key = enrolment_key(config)?;
    let csr = key.csr_der(&config.name)?;
    let request = EnrolRequest {
        token: token_text.to_string(),
        device_name: config.name.clone(),
        csr_der: csr,
        facts: crate::facts::device_facts(),
        labels: config.labels.clone(),
    };
    let tls = provisioning::tls::enrolment_client_config(token.ca_fingerprint())?;
    let dialer = Dialer::new(endpoint.clone(), &[config.hub_endpoint()], tls)?;
    let mut backoff = crate::transport::Backoff::new(Duration::from_secs(30));
    let (device, chain, ca) = loop {
        match enrol_once(&dialer, &request).await {
            Ok(EnrolReply::Accepted { device, cert_chain_der, ca_der }) => {
                break (device, cert_chain_der, ca_der);
            }
            Ok(EnrolReply::Refused { reason: EnrolRefusal::Unavailable, message }) => {
                tracing::warn!(%message, "hub cannot enrol right now; retrying");
            }
            Ok(EnrolReply::Refused { reason, message }) => {
                return Err(EnrolRefused { reason, message }.into());
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "enrolment attempt failed; retrying"),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    };
    if device != config.name {
        bail!("the hub enrolled this device as {device:?}, not {:?}", config.name);
    }
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let leaf = chain.first().ok_or_else(|| anyhow!("the hub sent an empty certificate chain"))?;
    if !key.matches_certificate(leaf)? {
        bail!("the hub's certificate is not for this device's key");
    }
    let ca = CertificateDer::from(ca);
    if provisioning::sha256_fingerprint(&ca) != token.ca_fingerprint() {
        bail!("the hub sent a CA that is not the one named in the enrolment token");
    }
    provisioning::files::write_file_atomic(
        &config.cert_path(),
        provisioning::pem::encode_cert_chain(&chain).as_bytes(),
        0o644,
    )?;
    provisioning::files::write_file_atomic(
        &config.ca_path(),
        provisioning::pem::encode_cert(&ca).as_bytes(),
        0o644,
    )?;
    // The identity record goes last: its presence means the files above are complete.
    db.set_identity(&AgentIdentity {
        device: device.clone(),
        hub: config.hub.clone(),
        enrolled_at: clock.now(),
    })?;
    tracing::info!(%device, "enrolled");
    Ok(Identity { device, cert_chain: chain, key: key.private_key_der(), trusted: vec![ca] })
}

/// The key to enrol with: the one an earlier attempt stored, or a new one, stored
/// before the first request. An agent killed after the hub accepted, before the reply
/// arrived, asks again with the same key, and the hub hands it the certificate of
/// that enrolment instead of refusing the name as taken.
fn enrolment_key(config: &AgentConfig) -> anyhow::Result<DeviceKey> {
    let path = config.key_path();
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            if let Ok(key) = DeviceKey::from_pem(&pem) {
                tracing::info!("enrolling with the key an earlier attempt generated");
                return Ok(key);
            }
            tracing::warn!(path = %path.display(), "unreadable key from an earlier enrolment attempt; generating another");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let key = DeviceKey::generate()?;
    std::fs::create_dir_all(&config.state_dir)?;
    provisioning::files::write_private_file(&path, key.to_pkcs8_pem().as_bytes())?;
    Ok(key)
}

async fn enrol_once(dialer: &Dialer, request: &EnrolRequest) -> anyhow::Result<EnrolReply> {
    let link = dialer.connect().await?;
    let (mut recv, mut send) = link.open_stream().await?;
    // Enrolment frames have not changed since version 1: any hub understands them.
    wire::write_frame_for(&mut send, MIN_PROTOCOL_VERSION, &StreamOpen::Enrol(request.clone())).await?;
    let reply = tokio::time::timeout(Duration::from_secs(30), wire::read_frame::<EnrolReply, _>(&mut recv))
        .await
        .map_err(|_| anyhow!("the hub did not answer the enrolment within 30s"))??
        .ok_or_else(|| anyhow!("the hub closed the enrolment stream without an answer"))?;
    link.close(b"enrolled");
    Ok(reply)
}
