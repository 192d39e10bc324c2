//! Controllers: the scheduler, the manifest planner, device lifecycle and app status.
//! Each is a pure function in its own module; [`plan_pass`] combines them over a
//! [`FleetCache`], and [`run`] is the thin async loop that feeds the cache from the
//! store's watch, runs passes on the Raft leader, and writes the resulting commands.

pub mod apps;
pub mod devices;
pub mod manifests;
pub mod scheduler;

use crate::sync::liveness::LivenessTable;
use devices::LiveDevice;
use hub_store::{ChangeBatch, Store};
use shared_proto::clock::SharedClock;
use shared_proto::manifest::DesiredManifest;
use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::{App, Device, DevicePhase, Image, Site, SiteStatus, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The objects the controllers read, kept current from the store's watch.
#[derive(Debug, Default, Clone)]
pub struct FleetCache {
    pub sites: BTreeMap<String, Site>,
    pub apps: BTreeMap<String, App>,
    pub devices: BTreeMap<String, Device>,
    pub images: BTreeMap<String, Image>,
    pub manifests: BTreeMap<String, DesiredManifest>,
}

fn revision_of(o: &Object) -> u64 {
    match o {
        Object::Manifest(m) => m.revision,
        other => other.metadata().map_or(0, |m| m.revision),
    }
}

impl FleetCache {
    pub fn load(store: &Store) -> Result<FleetCache, hub_store::StoreError> {
        let mut cache = FleetCache::default();
        for kind in
            [StoreKind::Site, StoreKind::App, StoreKind::Device, StoreKind::Image, StoreKind::Manifest]
        {
            for o in store.list_local(kind)? {
                cache.put(o);
            }
        }
        Ok(cache)
    }

    /// Stores `o`; returns the device name when it was a device.
    fn put(&mut self, o: Object) -> Option<String> {
        match o {
            Object::Site(x) => {
                self.sites.insert(x.metadata.name.clone(), x);
            }
            Object::App(a) => {
                self.apps.insert(a.metadata.name.clone(), a);
            }
            Object::Device(d) => {
                let name = d.metadata.name.clone();
                self.devices.insert(name.clone(), d);
                return Some(name);
            }
            Object::Image(i) => {
                self.images.insert(i.metadata.name.clone(), i);
            }
            Object::Manifest(m) => {
                self.manifests.insert(m.device.clone(), m);
            }
            _ => {}
        }
        None
    }

    fn cached_revision(&self, kind: StoreKind, name: &str) -> Option<u64> {
        match kind {
            StoreKind::Site => self.sites.get(name).map(|x| x.metadata.revision),
            StoreKind::App => self.apps.get(name).map(|a| a.metadata.revision),
            StoreKind::Device => self.devices.get(name).map(|d| d.metadata.revision),
            StoreKind::Image => self.images.get(name).map(|i| i.metadata.revision),
            StoreKind::Manifest => self.manifests.get(name).map(|m| m.revision),
            _ => None,
        }
    }

    /// Applies one watch batch and returns the devices it changed. Events older than
    /// what the cache holds are skipped, so a batch seen both by the initial load and
    /// the watch is harmless.
    pub fn apply(&mut self, batch: &ChangeBatch) -> BTreeSet<String> {
        let mut devices = BTreeSet::new();
        for change in &batch.changes {
            if self.cached_revision(change.kind, &change.name).is_some_and(|r| r >= batch.revision) {
                continue;
            }
            match &change.object {
                Some(o) if revision_of(o) >= batch.revision || revision_of(o) == 0 => {
                    devices.extend(self.put(o.as_ref().clone()));
                }
                Some(_) => {}
                None => match change.kind {
                    StoreKind::Site => {
                        self.sites.remove(&change.name);
                    }
                    StoreKind::App => {
                        self.apps.remove(&change.name);
                    }
                    StoreKind::Device => {
                        self.devices.remove(&change.name);
                    }
                    StoreKind::Image => {
                        self.images.remove(&change.name);
                    }
                    StoreKind::Manifest => {
                        self.manifests.remove(&change.name);
                    }
                    _ => {}
                },
            }
        }
        devices
    }
}

/// Tunables of the controller loop.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a device may stay disconnected before it is marked Offline.
    pub offline_grace: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { offline_grace: Duration::from_secs(30) }
    }
}

/// The writes of one controller pass, grouped so that a conflict in one group does
/// not hold back the others.
#[derive(Debug, Default, PartialEq)]
pub struct PassPlan {
    pub manifests: Vec<StoreCommand>,
    pub sites: Vec<StoreCommand>,
    pub devices: Vec<StoreCommand>,
    pub apps: Vec<StoreCommand>,
    /// The next time a pass is needed even if nothing changes (an Offline deadline).
    pub wake_at: Option<Timestamp>,
}

/// One pass of every controller. `check` are the devices whose liveness or stored
/// state changed; `live` looks up the in-memory connection view; `hub_started` stands
/// in for "disconnected since" of devices this hub has not seen since it started.
pub fn plan_pass(
    cache: &FleetCache,
    check: &BTreeSet<String>,
    live: &dyn Fn(&str) -> Option<LiveDevice>,
    now: Timestamp,
    hub_started: Timestamp,
    cfg: &ControllerConfig,
) -> PassPlan {
    let mut plan = PassPlan::default();
    let devices: Vec<Device> = cache.devices.values().cloned().collect();
    let current: BTreeMap<String, BTreeSet<String>> = cache
        .manifests
        .iter()
        .map(|(d, m)| (d.clone(), m.apps.iter().map(|a| a.name.clone()).collect()))
        .collect();
    let apps: Vec<App> = cache.apps.values().cloned().collect();
    let placement = scheduler::schedule(&apps, &devices, &current);
    let manifest_plan =
        manifests::plan_manifests(&cache.apps, &devices, &cache.images, &placement, &cache.manifests);
    plan.manifests = manifest_plan.commands;

    for name in check {
        let Some(device) = cache.devices.get(name) else { continue };
        let view = live(name).unwrap_or(LiveDevice { since: hub_started, ..Default::default() });
        if let Some(status) = devices::device_status(device, &view, now, cfg.offline_grace) {
            let mut updated = device.clone();
            updated.status = status;
            plan.devices.push(StoreCommand::put(
                Object::Device(updated),
                Precondition::RevisionIs(device.metadata.revision),
            ));
        } else if device.status.phase == DevicePhase::Online && !view.connected {
            let due = view.since.saturating_add(cfg.offline_grace);
            plan.wake_at = Some(plan.wake_at.map_or(due, |w| w.min(due)));
        }
    }

    for site in cache.sites.values() {
        let status = site_status(&site.metadata.name, &cache.devices);
        if status != site.status {
            let mut updated = site.clone();
            updated.status = status;
            plan.sites.push(StoreCommand::put(
                Object::Site(updated),
                Precondition::RevisionIs(site.metadata.revision),
            ));
        }
    }

    let empty = BTreeSet::new();
    for app in cache.apps.values() {
        let name = &app.metadata.name;
        let status = apps::app_status(
            app,
            placement.by_app.get(name).unwrap_or(&empty),
            &cache.devices,
            placement.unplaced.get(name),
            manifest_plan.problems.get(name),
        );
        if status != app.status {
            let mut updated = app.clone();
            updated.status = status;
            plan.apps.push(StoreCommand::put(
                Object::App(updated),
                Precondition::RevisionIs(app.metadata.revision),
            ));
        }
    }
    plan
}

/// How many devices a site has, and how many are online.
pub fn site_status(site: &str, devices: &BTreeMap<String, Device>) -> SiteStatus {
    let members = devices.values().filter(|d| d.spec.site == site);
    let (mut n_devices, mut n_online) = (0, 0);
    for d in members {
        n_devices += 1;
        n_online += u32::from(d.status.phase == DevicePhase::Online);
    }
    SiteStatus { n_devices, n_online }
}

async fn write_group(store: &Store, what: &str, cmds: Vec<StoreCommand>) {
    if cmds.is_empty() {
        return;
    }
    let n = cmds.len();
    match store.write(StoreCommand::Batch(cmds)).await {
        Ok(StoreOutcome::Applied { revision }) => tracing::debug!(what, n, revision, "controller wrote"),
        // Someone wrote in between; the watch brings the news and the next pass redoes it.
        Ok(StoreOutcome::Conflict { kind, name, .. }) => {
            tracing::debug!(what, %kind, name, "controller conflict")
        }
        Err(e) => tracing::warn!(what, error = %e, "controller write failed; will retry"),
    }
}

/// Runs the controllers whenever this hub leads, until `shutdown` flips.
pub async fn run(
    store: Store,
    live: Arc<LivenessTable>,
    clock: SharedClock,
    cfg: ControllerConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let hub_started = clock.now();
    let mut leader = store.leader();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !store.is_leader() {
            tokio::select! {
                _ = leader.changed() => continue,
                _ = shutdown.changed() => continue,
            }
        }
        let (_, mut rx) = store.subscribe();
        let mut cache = match FleetCache::load(&store) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "controllers cannot read the store; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut check: BTreeSet<String> = cache.devices.keys().cloned().collect();
        tracing::info!(devices = cache.devices.len(), apps = cache.apps.len(), "controllers running");
        while store.is_leader() && !*shutdown.borrow() {
            check.extend(live.take_dirty());
            let plan = plan_pass(&cache, &check, &|d| live.get(d), clock.now(), hub_started, &cfg);
            check.clear();
            let wake_at = plan.wake_at;
            write_group(&store, "manifests", plan.manifests).await;
            write_group(&store, "devices", plan.devices).await;
            write_group(&store, "apps", plan.apps).await;
            write_group(&store, "sites", plan.sites).await;

            let sleep_for = wake_at
                .map_or(Duration::from_secs(10), |w| w.since(clock.now()).max(Duration::from_millis(10)));
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(batch) => { check.extend(cache.apply(&batch)); }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = live.wait_changed() => {}
                _ = tokio::time::sleep(sleep_for) => {
                    // Periodic sweep: devices whose Offline deadline passed.
                    check.extend(cache.devices.iter().filter(|(_, d)| d.status.phase == DevicePhase::Online).map(|(n, _)| n.clone()));
                }
                _ = leader.changed() => {}
                _ = shutdown.changed() => {}
            }
            // Take everything else already queued, so one pass covers a burst.
            loop {
                match rx.try_recv() {
                    Ok(batch) => check.extend(cache.apply(&batch)),
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => break,
                    Err(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_store::Change;
    use shared_proto::{AppSpec, ContainerSpec, DeviceSpec, ImagePlatform, ImageSpec, ObjectMeta};

    fn fleet() -> FleetCache {
        let mut c = FleetCache::default();
        let mut d = Device::new(ObjectMeta::named("pi"), DeviceSpec::default());
        d.status.arch = "amd64".into();
        d.metadata.revision = 2;
        c.devices.insert("pi".into(), d);
        let mut img = Image::new(
            ObjectMeta::named("web:1"),
            ImageSpec {
                digest: "sha256:i".into(),
                platforms: vec![ImagePlatform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: String::new(),
                    manifest_digest: "sha256:m".into(),
                    size: 1,
                }],
            },
        );
        img.metadata.revision = 3;
        c.images.insert("web:1".into(), img);
        let mut meta = ObjectMeta::named("web");
        meta.revision = 4;
        meta.generation = 1;
        c.apps.insert(
            "web".into(),
            App::new(
                meta,
                AppSpec {
                    containers: vec![ContainerSpec {
                        name: "c".into(),
                        image: "web:1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ),
        );
        c
    }

    #[test]
    fn a_pass_places_apps_and_marks_connected_devices_online() {
        let cache = fleet();
        let check = BTreeSet::from(["pi".to_string()]);
        let live = |_: &str| Some(LiveDevice { connected: true, ..Default::default() });
        let plan =
            plan_pass(&cache, &check, &live, Timestamp(10), Timestamp(0), &ControllerConfig::default());
        assert_eq!(plan.manifests.len(), 1);
        assert_eq!(plan.devices.len(), 1);
        assert_eq!(plan.apps.len(), 1, "app status goes from Pending to Progressing");
    }

    #[test]
    fn an_unseen_online_device_goes_offline_after_grace_and_the_pass_says_when_to_wake() {
        let mut cache = fleet();
        cache.devices.get_mut("pi").unwrap().status.phase = DevicePhase::Online;
        let check = BTreeSet::from(["pi".to_string()]);
        let none = |_: &str| None;
        let cfg = ControllerConfig { offline_grace: Duration::from_secs(30) };
        let plan = plan_pass(&cache, &check, &none, Timestamp(1_000), Timestamp(0), &cfg);
        assert!(plan.devices.is_empty());
        assert_eq!(plan.wake_at, Some(Timestamp(30_000)));
        let plan = plan_pass(&cache, &check, &none, Timestamp(30_000), Timestamp(0), &cfg);
        assert_eq!(plan.devices.len(), 1);
    }

    #[test]
    fn sites_count_their_devices() {
        let mut cache = fleet();
        cache.devices.get_mut("pi").unwrap().spec.site = "s1".into();
        cache.devices.get_mut("pi").unwrap().status.phase = DevicePhase::Online;
        let mut site = Site::new(shared_proto::ObjectMeta::named("s1"), Default::default());
        site.metadata.revision = 1;
        cache.sites.insert("s1".into(), site);
        let plan = plan_pass(
            &cache,
            &BTreeSet::new(),
            &|_| None,
            Timestamp(0),
            Timestamp(0),
            &ControllerConfig::default(),
        );
        let StoreCommand::Put { object, .. } = &plan.sites[0] else { panic!() };
        let Object::Site(s) = object.as_ref() else { panic!() };
        assert_eq!((s.status.n_devices, s.status.n_online), (1, 1));
    }

    #[test]
    fn cache_skips_stale_events_and_reports_what_changed() {
        let mut cache = fleet();
        let mut d = cache.devices["pi"].clone();
        d.metadata.revision = 1;
        let stale = ChangeBatch {
            revision: 1,
            changes: vec![Change {
                kind: StoreKind::Device,
                name: "pi".into(),
                object: Some(Arc::new(Object::Device(d.clone()))),
            }],
        };
        assert!(cache.apply(&stale).is_empty());
        assert!(cache.devices["pi"].metadata.labels.is_empty(), "the stale event is not applied");
        d.metadata.revision = 9;
        d.metadata.labels.insert("role".into(), "pos".into());
        let fresh = ChangeBatch {
            revision: 9,
            changes: vec![Change {
                kind: StoreKind::Device,
                name: "pi".into(),
                object: Some(Arc::new(Object::Device(d))),
            }],
        };
        assert_eq!(cache.apply(&fresh), BTreeSet::from(["pi".to_string()]));
        assert_eq!(cache.devices["pi"].metadata.labels["role"], "pos");
        let gone = ChangeBatch {
            revision: 10,
            changes: vec![Change { kind: StoreKind::App, name: "web".into(), object: None }],
        };
        assert!(cache.apply(&gone).is_empty());
        assert!(cache.apps.is_empty());
    }
}
