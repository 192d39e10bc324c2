//! The store's shapes as format version 4 wrote them, frozen so that Raft logs,
//! snapshots and records written by a version-4 hub still decode. Only the shapes that
//! changed since are copied; everything else is the current type. Never edit: a change
//! here would misread what is on disk.
//!
//! Version 5 added to apps their init containers, volumes, grace period, network policy
//! and user namespace, to containers their volume mounts, devices, probes, hooks and
//! security settings, and to environment variables `valueFrom`; manifests and the
//! containers a device reports moved to manifest shape 2 ([`crate::manifest::v1`]).

use crate::manifest::v1::{DesiredManifest, ObservedContainer};
use crate::resource::{
    AppStatus, Capacity, DeviceCertificate, DevicePhase, DeviceSpec, IdentityConflict, NetworkMode,
    Placement, PortSpec, Quarantine, ResourceRequirements, RestartPolicy,
};
use crate::selector::LabelSelector;
use crate::store::v7::ApiTokenRecord;
use crate::store::v7::{Image, ObjectMeta, Site};
use crate::store::{
    AuditRecord, CaRotationRecord, EnrolmentTokenRecord, FleetCaRecord, Precondition, PreviousImagesRecord,
    StoreKind,
};
use crate::time::Timestamp;
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct EnvVar {
    name: String,
    value: String,
}

#[derive(Deserialize)]
pub(super) struct ContainerSpec {
    name: String,
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    ports: Vec<PortSpec>,
    resources: ResourceRequirements,
    working_dir: String,
}

#[derive(Deserialize)]
pub(super) struct AppSpec {
    selector: LabelSelector,
    placement: Placement,
    containers: Vec<ContainerSpec>,
    restart_policy: RestartPolicy,
    network: NetworkMode,
}

#[derive(Deserialize)]
pub(super) struct App {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: AppSpec,
    status: AppStatus,
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
    quarantine: Option<Box<Quarantine>>,
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
    CaRotation(CaRotationRecord),
    PreviousImages(PreviousImagesRecord),
}

#[derive(Deserialize)]
pub(super) enum StoreCommand {
    Put { object: Box<Object>, precondition: Precondition },
    Delete { kind: StoreKind, name: String, precondition: Precondition },
    Batch(Vec<StoreCommand>),
    Each(Vec<StoreCommand>),
}

impl From<ContainerSpec> for crate::ContainerSpec {
    fn from(c: ContainerSpec) -> Self {
        crate::ContainerSpec {
            name: c.name,
            image: c.image,
            command: c.command,
            args: c.args,
            env: c
                .env
                .into_iter()
                .map(|e| crate::EnvVar { name: e.name, value: e.value, value_from: None })
                .collect(),
            ports: c.ports,
            resources: c.resources,
            working_dir: c.working_dir,
            ..Default::default()
        }
    }
}

impl From<App> for crate::App {
    fn from(a: App) -> Self {
        crate::App {
            api_version: a.api_version,
            kind: a.kind,
            metadata: a.metadata.into(),
            spec: crate::AppSpec {
                selector: a.spec.selector,
                placement: a.spec.placement,
                containers: a.spec.containers.into_iter().map(Into::into).collect(),
                restart_policy: a.spec.restart_policy,
                network: a.spec.network,
                ..Default::default()
            },
            status: a.status,
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
            certificates: s.certificates,
            enrolled_with: s.enrolled_with,
            identity_conflict: s.identity_conflict,
            quarantine: s.quarantine,
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
            Object::CaRotation(x) => super::Object::CaRotation(x),
            Object::PreviousImages(x) => super::Object::PreviousImages(x),
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
