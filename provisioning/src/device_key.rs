//! The device's own key: generated on the device, kept there, and used to request its certificate.
//!
//! The private key never leaves the device; enrolment sends only a CSR ([`DeviceKey::csr_der`]).
//! The names in the CSR are informational: the fleet CA sets the certificate's names itself.

use crate::identity::device_uri;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fmt;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum DeviceKeyError {
    #[error("could not generate the device key: {0}")]
    Generate(rcgen::Error),
    #[error("device key file is not a PKCS#8 PEM private key; delete it and enrol the device again")]
    BadPem,
    #[error("device key is not an ECDSA P-256 key; delete it and enrol the device again")]
    WrongAlgorithm,
    #[error("invalid device name {name:?}: {problem}")]
    BadName { name: String, problem: String },
    #[error("could not build the certificate request: {0}")]
    Csr(rcgen::Error),
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
}

/// An ECDSA P-256 key pair. `Debug` never shows the private key.
pub struct DeviceKey {
    key: KeyPair,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("public_key", &hex::encode(self.key.public_key_raw()))
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    pub fn generate() -> Result<DeviceKey, DeviceKeyError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(DeviceKeyError::Generate)?;
        Ok(DeviceKey { key })
    }

    /// Loads a key written by [`DeviceKey::to_pkcs8_pem`].
    pub fn from_pem(pem: &str) -> Result<DeviceKey, DeviceKeyError> {
        let key = KeyPair::from_pem(pem).map_err(|_| DeviceKeyError::BadPem)?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(DeviceKeyError::WrongAlgorithm);
        }
        Ok(DeviceKey { key })
    }

    /// The private key as PKCS#8 PEM, wiped from memory when dropped. Store it with
    /// [`crate::files::write_private_file`].
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// The private key for rustls.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The raw public key (uncompressed EC point).
    pub fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }

    /// A PKCS#10 request for this key, signed by it.
    pub fn csr_der(&self, device_name: &str) -> Result<Vec<u8>, DeviceKeyError> {
        if let Some(problem) = shared_proto::validate::dns_label_problem(device_name) {
            return Err(DeviceKeyError::BadName { name: device_name.to_owned(), problem });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_name);
        params.distinguished_name = dn;
        let uri = Ia5String::try_from(device_uri(device_name)).map_err(DeviceKeyError::Csr)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params.serialize_request(&self.key).map_err(DeviceKeyError::Csr)?;
        Ok(csr.der().to_vec())
    }

    /// Whether `cert_der` certifies this key: the agent checks the certificate the hub returns
    /// before it replaces anything on disk.
    pub fn matches_certificate(&self, cert_der: &[u8]) -> Result<bool, DeviceKeyError> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| DeviceKeyError::BadCertificate(e.to_string()))?;
        Ok(cert.public_key().subject_public_key.data.as_ref() == self.key.public_key_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::FleetCa;
    use std::time::Duration;

    #[test]
    fn pem_round_trip_keeps_the_key() {
        let key = DeviceKey::generate().expect("key");
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let loaded = DeviceKey::from_pem(&pem).expect("loads");
        assert_eq!(loaded.public_key_raw(), key.public_key_raw());
        assert_ne!(DeviceKey::generate().expect("key").public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn bad_pem_and_other_algorithms_are_refused() {
        assert!(matches!(DeviceKey::from_pem("nonsense"), Err(DeviceKeyError::BadPem)));
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        assert!(matches!(DeviceKey::from_pem(&ed.serialize_pem()), Err(DeviceKeyError::WrongAlgorithm)));
    }

    #[test]
    fn debug_does_not_show_the_private_key() {
        let key = DeviceKey::generate().expect("key");
        let debug = format!("{key:?}");
        let pem = key.to_pkcs8_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!debug.contains(&body[..40]), "{debug}");
        assert!(!debug.contains(&hex::encode(key.private_key_der().secret_der())));
    }

    #[test]
    fn csr_is_signed_and_certificate_matches_the_key() {
        let key = DeviceKey::generate().expect("key");
        let csr = key.csr_der("pi-01").expect("csr");
        let ca = FleetCa::generate("fleet").expect("ca");
        let cert = ca.sign_device_csr(&csr, "pi-01", Duration::from_secs(3600)).expect("signed");
        assert!(key.matches_certificate(&cert).expect("parses"));
        let other = DeviceKey::generate().expect("key");
        assert!(!other.matches_certificate(&cert).expect("parses"));
        assert!(matches!(key.csr_der("Not Valid"), Err(DeviceKeyError::BadName { .. })));
    }
}
