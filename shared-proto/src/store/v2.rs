//! The store's shapes as format version 2 wrote them, frozen so that Raft logs,
//! snapshots and records written by a version-2 hub still decode. Only the shapes that
//! changed since are copied; everything else is the current type. Never edit: a change
//! here would misread what is on disk.
//!
//! Version 3 added `DeviceStatus::{certificates, enrolled_with, identity_conflict}`,
//! `DevicePhase::Decommissioned` and
//! `EnrolmentTokenRecord::device_labels` and `ApiTokenRecord::{expires_at, sites}`.

use crate::manifest::v1::{DesiredManifest, ObservedContainer};
use crate::resource::{Capacity, DevicePhase, DeviceSpec};
use crate::store::v4::App;
use crate::store::v7::{Image, ObjectMeta, Site};
use crate::store::{FleetCaRecord, LabelPolicy, Precondition, Role, StoreKind};
use crate::time::Timestamp;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub(super) struct DeviceStatus {
    phase: DevicePhase,
    arch: String,
    os: String,
    agent_version: String,
    capacity: Capacity,
    enrolled_at: Option<Timestamp>,
    last_transition_at: Option<Timestamp>,
    last_seen_at: Option<Timestamp>,
    desired_revision: u64,
    applied_revision: u64,
    containers: Vec<ObservedContainer>,
    message: String,
}

#[derive(Deserialize)]
pub(super) struct EnrolmentTokenRecord {
    id: String,
    secret_sha256: String,
    created_at: Timestamp,
    expires_at: Timestamp,
    max_uses: Option<u32>,
    n_used: u32,
    labels: BTreeMap<String, String>,
    site: String,
    description: String,
}

#[derive(Deserialize)]
pub(super) struct ApiTokenRecord {
    id: String,
    secret_sha256: String,
    role: Role,
    created_at: Timestamp,
    description: String,
}

#[derive(Deserialize)]
pub(super) struct Device {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: DeviceSpec,
    status: DeviceStatus,
}

#[derive(Deserialize)]
pub(super) enum Object {
    Site(Site),
    Device(Device),
    App(App),
    Image(Image),
    Manifest(DesiredManifest),
    EnrolmentToken(EnrolmentTokenRecord),
    ApiToken(ApiTokenRecord),
    FleetCa(FleetCaRecord),
}

#[derive(Deserialize)]
pub(super) enum StoreCommand {
    Put { object: Box<Object>, precondition: Precondition },
    Delete { kind: StoreKind, name: String, precondition: Precondition },
    Batch(Vec<StoreCommand>),
    Each(Vec<StoreCommand>),
}

impl From<DeviceStatus> for crate::DeviceStatus {
    fn from(s: DeviceStatus) -> Self {
        crate::DeviceStatus {
            phase: s.phase,
            arch: s.arch,
            os: s.os,
            agent_version: s.agent_version,
            capacity: s.capacity,
            enrolled_at: s.enrolled_at,
            last_transition_at: s.last_transition_at,
            last_seen_at: s.last_seen_at,
            desired_revision: s.desired_revision,
            applied_revision: s.applied_revision,
            containers: s.containers.into_iter().map(Into::into).collect(),
            message: s.message,
            certificates: vec![],
            enrolled_with: String::new(),
            identity_conflict: None,
            quarantine: None,
        }
    }
}

impl From<EnrolmentTokenRecord> for crate::store::EnrolmentTokenRecord {
    fn from(r: EnrolmentTokenRecord) -> Self {
        crate::store::EnrolmentTokenRecord {
            id: r.id,
            secret_sha256: r.secret_sha256,
            created_at: r.created_at,
            expires_at: r.expires_at,
            max_uses: r.max_uses,
            n_used: r.n_used,
            labels: r.labels,
            site: r.site,
            description: r.description,
            // Devices chose their labels freely when these tokens were made.
            device_labels: LabelPolicy::Any,
        }
    }
}

impl From<ApiTokenRecord> for crate::store::ApiTokenRecord {
    fn from(r: ApiTokenRecord) -> Self {
        crate::store::ApiTokenRecord {
            id: r.id,
            secret_sha256: r.secret_sha256,
            role: r.role,
            created_at: r.created_at,
            description: r.description,
            // Tokens made before expiry and scopes existed keep working everywhere
            // until revoked.
            expires_at: None,
            sites: vec![],
            namespaces: vec![],
        }
    }
}

impl From<Device> for crate::Device {
    fn from(d: Device) -> Self {
        crate::Device {
            api_version: d.api_version,
            kind: d.kind,
            metadata: d.metadata.into(),
            spec: d.spec,
            status: d.status.into(),
        }
    }
}

impl From<Object> for super::Object {
    fn from(o: Object) -> Self {
        match o {
            Object::Site(x) => super::Object::Site(x.into()),
            Object::Device(x) => super::Object::Device(x.into()),
            Object::App(x) => super::Object::App(x.into()),
            Object::Image(x) => super::Object::Image(x.into()),
            Object::Manifest(x) => super::Object::Manifest(x.into()),
            Object::EnrolmentToken(x) => super::Object::EnrolmentToken(x.into()),
            Object::ApiToken(x) => super::Object::ApiToken(x.into()),
            Object::FleetCa(x) => super::Object::FleetCa(x),
        }
    }
}

impl From<StoreCommand> for super::StoreCommand {
    fn from(c: StoreCommand) -> Self {
        match c {
            StoreCommand::Put { object, precondition } => {
                super::StoreCommand::Put { object: Box::new((*object).into()), precondition }
            }
            StoreCommand::Delete { kind, name, precondition } => {
                super::StoreCommand::Delete { kind, name, precondition }
            }
            StoreCommand::Batch(cmds) => {
                super::StoreCommand::Batch(cmds.into_iter().map(Into::into).collect())
            }
            StoreCommand::Each(cmds) => super::StoreCommand::Each(cmds.into_iter().map(Into::into).collect()),
        }
    }
}
