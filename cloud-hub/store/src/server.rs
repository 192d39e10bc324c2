//! The Raft RPC server: axum routes on the node's raft address that hand peers' messages to the
//! local openraft instance. A malformed or misdirected request is refused with a 4xx for that
//! request only; nothing a peer sends can take the process down.
//!
//! With [`PeerTls`](crate::PeerTls) the listener speaks TLS only, requires a client
//! certificate from the fleet CA, and drops a connection whose certificate carries no raft
//! name (a device's) right after the handshake. The forwarding routes serve followers'
//! writes, read indexes and membership changes on the leader (`forward.rs`).

use crate::rpc::{self, Forwarded, MembershipChange};
use crate::snapshot;
use crate::store::Inner;
use crate::types::{CommandBytes, NodeId, Raft, Snapshot};
use crate::{Store, StoreError};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde::Serialize;
use shared_proto::CodecError;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a stopping server waits for in-flight RPCs (a snapshot install) before cutting them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum RpcRejection {
    #[error("malformed request: {0}")]
    Malformed(#[from] CodecError),
    #[error("malformed snapshot: {0}")]
    MalformedSnapshot(#[from] snapshot::SnapshotError),
    #[error("missing or unreadable {} header", rpc::HEADER_TARGET_NODE)]
    NoTarget,
    #[error("this is node {this}, not node {wanted}")]
    WrongNode { this: NodeId, wanted: NodeId },
    #[error("raft is not serving: {0}")]
    Raft(String),
    #[error("encoding the response: {0}")]
    Encode(CodecError),
}

impl IntoResponse for RpcRejection {
    fn into_response(self) -> Response {
        let status = match &self {
            RpcRejection::Malformed(_) | RpcRejection::MalformedSnapshot(_) | RpcRejection::NoTarget => {
                StatusCode::BAD_REQUEST
            }
            RpcRejection::WrongNode { .. } => StatusCode::MISDIRECTED_REQUEST,
            RpcRejection::Raft(_) => StatusCode::SERVICE_UNAVAILABLE,
            RpcRejection::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "raft rpc failed");
        } else {
            tracing::debug!(error = %self, "raft rpc refused");
        }
        (status, self.to_string()).into_response()
    }
}

#[derive(Clone)]
struct ServerState {
    node_id: NodeId,
    raft: Raft,
    /// The store, for forwarded requests; weak, so a store dropped without `shutdown` is freed.
    store: Weak<Inner>,
}

impl ServerState {
    fn store(&self) -> Result<Store, RpcRejection> {
        self.store
            .upgrade()
            .map(|inner| Store { inner })
            .ok_or_else(|| RpcRejection::Raft("shutting down".into()))
    }
}

impl ServerState {
    fn check_target(&self, headers: &HeaderMap) -> Result<(), RpcRejection> {
        let wanted: NodeId = headers
            .get(rpc::HEADER_TARGET_NODE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or(RpcRejection::NoTarget)?;
        if wanted != self.node_id {
            return Err(RpcRejection::WrongNode { this: self.node_id, wanted });
        }
        Ok(())
    }
}

fn respond<T: Serialize>(value: &T) -> Result<Vec<u8>, RpcRejection> {
    rpc::encode("raft rpc response", value).map_err(RpcRejection::Encode)
}

async fn append(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, RpcRejection> {
    s.check_target(&headers)?;
    let req = rpc::decode("raft rpc request", &body)?;
    let resp = s.raft.append_entries(req).await.map_err(|e| RpcRejection::Raft(e.to_string()))?;
    respond(&resp)
}

async fn vote(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, RpcRejection> {
    s.check_target(&headers)?;
    let req = rpc::decode("raft rpc request", &body)?;
    let resp = s.raft.vote(req).await.map_err(|e| RpcRejection::Raft(e.to_string()))?;
    respond(&resp)
}

async fn pre_vote(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, RpcRejection> {
    s.check_target(&headers)?;
    let req = rpc::decode("raft rpc request", &body)?;
    let resp = s.raft.pre_vote(req).await.map_err(|e| RpcRejection::Raft(e.to_string()))?;
    respond(&resp)
}

async fn install_snapshot(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, RpcRejection> {
    s.check_target(&headers)?;
    let (vote, meta, blob) = rpc::decode_snapshot(&body)?;
    drop(body);
    // Check the whole blob here so that a bad one is this request's 400, not a storage error
    // that would stop the state machine.
    let blob_check = blob.clone();
    tokio::task::spawn_blocking(move || snapshot::read_snapshot(&blob_check).map(|_| ()))
        .await
        .map_err(|e| RpcRejection::Raft(format!("checking the snapshot: {e}")))??;
    let resp = s
        .raft
        .install_full_snapshot(vote, Snapshot { meta, snapshot: blob })
        .await
        .map_err(|e| RpcRejection::Raft(e.to_string()))?;
    respond(&resp)
}

async fn forward_write(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, RpcRejection> {
    s.check_target(&headers)?;
    let cmd: CommandBytes = rpc::decode("forwarded write", &body)?;
    drop(body);
    let answer: Forwarded<_> = s.store()?.write_here(cmd).await.map_err(Into::into);
    respond(&answer)
}

async fn forward_read_index(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, RpcRejection> {
    s.check_target(&headers)?;
    let () = rpc::decode("forwarded read index", &body)?;
    let answer: Forwarded<u64> = s.store()?.read_index_here().await.map_err(Into::into);
    respond(&answer)
}

async fn forward_membership(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Vec<u8>, RpcRejection> {
    s.check_target(&headers)?;
    let change: MembershipChange = rpc::decode("forwarded membership change", &body)?;
    let store = s.store()?;
    let answer: Result<(), StoreError> = match change {
        MembershipChange::Add { id, raft_addr } => store.add_member_here(id, raft_addr).await,
        MembershipChange::Remove { id } => store.remove_member_here(id).await,
    };
    respond(&answer.map_err(rpc::WireError::from))
}

/// Anything but Raft's own routes goes to the hub's peer services (`Store::serve_peers`),
/// behind the same mutual TLS.
async fn peer_service(State(s): State<ServerState>, req: axum::extract::Request) -> Response {
    let router = s
        .store
        .upgrade()
        .and_then(|inner| inner.peer_routes.read().unwrap_or_else(|p| p.into_inner()).clone());
    match router {
        Some(router) => {
            use tower::ServiceExt;
            match router.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        }
        None => (StatusCode::NOT_FOUND, "no such peer route").into_response(),
    }
}

/// A running RPC server; stop it with [`RaftServer::stop`].
pub(crate) struct RaftServer {
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RaftServer {
    /// Serves `raft` on `listener` until stopped: TLS with client certificates when `tls` is
    /// given, plain HTTP otherwise.
    pub(crate) fn spawn(
        listener: TcpListener,
        node_id: NodeId,
        raft: Raft,
        store: Weak<Inner>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> RaftServer {
        let small = || DefaultBodyLimit::max(rpc::RPC_BODY_LIMIT);
        let app = Router::new()
            .route(rpc::PATH_APPEND, post(append).layer(small()))
            .route(rpc::PATH_VOTE, post(vote).layer(small()))
            .route(rpc::PATH_PRE_VOTE, post(pre_vote).layer(small()))
            .route(
                rpc::PATH_SNAPSHOT,
                post(install_snapshot).layer(DefaultBodyLimit::max(rpc::SNAPSHOT_BODY_LIMIT)),
            )
            .route(rpc::PATH_FORWARD_WRITE, post(forward_write).layer(small()))
            .route(rpc::PATH_FORWARD_READ_INDEX, post(forward_read_index).layer(small()))
            .route(rpc::PATH_FORWARD_MEMBERSHIP, post(forward_membership).layer(small()))
            .fallback(peer_service)
            .with_state(ServerState { node_id, raft: raft.clone(), store });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = match tls {
            None => tokio::spawn(async move {
                let served = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                });
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "raft rpc server stopped");
                }
            }),
            Some(tls) => tokio::spawn(serve_tls(listener, tls, app, node_id, raft, stop_rx)),
        };
        RaftServer { stop_tx: Some(stop_tx), task: Some(task) }
    }

    /// Stops accepting RPCs and waits (bounded) for in-flight ones.
    pub(crate) async fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(DRAIN_TIMEOUT, &mut task).await.is_err()
        {
            tracing::warn!("raft rpc server did not drain in time; cutting in-flight requests");
            task.abort();
        }
    }
}

impl Drop for RaftServer {
    fn drop(&mut self) {
        // Dropped without `stop` (the store was dropped): stop serving, so the server's handle on
        // openraft goes away and openraft can shut down too.
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// How long a peer has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS accept loop: one task per connection, each refused unless the client certificate
/// names a hub. A connection that agreed on Raft frames by ALPN (`frames.rs`) is served
/// frames; any other, HTTP. On stop, HTTP connections finish their in-flight request and
/// close; frame connections close.
async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    node_id: NodeId,
    raft: Raft,
    mut stop_rx: oneshot::Receiver<()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    // The same certificates (a clone shares the hub's certificate resolver, which renewals
    // update); frames first, HTTP for everything else and for clients that offer no ALPN.
    let mut config = rustls::ServerConfig::clone(&tls);
    config.alpn_protocols = vec![crate::frames::ALPN.to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (frames_stop_tx, frames_stop_rx) = tokio::sync::watch::channel(false);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (conns_tx, mut conns_rx) = tokio::sync::mpsc::unbounded_channel();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "raft accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop_rx => break,
            Some(conn) = conns_rx.recv() => {
                // A handshake finished: serve it under the graceful-shutdown watcher.
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::debug!(error = %e, "raft connection ended with an error");
                    }
                });
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let conns_tx = conns_tx.clone();
        let (raft, frames_stop_rx) = (raft.clone(), frames_stop_rx.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "raft tls handshake failed"),
                Err(_) => return tracing::debug!(%peer, "raft tls handshake timed out"),
            };
            let ids = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| crate::peer_tls::peer_ids(leaf))
                .unwrap_or_default();
            if ids.is_empty() {
                tracing::warn!(%peer, "raft connection refused: the client certificate names no hub");
                return;
            }
            if stream.get_ref().1.alpn_protocol() == Some(crate::frames::ALPN) {
                return crate::frames::serve(stream, node_id, raft, frames_stop_rx).await;
            }
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            let _ = conns_tx.send(conn);
        });
    }
    drop(listener);
    let _ = frames_stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("raft rpc connections did not drain in time");
    }
}
