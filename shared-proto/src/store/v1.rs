//! The store's shapes as format version 1 (first light) wrote them, frozen so that Raft
//! logs, snapshots and records written by a version-1 hub still decode. Only the shapes
//! that changed since are copied; everything else is the current type. Never edit:
//! a change here would misread what is on disk.
//!
//! Version 2 added `DeviceSpec::taints` and `Placement::{tolerations, affinity,
//! anti_affinity}`, and appended `StoreCommand::Each`. A device's status has the shape
//! version 2 froze (`v2::DeviceStatus`), and so have enrolment and API tokens.

use crate::manifest::v1::DesiredManifest;
use crate::resource::{AppStatus, NetworkMode, RestartPolicy};
use crate::selector::LabelSelector;
use crate::store::v4::ContainerSpec;
use crate::store::v7::{Image, ObjectMeta, Site};
use crate::store::{FleetCaRecord, Precondition, StoreKind};
use serde::Deserialize;

#[derive(Deserialize)]
struct Placement {
    sites: Vec<String>,
    max_per_site: Option<u32>,
}

#[derive(Deserialize)]
struct AppSpec {
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
struct DeviceSpec {
    site: String,
    unschedulable: bool,
}

#[derive(Deserialize)]
pub(super) struct Device {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: DeviceSpec,
    status: super::v2::DeviceStatus,
}

#[derive(Deserialize)]
pub(super) enum Object {
    Site(Site),
    Device(Device),
    App(App),
    Image(Image),
    Manifest(DesiredManifest),
    EnrolmentToken(super::v2::EnrolmentTokenRecord),
    ApiToken(super::v2::ApiTokenRecord),
    FleetCa(FleetCaRecord),
}

#[derive(Deserialize)]
pub(super) enum StoreCommand {
    Put { object: Box<Object>, precondition: Precondition },
    Delete { kind: StoreKind, name: String, precondition: Precondition },
    Batch(Vec<StoreCommand>),
}

impl From<App> for crate::App {
    fn from(a: App) -> Self {
        let p = a.spec.placement;
        crate::App {
            api_version: a.api_version,
            kind: a.kind,
            metadata: a.metadata.into(),
            spec: crate::AppSpec {
                selector: a.spec.selector,
                placement: crate::Placement {
                    sites: p.sites,
                    max_per_site: p.max_per_site,
                    ..Default::default()
                },
                containers: a.spec.containers.into_iter().map(Into::into).collect(),
                restart_policy: a.spec.restart_policy,
                network: a.spec.network,
                ..Default::default()
            },
            status: a.status,
        }
    }
}

impl From<Device> for crate::Device {
    fn from(d: Device) -> Self {
        crate::Device {
            api_version: d.api_version,
            kind: d.kind,
            metadata: d.metadata.into(),
            spec: crate::DeviceSpec {
                site: d.spec.site,
                unschedulable: d.spec.unschedulable,
                taints: vec![],
            },
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
        }
    }
}
