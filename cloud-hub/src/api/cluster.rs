//! The hub cluster: who its members are (`GET /api/v1/cluster`), join tokens, joining
//! (`POST /api/v1/cluster/join`, then `POST /api/v1/cluster/members`, both authenticated by
//! a join token instead of an API token) and removing a member. See `crate::cluster` for
//! the protocol. Any hub answers; membership changes are forwarded to the leader by the store.

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::objects::read_json;
use crate::cluster::{AddMemberRequest, DEFAULT_JOIN_TTL, JoinGrant, JoinRequest, JoinToken, MAX_JOIN_TTL};
use crate::state::HubState;
use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use shared_proto::store::{HubRecord, Object, Role, StoreKind};
use std::sync::Arc;
use std::time::Duration;

/// `GET /api/v1/cluster`.
pub async fn status(State(state): State<Arc<HubState>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    Ok(Json(view(&state)))
}

fn view(state: &HubState) -> Value {
    let st = state.store.status();
    let agents = |id: u64| match state.store.get_local(StoreKind::Hub, &HubRecord::name_of(id)) {
        Ok(Some(Object::Hub(h))) => Some(h.agents),
        _ => None,
    };
    let member = |id: &u64, addr: &String, voter: bool| {
        let a = agents(*id);
        json!({ "nodeId": id, "raftAddr": addr, "voter": voter, "leader": st.leader == Some(*id),
            "agentAddress": a.as_ref().map(|a| a.quic.clone()), "agentTcpAddress": a.map(|a| a.tcp) })
    };
    let members: Vec<Value> = st
        .voters
        .iter()
        .map(|(id, a)| member(id, a, true))
        .chain(st.learners.iter().map(|(id, a)| member(id, a, false)))
        .collect();
    json!({
        "nodeId": st.node_id,
        "leader": st.leader,
        "isLeader": st.is_leader,
        "revision": st.revision,
        "members": members,
        "connectedDevices": state.live.n_connected(),
        "fleetConnectedDevices": st.is_leader.then(|| state.fleet.n_connected()),
        "quicAddr": state.config.quic_addr.to_string(),
        // What devices should dial (never loopback for a hub on every interface).
        "agentAddress": state.config.agent_address.as_ref().ok(),
        "agentAddressProblem": state.config.agent_address.as_ref().err().map(|e| e.to_string()),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Life of the token in seconds (default an hour, at most a week).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `POST /api/v1/cluster/join-tokens` (admin).
pub async fn create_join_token(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    caller.require_unscoped("a hub join token")?;
    let req: CreateJoinToken = match body.iter().all(u8::is_ascii_whitespace) {
        true => CreateJoinToken::default(),
        false => read_json(&body)?,
    };
    let ttl = match req.ttl_seconds {
        None => DEFAULT_JOIN_TTL,
        Some(s) if s == 0 || s > MAX_JOIN_TTL.as_secs() => {
            return Err(ApiError::invalid(
                "ttlSeconds",
                format!("must be between 1 and {} seconds", MAX_JOIN_TTL.as_secs()),
            ));
        }
        Some(s) => Duration::from_secs(s),
    };
    let now = state.clock.now();
    let token = JoinToken::issue(&state.key, state.pki.fleet().fingerprint_bytes(), now, ttl);
    let expires_at = JoinToken::parse(&token).map_err(ApiError::Internal)?.expires_at;
    Ok(Json(json!({ "token": token, "expiresAt": expires_at.to_rfc3339() })))
}

fn check_token(state: &HubState, token: &str) -> ApiResult<()> {
    let parsed = JoinToken::parse(token).map_err(ApiError::Unauthorized)?;
    parsed
        .check(&state.key, &state.pki.fleet().fingerprint_bytes(), state.clock.now())
        .map_err(ApiError::Unauthorized)
}

fn check_raft_addr(addr: &str) -> ApiResult<()> {
    // The same rule as the OpenAPI document's pattern.
    let valid = addr.len() <= 255
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || "._:[]-".contains(c))
                && !port.starts_with('0')
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
    match valid {
        true => Ok(()),
        false => Err(ApiError::invalid("raftAddr", "must be host:port, e.g. 10.0.0.2:7442")),
    }
}

/// `POST /api/v1/cluster/join`: credentials for a new hub.
pub async fn join(State(state): State<Arc<HubState>>, body: Bytes) -> ApiResult<Json<JoinGrant>> {
    let req: JoinRequest = read_json(&body)?;
    check_token(&state, &req.token)?;
    check_raft_addr(&req.raft_addr)?;
    let st = state.store.status();
    let members: std::collections::BTreeMap<u64, String> =
        st.voters.iter().chain(st.learners.iter()).map(|(id, a)| (*id, a.clone())).collect();
    let node_id = match req.node_id {
        Some(0) => return Err(ApiError::invalid("nodeId", "node ids start at 1")),
        Some(id) => {
            if members.get(&id).is_some_and(|a| *a != req.raft_addr) {
                return Err(ApiError::Conflict(format!(
                    "node {id} is a member at {}: choose another id, or remove it first",
                    members[&id]
                )));
            }
            id
        }
        None => members.keys().max().copied().unwrap_or(0).max(st.node_id) + 1,
    };
    let (chain, cert_key) =
        crate::cluster::raft_certificate(&state.pki.fleet(), node_id, state.pki.hub_cert_lifetime())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    let key_path = state.config.data_dir.join(crate::sealing::KEY_FILE);
    let hub_key = std::fs::read(&key_path)
        .map_err(|e| ApiError::Internal(format!("reading {}: {e}", key_path.display())))?;
    use base64::Engine;
    tracing::info!(node_id, raft_addr = %req.raft_addr, "a hub is joining the cluster");
    Ok(Json(JoinGrant {
        node_id,
        hub_key: base64::engine::general_purpose::STANDARD.encode(hub_key),
        chain_pem: provisioning::pem::encode_cert_chain(&chain),
        key_pem: provisioning::pem::encode_private_key(&cert_key).to_string(),
        trusted_pem: state.pki.trusted_der().iter().map(|c| provisioning::pem::encode_cert(c)).collect(),
        members,
    }))
}

/// `POST /api/v1/cluster/members`: adds a hub that has its credentials (idempotent).
pub async fn add_member(State(state): State<Arc<HubState>>, body: Bytes) -> ApiResult<Json<Value>> {
    let req: AddMemberRequest = read_json(&body)?;
    check_token(&state, &req.token)?;
    check_raft_addr(&req.raft_addr)?;
    if req.node_id == 0 {
        return Err(ApiError::invalid("nodeId", "node ids start at 1"));
    }
    state.store.add_member(req.node_id, req.raft_addr.clone()).await?;
    tracing::info!(node_id = req.node_id, raft_addr = %req.raft_addr, "a hub joined the cluster");
    Ok(Json(view(&state)))
}

/// `DELETE /api/v1/cluster/members/{id}` (admin).
pub async fn remove_member(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(id): Path<u64>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    caller.require_unscoped("the hub cluster")?;
    let st = state.store.status();
    if !st.voters.contains_key(&id) && !st.learners.contains_key(&id) {
        return Err(ApiError::NotFound(format!("node {id} is not a member of the cluster")));
    }
    if st.voters.len() == 1 && st.voters.contains_key(&id) {
        return Err(ApiError::Conflict(format!(
            "node {id} is the only voter: a cluster cannot remove its last hub"
        )));
    }
    state.store.remove_member(id).await?;
    // Its devices stop being told of it (they hold it until then, and try it in turn).
    crate::sync::hubs::forget(&state.store, id).await?;
    tracing::info!(node_id = id, "removed a hub from the cluster");
    Ok(Json(view(&state)))
}
