//! Certificate renewal, on a connection the device opened with its current
//! certificate: the handshake proved it holds the old key, the request's signature
//! that it holds the new one.
//!
//! - A valid certificate is renewed at once: the fleet CA signs the new key, the
//!   device lists both certificates until it first connects with the new one (then the
//!   older ones are dropped, `session`), and the device learns the CAs to trust.
//! - An expired certificate (the device was offline past its end) is not renewed: the
//!   device goes `Quarantined`, keeps running what it ran, and is answered "pending"
//!   until an operator approves it (`flotilla device approve`); then its next request
//!   with the same key gets the certificate. A rejected device is decommissioned.
//!
//! Asking again with the same key after a lost reply is answered again, with a new
//! certificate for that key in place of the undelivered one. Retries that change
//! nothing write nothing.

use crate::state::HubState;
use provisioning::identity::DeviceCert;
use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::wire::{RenewReply, RenewRequest};
use shared_proto::{Device, DevicePhase, Quarantine};
use std::net::SocketAddr;
use std::time::Duration;

/// How often a quarantined device asks whether it was approved.
pub const QUARANTINE_RETRY: Duration = Duration::from_secs(10);
/// Most certificates a device lists at once: the one in use and renewals not yet used.
pub const MAX_LISTED_CERTIFICATES: usize = 4;

fn refused(message: impl Into<String>) -> RenewReply {
    RenewReply::Refused { message: message.into() }
}

/// What to do with a renewal request, given the device as stored: pure, so that every
/// case is tested without a store.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Sign the key; the device is stored as given (certificate appended there).
    Sign,
    /// Not now: store the device as given (`None`: nothing changed), answer pending.
    Pending(Option<Box<Device>>, String),
    Refuse(String),
}

/// Decides on a request from `cert` (the certificate the connection presented) for a
/// certificate for the key with hash `key_sha256`.
pub fn decide(
    device: &Device,
    cert: &DeviceCert,
    key_sha256: &str,
    remote: SocketAddr,
    now: shared_proto::Timestamp,
) -> Decision {
    if let Err(refusal) = super::identity::check(Some(device), &cert.serial) {
        return Decision::Refuse(refusal.to_string());
    }
    if !cert.expired(now) {
        return Decision::Sign;
    }
    let name = &device.metadata.name;
    let old = device.status.quarantine.as_deref();
    if old.is_some_and(|q| q.approved && q.key_sha256 == key_sha256) {
        return Decision::Sign;
    }
    if device.status.certificates.iter().any(|c| c.key_sha256 == key_sha256) {
        // Approved and issued already, and the reply was lost: the same key asks again.
        return Decision::Sign;
    }
    let quarantine = Quarantine {
        since: old.map_or(now, |q| q.since),
        expired_serial: cert.serial.clone(),
        key_sha256: key_sha256.to_string(),
        from: remote.to_string(),
        // An approval holds for the key it was given for; a new key needs a new one.
        approved: false,
    };
    let message = format!(
        "the certificate of device {name:?} expired at {} while it was away; it is quarantined until an operator approves it (flotilla device approve {name}) or rejects it",
        cert.not_after.to_rfc3339()
    );
    // Asked again with the same key: nothing to write, whatever address it came from
    // this time (behind a NAT every retry may come from another port).
    if device.status.phase == DevicePhase::Quarantined
        && old.is_some_and(|q| q.key_sha256 == key_sha256 && q.expired_serial == cert.serial)
    {
        return Decision::Pending(None, message);
    }
    let mut d = device.clone();
    if d.status.phase != DevicePhase::Quarantined {
        d.status.phase = DevicePhase::Quarantined;
        d.status.last_transition_at = Some(now);
    }
    d.status.message = message.clone();
    d.status.quarantine = Some(Box::new(quarantine));
    Decision::Pending(Some(Box::new(d)), message)
}

/// Answers one renewal request.
pub async fn renew(state: &HubState, cert: &DeviceCert, remote: SocketAddr, req: RenewRequest) -> RenewReply {
    if let Some(p) = req.problem() {
        return refused(p);
    }
    let key_sha256 = match provisioning::ca::csr_key_sha256(&req.csr_der) {
        Ok(k) => k,
        Err(e) => return refused(format!("certificate request refused: {e}")),
    };
    for _ in 0..8 {
        let current = match state.store.get_revisioned(StoreKind::Device, &cert.name).await {
            Ok(Some(r)) => r,
            Ok(None) => return refused(super::identity::Refusal::UnknownDevice.to_string()),
            Err(e) => return refused(format!("hub store: {e}; retry")),
        };
        let Object::Device(device) = current.object else {
            return refused("the device is stored as another kind");
        };
        let now = state.clock.now();
        let (write, reply) = match decide(&device, cert, &key_sha256, remote, now) {
            Decision::Refuse(m) => return refused(m),
            Decision::Pending(None, message) => return pending(message),
            Decision::Pending(Some(d), message) => (*d, pending(message)),
            Decision::Sign => {
                let fleet = state.pki.fleet();
                let (der, certificate) =
                    match super::enrol::sign_device(state, &fleet, &req.csr_der, &cert.name) {
                        Ok(x) => x,
                        Err(m) => return refused(m),
                    };
                let mut d = device;
                let listed = &mut d.status.certificates;
                listed.retain(|c| c.key_sha256 != key_sha256);
                if d.status.quarantine.take().is_some() {
                    // Approved: the device is back. The expired certificate stays listed
                    // (so this very connection is not cut before the reply leaves) until
                    // the device connects with the new one.
                    d.status.phase = DevicePhase::Offline;
                    d.status.last_transition_at = Some(now);
                    d.status.message = format!("approved; certificate renewed at {}", now.to_rfc3339());
                }
                listed.push(certificate);
                while listed.len() > MAX_LISTED_CERTIFICATES {
                    let oldest = listed.iter().position(|c| c.serial != cert.serial).unwrap_or(0);
                    listed.remove(oldest);
                }
                let reply = RenewReply::Renewed {
                    cert_chain_der: vec![der],
                    trusted_ca_der: state.pki.trusted_der(),
                };
                (d, reply)
            }
        };
        let cmd = StoreCommand::put(Object::Device(write), Precondition::RevisionIs(current.revision));
        match state.store.write(cmd).await {
            Ok(StoreOutcome::Applied { .. }) => {
                if matches!(reply, RenewReply::Renewed { .. }) {
                    tracing::info!(device = %cert.name, %remote, "certificate renewed");
                } else {
                    tracing::warn!(device = %cert.name, %remote, "a device came back with an expired certificate; quarantined until approved");
                }
                return reply;
            }
            // A report or a transition moved the device meanwhile: again.
            Ok(_) => continue,
            Err(e) => return refused(format!("hub store: {e}; retry")),
        }
    }
    refused("the device keeps changing under this request; retry")
}

fn pending(message: String) -> RenewReply {
    RenewReply::Pending { retry_after_ms: QUARANTINE_RETRY.as_millis() as u32, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::{DeviceCertificate, DeviceSpec, ObjectMeta, Timestamp};

    fn device() -> Device {
        let mut d = Device::new(ObjectMeta::named("pi"), DeviceSpec::default());
        d.status.phase = DevicePhase::Offline;
        d.status.certificates = vec![DeviceCertificate {
            serial: "a1".into(),
            key_sha256: "old".into(),
            not_after: Timestamp(1000),
            ..Default::default()
        }];
        d
    }

    fn cert() -> DeviceCert {
        DeviceCert {
            name: "pi".into(),
            serial: "a1".into(),
            key_sha256: "old".into(),
            not_after: Timestamp(1000),
            issued_at: Timestamp(0),
        }
    }

    const FROM: &str = "192.0.2.1:4000";

    #[test]
    fn a_valid_certificate_is_renewed_and_an_expired_one_quarantines() {
        let remote = FROM.parse().unwrap();
        assert_eq!(decide(&device(), &cert(), "new", remote, Timestamp(999)), Decision::Sign);
        let Decision::Pending(Some(d), message) = decide(&device(), &cert(), "new", remote, Timestamp(1000))
        else {
            panic!("not quarantined")
        };
        assert!(message.contains("flotilla device approve pi"), "{message}");
        assert_eq!(d.status.phase, DevicePhase::Quarantined);
        let q = d.status.quarantine.as_deref().unwrap();
        assert_eq!((q.key_sha256.as_str(), q.since, q.approved), ("new", Timestamp(1000), false));
        // Asking again changes nothing, and writes nothing, from any address.
        assert!(matches!(decide(&d, &cert(), "new", remote, Timestamp(5000)), Decision::Pending(None, _)));
        let elsewhere = "192.0.2.1:4001".parse().unwrap();
        assert!(matches!(decide(&d, &cert(), "new", elsewhere, Timestamp(6000)), Decision::Pending(None, _)));
        // Approved for that key: signed.
        let mut approved = (*d).clone();
        approved.status.quarantine.as_mut().unwrap().approved = true;
        assert_eq!(decide(&approved, &cert(), "new", remote, Timestamp(6000)), Decision::Sign);
        // Signed, and the reply lost: the same key asks again and is answered again.
        let mut issued = approved.clone();
        issued.status.quarantine = None;
        issued.status.phase = DevicePhase::Offline;
        issued.status.certificates.push(DeviceCertificate {
            serial: "c3".into(),
            key_sha256: "new".into(),
            ..Default::default()
        });
        assert_eq!(decide(&issued, &cert(), "new", remote, Timestamp(7000)), Decision::Sign);
        // An approval does not carry over to another key.
        let Decision::Pending(Some(again), _) = decide(&approved, &cert(), "other", remote, Timestamp(6000))
        else {
            panic!("a new key needs a new approval")
        };
        let q = again.status.quarantine.as_deref().unwrap();
        assert_eq!((q.key_sha256.as_str(), q.since, q.approved), ("other", Timestamp(1000), false));
    }

    #[test]
    fn unlisted_or_retired_certificates_are_refused() {
        let remote = FROM.parse().unwrap();
        let mut other = cert();
        other.serial = "b2".into();
        assert!(matches!(decide(&device(), &other, "new", remote, Timestamp(0)), Decision::Refuse(_)));
        let mut retired = device();
        retired.status.phase = DevicePhase::Decommissioned;
        assert!(matches!(decide(&retired, &cert(), "new", remote, Timestamp(5000)), Decision::Refuse(_)));
    }
}
