//! The fleet certificate authority: creates itself, signs device CSRs and issues hub certificates.
//!
//! One ECDSA P-256 CA per fleet, stored in the hub's replicated store ([`FleetCaRecord`]) so any
//! hub can sign. It only ever issues end-entity certificates (path length 0), and it decides
//! everything in them itself: a CSR contributes its public key and nothing else, so a device
//! cannot ask for a hub identity, a server usage or a CA bit.
//!
//! Functions that read the clock have an `_at` twin that takes `now`, for tests and replays.

use crate::identity::{device_uri, hub_uri};
use crate::sha256_fingerprint;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
    SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use shared_proto::Timestamp;
use shared_proto::store::FleetCaRecord;
use shared_proto::validate::dns_label_problem;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

/// How long the fleet CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Certificates start this long before they are issued, so a device whose clock is a little
/// behind the hub's still accepts them.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Names every hub certificate carries, so local tools and health checks can always connect.
pub const HUB_DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("could not generate a key or certificate: {0}")]
    Generate(rcgen::Error),
    #[error("the stored fleet CA is unusable: {0}; restore the hub's store from a backup")]
    BadRecord(String),
    #[error("certificate signing request is malformed: {0}; the device must send a DER PKCS#10 request")]
    MalformedCsr(String),
    #[error("certificate signing request is not signed by its own key; it was altered or built wrongly")]
    CsrSignature,
    #[error(
        "certificate signing request uses an unsupported key type; devices must use ECDSA P-256, P-384 or Ed25519"
    )]
    UnsupportedKey,
    #[error("invalid {kind} name {name:?}: {problem}")]
    BadName { kind: &'static str, name: String, problem: String },
    #[error("invalid subject alternative name {0:?}: use a DNS name or an IP address")]
    BadSan(String),
    #[error("validity of {0:?} is out of range; use a shorter validity")]
    BadValidity(Duration),
    #[error("could not sign the certificate: {0}")]
    Sign(rcgen::Error),
    #[error("the system random number generator failed")]
    Random,
}

/// The fleet CA, private key included. Its `Debug` shows only the fingerprint.
pub struct FleetCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    fingerprint: [u8; 32],
}

/// A hub certificate and the private key generated for it.
pub struct HubCertificate {
    pub cert_der: Vec<u8>,
    /// PKCS#8. Write it with [`crate::files::write_private_file`]; never log it.
    pub key_pkcs8_der: Vec<u8>,
}

impl fmt::Debug for HubCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubCertificate")
            .field("cert_sha256", &hex::encode(sha256_fingerprint(&self.cert_der)))
            .field("key_pkcs8_der", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetCa").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl FleetCa {
    /// Creates a new fleet CA with a fresh key.
    pub fn generate(common_name: &str) -> Result<FleetCa, CaError> {
        FleetCa::generate_at(common_name, SystemTime::now())
    }

    pub fn generate_at(common_name: &str, now: SystemTime) -> Result<FleetCa, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, now, CA_VALIDITY)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        let cert_der = cert.der().clone();
        Ok(FleetCa { fingerprint: sha256_fingerprint(&cert_der), issuer: Issuer::new(params, key), cert_der })
    }

    /// Loads the CA from its stored record, checking that the key belongs to the certificate.
    pub fn from_record(record: &FleetCaRecord) -> Result<FleetCa, CaError> {
        let key = KeyPair::try_from(record.key_pkcs8_der.as_slice())
            .map_err(|_| CaError::BadRecord("the private key cannot be parsed".into()))?;
        let (rest, cert) = x509_parser::parse_x509_certificate(&record.cert_der)
            .map_err(|e| CaError::BadRecord(format!("the certificate cannot be parsed: {e}")))?;
        if !rest.is_empty() {
            return Err(CaError::BadRecord("trailing bytes after the certificate".into()));
        }
        if !cert.is_ca() {
            return Err(CaError::BadRecord("the certificate is not a CA certificate".into()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::BadRecord("the private key does not belong to the certificate".into()));
        }
        let cert_der = CertificateDer::from(record.cert_der.clone());
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::BadRecord(format!("the certificate cannot be used to sign: {e}")))?;
        Ok(FleetCa { fingerprint: sha256_fingerprint(&cert_der), issuer, cert_der })
    }

    /// The record to store. `now` becomes its `created_at`.
    pub fn to_record(&self, now: Timestamp) -> FleetCaRecord {
        FleetCaRecord {
            cert_der: self.cert_der.to_vec(),
            key_pkcs8_der: self.issuer.key().serialize_der(),
            created_at: now,
        }
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate, lowercase hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// SHA-256 of the CA certificate, as enrolment tokens carry it.
    pub fn fingerprint_bytes(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Signs a device's CSR, valid from an hour ago for `validity`.
    pub fn sign_device_csr(
        &self,
        csr_der: &[u8],
        device_name: &str,
        validity: Duration,
    ) -> Result<Vec<u8>, CaError> {
        self.sign_device_csr_at(csr_der, device_name, SystemTime::now(), validity)
    }

    /// Signs a device's CSR after checking its self-signature. Only the public key is taken
    /// from the request; subject, SANs and usages are set here: CN and the
    /// `flotilla://device/<name>` URI SAN name the device, the only usage is TLS client auth.
    pub fn sign_device_csr_at(
        &self,
        csr_der: &[u8],
        device_name: &str,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Vec<u8>, CaError> {
        check_name("device", device_name)?;
        let public_key = csr_public_key(csr_der)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(device_name);
        params.subject_alt_names = vec![SanType::URI(ia5(device_uri(device_name))?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, now, validity)?;
        let cert = params.signed_by(&public_key, &self.issuer).map_err(CaError::Sign)?;
        Ok(cert.der().to_vec())
    }

    /// Issues a certificate and a fresh key for hub `hub_name`.
    pub fn issue_hub_cert(
        &self,
        hub_name: &str,
        sans: &[String],
        validity: Duration,
    ) -> Result<HubCertificate, CaError> {
        self.issue_hub_cert_at(hub_name, sans, SystemTime::now(), validity)
    }

    /// Issues a hub certificate usable for both TLS server and client auth (hubs also dial
    /// each other). `sans` are DNS names or IP literals devices and the CLI use to reach the hub;
    /// [`HUB_DEFAULT_SANS`] are always added.
    pub fn issue_hub_cert_at(
        &self,
        hub_name: &str,
        sans: &[String],
        now: SystemTime,
        validity: Duration,
    ) -> Result<HubCertificate, CaError> {
        check_name("hub", hub_name)?;
        let mut alt_names = vec![SanType::URI(ia5(hub_uri(hub_name))?)];
        for san in HUB_DEFAULT_SANS.iter().copied().chain(sans.iter().map(String::as_str)) {
            let name = parse_san(san)?;
            if !alt_names.contains(&name) {
                alt_names.push(name);
            }
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(hub_name);
        params.subject_alt_names = alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, now, validity)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(CaError::Sign)?;
        Ok(HubCertificate { cert_der: cert.der().to_vec(), key_pkcs8_der: key.serialize_der() })
    }
}

/// Parses a CSR, checks it is signed by the key it carries and returns that key.
///
/// Parsed with x509-parser rather than `rcgen::CertificateSigningRequestParams::from_der`,
/// which refuses requests carrying extensions it does not know; we ignore every requested
/// extension anyway, so a CSR from any standard tool is fine.
fn csr_public_key(csr_der: &[u8]) -> Result<SubjectPublicKeyInfo, CaError> {
    let key =
        SubjectPublicKeyInfo::from_der(verified_csr_key(csr_der)?).map_err(|_| CaError::UnsupportedKey)?;
    let alg = rcgen::PublicKeyData::algorithm(&key);
    if ![&PKCS_ECDSA_P256_SHA256, &PKCS_ECDSA_P384_SHA384, &PKCS_ED25519].contains(&alg) {
        return Err(CaError::UnsupportedKey);
    }
    Ok(key)
}

/// The DER SubjectPublicKeyInfo of a CSR whose self-signature holds.
fn verified_csr_key(csr_der: &[u8]) -> Result<&[u8], CaError> {
    use x509_parser::certification_request::X509CertificationRequest;
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|e| CaError::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CaError::MalformedCsr(format!("{} trailing bytes", rest.len())));
    }
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    Ok(csr.certification_request_info.subject_pki.raw)
}

/// Hex SHA-256 of the key a CSR carries (its DER SubjectPublicKeyInfo), after checking
/// the request is signed by that key: the same value [`crate::identity::device_cert`]
/// reads off a certificate for it.
pub fn csr_key_sha256(csr_der: &[u8]) -> Result<String, CaError> {
    Ok(hex::encode(crate::sha256_fingerprint(verified_csr_key(csr_der)?)))
}

fn check_name(kind: &'static str, name: &str) -> Result<(), CaError> {
    match dns_label_problem(name) {
        None => Ok(()),
        Some(problem) => Err(CaError::BadName { kind, name: name.to_owned(), problem }),
    }
}

fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn ia5(s: String) -> Result<Ia5String, CaError> {
    Ia5String::try_from(s.clone()).map_err(|_| CaError::BadSan(s))
}

fn parse_san(s: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // A DNS name: dot-separated labels, with a leading `*.` allowed for wildcards.
    let host = s.strip_prefix("*.").unwrap_or(s);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(CaError::BadSan(s.to_owned()));
    }
    Ok(SanType::DnsName(ia5(s.to_ascii_lowercase())?))
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) -> Result<(), CaError> {
    let not_before = now.checked_sub(BACKDATE).ok_or(CaError::BadValidity(validity))?;
    let not_after = now.checked_add(validity).ok_or(CaError::BadValidity(validity))?;
    params.not_before = to_x509_time(not_before, validity)?;
    params.not_after = to_x509_time(not_after, validity)?;
    Ok(())
}

/// X.509 times have whole seconds and end in year 9999.
fn to_x509_time(t: SystemTime, validity: Duration) -> Result<OffsetDateTime, CaError> {
    let t = OffsetDateTime::from(t).replace_nanosecond(0).map_err(|_| CaError::BadValidity(validity))?;
    if t.year() > 9999 {
        return Err(CaError::BadValidity(validity));
    }
    Ok(t)
}

/// 128 random bits, positive: unpredictable serials keep two certificates for the same device
/// apart and defeat chosen-prefix attacks on the signature.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_key::DeviceKey;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    const DAY: Duration = Duration::from_secs(86_400);

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).expect("parses").1
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject_alternative_name()
            .expect("san ext")
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::URI(u) => format!("uri:{u}"),
                        GeneralName::DNSName(d) => format!("dns:{d}"),
                        GeneralName::IPAddress(ip) => format!("ip:{}", hex::encode(ip)),
                        other => format!("other:{other}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cn(cert: &X509Certificate<'_>) -> String {
        cert.subject().iter_common_name().next().expect("cn").as_str().expect("utf8").to_owned()
    }

    #[test]
    fn generated_ca_is_a_path_len_zero_signing_ca() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = FleetCa::generate_at("acme fleet", now).expect("ca");
        let cert = parse(ca.cert_der());
        assert_eq!(cn(&cert), "acme fleet");
        let bc = cert.basic_constraints().expect("bc").expect("present").value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = cert.key_usage().expect("ku").expect("present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        assert_eq!(not_before, 1_800_000_000 - 3600);
        assert_eq!(not_after, 1_800_000_000 + 10 * 365 * 86_400);
        cert.verify_signature(None).expect("self-signed");
        assert_eq!(ca.fingerprint(), hex::encode(sha256_fingerprint(ca.cert_der())));
        assert_eq!(ca.fingerprint().len(), 64);
        let debug = format!("{ca:?}");
        assert!(debug.contains(&ca.fingerprint()) && !debug.contains("key"), "{debug}");
    }

    #[test]
    fn record_round_trip_keeps_the_ca_and_its_key() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let record = ca.to_record(Timestamp(42));
        assert_eq!(record.created_at, Timestamp(42));
        let restored = FleetCa::from_record(&record).expect("restore");
        assert_eq!(restored.cert_der(), ca.cert_der());
        assert_eq!(restored.fingerprint(), ca.fingerprint());
        assert_eq!(restored.to_record(Timestamp(42)), record);
        // The restored CA signs certificates that verify against the original CA certificate.
        let key = DeviceKey::generate().expect("key");
        let cert_der =
            restored.sign_device_csr(&key.csr_der("pi-01").expect("csr"), "pi-01", DAY).expect("sign");
        let ca_cert = parse(ca.cert_der());
        parse(&cert_der).verify_signature(Some(ca_cert.public_key())).expect("signed by the CA");
    }

    #[test]
    fn record_with_a_foreign_key_is_refused() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let other = FleetCa::generate("other").expect("ca");
        let mut record = ca.to_record(Timestamp(1));
        record.key_pkcs8_der = other.to_record(Timestamp(1)).key_pkcs8_der;
        let err = FleetCa::from_record(&record).expect_err("mismatched key");
        assert!(err.to_string().contains("does not belong"), "{err}");
        record.key_pkcs8_der = vec![1, 2, 3];
        assert!(matches!(FleetCa::from_record(&record), Err(CaError::BadRecord(_))));
    }

    #[test]
    fn device_cert_is_client_only_and_names_the_device() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let der =
            ca.sign_device_csr_at(&key.csr_der("pi-01").expect("csr"), "pi-01", now, 30 * DAY).expect("sign");
        let cert = parse(&der);
        cert.verify_signature(Some(parse(ca.cert_der()).public_key())).expect("signed by the CA");
        assert_eq!(cn(&cert), "pi-01");
        assert_eq!(sans(&cert), vec!["uri:flotilla://device/pi-01".to_owned()]);
        let eku = cert.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
        let ku = cert.key_usage().expect("ku").expect("present").value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(!cert.is_ca());
        assert_eq!(cert.validity().not_before.timestamp(), 1_800_000_000 - 3600);
        assert_eq!(cert.validity().not_after.timestamp(), 1_800_000_000 + 30 * 86_400);
        assert_eq!(cert.public_key().raw, parse_spki_of(&key));
    }

    fn parse_spki_of(key: &DeviceKey) -> Vec<u8> {
        let csr = key.csr_der("x").expect("csr");
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr).expect("csr parses");
        req.certification_request_info.subject_pki.raw.to_vec()
    }

    #[test]
    fn names_and_usages_requested_in_the_csr_are_ignored() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            CertificateParams::new(vec!["evil.example".to_owned(), "10.0.0.1".to_owned()]).expect("params");
        params.subject_alt_names.push(SanType::URI(Ia5String::try_from("flotilla://hub/evil").expect("ia5")));
        params.distinguished_name = common_name_dn("someone-else");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).expect("csr");
        let der = ca.sign_device_csr(csr.der(), "pi-07", DAY).expect("sign");
        let cert = parse(&der);
        assert_eq!(cn(&cert), "pi-07");
        assert_eq!(sans(&cert), vec!["uri:flotilla://device/pi-07".to_owned()]);
        let eku = cert.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let mut csr = key.csr_der("pi-01").expect("csr");
        // Same length, different name: still parses, but the signature no longer matches.
        let at = csr.windows(5).position(|w| w == b"pi-01").expect("name in csr");
        csr[at + 4] = b'2';
        assert!(matches!(ca.sign_device_csr(&csr, "pi-02", DAY), Err(CaError::CsrSignature)));
        assert!(matches!(ca.sign_device_csr(b"garbage", "pi-01", DAY), Err(CaError::MalformedCsr(_))));
        let mut trailing = key.csr_der("pi-01").expect("csr");
        trailing.push(0);
        assert!(matches!(ca.sign_device_csr(&trailing, "pi-01", DAY), Err(CaError::MalformedCsr(_))));
    }

    #[test]
    fn invalid_device_name_is_refused() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let csr = key.csr_der("pi-01").expect("csr");
        for bad in ["", "Pi-01", "pi/01", "-pi", "pi_01"] {
            assert!(matches!(ca.sign_device_csr(&csr, bad, DAY), Err(CaError::BadName { .. })), "{bad:?}");
        }
    }

    #[test]
    fn serials_are_random() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let key = DeviceKey::generate().expect("key");
        let csr = key.csr_der("pi-01").expect("csr");
        let a = ca.sign_device_csr(&csr, "pi-01", DAY).expect("sign");
        let b = ca.sign_device_csr(&csr, "pi-01", DAY).expect("sign");
        assert_ne!(parse(&a).raw_serial(), parse(&b).raw_serial());
    }

    #[test]
    fn hub_cert_serves_and_dials_with_default_and_extra_names() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let extra = vec!["hub.example.com".to_owned(), "192.0.2.7".to_owned(), "localhost".to_owned()];
        let hub = ca.issue_hub_cert("hub-a", &extra, 365 * DAY).expect("hub");
        let cert = parse(&hub.cert_der);
        cert.verify_signature(Some(parse(ca.cert_der()).public_key())).expect("signed by the CA");
        assert_eq!(
            sans(&cert),
            vec![
                "uri:flotilla://hub/hub-a".to_owned(),
                "dns:localhost".to_owned(),
                "ip:7f000001".to_owned(),
                "ip:00000000000000000000000000000001".to_owned(),
                "dns:hub.example.com".to_owned(),
                "ip:c0000207".to_owned(),
            ]
        );
        let eku = cert.extended_key_usage().expect("eku").expect("present").value;
        assert!(eku.server_auth && eku.client_auth);
        let key = KeyPair::try_from(hub.key_pkcs8_der.as_slice()).expect("key parses");
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
        assert!(!format!("{hub:?}").contains(&hex::encode(&hub.key_pkcs8_der)));
    }

    #[test]
    fn hub_cert_refuses_bad_names() {
        let ca = FleetCa::generate("fleet").expect("ca");
        for bad in ["under_score", "", "a..b", "-a.b", "sp ace"] {
            assert!(
                matches!(ca.issue_hub_cert("hub-a", &[bad.to_owned()], DAY), Err(CaError::BadSan(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(ca.issue_hub_cert("Hub", &[], DAY), Err(CaError::BadName { kind: "hub", .. })));
    }
}
