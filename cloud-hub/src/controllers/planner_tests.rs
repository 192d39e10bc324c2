//! The planner against a small in-memory store that applies its writes the way the
//! real one does (revisions, preconditions, watch batches): what a pass writes, how
//! much work a change costs, and what a conflict retries.

use super::*;
use hub_store::{Change, ChangeBatch};
use shared_proto::{
    AppPhase, AppSpec, ContainerSpec, DeviceSpec, Image, ImagePlatform, ImageSpec, ObjectMeta, Site,
};
use std::sync::Arc;
use std::time::Duration;

/// Applies writes like the real store and hands the planner the watch batches.
#[derive(Default)]
struct FakeStore {
    revision: u64,
    objects: BTreeMap<(StoreKind, String), Object>,
}

impl FakeStore {
    fn revision_of(o: &Object) -> u64 {
        match o {
            Object::Manifest(m) => m.revision,
            other => other.metadata().map_or(0, |m| m.revision),
        }
    }

    fn put(&mut self, mut o: Object) -> ChangeBatch {
        self.revision += 1;
        o.stamp(self.revision, self.revision);
        let (kind, name) = (o.kind(), o.name().to_string());
        self.objects.insert((kind, name.clone()), o.clone());
        ChangeBatch {
            revision: self.revision,
            changes: vec![Change { kind, name, object: Some(Arc::new(o)) }],
        }
    }

    fn write(&mut self, cmd: &StoreCommand) -> (StoreOutcome, ChangeBatch) {
        let StoreCommand::Each(cmds) = cmd else { panic!("controllers write Each") };
        self.revision += 1;
        let mut outcomes = Vec::new();
        let mut changes = Vec::new();
        for c in cmds {
            // A batch applies whole or not at all, like the real store's.
            let parts: Vec<&StoreCommand> = match c {
                StoreCommand::Batch(inner) => inner.iter().collect(),
                other => vec![other],
            };
            let parts: Vec<_> = parts
                .into_iter()
                .map(|p| match p {
                    StoreCommand::Put { object, precondition } => (
                        object.kind(),
                        object.name().to_string(),
                        Some(object.as_ref().clone()),
                        *precondition,
                    ),
                    StoreCommand::Delete { kind, name, precondition } => {
                        (*kind, name.clone(), None, *precondition)
                    }
                    _ => panic!("nested"),
                })
                .collect();
            let conflict = parts.iter().find_map(|(kind, name, _, pre)| {
                let current = self.objects.get(&(*kind, name.clone())).map(Self::revision_of);
                let ok = match pre {
                    Precondition::None => true,
                    Precondition::MustNotExist => current.is_none(),
                    Precondition::MustExist => current.is_some(),
                    Precondition::RevisionIs(r) => current == Some(*r),
                };
                (!ok).then(|| StoreOutcome::Conflict {
                    kind: *kind,
                    name: name.clone(),
                    current_revision: current,
                })
            });
            if let Some(conflict) = conflict {
                outcomes.push(conflict);
                continue;
            }
            outcomes.push(StoreOutcome::Applied { revision: self.revision });
            for (kind, name, object, _) in parts {
                match object {
                    Some(mut o) => {
                        o.stamp(self.revision, self.revision);
                        self.objects.insert((kind, name.clone()), o.clone());
                        changes.push(Change { kind, name, object: Some(Arc::new(o)) });
                    }
                    None => {
                        self.objects.remove(&(kind, name.clone()));
                        changes.push(Change { kind, name, object: None });
                    }
                }
            }
        }
        (StoreOutcome::Each(outcomes), ChangeBatch { revision: self.revision, changes })
    }

    fn cache(&self) -> FleetCache {
        let mut c = FleetCache::default();
        for o in self.objects.values() {
            c.put(o.clone());
        }
        c
    }

    fn get(&self, kind: StoreKind, name: &str) -> Option<&Object> {
        self.objects.get(&(kind, name.to_string()))
    }
}

fn device(name: &str, site: &str, role: &str) -> Object {
    let mut meta = ObjectMeta::named(name);
    meta.labels.insert("role".into(), role.into());
    let mut d = Device::new(meta, DeviceSpec { site: site.into(), ..Default::default() });
    d.status.arch = "amd64".into();
    Object::Device(d)
}

fn app(name: &str, role: &str, image: &str) -> Object {
    let mut meta = ObjectMeta::named(name);
    meta.generation = 1;
    let mut spec = AppSpec {
        containers: vec![ContainerSpec { name: "c".into(), image: image.into(), ..Default::default() }],
        ..Default::default()
    };
    spec.selector.match_labels.insert("role".into(), role.into());
    Object::App(App::new(meta, spec))
}

fn image(name: &str) -> Object {
    Object::Image(Image::new(
        ObjectMeta::named(name),
        ImageSpec {
            digest: format!("sha256:i-{name}"),
            platforms: vec![ImagePlatform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: String::new(),
                manifest_digest: format!("sha256:m-{name}"),
                size: 1,
            }],
        },
    ))
}

const CFG: Duration = Duration::from_secs(30);

fn planner(store: &FakeStore) -> Planner {
    Planner::new(
        store.cache(),
        ControllerConfig { offline_grace: CFG, startup_grace: Duration::ZERO },
        Timestamp(0),
    )
}

/// Runs passes, writing to the store and feeding the watch back, until quiet.
fn settle(p: &mut Planner, store: &mut FakeStore, live: &dyn Fn(&str) -> Option<LiveDevice>) -> usize {
    let mut n_writes = 0;
    for _ in 0..10 {
        let plan = p.plan(Timestamp(1_000), live, BTreeSet::new());
        if plan.writes.is_empty() {
            return n_writes;
        }
        for w in &plan.writes {
            let (outcome, batch) = store.write(w);
            p.handle_outcome(w, Ok(&outcome));
            p.handle_batch(&batch);
            n_writes += 1;
        }
    }
    panic!("the planner did not settle");
}

/// The devices a pass writes the status of.
fn device_writes(plan: &PassPlan) -> Vec<String> {
    plan.writes
        .iter()
        .flat_map(|w| match w {
            StoreCommand::Each(c) => c.clone(),
            _ => vec![],
        })
        .filter_map(|c| match c {
            StoreCommand::Put { object, .. } if object.kind() == StoreKind::Device => {
                Some(object.name().to_string())
            }
            _ => None,
        })
        .collect()
}

fn online(_: &str) -> Option<LiveDevice> {
    Some(LiveDevice { connected: true, ..Default::default() })
}

#[test]
fn a_pass_places_apps_and_marks_connected_devices_online() {
    let mut store = FakeStore::default();
    store.put(device("pi", "", "web"));
    store.put(image("web:1"));
    store.put(app("web", "web", "web:1"));
    let mut p = planner(&store);
    let plan = p.plan(Timestamp(10), &online, BTreeSet::new());
    let kinds: Vec<StoreKind> = plan
        .writes
        .iter()
        .flat_map(|w| match w {
            StoreCommand::Each(c) => c.clone(),
            _ => vec![],
        })
        .map(|c| match c {
            StoreCommand::Put { object, .. } => object.kind(),
            _ => StoreKind::Site,
        })
        .collect();
    assert_eq!(kinds, [StoreKind::Manifest, StoreKind::Device, StoreKind::App], "manifests go first");
    for w in &plan.writes {
        let (outcome, batch) = store.write(w);
        p.handle_outcome(w, Ok(&outcome));
        p.handle_batch(&batch);
    }
    settle(&mut p, &mut store, &online);
    let Some(Object::Manifest(m)) = store.get(StoreKind::Manifest, "pi") else { panic!("no manifest") };
    assert_eq!(m.apps[0].containers[0].image_digest, "sha256:m-web:1");
    let Some(Object::Device(d)) = store.get(StoreKind::Device, "pi") else { panic!() };
    assert_eq!(d.status.phase, DevicePhase::Online);
    // Idempotent: nothing left to write.
    assert!(p.plan(Timestamp(20), &online, BTreeSet::from(["pi".to_string()])).writes.is_empty());
}

#[test]
fn an_unseen_online_device_goes_offline_after_grace_and_the_pass_says_when_to_wake() {
    let mut store = FakeStore::default();
    let Object::Device(mut d) = device("pi", "", "web") else { unreachable!() };
    d.status.phase = DevicePhase::Online;
    store.put(Object::Device(d));
    let mut p = planner(&store);
    let none = |_: &str| None;
    let plan = p.plan(Timestamp(1_000), &none, BTreeSet::new());
    assert!(device_writes(&plan).is_empty());
    assert_eq!(plan.wake_at, Some(Timestamp(30_000)));
    // Nothing changed, and the deadline has not passed: no device is even looked at.
    let plan = p.plan(Timestamp(29_999), &none, BTreeSet::new());
    assert!(device_writes(&plan).is_empty());
    assert_eq!(p.stats.n_devices, 0);
    let plan = p.plan(Timestamp(30_000), &none, BTreeSet::new());
    assert_eq!(device_writes(&plan), ["pi"]);
    assert_eq!(p.stats.n_devices, 1);
}

#[test]
fn sites_count_their_devices() {
    let mut store = FakeStore::default();
    store.put(Object::Site(Site::new(ObjectMeta::named("s1"), Default::default())));
    store.put(device("a", "s1", "web"));
    store.put(device("b", "s1", "web"));
    let mut p = planner(&store);
    settle(&mut p, &mut store, &online);
    let Some(Object::Site(s)) = store.get(StoreKind::Site, "s1") else { panic!() };
    assert_eq!((s.status.n_devices, s.status.n_online), (2, 2));
}

/// 1,000 stores of two devices each; two apps.
fn fleet() -> FakeStore {
    let mut store = FakeStore::default();
    store.put(image("web:1"));
    store.put(image("web:2"));
    for i in 0..1000 {
        store.put(device(&format!("pos-{i:04}"), &format!("s{i:04}"), "pos"));
        store.put(device(&format!("gw-{i:04}"), &format!("s{i:04}"), "gw"));
    }
    store.put(device("lab-1", "", "lab"));
    store.put(app("till", "pos", "web:1"));
    store.put(app("probe", "lab", "web:1"));
    store
}

#[test]
fn work_follows_the_change_not_the_fleet() {
    let mut store = fleet();
    let mut p = planner(&store);
    settle(&mut p, &mut store, &online);
    assert_eq!(p.placed("till").map(BTreeSet::len), Some(1000));

    // An app on one device: one unit, one manifest.
    let Some(Object::App(mut probe)) = store.get(StoreKind::App, "probe").cloned() else { panic!() };
    probe.spec.containers[0].image = "web:2".into();
    probe.metadata.generation = 2;
    let batch = store.put(Object::App(probe));
    p.handle_batch(&batch);
    let plan = p.plan(Timestamp(2_000), &online, BTreeSet::new());
    assert_eq!((p.stats.n_units, p.stats.n_manifests), (1, 1), "{:?}", p.stats);
    assert_eq!(plan.writes.len(), 2, "the manifest, then the app's status");

    // A report from one device touches its rows, and nothing is rescheduled.
    for w in &plan.writes {
        let (o, b) = store.write(w);
        p.handle_outcome(w, Ok(&o));
        p.handle_batch(&b);
    }
    let Some(Object::Device(mut d)) = store.get(StoreKind::Device, "pos-0042").cloned() else { panic!() };
    d.status.containers = vec![shared_proto::manifest::ObservedContainer {
        app: "till".into(),
        generation: 1,
        name: "c".into(),
        phase: shared_proto::manifest::ContainerPhase::Running,
        ready: true,
        ..Default::default()
    }];
    let batch = store.put(Object::Device(d));
    p.handle_batch(&batch);
    p.plan(Timestamp(3_000), &online, BTreeSet::new());
    assert_eq!((p.stats.n_units, p.stats.n_manifests, p.stats.n_rows, p.stats.n_apps), (0, 0, 1, 1));

    // An app change that touches every store: every manifest, in bounded writes.
    let Some(Object::App(mut till)) = store.get(StoreKind::App, "till").cloned() else { panic!() };
    till.spec.containers[0].image = "web:2".into();
    till.metadata.generation = 2;
    let batch = store.put(Object::App(till));
    p.handle_batch(&batch);
    let plan = p.plan(Timestamp(4_000), &online, BTreeSet::new());
    assert_eq!(p.stats.n_manifests, 1000);
    assert!(p.stats.n_units <= 1000, "only the stores where till can run: {:?}", p.stats);
    for w in &plan.writes {
        let StoreCommand::Each(cmds) = w else { panic!() };
        assert!(cmds.len() <= MAX_WRITE_COMMANDS);
        assert!(postcard::to_stdvec(w).unwrap().len() <= MAX_WRITE_BYTES + 64 * 1024);
    }
}

#[test]
fn a_conflict_retries_that_device_only() {
    let mut store = fleet();
    let mut p = planner(&store);
    settle(&mut p, &mut store, &online);
    let Some(Object::App(mut till)) = store.get(StoreKind::App, "till").cloned() else { panic!() };
    till.spec.containers[0].image = "web:2".into();
    till.metadata.generation = 2;
    let batch = store.put(Object::App(till));
    p.handle_batch(&batch);
    // Someone rewrites one manifest between the plan and the write.
    let plan = p.plan(Timestamp(2_000), &online, BTreeSet::new());
    let Some(Object::Manifest(m)) = store.get(StoreKind::Manifest, "pos-0007").cloned() else { panic!() };
    let sneaky = store.put(Object::Manifest(m));
    let mut n_conflicts = 0;
    for w in &plan.writes {
        let (o, b) = store.write(w);
        if let StoreOutcome::Each(os) = &o {
            n_conflicts += os.iter().filter(|o| matches!(o, StoreOutcome::Conflict { .. })).count();
        }
        p.handle_outcome(w, Ok(&o));
        p.handle_batch(&b);
    }
    assert_eq!(n_conflicts, 1, "the other 999 manifests applied");
    p.handle_batch(&sneaky);
    let plan = p.plan(Timestamp(3_000), &online, BTreeSet::new());
    assert_eq!(p.stats.n_manifests, 1, "{:?}", p.stats);
    let StoreCommand::Each(cmds) = &plan.writes[0] else { panic!() };
    // The image changed: the manifest goes with its previous images, in one batch.
    let StoreCommand::Batch(pair) = &cmds[0] else { panic!("{:?}", cmds[0]) };
    assert!(matches!(&pair[0], StoreCommand::Put { object, .. } if object.name() == "pos-0007"));
    assert!(
        matches!(&pair[1], StoreCommand::Put { object, .. } if object.kind() == StoreKind::PreviousImages)
    );
}

#[test]
fn app_status_counts_and_stays_small_for_a_large_app() {
    let mut store = fleet();
    let mut p = planner(&store);
    settle(&mut p, &mut store, &online);
    let Some(Object::App(till)) = store.get(StoreKind::App, "till") else { panic!() };
    assert_eq!(
        (till.status.phase, till.status.n_desired, till.status.n_running),
        (AppPhase::Progressing, 1000, 0)
    );
    assert_eq!(till.status.devices.len(), super::super::apps::MAX_STATUS_ROWS);
    assert!(postcard::to_stdvec(till).unwrap().len() < 8 * 1024);
}

#[test]
fn a_deleted_device_loses_its_manifest_and_its_place() {
    let mut store = fleet();
    let mut p = planner(&store);
    settle(&mut p, &mut store, &online);
    store.revision += 1;
    let gone = ChangeBatch {
        revision: store.revision,
        changes: vec![Change { kind: StoreKind::Device, name: "pos-0003".into(), object: None }],
    };
    store.objects.remove(&(StoreKind::Device, "pos-0003".to_string()));
    p.handle_batch(&gone);
    settle(&mut p, &mut store, &online);
    assert!(store.get(StoreKind::Manifest, "pos-0003").is_none());
    assert_eq!(p.placed("till").map(BTreeSet::len), Some(999));
    let Some(Object::App(till)) = store.get(StoreKind::App, "till") else { panic!() };
    assert_eq!(till.status.n_desired, 999);
}

#[test]
fn a_pass_reports_each_planner_as_it_finishes_and_plans_the_same_with_or_without_laps() {
    let mut store = FakeStore::default();
    store.put(device("pi", "", "web"));
    store.put(image("web:1"));
    store.put(app("web", "web", "web:1"));
    let mut laps = Vec::new();
    let timed =
        planner(&store).plan_with_laps(Timestamp(10), &online, BTreeSet::new(), &mut |c| laps.push(c));
    use crate::metrics::Controller::*;
    assert_eq!(laps, [Scheduler, Manifests, Devices, Apps, Sites]);
    let plain = planner(&store).plan(Timestamp(10), &online, BTreeSet::new());
    assert_eq!(timed.writes, plain.writes);
}

/// `app("web", …)` in `namespace`, mounting its namespace's config `cfg` and
/// following its namespace's app `db` at site scope when asked.
fn namespaced_app(namespace: &str, with_affinity: bool) -> Object {
    let Object::App(mut a) = app("web", "web", "web:1") else { unreachable!() };
    a.metadata.namespace = namespace.into();
    a.spec.volumes = vec![shared_proto::VolumeSpec {
        name: "v".into(),
        config: Some(shared_proto::ObjectRef { name: "cfg".into() }),
        ..Default::default()
    }];
    if with_affinity {
        a.spec.placement.affinity =
            vec![shared_proto::AppAffinity { app: "db".into(), scope: shared_proto::AffinityScope::Device }];
    }
    Object::App(a)
}

fn config_in(namespace: &str, value: &str) -> Object {
    let mut spec = shared_proto::ConfigSpec::default();
    spec.data.insert("k".into(), value.into());
    let mut c = shared_proto::Config::new(ObjectMeta::namespaced(namespace, "cfg"), spec);
    c.status = crate::api::objects::config_status(&c.spec);
    Object::Config(c)
}

#[test]
fn apps_of_two_namespaces_share_a_device_each_with_its_own_configs_and_fellows() {
    let mut store = FakeStore::default();
    store.put(device("pi", "", "web"));
    store.put(image("web:1"));
    store.put(namespaced_app("default", false));
    store.put(config_in("default", "plain"));
    store.put(namespaced_app("pos", true));
    store.put(config_in("pos", "till"));
    let mut p = planner(&store);
    settle(&mut p, &mut store, &online);
    let Some(Object::Manifest(m)) = store.get(StoreKind::Manifest, "pi") else { panic!("no manifest") };
    // pos's web follows pos's db, which does not exist: it is not placed; nor is
    // another namespace's db a stand-in for it.
    assert_eq!(m.apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["web"]);
    let Some(Object::App(web_pos)) = store.get(StoreKind::App, "web.pos") else { panic!() };
    assert_eq!(web_pos.metadata.name, "web", "the stored app keeps its own name");
    assert_eq!(web_pos.status.phase, AppPhase::Pending, "{:?}", web_pos.status);
    // Now pos gets its db, on the same device: both apps of pos run beside default's.
    let Object::App(mut db) = app("db", "web", "web:1") else { unreachable!() };
    db.metadata.namespace = "pos".into();
    store.put(Object::App(db));
    let mut p = planner(&store);
    settle(&mut p, &mut store, &online);
    let Some(Object::Manifest(m)) = store.get(StoreKind::Manifest, "pi") else { panic!() };
    assert_eq!(m.apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["db.pos", "web", "web.pos"]);
    let web_pos = m.apps.iter().find(|a| a.name == "web.pos").unwrap();
    assert_eq!(web_pos.volumes[0].config.as_ref().unwrap().name, "cfg.pos", "its own namespace's config");
    let data: Vec<(&str, &[u8])> =
        m.configs.iter().map(|c| (c.name.as_str(), c.data[0].1.as_slice())).collect();
    assert_eq!(data, [("cfg", &b"plain"[..]), ("cfg.pos", &b"till"[..])]);
    let Some(Object::App(stored)) = store.get(StoreKind::App, "web.pos") else { panic!() };
    assert_eq!((stored.metadata.name.as_str(), stored.metadata.namespace.as_str()), ("web", "pos"));
    assert_eq!(stored.spec.placement.affinity[0].app, "db", "status writes keep the stored spec");
}
