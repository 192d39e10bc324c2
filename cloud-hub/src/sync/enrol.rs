//! Enrolment: a device with a valid token and a CSR becomes a `Device` object and
//! gets a certificate signed by the fleet CA. The token's use count and the new
//! device are written in one Raft batch, so two devices racing for a single-use
//! token cannot both win. The device object records the certificate (serial and key),
//! and only the certificates it lists open sessions (`sync::identity`).
//!
//! Idempotent: a device whose reply was lost asks again with the same token and key,
//! and gets a new certificate for that key in place of the undelivered one; the token
//! counts the enrolment once.

use crate::state::HubState;
use provisioning::token::{EnrolmentToken, check_enrolment, check_secret};
use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::validate::{dns_label_problem, label_problem};
use shared_proto::wire::{EnrolRefusal, EnrolReply, EnrolRequest};
use shared_proto::{Device, DeviceCertificate, DevicePhase, DeviceSpec, DeviceStatus, ObjectMeta};

/// What an unknown token's secret is checked against, so that refusing it costs what
/// refusing a wrong secret does.
const UNKNOWN_TOKEN_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn refuse(reason: EnrolRefusal, message: impl Into<String>) -> EnrolReply {
    EnrolReply::Refused { reason, message: message.into() }
}

pub async fn enrol(state: &HubState, req: EnrolRequest) -> EnrolReply {
    match try_enrol(state, req).await {
        Ok(r) | Err(r) => r,
    }
}

async fn try_enrol(state: &HubState, req: EnrolRequest) -> Result<EnrolReply, EnrolReply> {
    if let Some(p) = req.problem() {
        return Err(refuse(EnrolRefusal::BadRequest, p));
    }
    let token = EnrolmentToken::parse(&req.token).map_err(|e| refuse(e.refusal(), e.to_string()))?;
    let fleet = state.pki.fleet();
    if token.ca_fingerprint() != fleet.fingerprint_bytes() {
        let fingerprint = hex::encode(token.ca_fingerprint());
        let message = if state.pki.previous_fingerprints().contains(&fingerprint) {
            "enrolment token was made before the fleet CA was rotated; create a new one (flotilla token create)"
        } else {
            "enrolment token was made by a different hub (its CA fingerprint does not match this hub's)"
        };
        return Err(refuse(EnrolRefusal::InvalidToken, message));
    }
    let unavailable =
        |e: hub_store::StoreError| refuse(EnrolRefusal::Unavailable, format!("hub store: {e}; retry"));
    let (record, token_revision) =
        match state.store.get_revisioned(StoreKind::EnrolmentToken, token.id()).await {
            Ok(Some(hub_store::Revisioned { object: Object::EnrolmentToken(r), revision, .. })) => {
                (r, revision)
            }
            Ok(_) => {
                // The same answer as a wrong secret, after the same work: nobody learns
                // which token ids exist.
                let _ = token.verify_secret(UNKNOWN_TOKEN_HASH);
                let e = provisioning::token::TokenError::InvalidToken;
                return Err(refuse(e.refusal(), e.to_string()));
            }
            Err(e) => return Err(unavailable(e)),
        };
    // Nobody without the secret learns anything, not even whether a name is taken.
    check_secret(&record, &token).map_err(|e| refuse(e.refusal(), e.to_string()))?;
    let now = state.clock.now();
    let name = req.device_name.clone();
    if let Some(p) = dns_label_problem(&name) {
        return Err(refuse(EnrolRefusal::BadRequest, format!("device name {name:?}: {p}")));
    }
    let key_sha256 = provisioning::ca::csr_key_sha256(&req.csr_der)
        .map_err(|e| refuse(EnrolRefusal::BadRequest, format!("certificate request refused: {e}")))?;
    let existing = match state.store.get_revisioned(StoreKind::Device, &name).await {
        Ok(Some(hub_store::Revisioned { object: Object::Device(d), revision, .. })) => Some((d, revision)),
        Ok(_) => None,
        Err(e) => return Err(unavailable(e)),
    };
    if let Some((device, revision)) = existing {
        let same_enrolment = device.status.enrolled_with == record.id
            && device.status.certificates.iter().any(|c| c.key_sha256 == key_sha256);
        if !same_enrolment {
            return Err(refuse(
                EnrolRefusal::NameTaken,
                format!(
                    "a device named {name:?} is already enrolled: pick another name, or delete the old device first (flotilla delete device {name})"
                ),
            ));
        }
        return reissue(state, &fleet, device, revision, &req.csr_der, &key_sha256).await;
    }
    check_enrolment(&record, &token, now).map_err(|e| refuse(e.refusal(), e.to_string()))?;
    for (k, v) in &req.labels {
        if let Some(p) = label_problem(k, v) {
            return Err(refuse(EnrolRefusal::BadRequest, format!("label {k:?}: {p}")));
        }
        record.device_labels.check(&record.labels, k, v).map_err(|m| refuse(EnrolRefusal::BadRequest, m))?;
    }
    let mut labels = req.labels.clone();
    labels.extend(record.labels.clone());
    let (cert, certificate) = sign(state, &fleet, &req.csr_der, &name)?;

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
        certificates: vec![certificate],
        enrolled_with: record.id.clone(),
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
    Ok(EnrolReply::Accepted { device: name, cert_chain_der: vec![cert], ca_der: fleet.cert_der().to_vec() })
}

/// Signs the CSR for device `name` with the fleet CA, and what the device object
/// records of the result.
pub fn sign_device(
    state: &HubState,
    fleet: &provisioning::ca::FleetCa,
    csr_der: &[u8],
    name: &str,
) -> Result<(Vec<u8>, DeviceCertificate), String> {
    let cert = fleet
        .sign_device_csr_at(
            csr_der,
            name,
            state.clock.now().to_system_time(),
            state.config.device_cert_validity,
        )
        .map_err(|e| format!("certificate request refused: {e}"))?;
    let facts = provisioning::identity::device_cert(&cert)
        .map_err(|e| format!("the hub signed an unreadable certificate: {e}"))?;
    let certificate = DeviceCertificate {
        serial: facts.serial,
        key_sha256: facts.key_sha256,
        not_after: facts.not_after,
        issued_at: facts.issued_at,
        ca: fleet.fingerprint(),
    };
    Ok((cert, certificate))
}

fn sign(
    state: &HubState,
    fleet: &provisioning::ca::FleetCa,
    csr_der: &[u8],
    name: &str,
) -> Result<(Vec<u8>, DeviceCertificate), EnrolReply> {
    sign_device(state, fleet, csr_der, name).map_err(|m| refuse(EnrolRefusal::BadRequest, m))
}

/// The same device asks again after losing the reply: a new certificate for the same
/// key replaces the one it never received. The token is not counted again.
async fn reissue(
    state: &HubState,
    fleet: &provisioning::ca::FleetCa,
    mut device: Device,
    revision: u64,
    csr_der: &[u8],
    key_sha256: &str,
) -> Result<EnrolReply, EnrolReply> {
    let name = device.metadata.name.clone();
    let (cert, certificate) = sign(state, fleet, csr_der, &name)?;
    device.status.certificates.retain(|c| c.key_sha256 != key_sha256);
    device.status.certificates.push(certificate);
    match state
        .store
        .write(StoreCommand::put(Object::Device(device), Precondition::RevisionIs(revision)))
        .await
    {
        Ok(StoreOutcome::Applied { .. }) => {}
        Ok(_) => return Err(refuse(EnrolRefusal::Unavailable, "the device changed meanwhile; retry")),
        Err(e) => return Err(refuse(EnrolRefusal::Unavailable, format!("hub store: {e}; retry"))),
    }
    tracing::info!(device = %name, "enrolment asked again with the same key; certificate issued again");
    Ok(EnrolReply::Accepted { device: name, cert_chain_der: vec![cert], ca_der: fleet.cert_der().to_vec() })
}
