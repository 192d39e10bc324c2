//! The hub's QUIC endpoint for agents: mutual TLS with the fleet CA, one connection
//! per device, streams for enrolment, desired-state sync and image blobs (see
//! `shared_proto::wire`). A peer that breaks the protocol loses its connection, and
//! nothing else.

pub mod blobs;
pub mod enrol;
pub mod fanout;
pub mod liveness;
pub mod session;

use crate::state::HubState;
use quinn::{Connection, Endpoint};
use shared_proto::wire::{self, FrameError, StreamOpen};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Store(#[from] hub_store::StoreError),
    #[error("stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// QUIC application error codes the hub closes connections with.
pub mod close_code {
    pub const PROTOCOL: u32 = 1;
    pub const UNAUTHENTICATED: u32 = 2;
    pub const SHUTDOWN: u32 = 3;
}

/// How long a new stream may take to say what it is for.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The key the endpoint derives stateless-reset tokens from. It is kept in the data
/// directory so that a restarted hub can reset its predecessor's connections: agents
/// then reconnect at once instead of waiting out the idle timeout.
fn endpoint_secret(data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("quic-reset.key");
    let secret = match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => b,
        _ => {
            let s = crate::util::random_bytes(32);
            provisioning::files::write_private_file(&path, &s)?;
            s
        }
    };
    Ok(secret)
}

pub fn endpoint(
    state: &HubState,
    tls: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
) -> anyhow::Result<Endpoint> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Agents heartbeat every `heartbeat_interval`; allow a few missed before giving up.
    let idle = (state.config.heartbeat_interval * 4).max(Duration::from_secs(60));
    transport.max_idle_timeout(Some(idle.try_into()?));
    transport.max_concurrent_bidi_streams(32u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    let secret = endpoint_secret(&state.config.data_dir)?;
    let mut endpoint_config =
        quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)));
    // Connection ids carry a keyed hash the endpoint checks; with a fixed key the
    // restarted hub recognises its predecessor's ids and answers them with a reset.
    let cid_key = u64::from_le_bytes(
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret), b"cid").as_ref()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    endpoint_config
        .cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    let socket = std::net::UdpSocket::bind(addr)?;
    Ok(Endpoint::new(endpoint_config, Some(config), socket, Arc::new(quinn::TokioRuntime))?)
}

/// Accepts connections until the endpoint closes.
pub async fn serve(state: Arc<HubState>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => handle_connection(state, conn).await,
                Err(e) => tracing::debug!(%remote, error = %e, "quic handshake failed"),
            }
        });
    }
}

async fn handle_connection(state: Arc<HubState>, conn: Connection) {
    let remote = conn.remote_address();
    let device = match provisioning::identity::peer_device_name(conn.peer_identity()) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(%remote, error = %e, "refusing a peer that is not a device");
            conn.close(close_code::UNAUTHENTICATED.into(), b"not a device certificate");
            return;
        }
    };
    tracing::debug!(%remote, device = device.as_deref().unwrap_or("(enrolling)"), "agent connected");
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => break,
        };
        let state = state.clone();
        let conn = conn.clone();
        let device = device.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_stream(&state, &conn, device.clone(), send, recv).await {
                let protocol = matches!(
                    e,
                    SyncError::Protocol(_) | SyncError::Frame(FrameError::Codec(_) | FrameError::TooLarge(_))
                );
                if protocol {
                    tracing::info!(%remote, device = device.as_deref().unwrap_or("(enrolling)"), error = %e, "closing connection");
                    conn.close(close_code::PROTOCOL.into(), b"protocol error");
                } else {
                    tracing::debug!(%remote, error = %e, "stream ended");
                }
            }
        });
    }
}

async fn handle_stream(
    state: &Arc<HubState>,
    conn: &Connection,
    device: Option<String>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), SyncError> {
    let open = match tokio::time::timeout(OPEN_TIMEOUT, wire::read_frame::<StreamOpen, _>(&mut recv)).await {
        Ok(r) => r?,
        Err(_) => return Err(SyncError::Protocol("stream opened but said nothing".into())),
    };
    match (open, device) {
        (None, _) => Ok(()),
        (Some(StreamOpen::Enrol(req)), _) => {
            let reply = enrol::enrol(state, req).await;
            wire::write_frame(&mut send, &reply).await?;
            let _ = send.finish();
            Ok(())
        }
        (Some(StreamOpen::Sync(hello)), Some(device)) => {
            session::serve(state.clone(), device, hello, send, recv).await
        }
        (Some(StreamOpen::Blob(req)), Some(_)) => blobs::serve(state, req, send).await,
        (Some(_), None) => {
            conn.close(close_code::UNAUTHENTICATED.into(), b"enrol first: a device certificate is required");
            Err(SyncError::Refused("stream needs a device certificate".into()))
        }
    }
}
