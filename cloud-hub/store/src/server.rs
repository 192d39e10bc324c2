//! The Raft RPC server: axum routes on the node's raft address that hand peers' messages to the
//! local openraft instance. A malformed or misdirected request is refused with a 4xx for that
//! request only; nothing a peer sends can take the process down.
//!
//! Plain HTTP for now: see the note on mutual TLS in `network.rs`.

use crate::rpc;
use crate::snapshot;
use crate::types::{NodeId, Raft, Snapshot};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde::Serialize;
use shared_proto::CodecError;
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

/// A running RPC server; stop it with [`RaftServer::stop`].
pub(crate) struct RaftServer {
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RaftServer {
    /// Serves `raft` on `listener` until stopped.
    pub(crate) fn spawn(listener: TcpListener, node_id: NodeId, raft: Raft) -> RaftServer {
        let app = Router::new()
            .route(rpc::PATH_APPEND, post(append).layer(DefaultBodyLimit::max(rpc::RPC_BODY_LIMIT)))
            .route(rpc::PATH_VOTE, post(vote).layer(DefaultBodyLimit::max(rpc::RPC_BODY_LIMIT)))
            .route(rpc::PATH_PRE_VOTE, post(pre_vote).layer(DefaultBodyLimit::max(rpc::RPC_BODY_LIMIT)))
            .route(
                rpc::PATH_SNAPSHOT,
                post(install_snapshot).layer(DefaultBodyLimit::max(rpc::SNAPSHOT_BODY_LIMIT)),
            )
            .with_state(ServerState { node_id, raft });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
            if let Err(e) = served.await {
                tracing::error!(error = %e, "raft rpc server stopped");
            }
        });
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
