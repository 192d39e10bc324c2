//! PEM encoding and decoding of certificates and private keys, for the files the hub, the agent
//! and the CLI keep on disk.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

const CERT_LABEL: &str = "CERTIFICATE";
const PKCS8_LABEL: &str = "PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("no certificate found: expected a -----BEGIN CERTIFICATE----- block")]
    NoCertificate,
    #[error("certificate PEM is malformed: {0}")]
    MalformedCertificate(String),
    #[error("no private key found: expected a -----BEGIN PRIVATE KEY----- block")]
    NoPrivateKey,
    // Deliberately without detail: the decoder's message could quote bytes of the key.
    #[error("private key PEM is malformed; replace the key file")]
    MalformedPrivateKey,
}

/// One `CERTIFICATE` block.
pub fn encode_cert(der: &[u8]) -> String {
    encode_block(CERT_LABEL, der)
}

/// A chain of `CERTIFICATE` blocks, leaf first.
pub fn encode_cert_chain(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| encode_cert(c)).collect()
}

/// A PKCS#8 `PRIVATE KEY` block, wiped from memory when dropped.
pub fn encode_private_key(pkcs8_der: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(encode_block(PKCS8_LABEL, pkcs8_der))
}

/// Every certificate in `pem`, in order; at least one. Other blocks (keys) are skipped.
pub fn decode_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::MalformedCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The first certificate in `pem`.
pub fn decode_cert(pem: &str) -> Result<CertificateDer<'static>, PemError> {
    decode_certs(pem)?.into_iter().next().ok_or(PemError::NoCertificate)
}

/// The first private key in `pem`: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1.
pub fn decode_private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoPrivateKey,
        _ => PemError::MalformedPrivateKey,
    })
}

fn encode_block(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so splitting on byte offsets stays on character boundaries.
    for line in b64.as_bytes().chunks(64) {
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::FleetCa;
    use std::time::Duration;

    #[test]
    fn certs_round_trip_in_order() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let hub = ca.issue_hub_cert("hub-a", &[], Duration::from_secs(3600)).expect("hub");
        let chain = vec![CertificateDer::from(hub.cert_der.clone()), ca.cert_der().clone()];
        let pem = encode_cert_chain(&chain);
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        assert_eq!(decode_certs(&pem).expect("decodes"), chain);
        assert_eq!(decode_cert(&pem).expect("decodes").as_ref(), hub.cert_der.as_slice());
    }

    #[test]
    fn private_key_round_trips_and_is_not_a_cert() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let hub = ca.issue_hub_cert("hub-a", &[], Duration::from_secs(3600)).expect("hub");
        let pem = encode_private_key(&hub.key_pkcs8_der);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let key = decode_private_key(&pem).expect("decodes");
        assert!(matches!(&key, PrivateKeyDer::Pkcs8(_)));
        assert_eq!(key.secret_der(), hub.key_pkcs8_der.as_slice());
        assert!(matches!(decode_certs(&pem), Err(PemError::NoCertificate)));
        assert!(matches!(decode_private_key(&encode_cert(&hub.cert_der)), Err(PemError::NoPrivateKey)));
    }

    #[test]
    fn malformed_key_error_does_not_quote_the_key() {
        let broken = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49!!!!\n-----END PRIVATE KEY-----\n";
        let err = decode_private_key(broken).expect_err("broken");
        assert!(matches!(err, PemError::MalformedPrivateKey), "{err}");
        assert_eq!(err.to_string(), "private key PEM is malformed; replace the key file");
        assert!(matches!(decode_certs(""), Err(PemError::NoCertificate)));
    }
}
