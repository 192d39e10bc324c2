//! The HTTP API against a real one-member Raft store in a temporary directory, driven
//! through the real router: authentication and roles, validation errors that name the
//! field, size limits, optimistic concurrency, and what a refused request leaves behind.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_hub::api;
use hub_store::{Store, StoreConfig};
use serde_json::{Value, json};
use shared_proto::store::{Object, Precondition, Role, StoreCommand};
use std::time::Duration;
use tower::ServiceExt;

struct Api {
    router: axum::Router,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn token(store: &Store, role: Role) -> String {
    let (secret, record) =
        api::tokens::new_api_token(role, String::new(), shared_proto::Timestamp(1)).unwrap();
    store.write(StoreCommand::put(Object::ApiToken(record), Precondition::MustNotExist)).await.unwrap();
    secret
}

async fn setup() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig {
        data_dir: dir.path().join("store"),
        node_id: 1,
        raft_addr: None,
        initial_members: Default::default(),
        peer_tls: None,
    })
    .await
    .unwrap();
    let mut leader = store.leader();
    tokio::time::timeout(Duration::from_secs(30), leader.wait_for(|l| l.is_some())).await.unwrap().unwrap();
    let state = common::hub_state(dir.path(), &store).await;
    Api { router: api::router(state), store, _dir: dir }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = self.router.clone().oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let result = resp.headers().get(api::objects::APPLY_RESULT).map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
        let value =
            serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value, result.unwrap_or_default())
    }
}

fn app(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "flotilla.dev/v1",
        "kind": "App",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": image }] }
    })
}

#[tokio::test]
async fn every_call_needs_a_valid_token_and_the_right_role() {
    let api = setup().await;
    let viewer = token(&api.store, Role::Viewer).await;
    let operator = token(&api.store, Role::Operator).await;
    let (s, _, _) = api.call("GET", "/healthz", None, vec![]).await;
    assert_eq!(s, StatusCode::OK, "health needs no token");
    let (s, _, _) = api.call("GET", "/api/v1/openapi.json", None, vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "every /api/ route needs a token");
    let (s, doc, _) = api.call("GET", "/api/v1/openapi.json", Some(&viewer), vec![]).await;
    assert_eq!((s, doc["openapi"].as_str()), (StatusCode::OK, Some("3.1.0")));
    let (s, v, _) = api.call("GET", "/api/v1/apps", None, vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["type"], "urn:flotilla:problem:unauthorized");
    // Problem details (RFC 9457): the status, its reason and the request's path.
    assert_eq!((v["status"].as_u64(), v["title"].as_str()), (Some(401), Some("Unauthorized")), "{v}");
    assert_eq!(v["instance"], "/api/v1/apps", "{v}");
    let forged = format!("{}x", &operator[..operator.len() - 1]);
    let (s, _, _) = api.call("GET", "/api/v1/apps", Some(&forged), vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a wrong secret with a real id is refused");
    let (s, _, _) = api.call("GET", "/api/v1/apps", Some("garbage"), vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = api.call("GET", "/api/v1/apps", Some(&viewer), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let body = serde_json::to_vec(&app("web", "img:1")).unwrap();
    let (s, v, _) = api.call("PUT", "/api/v1/apps/web", Some(&viewer), body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _, _) = api.call("POST", "/api/v1/api-tokens", Some(&operator), b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only admins make API tokens");
    let (s, _, r) = api.call("PUT", "/api/v1/apps/web", Some(&operator), body).await;
    assert_eq!((s, r.as_str()), (StatusCode::CREATED, "created"));
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_nothing_is_stored() {
    let api = setup().await;
    let op = token(&api.store, Role::Operator).await;
    let mut bad = app("web", "");
    let (s, v, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "spec.containers[0].image");
    bad["spec"]["containers"][0]["ports"] = json!([{ "containerPort": "http" }]);
    bad["spec"]["containers"][0]["image"] = json!("img:1");
    let (s, v, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "spec.containers[0].ports[0].containerPort");
    let (s, v, _) = api
        .call("PUT", "/api/v1/apps/other", Some(&op), serde_json::to_vec(&app("web", "i:1")).unwrap())
        .await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.name"))
    );
    let (s, _, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), b"{not json".to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Errors the framework raises come back in the API's own format too.
    let (s, v, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), vec![b' '; 2 << 20]).await;
    assert_eq!(
        (s, v["type"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("urn:flotilla:problem:too_large")),
        "{v}"
    );
    assert!(!v["detail"].as_str().unwrap().is_empty(), "{v}");
    let (s, v, _) = api.call("GET", "/api/v1/audit?limit=many", Some(&op), vec![]).await;
    assert_eq!(
        (s, v["type"].as_str()),
        (StatusCode::BAD_REQUEST, Some("urn:flotilla:problem:bad_request")),
        "{v}"
    );
    let (s, _, _) = api.call("PUT", "/api/v1/widgets/x", Some(&op), b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api.call("PUT", "/api/v1/images/x", Some(&op), b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, v, _) = api.call("POST", "/api/v1/images", Some(&op), b"not an archive".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v, _) =
        api.call("POST", "/api/v1/enrolment-tokens", Some(&op), br#"{"ttl":"forever"}"#.to_vec()).await;
    assert_eq!((s, v["errors"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("ttl")));
    let (_, list, _) = api.call("GET", "/api/v1/apps", Some(&op), vec![]).await;
    assert_eq!(list["items"], json!([]), "nothing was stored");
    let (_, list, _) = api.call("GET", "/api/v1/images", Some(&op), vec![]).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn applies_are_declarative_and_conditional() {
    let api = setup().await;
    let op = token(&api.store, Role::Operator).await;
    let body = serde_json::to_vec(&app("web", "img:1")).unwrap();
    let (_, created, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), body.clone()).await;
    let rev1 = created["metadata"]["revision"].as_u64().unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    let (s, _, r) = api.call("PUT", "/api/v1/apps/web", Some(&op), body).await;
    assert_eq!((s, r.as_str()), (StatusCode::OK, "unchanged"));
    let (_, same, _) = api.call("GET", "/api/v1/apps/web", Some(&op), vec![]).await;
    assert_eq!(same["metadata"]["revision"].as_u64(), Some(rev1), "an unchanged apply writes nothing");

    let mut v2 = app("web", "img:2");
    v2["metadata"]["revision"] = json!(rev1);
    let (s, updated, r) =
        api.call("PUT", "/api/v1/apps/web", Some(&op), serde_json::to_vec(&v2).unwrap()).await;
    assert_eq!((s, r.as_str()), (StatusCode::OK, "configured"));
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    // The same stale revision again: someone else's write must not be overwritten.
    let mut v3 = app("web", "img:3");
    v3["metadata"]["revision"] = json!(rev1);
    let (s, v, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), serde_json::to_vec(&v3).unwrap()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, now, _) = api.call("GET", "/api/v1/apps/web", Some(&op), vec![]).await;
    assert_eq!(now["spec"]["containers"][0]["image"], "img:2");

    let (s, _, _) = api.call("DELETE", "/api/v1/apps/web", Some(&op), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api.call("DELETE", "/api/v1/apps/web", Some(&op), vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api.call("GET", "/api/v1/apps/web", Some(&op), vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokens_are_shown_once_and_stored_hashed() {
    let api = setup().await;
    let admin = token(&api.store, Role::Admin).await;
    let (s, created, _) = api
        .call(
            "POST",
            "/api/v1/enrolment-tokens",
            Some(&admin),
            br#"{"ttl":"1h","maxUses":2,"labels":{"role":"pos"}}"#.to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let secret = created["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("FLT1."));
    let (_, list, _) = api.call("GET", "/api/v1/enrolment-tokens", Some(&admin), vec![]).await;
    let text = list.to_string();
    assert!(!text.contains(secret.split('.').nth(2).unwrap()), "the list never shows secrets");
    assert_eq!(list["items"][0]["maxUses"], 2);
    let (s, made, _) =
        api.call("POST", "/api/v1/api-tokens", Some(&admin), br#"{"role":"viewer"}"#.to_vec()).await;
    assert_eq!(s, StatusCode::CREATED);
    let viewer = made["token"].as_str().unwrap();
    let (s, _, _) = api.call("GET", "/api/v1/devices", Some(viewer), vec![]).await;
    assert_eq!(s, StatusCode::OK, "the new token works");
    let records = api.store.list(shared_proto::store::StoreKind::ApiToken).await.unwrap();
    let stored = format!("{records:?}");
    assert!(!stored.contains(viewer.rsplit('_').next().unwrap()), "only hashes are stored");
}

#[tokio::test]
async fn placement_says_for_every_device_why_not() {
    use shared_proto::{Device, DeviceSpec, ObjectMeta, Taint};
    let api = setup().await;
    let viewer = token(&api.store, Role::Viewer).await;
    let op = token(&api.store, Role::Operator).await;
    for (name, role, taint) in [("pos-1", "pos", false), ("pos-2", "pos", true), ("kiosk-1", "kiosk", false)]
    {
        let mut meta = ObjectMeta::named(name);
        meta.labels.insert("role".into(), role.into());
        let mut spec = DeviceSpec::default();
        if taint {
            spec.taints = vec![Taint { key: "repair".into(), ..Default::default() }];
        }
        let cmd = StoreCommand::put(Object::Device(Device::new(meta, spec)), Precondition::MustNotExist);
        api.store.write(cmd).await.unwrap();
    }
    let mut till = app("till", "img:1");
    till["spec"]["selector"] = json!({ "matchLabels": { "role": "pos" } });
    let (s, v, _) = api.call("PUT", "/api/v1/apps/till", Some(&op), serde_json::to_vec(&till).unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, p, _) = api.call("GET", "/api/v1/apps/till/placement", Some(&viewer), vec![]).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["placedDevices"], 1);
    let by: std::collections::BTreeMap<String, Value> = p["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"].as_str().unwrap().to_string(), d.clone()))
        .collect();
    assert_eq!(by["pos-1"]["placed"], true);
    assert!(by["pos-2"]["reason"].as_str().unwrap().contains("taint repair"), "{p}");
    assert_eq!(by["kiosk-1"]["selected"], false);
    let (s, _, _) = api.call("GET", "/api/v1/apps/nope/placement", Some(&viewer), vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A taint that is not a valid label is refused by field.
    let mut dev = json!({ "apiVersion": "flotilla.dev/v1", "kind": "Device", "metadata": { "name": "pos-1" },
        "spec": { "taints": [{ "key": "bad key" }] } });
    let (s, v, _) =
        api.call("PUT", "/api/v1/devices/pos-1", Some(&op), serde_json::to_vec(&dev).unwrap()).await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("spec.taints[0]"))
    );
    dev["spec"]["taints"] = json!([{ "key": "dedicated", "value": "pos", "effect": "NoExecute" }]);
    let (s, v, _) =
        api.call("PUT", "/api/v1/devices/pos-1", Some(&op), serde_json::to_vec(&dev).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, p, _) = api.call("GET", "/api/v1/apps/till/placement", Some(&viewer), vec![]).await;
    assert_eq!(p["placedDevices"], 0, "NoExecute keeps the untolerating app off: {p}");
}

/// A token whose record is written as given: for expired and site-scoped tokens.
async fn token_with(store: &Store, role: Role, expires_at: Option<u64>, sites: &[&str]) -> (String, String) {
    let (secret, mut record) =
        api::tokens::new_api_token(role, String::new(), shared_proto::Timestamp(1)).unwrap();
    record.expires_at = expires_at.map(shared_proto::Timestamp);
    record.sites = sites.iter().map(|s| s.to_string()).collect();
    let id = record.id.clone();
    store.write(StoreCommand::put(Object::ApiToken(record), Precondition::MustNotExist)).await.unwrap();
    (secret, id)
}

fn site_json(name: &str) -> Value {
    json!({ "apiVersion": "flotilla.dev/v1", "kind": "Site", "metadata": { "name": name }, "spec": {} })
}

fn app_in(name: &str, sites: &[&str]) -> Value {
    let mut a = app(name, "img:1");
    a["spec"]["placement"] = json!({ "sites": sites });
    a
}

fn device_in(name: &str, site: &str) -> shared_proto::Device {
    shared_proto::Device::new(
        shared_proto::ObjectMeta::named(name),
        shared_proto::DeviceSpec { site: site.into(), ..Default::default() },
    )
}

#[tokio::test]
async fn every_route_answers_each_role_and_site_scope_as_it_should() {
    let api = setup().await;
    let admin = token(&api.store, Role::Admin).await;
    let (viewer, _) = token_with(&api.store, Role::Viewer, None, &[]).await;
    let (op_a, _) = token_with(&api.store, Role::Operator, None, &["a"]).await;
    let operator = token(&api.store, Role::Operator).await;
    let (expired, _) = token_with(&api.store, Role::Admin, Some(1), &[]).await;
    let (revoked, revoked_id) = token_with(&api.store, Role::Admin, None, &[]).await;
    let cmd = StoreCommand::Delete {
        kind: shared_proto::store::StoreKind::ApiToken,
        name: revoked_id,
        precondition: Precondition::MustExist,
    };
    api.store.write(cmd).await.unwrap();
    // The callers that hold a working token, in this order in every row below.
    let who = ["viewer", "op-a", "operator", "admin"];
    let tokens = [viewer.as_str(), op_a.as_str(), operator.as_str(), admin.as_str()];

    // The fleet: sites a and c, a device in each, apps placed in a, in c and everywhere,
    // and for every caller its own objects to delete.
    let put = |kind: &str, name: &str, body: Value| {
        let (api, admin) = (&api, &admin);
        let path = format!("/api/v1/{kind}/{name}");
        async move {
            let (s, v, _) = api.call("PUT", &path, Some(admin), serde_json::to_vec(&body).unwrap()).await;
            assert!(s.is_success(), "{path}: {s} {v}");
        }
    };
    for s in ["a", "c"] {
        put("sites", s, site_json(s)).await;
    }
    for (name, site) in [("dev-a", "a"), ("dev-c", "c")] {
        api.store
            .write(StoreCommand::put(Object::Device(device_in(name, site)), Precondition::MustNotExist))
            .await
            .unwrap();
    }
    put("apps", "app-a", app_in("app-a", &["a"])).await;
    put("apps", "app-c", app_in("app-c", &["c"])).await;
    put("apps", "app-all", app_in("app-all", &[])).await;
    let mut enrol_a = Vec::new();
    let mut enrol_c = Vec::new();
    let mut api_tokens = Vec::new();
    for w in who {
        put("sites", &format!("gone-{w}"), site_json(&format!("gone-{w}"))).await;
        put("apps", &format!("del-a-{w}"), app_in(&format!("del-a-{w}"), &["a"])).await;
        put("apps", &format!("del-c-{w}"), app_in(&format!("del-c-{w}"), &["c"])).await;
        let mine = [(format!("del-a-{w}"), "a"), (format!("del-c-{w}"), "c")];
        let retired = [(format!("dec-a-{w}"), "a"), (format!("dec-c-{w}"), "c")];
        for (name, site) in mine.into_iter().chain(retired) {
            let d = Object::Device(device_in(&name, site));
            api.store.write(StoreCommand::put(d, Precondition::MustNotExist)).await.unwrap();
        }
        for prefix in ["q", "r"] {
            for site in ["a", "c"] {
                let mut d = device_in(&format!("{prefix}-{site}-{w}"), site);
                d.status.phase = shared_proto::DevicePhase::Quarantined;
                d.status.quarantine = Some(Box::default());
                let d = Object::Device(d);
                api.store.write(StoreCommand::put(d, Precondition::MustNotExist)).await.unwrap();
            }
        }
        for (site, ids) in [("a", &mut enrol_a), ("c", &mut enrol_c)] {
            let body = json!({ "site": site }).to_string().into_bytes();
            let (s, v, _) = api.call("POST", "/api/v1/enrolment-tokens", Some(&admin), body).await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            ids.push(v["id"].as_str().unwrap().to_string());
        }
        let (_, v, _) = api.call("POST", "/api/v1/api-tokens", Some(&admin), b"{}".to_vec()).await;
        api_tokens.push(v["id"].as_str().unwrap().to_string());
    }

    const OK: u16 = 200;
    const MADE: u16 = 201;
    const BAD: u16 = 400;
    const NO: u16 = 403;
    const NONE: u16 = 404;
    const CONFLICT: u16 = 409;
    // (method, path, body, what viewer, op-a, operator and admin get); `{w}` and
    // `{ea}`, `{ec}`, `{t}` stand for the caller's own objects.
    let rows: Vec<(&str, &str, Option<Value>, [u16; 4])> = vec![
        ("GET", "/api/v1/openapi.json", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/cluster", None, [OK, OK, OK, OK]),
        // Fleet-wide figures: a token scoped to sites sees none of them.
        ("GET", "/metrics", None, [OK, NO, OK, OK]),
        ("GET", "/api/v1/audit", None, [NO, NO, NO, OK]),
        ("GET", "/api/v1/backup", None, [NO, NO, NO, OK]),
        ("GET", "/api/v1/sites", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/sites/a", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/sites/c", None, [OK, NO, OK, OK]),
        ("PUT", "/api/v1/sites/a", Some(site_json("a")), [NO, OK, OK, OK]),
        ("PUT", "/api/v1/sites/new-{w}", Some(site_json("new-{w}")), [NO, NO, MADE, MADE]),
        ("DELETE", "/api/v1/sites/gone-{w}", None, [NO, NO, OK, OK]),
        ("GET", "/api/v1/devices", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/devices/dev-a", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/devices/dev-c", None, [OK, NO, OK, OK]),
        ("GET", "/api/v1/devices/dev-a/manifest", None, [NONE, NONE, NONE, NONE]),
        ("GET", "/api/v1/devices/dev-c/manifest", None, [NONE, NO, NONE, NONE]),
        ("GET", "/api/v1/devices/dev-a/usage", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/devices/dev-c/usage", None, [OK, NO, OK, OK]),
        ("GET", "/api/v1/devices/none/usage", None, [NONE, NONE, NONE, NONE]),
        ("POST", "/api/v1/devices/dec-a-{w}/decommission", None, [NO, OK, OK, OK]),
        ("POST", "/api/v1/devices/dec-c-{w}/decommission", None, [NO, NO, OK, OK]),
        ("POST", "/api/v1/devices/none/decommission", None, [NO, NONE, NONE, NONE]),
        ("POST", "/api/v1/devices/q-a-{w}/approve", None, [NO, OK, OK, OK]),
        ("POST", "/api/v1/devices/q-c-{w}/approve", None, [NO, NO, OK, OK]),
        ("POST", "/api/v1/devices/dev-a/approve", None, [NO, CONFLICT, CONFLICT, CONFLICT]),
        ("POST", "/api/v1/devices/r-a-{w}/reject", None, [NO, OK, OK, OK]),
        ("POST", "/api/v1/devices/r-c-{w}/reject", None, [NO, NO, OK, OK]),
        ("POST", "/api/v1/devices/dev-c/reject", None, [NO, NO, CONFLICT, CONFLICT]),
        ("DELETE", "/api/v1/devices/del-a-{w}", None, [NO, OK, OK, OK]),
        ("DELETE", "/api/v1/devices/del-c-{w}", None, [NO, NO, OK, OK]),
        ("GET", "/api/v1/apps", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/apps/app-a", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/apps/app-all", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/apps/app-c", None, [OK, NO, OK, OK]),
        ("GET", "/api/v1/apps/app-a/placement", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/apps/app-c/placement", None, [OK, NO, OK, OK]),
        ("PUT", "/api/v1/apps/put-a-{w}", Some(app_in("put-a-{w}", &["a"])), [NO, MADE, MADE, MADE]),
        ("PUT", "/api/v1/apps/put-c-{w}", Some(app_in("put-c-{w}", &["c"])), [NO, NO, MADE, MADE]),
        ("PUT", "/api/v1/apps/put-all-{w}", Some(app_in("put-all-{w}", &[])), [NO, NO, MADE, MADE]),
        ("PUT", "/api/v1/apps/app-c", Some(app_in("app-c", &["a"])), [NO, NO, OK, OK]),
        ("DELETE", "/api/v1/apps/del-a-{w}", None, [NO, OK, OK, OK]),
        ("DELETE", "/api/v1/apps/del-c-{w}", None, [NO, NO, OK, OK]),
        ("GET", "/api/v1/images", None, [OK, OK, OK, OK]),
        ("GET", "/api/v1/images/none:1", None, [NONE, NONE, NONE, NONE]),
        ("POST", "/api/v1/images", Some(json!("not an archive")), [NO, NO, BAD, BAD]),
        ("DELETE", "/api/v1/images/none:1", None, [NO, NO, NONE, NONE]),
        ("GET", "/api/v1/enrolment-tokens", None, [NO, OK, OK, OK]),
        ("POST", "/api/v1/enrolment-tokens", Some(json!({ "site": "a" })), [NO, MADE, MADE, MADE]),
        ("POST", "/api/v1/enrolment-tokens", Some(json!({ "site": "c" })), [NO, NO, MADE, MADE]),
        ("POST", "/api/v1/enrolment-tokens", Some(json!({})), [NO, NO, MADE, MADE]),
        ("DELETE", "/api/v1/enrolment-tokens/{ea}", None, [NO, OK, OK, OK]),
        ("DELETE", "/api/v1/enrolment-tokens/{ec}", None, [NO, NO, OK, OK]),
        ("GET", "/api/v1/api-tokens", None, [NO, NO, NO, OK]),
        ("POST", "/api/v1/api-tokens", Some(json!({ "role": "viewer" })), [NO, NO, NO, MADE]),
        ("DELETE", "/api/v1/api-tokens/{t}", None, [NO, NO, NO, OK]),
        ("GET", "/api/v1/ca", None, [OK, OK, OK, OK]),
        ("POST", "/api/v1/ca/retire", None, [NO, NO, NO, CONFLICT]),
        ("POST", "/api/v1/ca/rotate", None, [NO, NO, NO, OK]),
        // Devices never seen since the CA was staged would be cut off.
        ("POST", "/api/v1/ca/activate", None, [NO, NO, NO, CONFLICT]),
    ];
    let mut failures = Vec::new();
    for (method, path, body, want) in &rows {
        for (i, w) in who.iter().enumerate() {
            let fill = |s: &str| {
                s.replace("{w}", w)
                    .replace("{ea}", &enrol_a[i])
                    .replace("{ec}", &enrol_c[i])
                    .replace("{t}", &api_tokens[i])
            };
            let path = fill(path);
            let bytes = match body {
                Some(Value::String(raw)) => raw.clone().into_bytes(),
                Some(b) => fill(&b.to_string()).into_bytes(),
                None => vec![],
            };
            let (s, v, _) = api.call(method, &path, Some(tokens[i]), bytes.clone()).await;
            if s.as_u16() != want[i] {
                failures.push(format!("{method} {path} as {w}: {s}, want {}: {v}", want[i]));
            }
            if i == 0 {
                // Without a working token nothing but /healthz answers.
                let others = [
                    (None, "no token"),
                    (Some(expired.as_str()), "expired"),
                    (Some(revoked.as_str()), "revoked"),
                ];
                for (t, name) in others {
                    let (s, v, _) = api.call(method, &path, t, bytes.clone()).await;
                    if s != StatusCode::UNAUTHORIZED {
                        failures.push(format!("{method} {path} with {name}: {s}, want 401: {v}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls answered wrong:\n{}",
        failures.len(),
        rows.len() * 7,
        failures.join("\n")
    );
    let (s, _, _) = api.call("GET", "/healthz", None, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v, _) = api.call("GET", "/api/v1/devices", Some(&expired), vec![]).await;
    assert!(v["detail"].as_str().unwrap_or_default().contains("expired"), "{v}");

    // Lists show a scoped token its sites only.
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, sites, _) = api.call("GET", "/api/v1/sites", Some(&op_a), vec![]).await;
    assert_eq!(names(&sites), ["a"]);
    let (_, devices, _) = api.call("GET", "/api/v1/devices", Some(&op_a), vec![]).await;
    assert!(devices["items"].as_array().unwrap().iter().all(|d| d["spec"]["site"] == "a"), "{devices}");
    assert!(names(&devices).contains(&"dev-a".to_string()));
    let (_, apps, _) = api.call("GET", "/api/v1/apps", Some(&op_a), vec![]).await;
    for app in apps["items"].as_array().unwrap() {
        let sites = app["spec"]["placement"]["sites"].as_array().unwrap();
        assert!(sites.is_empty() || sites.contains(&json!("a")), "an app out of site a is listed: {app}");
    }
    let apps = names(&apps);
    assert!(apps.contains(&"app-a".to_string()) && apps.contains(&"app-all".to_string()), "{apps:?}");
    assert!(!apps.contains(&"put-c-admin".to_string()), "{apps:?}");
    let (_, tokens_a, _) = api.call("GET", "/api/v1/enrolment-tokens", Some(&op_a), vec![]).await;
    let listed = tokens_a["items"].as_array().unwrap();
    assert!(!listed.is_empty() && listed.iter().all(|t| t["site"] == "a"), "{tokens_a}");
}

#[tokio::test]
async fn every_mutating_call_is_audited_with_who_what_and_how_it_ended() {
    let api = setup().await;
    let admin = token(&api.store, Role::Admin).await;
    let (viewer, viewer_id) = token_with(&api.store, Role::Viewer, None, &[]).await;
    let (operator, operator_id) = token_with(&api.store, Role::Operator, None, &[]).await;
    let body = serde_json::to_vec(&app("web", "img:1")).unwrap();
    let (s, created, _) = api.call("PUT", "/api/v1/apps/web", Some(&operator), body.clone()).await;
    assert_eq!(s, StatusCode::CREATED);
    // The change and its entry are one Raft entry: the same revision.
    let revision = created["metadata"]["revision"].as_u64().unwrap();
    let entries = api.store.list(shared_proto::store::StoreKind::Audit).await.unwrap();
    let names: Vec<String> = entries.iter().map(|o| o.name().into_owned()).collect();
    let with_change: Vec<u64> = futures::future::join_all(
        names.iter().map(|n| api.store.get_revisioned(shared_proto::store::StoreKind::Audit, n)),
    )
    .await
    .into_iter()
    .map(|r| r.unwrap().unwrap().revision)
    .collect();
    assert_eq!(with_change, [revision], "{entries:?}");
    let (s, _, _) = api.call("PUT", "/api/v1/apps/web", Some(&viewer), body.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = api.call("DELETE", "/api/v1/apps/web", None, vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = api.call("GET", "/api/v1/apps/web", Some(&operator), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api.call("DELETE", "/api/v1/apps/web", Some(&operator), vec![]).await;
    assert_eq!(s, StatusCode::OK);

    let (s, log, _) = api.call("GET", "/api/v1/audit?since=1h", Some(&admin), vec![]).await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let calls: Vec<(String, String, u64)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let who = e["tokenId"].as_str().unwrap().to_string();
            let call = format!("{} {}", e["method"].as_str().unwrap(), e["path"].as_str().unwrap());
            (who, call, e["status"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        calls.iter().map(|(w, c, s)| (w.as_str(), c.as_str(), *s)).collect::<Vec<_>>(),
        [
            (operator_id.as_str(), "PUT /api/v1/apps/web", 201),
            (viewer_id.as_str(), "PUT /api/v1/apps/web", 403),
            (operator_id.as_str(), "DELETE /api/v1/apps/web", 200),
        ],
        "mutating calls with a working token, in order; reads and calls without a token are not kept"
    );
    assert_eq!(log["items"][0]["role"], "operator");
    assert!(!log["items"][0]["at"].is_null());
    let (s, _, _) = api.call("GET", "/api/v1/audit", Some(&operator), vec![]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only admins read the audit log");
    let (_, later, _) =
        api.call("GET", "/api/v1/audit?since=2999-01-01T00:00:00Z", Some(&admin), vec![]).await;
    assert_eq!(later["items"], json!([]));
    let (s, v, _) = api.call("GET", "/api/v1/audit?since=whenever", Some(&admin), vec![]).await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("since")),
        "{v}"
    );
}

#[tokio::test]
async fn secrets_are_sealed_in_the_store_shown_by_keys_and_kept_while_used() {
    let api = setup().await;
    let op = token(&api.store, Role::Operator).await;
    let secret = |value: &str| {
        serde_json::to_vec(&json!({
            "apiVersion": "flotilla.dev/v1",
            "kind": "Secret",
            "metadata": { "name": "db" },
            "spec": { "data": { "password": value }, "binaryData": { "key.der": "AAEC" } }
        }))
        .unwrap()
    };
    let (s, v, r) = api.call("PUT", "/api/v1/secrets/db", Some(&op), secret("Tr0ub4dor-and-3")).await;
    assert_eq!((s, r.as_str()), (StatusCode::CREATED, "created"), "{v}");
    assert_eq!(v["status"]["keys"], json!(["key.der", "password"]));
    assert!(!v.to_string().contains("Tr0ub4dor"), "{v}");
    let (s, _, r) = api.call("PUT", "/api/v1/secrets/db", Some(&op), secret("Tr0ub4dor-and-3")).await;
    assert_eq!((s, r.as_str()), (StatusCode::OK, "unchanged"), "sealing again is not a change");
    let (_, got, _) = api.call("GET", "/api/v1/secrets/db", Some(&op), vec![]).await;
    assert_eq!(got["spec"]["data"], json!({}), "values never come back: {got}");
    let (_, list, _) = api.call("GET", "/api/v1/secrets", Some(&op), vec![]).await;
    assert!(!list.to_string().contains("Tr0ub4dor"));
    match api.store.get_local(shared_proto::store::StoreKind::Secret, "db").unwrap() {
        Some(Object::Secret(s)) => {
            assert!(!s.sealed.windows(9).any(|w| w == b"Tr0ub4dor"));
            assert!(s.digest.starts_with("hmac-sha256:"));
        }
        other => panic!("{other:?}"),
    }
    // A Config keeps its data in the clear, with a digest.
    let config = json!({
        "apiVersion": "flotilla.dev/v1", "kind": "Config", "metadata": { "name": "pos" },
        "spec": { "data": { "app.toml": "port = 80" } }
    });
    let (s, v, _) =
        api.call("PUT", "/api/v1/configs/pos", Some(&op), serde_json::to_vec(&config).unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["data"]["app.toml"], "port = 80");
    assert!(v["status"]["digest"].as_str().unwrap().starts_with("sha256:"));
    // Bad keys are named.
    let bad = json!({
        "apiVersion": "flotilla.dev/v1", "kind": "Secret", "metadata": { "name": "x" },
        "spec": { "data": { "../etc/passwd": "x" } }
    });
    let (s, v, _) = api.call("PUT", "/api/v1/secrets/x", Some(&op), serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v.to_string().contains("spec.data.../etc/passwd"), "{v}");
    // In use: not deleted.
    let mut user = app("till", "img:1");
    user["spec"]["containers"][0]["env"] =
        json!([{ "name": "PW", "valueFrom": { "secret": { "name": "db", "key": "password" } } }]);
    let (s, v, _) = api.call("PUT", "/api/v1/apps/till", Some(&op), serde_json::to_vec(&user).unwrap()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v, _) = api.call("DELETE", "/api/v1/secrets/db", Some(&op), vec![]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("till"), "{v}");
    let (s, _, _) = api.call("DELETE", "/api/v1/apps/till", Some(&op), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api.call("DELETE", "/api/v1/secrets/db", Some(&op), vec![]).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn a_backup_needs_a_fleet_wide_admin_holds_every_object_and_is_audited() {
    let api = setup().await;
    let admin = token(&api.store, Role::Admin).await;
    let (admin_a, _) = token_with(&api.store, Role::Admin, None, &["a"]).await;
    let (s, _, _) =
        api.call("PUT", "/api/v1/sites/a", Some(&admin), serde_json::to_vec(&site_json("a")).unwrap()).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v, _) = api.call("GET", "/api/v1/backup", Some(&admin_a), vec![]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a token scoped to sites takes no fleet-wide backup: {v}");

    let req = Request::builder()
        .uri("/api/v1/backup")
        .header("authorization", format!("Bearer {admin}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let revision: u64 = resp.headers()[api::backup::BACKUP_REVISION].to_str().unwrap().parse().unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    let backup = hub_store::decode_backup(&bytes).unwrap();
    assert_eq!(backup.header().revision, revision);
    let names: Vec<String> = backup.objects().iter().map(|o| o.key()).collect();
    for key in ["site/a", "fleet-ca/fleet"] {
        assert!(names.iter().any(|n| n == key), "{key} missing from {names:?}");
    }
    assert_eq!(
        backup.objects().iter().filter(|o| matches!(o, Object::ApiToken(_))).count(),
        2,
        "both API tokens"
    );

    let (_, log, _) = api.call("GET", "/api/v1/audit", Some(&admin), vec![]).await;
    let calls: Vec<(String, u64)> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/api/v1/backup")
        .map(|e| (e["method"].as_str().unwrap().to_string(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(calls, [("GET".to_string(), 403), ("GET".to_string(), 200)], "both backup calls audited");
}

fn config_json(name: &str, namespace: Option<&str>, value: &str) -> Value {
    let mut meta = json!({ "name": name });
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    json!({ "apiVersion": "flotilla.dev/v1", "kind": "Config", "metadata": meta, "spec": { "data": { "k": value } } })
}

#[tokio::test]
async fn apps_configs_and_secrets_live_in_namespaces_and_tokens_can_be_scoped_to_them() {
    let api = setup().await;
    let admin = token(&api.store, Role::Admin).await;
    let put = |path: &str, v: &Value| {
        let (api, admin, path, body) =
            (&api, admin.clone(), path.to_string(), serde_json::to_vec(v).unwrap());
        async move { api.call("PUT", &path, Some(&admin), body).await }
    };
    // One name, two namespaces: by the query, or by the body.
    assert_eq!(put("/api/v1/apps/web", &app("web", "img:1")).await.0, StatusCode::CREATED);
    let (s, v, _) = put("/api/v1/apps/web?namespace=pos", &app("web", "img:2")).await;
    assert_eq!((s, v["metadata"]["namespace"].as_str()), (StatusCode::CREATED, Some("pos")));
    let mut in_body = app("web", "img:3");
    in_body["metadata"]["namespace"] = json!("kitchen");
    let (s, _, _) = put("/api/v1/apps/web?namespace=kitchen", &in_body).await;
    assert_eq!(s, StatusCode::CREATED);
    // A body that names another namespace than the request is refused, by field.
    let (s, v, _) = put("/api/v1/apps/web?namespace=pos", &in_body).await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.namespace"))
    );
    let mut site = site_json("s1");
    site["metadata"]["namespace"] = json!("pos");
    let (s, v, _) = put("/api/v1/sites/s1", &site).await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.namespace")),
        "{v}"
    );
    let (s, v, _) = api.call("GET", "/api/v1/sites?namespace=pos", Some(&admin), vec![]).await;
    assert_eq!((s, v["errors"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("namespace")));
    // Each is read in its own namespace; a qualified name is no way around it.
    let image_of = |v: &Value| v["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string();
    let (_, v, _) = api.call("GET", "/api/v1/apps/web", Some(&admin), vec![]).await;
    assert_eq!((image_of(&v), v["metadata"]["namespace"].as_str()), ("img:1".into(), Some("default")));
    let (_, v, _) = api.call("GET", "/api/v1/apps/web?namespace=pos", Some(&admin), vec![]).await;
    assert_eq!(image_of(&v), "img:2");
    let (s, _, _) = api.call("GET", "/api/v1/apps/web.pos", Some(&admin), vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Lists: every namespace, one, or by field.
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["namespace"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, v, _) = api.call("GET", "/api/v1/apps", Some(&admin), vec![]).await;
    let mut all = names(&v);
    all.sort();
    assert_eq!(all, ["default", "kitchen", "pos"]);
    let (_, v, _) = api.call("GET", "/api/v1/apps?namespace=pos", Some(&admin), vec![]).await;
    assert_eq!(names(&v), ["pos"]);
    let (_, v, _) =
        api.call("GET", "/api/v1/apps?fieldSelector=metadata.namespace!%3Dpos", Some(&admin), vec![]).await;
    assert_eq!(names(&v).len(), 2);
    // A config is used only by its own namespace's apps.
    assert_eq!(
        put("/api/v1/configs/cfg?namespace=pos", &config_json("cfg", None, "a")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(put("/api/v1/configs/cfg", &config_json("cfg", None, "b")).await.0, StatusCode::CREATED);
    let mut uses = app("web", "img:2");
    uses["spec"]["volumes"] = json!([{ "name": "v", "config": { "name": "cfg" } }]);
    assert_eq!(put("/api/v1/apps/web?namespace=pos", &uses).await.0, StatusCode::OK);
    let (s, v, _) = api.call("DELETE", "/api/v1/configs/cfg?namespace=pos", Some(&admin), vec![]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v, _) = api.call("DELETE", "/api/v1/configs/cfg", Some(&admin), vec![]).await;
    assert_eq!((s, v["deleted"]["namespace"].as_str()), (StatusCode::OK, Some("default")), "{v}");

    // A token scoped to a namespace: its apps, configs and secrets, no fleet object.
    let body = serde_json::to_vec(&json!({ "role": "admin", "namespaces": ["pos"] })).unwrap();
    let (s, v, _) = api.call("POST", "/api/v1/api-tokens", Some(&admin), body).await;
    assert_eq!((s, v["errors"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("namespaces")));
    let body = serde_json::to_vec(&json!({ "role": "operator", "namespaces": ["pos"] })).unwrap();
    let (s, v, _) = api.call("POST", "/api/v1/api-tokens", Some(&admin), body).await;
    assert_eq!((s, v["namespaces"].clone()), (StatusCode::CREATED, json!(["pos"])));
    let pos = v["token"].as_str().unwrap().to_string();
    let as_pos = |method: &str, path: &str, v: Option<&Value>| {
        let (api, pos, method, path) = (&api, pos.clone(), method.to_string(), path.to_string());
        let body = v.map(|v| serde_json::to_vec(v).unwrap()).unwrap_or_default();
        async move { api.call(&method, &path, Some(&pos), body).await }
    };
    assert_eq!(
        as_pos("PUT", "/api/v1/apps/till?namespace=pos", Some(&app("till", "img:1"))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        as_pos("PUT", "/api/v1/apps/till", Some(&app("till", "img:1"))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(as_pos("GET", "/api/v1/apps/web", None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(as_pos("DELETE", "/api/v1/apps/web?namespace=kitchen", None).await.0, StatusCode::FORBIDDEN);
    let (_, v, _) = as_pos("GET", "/api/v1/apps", None).await;
    assert_eq!(names(&v), ["pos", "pos"], "only its namespace's apps are listed");
    assert_eq!(as_pos("GET", "/api/v1/configs/cfg?namespace=pos", None).await.0, StatusCode::OK);
    assert_eq!(as_pos("PUT", "/api/v1/sites/s1", Some(&site_json("s1"))).await.0, StatusCode::FORBIDDEN);
    assert_eq!(as_pos("GET", "/api/v1/sites", None).await.0, StatusCode::OK, "fleet objects stay visible");
    let (s, _, _) = as_pos("POST", "/api/v1/enrolment-tokens", Some(&json!({ "site": "" }))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "devices serve every namespace");
    assert_eq!(as_pos("GET", "/api/v1/backup", None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(as_pos("DELETE", "/api/v1/apps/till?namespace=pos", None).await.0, StatusCode::OK);
}
