//! The store's shapes as format versions 5 to 7 wrote them, frozen so that Raft logs,
//! snapshots and records written by those hubs still decode. Only the shapes that
//! changed since are copied; everything else is the current type. Never edit: a change
//! here would misread what is on disk.
//!
//! Version 8 added `metadata.namespace` (so every object kind with metadata changed
//! shape) and the namespaces an API token is scoped to. The earlier frozen versions
//! (`v1` to `v4`) hold these shapes too, for the parts they did not change.

use crate::manifest::DesiredManifest;
use crate::resource::{
    AppSpec, AppStatus, ConfigSpec, ConfigStatus, DeviceSpec, DeviceStatus, ImageSpec, ImageStatus, SiteSpec,
    SiteStatus,
};
use crate::store::{
    AuditRecord, CaRotationRecord, EnrolmentTokenRecord, FleetCaRecord, HubRecord, Precondition,
    PreviousImagesRecord, Role, StoreKind,
};
use crate::time::Timestamp;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub(super) struct ObjectMeta {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    uid: String,
    revision: u64,
    create_revision: u64,
    generation: u64,
    created_at: Option<Timestamp>,
}

impl From<ObjectMeta> for crate::ObjectMeta {
    /// The namespace is left empty: [`super::Object::fill_namespace`] gives the
    /// namespaced kinds the default one.
    fn from(m: ObjectMeta) -> Self {
        crate::ObjectMeta {
            name: m.name,
            namespace: String::new(),
            labels: m.labels,
            annotations: m.annotations,
            uid: m.uid,
            revision: m.revision,
            create_revision: m.create_revision,
            generation: m.generation,
            created_at: m.created_at,
        }
    }
}

macro_rules! frozen_resource {
    ($name:ident, $spec:ty, $status:ty) => {
        #[derive(Deserialize)]
        pub(super) struct $name {
            api_version: String,
            kind: String,
            metadata: ObjectMeta,
            spec: $spec,
            status: $status,
        }

        impl From<$name> for crate::$name {
            fn from(o: $name) -> Self {
                crate::$name {
                    api_version: o.api_version,
                    kind: o.kind,
                    metadata: o.metadata.into(),
                    spec: o.spec,
                    status: o.status,
                }
            }
        }
    };
}

frozen_resource!(Site, SiteSpec, SiteStatus);
frozen_resource!(Device, DeviceSpec, DeviceStatus);
frozen_resource!(App, AppSpec, AppStatus);
frozen_resource!(Image, ImageSpec, ImageStatus);
frozen_resource!(Config, ConfigSpec, ConfigStatus);

#[derive(Deserialize)]
pub(super) struct SealedSecret {
    metadata: ObjectMeta,
    keys: Vec<String>,
    digest: String,
    key_id: String,
    sealed: Vec<u8>,
}

impl From<SealedSecret> for super::SealedSecret {
    fn from(s: SealedSecret) -> Self {
        super::SealedSecret {
            metadata: s.metadata.into(),
            keys: s.keys,
            digest: s.digest,
            key_id: s.key_id,
            sealed: s.sealed,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ApiTokenRecord {
    id: String,
    secret_sha256: String,
    role: Role,
    created_at: Timestamp,
    description: String,
    expires_at: Option<Timestamp>,
    sites: Vec<String>,
}

impl From<ApiTokenRecord> for super::ApiTokenRecord {
    fn from(r: ApiTokenRecord) -> Self {
        super::ApiTokenRecord {
            id: r.id,
            secret_sha256: r.secret_sha256,
            role: r.role,
            created_at: r.created_at,
            description: r.description,
            expires_at: r.expires_at,
            sites: r.sites,
            namespaces: Vec::new(),
        }
    }
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
    Config(Config),
    Secret(SealedSecret),
    Hub(HubRecord),
}

#[derive(Deserialize)]
pub(super) enum StoreCommand {
    Put { object: Box<Object>, precondition: Precondition },
    Delete { kind: StoreKind, name: String, precondition: Precondition },
    Batch(Vec<StoreCommand>),
    Each(Vec<StoreCommand>),
}

impl From<Object> for super::Object {
    fn from(o: Object) -> Self {
        match o {
            Object::Site(x) => super::Object::Site(x.into()),
            Object::Device(x) => super::Object::Device(x.into()),
            Object::App(x) => super::Object::App(x.into()),
            Object::Image(x) => super::Object::Image(x.into()),
            Object::Manifest(x) => super::Object::Manifest(x),
            Object::EnrolmentToken(x) => super::Object::EnrolmentToken(x),
            Object::ApiToken(x) => super::Object::ApiToken(x.into()),
            Object::FleetCa(x) => super::Object::FleetCa(x),
            Object::Audit(x) => super::Object::Audit(x),
            Object::CaRotation(x) => super::Object::CaRotation(x),
            Object::PreviousImages(x) => super::Object::PreviousImages(x),
            Object::Config(x) => super::Object::Config(x.into()),
            Object::Secret(x) => super::Object::Secret(x.into()),
            Object::Hub(x) => super::Object::Hub(x),
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
