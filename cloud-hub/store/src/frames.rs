//! Raft's frequent RPCs (append, vote, pre-vote) as length-prefixed frames on one mutually
//! authenticated TLS connection per peer and replication stream, chosen by ALPN on the raft
//! listener.
//!
//! Over HTTP each call went through reqwest's pool: a request task handing the call to a
//! connection task and back, header maps, URL parsing. At one client that hand-off was a
//! large part of what replication added to a write. Here the caller writes its frame and
//! reads the answer on the stream it owns; the server answers on the connection's own task.
//! Snapshots (large, streamed), forwarding and the hubs' peer services stay on HTTP, on the same
//! listener and the same certificates. A peer that does not agree to [`ALPN`] (a hub from
//! before) is spoken to over HTTP as before.
//!
//! A frame is its body's length (u32 LE, at most `rpc::RPC_BODY_LIMIT`, checked before anything
//! is allocated) and the body, in the `rpc` envelope: a request is `(target node, FrameRequest)`
//! and its answer a [`FrameAnswer`]. A frame that does not decode closes that connection; an
//! answer that refuses (wrong node, raft not serving) keeps it.

use crate::network::CallError;
use crate::peer_tls::peer_name;
use crate::rpc::{self, RPC_BODY_LIMIT};
use crate::types::{NodeId, Raft, TypeConfig};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The ALPN protocol of Raft frames. Bump the version with any change to the frames.
pub(crate) const ALPN: &[u8] = b"flotilla-raft/1";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FrameRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FrameResponse {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
}

/// An answer, or why the request was refused before anything was done (the caller treats the
/// peer as unreachable, as it does a non-2xx HTTP answer).
pub(crate) type FrameAnswer = Result<FrameResponse, String>;

/// Reads one frame's body into `buf`. `Ok(false)` is a clean end of stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > RPC_BODY_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {RPC_BODY_LIMIT}"),
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(true)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n as usize <= RPC_BODY_LIMIT)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a frame over the limit"))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// A client's connection to one peer.
pub(crate) struct FrameConn {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    buf: Vec<u8>,
}

/// Connects to `target` at `addr` and agrees on frames: `Ok(None)` when the peer answers TLS
/// but not [`ALPN`] (it speaks only HTTP).
pub(crate) async fn connect(
    addr: &str,
    target: NodeId,
    tls: &Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> Result<Option<FrameConn>, CallError> {
    let unreachable = |what: &str, e: &dyn std::fmt::Display| {
        CallError::Unreachable(format!("{what} node {target} at {addr}: {e}"))
    };
    let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(unreachable("connecting to", &e)),
        Err(_) => return Err(unreachable("connecting to", &"timed out")),
    };
    let _ = tcp.set_nodelay(true);
    let mut config = rustls::ClientConfig::clone(tls);
    config.alpn_protocols = vec![ALPN.to_vec()];
    let name =
        rustls_pki_types::ServerName::try_from(peer_name(target)).map_err(|e| unreachable("naming", &e))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = match tokio::time::timeout(connect_timeout, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable("tls with", &e)),
        Err(_) => return Err(unreachable("tls with", &"timed out")),
    };
    if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Ok(None);
    }
    Ok(Some(FrameConn { stream, buf: Vec::new() }))
}

impl FrameConn {
    /// Sends `request` to `target` and reads its answer. Any error leaves the connection
    /// unusable: drop it.
    pub(crate) async fn call(
        &mut self,
        target: NodeId,
        request: FrameRequest,
    ) -> Result<FrameResponse, CallError> {
        let body =
            rpc::encode("raft frame", &(target, request)).map_err(|e| CallError::Network(e.to_string()))?;
        write_frame(&mut self.stream, &body)
            .await
            .map_err(|e| CallError::Network(format!("sending: {e}")))?;
        match read_frame(&mut self.stream, &mut self.buf).await {
            Ok(true) => {}
            Ok(false) => return Err(CallError::Network("the peer closed the connection".into())),
            Err(e) => return Err(CallError::Network(format!("receiving: {e}"))),
        }
        let answer: FrameAnswer =
            rpc::decode("raft frame answer", &self.buf).map_err(|e| CallError::Network(e.to_string()))?;
        answer.map_err(|why| CallError::Unreachable(format!("node {target} refused: {why}")))
    }
}

/// Serves frames on one accepted connection until the peer closes it, sends a frame that does
/// not decode, or `stop` fires.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    node_id: NodeId,
    raft: Raft,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        // Cancelling a half-read frame is fine here: the connection closes with it.
        let read = tokio::select! {
            r = read_frame(&mut stream, &mut buf) => r,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return tracing::debug!(error = %e, "closing a raft frame connection"),
        }
        let (wanted, request): (NodeId, FrameRequest) = match rpc::decode("raft frame", &buf) {
            Ok(x) => x,
            Err(e) => return tracing::warn!(error = %e, "closing a raft connection after a malformed frame"),
        };
        let answer: FrameAnswer = if wanted != node_id {
            Err(format!("this is node {node_id}, not node {wanted}"))
        } else {
            match request {
                FrameRequest::Append(req) => {
                    raft.append_entries(req).await.map(FrameResponse::Append).map_err(|e| e.to_string())
                }
                FrameRequest::Vote(req) => {
                    raft.vote(req).await.map(FrameResponse::Vote).map_err(|e| e.to_string())
                }
                FrameRequest::PreVote(req) => {
                    raft.pre_vote(req).await.map(FrameResponse::Vote).map_err(|e| e.to_string())
                }
            }
        };
        let body = match rpc::encode("raft frame answer", &answer) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "encoding a raft frame answer"),
        };
        if let Err(e) = write_frame(&mut stream, &body).await {
            return tracing::debug!(error = %e, "closing a raft frame connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_lengths_are_bounded_before_reading() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, b"hello").await.unwrap();
        let mut buf = Vec::new();
        assert!(read_frame(&mut b, &mut buf).await.unwrap());
        assert_eq!(buf, b"hello");
        // A claimed length over the limit is refused before anything is allocated for it.
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let err = read_frame(&mut b, &mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A clean close between frames is not an error; one inside a frame is.
        drop(a);
        assert!(!read_frame(&mut b, &mut buf).await.unwrap());
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[10, 0, 0, 0, 1, 2]).await.unwrap();
        drop(a);
        assert!(read_frame(&mut b, &mut buf).await.is_err());
    }
}
