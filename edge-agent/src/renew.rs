//! A new certificate for a new key, before the old one expires (the hub asks), or
//! after it expired while the device was offline (the device asks, and is quarantined
//! until an operator approves).
//!
//! The new key is generated on the device and stored (`device.key.next`) before the
//! first request, so a lost reply is asked again with the same key. The new
//! certificate lands as `device.crt.next`, then both are renamed over the old pair:
//! a crash at any point leaves either the old pair or the new one, and
//! [`finish_interrupted`] completes a swap that was cut short. The CAs to trust are
//! written first: the hub names them on every connection, and they are a superset of
//! what the old certificate needs.

use crate::config::AgentConfig;
use crate::enrol::Identity;
use crate::transport::HubLink;
use anyhow::{Context, anyhow, bail};
use provisioning::device_key::DeviceKey;
use rustls_pki_types::CertificateDer;
use shared_proto::wire::{self, RenewReply, RenewRequest, StreamOpen};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a renewal request ended.
pub enum Renewal {
    /// Stored on disk; connect with this from now on.
    Renewed(Identity),
    /// Quarantined: ask again after this long.
    Pending { retry_after: Duration, message: String },
    /// The hub will not renew: `message` says why.
    Refused(String),
}

fn next(path: PathBuf) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".next");
    path.with_file_name(name)
}

fn rename_durably(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("fsync {}", dir.display()))?;
    }
    Ok(())
}

fn key_matches(key_path: &Path, cert_path: &Path) -> bool {
    let (Ok(key), Ok(cert)) = (std::fs::read_to_string(key_path), std::fs::read_to_string(cert_path)) else {
        return false;
    };
    let (Ok(key), Ok(chain)) = (DeviceKey::from_pem(&key), provisioning::pem::decode_certs(&cert)) else {
        return false;
    };
    chain.first().is_some_and(|leaf| key.matches_certificate(leaf).unwrap_or(false))
}

/// Completes a certificate swap a crash interrupted, before the identity is loaded.
pub fn finish_interrupted(config: &AgentConfig) -> anyhow::Result<()> {
    let (key, cert) = (config.key_path(), config.cert_path());
    let (key_next, cert_next) = (next(key.clone()), next(cert.clone()));
    if !cert_next.exists() {
        return Ok(());
    }
    if key_matches(&key_next, &cert_next) {
        tracing::info!("finishing a certificate renewal a restart interrupted");
        rename_durably(&key_next, &key)?;
        rename_durably(&cert_next, &cert)?;
    } else if key_matches(&key, &cert_next) {
        tracing::info!("finishing a certificate renewal a restart interrupted");
        rename_durably(&cert_next, &cert)?;
    } else {
        // A certificate for neither key: of no use.
        std::fs::remove_file(&cert_next)?;
    }
    Ok(())
}

/// The key to renew with: the one an earlier attempt stored, or a new one, stored
/// before the request leaves.
fn pending_key(config: &AgentConfig) -> anyhow::Result<DeviceKey> {
    let path = next(config.key_path());
    if let Ok(pem) = std::fs::read_to_string(&path)
        && let Ok(key) = DeviceKey::from_pem(&pem)
    {
        return Ok(key);
    }
    let key = DeviceKey::generate()?;
    provisioning::files::write_private_file(&path, key.to_pkcs8_pem().as_bytes())?;
    Ok(key)
}

/// Writes the CAs to trust for the hub, if they differ from what is stored. Takes
/// effect on the next connection.
pub fn store_trusted(
    config: &AgentConfig,
    ca_der: &[Vec<u8>],
) -> anyhow::Result<Option<Vec<CertificateDer<'static>>>> {
    if ca_der.is_empty() || ca_der.len() > wire::MAX_TRUSTED_CAS {
        bail!("the hub named {} CAs to trust", ca_der.len());
    }
    let cas: Vec<CertificateDer<'static>> = ca_der.iter().cloned().map(CertificateDer::from).collect();
    // Each must at least be a certificate: a bad one would lock the device out.
    provisioning::tls::check_trust_anchors(&cas)
        .map_err(|e| anyhow!("the hub named a CA that cannot be trusted: {e}"))?;
    let pem = provisioning::pem::encode_cert_chain(&cas);
    if std::fs::read_to_string(config.ca_path()).is_ok_and(|old| old == pem) {
        return Ok(None);
    }
    provisioning::files::write_file_atomic(&config.ca_path(), pem.as_bytes(), 0o644)?;
    tracing::info!(n_cas = cas.len(), "the hub named new CAs to trust; stored for the next connection");
    Ok(Some(cas))
}

/// Asks the hub for a certificate for a new key, over `link` (opened with the current
/// certificate, expired or not).
pub async fn renew(config: &AgentConfig, identity: &Identity, link: &HubLink) -> anyhow::Result<Renewal> {
    let key = pending_key(config)?;
    let request = RenewRequest { csr_der: key.csr_der(&identity.device)? };
    let (mut recv, mut send) = link.open_stream().await?;
    wire::write_frame(&mut send, &StreamOpen::Renew(request)).await?;
    let reply = tokio::time::timeout(Duration::from_secs(30), wire::read_frame::<RenewReply, _>(&mut recv))
        .await
        .map_err(|_| anyhow!("the hub did not answer the renewal within 30s"))??
        .ok_or_else(|| anyhow!("the hub closed the renewal stream without an answer"))?;
    if let Some(p) = reply.problem() {
        bail!("the hub's renewal answer is malformed: {p}");
    }
    let (chain, trusted) = match reply {
        RenewReply::Renewed { cert_chain_der, trusted_ca_der } => (cert_chain_der, trusted_ca_der),
        RenewReply::Pending { retry_after_ms, message } => {
            let retry_after = Duration::from_millis(u64::from(retry_after_ms))
                .clamp(Duration::from_secs(1), Duration::from_secs(600));
            return Ok(Renewal::Pending { retry_after, message });
        }
        RenewReply::Refused { message } => return Ok(Renewal::Refused(message)),
    };
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let leaf = chain.first().ok_or_else(|| anyhow!("the hub sent an empty certificate chain"))?;
    if !key.matches_certificate(leaf)? {
        bail!("the hub's new certificate is not for this device's new key");
    }
    let name = provisioning::identity::device_name_from_cert(leaf)?;
    if name != identity.device {
        bail!("the hub's new certificate is for device {name:?}, not {:?}", identity.device);
    }
    let trusted = match store_trusted(config, &trusted)? {
        Some(cas) => cas,
        None => trusted.into_iter().map(CertificateDer::from).collect(),
    };
    let cert_next = next(config.cert_path());
    provisioning::files::write_file_atomic(
        &cert_next,
        provisioning::pem::encode_cert_chain(&chain).as_bytes(),
        0o644,
    )?;
    rename_durably(&next(config.key_path()), &config.key_path())?;
    rename_durably(&cert_next, &config.cert_path())?;
    tracing::info!(device = %identity.device, "certificate renewed with a new key");
    Ok(Renewal::Renewed(Identity {
        device: identity.device.clone(),
        cert_chain: chain,
        key: key.private_key_der(),
        trusted,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> AgentConfig {
        let mut c = AgentConfig::parse("hub = \"hub:7441\"\nname = \"pi\"").unwrap();
        c.state_dir = dir.to_path_buf();
        c
    }

    fn write_pair(config: &AgentConfig, key_path: &Path, cert_path: &Path) -> DeviceKey {
        let ca = provisioning::ca::FleetCa::generate("fleet").unwrap();
        let key = DeviceKey::generate().unwrap();
        let cert = ca.sign_device_csr(&key.csr_der("pi").unwrap(), "pi", Duration::from_secs(3600)).unwrap();
        std::fs::write(key_path, key.to_pkcs8_pem().as_bytes()).unwrap();
        std::fs::write(cert_path, provisioning::pem::encode_cert(&cert)).unwrap();
        let _ = config;
        key
    }

    #[test]
    fn a_swap_cut_short_at_any_point_ends_with_a_matching_pair() {
        for cut in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let c = config(dir.path());
            write_pair(&c, &c.key_path(), &c.cert_path());
            let new = write_pair(&c, &next(c.key_path()), &next(c.cert_path()));
            // 0: nothing renamed; 1: the key renamed; 2: the certificate is for no key we hold.
            if cut == 1 {
                std::fs::rename(next(c.key_path()), c.key_path()).unwrap();
            }
            if cut == 2 {
                write_pair(&c, &dir.path().join("x.key"), &next(c.cert_path()));
            }
            finish_interrupted(&c).unwrap();
            assert!(key_matches(&c.key_path(), &c.cert_path()), "cut {cut}");
            assert!(!next(c.cert_path()).exists(), "cut {cut}");
            let key = DeviceKey::from_pem(&std::fs::read_to_string(c.key_path()).unwrap()).unwrap();
            assert_eq!(key.public_key_raw() == new.public_key_raw(), cut < 2, "cut {cut}");
        }
    }
}
