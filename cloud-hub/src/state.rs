//! What the hub's API handlers and QUIC sessions share.

use crate::sync::admission::AdmissionControl;
use crate::sync::clones::SessionBook;
use crate::sync::fanout::ManifestFanout;
use crate::sync::identity::LiveIdentities;
use crate::sync::liveness::LivenessTable;
use hub_store::Store;
use shared_proto::clock::SharedClock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    /// Largest image archive `POST /api/v1/images` accepts.
    pub max_image_bytes: u64,
    pub quic_addr: SocketAddr,
    /// How often agents send heartbeats (told to them in the welcome frame).
    pub heartbeat_interval: Duration,
    /// How long device certificates are valid; they are renewed at two thirds.
    pub device_cert_validity: Duration,
    /// The `host:port` devices are told to dial (`crate::advertise`), or why there is none.
    pub agent_address: Result<String, crate::advertise::NoAddress>,
}

pub struct HubState {
    pub store: Store,
    pub blobs: images::blobstore::BlobStore,
    pub live: Arc<LivenessTable>,
    /// This hub's table merged, on the leader, with the other hubs' (`sync::fleet`).
    pub fleet: Arc<crate::sync::fleet::FleetLiveness>,
    pub fanout: Arc<ManifestFanout>,
    /// Live authenticated connections, closed when their certificate stops counting.
    pub identities: Arc<LiveIdentities>,
    /// Recent sync sessions by device, to tell clones from reboots.
    pub sessions: SessionBook,
    /// The fleet CA, the CAs rotating in and out, and the hub's own certificate.
    pub pki: Arc<crate::sync::pki::Pki>,
    pub config: HubConfig,
    pub clock: SharedClock,
    /// Spreads reconnect storms: sessions admitted per second.
    pub admission: Mutex<AdmissionControl>,
    /// Seals `Secret`s in the store and opens them for devices.
    pub key: Arc<crate::sealing::HubKey>,
    /// Pairs logs and exec calls with the streams devices open for them.
    pub attach: Arc<crate::sync::attach::AttachBroker>,
    /// Which devices of each site run which apps, where: for site load balancing.
    pub peers: Arc<crate::sync::peers::PeerDirectory>,
    /// What `/metrics` reports.
    pub metrics: Arc<crate::metrics::HubMetrics>,
    /// The cluster's hubs as devices reach them, named to every device.
    pub hubs: Arc<crate::sync::hubs::HubDirectory>,
}

impl HubState {
    /// Whether a new sync session may start now, or how long its device should wait.
    pub fn admit_session(&self, now: Instant) -> Result<(), Duration> {
        self.admission.lock().unwrap_or_else(|p| p.into_inner()).admit(now)
    }
}
