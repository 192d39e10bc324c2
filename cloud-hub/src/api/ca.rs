//! The fleet CA's rotation (`flotilla ca status|rotate|activate|retire`); the steps
//! are described in `sync::pki`. Every step is a Raft write every hub follows; the
//! two that could cut devices off (activate, retire) first check that none would be,
//! and name the ones that would unless the admin insists (`?force=true`).

use super::HubState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::{Query, State};
use provisioning::ca::FleetCa;
use serde_json::{Value, json};
use shared_proto::store::{
    CaRotationRecord, Object, Precondition, Role, StoreCommand, StoreKind, StoreOutcome,
};
use shared_proto::{Device, DevicePhase, Timestamp};
use std::sync::Arc;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceQuery {
    #[serde(default)]
    force: bool,
}

/// The rotation record and its revision (`None`: never rotated).
async fn rotation(state: &HubState) -> ApiResult<(CaRotationRecord, Option<u64>)> {
    Ok(match state.store.get_revisioned(StoreKind::CaRotation, "fleet").await? {
        Some(hub_store::Revisioned { object: Object::CaRotation(r), revision, .. }) => (r, Some(revision)),
        _ => (CaRotationRecord { next: None, previous: vec![], changed_at: Timestamp(0) }, None),
    })
}

fn precondition(revision: Option<u64>) -> Precondition {
    revision.map_or(Precondition::MustNotExist, Precondition::RevisionIs)
}

async fn devices(state: &HubState) -> ApiResult<Vec<Device>> {
    Ok(state
        .store
        .list(StoreKind::Device)
        .await?
        .into_iter()
        .filter_map(|o| match o {
            Object::Device(d) if d.status.phase != DevicePhase::Decommissioned => Some(d),
            _ => None,
        })
        .collect())
}

/// Devices that have not been in touch since `since` (so have not learnt the CAs to
/// trust since then).
fn not_seen_since(state: &HubState, devices: &[Device], since: Timestamp) -> Vec<String> {
    devices
        .iter()
        .filter(|d| {
            let name = &d.metadata.name;
            let seen = state.live.last_seen(name).or(d.status.last_seen_at).unwrap_or(Timestamp(0));
            !state.live.is_connected(name) && seen < since
        })
        .map(|d| d.metadata.name.clone())
        .collect()
}

/// Devices none of whose certificates the fleet CA signed.
fn not_on_fleet_ca(devices: &[Device], fleet: &str) -> Vec<String> {
    devices
        .iter()
        .filter(|d| !d.status.certificates.is_empty() && !d.status.certificates.iter().any(|c| c.ca == fleet))
        .map(|d| d.metadata.name.clone())
        .collect()
}

fn some(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// Refuses a step that would cut `names` off, unless the admin insists.
fn unless_forced(force: bool, names: &[String], would: &str) -> ApiResult<()> {
    if names.is_empty() || force {
        return Ok(());
    }
    Err(ApiError::Conflict(format!(
        "{} device(s) {would}: {}; wait for them, or go ahead with --force (they would need enrolling again)",
        names.len(),
        some(names)
    )))
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    caller.require(Role::Admin)?;
    caller.require_unscoped("rotating the fleet CA")
}

/// `GET /api/v1/ca`: the fleet CA, the rotation under way, and which devices it still waits for.
pub async fn status(State(state): State<Arc<HubState>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let (rotation, _) = rotation(&state).await?;
    let fleet = state.pki.fleet();
    let devices = devices(&state).await?;
    let next = rotation.next.as_ref().map(|n| hex::encode(provisioning::sha256_fingerprint(&n.cert_der)));
    let waiting = match &rotation.next {
        Some(n) => not_seen_since(&state, &devices, n.created_at),
        None => vec![],
    };
    let on_old =
        if rotation.previous.is_empty() { vec![] } else { not_on_fleet_ca(&devices, &fleet.fingerprint()) };
    let pem: String = state.pki.trusted_der().iter().map(|c| provisioning::pem::encode_cert(c)).collect();
    Ok(Json(json!({
        "fleet": { "fingerprint": fleet.fingerprint() },
        "next": next.map(|n| json!({ "fingerprint": n, "stagedAt": rotation.next.as_ref().map(|r| r.created_at.to_rfc3339()) })),
        "previous": state.pki.previous_fingerprints(),
        "changedAt": (rotation.changed_at.0 > 0).then(|| rotation.changed_at.to_rfc3339()),
        "devices": devices.len(),
        "notSeenSinceStaged": waiting,
        "onPreviousCa": on_old,
        "trustedPem": pem,
    })))
}

/// `POST /api/v1/ca/rotate`: stages a new CA.
pub async fn rotate(State(state): State<Arc<HubState>>, caller: Caller) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let (mut record, revision) = rotation(&state).await?;
    if record.next.is_some() {
        return Err(ApiError::Conflict(
            "a new CA is staged already: activate it (flotilla ca activate) first".into(),
        ));
    }
    let now = state.clock.now();
    let next = FleetCa::generate_at("Flotilla fleet CA", now.to_system_time())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Sealed with the hub key: the staged CA's private key never enters the store in clear.
    record.next =
        Some(state.key.seal_ca(next.to_record(now)).map_err(|e| ApiError::Internal(e.to_string()))?);
    write(&state, StoreCommand::put(Object::CaRotation(record), precondition(revision))).await?;
    tracing::info!(next = %next.fingerprint(), "a new fleet CA is staged");
    status(State(state), caller).await
}

/// `POST /api/v1/ca/activate`: the staged CA becomes the fleet CA.
pub async fn activate(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let (mut record, revision) = rotation(&state).await?;
    let Some(next) = record.next.take() else {
        return Err(ApiError::Conflict("no CA is staged: stage one first (flotilla ca rotate)".into()));
    };
    let waiting = not_seen_since(&state, &devices(&state).await?, next.created_at);
    unless_forced(
        q.force,
        &waiting,
        "have not connected since the new CA was staged and would no longer trust the hub",
    )?;
    let fleet = match state.store.get_revisioned(StoreKind::FleetCa, "fleet").await? {
        Some(hub_store::Revisioned { object: Object::FleetCa(r), revision, .. }) => (r, revision),
        _ => return Err(ApiError::Internal("the store holds no fleet CA".into())),
    };
    record.previous.insert(0, fleet.0.cert_der.clone());
    record.changed_at = state.clock.now();
    let batch = StoreCommand::Batch(vec![
        StoreCommand::put(Object::FleetCa(next), Precondition::RevisionIs(fleet.1)),
        StoreCommand::put(Object::CaRotation(record), precondition(revision)),
    ]);
    write(&state, batch).await?;
    tracing::info!("the staged CA is now the fleet CA; devices renew onto it");
    status(State(state), caller).await
}

/// `POST /api/v1/ca/retire`: the CAs the fleet CA replaced are trusted no more.
pub async fn retire(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Query(q): Query<ForceQuery>,
) -> ApiResult<Json<Value>> {
    require_admin(&caller)?;
    let (mut record, revision) = rotation(&state).await?;
    if record.previous.is_empty() {
        return Err(ApiError::Conflict("no previous CA is trusted: nothing to retire".into()));
    }
    let stuck = not_on_fleet_ca(&devices(&state).await?, &state.pki.fleet().fingerprint());
    unless_forced(q.force, &stuck, "hold only certificates of a previous CA and would be locked out")?;
    record.previous.clear();
    write(&state, StoreCommand::put(Object::CaRotation(record), precondition(revision))).await?;
    tracing::info!("previous fleet CAs retired");
    status(State(state), caller).await
}

async fn write(state: &HubState, cmd: StoreCommand) -> ApiResult<()> {
    match state.store.write(cmd).await? {
        StoreOutcome::Applied { .. } => Ok(()),
        _ => Err(ApiError::Conflict("the fleet CA changed under this request; retry".into())),
    }
}
