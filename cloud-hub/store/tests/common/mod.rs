//! Helpers shared by the store's integration tests: objects, node configs on loopback, and
//! waiting for a condition with a deadline (never sleep-then-assert).

#![allow(dead_code)]

use hub_store::{NodeId, RaftTuning, Store, StoreConfig};
use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::{ObjectMeta, Site, SiteSpec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Long enough for an election on a loaded 2-core machine, short enough to fail a hung test.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn site(name: &str, location: &str) -> Object {
    Object::Site(Site::new(
        ObjectMeta::named(name),
        SiteSpec { display_name: format!("Site {name}"), location: location.to_string() },
    ))
}

pub fn put(object: Object, precondition: Precondition) -> StoreCommand {
    StoreCommand::put(object, precondition)
}

pub fn delete(kind: StoreKind, name: &str, precondition: Precondition) -> StoreCommand {
    StoreCommand::Delete { kind, name: name.to_string(), precondition }
}

pub fn applied(outcome: StoreOutcome) -> u64 {
    match outcome {
        StoreOutcome::Applied { revision } => revision,
        other => panic!("expected an applied write, got {other:?}"),
    }
}

/// A loopback address nobody listens on right now. The store binds it again right after, so a
/// collision with another process is possible but vanishingly unlikely.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

pub fn single_node_config(dir: &Path) -> StoreConfig {
    StoreConfig::single_node(dir.to_path_buf())
}

pub fn node_config(
    dir: &Path,
    node_id: NodeId,
    addr: SocketAddr,
    members: &BTreeMap<NodeId, String>,
) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        node_id,
        raft_addr: Some(addr),
        initial_members: members.clone(),
        peer_tls: None,
    }
}

/// Faster than the defaults so failover tests finish quickly, still far above loopback RTTs.
pub fn test_tuning() -> RaftTuning {
    RaftTuning {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(600),
        election_timeout_max: Duration::from_millis(1200),
        ..RaftTuning::default()
    }
}

/// Sends the store's logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=warn`).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Polls `cond` until it holds, failing the test at the deadline.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every store in `stores` names the same leader, and returns it.
pub async fn agreed_leader(stores: &[&Store]) -> NodeId {
    let mut leader = None;
    eventually("the nodes to agree on a leader", || {
        let leaders: Vec<_> = stores.iter().map(|s| s.leader().borrow().to_owned()).collect();
        let first = leaders[0];
        let agreed = first.is_some() && leaders.iter().all(|l| *l == first);
        let led = first.is_some_and(|id| stores.iter().any(|s| s.node_id() == id && s.is_leader()));
        if agreed && led {
            leader = first;
        }
        agreed && led
    })
    .await;
    leader.expect("leader agreed")
}

pub fn names(objects: &[Object]) -> Vec<String> {
    objects.iter().map(|o| o.name().to_string()).collect()
}

/// A test CA that issues hub certificates (with a raft name) and device-like ones (without).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert_der: cert.der().to_vec(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate and key for these DNS names, usable as client and server certificate.
    pub fn issue(&self, names: &[String]) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().to_vec(), key.serialize_der())
    }

    /// Mutual TLS for a holder of `(cert, key)`, trusting this CA.
    pub fn tls_with(&self, cert: Vec<u8>, key: Vec<u8>) -> hub_store::PeerTls {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.cert_der.clone())).unwrap();
        let roots = std::sync::Arc::new(roots);
        let chain = vec![CertificateDer::from(cert)];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone()).build().unwrap();
        let server = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        hub_store::PeerTls { server: std::sync::Arc::new(server), client: std::sync::Arc::new(client) }
    }

    /// Mutual TLS for hub `id`.
    pub fn hub_tls(&self, id: NodeId) -> hub_store::PeerTls {
        let (cert, key) = self.issue(&[hub_store::peer_name(id), "localhost".into()]);
        self.tls_with(cert, key)
    }
}

/// [`node_config`] with mutual TLS from `ca`.
pub fn tls_node_config(
    dir: &Path,
    node_id: NodeId,
    addr: SocketAddr,
    members: &BTreeMap<NodeId, String>,
    ca: &TestCa,
) -> StoreConfig {
    StoreConfig { peer_tls: Some(ca.hub_tls(node_id)), ..node_config(dir, node_id, addr, members) }
}
