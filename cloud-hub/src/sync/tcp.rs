//! The TCP fallback for stores whose firewall drops UDP: TLS 1.3 with the same fleet
//! CA, client certificates and ALPN as QUIC, on a TCP port (by default the QUIC port
//! number, so one `host:port` serves both). Each TCP connection carries exactly one
//! stream, opened with the same `StreamOpen` frame, and then the same frames as QUIC.
//!
//! A dead peer is noticed by TCP itself: keep-alive probes on idle connections and a
//! user timeout on unacknowledged data, both well inside the agent's heartbeat
//! deadline.

use super::identity;
use super::{StreamError, handle_stream};
use crate::metrics::Transport;
use crate::state::HubState;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A TLS handshake must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Keep-alive probes on an idle connection, and how long sent data may stay
/// unacknowledged before the connection is given up.
pub fn tune_socket(stream: &TcpStream, idle: Duration) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    stream.set_nodelay(true)?;
    let fd = stream.as_fd();
    let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as u32;
    setsockopt(&fd, sockopt::KeepAlive, &true)?;
    setsockopt(&fd, sockopt::TcpKeepIdle, &secs(idle))?;
    setsockopt(&fd, sockopt::TcpKeepInterval, &secs(idle / 3).max(5))?;
    setsockopt(&fd, sockopt::TcpKeepCount, &3)?;
    setsockopt(&fd, sockopt::TcpUserTimeout, &(secs(idle * 2) * 1000))?;
    Ok(())
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(addr).await?)
}

/// Accepts TCP connections until the task is dropped.
pub async fn serve(state: Arc<HubState>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, usually: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a TCP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = tune_socket(&stream, super::QUIC_IDLE_TIMEOUT / 3) {
                tracing::debug!(%remote, error = %e, "tuning a TCP socket");
            }
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "tls handshake failed"),
                Err(_) => return tracing::debug!(%remote, "tls handshake timed out"),
            };
            let cert = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                None => None,
                Some(leaf) => match provisioning::identity::device_cert(leaf) {
                    Ok(cert) => Some(cert),
                    Err(e) => {
                        return tracing::info!(%remote, error = %e, "refusing a peer that is not a device");
                    }
                },
            };
            // Over TCP there is no close code: a refused or revoked peer is hung up on.
            let mut admitted = match &cert {
                None => None,
                Some(cert) => match super::admit(&state, cert, remote).await {
                    Ok(a) => Some(a),
                    Err(_) => return,
                },
            };
            let revoked = identity::revoked(admitted.as_mut());
            let device = cert.as_ref().map(|c| c.name.clone());
            let (reader, writer) = tokio::io::split(tls);
            let reads = super::session::spawn_reader(reader);
            let stream = handle_stream(&state, Transport::Tcp, cert, remote, reads, writer);
            let ended = tokio::select! {
                ended = stream => ended,
                refusal = revoked => {
                    return tracing::info!(%remote, device = device.as_deref().unwrap_or_default(), %refusal, "closing a connection whose certificate was revoked");
                }
            };
            match ended {
                Ok(()) => {}
                Err(StreamError::NeedsCertificate) => {
                    tracing::info!(%remote, "a stream other than enrolment without a device certificate")
                }
                Err(StreamError::Expired) => {
                    tracing::info!(%remote, device = device.as_deref().unwrap_or_default(), "an expired certificate asked for more than a renewal")
                }
                Err(StreamError::Sync(e)) => {
                    if e.is_protocol() {
                        state.metrics.frame_rejected(Transport::Tcp);
                    }
                    tracing::debug!(%remote, device = device.as_deref().unwrap_or("(enrolling)"), error = %e, "tcp stream ended")
                }
            }
        });
    }
}
