//! What the hub's API handlers and QUIC sessions share.

use crate::sync::fanout::ManifestFanout;
use crate::sync::liveness::LivenessTable;
use hub_store::Store;
use provisioning::ca::FleetCa;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    /// Largest image archive `POST /api/v1/images` accepts.
    pub max_image_bytes: u64,
    pub quic_addr: SocketAddr,
    /// How often agents send heartbeats (told to them in the welcome frame).
    pub heartbeat_interval: Duration,
    /// How long device certificates are valid.
    pub device_cert_validity: Duration,
}

pub struct HubState {
    pub store: Store,
    pub blobs: images::blobstore::BlobStore,
    pub live: Arc<LivenessTable>,
    pub fanout: Arc<ManifestFanout>,
    pub ca: FleetCa,
    pub config: HubConfig,
}
