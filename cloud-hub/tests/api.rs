//! The HTTP API against a real one-member Raft store in a temporary directory, driven
//! through the real router: authentication and roles, validation errors that name the
//! field, size limits, optimistic concurrency, and what a refused request leaves behind.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_hub::api::{self, HubConfig, HubState};
use cloud_hub::sync::admission::AdmissionControl;
use cloud_hub::sync::fanout::ManifestFanout;
use cloud_hub::sync::liveness::LivenessTable;
use hub_store::{Store, StoreConfig};
use serde_json::{Value, json};
use shared_proto::store::{Object, Precondition, Role, StoreCommand};
use std::sync::Arc;
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
    })
    .await
    .unwrap();
    let mut leader = store.leader();
    tokio::time::timeout(Duration::from_secs(30), leader.wait_for(|l| l.is_some())).await.unwrap().unwrap();
    let state = Arc::new(HubState {
        store: store.clone(),
        blobs: images::BlobStore::open(dir.path().join("blobs")).unwrap(),
        live: Arc::new(LivenessTable::default()),
        fanout: Arc::new(ManifestFanout::default()),
        identities: Default::default(),
        ca: provisioning::ca::FleetCa::generate("test CA").unwrap(),
        config: HubConfig {
            data_dir: dir.path().to_path_buf(),
            max_image_bytes: 1 << 20,
            quic_addr: "127.0.0.1:7441".parse().unwrap(),
            heartbeat_interval: Duration::from_secs(30),
            device_cert_validity: Duration::from_secs(3600),
        },
        clock: shared_proto::clock::SystemClock::shared(),
        admission: std::sync::Mutex::new(AdmissionControl::new(Default::default())),
    });
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
    assert_eq!(v["error"], "unauthorized");
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
    assert_eq!(v["fields"][0]["field"], "spec.containers[0].image");
    bad["spec"]["containers"][0]["ports"] = json!([{ "containerPort": "http" }]);
    bad["spec"]["containers"][0]["image"] = json!("img:1");
    let (s, v, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), serde_json::to_vec(&bad).unwrap()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["fields"][0]["field"], "spec.containers[0].ports[0].containerPort");
    let (s, v, _) = api
        .call("PUT", "/api/v1/apps/other", Some(&op), serde_json::to_vec(&app("web", "i:1")).unwrap())
        .await;
    assert_eq!(
        (s, v["fields"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("metadata.name"))
    );
    let (s, _, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), b"{not json".to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _, _) = api.call("PUT", "/api/v1/apps/web", Some(&op), vec![b' '; 2 << 20]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, _) = api.call("PUT", "/api/v1/widgets/x", Some(&op), b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api.call("PUT", "/api/v1/images/x", Some(&op), b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, v, _) = api.call("POST", "/api/v1/images", Some(&op), b"not an archive".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v, _) =
        api.call("POST", "/api/v1/enrolment-tokens", Some(&op), br#"{"ttl":"forever"}"#.to_vec()).await;
    assert_eq!((s, v["fields"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("ttl")));
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
        (s, v["fields"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("spec.taints[0]"))
    );
    dev["spec"]["taints"] = json!([{ "key": "dedicated", "value": "pos", "effect": "NoExecute" }]);
    let (s, v, _) =
        api.call("PUT", "/api/v1/devices/pos-1", Some(&op), serde_json::to_vec(&dev).unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, p, _) = api.call("GET", "/api/v1/apps/till/placement", Some(&viewer), vec![]).await;
    assert_eq!(p["placedDevices"], 0, "NoExecute keeps the untolerating app off: {p}");
}
