//! The Raft RPC client: openraft's `RaftNetworkV2` over HTTP/1.1 with postcard bodies.
//!
//! Plain HTTP: hubs talk to each other on a trusted network (loopback or a private LAN) for
//! now. Mutual TLS between hubs (rustls client certificates checked against the fleet CA, with
//! the peer's node id in its SAN) is a later issue; until then the raft address must not be
//! reachable from untrusted networks.

use crate::rpc;
use crate::types::{NodeId, Snapshot, SnapshotBlob, TypeConfig, Vote};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RPCTypes, RaftNetworkV2};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;

/// A peer that does not accept a TCP connection within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// openraft gives every AppendEntries a heartbeat interval (150 ms by default). That suits
/// heartbeats, which must fail fast, but not a full payload on a busy LAN followed by the
/// follower's fdatasync; those get at least this long. Liveness is still judged by heartbeats.
const MIN_REPLICATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Network(String),
}

impl CallError {
    fn into_rpc(
        self,
        action: RPCTypes,
        from: NodeId,
        target: NodeId,
        timeout: Duration,
    ) -> RPCError<TypeConfig> {
        match self {
            CallError::Timeout => RPCError::Timeout(Timeout { action, id: from, target, timeout }),
            CallError::Unreachable(msg) => RPCError::Unreachable(Unreachable::from_string(msg)),
            CallError::Network(msg) => RPCError::Network(NetworkError::from_string(msg)),
        }
    }
}

/// Builds one [`HttpPeer`] per target; all share one connection pool.
pub(crate) struct HttpNetworkFactory {
    self_id: NodeId,
    client: reqwest::Client,
}

impl HttpNetworkFactory {
    pub(crate) fn new(self_id: NodeId) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            // Environment proxies must never see hub-to-hub traffic.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(HttpNetworkFactory { self_id, client })
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            self_id: self.self_id,
            target,
            base_url: format!("http://{}", node.addr),
            client: self.client.clone(),
        }
    }
}

/// The client side of one peer's RPCs. Connections are made lazily, per request.
pub(crate) struct HttpPeer {
    self_id: NodeId,
    target: NodeId,
    base_url: String,
    client: reqwest::Client,
}

impl HttpPeer {
    async fn call<Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let response = self
            .client
            .post(format!("{}{}", self.base_url, path))
            .header(rpc::HEADER_TARGET_NODE, self.target.to_string())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| classify(&e))?;
        if !status.is_success() {
            // The peer is up but cannot serve us (shutting down, wrong node, refused the body):
            // back off rather than retry at once.
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(CallError::Unreachable(format!("node {} answered {status}: {text}", self.target)));
        }
        rpc::decode("raft rpc response", &bytes).map_err(|e| CallError::Network(e.to_string()))
    }

    async fn unary<Req: serde::Serialize, Resp: DeserializeOwned>(
        &self,
        action: RPCTypes,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let body = rpc::encode("raft rpc request", req)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
        self.call(path, body, timeout)
            .await
            .map_err(|e| e.into_rpc(action, self.self_id, self.target, timeout))
    }
}

fn classify(e: &reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Timeout
    } else if e.is_connect() {
        CallError::Unreachable(format!("connecting: {e}"))
    } else {
        CallError::Network(e.to_string())
    }
}

impl RaftNetworkV2<TypeConfig> for HttpPeer {
    type SnapshotData = SnapshotBlob;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = if rpc.entries.is_empty() {
            option.soft_ttl()
        } else {
            option.soft_ttl().max(MIN_REPLICATION_TIMEOUT)
        };
        self.unary(RPCTypes::AppendEntries, rpc::PATH_APPEND, &rpc, timeout).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RPCTypes::Vote, rpc::PATH_VOTE, &rpc, option.soft_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(RPCTypes::Vote, rpc::PATH_PRE_VOTE, &rpc, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let timeout = option.hard_ttl();
        let body = rpc::encode_snapshot(&vote, &snapshot.meta, &snapshot.snapshot)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?;
        tracing::info!(target_node = self.target, n_bytes = body.len(), "sending a snapshot");
        let call = self.call::<SnapshotResponse<TypeConfig>>(rpc::PATH_SNAPSHOT, body, timeout);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = call => res.map_err(|e| match e.into_rpc(RPCTypes::InstallSnapshot, self.self_id, self.target, timeout) {
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::RemoteError(r) => StreamingError::Network(NetworkError::from_string(r.to_string())),
            }),
        }
    }
}
