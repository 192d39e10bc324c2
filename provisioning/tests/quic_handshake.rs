//! Real QUIC handshakes on 127.0.0.1 between the hub's and the devices' TLS configurations.

use provisioning::identity::{hub_name_from_cert, peer_device_name};
use provisioning::tls::{device_quic_client_config, enrolment_client_config, hub_quic_server_config};
use provisioning::{DeviceKey, FleetCa};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, TransportErrorCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::timeout;

const DAY: Duration = Duration::from_secs(86_400);
/// Deadline for anything a test waits on; loopback handshakes take milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

// TLS alert codes (RFC 8446 §6) as rustls sends them.
const ALERT_UNSUPPORTED_CERTIFICATE: u8 = 43;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const ALERT_UNKNOWN_CA: u8 = 48;

struct Fleet {
    ca: FleetCa,
}

impl Fleet {
    fn new(name: &str) -> Fleet {
        Fleet { ca: FleetCa::generate(name).expect("fleet CA") }
    }

    /// A hub QUIC server on an ephemeral loopback port.
    fn hub(&self) -> Endpoint {
        let hub = self.ca.issue_hub_cert("hub-a", &[], DAY).expect("hub cert");
        let key = PrivateKeyDer::try_from(hub.key_pkcs8_der).expect("hub key");
        let tls = hub_quic_server_config(vec![CertificateDer::from(hub.cert_der)], key, self.ca.cert_der())
            .expect("hub tls config");
        server_on_loopback(tls)
    }

    /// A device key and its certificate signed by this fleet, valid from `issued_at`.
    fn device(&self, name: &str, issued_at: SystemTime, validity: Duration) -> (DeviceKey, Vec<u8>) {
        let key = DeviceKey::generate().expect("device key");
        let cert = self
            .ca
            .sign_device_csr_at(&key.csr_der(name).expect("csr"), name, issued_at, validity)
            .expect("device cert");
        (key, cert)
    }

    fn device_tls(&self, key: &DeviceKey, cert: Vec<u8>) -> Arc<rustls::ClientConfig> {
        device_quic_client_config(vec![CertificateDer::from(cert)], key.private_key_der(), self.ca.cert_der())
            .expect("device tls config")
    }
}

fn server_on_loopback(tls: Arc<rustls::ServerConfig>) -> Endpoint {
    let quic = QuicServerConfig::try_from(tls).expect("TLS 1.3 with an AES-128-GCM initial suite");
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    Endpoint::server(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind hub")
}

/// Dials `hub` as "localhost" and accepts on the hub side at the same time.
async fn handshake(
    hub: &Endpoint,
    client_tls: Arc<rustls::ClientConfig>,
) -> (Result<Connection, ConnectionError>, Result<Connection, ConnectionError>) {
    let quic = QuicClientConfig::try_from(client_tls).expect("TLS 1.3 with an AES-128-GCM initial suite");
    let client_config = quinn::ClientConfig::new(Arc::new(quic));
    let client = Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind client");
    let hub_addr = hub.local_addr().expect("hub addr");
    let dial = async {
        let connecting = client.connect_with(client_config, hub_addr, "localhost").expect("connect");
        connecting.await
    };
    let accept = async {
        let incoming = hub.accept().await.expect("hub endpoint open");
        incoming.await
    };
    timeout(DEADLINE, async { tokio::join!(dial, accept) }).await.expect("handshake finished in time")
}

/// The TLS alert that closed the connection, whichever side sent it.
fn alert_of(err: &ConnectionError) -> Option<TransportErrorCode> {
    match err {
        ConnectionError::TransportError(e) => Some(e.code),
        ConnectionError::ConnectionClosed(close) => Some(close.error_code),
        _ => None,
    }
}

/// A handshake the hub refused: the hub side failed with `alert`, and the device side either
/// failed too or sees its connection closed (TLS 1.3 clients finish before the server has
/// checked their certificate).
async fn assert_hub_refused(
    result: (Result<Connection, ConnectionError>, Result<Connection, ConnectionError>),
    alert: u8,
) {
    let (device, hub) = result;
    let hub_err = hub.expect_err("hub must refuse the device");
    assert_eq!(alert_of(&hub_err), Some(TransportErrorCode::crypto(alert)), "hub: {hub_err}");
    let device_err = match device {
        Err(e) => e,
        Ok(conn) => timeout(DEADLINE, conn.closed()).await.expect("device sees the close in time"),
    };
    assert_eq!(alert_of(&device_err), Some(TransportErrorCode::crypto(alert)), "device: {device_err}");
}

/// Sends one message from the device and reads it on the hub, proving the connection carries data.
async fn exchange(device: &Connection, hub: &Connection) {
    let send = async {
        let mut stream = device.open_uni().await.expect("open stream");
        stream.write_all(b"hello hub").await.expect("write");
        stream.finish().expect("finish");
        stream.stopped().await.ok();
    };
    let receive = async {
        let mut stream = hub.accept_uni().await.expect("accept stream");
        stream.read_to_end(64).await.expect("read")
    };
    let ((), got) = timeout(DEADLINE, async { tokio::join!(send, receive) }).await.expect("exchange in time");
    assert_eq!(got, b"hello hub");
}

#[tokio::test]
async fn enrolled_device_connects_and_hub_learns_its_name() {
    let fleet = Fleet::new("fleet");
    let hub = fleet.hub();
    let (key, cert) = fleet.device("pi-01", SystemTime::now(), 30 * DAY);
    let (device, hub_side) = handshake(&hub, fleet.device_tls(&key, cert)).await;
    let device = device.expect("device connects");
    let hub_side = hub_side.expect("hub accepts");

    assert_eq!(peer_device_name(hub_side.peer_identity()).expect("device identity"), Some("pi-01".into()));
    // The device, in turn, sees the hub's identity; the chain ends with the fleet CA.
    let chain = device
        .peer_identity()
        .expect("hub identity")
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("certificate chain");
    assert_eq!(hub_name_from_cert(&chain[0]).expect("hub name"), "hub-a");
    assert_eq!(chain.last().expect("ca"), fleet.ca.cert_der());
    assert_eq!(
        device.handshake_data().and_then(|d| {
            d.downcast::<quinn::crypto::rustls::HandshakeData>().ok().and_then(|h| h.protocol)
        }),
        Some(shared_proto::wire::ALPN.to_vec())
    );
    exchange(&device, &hub_side).await;
}

#[tokio::test]
async fn device_certified_by_another_ca_is_refused() {
    let fleet = Fleet::new("fleet");
    let other = Fleet::new("other fleet");
    let hub = fleet.hub();
    // Signed by another CA, but the device still trusts (and checks) our hub.
    let (key, cert) = other.device("pi-01", SystemTime::now(), 30 * DAY);
    let tls = device_quic_client_config(
        vec![CertificateDer::from(cert)],
        key.private_key_der(),
        fleet.ca.cert_der(),
    )
    .expect("device tls config");
    assert_hub_refused(handshake(&hub, tls).await, ALERT_UNKNOWN_CA).await;
}

#[tokio::test]
async fn enrolling_device_connects_without_identity() {
    let fleet = Fleet::new("fleet");
    let hub = fleet.hub();
    let tls = enrolment_client_config(fleet.ca.fingerprint_bytes()).expect("enrolment tls config");
    let (device, hub_side) = handshake(&hub, tls).await;
    let device = device.expect("enrolling device connects");
    let hub_side = hub_side.expect("hub accepts");
    assert!(hub_side.peer_identity().is_none());
    assert_eq!(peer_device_name(hub_side.peer_identity()).expect("no identity is not an error"), None);
    exchange(&device, &hub_side).await;
}

#[tokio::test]
async fn enrolling_device_refuses_a_hub_with_another_ca() {
    let fleet = Fleet::new("fleet");
    let impostor = Fleet::new("impostor");
    let hub = impostor.hub();
    let tls = enrolment_client_config(fleet.ca.fingerprint_bytes()).expect("enrolment tls config");
    let (device, hub_side) = handshake(&hub, tls).await;
    let device_err = device.expect_err("device must refuse the hub");
    assert_eq!(
        alert_of(&device_err),
        Some(TransportErrorCode::crypto(ALERT_CERTIFICATE_UNKNOWN)),
        "{device_err}"
    );
    assert!(device_err.to_string().contains("fingerprint"), "{device_err}");
    assert!(hub_side.is_err(), "hub side must fail too");
}

#[tokio::test]
async fn enrolling_device_refuses_a_device_certificate_posing_as_hub() {
    // Someone who enrolled a device of their own holds a fleet-signed certificate and knows the
    // (public) CA. They still cannot act as a hub: device certificates lack ServerAuth.
    let fleet = Fleet::new("fleet");
    let (rogue_key, rogue_cert) = fleet.device("rogue", SystemTime::now(), 30 * DAY);
    let tls = hub_quic_server_config(
        vec![CertificateDer::from(rogue_cert)],
        rogue_key.private_key_der(),
        fleet.ca.cert_der(),
    )
    .expect("rogue tls config");
    let rogue_hub = server_on_loopback(tls);
    let enrol = enrolment_client_config(fleet.ca.fingerprint_bytes()).expect("enrolment tls config");
    let (device, _) = handshake(&rogue_hub, enrol).await;
    let err = device.expect_err("device must refuse");
    assert_eq!(alert_of(&err), Some(TransportErrorCode::crypto(ALERT_UNSUPPORTED_CERTIFICATE)), "{err}");

    let (key, cert) = fleet.device("pi-01", SystemTime::now(), 30 * DAY);
    let (device, _) = handshake(&rogue_hub, fleet.device_tls(&key, cert)).await;
    let err = device.expect_err("enrolled device must refuse");
    assert_eq!(alert_of(&err), Some(TransportErrorCode::crypto(ALERT_UNSUPPORTED_CERTIFICATE)), "{err}");
}

#[tokio::test]
async fn expired_device_certificate_is_refused() {
    let fleet = Fleet::new("fleet");
    let hub = fleet.hub();
    // Issued ten days ago for one day.
    let issued_at = SystemTime::now() - 10 * DAY;
    let (key, cert) = fleet.device("pi-01", issued_at, DAY);
    assert_hub_refused(handshake(&hub, fleet.device_tls(&key, cert)).await, ALERT_CERTIFICATE_EXPIRED).await;

    // The same device with a current certificate gets in: the refusal was about expiry.
    let current =
        fleet.ca.sign_device_csr(&key.csr_der("pi-01").expect("csr"), "pi-01", DAY).expect("renewed cert");
    let (device, hub_side) = handshake(&hub, fleet.device_tls(&key, current)).await;
    device.expect("device connects");
    hub_side.expect("hub accepts");
}
