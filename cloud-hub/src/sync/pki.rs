//! The hub's certificates over time: the fleet CA that signs devices, the CAs being
//! rotated in and out, the hub's own TLS certificate, and when a device must renew.
//!
//! The store holds the fleet CA (`FleetCa/fleet`) and its rotation
//! (`CaRotation/fleet`); every hub follows them through the store's watch and, when
//! they change, issues itself a new certificate from the fleet CA and swaps it, and
//! the CAs it accepts device certificates from, into [`HubTls`] for every new
//! handshake. The hub's certificate is also issued again at two thirds of its
//! lifetime, so a hub that runs for years never presents an expired one.
//!
//! A CA rotation, step by step (`flotilla ca …`):
//! 1. `rotate` stages a new CA. The hub accepts device certificates from both and
//!    tells every device that connects to trust both (`HubFrame::Trust`).
//! 2. `activate`, once every device has connected since: the new CA becomes the fleet
//!    CA. The hub presents a certificate it signed, signs devices with it, and asks
//!    each device whose certificate is older to renew. The old CA stays trusted.
//! 3. `retire`, once no device holds a certificate of the old CA: it is trusted no more.
//!
//! Nothing is re-flashed: devices learn the new CA over the link they already trust.

use crate::sealing::HubKey;
use hub_store::Store;
use provisioning::ca::FleetCa;
use provisioning::identity::DeviceCert;
use provisioning::tls::HubTls;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use shared_proto::Timestamp;
use shared_proto::clock::SharedClock;
use shared_proto::store::{CaRotationRecord, Object, StoreKind};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// When a device holding `cert` should renew it: at two thirds of its lifetime (or of
/// `lifetime`, the hub's setting, when that is shorter), and soon after the fleet CA
/// changed if it was issued before (`ca_changed_at`): each device at its own moment
/// within a tenth of the lifetime (an hour at most), so a fleet does not renew in one
/// burst.
pub fn renewal_due(cert: &DeviceCert, lifetime: Duration, ca_changed_at: Timestamp) -> Timestamp {
    if cert.issued_at < ca_changed_at {
        let spread = (lifetime / 10).min(Duration::from_secs(3600)).as_millis() as u64;
        let pick = u64::from_str_radix(cert.serial.get(..12).unwrap_or(&cert.serial), 16).unwrap_or(0);
        return Timestamp(ca_changed_at.0 + pick % spread.max(1));
    }
    let issued_for = Duration::from_millis(cert.not_after.0.saturating_sub(cert.issued_at.0));
    let life = issued_for.min(lifetime);
    Timestamp(cert.issued_at.0.saturating_add((life.as_millis() as u64) * 2 / 3))
}

/// What the store says about the fleet's CAs, loaded.
#[derive(Clone)]
struct Cas {
    fleet: Arc<FleetCa>,
    next: Option<Arc<FleetCa>>,
    previous: Vec<CertificateDer<'static>>,
    changed_at: Timestamp,
}

impl Cas {
    /// Whether `other` names the same CAs: nothing to reissue or tell anyone.
    fn same_as(&self, other: &Cas) -> bool {
        self.fleet.fingerprint() == other.fleet.fingerprint()
            && self.next.as_ref().map(|n| n.fingerprint()) == other.next.as_ref().map(|n| n.fingerprint())
            && self.previous == other.previous
            && self.changed_at == other.changed_at
    }

    /// Every CA whose device certificates open connections, and that devices trust
    /// for the hub: the fleet CA first.
    fn trusted(&self) -> Vec<CertificateDer<'static>> {
        let mut all = vec![self.fleet.cert_der().clone()];
        all.extend(self.next.iter().map(|n| n.cert_der().clone()));
        all.extend(self.previous.iter().cloned());
        all
    }
}

/// How the hub's own certificate is made.
#[derive(Debug, Clone)]
pub struct HubCertSettings {
    pub name: String,
    pub sans: Vec<String>,
    pub lifetime: Duration,
    /// A clustered hub saves every certificate it issues itself here, for Raft to start
    /// from next time (`crate::cluster::IDENTITY_FILE`).
    pub identity_dir: Option<std::path::PathBuf>,
}

pub struct Pki {
    /// Opens the CAs' sealed private keys.
    key: Arc<HubKey>,
    cas: RwLock<Arc<Cas>>,
    tls: Arc<HubTls>,
    settings: HubCertSettings,
    clock: SharedClock,
    /// Bumped whenever the CAs change, so that open sessions look again.
    changed: watch::Sender<u64>,
    /// When the hub's current certificate is due for renewal.
    hub_cert_due: RwLock<Timestamp>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("fleet", &self.fleet().fingerprint()).finish_non_exhaustive()
    }
}

/// Reads the CAs from the store, opening their sealed keys with the hub key.
async fn load_cas(store: &Store, key: &HubKey) -> anyhow::Result<Cas> {
    let fleet = match store.get(StoreKind::FleetCa, "fleet").await? {
        Some(Object::FleetCa(r)) => Arc::new(FleetCa::from_record(&key.open_ca(&r)?)?),
        _ => anyhow::bail!("the store holds no fleet CA"),
    };
    let rotation = match store.get(StoreKind::CaRotation, "fleet").await? {
        Some(Object::CaRotation(r)) => r,
        _ => CaRotationRecord { next: None, previous: vec![], changed_at: Timestamp(0) },
    };
    let next = match &rotation.next {
        Some(r) => Some(Arc::new(FleetCa::from_record(&key.open_ca(r)?)?)),
        None => None,
    };
    Ok(Cas {
        fleet,
        next,
        previous: rotation.previous.into_iter().map(CertificateDer::from).collect(),
        changed_at: rotation.changed_at,
    })
}

impl Pki {
    /// Loads the CAs and issues the hub its first certificate.
    pub async fn load(
        store: &Store,
        key: Arc<HubKey>,
        settings: HubCertSettings,
        clock: SharedClock,
    ) -> anyhow::Result<Pki> {
        Pki::load_into(store, key, settings, clock, None).await
    }

    /// [`Pki::load`] into a TLS identity already serving (a clustered hub's, from its
    /// identity file, which Raft needed before the store could be read).
    pub async fn load_into(
        store: &Store,
        key: Arc<HubKey>,
        settings: HubCertSettings,
        clock: SharedClock,
        tls: Option<Arc<HubTls>>,
    ) -> anyhow::Result<Pki> {
        let cas = load_cas(store, &key).await?;
        let (chain, cert_key, due) = issue_hub_cert(&cas, &settings, &clock)?;
        save_identity(&settings, &chain, &cert_key, &cas)?;
        let tls = match tls {
            Some(tls) => {
                tls.update(chain, cert_key, &cas.trusted())?;
                tls
            }
            None => HubTls::new(chain, cert_key, &cas.trusted())?,
        };
        Ok(Pki {
            key,
            cas: RwLock::new(Arc::new(cas)),
            tls,
            settings,
            clock,
            changed: watch::channel(0).0,
            hub_cert_due: RwLock::new(due),
        })
    }

    fn cas(&self) -> Arc<Cas> {
        self.cas.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The fleet CA: it signs device certificates and the hub's own.
    pub fn fleet(&self) -> Arc<FleetCa> {
        self.cas().fleet.clone()
    }

    /// The CA staged to replace the fleet CA, if a rotation is under way.
    pub fn next(&self) -> Option<Arc<FleetCa>> {
        self.cas().next.clone()
    }

    /// When the fleet CA last changed.
    pub fn ca_changed_at(&self) -> Timestamp {
        self.cas().changed_at
    }

    /// Every CA devices should trust for the hub, DER, the fleet CA first.
    pub fn trusted_der(&self) -> Vec<Vec<u8>> {
        self.cas().trusted().into_iter().map(|c| c.to_vec()).collect()
    }

    /// Fingerprints of the CAs replaced and still trusted.
    pub fn previous_fingerprints(&self) -> Vec<String> {
        self.cas().previous.iter().map(|c| hex::encode(provisioning::sha256_fingerprint(c))).collect()
    }

    /// How long the hub certificates this hub issues are valid.
    pub fn hub_cert_lifetime(&self) -> Duration {
        self.settings.lifetime
    }

    /// The TLS identity the endpoints present.
    pub fn tls(&self) -> &Arc<HubTls> {
        &self.tls
    }

    /// A receiver that changes whenever the CAs do.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Loads the CAs again and, if they changed, swaps in a new hub certificate (the
    /// watch also wakes for writes that change nothing, and at start-up `load` has
    /// just issued one).
    async fn reload(&self, store: &Store) -> anyhow::Result<()> {
        let cas = load_cas(store, &self.key).await?;
        if cas.same_as(&self.cas()) {
            return Ok(());
        }
        self.install(cas)
    }

    fn install(&self, cas: Cas) -> anyhow::Result<()> {
        let (chain, key, due) = issue_hub_cert(&cas, &self.settings, &self.clock)?;
        save_identity(&self.settings, &chain, &key, &cas)?;
        self.tls.update(chain, key, &cas.trusted())?;
        tracing::info!(
            fleet_ca = %cas.fleet.fingerprint(),
            staged = cas.next.as_ref().map(|n| n.fingerprint()).unwrap_or_default(),
            previous = cas.previous.len(),
            "hub certificate issued; trusted CAs updated"
        );
        *self.cas.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cas);
        *self.hub_cert_due.write().unwrap_or_else(|p| p.into_inner()) = due;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Follows the store: CA changes are installed at once, the hub's certificate is
    /// renewed when due. Runs until the store closes.
    pub async fn run(&self, store: Store) {
        loop {
            let (_, mut rx) = store.subscribe();
            // Whatever changed while we were not subscribed.
            if let Err(e) = self.reload(&store).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot load the fleet's CAs");
            }
            loop {
                let due = *self.hub_cert_due.read().unwrap_or_else(|p| p.into_inner());
                let wait = Duration::from_millis(due.0.saturating_sub(self.clock.now().0));
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Ok(batch) => {
                            let ours = batch.changes.iter().any(|c| matches!(c.kind, StoreKind::FleetCa | StoreKind::CaRotation));
                            if ours && let Err(e) = self.reload(&store).await {
                                tracing::warn!(error = %format!("{e:#}"), "cannot load the fleet's CAs");
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(wait) => {
                        tracing::info!("the hub's certificate is due for renewal");
                        if let Err(e) = self.install(Cas::clone(&self.cas())) {
                            tracing::warn!(error = %format!("{e:#}"), "cannot renew the hub's certificate; retrying in a minute");
                            *self.hub_cert_due.write().unwrap_or_else(|p| p.into_inner()) =
                                Timestamp(self.clock.now().0 + 60_000);
                        }
                    }
                }
            }
        }
    }
}

/// Keeps a clustered hub's identity file current (see `crate::cluster`).
fn save_identity(
    settings: &HubCertSettings,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cas: &Cas,
) -> anyhow::Result<()> {
    match &settings.identity_dir {
        Some(dir) => {
            crate::cluster::save_identity(dir, chain, &crate::cluster::pkcs8_der(key)?, &cas.trusted())
        }
        None => Ok(()),
    }
}

/// A new certificate for the hub from the fleet CA, its chain, key, and when to renew it.
fn issue_hub_cert(
    cas: &Cas,
    settings: &HubCertSettings,
    clock: &SharedClock,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, Timestamp)> {
    let now = clock.now();
    let cert = cas.fleet.issue_hub_cert_at(
        &settings.name,
        &settings.sans,
        now.to_system_time(),
        settings.lifetime,
    )?;
    let chain = vec![CertificateDer::from(cert.cert_der.clone()), cas.fleet.cert_der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8_der.clone()));
    let due = Timestamp(now.0 + (settings.lifetime.as_millis() as u64) * 2 / 3);
    Ok((chain, key, due))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn cert(issued: u64, not_after: u64) -> DeviceCert {
        DeviceCert {
            name: "pi".into(),
            serial: "1".into(),
            key_sha256: "k".into(),
            not_after: Timestamp(not_after),
            issued_at: Timestamp(issued),
        }
    }

    #[test]
    fn a_certificate_renews_at_two_thirds_of_its_life_or_when_the_ca_changed() {
        let year = Duration::from_secs(365 * 86_400);
        let c = cert(1000 * DAY, 1000 * DAY + 300 * DAY);
        assert_eq!(renewal_due(&c, year, Timestamp(0)), Timestamp(1000 * DAY + 200 * DAY));
        // The hub's lifetime was shortened since: renewal comes sooner.
        let two_minutes = Duration::from_secs(120);
        assert_eq!(renewal_due(&c, two_minutes, Timestamp(0)), Timestamp(1000 * DAY + 80_000));
        // The fleet CA changed after it was issued: renew within the hour, each
        // device at its own moment.
        let changed = Timestamp(1000 * DAY + 1);
        let due = renewal_due(&c, year, changed);
        assert!(due >= changed && due.0 < changed.0 + 3_600_000, "{due:?}");
        let mut other = c.clone();
        other.serial = "7f3a9c".into();
        assert_ne!(renewal_due(&other, year, changed), due);
        // ... but not once it was issued by the new one.
        assert_eq!(renewal_due(&c, year, Timestamp(999 * DAY)), Timestamp(1000 * DAY + 200 * DAY));
    }
}
