//! What the router-level tests share: a hub's state over a real one-member store, as
//! `hub serve` builds it, with test addresses and a fixed sealing key.

use cloud_hub::api::{HubConfig, HubState};
use cloud_hub::sync::admission::AdmissionControl;
use cloud_hub::sync::fanout::ManifestFanout;
use cloud_hub::sync::liveness::LivenessTable;
use hub_store::Store;
use shared_proto::store::{Object, Precondition, StoreCommand};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Gives the store a fleet CA and returns the hub state over it, with blobs under `dir`.
pub async fn hub_state(dir: &Path, store: &Store) -> Arc<HubState> {
    let ca = provisioning::ca::FleetCa::generate("test CA").unwrap();
    let key = Arc::new(cloud_hub::sealing::HubKey::from_bytes(&[9; 32]));
    store
        .write(StoreCommand::put(
            Object::FleetCa(key.seal_ca(ca.to_record(shared_proto::Timestamp(1))).unwrap()),
            Precondition::MustNotExist,
        ))
        .await
        .unwrap();
    let clock = shared_proto::clock::SystemClock::shared();
    let settings = cloud_hub::sync::pki::HubCertSettings {
        name: "hub".into(),
        sans: vec![],
        lifetime: Duration::from_secs(3600),
        identity_dir: None,
    };
    let pki =
        Arc::new(cloud_hub::sync::pki::Pki::load(store, key.clone(), settings, clock.clone()).await.unwrap());
    let live = Arc::new(LivenessTable::default());
    Arc::new(HubState {
        store: store.clone(),
        blobs: images::BlobStore::open(dir.join("blobs")).unwrap(),
        live: live.clone(),
        fleet: Arc::new(cloud_hub::sync::fleet::FleetLiveness::new(live)),
        fanout: Arc::new(ManifestFanout::default()),
        identities: Default::default(),
        sessions: Default::default(),
        pki,
        config: HubConfig {
            data_dir: dir.to_path_buf(),
            max_image_bytes: 1 << 20,
            quic_addr: "127.0.0.1:7441".parse().unwrap(),
            heartbeat_interval: Duration::from_secs(30),
            device_cert_validity: Duration::from_secs(3600),
            agent_address: Ok("127.0.0.1:7441".into()),
        },
        clock,
        admission: std::sync::Mutex::new(AdmissionControl::new(Default::default())),
        key,
        attach: Default::default(),
        peers: Default::default(),
        metrics: Default::default(),
        hubs: Default::default(),
    })
}
