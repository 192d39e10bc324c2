//! Who a certificate belongs to: the `flotilla://device/<name>` or `flotilla://hub/<name>` URI SAN.
//!
//! The identity lives in exactly one URI subject alternative name, never in the subject CN: the CA
//! writes it itself when it signs, whatever the request asked for. Callers must only trust these
//! names on certificates that have already been verified against the fleet CA (rustls does that
//! during the handshake); this module parses, it does not verify signatures.

use rustls_pki_types::CertificateDer;
use shared_proto::Timestamp;
use shared_proto::validate::dns_label_problem;
use std::any::Any;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Prefix of the URI SAN that names a device.
pub const DEVICE_URI_PREFIX: &str = "flotilla://device/";
/// Prefix of the URI SAN that names a hub.
pub const HUB_URI_PREFIX: &str = "flotilla://hub/";

/// The identity URI of device `name`.
pub fn device_uri(name: &str) -> String {
    format!("{DEVICE_URI_PREFIX}{name}")
}

/// The identity URI of hub `name`.
pub fn hub_uri(name: &str) -> String {
    format!("{HUB_URI_PREFIX}{name}")
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error(
        "certificate carries no {kind} identity (no {prefix}<name> URI SAN); it was not issued by the fleet CA for a {kind}"
    )]
    Missing { kind: &'static str, prefix: &'static str },
    #[error("certificate carries {n_identities} {kind} identities; exactly one is allowed")]
    Ambiguous { kind: &'static str, n_identities: usize },
    #[error("certificate names {kind} {name:?}, which is not a valid name: {problem}")]
    BadName { kind: &'static str, name: String, problem: String },
    #[error("peer identity is not an X.509 certificate chain; use the rustls crypto backend")]
    NotCertificates,
    #[error("peer presented an empty certificate chain")]
    EmptyChain,
}

/// The device name in a device certificate.
pub fn device_name_from_cert(cert_der: &[u8]) -> Result<String, IdentityError> {
    name_from_cert(cert_der, "device", DEVICE_URI_PREFIX)
}

/// The hub name in a hub certificate.
pub fn hub_name_from_cert(cert_der: &[u8]) -> Result<String, IdentityError> {
    name_from_cert(cert_der, "hub", HUB_URI_PREFIX)
}

/// Maps what `quinn::Connection::peer_identity()` returns to a device name.
///
/// `Ok(None)`: the peer presented no certificate, so it may only enrol. `Ok(Some(name))`: the
/// peer's certificate chain (already verified against the fleet CA by the handshake) names this
/// device. An error means the peer is authenticated but not as a device (a hub certificate, for
/// example): close the connection.
pub fn peer_device_name(identity: Option<Box<dyn Any>>) -> Result<Option<String>, IdentityError> {
    peer_device(identity).map(|cert| cert.map(|c| c.name))
}

/// A device certificate as the hub binds it to its device object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCert {
    pub name: String,
    /// Serial number, lowercase hex without leading zeros.
    pub serial: String,
    /// Hex SHA-256 of the certified key's DER SubjectPublicKeyInfo.
    pub key_sha256: String,
    pub not_after: Timestamp,
    /// When the fleet CA issued it: its `notBefore` plus the [`crate::ca::BACKDATE`]
    /// the CA always applies.
    pub issued_at: Timestamp,
}

impl DeviceCert {
    /// Whether the certificate has expired at `now`.
    pub fn expired(&self, now: Timestamp) -> bool {
        now >= self.not_after
    }
}

/// Name, serial, key and expiry of a device certificate.
pub fn device_cert(cert_der: &[u8]) -> Result<DeviceCert, IdentityError> {
    let cert = parse(cert_der)?;
    let name = name_in(&cert, "device", DEVICE_URI_PREFIX)?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let not_before = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
    Ok(DeviceCert {
        name,
        serial: format!("{:x}", cert.tbs_certificate.serial),
        key_sha256: hex::encode(crate::sha256_fingerprint(cert.public_key().raw)),
        not_after: Timestamp(not_after.saturating_mul(1000)),
        issued_at: Timestamp(
            not_before
                .saturating_add(crate::ca::BACKDATE.as_secs())
                .saturating_mul(1000)
                .min(not_after * 1000),
        ),
    })
}

/// Maps what `quinn::Connection::peer_identity()` returns to the device certificate it
/// carries; `Ok(None)` and errors as for [`peer_device_name`].
pub fn peer_device(identity: Option<Box<dyn Any>>) -> Result<Option<DeviceCert>, IdentityError> {
    let Some(identity) = identity else {
        return Ok(None);
    };
    let chain =
        identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| IdentityError::NotCertificates)?;
    let leaf = chain.first().ok_or(IdentityError::EmptyChain)?;
    device_cert(leaf).map(Some)
}

fn parse(cert_der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::BadCertificate(format!("{} trailing bytes", rest.len())));
    }
    Ok(cert)
}

fn name_from_cert(
    cert_der: &[u8],
    kind: &'static str,
    prefix: &'static str,
) -> Result<String, IdentityError> {
    name_in(&parse(cert_der)?, kind, prefix)
}

fn name_in(
    cert: &X509Certificate<'_>,
    kind: &'static str,
    prefix: &'static str,
) -> Result<String, IdentityError> {
    let san = cert.subject_alternative_name().map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let names: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(prefix),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        [] => Err(IdentityError::Missing { kind, prefix }),
        [name] => match dns_label_problem(name) {
            None => Ok((*name).to_owned()),
            Some(problem) => Err(IdentityError::BadName { kind, name: (*name).to_owned(), problem }),
        },
        many => Err(IdentityError::Ambiguous { kind, n_identities: many.len() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::FleetCa;
    use crate::device_key::DeviceKey;
    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, KeyPair, SanType};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    fn self_signed_with_uris(uris: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(Ia5String::try_from(u.to_string()).expect("ascii uri")))
            .collect();
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn device_cert_names_the_device_and_not_a_hub() {
        let ca = FleetCa::generate("test fleet").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let cert = ca.sign_device_csr(&key.csr_der("pi-01").expect("csr"), "pi-01", DAY).expect("sign");
        assert_eq!(device_name_from_cert(&cert).expect("device name"), "pi-01");
        assert!(matches!(hub_name_from_cert(&cert), Err(IdentityError::Missing { kind: "hub", .. })));
    }

    #[test]
    fn hub_cert_names_the_hub_and_not_a_device() {
        let ca = FleetCa::generate("test fleet").expect("ca");
        let hub = ca.issue_hub_cert("hub-a", &[], DAY).expect("hub cert");
        assert_eq!(hub_name_from_cert(&hub.cert_der).expect("hub name"), "hub-a");
        let err = device_name_from_cert(&hub.cert_der).expect_err("hub cert is not a device");
        assert!(matches!(err, IdentityError::Missing { kind: "device", .. }), "{err}");
    }

    #[test]
    fn two_device_identities_are_refused() {
        let cert = self_signed_with_uris(&["flotilla://device/a", "flotilla://device/b"]);
        assert!(matches!(
            device_name_from_cert(&cert),
            Err(IdentityError::Ambiguous { n_identities: 2, .. })
        ));
    }

    #[test]
    fn invalid_device_name_in_uri_is_refused() {
        let cert = self_signed_with_uris(&["flotilla://device/Bad_Name"]);
        let err = device_name_from_cert(&cert).expect_err("bad name");
        assert!(matches!(&err, IdentityError::BadName { name, .. } if name == "Bad_Name"), "{err}");
        let cert = self_signed_with_uris(&["flotilla://device/"]);
        assert!(matches!(device_name_from_cert(&cert), Err(IdentityError::BadName { .. })));
    }

    #[test]
    fn other_uris_are_ignored() {
        let cert = self_signed_with_uris(&["https://example.invalid/x", "flotilla://device/pi-02"]);
        assert_eq!(device_name_from_cert(&cert).expect("name"), "pi-02");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(device_name_from_cert(b"not a cert"), Err(IdentityError::BadCertificate(_))));
    }

    #[test]
    fn peer_identity_maps_to_device_name() {
        assert_eq!(peer_device_name(None).expect("unauthenticated"), None);
        let cert = self_signed_with_uris(&["flotilla://device/pi-03"]);
        let chain: Vec<CertificateDer<'static>> = vec![CertificateDer::from(cert)];
        assert_eq!(peer_device_name(Some(Box::new(chain))).expect("device"), Some("pi-03".to_owned()));
        let empty: Vec<CertificateDer<'static>> = Vec::new();
        assert!(matches!(peer_device_name(Some(Box::new(empty))), Err(IdentityError::EmptyChain)));
        assert!(matches!(peer_device_name(Some(Box::new(7u32))), Err(IdentityError::NotCertificates)));
    }
}
