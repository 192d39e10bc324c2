//! A device's life after enrolment, as an operator steers it: decommission, and the
//! approval (or rejection) of a device quarantined for coming back with an expired
//! certificate. Each changes the device's status through Raft, with the revision read
//! as the precondition, and retries when a report or a transition moved it meanwhile.

use super::HubState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::objects::to_json;
use axum::Json;
use axum::extract::{Path, State};
use serde_json::Value;
use shared_proto::store::{Object, Precondition, Role, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::{Device, DevicePhase};
use std::sync::Arc;

/// What a change does to a device: `Ok(true)` write it, `Ok(false)` nothing to do.
type Change<'a> = dyn FnMut(&mut Device) -> ApiResult<bool> + Send + 'a;

/// Reads device `name`, applies `change` and writes it, retrying on conflicts.
async fn change_device(
    state: &HubState,
    caller: &Caller,
    name: &str,
    change: &mut Change<'_>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    for _ in 0..8 {
        let current = state
            .store
            .get_revisioned(StoreKind::Device, name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("Device {name:?} not found")))?;
        caller.check_may_change(&current.object)?;
        let Object::Device(mut device) = current.object else {
            return Err(ApiError::Internal(format!("device {name:?} is stored as another kind")));
        };
        if !change(&mut device)? {
            return Ok(Json(to_json(&Object::Device(device))));
        }
        let cmd = StoreCommand::put(Object::Device(device), Precondition::RevisionIs(current.revision));
        match state.store.write(cmd).await? {
            StoreOutcome::Applied { .. } => {
                let stored = state
                    .store
                    .get_local(StoreKind::Device, name)?
                    .ok_or_else(|| ApiError::Internal("device vanished right after it was written".into()))?;
                return Ok(Json(to_json(&stored)));
            }
            StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => continue,
        }
    }
    Err(ApiError::Unavailable(format!("device {name:?} keeps changing under this request; retry")))
}

fn retire(device: &mut Device, now: shared_proto::Timestamp, why: String) {
    device.status.phase = DevicePhase::Decommissioned;
    device.status.last_transition_at = Some(now);
    device.status.quarantine = None;
    device.status.message = why;
}

/// `POST /api/v1/devices/{name}/decommission`: retires a device for good. Its
/// connections close at once, its certificates open nothing more, nothing is placed
/// on it, and the record stays. Deleting it frees the name for a new enrolment.
pub async fn decommission(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let now = state.clock.now();
    let token = caller.token_id.clone();
    let reply = change_device(&state, &caller, &name, &mut |d: &mut Device| {
        if d.status.phase == DevicePhase::Decommissioned {
            return Ok(false);
        }
        retire(d, now, format!("decommissioned at {} by token {token}", now.to_rfc3339()));
        Ok(true)
    })
    .await?;
    state.live.forget(&name);
    Ok(reply)
}

fn require_quarantined(d: &Device) -> ApiResult<()> {
    if d.status.phase == DevicePhase::Quarantined && d.status.quarantine.is_some() {
        return Ok(());
    }
    Err(ApiError::Conflict(format!(
        "device {:?} is {}, not Quarantined: only a device that came back with an expired certificate awaits approval",
        d.metadata.name, d.status.phase
    )))
}

/// `POST /api/v1/devices/{name}/approve`: lets a quarantined device back in. Its
/// next renewal request (within seconds) gets a certificate for the key it asked with.
pub async fn approve(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let now = state.clock.now();
    let token = caller.token_id.clone();
    change_device(&state, &caller, &name, &mut |d: &mut Device| {
        require_quarantined(d)?;
        let q = d.status.quarantine.as_mut().expect("checked");
        if q.approved {
            return Ok(false);
        }
        q.approved = true;
        d.status.message = format!(
            "approved at {} by token {token}; the device gets its certificate on its next request",
            now.to_rfc3339()
        );
        Ok(true)
    })
    .await
}

/// `POST /api/v1/devices/{name}/reject`: refuses a quarantined device for good: it is
/// decommissioned, and its expired certificate opens nothing more.
pub async fn reject(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let now = state.clock.now();
    let token = caller.token_id.clone();
    let reply = change_device(&state, &caller, &name, &mut |d: &mut Device| {
        require_quarantined(d)?;
        retire(d, now, format!("rejected from quarantine at {} by token {token}", now.to_rfc3339()));
        Ok(true)
    })
    .await?;
    state.live.forget(&name);
    Ok(reply)
}

/// `GET /api/v1/devices/{name}/usage`: what the device's containers use, as it last
/// told its hub (kept in that hub's memory, never stored; asked of the cluster's other
/// hubs when this one has none): CPU in millicores averaged over the
/// agent's sampling interval, memory as the working set.
pub async fn usage(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let device = state
        .store
        .get(StoreKind::Device, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Device {name:?} not found")))?;
    caller.check_sees(&device)?;
    // Kept by the hub the device reports to: this one, or another of the cluster.
    let usage = match state.live.usage_of(&name) {
        Some(u) => Some(u),
        None => crate::sync::fleet::usage_from_peers(&state.store, &name).await,
    };
    let (containers, sampled_at) = match usage {
        Some((u, at)) => (serde_json::to_value(&u.containers).unwrap_or_default(), Some(at)),
        None => (Value::Array(vec![]), None),
    };
    Ok(Json(serde_json::json!({ "device": name, "sampledAt": sampled_at, "containers": containers })))
}
