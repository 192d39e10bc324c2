//! Watches and paged, filtered lists through the real router over a real one-member Raft
//! store: every change seen exactly once in revision order under concurrent writers, resumes
//! after a disconnect with neither gap nor repeat (inside a revision too), 410 for what the
//! history window no longer holds, pages that show each object once while writes go on, and
//! label, site and field filters on lists and watches.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloud_hub::api;
use cloud_hub::cli::watch::{SseEvent, SseParser};
use futures::StreamExt;
use hub_store::{HistoryLimits, RaftTuning, Store, StoreConfig};
use serde_json::{Value, json};
use shared_proto::store::{Object, Precondition, Role, StoreCommand};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_secs(60);

struct Api {
    router: axum::Router,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn setup(history: HistoryLimits) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().join("store"),
        node_id: 1,
        raft_addr: None,
        initial_members: Default::default(),
        peer_tls: None,
    };
    let store = Store::open_with_tuning(config, RaftTuning { watch_history: history, ..Default::default() })
        .await
        .unwrap();
    let mut leader = store.leader();
    tokio::time::timeout(DEADLINE, leader.wait_for(|l| l.is_some())).await.unwrap().unwrap();
    let state = common::hub_state(dir.path(), &store).await;
    Api { router: api::router(state), store, _dir: dir }
}

async fn token(store: &Store, role: Role) -> String {
    let (secret, record) =
        api::tokens::new_api_token(role, String::new(), shared_proto::Timestamp(1)).unwrap();
    store.write(StoreCommand::put(Object::ApiToken(record), Precondition::MustNotExist)).await.unwrap();
    secret
}

fn app(name: &str, image: &str, labels: Value, sites: &[&str]) -> Value {
    json!({
        "apiVersion": "flotilla.dev/v1",
        "kind": "App",
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": [{ "name": "c", "image": image }], "placement": { "sites": sites } }
    })
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .body(body.map_or(Body::empty(), |b| Body::from(serde_json::to_vec(b).unwrap())))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Value {
        let (s, v) = self.call(method, path, token, body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    /// Opens a watch; the status, and the stream when it is 200.
    async fn watch(
        &self,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> (StatusCode, Option<Watch>, Value) {
        let mut req = Request::builder().uri(path).header("authorization", format!("Bearer {token}"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = self.router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        if status != StatusCode::OK {
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
            return (status, None, serde_json::from_slice(&bytes).unwrap_or(Value::Null));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let body = resp.into_body().into_data_stream();
        (
            status,
            Some(Watch { body: Box::pin(body), parser: SseParser::default(), ready: Default::default() }),
            Value::Null,
        )
    }
}

type BodyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Send>>;

struct Watch {
    body: BodyStream,
    parser: SseParser,
    ready: std::collections::VecDeque<SseEvent>,
}

/// One change as a watcher saw it: revision, event id, type, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    revision: u64,
    id: String,
    kind: String,
    name: String,
}

impl Watch {
    /// The next event (bookmarks included), failing the test at the deadline.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("an event within the deadline")?;
            self.ready.extend(self.parser.feed(&chunk.unwrap()).unwrap());
        }
    }

    /// Change events until one at or after `revision` (bookmarks skipped).
    async fn until(&mut self, revision: u64) -> Vec<Seen> {
        let mut out = Vec::new();
        loop {
            let e = self.next().await.expect("the watch goes on");
            if e.event == "BOOKMARK" {
                continue;
            }
            assert_ne!(e.event, "ERROR", "{}", e.data);
            let seen = seen(&e);
            let done = seen.revision >= revision && !seen.id.contains(':');
            out.push(seen);
            if done {
                return out;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Seen> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = self.next().await.expect("the watch goes on");
            if e.event != "BOOKMARK" {
                assert_ne!(e.event, "ERROR", "{}", e.data);
                out.push(seen(&e));
            }
        }
        out
    }
}

fn seen(e: &SseEvent) -> Seen {
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["type"], e.event.as_str());
    let revision = v["revision"].as_u64().unwrap();
    let id = e.id.clone().expect("every change has an id");
    assert_eq!(id.split(':').next().unwrap(), revision.to_string(), "the id is the revision");
    Seen {
        revision,
        id,
        kind: e.event.clone(),
        name: v["object"]["metadata"]["name"].as_str().unwrap().to_string(),
    }
}

fn order_key(s: &Seen) -> (u64, u64) {
    match s.id.split_once(':') {
        Some((r, i)) => (r.parse().unwrap(), i.parse().unwrap()),
        None => (s.revision, u64::MAX),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_change_once_in_revision_order() {
    let api = Arc::new(setup(HistoryLimits::default()).await);
    let op = token(&api.store, Role::Operator).await;
    let start = api.ok("GET", "/api/v1/apps", &op, None).await["metadata"]["revision"].as_u64().unwrap();
    let (_, watch, _) = api.watch(&format!("/api/v1/apps?watch=true&sinceRevision={start}"), &op, None).await;
    let mut watch = watch.unwrap();

    // Eight writers create, update and delete apps at once; each remembers what it was told.
    let acknowledged: Arc<Mutex<BTreeMap<u64, (String, &'static str)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (api, op, acknowledged) = (api.clone(), op.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let mut exists = BTreeSet::new();
            for i in 0..24 {
                let name = format!("w{w}-{}", i % 4);
                if i % 5 == 4 && exists.contains(&name) {
                    let v = api.ok("DELETE", &format!("/api/v1/apps/{name}"), &op, None).await;
                    exists.remove(&name);
                    acknowledged.lock().unwrap().insert(v["revision"].as_u64().unwrap(), (name, "DELETED"));
                } else {
                    let body = app(&name, &format!("img:{i}"), json!({}), &[]);
                    let v = api.ok("PUT", &format!("/api/v1/apps/{name}"), &op, Some(&body)).await;
                    let kind = if exists.insert(name.clone()) { "ADDED" } else { "MODIFIED" };
                    acknowledged
                        .lock()
                        .unwrap()
                        .insert(v["metadata"]["revision"].as_u64().unwrap(), (name, kind));
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let last = *acknowledged.keys().last().unwrap();
    let events = watch.until(last).await;
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "in revision order, none twice: {revisions:?}");
    let got: BTreeMap<u64, (String, &str)> =
        events.iter().map(|e| (e.revision, (e.name.clone(), e.kind.as_str()))).collect();
    let want: BTreeMap<u64, (String, &str)> =
        acknowledged.iter().map(|(r, (n, k))| (*r, (n.clone(), *k))).collect();
    assert_eq!(got, want, "exactly the acknowledged writes");
}

#[tokio::test]
async fn a_watch_resumes_after_a_disconnect_with_no_gap_or_repeat() {
    let api = setup(HistoryLimits::default()).await;
    let op = token(&api.store, Role::Operator).await;
    let start = api.store.revision();
    for i in 0..10 {
        api.ok(
            "PUT",
            &format!("/api/v1/apps/a{i}"),
            &op,
            Some(&app(&format!("a{i}"), "img:1", json!({}), &[])),
        )
        .await;
    }
    // Three apps in one revision: their events are `R:0`, `R:1` and `R`.
    let batch: Vec<StoreCommand> = ["b0", "b1", "b2"]
        .iter()
        .map(|n| {
            let a = shared_proto::App::new(shared_proto::ObjectMeta::named(*n), Default::default());
            StoreCommand::put(Object::App(a), Precondition::MustNotExist)
        })
        .collect();
    api.store.write(StoreCommand::Batch(batch)).await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        let v = api
            .ok(
                "PUT",
                &format!("/api/v1/apps/a{i}"),
                &op,
                Some(&app(&format!("a{i}"), "img:2", json!({}), &[])),
            )
            .await;
        last = v["metadata"]["revision"].as_u64().unwrap();
    }
    let all = {
        let (_, w, _) = api.watch(&format!("/api/v1/apps?watch=1&sinceRevision={start}"), &op, None).await;
        w.unwrap().until(last).await
    };
    assert_eq!(all.len(), 18);
    let batch_revision = all[10].revision;
    assert_eq!(
        all[10..13].iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        [format!("{batch_revision}:0"), format!("{batch_revision}:1"), batch_revision.to_string()]
    );

    // Cut after every event in turn (inside the batch too), resume by Last-Event-ID or by
    // sinceRevision when the id is a whole revision: the two parts are the whole.
    for cut in 1..all.len() {
        let (_, w, _) = api.watch(&format!("/api/v1/apps?watch=1&sinceRevision={start}"), &op, None).await;
        let mut w = w.unwrap();
        let mut got = w.take(cut).await;
        drop(w);
        let id = got.last().unwrap().id.clone();
        let (_, resumed, _) = api.watch("/api/v1/apps?watch=1&sinceRevision=0", &op, Some(&id)).await;
        got.extend(resumed.unwrap().until(last).await);
        assert_eq!(got, all, "cut after event {cut} ({id})");
        if !id.contains(':') {
            let (_, w, _) = api.watch(&format!("/api/v1/apps?watch=1&sinceRevision={id}"), &op, None).await;
            assert_eq!(w.unwrap().until(last).await, all[cut..].to_vec());
        }
    }
    let mut sorted = all.clone();
    sorted.sort_by_key(order_key);
    assert_eq!(sorted, all);

    // Ids that this hub never gave out are refused, naming the header.
    let (s, _, v) = api.watch("/api/v1/apps?watch=1", &op, Some("seven")).await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("Last-Event-ID"))
    );
}

#[tokio::test]
async fn revisions_older_than_the_history_are_gone() {
    let api = setup(HistoryLimits { max_revisions: 20, max_bytes: 1 << 20 }).await;
    let op = token(&api.store, Role::Operator).await;
    let start = api.store.revision();
    let put = |i: usize, image: &str| app(&format!("a{i:03}"), image, json!({}), &[]);
    for i in 0..12 {
        api.ok("PUT", &format!("/api/v1/apps/a{i:03}"), &op, Some(&put(i, "img:1"))).await;
    }
    let page = api.ok("GET", "/api/v1/apps?limit=5", &op, None).await;
    let token_ = page["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, slow, _) = api.watch(&format!("/api/v1/apps?watch=true&sinceRevision={start}"), &op, None).await;
    let mut slow = slow.unwrap();
    for i in 0..30 {
        api.ok("PUT", &format!("/api/v1/apps/a{:03}", i % 12), &op, Some(&put(i % 12, &format!("img:{i}"))))
            .await;
    }

    let (s, _, v) = api.watch(&format!("/api/v1/apps?watch=true&sinceRevision={start}"), &op, None).await;
    assert_eq!((s, v["type"].as_str()), (StatusCode::GONE, Some("urn:flotilla:problem:expired")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("list again"), "{v}");
    let (s, v) = api.call("GET", &format!("/api/v1/apps?limit=5&continue={token_}"), &op, None).await;
    assert_eq!((s, v["type"].as_str()), (StatusCode::GONE, Some("urn:flotilla:problem:expired")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("list again"), "{v}");

    // The watcher that did not read fell out of the window: it is told so, and the stream ends.
    let e = slow.next().await.unwrap();
    assert_eq!(e.event, "ERROR");
    let v: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(v["status"], 410, "{v}");
    assert!(slow.next().await.is_none(), "the stream ends after the error");

    // A list and a watch from its revision work again.
    let list = api.ok("GET", "/api/v1/apps", &op, None).await;
    let revision = list["metadata"]["revision"].as_u64().unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 12);
    let (s, w, _) = api.watch(&format!("/api/v1/apps?watch=true&sinceRevision={revision}"), &op, None).await;
    assert_eq!(s, StatusCode::OK);
    let v = api.ok("PUT", "/api/v1/apps/late", &op, Some(&app("late", "img:1", json!({}), &[]))).await;
    let got = w.unwrap().until(v["metadata"]["revision"].as_u64().unwrap()).await;
    assert_eq!(got.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["late"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_each_object_once_while_writes_go_on() {
    let api = Arc::new(setup(HistoryLimits::default()).await);
    let op = token(&api.store, Role::Operator).await;
    for i in 0..300 {
        let name = format!("app-{i:03}");
        api.ok("PUT", &format!("/api/v1/apps/{name}"), &op, Some(&app(&name, "img:1", json!({}), &[]))).await;
    }
    let whole = api.ok("GET", "/api/v1/apps", &op, None).await;
    let first = api.ok("GET", "/api/v1/apps?limit=37", &op, None).await;
    let revision = first["metadata"]["revision"].as_u64().unwrap();
    assert_eq!(revision, whole["metadata"]["revision"].as_u64().unwrap(), "nothing was written in between");
    assert_eq!(first["items"].as_array().unwrap().len(), 37);

    // A writer updates, deletes and creates apps all over the list while it is paged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let n_written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (api, op, stop, n_written) = (api.clone(), op.clone(), stop.clone(), n_written.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = (n * 7) % 300;
                let name = format!("app-{i:03}");
                match n % 3 {
                    0 => drop(api.call("DELETE", &format!("/api/v1/apps/{name}"), &op, None).await),
                    1 => {
                        let body = app(&name, &format!("img:{n}"), json!({}), &[]);
                        api.ok("PUT", &format!("/api/v1/apps/{name}"), &op, Some(&body)).await;
                    }
                    _ => {
                        let name = format!("app-{i:03}-new");
                        api.ok(
                            "PUT",
                            &format!("/api/v1/apps/{name}"),
                            &op,
                            Some(&app(&name, "img:1", json!({}), &[])),
                        )
                        .await;
                    }
                }
                n += 1;
                n_written.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            n
        })
    };
    let mut items: Vec<Value> = first["items"].as_array().unwrap().clone();
    let mut next = first["metadata"]["continue"].as_str().map(str::to_string);
    let mut n_pages = 1;
    while let Some(token_) = next {
        // Let some writes land between pages.
        let before = n_written.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + DEADLINE;
        while n_written.load(std::sync::atomic::Ordering::Relaxed) < before + 3 {
            assert!(Instant::now() < deadline, "the writer is stuck");
            tokio::task::yield_now().await;
        }
        let page = api.ok("GET", &format!("/api/v1/apps?limit=37&continue={token_}"), &op, None).await;
        assert_eq!(
            page["metadata"]["revision"].as_u64(),
            Some(revision),
            "every page is read at the first's revision"
        );
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        next = page["metadata"]["continue"].as_str().map(str::to_string);
        n_pages += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n_writes = writer.await.unwrap();
    assert!(n_writes >= 3 * (n_pages - 1), "{n_writes} writes over {n_pages} pages");
    assert_eq!(n_pages, 9);
    let names: Vec<&str> = items.iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "no object twice");
    assert_eq!(Value::Array(items), whole["items"], "the pages are the list at the first page's revision");
}

#[tokio::test]
async fn lists_and_watches_filter_by_labels_site_and_fields() {
    use shared_proto::{Device, DevicePhase, DeviceSpec, ObjectMeta};
    let api = setup(HistoryLimits::default()).await;
    let op = token(&api.store, Role::Operator).await;
    for (name, labels, sites) in [
        ("pos", json!({"app": "pos", "env": "a"}), vec!["s1"]),
        ("pos-canary", json!({"app": "pos", "env": "b", "canary": ""}), vec!["s1"]),
        ("db", json!({"app": "db", "tier": "db", "env": "c"}), vec!["s2"]),
        ("everywhere", json!({"app": "agent"}), vec![]),
    ] {
        api.ok("PUT", &format!("/api/v1/apps/{name}"), &op, Some(&app(name, "img:1", labels, &sites))).await;
    }
    for (name, site, phase) in [
        ("d1", "s1", DevicePhase::Online),
        ("d2", "s1", DevicePhase::Offline),
        ("d3", "s2", DevicePhase::Online),
    ] {
        let mut d =
            Device::new(ObjectMeta::named(name), DeviceSpec { site: site.into(), ..Default::default() });
        d.status.phase = phase;
        api.store.write(StoreCommand::put(Object::Device(d), Precondition::MustNotExist)).await.unwrap();
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (query, want) in [
        ("labelSelector=app%3Dpos", &["pos", "pos-canary"][..]),
        ("labelSelector=app%3Dpos,!canary", &["pos"]),
        ("labelSelector=env%20in%20(a,c)", &["db", "pos"]),
        ("labelSelector=tier!%3Ddb", &["everywhere", "pos", "pos-canary"]),
        ("labelSelector=env%20notin%20(a),app", &["db", "everywhere", "pos-canary"]),
        ("site=s1", &["everywhere", "pos", "pos-canary"]),
        ("site=s2&labelSelector=app%3Ddb", &["db"]),
        ("fieldSelector=metadata.name%3Ddb", &["db"]),
        ("fieldSelector=status.phase%3DPending,metadata.name!%3Ddb", &["everywhere", "pos", "pos-canary"]),
        ("labelSelector=app%3Dpos&limit=1", &["pos"]),
    ] {
        assert_eq!(names(&api.ok("GET", &format!("/api/v1/apps?{query}"), &op, None).await), want, "{query}");
    }
    for (query, want) in [
        ("site=s1", &["d1", "d2"][..]),
        ("fieldSelector=spec.site%3Ds1,status.phase%3DOnline", &["d1"]),
        ("fieldSelector=status.phase!%3DOnline", &["d2"]),
    ] {
        assert_eq!(
            names(&api.ok("GET", &format!("/api/v1/devices?{query}"), &op, None).await),
            want,
            "{query}"
        );
    }
    assert_eq!(names(&api.ok("GET", "/api/v1/sites?site=s1", &op, None).await), Vec::<String>::new());
    for (path, field) in [
        ("/api/v1/apps?labelSelector=app%20in%20(pos", "labelSelector"),
        ("/api/v1/apps?fieldSelector=spec.site%3Ds1", "fieldSelector"),
        ("/api/v1/configs?site=s1", "site"),
        ("/api/v1/apps?limit=5000", "limit"),
    ] {
        let (s, v) = api.call("GET", path, &op, None).await;
        assert_eq!(
            (s, v["errors"][0]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{path}: {v}"
        );
        assert!(!v["detail"].as_str().unwrap().is_empty());
    }

    // A filtered watch: objects entering the selection are ADDED, leaving it DELETED, and
    // changes outside it are not shown at all.
    let start = api.store.revision();
    let (_, w, _) = api
        .watch(
            &format!("/api/v1/apps?watch=true&sinceRevision={start}&labelSelector=app%3Dpos,!canary"),
            &op,
            None,
        )
        .await;
    let mut w = w.unwrap();
    api.ok("PUT", "/api/v1/apps/db", &op, Some(&app("db", "img:2", json!({"app": "db"}), &["s2"]))).await;
    api.ok(
        "PUT",
        "/api/v1/apps/pos-canary",
        &op,
        Some(&app("pos-canary", "img:1", json!({"app": "pos"}), &["s1"])),
    )
    .await;
    api.ok("PUT", "/api/v1/apps/pos", &op, Some(&app("pos", "img:2", json!({"app": "pos"}), &["s1"]))).await;
    api.ok(
        "PUT",
        "/api/v1/apps/pos",
        &op,
        Some(&app("pos", "img:2", json!({"app": "pos", "canary": "y"}), &["s1"])),
    )
    .await;
    let last = api.ok("DELETE", "/api/v1/apps/pos-canary", &op, None).await["revision"].as_u64().unwrap();
    let got: Vec<(String, String)> = w.until(last).await.into_iter().map(|s| (s.kind, s.name)).collect();
    let want = [("ADDED", "pos-canary"), ("MODIFIED", "pos"), ("DELETED", "pos"), ("DELETED", "pos-canary")];
    assert_eq!(got, want.map(|(k, n)| (k.to_string(), n.to_string())));

    // A token limited to site s1 lists and watches only what it may see there.
    let (secret, mut record) =
        api::tokens::new_api_token(Role::Viewer, String::new(), shared_proto::Timestamp(1)).unwrap();
    record.sites = vec!["s1".into()];
    api.store.write(StoreCommand::put(Object::ApiToken(record), Precondition::MustNotExist)).await.unwrap();
    assert_eq!(names(&api.ok("GET", "/api/v1/devices", &secret, None).await), ["d1", "d2"]);
    let start = api.store.revision();
    let (_, w, _) = api.watch(&format!("/api/v1/apps?watch=true&sinceRevision={start}"), &secret, None).await;
    let mut w = w.unwrap();
    api.ok("PUT", "/api/v1/apps/db", &op, Some(&app("db", "img:3", json!({"app": "db"}), &["s2"]))).await;
    let last = api.ok("PUT", "/api/v1/apps/pos", &op, Some(&app("pos", "img:3", json!({}), &["s1"]))).await;
    let got = w.until(last["metadata"]["revision"].as_u64().unwrap()).await;
    assert_eq!(
        got.iter().map(|s| (s.kind.as_str(), s.name.as_str())).collect::<Vec<_>>(),
        [("MODIFIED", "pos")]
    );
}

#[tokio::test]
async fn a_quiet_filtered_watch_gets_bookmarks_and_heartbeats() {
    let api = setup(HistoryLimits::default()).await;
    let op = token(&api.store, Role::Operator).await;
    let start = api.store.revision();
    let (_, w, _) = api
        .watch(&format!("/api/v1/apps?watch=true&sinceRevision={start}&labelSelector=app%3Dpos"), &op, None)
        .await;
    let mut w = w.unwrap();
    let mut last = 0;
    for i in 0..3 {
        let name = format!("other-{i}");
        let v = api
            .ok("PUT", &format!("/api/v1/apps/{name}"), &op, Some(&app(&name, "img:1", json!({}), &[])))
            .await;
        last = v["metadata"]["revision"].as_u64().unwrap();
    }
    // Nothing matches, but the resume point moves past what went by.
    let started = Instant::now();
    let e = w.next().await.unwrap();
    assert_eq!(e.event, "BOOKMARK", "{e:?}");
    let id: u64 = e.id.unwrap().parse().unwrap();
    assert!(id >= last, "the bookmark covers the writes: {id} < {last}");
    assert!(started.elapsed() >= api::watch::BOOKMARK_EVERY - Duration::from_secs(1));
    // With nothing more to say, the stream still shows it is alive.
    let chunk =
        tokio::time::timeout(api::watch::HEARTBEAT * 2, w.body.next()).await.unwrap().unwrap().unwrap();
    assert!(chunk.starts_with(b":"), "a comment: {:?}", String::from_utf8_lossy(&chunk));
    // Resuming from the bookmark shows the next matching change and nothing before it.
    let v =
        api.ok("PUT", "/api/v1/apps/pos", &op, Some(&app("pos", "img:1", json!({"app": "pos"}), &[]))).await;
    let revision = v["metadata"]["revision"].as_u64().unwrap();
    let (_, resumed, _) =
        api.watch("/api/v1/apps?watch=true&labelSelector=app%3Dpos", &op, Some(&id.to_string())).await;
    let got = resumed.unwrap().until(revision).await;
    assert_eq!(
        got.iter().map(|s| (s.kind.as_str(), s.name.as_str())).collect::<Vec<_>>(),
        [("ADDED", "pos")]
    );
}
