//! rustls configurations for the hub↔agent QUIC link, enrolment and the hub's HTTPS API.
//!
//! Every configuration is built with the ring provider passed explicitly, so it never depends
//! on (or panics over) a process-wide default provider. QUIC configurations are TLS 1.3 only
//! and insist on ALPN [`shared_proto::wire::ALPN`]; they are ready for
//! `quinn::crypto::rustls::QuicServerConfig::try_from` / `QuicClientConfig::try_from`. 0-RTT
//! stays off (rustls' default), so nothing an agent sends can be replayed.
//!
//! Trust is the fleet CA alone: no system roots anywhere.

use crate::sha256_fingerprint;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::VerifierBuilderError;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use shared_proto::wire::ALPN;
use std::fmt;
use std::sync::Arc;

/// ALPN of the hub's HTTPS API.
pub const API_ALPN: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the fleet CA certificate cannot be used as a trust anchor: {0}")]
    BadCa(rustls::Error),
    #[error("could not build the certificate verifier: {0}")]
    Verifier(#[from] VerifierBuilderError),
    #[error(
        "certificate and key are not usable together: {0}; check that the key belongs to the certificate"
    )]
    CertOrKey(rustls::Error),
    #[error("the crypto provider does not support the required TLS versions: {0}")]
    Versions(rustls::Error),
}

/// The ring provider every configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The hub's QUIC server configuration.
///
/// Client certificates are verified against the fleet CA (chain, validity and the ClientAuth
/// usage, by webpki) but are OPTIONAL: a device that is enrolling has no certificate yet. So
/// the hub must look at every connection after the handshake:
/// - no peer identity (`quinn::Connection::peer_identity()` is `None`): the connection may open
///   only an `Enrol` stream; close it on anything else;
/// - a certificate chain: map it with [`crate::identity::peer_device_name`] and check the device
///   still exists in the store before serving `Sync` or `Blob`; refuse a chain that names no
///   device (a hub certificate), and refuse a `Sync` whose `AgentHello::device` differs.
///
/// The fleet CA certificate is appended to `hub_cert_chain` when it is not already last:
/// an enrolling device, which knows only the CA's fingerprint, needs it in the chain.
pub fn hub_quic_server_config(
    hub_cert_chain: Vec<CertificateDer<'static>>,
    hub_key: PrivateKeyDer<'static>,
    fleet_ca_der: &CertificateDer<'_>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(fleet_roots(fleet_ca_der)?, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut chain = hub_cert_chain;
    if chain.last().map(|c| c.as_ref()) != Some(fleet_ca_der.as_ref()) {
        chain.push(fleet_ca_der.clone().into_owned());
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, hub_key)
        .map_err(TlsError::CertOrKey)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// An enrolled device's QUIC client configuration: trusts only hubs certified by the fleet CA
/// (name checked against the address the agent dials) and presents the device certificate.
pub fn device_quic_client_config(
    device_cert_chain: Vec<CertificateDer<'static>>,
    device_key: PrivateKeyDer<'static>,
    fleet_ca_der: &CertificateDer<'_>,
) -> Result<Arc<ClientConfig>, TlsError> {
    device_quic_client_config_trusting(device_cert_chain, device_key, std::slice::from_ref(fleet_ca_der))
}

/// [`device_quic_client_config`] trusting several CAs: the fleet CA and, while it is
/// being rotated, the one replacing it or the one it replaced.
pub fn device_quic_client_config_trusting(
    device_cert_chain: Vec<CertificateDer<'static>>,
    device_key: PrivateKeyDer<'static>,
    trusted: &[CertificateDer<'_>],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Versions)?
        .with_root_certificates(roots(trusted)?)
        .with_client_auth_cert(device_cert_chain, device_key)
        .map_err(TlsError::CertOrKey)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The QUIC client configuration of a device that is enrolling. It knows only the fleet CA's
/// fingerprint from its enrolment token: the hub must present a chain whose last certificate is
/// the CA with exactly that SHA-256, and its leaf must verify against that CA as a server
/// certificate for the dialled name. No client certificate is sent.
pub fn enrolment_client_config(ca_fingerprint: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier { ca_fingerprint, provider: provider.clone() });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The hub's HTTPS API server: TLS 1.2 and 1.3, ALPN `http/1.1`. Callers authenticate with
/// API tokens, not certificates.
pub fn api_server_config(
    hub_cert_chain: Vec<CertificateDer<'static>>,
    hub_key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .with_no_client_auth()
        .with_single_cert(hub_cert_chain, hub_key)
        .map_err(TlsError::CertOrKey)?;
    config.alpn_protocols = vec![API_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The CLI's HTTPS client: trusts only hubs certified by the fleet CA.
pub fn api_client_config(fleet_ca_der: &CertificateDer<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    api_client_config_trusting(std::slice::from_ref(fleet_ca_der))
}

/// [`api_client_config`] trusting several CAs (a CA rotation).
pub fn api_client_config_trusting(trusted: &[CertificateDer<'_>]) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .with_root_certificates(roots(trusted)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![API_ALPN.to_vec()];
    Ok(Arc::new(config))
}

fn fleet_roots(fleet_ca_der: &CertificateDer<'_>) -> Result<Arc<RootCertStore>, TlsError> {
    roots(std::slice::from_ref(fleet_ca_der))
}

/// Whether every certificate in `trusted` can serve as a trust anchor.
pub fn check_trust_anchors(trusted: &[CertificateDer<'_>]) -> Result<(), TlsError> {
    roots(trusted).map(|_| ())
}

fn roots(trusted: &[CertificateDer<'_>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in trusted {
        roots.add(ca.clone().into_owned()).map_err(TlsError::BadCa)?;
    }
    Ok(Arc::new(roots))
}

/// The hub's TLS identity while it runs, for both the QUIC endpoint and the HTTPS API:
/// its certificate, renewed before it expires and issued again when the fleet CA
/// rotates, and the CAs whose device certificates it accepts. Connections already open
/// keep what they were opened with; every new handshake uses the latest.
///
/// Device certificates are verified by webpki against the trusted CAs (chain and
/// ClientAuth usage) with one exception: an expired certificate that is otherwise
/// valid passes, so that a device back from months offline can prove who it is and
/// ask to be let back in. The hub must therefore check expiry itself after the
/// handshake ([`crate::identity::DeviceCert::not_after`]) and give such a connection
/// nothing but a renewal stream, which quarantines the device.
pub struct HubTls {
    cert: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    verifier: std::sync::RwLock<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    /// Verifies the other hubs' certificates (Raft), against the same CAs.
    peer_verifier: std::sync::RwLock<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for HubTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubTls").finish_non_exhaustive()
    }
}

impl HubTls {
    /// `chain` is the hub's certificate and the CA that signed it; `trusted` every CA
    /// whose device certificates open connections.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trusted: &[CertificateDer<'_>],
    ) -> Result<Arc<HubTls>, TlsError> {
        let provider = provider();
        let cert = Arc::new(
            rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(TlsError::CertOrKey)?,
        );
        let verifier = client_verifier(trusted, &provider)?;
        let peer_verifier = peer_verifier(trusted, &provider)?;
        Ok(Arc::new(HubTls {
            cert: std::sync::RwLock::new(cert),
            verifier: std::sync::RwLock::new(verifier),
            peer_verifier: std::sync::RwLock::new(peer_verifier),
            provider,
        }))
    }

    /// Replaces the certificate and the trusted CAs, for every handshake from now on.
    pub fn update(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trusted: &[CertificateDer<'_>],
    ) -> Result<(), TlsError> {
        let cert = Arc::new(
            rustls::sign::CertifiedKey::from_der(chain, key, &self.provider).map_err(TlsError::CertOrKey)?,
        );
        let verifier = client_verifier(trusted, &self.provider)?;
        let peer_verifier = peer_verifier(trusted, &self.provider)?;
        *self.cert.write().unwrap_or_else(|p| p.into_inner()) = cert;
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = verifier;
        *self.peer_verifier.write().unwrap_or_else(|p| p.into_inner()) = peer_verifier;
        Ok(())
    }

    /// The certificate chain presented now (the hub's certificate first), for saving it.
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert.read().unwrap_or_else(|p| p.into_inner()).cert.clone()
    }

    /// The Raft listener's configuration: TLS 1.3, a client certificate from the trusted
    /// CAs required (chain, validity, ClientAuth usage; an expired one is refused). The
    /// store then also requires a hub's raft name in it, which a device never has.
    pub fn raft_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Versions)?
            .with_client_cert_verifier(Arc::new(LiveVerifier { tls: self.clone(), for_hubs: true }))
            .with_cert_resolver(Arc::new(LiveCert(self.clone())));
        Ok(Arc::new(config))
    }

    /// The Raft client's configuration: TLS 1.3, presents the hub's certificate, and
    /// verifies the peer's against the trusted CAs for the name dialled (its raft name).
    pub fn raft_client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Versions)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerServerVerifier(self.clone())))
            .with_client_cert_resolver(Arc::new(LiveCert(self.clone())));
        Ok(Arc::new(config))
    }

    fn current_verifier(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        self.verifier.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The QUIC endpoint's configuration: TLS 1.3, ALPN [`ALPN`], client certificates
    /// optional (an enrolling device has none).
    pub fn quic_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Versions)?
            .with_client_cert_verifier(Arc::new(LiveVerifier { tls: self.clone(), for_hubs: false }))
            .with_cert_resolver(Arc::new(LiveCert(self.clone())));
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// The HTTPS API's configuration: TLS 1.2 and 1.3, ALPN `http/1.1`, no client
    /// certificates.
    pub fn api_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LiveCert(self.clone())));
        config.alpn_protocols = vec![API_ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

fn client_verifier(
    trusted: &[CertificateDer<'_>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    Ok(WebPkiClientVerifier::builder_with_provider(roots(trusted)?, provider.clone())
        .allow_unauthenticated()
        .build()?)
}

fn peer_verifier(
    trusted: &[CertificateDer<'_>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    Ok(WebPkiServerVerifier::builder_with_provider(roots(trusted)?, provider.clone()).build()?)
}

#[derive(Debug)]
struct LiveCert(Arc<HubTls>);

impl rustls::client::ResolvesClientCert for LiveCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.cert.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Another hub's certificate, as a server, checked against the CAs trusted now.
#[derive(Debug)]
struct PeerServerVerifier(Arc<HubTls>);

impl PeerServerVerifier {
    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.0.peer_verifier.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

impl rustls::server::ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.cert.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Client certificates checked against the CAs trusted now. For devices (`for_hubs:
/// false`) a certificate is optional (an enrolling device has none) and an expired one
/// passes for the hub to quarantine; for other hubs (Raft) one is required and verified
/// strictly.
#[derive(Debug)]
struct LiveVerifier {
    tls: Arc<HubTls>,
    for_hubs: bool,
}

impl rustls::server::danger::ClientCertVerifier for LiveVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.for_hubs
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // The hint is optional, and a device holds one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verifier = self.tls.current_verifier();
        if self.for_hubs {
            return verifier.verify_client_cert(end_entity, intermediates, now);
        }
        match verifier.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => {
                // Everything but the date must hold: verify as of its last valid second.
                let not_after = not_after(end_entity)
                    .ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
                verifier.verify_client_cert(end_entity, intermediates, not_after)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls.current_verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls.current_verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.current_verifier().supported_verify_schemes()
    }
}

/// The `notAfter` of a certificate.
fn not_after(cert: &CertificateDer<'_>) -> Option<UnixTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)))
}

/// The hub did not present the fleet CA named in the enrolment token.
#[derive(thiserror::Error)]
#[error(
    "the hub's CA does not match the fingerprint in the enrolment token; check the hub address and the token"
)]
struct CaFingerprintMismatch;

// rustls shows `OtherError`s with `Debug`: make that the readable message.
impl fmt::Debug for CaFingerprintMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Trusts the CA that the hub presents last in its chain, if its SHA-256 is the pinned one.
struct PinnedCaVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier").field("ca_fingerprint", &hex::encode(self.ca_fingerprint)).finish()
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mismatch = || {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                CaFingerprintMismatch,
            ))))
        };
        let (ca, rest) = intermediates.split_last().ok_or_else(mismatch)?;
        // The fingerprint is public, so a plain comparison leaks nothing.
        if sha256_fingerprint(ca) != self.ca_fingerprint {
            return Err(mismatch());
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, rest, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    //! In-memory handshakes (no sockets): the QUIC configurations are exercised over real
    //! QUIC in `tests/quic_handshake.rs`.
    use super::*;
    use crate::ca::FleetCa;
    use rustls::{ClientConnection, ServerConnection};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Runs a TLS handshake between two in-memory connections.
    fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            let mut buf = Vec::new();
            client.write_tls(&mut buf).map_err(|e| rustls::Error::General(e.to_string()))?;
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                server.read_tls(&mut rd).map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).map_err(|e| rustls::Error::General(e.to_string()))?;
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                client.read_tls(&mut rd).map_err(|e| rustls::Error::General(e.to_string()))?;
            }
            client.process_new_packets()?;
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    fn hub_api(ca: &FleetCa) -> Arc<ServerConfig> {
        let hub = ca.issue_hub_cert("hub-a", &["hub.example.com".into()], DAY).expect("hub cert");
        api_server_config(
            vec![CertificateDer::from(hub.cert_der)],
            PrivateKeyDer::try_from(hub.key_pkcs8_der).expect("key"),
        )
        .expect("server config")
    }

    #[test]
    fn api_client_trusts_a_fleet_hub_over_tls13_and_tls12() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let server_config = hub_api(&ca);
        let client_config = api_client_config(ca.cert_der()).expect("client config");
        let mut tls12 = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("tls12")
            .with_root_certificates(fleet_roots(ca.cert_der()).expect("roots"))
            .with_no_client_auth();
        tls12.alpn_protocols = vec![API_ALPN.to_vec()];
        let tls12 = Arc::new(tls12);
        for (config, version) in
            [(client_config, rustls::ProtocolVersion::TLSv1_3), (tls12, rustls::ProtocolVersion::TLSv1_2)]
        {
            let name = ServerName::try_from("hub.example.com").expect("name");
            let mut client = ClientConnection::new(config, name).expect("client");
            let mut server = ServerConnection::new(server_config.clone()).expect("server");
            handshake(&mut client, &mut server).expect("handshake");
            assert_eq!(client.protocol_version(), Some(version));
            assert_eq!(client.alpn_protocol(), Some(API_ALPN));
        }
    }

    #[test]
    fn api_client_refuses_a_hub_from_another_fleet_and_a_wrong_name() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let other = FleetCa::generate("other fleet").expect("ca");
        let server_config = hub_api(&other);
        let client_config = api_client_config(ca.cert_der()).expect("client config");
        let mut client =
            ClientConnection::new(client_config.clone(), ServerName::try_from("localhost").expect("name"))
                .expect("client");
        let mut server = ServerConnection::new(server_config).expect("server");
        let err = handshake(&mut client, &mut server).expect_err("foreign hub");
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)), "{err}");

        let mut client =
            ClientConnection::new(client_config, ServerName::try_from("elsewhere.example").expect("name"))
                .expect("client");
        let mut server = ServerConnection::new(hub_api(&ca)).expect("server");
        let err = handshake(&mut client, &mut server).expect_err("wrong name");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })),
            "{err}"
        );
    }

    #[test]
    fn quic_configs_are_tls13_only_with_the_flotilla_alpn() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let hub = ca.issue_hub_cert("hub-a", &[], DAY).expect("hub cert");
        let key = PrivateKeyDer::try_from(hub.key_pkcs8_der.clone()).expect("key");
        let server =
            hub_quic_server_config(vec![CertificateDer::from(hub.cert_der.clone())], key, ca.cert_der())
                .expect("server");
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(server.max_early_data_size, 0);
        let enrol = enrolment_client_config(ca.fingerprint_bytes()).expect("client");
        assert_eq!(enrol.alpn_protocols, vec![ALPN.to_vec()]);
        assert!(!enrol.enable_early_data);
        assert!(!enrol.client_auth_cert_resolver.has_certs());
    }

    fn device_client(
        ca: &FleetCa,
        trusted: &[CertificateDer<'_>],
        issued: std::time::SystemTime,
    ) -> Arc<ClientConfig> {
        let key = crate::device_key::DeviceKey::generate().expect("key");
        let cert =
            ca.sign_device_csr_at(&key.csr_der("pi-01").expect("csr"), "pi-01", issued, DAY).expect("signed");
        device_quic_client_config_trusting(vec![CertificateDer::from(cert)], key.private_key_der(), trusted)
            .expect("client")
    }

    fn hub_tls(ca: &FleetCa, trusted: &[CertificateDer<'_>]) -> Arc<HubTls> {
        let hub = ca.issue_hub_cert("hub-a", &[], DAY).expect("hub cert");
        HubTls::new(
            vec![CertificateDer::from(hub.cert_der), ca.cert_der().clone()],
            PrivateKeyDer::try_from(hub.key_pkcs8_der).expect("key"),
            trusted,
        )
        .expect("hub tls")
    }

    fn connect(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Result<ServerConnection, rustls::Error> {
        let mut client =
            ClientConnection::new(client, ServerName::try_from("localhost").expect("name")).expect("client");
        let mut server = ServerConnection::new(server).expect("server");
        handshake(&mut client, &mut server)?;
        Ok(server)
    }

    #[test]
    fn the_hub_accepts_an_expired_device_certificate_of_a_trusted_ca_and_nothing_else() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let tls = hub_tls(&ca, &[ca.cert_der().clone()]);
        let server = tls.quic_server_config().expect("server");
        let now = std::time::SystemTime::now();
        let fresh =
            connect(device_client(&ca, &[ca.cert_der().clone()], now), server.clone()).expect("valid");
        assert!(fresh.peer_certificates().is_some());
        let expired = connect(device_client(&ca, &[ca.cert_der().clone()], now - 3 * DAY), server.clone())
            .expect("an expired certificate still proves who the device is");
        let leaf = &expired.peer_certificates().expect("presented")[0];
        let cert = crate::identity::device_cert(leaf).expect("device cert");
        assert!(cert.expired(shared_proto::Timestamp::from_system_time(now)), "the hub sees it is expired");
        let other = FleetCa::generate("other").expect("ca");
        let err = connect(device_client(&other, &[ca.cert_der().clone()], now - 3 * DAY), server)
            .expect_err("a foreign CA's certificate, expired or not");
        assert!(
            matches!(err, rustls::Error::AlertReceived(_) | rustls::Error::InvalidCertificate(_)),
            "{err}"
        );
    }

    #[test]
    fn an_update_changes_what_new_handshakes_present_and_trust() {
        let old = FleetCa::generate("fleet").expect("ca");
        let new = FleetCa::generate("fleet").expect("ca");
        let tls = hub_tls(&old, &[old.cert_der().clone()]);
        let server = tls.quic_server_config().expect("server");
        let now = std::time::SystemTime::now();
        // A device of the new CA is refused, and one trusting only the new CA refuses the hub.
        assert!(connect(device_client(&new, &[old.cert_der().clone()], now), server.clone()).is_err());
        assert!(connect(device_client(&old, &[new.cert_der().clone()], now), server.clone()).is_err());
        let hub = new.issue_hub_cert("hub-a", &[], DAY).expect("hub cert");
        tls.update(
            vec![CertificateDer::from(hub.cert_der), new.cert_der().clone()],
            PrivateKeyDer::try_from(hub.key_pkcs8_der).expect("key"),
            &[new.cert_der().clone(), old.cert_der().clone()],
        )
        .expect("update");
        let both = [old.cert_der().clone(), new.cert_der().clone()];
        connect(device_client(&new, &both, now), server.clone()).expect("new CA's device, hub of the new CA");
        connect(device_client(&old, &both, now), server.clone()).expect("the old CA's devices still get in");
        assert!(
            connect(device_client(&old, &[old.cert_der().clone()], now), server).is_err(),
            "a device that never learnt the new CA refuses the hub"
        );
    }

    #[test]
    fn mismatched_key_is_refused() {
        let ca = FleetCa::generate("fleet").expect("ca");
        let hub = ca.issue_hub_cert("hub-a", &[], DAY).expect("hub cert");
        let other = ca.issue_hub_cert("hub-b", &[], DAY).expect("hub cert");
        let wrong_key = PrivateKeyDer::try_from(other.key_pkcs8_der).expect("key");
        let err =
            api_server_config(vec![CertificateDer::from(hub.cert_der)], wrong_key).expect_err("mismatch");
        assert!(matches!(err, TlsError::CertOrKey(_)), "{err}");
    }
}
