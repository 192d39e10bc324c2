//! The Raft RPC client: openraft's `RaftNetworkV2` over HTTP/1.1 with postcard bodies (append,
//! vote and pre-vote as frames on a connection of their own when the peer agrees, see
//! `frames.rs`), and the calls a follower makes to forward writes, read indexes and
//! membership changes to the leader (see `forward.rs`).
//!
//! With [`PeerTls`] (what the hub always uses) every call is mutually authenticated TLS to
//! `https://hub-<target>.raft.flotilla.internal`, that name resolved to the target's raft
//! address, so the peer's certificate must name the node we meant (see `peer_tls.rs`).
//! Without it, plain HTTP: only for tests and benchmarks on loopback.

use crate::frames::{self, FrameConn, FrameRequest, FrameResponse};
use crate::peer_tls::{PeerTls, peer_name};
use crate::rpc;
use crate::types::{NodeId, Snapshot, SnapshotBlob, TypeConfig, Vote};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RPCTypes, RaftNetworkV2};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A peer that does not accept a TCP connection within this is treated as down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// openraft gives every AppendEntries a heartbeat interval (150 ms by default). That suits
/// heartbeats, which must fail fast, but not a full payload on a busy LAN followed by the
/// follower's fdatasync; those get at least this long. Liveness is still judged by heartbeats.
const MIN_REPLICATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The request may have been processed: the answer did not arrive in time.
    #[error("timed out")]
    Timeout,
    /// The request was not processed: no connection, or the peer refused it before acting.
    #[error("{0}")]
    Unreachable(String),
    /// The request may have been processed: the connection failed midway or the answer was
    /// unreadable.
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

/// One HTTP client per peer (a TLS client must resolve the peer's raft name to its address),
/// shared by openraft's replication and by forwarding.
pub(crate) struct PeerClients {
    tls: Option<Arc<rustls::ClientConfig>>,
    plain: reqwest::Client,
    by_peer: Mutex<HashMap<(NodeId, String), (reqwest::Client, String)>>,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        // Environment proxies must never see hub-to-hub traffic.
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
}

impl PeerClients {
    pub(crate) fn new(tls: Option<&PeerTls>) -> Result<Self, reqwest::Error> {
        Ok(PeerClients {
            tls: tls.map(|t| t.client.clone()),
            plain: builder().build()?,
            by_peer: Mutex::new(HashMap::new()),
        })
    }

    /// The client and base URL for `target` at `addr` (`host:port`).
    pub(crate) async fn client(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<(reqwest::Client, String), CallError> {
        let Some(tls) = &self.tls else {
            return Ok((self.plain.clone(), format!("http://{addr}")));
        };
        let key = (target, addr.to_string());
        if let Some(found) = self.by_peer.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let resolved = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| CallError::Unreachable(format!("resolving node {target}'s address {addr}: {e}")))?
            .next()
            .ok_or_else(|| {
                CallError::Unreachable(format!("node {target}'s address {addr} resolves to nothing"))
            })?;
        let name = peer_name(target);
        let client = builder()
            .use_preconfigured_tls(rustls::ClientConfig::clone(tls))
            .resolve(&name, resolved)
            .https_only(true)
            .build()
            .map_err(|e| CallError::Unreachable(format!("building the client for node {target}: {e}")))?;
        let entry = (client, format!("https://{name}:{}", resolved.port()));
        self.by_peer.lock().unwrap_or_else(|p| p.into_inner()).insert(key, entry.clone());
        Ok(entry)
    }

    /// POSTs `body` to `path` on node `target` at `addr` and decodes the answer.
    pub(crate) async fn call<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let (client, base_url) = self.client(target, addr).await?;
        let response = client
            .post(format!("{base_url}{path}"))
            .header(rpc::HEADER_TARGET_NODE, target.to_string())
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
            return Err(CallError::Unreachable(format!("node {target} answered {status}: {text}")));
        }
        rpc::decode("raft rpc response", &bytes).map_err(|e| CallError::Network(e.to_string()))
    }
}

/// Builds one [`HttpPeer`] per target; all share [`PeerClients`].
pub(crate) struct HttpNetworkFactory {
    self_id: NodeId,
    clients: Arc<PeerClients>,
}

impl HttpNetworkFactory {
    pub(crate) fn new(self_id: NodeId, clients: Arc<PeerClients>) -> Self {
        HttpNetworkFactory { self_id, clients }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> HttpPeer {
        HttpPeer {
            self_id: self.self_id,
            target,
            addr: node.addr.clone(),
            clients: self.clients.clone(),
            frames: None,
            frames_refused: false,
        }
    }
}

/// The client side of one peer's RPCs. Connections are made lazily, on first use.
pub(crate) struct HttpPeer {
    self_id: NodeId,
    target: NodeId,
    addr: String,
    clients: Arc<PeerClients>,
    /// The frame connection for append, vote and pre-vote (with TLS only); dropped after any
    /// error and made again on the next call.
    frames: Option<FrameConn>,
    /// The peer answered TLS but not frames: HTTP for good.
    frames_refused: bool,
}

impl HttpPeer {
    async fn call<Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.clients.call(self.target, &self.addr, path, body, timeout).await
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

impl HttpPeer {
    /// Whether this call can go as a frame: connects when needed. `Ok(false)`: use HTTP.
    async fn frames_ready(&mut self) -> Result<bool, CallError> {
        if self.frames.is_some() {
            return Ok(true);
        }
        let Some(tls) = self.clients.tls.clone() else { return Ok(false) };
        if self.frames_refused {
            return Ok(false);
        }
        match frames::connect(&self.addr, self.target, &tls, CONNECT_TIMEOUT).await? {
            Some(conn) => {
                self.frames = Some(conn);
                Ok(true)
            }
            None => {
                tracing::info!(target_node = self.target, "the peer does not take raft frames: using HTTP");
                self.frames_refused = true;
                Ok(false)
            }
        }
    }

    /// Sends `request` as a frame on the connection `frames_ready` made.
    async fn frame_call(
        &mut self,
        action: RPCTypes,
        request: FrameRequest,
        timeout: Duration,
    ) -> Result<FrameResponse, RPCError<TypeConfig>> {
        let Some(conn) = self.frames.as_mut() else {
            return Err(RPCError::Network(NetworkError::from_string("no frame connection")));
        };
        let result = match tokio::time::timeout(timeout, conn.call(self.target, request)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        };
        if matches!(result, Err(CallError::Timeout | CallError::Network(_))) {
            self.frames = None;
        }
        result.map_err(|e| e.into_rpc(action, self.self_id, self.target, timeout))
    }
}

impl HttpPeer {
    /// A vote or (`pre`) a pre-vote, as a frame when the peer takes them.
    async fn vote_call(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        pre: bool,
        timeout: Duration,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let frames = self
            .frames_ready()
            .await
            .map_err(|e| e.into_rpc(RPCTypes::Vote, self.self_id, self.target, timeout))?;
        if frames {
            let request = if pre { FrameRequest::PreVote(rpc) } else { FrameRequest::Vote(rpc) };
            return match self.frame_call(RPCTypes::Vote, request, timeout).await? {
                FrameResponse::Vote(resp) => Ok(resp),
                FrameResponse::Append(_) => Err(unexpected("an append")),
            };
        }
        let path = if pre { rpc::PATH_PRE_VOTE } else { rpc::PATH_VOTE };
        self.unary(RPCTypes::Vote, path, &rpc, timeout).await
    }
}

fn unexpected(what: &str) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(format!("the peer answered a frame with {what}")))
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
        let frames = self
            .frames_ready()
            .await
            .map_err(|e| e.into_rpc(RPCTypes::AppendEntries, self.self_id, self.target, timeout))?;
        if frames {
            return match self.frame_call(RPCTypes::AppendEntries, FrameRequest::Append(rpc), timeout).await? {
                FrameResponse::Append(resp) => Ok(resp),
                FrameResponse::Vote(_) => Err(unexpected("a vote")),
            };
        }
        self.unary(RPCTypes::AppendEntries, rpc::PATH_APPEND, &rpc, timeout).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_call(rpc, false, option.soft_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_call(rpc, true, option.soft_ttl()).await
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
