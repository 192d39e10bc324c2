//! CRUD for the resource kinds: list, get, apply (create or update), delete.
//!
//! Apply is declarative: the body is the whole object as the operator wants it. The
//! hub keeps what it owns (uid, revisions, status), bumps `generation` when the spec
//! changes, and writes through Raft with a precondition on the revision it read, so
//! a concurrent write is never silently overwritten. Sending `metadata.revision`
//! makes the caller's own read the precondition.

use super::HubState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::query::{ContinueToken, ListQuery};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hub_store::{PageRequest, StoreError};
use serde_json::{Value, json};
use shared_proto::store::{Object, Precondition, Role, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::{
    App, Config, ConfigStatus, Device, Image, Kind, ObjectMeta, Secret, Site, Timestamp, validate,
};
use std::sync::Arc;

/// Response header saying what an apply did: `created`, `configured` or `unchanged`.
pub const APPLY_RESULT: &str = "flotilla-apply-result";

pub fn kind_from_path(plural: &str) -> ApiResult<Kind> {
    Kind::parse(plural).filter(|k| k.plural() == plural).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no such resource kind {plural:?}: use sites, devices, apps, images, configs or secrets"
        ))
    })
}

/// Which object a request for `name` of `kind` names: its namespace (`default` unless
/// the query's `namespace` says otherwise; empty for the fleet's kinds) and its store
/// name ([`shared_proto::qualified_name`]).
pub fn target(kind: Kind, name: &str, raw_query: Option<&str>) -> ApiResult<Target> {
    let namespace = super::query::namespace_of_query(kind, raw_query)?;
    if !kind.is_namespaced() {
        return Ok(Target { namespace: String::new(), name: name.to_string(), store_name: name.to_string() });
    }
    let namespace = namespace.unwrap_or_else(|| shared_proto::DEFAULT_NAMESPACE.to_string());
    if name.contains('.') {
        // Not a name at all (names are DNS labels): never a way around the namespace.
        return Err(ApiError::NotFound(format!("{} {name:?} not found: names have no dots", kind.as_str())));
    }
    let store_name = shared_proto::qualified_name(&namespace, name);
    Ok(Target { namespace, name: name.to_string(), store_name })
}

/// An object a request names; see [`target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub store_name: String,
}

impl Target {
    /// `"web"`, or `"web" in namespace "pos"`, for messages.
    pub fn describe(&self) -> String {
        match self.namespace.as_str() {
            "" => format!("{:?}", self.name),
            ns => format!("{:?} in namespace {ns:?}", self.name),
        }
    }
}

/// Parses an object of `kind` from JSON, naming the field on error. A `Secret` is
/// validated and sealed with the hub key here: its values go no further in the clear.
pub fn parse_object(kind: Kind, body: &[u8], key: &crate::sealing::HubKey) -> ApiResult<Object> {
    fn de<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
        read_json(body)
    }
    Ok(match kind {
        Kind::Site => Object::Site(de::<Site>(body)?),
        Kind::Device => Object::Device(de::<Device>(body)?),
        Kind::App => Object::App(de::<App>(body)?),
        Kind::Image => Object::Image(de::<Image>(body)?),
        Kind::Config => Object::Config(de::<Config>(body)?),
        Kind::Secret => {
            let secret = de::<Secret>(body)?;
            validate::validate_config(
                &secret.api_version,
                &secret.kind,
                Kind::Secret,
                &secret.metadata,
                &secret.spec,
            )
            .map_err(ApiError::Invalid)?;
            let entries =
                secret.spec.entries().ok_or_else(|| ApiError::invalid("spec.binaryData", "not base64"))?;
            Object::Secret(
                key.seal(secret.metadata, &entries).map_err(|e| ApiError::Internal(e.to_string()))?,
            )
        }
    })
}

/// Parses a JSON body into `T`, naming the field on error. A number with a zero
/// fraction (`80.0`) is read as the integer it equals: JSON Schema calls it an
/// integer, and so do clients that write every number as a float.
pub fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid("(body)", e.to_string()))?;
    integral_floats_to_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "(body)".to_string() } else { path };
        ApiError::invalid(&field, e.into_inner().to_string())
    })
}

fn integral_floats_to_integers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Exactly representable: below 2^53 every integer is.
            if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                *v = if f < 0.0 { json!(f as i64) } else { json!(f as u64) };
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(m) => m.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// What the API shows of a `Config`'s data: its keys and a digest of it.
pub fn config_status(spec: &shared_proto::ConfigSpec) -> ConfigStatus {
    let entries = spec.entries().unwrap_or_default();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (k, v) in &entries {
        ctx.update(&(k.len() as u64).to_le_bytes());
        ctx.update(k.as_bytes());
        ctx.update(&(v.len() as u64).to_le_bytes());
        ctx.update(v);
    }
    ConfigStatus {
        keys: entries.into_iter().map(|(k, _)| k).collect(),
        digest: format!("sha256:{}", hex::encode(ctx.finish().as_ref())),
    }
}

fn validate_object(o: &Object) -> ApiResult<()> {
    match o {
        Object::Site(s) => validate::validate_site(s),
        Object::Device(d) => validate::validate_device(d),
        Object::App(a) => validate::validate_app(a),
        Object::Config(c) => {
            validate::validate_config(&c.api_version, &c.kind, Kind::Config, &c.metadata, &c.spec)
        }
        _ => Ok(()),
    }
    .map_err(ApiError::Invalid)
}

pub fn to_json(o: &Object) -> Value {
    match o {
        Object::Site(x) => serde_json::to_value(x),
        Object::Device(x) => serde_json::to_value(x),
        Object::App(x) => serde_json::to_value(x),
        Object::Image(x) => serde_json::to_value(x),
        Object::Manifest(x) => serde_json::to_value(x),
        Object::Config(x) => serde_json::to_value(x),
        // Keys and digest only: a secret's values never leave the hub but to devices.
        Object::Secret(x) => {
            let mut shown = Secret::new(x.metadata.clone(), Default::default());
            shown.status = ConfigStatus { keys: x.keys.clone(), digest: x.digest.clone() };
            serde_json::to_value(shown)
        }
        _ => Ok(Value::Null),
    }
    .unwrap_or(Value::Null)
}

/// Fills in what only this hub's memory knows: when the device was last heard from,
/// and the revision of its desired manifest.
pub(crate) fn overlay(state: &HubState, o: &mut Object) {
    if let Object::Device(d) = o {
        if let Some(seen) = state.live.last_seen(&d.metadata.name) {
            d.status.last_seen_at = Some(seen);
        }
        if let Ok(Some(Object::Manifest(m))) = state.store.get_local(StoreKind::Manifest, &d.metadata.name) {
            d.status.desired_revision = m.revision;
        }
    }
}

/// `GET /api/v1/<kind>`: a list (filtered, optionally paged) or, with `watch=true`, a watch.
/// See `query.rs` for the parameters and `watch.rs` for the stream.
pub async fn list(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(plural): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    caller.require(Role::Viewer)?;
    let kind = kind_from_path(&plural)?;
    let query = ListQuery::parse(kind, raw.as_deref())?;
    if query.watch {
        let last_event_id = match headers.get("last-event-id") {
            Some(v) => Some(v.to_str().map_err(|_| ApiError::invalid("Last-Event-ID", "not text"))?),
            None => None,
        };
        return super::watch::serve(state, caller, kind, query, last_event_id);
    }
    let request = PageRequest {
        after: query.continue_from.as_ref().map(|t| t.after.clone()),
        at: query.continue_from.as_ref().map(|t| t.revision),
        limit: query.limit,
    };
    let page = state
        .store
        .list_page(kind.into(), &request, |o| caller.scope.sees(o) && query.matches(o))
        .await
        .map_err(|e| match e {
            StoreError::Compacted { .. } => ApiError::Gone(format!(
                "the list this continue token pages through (revision {}) is too old for this hub: list again from the start",
                request.at.unwrap_or_default()
            )),
            e => e.into(),
        })?;
    let mut items = page.items;
    for o in &mut items {
        overlay(&state, o);
    }
    let mut metadata = json!({ "revision": page.revision });
    if let Some(after) = page.next_after {
        metadata["continue"] = json!(ContinueToken::new(kind, page.revision, after).encode());
    }
    Ok(Json(json!({
        "apiVersion": shared_proto::API_VERSION,
        "kind": format!("{}List", kind.as_str()),
        "metadata": metadata,
        "revision": page.revision,
        "items": items.iter().map(to_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/v1/images`: the images route also takes uploads, so it has its own handler.
pub async fn list_images(
    state: State<Arc<HubState>>,
    caller: Caller,
    query: RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    list(state, caller, Path(Kind::Image.plural().to_string()), query, headers).await
}

pub async fn get(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path((plural, name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let kind = kind_from_path(&plural)?;
    let target = target(kind, &name, raw.as_deref())?;
    let mut o =
        state.store.get(kind.into(), &target.store_name).await?.ok_or_else(|| {
            ApiError::NotFound(format!("{} {} not found", kind.as_str(), target.describe()))
        })?;
    caller.check_sees(&o)?;
    overlay(&state, &mut o);
    Ok(Json(to_json(&o)))
}

pub async fn get_manifest(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    if !caller.scope.is_all() {
        // A manifest belongs to its device's site.
        match state.store.get(StoreKind::Device, &name).await? {
            Some(device) => caller.check_sees(&device)?,
            None => return Err(ApiError::NotFound(format!("device {name:?} has no desired manifest"))),
        }
    }
    match state.store.get(StoreKind::Manifest, &name).await? {
        Some(o) => Ok(Json(to_json(&o))),
        None => Err(ApiError::NotFound(format!("device {name:?} has no desired manifest"))),
    }
}

/// `GET /api/v1/apps/{name}/placement`: the scheduler's verdict on every device, from
/// this hub's copy of the store (any hub answers, the leader or not).
pub async fn get_placement(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Viewer)?;
    let target = target(Kind::App, &name, raw.as_deref())?;
    match state.store.get_local(StoreKind::App, &target.store_name)? {
        Some(app) => caller.check_sees(&app)?,
        None => return Err(ApiError::NotFound(format!("App {} not found", target.describe()))),
    }
    let store = state.store.clone();
    let app = target.store_name.clone();
    let scope = caller.scope.clone();
    let verdicts = tokio::task::spawn_blocking(move || {
        let cache = crate::controllers::cache::FleetCache::load(&store)?;
        let mut verdicts = crate::controllers::explain::explain_app(&cache, &app);
        // Devices outside the token's sites are not the caller's to see.
        verdicts.retain(|v| cache.devices.get(&v.device).is_some_and(|d| scope.has_site(&d.spec.site)));
        Ok::<_, hub_store::StoreError>(verdicts)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("placement: {e}")))??;
    let n_placed = verdicts.iter().filter(|v| v.placed).count();
    Ok(Json(
        json!({ "app": name, "namespace": target.namespace, "placedDevices": n_placed, "devices": verdicts }),
    ))
}

fn merge_meta(old: &ObjectMeta, new: &mut ObjectMeta, spec_changed: bool) {
    new.uid.clone_from(&old.uid);
    new.revision = old.revision;
    new.create_revision = old.create_revision;
    new.created_at = old.created_at;
    new.generation = old.generation + u64::from(spec_changed);
}

fn fresh_meta(meta: &mut ObjectMeta, now: Timestamp) {
    meta.uid = crate::util::random_hex(16);
    meta.generation = 1;
    meta.created_at = Some(now);
    meta.create_revision = 0;
}

/// The object to store given what is stored now, or why there is none.
fn merge(current: Option<Object>, incoming: Object, now: Timestamp) -> ApiResult<Object> {
    Ok(match (current, incoming) {
        (Some(Object::Site(old)), Object::Site(mut new)) => {
            merge_meta(&old.metadata, &mut new.metadata, old.spec != new.spec);
            new.status = old.status;
            Object::Site(new)
        }
        (Some(Object::App(old)), Object::App(mut new)) => {
            merge_meta(&old.metadata, &mut new.metadata, old.spec != new.spec);
            new.status = old.status;
            Object::App(new)
        }
        (Some(Object::Device(old)), Object::Device(mut new)) => {
            merge_meta(&old.metadata, &mut new.metadata, old.spec != new.spec);
            new.status = old.status;
            Object::Device(new)
        }
        (Some(Object::Config(old)), Object::Config(mut new)) => {
            merge_meta(&old.metadata, &mut new.metadata, old.spec != new.spec);
            new.status = config_status(&new.spec);
            Object::Config(new)
        }
        (Some(Object::Secret(old)), Object::Secret(mut new)) => {
            let changed = old.digest != new.digest || old.keys != new.keys || old.key_id != new.key_id;
            merge_meta(&old.metadata, &mut new.metadata, changed);
            if !changed {
                // The same data sealed again differs only by its nonce: keep the stored
                // seal, so that an unchanged apply writes nothing.
                new.sealed = old.sealed;
            }
            Object::Secret(new)
        }
        (None, Object::Config(mut new)) => {
            fresh_meta(&mut new.metadata, now);
            new.status = config_status(&new.spec);
            Object::Config(new)
        }
        (None, Object::Secret(mut new)) => {
            fresh_meta(&mut new.metadata, now);
            Object::Secret(new)
        }
        (None, Object::Device(d)) => {
            return Err(ApiError::NotFound(format!(
                "device {:?} is not enrolled: devices are created when an agent enrols (flotilla token create)",
                d.metadata.name
            )));
        }
        (None, mut new @ (Object::Site(_) | Object::App(_))) => {
            if let Some(m) = new.metadata_mut() {
                fresh_meta(m, now);
            }
            match &mut new {
                Object::Site(s) => s.status = Default::default(),
                Object::App(a) => a.status = Default::default(),
                _ => {}
            }
            new
        }
        (_, Object::Image(_)) => {
            return Err(ApiError::MethodNotAllowed(
                "images are imported, not applied: use flotilla image import FILE".into(),
            ));
        }
        (Some(other), _) => {
            return Err(ApiError::Internal(format!("stored object {} has an unexpected kind", other.key())));
        }
        (None, other) => return Err(ApiError::BadRequest(format!("{} cannot be applied", other.kind()))),
    })
}

pub async fn apply(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path((plural, path_name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult<(StatusCode, [(&'static str, &'static str); 1], Json<Value>)> {
    caller.require(Role::Operator)?;
    let kind = kind_from_path(&plural)?;
    if kind == Kind::Image {
        return Err(ApiError::MethodNotAllowed(
            "images are imported, not applied: use flotilla image import FILE".into(),
        ));
    }
    let mut incoming = parse_object(kind, &body, &state.key)?;
    let meta =
        incoming.metadata_mut().ok_or_else(|| ApiError::Internal("an API kind without metadata".into()))?;
    if meta.name != path_name {
        return Err(ApiError::invalid(
            "metadata.name",
            format!("{:?} does not match the name in the URL ({path_name:?})", meta.name),
        ));
    }
    let target = target(kind, &path_name, raw.as_deref())?;
    if kind.is_namespaced() {
        if meta.namespace.is_empty() {
            meta.namespace.clone_from(&target.namespace);
        } else if meta.namespace != target.namespace {
            return Err(ApiError::invalid(
                "metadata.namespace",
                format!(
                    "{:?} does not match the request's namespace ({:?}): leave it out or send namespace={}",
                    meta.namespace, target.namespace, meta.namespace
                ),
            ));
        }
    }
    let name = target.store_name.clone();
    validate_object(&incoming)?;
    caller.check_may_change(&incoming)?;
    let asked_revision = incoming.metadata().map_or(0, |m| m.revision);
    // The first try reads this hub's copy: the write's precondition is checked against
    // the leader's state, so a stale copy costs a conflict and a second try (which reads
    // through the leader), never a wrong write. That saves a leader round trip per apply.
    let mut linearizable = false;
    for _ in 0..8 {
        let current = match linearizable {
            true => state.store.get(kind.into(), &name).await?,
            false => state.store.get_local(kind.into(), &name)?,
        };
        if let Some(cur) = &current
            && let Err(e) = caller.check_may_change(cur)
        {
            // Refused on this hub's copy: refused only if the leader's says so too.
            if linearizable {
                return Err(e);
            }
            linearizable = true;
            continue;
        }
        let created = current.is_none();
        if created && asked_revision != 0 && !linearizable {
            // Missing here, expected at a revision: ask the leader before refusing.
            linearizable = true;
            continue;
        }
        let precondition = match (&current, asked_revision) {
            (None, 0) => Precondition::MustNotExist,
            (None, r) => {
                return Err(ApiError::Conflict(format!(
                    "{} {} does not exist, but the request expects revision {r}",
                    kind.as_str(),
                    target.describe()
                )));
            }
            (Some(o), 0) => Precondition::RevisionIs(o.metadata().map_or(0, |m| m.revision)),
            (Some(_), r) => Precondition::RevisionIs(r),
        };
        let next = merge(current.clone(), incoming.clone(), state.clock.now())?;
        if let Some(mut cur) = current
            && cur == next
        {
            if !linearizable {
                // Unchanged, as far as this hub's copy says: make sure.
                linearizable = true;
                continue;
            }
            overlay(&state, &mut cur);
            return Ok((StatusCode::OK, [(APPLY_RESULT, "unchanged")], Json(to_json(&cur))));
        }
        let answer = if created { StatusCode::CREATED } else { StatusCode::OK };
        match super::audit::write_with_change(&state, StoreCommand::put(next, precondition), answer).await? {
            StoreOutcome::Applied { .. } => {
                let mut stored = state
                    .store
                    .get_local(kind.into(), &name)?
                    .ok_or_else(|| ApiError::Internal("object vanished right after it was written".into()))?;
                overlay(&state, &mut stored);
                let (code, result) =
                    if created { (StatusCode::CREATED, "created") } else { (StatusCode::OK, "configured") };
                return Ok((code, [(APPLY_RESULT, result)], Json(to_json(&stored))));
            }
            StoreOutcome::Conflict { .. } if !linearizable => {
                linearizable = true;
                continue;
            }
            StoreOutcome::Conflict { current_revision, .. } if asked_revision != 0 => {
                return Err(ApiError::Conflict(format!(
                    "{} {} changed since revision {asked_revision} (now {}): get it again and re-apply",
                    kind.as_str(),
                    target.describe(),
                    current_revision.map_or("deleted".to_string(), |r| r.to_string())
                )));
            }
            // Someone else wrote between our read and our write: read again and redo.
            StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => continue,
        }
    }
    Err(ApiError::Unavailable(format!(
        "{} {} keeps changing under this request; retry",
        kind.as_str(),
        target.describe()
    )))
}

pub async fn delete(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path((plural, path_name)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    let kind = kind_from_path(&plural)?;
    if kind == Kind::Image {
        caller.require_unscoped("deleting an image")?;
    }
    let target = target(kind, &path_name, raw.as_deref())?;
    let name = target.store_name.clone();
    let not_found = || ApiError::NotFound(format!("{} {} not found", kind.as_str(), target.describe()));
    if matches!(kind, Kind::Config | Kind::Secret) {
        let users = apps_using(&state.store.list(StoreKind::App).await?, kind, &target);
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!(
                "{} {} is used by {} {}: change or delete them first",
                kind.as_str(),
                target.describe(),
                if users.len() == 1 { "app" } else { "apps" },
                users.join(", ")
            )));
        }
    }
    // Deleted only at the revision that was checked against the token's scope.
    let precondition = match caller.scope.is_all() {
        true => Precondition::MustExist,
        false => {
            let current = state.store.get_revisioned(kind.into(), &name).await?.ok_or_else(not_found)?;
            caller.check_may_change(&current.object)?;
            Precondition::RevisionIs(current.revision)
        }
    };
    let cmd = StoreCommand::Delete { kind: kind.into(), name: name.clone(), precondition };
    match super::audit::write_with_change(&state, cmd, StatusCode::OK).await? {
        StoreOutcome::Applied { revision } => {
            if kind == Kind::Device {
                state.live.forget(&name);
            }
            let mut deleted = json!({ "kind": kind.as_str(), "name": target.name });
            if kind.is_namespaced() {
                deleted["namespace"] = json!(target.namespace);
            }
            Ok(Json(json!({ "deleted": deleted, "revision": revision })))
        }
        StoreOutcome::Conflict { current_revision: Some(_), .. } => Err(ApiError::Conflict(format!(
            "{} {} changed meanwhile; retry",
            kind.as_str(),
            target.describe()
        ))),
        StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => Err(not_found()),
    }
}

/// The apps of its namespace that mount or read the `Config` or `Secret` `target`.
pub fn apps_using(apps: &[Object], kind: Kind, target: &Target) -> Vec<String> {
    apps.iter()
        .filter_map(|o| match o {
            Object::App(a)
                if a.metadata.namespace == target.namespace
                    && a.spec.config_refs(kind == Kind::Secret).contains(&target.name) =>
            {
                Some(a.metadata.name.clone())
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> crate::sealing::HubKey {
        crate::sealing::HubKey::from_bytes(&[3; 32])
    }

    #[test]
    fn secrets_are_sealed_on_parse_and_an_unchanged_apply_keeps_the_seal() {
        let body = br#"{"apiVersion":"flotilla.dev/v1","kind":"Secret","metadata":{"name":"db"},
            "spec":{"data":{"password":"hunter2-xyz"}}}"#;
        let Object::Secret(first) = parse_object(Kind::Secret, body, &key()).unwrap() else { panic!() };
        assert!(!first.sealed.windows(7).any(|w| w == b"hunter2"));
        let stored = merge(None, Object::Secret(first), Timestamp(1)).unwrap();
        let again = parse_object(Kind::Secret, body, &key()).unwrap();
        assert_eq!(merge(Some(stored.clone()), again, Timestamp(2)).unwrap(), stored, "unchanged");
        let changed = br#"{"apiVersion":"flotilla.dev/v1","kind":"Secret","metadata":{"name":"db"},
            "spec":{"data":{"password":"other"}}}"#;
        let next =
            merge(Some(stored.clone()), parse_object(Kind::Secret, changed, &key()).unwrap(), Timestamp(2))
                .unwrap();
        assert_eq!(next.metadata().unwrap().generation, 2);
        let json = to_json(&next).to_string();
        assert!(json.contains("\"password\"") && !json.contains("other"), "{json}");
        let bad = br#"{"apiVersion":"flotilla.dev/v1","kind":"Secret","metadata":{"name":"db"},
            "spec":{"data":{"a/b":"x"}}}"#;
        assert!(matches!(parse_object(Kind::Secret, bad, &key()), Err(ApiError::Invalid(_))));
    }

    #[test]
    fn json_errors_name_the_field() {
        let body = br#"{"apiVersion":"flotilla.dev/v1","kind":"App","metadata":{"name":"x"},
            "spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":"eighty"}]}]}}"#;
        match parse_object(Kind::App, body, &key()) {
            Err(ApiError::Invalid(e)) => {
                assert_eq!(e.0[0].field, "spec.containers[0].ports[0].containerPort")
            }
            other => panic!("{other:?}"),
        }
        let body = br#"{"apiVersion":"flotilla.dev/v1","kind":"App","metadata":{"name":"x","lables":{}},"spec":{"containers":[]}}"#;
        match parse_object(Kind::App, body, &key()) {
            Err(ApiError::Invalid(e)) => {
                assert_eq!(e.0[0].field, "metadata.lables");
                assert!(e.0[0].message.contains("unknown field"), "{}", e.0[0].message);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_object(Kind::Site, b"not json", &key()), Err(ApiError::Invalid(_))));
        // 80.0 is the integer 80 (JSON Schema says so); 80.5 is not.
        let body = br#"{"apiVersion":"flotilla.dev/v1","kind":"App","metadata":{"name":"x"},
            "spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80.0}]}]}}"#;
        let Ok(Object::App(a)) = parse_object(Kind::App, body, &key()) else { panic!() };
        assert_eq!(a.spec.containers[0].ports[0].container_port, 80);
        let body = br#"{"apiVersion":"flotilla.dev/v1","kind":"App","metadata":{"name":"x"},
            "spec":{"containers":[{"name":"c","image":"i","ports":[{"containerPort":80.5}]}]}}"#;
        match parse_object(Kind::App, body, &key()) {
            Err(ApiError::Invalid(e)) => {
                assert_eq!(e.0[0].field, "spec.containers[0].ports[0].containerPort")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn apply_keeps_hub_owned_fields_and_bumps_generation_on_spec_change() {
        let mut old = App::new(ObjectMeta::named("web"), Default::default());
        old.metadata.uid = "u1".into();
        old.metadata.generation = 3;
        old.metadata.create_revision = 5;
        old.status.message = "kept".into();
        let mut same = old.clone();
        same.metadata.uid = "forged".into();
        same.status.message = "ignored".into();
        let Object::App(m) =
            merge(Some(Object::App(old.clone())), Object::App(same.clone()), Timestamp(1)).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (m.metadata.uid.as_str(), m.metadata.generation, m.status.message.as_str()),
            ("u1", 3, "kept")
        );
        same.spec.restart_policy = shared_proto::RestartPolicy::Never;
        let Object::App(m) = merge(Some(Object::App(old)), Object::App(same), Timestamp(1)).unwrap() else {
            panic!()
        };
        assert_eq!(m.metadata.generation, 4);
    }

    #[test]
    fn devices_cannot_be_created_by_apply() {
        let d = Device::new(ObjectMeta::named("pi"), Default::default());
        assert!(matches!(merge(None, Object::Device(d), Timestamp(1)), Err(ApiError::NotFound(_))));
    }
}
