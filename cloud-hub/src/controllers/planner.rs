//! The controllers' pure core: follows the store's changes and the hub's liveness
//! table, and plans the writes that bring the store to what the rules say. Work
//! follows the change, not the fleet: each change marks what it touches (a scheduling
//! unit, a device's manifest, one app row of a device, a site's counts), and a pass
//! looks at nothing else. A change to one app costs work in proportion to the devices
//! it may run on; a report from one device costs one row per app on it.
//!
//! Writes leave in bounded `Each` commands: one device's conflict skips that device
//! only, and it is planned again once the watch has brought the newer object.
//! Stored status moves only when state does; liveness and last-seen stay in memory.

use super::ControllerConfig;
use super::apps::{AppRows, app_status, device_row};
use super::cache::{Changed, FleetCache};
use super::devices::{LiveDevice, device_status};
use super::manifests::{delete_manifest, plan_device_manifest};
use super::scheduler::{NotPlaced, Unit, placement_order, schedule_unit};
use crate::metrics::Controller;
use shared_proto::store::{Object, Precondition, StoreCommand, StoreKind, StoreOutcome};
use shared_proto::{App, Device, DevicePhase, SiteStatus, Timestamp};
use std::collections::{BTreeMap, BTreeSet};

/// Most commands one write carries.
pub const MAX_WRITE_COMMANDS: usize = 256;
/// Most encoded bytes one write carries (the store takes up to 4 MiB).
pub const MAX_WRITE_BYTES: usize = 1 << 20;

/// What a pass wants written, and when to look again if nothing happens.
#[derive(Debug, Default, PartialEq)]
pub struct PassPlan {
    /// `StoreCommand::Each` chunks, in order: manifests first (they are what devices
    /// wait for), then device, app and site statuses.
    pub writes: Vec<StoreCommand>,
    /// The next time a pass is needed even if nothing changes (an Offline deadline).
    pub wake_at: Option<Timestamp>,
}

/// Work done by one pass: each count grows with what changed, never with the fleet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    pub n_units: usize,
    pub n_manifests: usize,
    pub n_devices: usize,
    pub n_rows: usize,
    pub n_apps: usize,
    pub n_sites: usize,
}

#[derive(Debug, Default)]
struct Dirty {
    units: BTreeSet<Unit>,
    /// Devices whose manifest must be planned again.
    manifests: BTreeSet<String>,
    /// Devices whose status must be checked against their liveness.
    devices: BTreeSet<String>,
    /// (app, device) rows to compute again.
    rows: BTreeSet<(String, String)>,
    /// Apps whose every row must be computed again (spec or generation changed).
    apps_full: BTreeSet<String>,
    /// Apps whose status must be rebuilt from their rows.
    apps: BTreeSet<String>,
    sites: BTreeSet<String>,
}

pub struct Planner {
    pub cache: FleetCache,
    cfg: ControllerConfig,
    /// Stands in for "disconnected since" of devices this hub has not seen since it
    /// started: the start time plus the start-up grace.
    hub_started: Timestamp,
    /// device → apps the scheduler placed there.
    placement: BTreeMap<String, BTreeSet<String>>,
    /// app → devices.
    by_app: BTreeMap<String, BTreeSet<String>>,
    /// app → device → why the app wants the device but cannot take it.
    unfit: BTreeMap<String, BTreeMap<String, String>>,
    /// app → device → why its manifest entry could not be made (an image problem).
    problems: BTreeMap<String, BTreeMap<String, String>>,
    rows: BTreeMap<String, AppRows>,
    /// Online devices that lost their connection, by the time they turn Offline.
    offline_due: BTreeSet<(Timestamp, String)>,
    offline_at: BTreeMap<String, Timestamp>,
    /// What the last pass did, for tests and benchmarks.
    pub stats: PassStats,
    dirty: Dirty,
    /// Work whose write conflicted: planned again on the next pass.
    retry: Dirty,
}

fn apps_of(m: &shared_proto::manifest::DesiredManifest) -> BTreeSet<String> {
    m.apps.iter().map(|a| a.name.clone()).collect()
}

impl Planner {
    /// Starts from a fresh load of the store: everything is planned once.
    pub fn new(cache: FleetCache, cfg: ControllerConfig, hub_started: Timestamp) -> Planner {
        let mut p = Planner {
            cfg,
            hub_started,
            placement: BTreeMap::new(),
            by_app: BTreeMap::new(),
            unfit: BTreeMap::new(),
            problems: BTreeMap::new(),
            rows: BTreeMap::new(),
            offline_due: BTreeSet::new(),
            offline_at: BTreeMap::new(),
            stats: PassStats::default(),
            dirty: Dirty::default(),
            retry: Dirty::default(),
            cache,
        };
        for m in p.cache.manifests.values() {
            let apps = apps_of(m);
            for a in &apps {
                p.by_app.entry(a.clone()).or_default().insert(m.device.clone());
            }
            p.placement.insert(m.device.clone(), apps);
        }
        let d = &mut p.dirty;
        for (name, device) in &p.cache.devices {
            d.units.insert(Unit::of(device));
            d.manifests.insert(name.clone());
            d.devices.insert(name.clone());
        }
        d.manifests.extend(p.cache.manifests.keys().cloned());
        d.apps_full.extend(p.cache.apps.keys().cloned());
        d.apps.extend(p.cache.apps.keys().cloned());
        d.sites.extend(p.cache.sites.keys().cloned());
        p
    }

    /// Devices an app may run on according to its spec (a superset, via the indexes).
    fn candidates(&self, app: &App) -> Vec<String> {
        let by_selector = self.cache.selector_candidates(&app.spec.selector);
        let sites = &app.spec.placement.sites;
        match (by_selector, sites.is_empty()) {
            (Some(set), _) => set.into_iter().collect(),
            (None, false) => self.cache.site_devices(sites).cloned().collect(),
            (None, true) => self.cache.devices.keys().cloned().collect(),
        }
    }

    fn touch_devices<'a>(&mut self, devices: impl IntoIterator<Item = &'a String>) {
        for d in devices {
            if let Some(dev) = self.cache.devices.get(d) {
                self.dirty.units.insert(Unit::of(dev));
            }
        }
    }

    /// Takes in one watch batch.
    pub fn handle_batch(&mut self, batch: &hub_store::ChangeBatch) {
        let changes = self.cache.apply(batch);
        for c in changes {
            self.handle_change(c);
        }
    }

    fn handle_change(&mut self, change: Changed) {
        match change {
            Changed::Site(name) => {
                self.dirty.sites.insert(name);
            }
            Changed::App(old, new) => {
                let name = old.as_ref().or(new.as_ref()).map(|a| a.metadata.name.clone()).unwrap_or_default();
                let shape = |a: &App| (a.spec.clone(), a.metadata.generation);
                if old.as_ref().map(shape) == new.as_ref().map(shape) {
                    return; // Only its status moved: our own write coming back.
                }
                let running: Vec<String> = self.by_app.get(&name).into_iter().flatten().cloned().collect();
                self.touch_devices(&running);
                for a in old.iter().chain(new.iter()) {
                    let candidates = self.candidates(a);
                    self.touch_devices(&candidates);
                }
                self.dirty.manifests.extend(running);
                if new.is_some() {
                    self.dirty.apps_full.insert(name.clone());
                    self.dirty.apps.insert(name);
                } else {
                    self.rows.remove(&name);
                    self.unfit.remove(&name);
                    self.problems.remove(&name);
                }
            }
            Changed::Device(old, new) => {
                let name = old.as_ref().or(new.as_ref()).map(|d| d.metadata.name.clone()).unwrap_or_default();
                let placing = |d: &Device| {
                    (d.metadata.labels.clone(), d.spec.clone(), d.status.capacity, d.status.arch.clone())
                };
                if old.as_ref().map(placing) != new.as_ref().map(placing) {
                    for d in old.iter().chain(new.iter()) {
                        self.dirty.units.insert(Unit::of(d));
                    }
                    self.dirty.manifests.insert(name.clone());
                }
                let shown = |d: &Device| (d.status.phase, d.status.containers.clone());
                if old.as_ref().map(shown) != new.as_ref().map(shown) {
                    for a in self.placement.get(&name).into_iter().flatten() {
                        self.dirty.rows.insert((a.clone(), name.clone()));
                    }
                }
                let site_phase = |d: &Device| (d.spec.site.clone(), d.status.phase);
                if old.as_ref().map(site_phase) != new.as_ref().map(site_phase) {
                    for d in old.iter().chain(new.iter()) {
                        if !d.spec.site.is_empty() {
                            self.dirty.sites.insert(d.spec.site.clone());
                        }
                    }
                }
                if old.is_none() {
                    self.dirty.devices.insert(name.clone());
                }
                if new.is_none() {
                    // Gone from every unit: take it out of the placement here.
                    for a in self.placement.remove(&name).unwrap_or_default() {
                        if let Some(ds) = self.by_app.get_mut(&a) {
                            ds.remove(&name);
                        }
                        self.dirty.rows.insert((a.clone(), name.clone()));
                    }
                    self.dirty.manifests.insert(name.clone());
                    self.clear_due(&name);
                }
            }
            Changed::Image(image) => {
                for app in self.cache.apps_using_image(&image) {
                    let devices: Vec<String> = self.by_app.get(&app).into_iter().flatten().cloned().collect();
                    self.dirty.manifests.extend(devices);
                    self.dirty.apps.insert(app);
                }
            }
            Changed::Config(secret, name) => {
                for app in self.cache.apps_using_config(secret, &name) {
                    let devices: Vec<String> = self.by_app.get(&app).into_iter().flatten().cloned().collect();
                    self.dirty.manifests.extend(devices);
                    self.dirty.apps.insert(app);
                }
            }
            Changed::Manifest(device) => {
                // Deleted under us while the device exists: write it again.
                if !self.cache.manifests.contains_key(&device) && self.cache.devices.contains_key(&device) {
                    self.dirty.manifests.insert(device);
                }
            }
        }
    }

    /// Whether conflicted work waits for a pass.
    pub fn has_retries(&self) -> bool {
        let r = &self.retry;
        !(r.manifests.is_empty() && r.devices.is_empty() && r.apps.is_empty() && r.sites.is_empty())
    }

    /// One pass. `live` looks up the in-memory connection view; `liveness_changed`
    /// are the devices whose connection or report changed since the last pass.
    pub fn plan(
        &mut self,
        now: Timestamp,
        live: &dyn Fn(&str) -> Option<LiveDevice>,
        liveness_changed: BTreeSet<String>,
    ) -> PassPlan {
        self.plan_with_laps(now, live, liveness_changed, &mut |_| {})
    }

    /// [`Planner::plan`], calling `lap` as each planner finishes, so that the shell
    /// can time them without the planner reading a clock.
    pub fn plan_with_laps(
        &mut self,
        now: Timestamp,
        live: &dyn Fn(&str) -> Option<LiveDevice>,
        liveness_changed: BTreeSet<String>,
        lap: &mut dyn FnMut(Controller),
    ) -> PassPlan {
        let retry = std::mem::take(&mut self.retry);
        self.dirty.manifests.extend(retry.manifests);
        self.dirty.devices.extend(retry.devices);
        self.dirty.apps.extend(retry.apps);
        self.dirty.sites.extend(retry.sites);
        self.dirty.devices.extend(liveness_changed);
        while let Some((due, _)) = self.offline_due.first()
            && *due <= now
        {
            let (_, d) = self.offline_due.pop_first().expect("first exists");
            self.offline_at.remove(&d);
            self.dirty.devices.insert(d);
        }
        self.stats = PassStats::default();

        self.schedule();
        lap(Controller::Scheduler);
        let manifests = self.plan_manifests();
        lap(Controller::Manifests);
        let devices = self.plan_devices(now, live);
        lap(Controller::Devices);
        let apps = self.plan_apps();
        lap(Controller::Apps);
        let sites = self.plan_sites();
        lap(Controller::Sites);
        let mut writes = Vec::new();
        for group in [manifests, devices, apps, sites] {
            writes.extend(chunk(group));
        }
        PassPlan { writes, wake_at: self.offline_due.first().map(|(t, _)| *t) }
    }

    fn schedule(&mut self) {
        let units = std::mem::take(&mut self.dirty.units);
        self.stats.n_units = units.len();
        if units.is_empty() {
            return;
        }
        let apps: Vec<&App> = self.cache.apps.values().collect();
        let order = placement_order(&apps);
        for unit in units {
            let devices = self.cache.unit_devices(&unit);
            let manifests = &self.cache.manifests;
            let current = |d: &str| manifests.get(d).map(apps_of);
            let up = schedule_unit(&order, &self.cache.apps, &devices, &current);
            let names: Vec<String> = devices.iter().map(|d| d.metadata.name.clone()).collect();
            for (device, placed) in up.by_device {
                let before = self.placement.get(&device).cloned().unwrap_or_default();
                if before != placed {
                    self.dirty.manifests.insert(device.clone());
                    for a in before.symmetric_difference(&placed) {
                        self.dirty.rows.insert((a.clone(), device.clone()));
                        let ds = self.by_app.entry(a.clone()).or_default();
                        if placed.contains(a) {
                            ds.insert(device.clone());
                        } else {
                            ds.remove(&device);
                        }
                    }
                }
                self.placement.insert(device, placed);
            }
            // The unfit reasons of this unit's devices are replaced by the new ones.
            for (app, reasons) in self.unfit.iter_mut() {
                let before = reasons.len();
                reasons.retain(|d, _| !names.contains(d));
                if reasons.len() != before {
                    self.dirty.apps.insert(app.clone());
                }
            }
            for ((app, device), why) in up.not_placed {
                if let NotPlaced::Unfit(why) = why {
                    self.unfit.entry(app.clone()).or_default().insert(device, why);
                    self.dirty.apps.insert(app);
                }
            }
        }
        self.unfit.retain(|_, r| !r.is_empty());
    }

    fn plan_manifests(&mut self) -> Vec<StoreCommand> {
        let mut out = Vec::new();
        let devices = std::mem::take(&mut self.dirty.manifests);
        self.stats.n_manifests = devices.len();
        for device in devices {
            let Some(d) = self.cache.devices.get(&device) else {
                if let Some(m) = self.cache.manifests.get(&device) {
                    out.push(delete_manifest(m));
                }
                continue;
            };
            let placed = self.placement.get(&device).cloned().unwrap_or_default();
            let (cmd, problems) = plan_device_manifest(
                d,
                &placed,
                &self.cache.apps,
                &self.cache.images,
                &self.cache.configs,
                self.cache.manifests.get(&device),
            );
            for app in &placed {
                let now = problems.get(app);
                let entry = self.problems.entry(app.clone()).or_default();
                if entry.get(&device) != now {
                    match now {
                        Some(p) => entry.insert(device.clone(), p.clone()),
                        None => entry.remove(&device),
                    };
                    self.dirty.rows.insert((app.clone(), device.clone()));
                }
            }
            out.extend(cmd);
        }
        out
    }

    fn plan_devices(
        &mut self,
        now: Timestamp,
        live: &dyn Fn(&str) -> Option<LiveDevice>,
    ) -> Vec<StoreCommand> {
        let mut out = Vec::new();
        let devices = std::mem::take(&mut self.dirty.devices);
        self.stats.n_devices = devices.len();
        for name in devices {
            self.clear_due(&name);
            let Some(device) = self.cache.devices.get(&name) else { continue };
            let view = live(&name).unwrap_or(LiveDevice { since: self.hub_started, ..Default::default() });
            if let Some(status) = device_status(device, &view, now, self.cfg.offline_grace) {
                let mut updated = device.clone();
                updated.status = status;
                out.push(StoreCommand::put(
                    Object::Device(updated),
                    Precondition::RevisionIs(device.metadata.revision),
                ));
            } else if device.status.phase == DevicePhase::Online && !view.connected {
                let due = view.grace_start().saturating_add(self.cfg.offline_grace);
                self.offline_due.insert((due, name.clone()));
                self.offline_at.insert(name, due);
            }
        }
        out
    }

    fn plan_apps(&mut self) -> Vec<StoreCommand> {
        for app in std::mem::take(&mut self.dirty.apps_full) {
            let Some(a) = self.cache.apps.get(&app) else { continue };
            let mut rows = AppRows::default();
            for d in self.by_app.get(&app).into_iter().flatten() {
                let problem = self.problems.get(&app).and_then(|p| p.get(d));
                rows.set(d, Some(device_row(a, d, self.cache.devices.get(d), problem)));
            }
            self.rows.insert(app.clone(), rows);
            self.dirty.apps.insert(app);
        }
        let rows = std::mem::take(&mut self.dirty.rows);
        self.stats.n_rows = rows.len();
        for (app, device) in rows {
            let Some(a) = self.cache.apps.get(&app) else { continue };
            let placed = self.by_app.get(&app).is_some_and(|ds| ds.contains(&device));
            let row = placed.then(|| {
                let problem = self.problems.get(&app).and_then(|p| p.get(&device));
                device_row(a, &device, self.cache.devices.get(&device), problem)
            });
            self.rows.entry(app.clone()).or_default().set(&device, row);
            self.dirty.apps.insert(app);
        }
        let mut out = Vec::new();
        let apps = std::mem::take(&mut self.dirty.apps);
        self.stats.n_apps = apps.len();
        for app in apps {
            let Some(a) = self.cache.apps.get(&app) else { continue };
            let rows = self.rows.entry(app.clone()).or_default();
            let status = app_status(a, rows, self.unfit.get(&app));
            if status != a.status
                && let Some(stored) = self.cache.stored_apps.get(&app)
            {
                let mut updated = stored.clone();
                updated.status = status;
                out.push(StoreCommand::put(
                    Object::App(updated),
                    Precondition::RevisionIs(a.metadata.revision),
                ));
            }
        }
        out
    }

    fn plan_sites(&mut self) -> Vec<StoreCommand> {
        let mut out = Vec::new();
        let sites = std::mem::take(&mut self.dirty.sites);
        self.stats.n_sites = sites.len();
        for name in sites {
            let Some(site) = self.cache.sites.get(&name) else { continue };
            let members = self.cache.unit_devices(&Unit::Site(name.clone()));
            let status = SiteStatus {
                n_devices: members.len() as u32,
                n_online: members.iter().filter(|d| d.status.phase == DevicePhase::Online).count() as u32,
            };
            if status != site.status {
                let mut updated = site.clone();
                updated.status = status;
                out.push(StoreCommand::put(
                    Object::Site(updated),
                    Precondition::RevisionIs(site.metadata.revision),
                ));
            }
        }
        out
    }

    /// Takes the answer to one write: conflicted commands are planned again.
    pub fn handle_outcome(&mut self, write: &StoreCommand, outcome: Result<&StoreOutcome, ()>) {
        let StoreCommand::Each(cmds) = write else { return };
        let conflicted: Vec<&StoreCommand> = match outcome {
            Ok(StoreOutcome::Each(outcomes)) => cmds
                .iter()
                .zip(outcomes)
                .filter(|(_, o)| matches!(o, StoreOutcome::Conflict { .. }))
                .map(|(c, _)| c)
                .collect(),
            Ok(_) => Vec::new(),
            Err(()) => cmds.iter().collect(),
        };
        for cmd in conflicted {
            // A batch stands or falls with its first command (a manifest and its
            // previous images).
            let cmd = match cmd {
                StoreCommand::Batch(inner) => match inner.first() {
                    Some(first) => first,
                    None => continue,
                },
                other => other,
            };
            let (kind, name) = match cmd {
                StoreCommand::Put { object, .. } => (object.kind(), object.name().to_string()),
                StoreCommand::Delete { kind, name, .. } => (*kind, name.clone()),
                _ => continue,
            };
            match kind {
                StoreKind::Manifest => self.retry.manifests.insert(name),
                StoreKind::Device => self.retry.devices.insert(name),
                StoreKind::App => self.retry.apps.insert(name),
                StoreKind::Site => self.retry.sites.insert(name),
                _ => false,
            };
        }
    }

    fn clear_due(&mut self, device: &str) {
        if let Some(due) = self.offline_at.remove(device) {
            self.offline_due.remove(&(due, device.to_string()));
        }
    }

    /// Devices the scheduler placed `app` on.
    pub fn placed(&self, app: &str) -> Option<&BTreeSet<String>> {
        self.by_app.get(app)
    }
}

/// Cuts commands into `Each` writes of at most [`MAX_WRITE_COMMANDS`] commands and
/// [`MAX_WRITE_BYTES`] encoded bytes.
pub fn chunk(cmds: Vec<StoreCommand>) -> Vec<StoreCommand> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for cmd in cmds {
        let size = postcard::to_stdvec(&cmd).map_or(MAX_WRITE_BYTES, |b| b.len());
        if !current.is_empty() && (current.len() >= MAX_WRITE_COMMANDS || bytes + size > MAX_WRITE_BYTES) {
            out.push(StoreCommand::Each(std::mem::take(&mut current)));
            bytes = 0;
        }
        bytes += size;
        current.push(cmd);
    }
    if !current.is_empty() {
        out.push(StoreCommand::Each(current));
    }
    out
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
