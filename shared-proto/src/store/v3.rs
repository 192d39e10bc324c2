//! The store's shapes as format version 3 wrote them, frozen so that Raft logs,
//! snapshots and records written by a version-3 hub still decode. Only the shapes that
//! changed since are copied; everything else is the current type. Never edit: a change
//! here would misread what is on disk.
//!
//! Version 4 added `DeviceCertificate::{issued_at, ca}`, `DeviceStatus::quarantine`,
//! `DevicePhase::Quarantined`, and the `CaRotation` and `PreviousImages` records.

use crate::manifest::v1::{DesiredManifest, ObservedContainer};
use crate::resource::{Capacity, DevicePhase, DeviceSpec, IdentityConflict};
use crate::store::v4::App;
use crate::store::v7::ApiTokenRecord;
use crate::store::v7::{Image, ObjectMeta, Site};
use crate::store::{AuditRecord, EnrolmentTokenRecord, FleetCaRecord, Precondition, StoreKind};
use crate::time::Timestamp;
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct DeviceCertificate {
    serial: String,
    key_sha256: String,
    not_after: Timestamp,
}

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
    certificates: Vec<DeviceCertificate>,
    enrolled_with: String,
    identity_conflict: Option<Box<IdentityConflict>>,
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
    Audit(AuditRecord),
}

#[derive(Deserialize)]
pub(super) enum StoreCommand {
    Put { object: Box<Object>, precondition: Precondition },
    Delete { kind: StoreKind, name: String, precondition: Precondition },
    Batch(Vec<StoreCommand>),
    Each(Vec<StoreCommand>),
}

impl From<DeviceCertificate> for crate::DeviceCertificate {
    fn from(c: DeviceCertificate) -> Self {
        crate::DeviceCertificate {
            serial: c.serial,
            key_sha256: c.key_sha256,
            not_after: c.not_after,
            issued_at: Timestamp(0),
            ca: String::new(),
        }
    }
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
            certificates: s.certificates.into_iter().map(Into::into).collect(),
            enrolled_with: s.enrolled_with,
            identity_conflict: s.identity_conflict,
            quarantine: None,
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
            Object::EnrolmentToken(x) => super::Object::EnrolmentToken(x),
            Object::ApiToken(x) => super::Object::ApiToken(x.into()),
            Object::FleetCa(x) => super::Object::FleetCa(x),
            Object::Audit(x) => super::Object::Audit(x),
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
