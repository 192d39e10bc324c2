//! Which certificates open a session, and closing live connections whose certificate
//! no longer does.
//!
//! A device object lists the certificates the hub issued it (`status.certificates`).
//! Every authenticated connection, QUIC or TCP, is checked against that list when it
//! opens and registered here; one task follows the store's watch and, when a device is
//! deleted or its list changes, revokes the connections whose certificate dropped out.
//! Registration comes before the check, so a deletion that lands in between is seen by
//! one or the other.

use hub_store::Store;
use provisioning::identity::DeviceCert;
use shared_proto::store::{Object, StoreKind};
use shared_proto::{Device, DevicePhase};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Why a certificate opens no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No device of that name (deleted, or never enrolled on this hub).
    UnknownDevice,
    /// The device no longer lists this certificate: it renewed it, or was enrolled again.
    Superseded,
    /// An operator retired the device.
    Decommissioned,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::UnknownDevice => "no such device: it was deleted",
            Refusal::Superseded => {
                "the device holds another certificate now: it renewed it, or was enrolled again"
            }
            Refusal::Decommissioned => "the device was decommissioned",
        })
    }
}

/// Whether the stored `device` (`None`: there is none) accepts the certificate with
/// serial `serial`. A device enrolled before the hub recorded certificates lists none,
/// and accepts any the fleet CA issued for its name.
pub fn check(device: Option<&Device>, serial: &str) -> Result<(), Refusal> {
    let device = device.ok_or(Refusal::UnknownDevice)?;
    if device.status.phase == DevicePhase::Decommissioned {
        return Err(Refusal::Decommissioned);
    }
    let listed = &device.status.certificates;
    if listed.is_empty() || listed.iter().any(|c| c.serial == serial) {
        Ok(())
    } else {
        Err(Refusal::Superseded)
    }
}

struct Live {
    id: u64,
    serial: String,
    revoke: watch::Sender<Option<Refusal>>,
}

/// Live authenticated connections by device.
#[derive(Default)]
pub struct LiveIdentities {
    conns: Mutex<HashMap<String, Vec<Live>>>,
    next_id: Mutex<u64>,
}

/// A registered connection; dropping it unregisters.
pub struct Admitted {
    registry: Arc<LiveIdentities>,
    device: String,
    id: u64,
    revoked: watch::Receiver<Option<Refusal>>,
}

impl Admitted {
    /// Resolves when the connection's certificate stops opening sessions.
    pub async fn revoked(&mut self) -> Refusal {
        let revoked =
            self.revoked.wait_for(Option::is_some).await.map(|r| r.unwrap_or(Refusal::UnknownDevice));
        match revoked {
            Ok(r) => r,
            // The registry is gone with the hub: never revoked.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Resolves when `admitted`'s certificate stops opening sessions; never for a
/// connection without one (an enrolling device).
pub async fn revoked(admitted: Option<&mut Admitted>) -> Refusal {
    match admitted {
        Some(a) => a.revoked().await,
        None => std::future::pending().await,
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut conns = self.registry.lock();
        if let Some(list) = conns.get_mut(&self.device) {
            list.retain(|l| l.id != self.id);
            if list.is_empty() {
                conns.remove(&self.device);
            }
        }
    }
}

impl LiveIdentities {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Live>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection that presented `cert`, then checks it against the store.
    pub async fn admit(self: &Arc<Self>, store: &Store, cert: &DeviceCert) -> Result<Admitted, AdmitError> {
        let admitted = self.register(cert)?;
        let device = match store.get(StoreKind::Device, &cert.name).await? {
            Some(Object::Device(d)) => Some(d),
            _ => None,
        };
        check(device.as_ref(), &cert.serial).map_err(AdmitError::Refused)?;
        Ok(admitted)
    }

    /// Registers a connection, unless its device holds as many as it may.
    fn register(self: &Arc<Self>, cert: &DeviceCert) -> Result<Admitted, AdmitError> {
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let (tx, rx) = watch::channel(None);
        let mut conns = self.lock();
        let list = conns.entry(cert.name.clone()).or_default();
        if list.len() >= MAX_CONNECTIONS_PER_DEVICE {
            return Err(AdmitError::TooMany);
        }
        list.push(Live { id, serial: cert.serial.clone(), revoke: tx });
        drop(conns);
        Ok(Admitted { registry: self.clone(), device: cert.name.clone(), id, revoked: rx })
    }

    /// Revokes `device`'s connections whose certificate it no longer accepts.
    fn recheck(&self, name: &str, device: Option<&Device>) {
        if let Some(list) = self.lock().get(name) {
            for live in list {
                if let Err(refusal) = check(device, &live.serial) {
                    live.revoke.send_if_modified(|r| r.replace(refusal).is_none());
                }
            }
        }
    }

    /// Follows the store's watch until it closes.
    pub async fn run(&self, store: Store) {
        loop {
            let (_, mut rx) = store.subscribe();
            // Anything may have changed while we were not subscribed.
            self.recheck_all(&store).await;
            loop {
                match rx.recv().await {
                    Ok(batch) => {
                        for c in batch.changes.iter().filter(|c| c.kind == StoreKind::Device) {
                            let device = match c.object.as_deref() {
                                Some(Object::Device(d)) => Some(d),
                                _ => None,
                            };
                            self.recheck(&c.name, device);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "identity watch lagged; checking every connection");
                        break;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    async fn recheck_all(&self, store: &Store) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for name in names {
            match store.get(StoreKind::Device, &name).await {
                Ok(Some(Object::Device(d))) => self.recheck(&name, Some(&d)),
                Ok(_) => self.recheck(&name, None),
                Err(e) => tracing::warn!(device = %name, error = %e, "cannot recheck a device's certificate"),
            }
        }
    }
}

/// Most connections one device may hold at once. An agent holds one QUIC connection,
/// or over the TCP fallback one per stream (sync plus a few pulls); more is a broken or
/// hostile client, or clones of one device.
pub const MAX_CONNECTIONS_PER_DEVICE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("the device holds {MAX_CONNECTIONS_PER_DEVICE} connections already")]
    TooMany,
    #[error(transparent)]
    Store(#[from] hub_store::StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::{DeviceCertificate, DeviceSpec, ObjectMeta, Timestamp};

    fn device(serials: &[&str]) -> Device {
        let mut d = Device::new(ObjectMeta::named("pi"), DeviceSpec::default());
        d.status.certificates = serials
            .iter()
            .map(|s| DeviceCertificate {
                serial: s.to_string(),
                key_sha256: "k".into(),
                not_after: Timestamp(0),
                ..Default::default()
            })
            .collect();
        d
    }

    #[test]
    fn only_listed_certificates_of_an_existing_device_open_sessions() {
        assert_eq!(check(None, "a1"), Err(Refusal::UnknownDevice));
        assert_eq!(check(Some(&device(&["a1"])), "a1"), Ok(()));
        assert_eq!(check(Some(&device(&["a1", "b2"])), "b2"), Ok(()));
        assert_eq!(check(Some(&device(&["b2"])), "a1"), Err(Refusal::Superseded));
        // Enrolled before the hub recorded certificates.
        assert_eq!(check(Some(&device(&[])), "a1"), Ok(()));
        let mut retired = device(&["a1"]);
        retired.status.phase = DevicePhase::Decommissioned;
        assert_eq!(check(Some(&retired), "a1"), Err(Refusal::Decommissioned));
    }

    #[test]
    fn a_device_holds_a_bounded_number_of_connections() {
        let registry = Arc::new(LiveIdentities::default());
        let cert = DeviceCert {
            name: "pi".into(),
            serial: "a1".into(),
            key_sha256: "k".into(),
            not_after: Timestamp(0),
            issued_at: Timestamp(0),
        };
        let held: Vec<Admitted> = (0..MAX_CONNECTIONS_PER_DEVICE)
            .map(|_| registry.register(&cert).expect("within the bound"))
            .collect();
        assert!(matches!(registry.register(&cert), Err(AdmitError::TooMany)));
        let other = DeviceCert { name: "pi-2".into(), ..cert.clone() };
        assert!(registry.register(&other).is_ok(), "other devices are not affected");
        drop(held);
        assert!(registry.register(&cert).is_ok(), "closed connections free their slots");
    }

    #[tokio::test]
    async fn a_dropped_certificate_revokes_its_connections_and_no_other() {
        let registry = Arc::new(LiveIdentities::default());
        let mut live = Vec::new();
        for (id, serial) in [(1, "a1"), (2, "b2")] {
            let (tx, rx) = watch::channel(None);
            registry.lock().entry("pi".into()).or_default().push(Live {
                id,
                serial: serial.into(),
                revoke: tx,
            });
            live.push(Admitted { registry: registry.clone(), device: "pi".into(), id, revoked: rx });
        }
        registry.recheck("pi", Some(&device(&["b2"])));
        assert_eq!(live[0].revoked().await, Refusal::Superseded);
        assert!(live[1].revoked.borrow().is_none());
        registry.recheck("pi", None);
        assert_eq!(live[1].revoked().await, Refusal::UnknownDevice);
        drop(live);
        assert!(registry.lock().is_empty(), "dropping unregisters");
    }
}
