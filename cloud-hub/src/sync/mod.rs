//! The hub's endpoints for agents: QUIC (one connection per device, a stream per
//! purpose) and, for stores whose firewall drops UDP, TCP with TLS on the same port
//! number (one connection per stream). Both use mutual TLS with the fleet CA and carry
//! the same frames (`shared_proto::wire`); after the handshake every stream goes
//! through [`handle_stream`], whatever carried it. A peer that breaks the protocol
//! loses its connection, and nothing else.

pub mod admission;
pub mod attach;
pub mod blob_gc;
pub mod blobs;
pub mod clones;
pub mod enrol;
pub mod fanout;
pub mod fleet;
pub mod hubs;
pub mod identity;
pub mod liveness;
pub mod peers;
pub mod pki;
pub mod renew;
pub mod replica;
pub mod session;
pub mod tcp;

use crate::metrics::Transport;
use crate::state::HubState;
use quinn::{Connection, Endpoint};
use shared_proto::CodecError;
use shared_proto::wire::{self, FrameDecoder, FrameError, StreamOpen};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWrite;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(
        "the peer speaks protocol version {found}; this hub speaks {}..={}",
        wire::MIN_PROTOCOL_VERSION,
        wire::PROTOCOL_VERSION
    )]
    UnsupportedVersion { found: u32 },
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Store(#[from] hub_store::StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl SyncError {
    /// Whether the peer broke the protocol, which costs it the whole connection.
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            SyncError::Protocol(_)
                | SyncError::UnsupportedVersion { .. }
                | SyncError::Frame(FrameError::Codec(_) | FrameError::TooLarge(_) | FrameError::Truncated)
        )
    }
}

pub use shared_proto::wire::close_code;

/// How long a new stream may take to say what it is for.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle QUIC connections die after this long. Agents send keep-alives well inside it.
pub const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// No pause between stateless resets. quinn's default (one per 20 ms) is a guard
/// against reset loops between two endpoints, which cannot happen here (a reset is
/// smaller than the packet that caused it, and agents never answer one); any pause
/// leaves a device whose keep-alive met it retransmitting with growing back-off until
/// its idle timeout, which after a restart is the slowest device of the fleet.
const RESET_INTERVAL: Duration = Duration::ZERO;

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
    let idle = QUIC_IDLE_TIMEOUT.max(state.config.heartbeat_interval * 2);
    transport.max_idle_timeout(Some(idle.try_into()?));
    // The sync stream and a few image blobs at a time.
    transport.max_concurrent_bidi_streams(16u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    // A device whose address changes (DHCP, LTE failover, NAT rebinding) keeps its
    // connection: the path is validated and the session goes on.
    config.migration(true);
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
    // After a restart every device's next packet must be answered with a reset, or
    // it waits out its idle timeout. quinn's default (one reset per 20 ms) would take
    // minutes for a fleet; a reset is smaller than the packet that caused it, so it
    // amplifies nothing.
    endpoint_config.min_reset_interval(RESET_INTERVAL);
    let socket = udp_socket(addr)?;
    Ok(Endpoint::new(endpoint_config, Some(config), socket, Arc::new(quinn::TokioRuntime))?)
}

/// Kernel buffer for one endpoint's UDP socket, each way.
const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A UDP socket with buffers sized for a fleet: every device's packets arrive on this
/// one socket, and a burst (a fan-out, a reconnect storm) must not overflow the
/// kernel's default 208 KiB and drop handshakes and manifests on the floor. As root
/// the size is forced past `net.core.rmem_max`; otherwise the kernel caps it there.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = std::net::UdpSocket::bind(addr)?;
    if setsockopt(&socket, sockopt::RcvBufForce, &UDP_BUFFER_BYTES).is_err() {
        let _ = setsockopt(&socket, sockopt::RcvBuf, &UDP_BUFFER_BYTES);
    }
    if setsockopt(&socket, sockopt::SndBufForce, &UDP_BUFFER_BYTES).is_err() {
        let _ = setsockopt(&socket, sockopt::SndBuf, &UDP_BUFFER_BYTES);
    }
    Ok(socket)
}

/// Accepts QUIC connections until the endpoint closes.
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
    let cert = match provisioning::identity::peer_device(conn.peer_identity()) {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(%remote, error = %e, "refusing a peer that is not a device");
            conn.close(close_code::UNAUTHENTICATED.into(), b"not a device certificate");
            return;
        }
    };
    let mut admitted = match &cert {
        None => None,
        Some(cert) => match admit(&state, cert, remote).await {
            Ok(a) => Some(a),
            Err((code, reason)) => return conn.close(code.into(), reason.as_bytes()),
        },
    };
    let device = cert.as_ref().map(|c| c.name.clone());
    tracing::debug!(%remote, device = device.as_deref().unwrap_or("(enrolling)"), "agent connected");
    loop {
        let revoked = identity::revoked(admitted.as_mut());
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            refusal = revoked => {
                tracing::info!(%remote, device = device.as_deref().unwrap_or_default(), %refusal, "closing a connection whose certificate was revoked");
                conn.close(close_code::REVOKED.into(), refusal.to_string().as_bytes());
                break;
            }
        };
        let state = state.clone();
        let conn = conn.clone();
        let device = device.clone();
        let cert = cert.clone();
        tokio::spawn(async move {
            let reads = session::spawn_quic_reader(recv);
            match handle_stream(&state, Transport::Quic, cert, remote, reads, send).await {
                Ok(()) => {}
                Err(StreamError::NeedsCertificate) => conn.close(
                    close_code::UNAUTHENTICATED.into(),
                    b"enrol first: a device certificate is required",
                ),
                Err(StreamError::Expired) => {
                    tracing::info!(%remote, device = device.as_deref().unwrap_or_default(), "an expired certificate asked for more than a renewal");
                    conn.close(
                        close_code::CERT_EXPIRED.into(),
                        b"the certificate expired: renew it (the device is quarantined until approved)",
                    )
                }
                Err(StreamError::Sync(e)) if e.is_protocol() => {
                    state.metrics.frame_rejected(Transport::Quic);
                    tracing::info!(%remote, device = device.as_deref().unwrap_or("(enrolling)"), error = %e, "closing connection");
                    let code = match e {
                        SyncError::UnsupportedVersion { .. } => close_code::UNSUPPORTED_VERSION,
                        _ => close_code::PROTOCOL,
                    };
                    conn.close(code.into(), e.to_string().as_bytes());
                }
                Err(StreamError::Sync(e)) => tracing::debug!(%remote, error = %e, "stream ended"),
            }
        });
    }
}

/// Checks an authenticated peer's certificate against its device and registers the
/// connection to be closed if that changes; the close code and reason otherwise.
pub async fn admit(
    state: &HubState,
    cert: &provisioning::identity::DeviceCert,
    remote: SocketAddr,
) -> Result<identity::Admitted, (u32, String)> {
    match state.identities.admit(&state.store, cert).await {
        Ok(a) => Ok(a),
        Err(identity::AdmitError::Refused(refusal)) => {
            tracing::info!(%remote, device = %cert.name, serial = %cert.serial, %refusal, "refusing a revoked certificate");
            Err((close_code::REVOKED, refusal.to_string()))
        }
        Err(identity::AdmitError::TooMany) => {
            tracing::info!(%remote, device = %cert.name, "refusing a connection past the device's limit");
            Err((close_code::TOO_MANY_CONNECTIONS, identity::AdmitError::TooMany.to_string()))
        }
        Err(identity::AdmitError::Store(e)) => {
            tracing::warn!(%remote, device = %cert.name, error = %e, "cannot check a device's certificate");
            Err((close_code::SHUTDOWN, "the hub cannot check certificates right now; retry".into()))
        }
    }
}

/// How a stream ended badly.
pub enum StreamError {
    /// A stream other than enrolment on a connection without a device certificate.
    NeedsCertificate,
    /// A stream other than renewal with an expired certificate.
    Expired,
    Sync(SyncError),
}

impl<E: Into<SyncError>> From<E> for StreamError {
    fn from(e: E) -> Self {
        StreamError::Sync(e.into())
    }
}

/// Reads the stream's first frame: what it is for, and the protocol version the
/// agent speaks. `Ok(None)` when the stream ended before a frame.
async fn read_open(
    reads: &mut tokio::sync::mpsc::Receiver<session::Read>,
    decoder: &mut FrameDecoder,
) -> Result<Option<(u32, StreamOpen)>, SyncError> {
    loop {
        if let Some(body) = decoder.next_body()? {
            return match wire::decode_frame_body_versioned::<StreamOpen>(&body) {
                Ok(v) => Ok(Some(v)),
                Err(FrameError::Codec(CodecError::UnsupportedVersion { found, .. })) => {
                    Err(SyncError::UnsupportedVersion { found })
                }
                Err(e) => Err(e.into()),
            };
        }
        match reads.recv().await {
            Some(session::Read::Bytes(b)) => decoder.push(&b),
            Some(session::Read::Eof) | None if decoder.buffered() == 0 => return Ok(None),
            Some(session::Read::Eof) | None => return Err(FrameError::Truncated.into()),
            Some(session::Read::Failed(e)) => return Err(e.into()),
        }
    }
}

/// Serves one agent stream, from QUIC or TCP (`transport`). `cert` is the peer's device
/// certificate, `None` for a device that is enrolling; `reads` is the stream's reader
/// task ([`session::spawn_reader`], [`session::spawn_quic_reader`]).
pub async fn handle_stream<W>(
    state: &Arc<HubState>,
    transport: Transport,
    cert: Option<provisioning::identity::DeviceCert>,
    remote: SocketAddr,
    mut reads: tokio::sync::mpsc::Receiver<session::Read>,
    mut writer: W,
) -> Result<(), StreamError>
where
    W: AsyncWrite + Unpin + Send,
{
    let mut decoder = FrameDecoder::new();
    let open = match tokio::time::timeout(OPEN_TIMEOUT, read_open(&mut reads, &mut decoder)).await {
        Ok(r) => r?,
        Err(_) => return Err(SyncError::Protocol("stream opened but said nothing".into()).into()),
    };
    match (open, cert) {
        (None, _) => Ok(()),
        (Some((version, StreamOpen::Enrol(req))), _) => {
            let reply = enrol::enrol(state, req).await;
            state.metrics.enrolment(match reply {
                wire::EnrolReply::Accepted { .. } => crate::metrics::EnrolOutcome::Accepted,
                wire::EnrolReply::Refused { .. } => crate::metrics::EnrolOutcome::Refused,
            });
            wire::write_frame_for(&mut writer, version, &reply).await?;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
            Ok(())
        }
        (Some((version, StreamOpen::Renew(req))), Some(cert)) => {
            let reply = renew::renew(state, &cert, remote, req).await;
            wire::write_frame_for(&mut writer, version, &reply).await?;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
            Ok(())
        }
        (Some(_), Some(cert)) if cert.expired(state.clock.now()) => Err(StreamError::Expired),
        (Some((version, StreamOpen::Sync(hello))), Some(cert)) => {
            Ok(session::serve(state.clone(), transport, cert, remote, hello, version, decoder, reads, writer)
                .await?)
        }
        (Some((version, StreamOpen::Blob(req))), Some(cert)) => {
            Ok(blobs::serve(state, &cert.name, version, req, writer).await?)
        }
        (Some((version, StreamOpen::Attach(open))), Some(cert)) => {
            Ok(attach::serve_stream(&state.attach, &cert.name, version, open.id, decoder, reads, writer)
                .await?)
        }
        (Some(_), None) => Err(StreamError::NeedsCertificate),
    }
}
