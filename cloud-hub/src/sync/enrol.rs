//! Enrolment: a device with a valid token and a CSR becomes a `Device` object and
//! gets a certificate signed by the fleet CA. The token's use count and the new
//! device are written in one Raft batch, so two devices racing for a single-use
//! token cannot both win.

use crate::state::HubState;
use provisioning::token::{EnrolmentToken, check_enrolment};
use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::validate::{dns_label_problem, label_problem};
use shared_proto::wire::{EnrolRefusal, EnrolReply, EnrolRequest};
use shared_proto::{Device, DevicePhase, DeviceSpec, DeviceStatus, ObjectMeta};

fn refuse(reason: EnrolRefusal, message: impl Into<String>) -> EnrolReply {
    EnrolReply::Refused { reason, message: message.into() }
}

pub async fn enrol(state: &HubState, req: EnrolRequest) -> EnrolReply {
    match try_enrol(state, req).await {
        Ok(r) | Err(r) => r,
    }
}

async fn try_enrol(state: &HubState, req: EnrolRequest) -> Result<EnrolReply, EnrolReply> {
    let token = EnrolmentToken::parse(&req.token).map_err(|e| refuse(e.refusal(), e.to_string()))?;
    if token.ca_fingerprint() != state.ca.fingerprint_bytes() {
        return Err(refuse(
            EnrolRefusal::InvalidToken,
            "enrolment token was made by a different hub (its CA fingerprint does not match this hub's)",
        ));
    }
    let unavailable =
        |e: hub_store::StoreError| refuse(EnrolRefusal::Unavailable, format!("hub store: {e}; retry"));
    let (record, token_revision) = match state
        .store
        .get_revisioned(StoreKind::EnrolmentToken, token.id())
        .await
    {
        Ok(Some(hub_store::Revisioned { object: Object::EnrolmentToken(r), revision, .. })) => (r, revision),
        Ok(_) => {
            return Err(refuse(
                EnrolRefusal::InvalidToken,
                "enrolment token is not valid: unknown token (revoked?); create one with flotilla token create",
            ));
        }
        Err(e) => return Err(unavailable(e)),
    };
    let now = state.clock.now();
    check_enrolment(&record, &token, now).map_err(|e| refuse(e.refusal(), e.to_string()))?;
    let name = req.device_name.clone();
    if let Some(p) = dns_label_problem(&name) {
        return Err(refuse(EnrolRefusal::BadRequest, format!("device name {name:?}: {p}")));
    }
    let mut labels = req.labels.clone();
    labels.extend(record.labels.clone());
    for (k, v) in &labels {
        if let Some(p) = label_problem(k, v) {
            return Err(refuse(EnrolRefusal::BadRequest, format!("label {k:?}: {p}")));
        }
    }
    match state.store.get(StoreKind::Device, &name).await {
        Ok(Some(_)) => {
            return Err(refuse(
                EnrolRefusal::NameTaken,
                format!(
                    "a device named {name:?} is already enrolled: pick another name, or delete the old device first (flotilla delete device {name})"
                ),
            ));
        }
        Ok(None) => {}
        Err(e) => return Err(unavailable(e)),
    }
    let cert = state
        .ca
        .sign_device_csr(&req.csr_der, &name, state.config.device_cert_validity)
        .map_err(|e| refuse(EnrolRefusal::BadRequest, format!("certificate request refused: {e}")))?;

    let mut meta = ObjectMeta::named(name.clone());
    meta.labels = labels;
    meta.uid = crate::util::random_hex(16);
    meta.generation = 1;
    meta.created_at = Some(now);
    let facts = &req.facts;
    let mut device = Device::new(meta, DeviceSpec { site: record.site.clone(), ..Default::default() });
    device.status = DeviceStatus {
        phase: DevicePhase::Pending,
        arch: facts.arch.clone(),
        os: facts.os.clone(),
        agent_version: facts.agent_version.clone(),
        capacity: facts.capacity,
        enrolled_at: Some(now),
        last_transition_at: Some(now),
        ..Default::default()
    };
    let mut used = record.clone();
    used.n_used += 1;
    let batch = StoreCommand::Batch(vec![
        StoreCommand::put(Object::EnrolmentToken(used), Precondition::RevisionIs(token_revision)),
        StoreCommand::put(Object::Device(device), Precondition::MustNotExist),
    ]);
    match state.store.write(batch).await {
        Ok(StoreOutcome::Applied { .. }) => {}
        Ok(StoreOutcome::Conflict { kind: StoreKind::Device, .. }) => {
            return Err(refuse(
                EnrolRefusal::NameTaken,
                format!("a device named {name:?} was enrolled just now"),
            ));
        }
        Ok(StoreOutcome::Conflict { .. } | StoreOutcome::Each(_)) => {
            return Err(refuse(EnrolRefusal::Unavailable, "the token was used concurrently; retry"));
        }
        Err(e) => return Err(unavailable(e)),
    }
    tracing::info!(device = %name, token = %record.id, "device enrolled");
    Ok(EnrolReply::Accepted {
        device: name,
        cert_chain_der: vec![cert],
        ca_der: state.ca.cert_der().to_vec(),
    })
}
