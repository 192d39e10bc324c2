//! The scheduler: decides which devices run which apps. A pure function of the apps,
//! the devices and the current placement, so it is tested without I/O and gives the
//! same answer on every hub.
//!
//! Every rule looks at one site at most, so the fleet is scheduled in independent
//! **units**: a site's devices together, or a device with no site on its own. A change
//! is rescheduled only in the units it touches; a store's change never costs the
//! fleet a full pass.
//!
//! Rules, in the order they are applied within a unit:
//! - an app goes only to devices its selector matches and, when `placement.sites` is
//!   set, only to devices in those sites;
//! - a device's taints keep off every app that does not tolerate them: `NoSchedule`
//!   lets what already runs stay, `NoExecute` removes it too;
//! - a cordoned device (`unschedulable`) keeps what it runs and takes nothing new;
//! - affinity: an app with `affinity: [{app: X}]` goes only where X is placed (the same
//!   device, or with `scope: Site` some device of the same site); anti-affinity keeps
//!   it away from where X is placed. An app is placed after the apps it needs, so a
//!   sidecar follows its main app within one pass;
//! - a device must have room: the sum of reserved CPU and memory of its apps stays
//!   within its capacity, and no two apps publish the same host port;
//! - placements are sticky: an app already on a device stays there while the rules
//!   above still allow it, so a re-run never shuffles running workloads;
//! - older apps (lower create revision) are placed first, so a new app can never
//!   push an existing one off a full device;
//! - `placement.maxPerSite` keeps at most that many devices per site, preferring
//!   devices that already run the app, then by name. Devices with no site are not
//!   limited.

use shared_proto::{AffinityScope, App, Capacity, Device, DevicePhase, PortSpec, Protocol, TaintEffect};
use std::collections::{BTreeMap, BTreeSet};

/// An independent piece of the fleet for scheduling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    Site(String),
    /// A device that belongs to no site.
    Lone(String),
}

impl Unit {
    pub fn of(device: &Device) -> Unit {
        if device.spec.site.is_empty() {
            Unit::Lone(device.metadata.name.clone())
        } else {
            Unit::Site(device.spec.site.clone())
        }
    }
}

/// Why an app is not on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPlaced {
    /// The app does not want this device: selector, sites.
    NotSelected(String),
    /// The app wants it, but a rule or the device's room stands in the way.
    Unfit(String),
}

impl NotPlaced {
    pub fn reason(&self) -> &str {
        match self {
            NotPlaced::NotSelected(r) | NotPlaced::Unfit(r) => r,
        }
    }
}

/// The result of scheduling one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitPlacement {
    /// device → apps placed on it; every device of the unit has an entry.
    pub by_device: BTreeMap<String, BTreeSet<String>>,
    /// (app, device) → why not, for every pair not placed.
    pub not_placed: BTreeMap<(String, String), NotPlaced>,
}

/// What an app asks of the device it runs on.
#[derive(Debug, Clone, Default)]
struct Demand {
    reserved: Capacity,
    host_ports: BTreeSet<(u16, Protocol)>,
}

fn demand(app: &App) -> Demand {
    let mut d = Demand::default();
    for c in &app.spec.containers {
        let r = c.resources.reserved();
        d.reserved.cpu.0 += r.cpu.0;
        d.reserved.memory.0 += r.memory.0;
        // Host: the container binds the device's port. Isolated: only a `hostPort`
        // is published on the device. None: nothing is.
        d.host_ports.extend(c.ports.iter().filter_map(|p: &PortSpec| match app.spec.network {
            shared_proto::NetworkMode::Host => Some((p.effective_host_port(), p.protocol)),
            shared_proto::NetworkMode::Isolated => Some((p.host_port?, p.protocol)),
            shared_proto::NetworkMode::None => None,
        }));
    }
    d
}

/// Running totals for one device during a scheduling pass.
#[derive(Debug, Clone, Default)]
struct DeviceLoad {
    used: Capacity,
    ports: BTreeSet<(u16, Protocol)>,
}

impl DeviceLoad {
    /// Why `demand` does not fit, or `None` when it does.
    fn misfit(&self, capacity: &Capacity, demand: &Demand) -> Option<String> {
        // A capacity of zero means "not reported yet": do not block on it.
        if capacity.cpu.0 > 0 && self.used.cpu.0 + demand.reserved.cpu.0 > capacity.cpu.0 {
            return Some(format!(
                "not enough CPU: needs {}, {} of {} free",
                demand.reserved.cpu,
                shared_proto::CpuMillis(capacity.cpu.0.saturating_sub(self.used.cpu.0)),
                capacity.cpu
            ));
        }
        if capacity.memory.0 > 0 && self.used.memory.0 + demand.reserved.memory.0 > capacity.memory.0 {
            return Some(format!(
                "not enough memory: needs {}, {} of {} free",
                demand.reserved.memory,
                shared_proto::Bytes(capacity.memory.0.saturating_sub(self.used.memory.0)),
                capacity.memory
            ));
        }
        if let Some((port, proto)) = demand.host_ports.intersection(&self.ports).next() {
            return Some(format!("host port {port}/{proto:?} is taken by another app"));
        }
        None
    }

    fn add(&mut self, demand: &Demand) {
        self.used.cpu.0 += demand.reserved.cpu.0;
        self.used.memory.0 += demand.reserved.memory.0;
        self.ports.extend(demand.host_ports.iter().copied());
    }
}

/// Whether the app wants the device at all (selector and sites).
pub fn selects(app: &App, device: &Device) -> Result<(), String> {
    if !app.spec.selector.matches(&device.metadata.labels) {
        return Err("the selector does not match the device's labels".into());
    }
    if !app.spec.placement.sites.is_empty() && !app.spec.placement.sites.contains(&device.spec.site) {
        let site = if device.spec.site.is_empty() { "no site" } else { device.spec.site.as_str() };
        return Err(format!("the device is in {site}, not in placement.sites"));
    }
    Ok(())
}

/// The order apps are placed in: oldest first, except that an app comes after the
/// apps its affinity names (a cycle falls back to age order).
pub fn placement_order(apps: &[&App]) -> Vec<String> {
    let mut by_age: Vec<&App> = apps.to_vec();
    by_age.sort_by(|a, b| {
        (a.metadata.create_revision, &a.metadata.name).cmp(&(b.metadata.create_revision, &b.metadata.name))
    });
    let names: BTreeSet<&str> = by_age.iter().map(|a| a.metadata.name.as_str()).collect();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(by_age.len());
    while order.len() < by_age.len() {
        let ready = by_age.iter().find(|a| {
            !placed.contains(a.metadata.name.as_str())
                && a.spec.placement.affinity.iter().all(|dep| {
                    dep.app == a.metadata.name
                        || !names.contains(dep.app.as_str())
                        || placed.contains(dep.app.as_str())
                })
        });
        // A cycle: take the oldest left.
        let next = ready.or_else(|| by_age.iter().find(|a| !placed.contains(a.metadata.name.as_str())));
        let next = next.expect("an app is left while the order is short");
        placed.insert(next.metadata.name.as_str());
        order.push(next.metadata.name.clone());
    }
    order
}

/// Schedules one unit. `apps` are every app, in [`placement_order`]; `devices` the
/// unit's devices; `current` is device → apps it runs now (from the stored manifests).
pub fn schedule_unit(
    order: &[String],
    apps: &BTreeMap<String, App>,
    devices: &[&Device],
    current: &dyn Fn(&str) -> Option<BTreeSet<String>>,
) -> UnitPlacement {
    let mut devices: Vec<&Device> = devices.to_vec();
    devices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let runs_now: BTreeMap<&str, BTreeSet<String>> = devices
        .iter()
        .map(|d| (d.metadata.name.as_str(), current(&d.metadata.name).unwrap_or_default()))
        .collect();
    let mut out = UnitPlacement {
        by_device: devices.iter().map(|d| (d.metadata.name.clone(), BTreeSet::new())).collect(),
        ..Default::default()
    };
    let mut load: BTreeMap<&str, DeviceLoad> = BTreeMap::new();
    for name in order {
        let Some(app) = apps.get(name) else { continue };
        let want = demand(app);
        let runs_on = |d: &Device| runs_now.get(d.metadata.name.as_str()).is_some_and(|a| a.contains(name));
        let mut candidates = Vec::new();
        for d in &devices {
            let dev = d.metadata.name.clone();
            if let Err(why) = selects(app, d) {
                out.not_placed.insert((name.clone(), dev), NotPlaced::NotSelected(why));
                continue;
            }
            match rule_problem(app, d, runs_on(d), &out.by_device) {
                Some(why) => {
                    out.not_placed.insert((name.clone(), dev), NotPlaced::Unfit(why));
                }
                None => candidates.push(*d),
            }
        }
        // Sticky first, then by name.
        candidates.sort_by_key(|d| (!runs_on(d), d.metadata.name.clone()));
        let mut n_in_site = 0u32;
        for d in candidates {
            let dev = d.metadata.name.clone();
            if let Some(max) = app.spec.placement.max_per_site
                && !d.spec.site.is_empty()
                && n_in_site >= max
            {
                let why = format!("placement.maxPerSite {max} reached in site {}", d.spec.site);
                out.not_placed.insert((name.clone(), dev), NotPlaced::Unfit(why));
                continue;
            }
            // Site-scoped anti-affinity with itself, and affinity on what this app
            // itself placed a moment ago, see the placements made so far.
            if let Some(why) = rule_problem(app, d, runs_on(d), &out.by_device) {
                out.not_placed.insert((name.clone(), dev), NotPlaced::Unfit(why));
                continue;
            }
            let dl = load.entry(d.metadata.name.as_str()).or_default();
            match dl.misfit(&d.status.capacity, &want) {
                Some(why) => {
                    out.not_placed.insert((name.clone(), dev), NotPlaced::Unfit(why));
                }
                None => {
                    dl.add(&want);
                    n_in_site += 1;
                    out.by_device.entry(dev).or_default().insert(name.clone());
                }
            }
        }
    }
    out
}

/// Why the taint, cordon and (anti-)affinity rules keep `app` off `device`, given
/// what is placed so far in the unit.
fn rule_problem(
    app: &App,
    device: &Device,
    runs_on: bool,
    placed: &BTreeMap<String, BTreeSet<String>>,
) -> Option<String> {
    if device.status.phase == DevicePhase::Decommissioned {
        return Some("the device is decommissioned".into());
    }
    let tolerations = &app.spec.placement.tolerations;
    for taint in &device.spec.taints {
        if tolerations.iter().any(|t| t.tolerates(taint)) {
            continue;
        }
        if taint.effect == TaintEffect::NoExecute || !runs_on {
            return Some(format!("taint {}={}:{:?} is not tolerated", taint.key, taint.value, taint.effect));
        }
    }
    if device.spec.unschedulable && !runs_on {
        return Some("the device is cordoned (unschedulable)".into());
    }
    let here = |other: &str| placed.get(&device.metadata.name).is_some_and(|a| a.contains(other));
    // A device with no site is a site of its own.
    let in_site = |other: &str| placed.values().any(|a| a.contains(other));
    for dep in &app.spec.placement.affinity {
        let ok = match dep.scope {
            AffinityScope::Device => here(&dep.app),
            AffinityScope::Site => in_site(&dep.app),
        };
        if !ok {
            let scope = if dep.scope == AffinityScope::Device { "device" } else { "site" };
            return Some(format!("affinity: app {} does not run on this {scope}", dep.app));
        }
    }
    for away in &app.spec.placement.anti_affinity {
        let clash = match away.scope {
            AffinityScope::Device => here(&away.app),
            AffinityScope::Site => in_site(&away.app),
        };
        if clash {
            let scope = if away.scope == AffinityScope::Device { "device" } else { "site" };
            return Some(format!("anti-affinity: app {} runs on this {scope}", away.app));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::{
        AppAffinity, AppSpec, Bytes, ContainerSpec, CpuMillis, DeviceSpec, LabelSelector, ObjectMeta,
        ResourceLimits, ResourceRequirements, Taint, Toleration, TolerationOperator,
    };

    fn device(name: &str, site: &str, labels: &[(&str, &str)], cpu: u64, mem: u64) -> Device {
        let mut meta = ObjectMeta::named(name);
        meta.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut d = Device::new(meta, DeviceSpec { site: site.into(), ..Default::default() });
        d.status.capacity = Capacity { cpu: CpuMillis(cpu), memory: Bytes(mem) };
        d
    }

    fn app(name: &str, rev: u64, role: Option<&str>, cpu: u64, mem: u64, port: Option<u16>) -> App {
        let mut meta = ObjectMeta::named(name);
        meta.create_revision = rev;
        let mut selector = LabelSelector::default();
        if let Some(r) = role {
            selector.match_labels.insert("role".into(), r.into());
        }
        App::new(
            meta,
            AppSpec {
                selector,
                containers: vec![ContainerSpec {
                    name: "c".into(),
                    image: "img:1".into(),
                    ports: port
                        .map(|p| vec![PortSpec { container_port: p, ..Default::default() }])
                        .unwrap_or_default(),
                    resources: ResourceRequirements {
                        limits: ResourceLimits {
                            cpu: Some(CpuMillis(cpu)),
                            memory: Some(Bytes(mem)),
                            pids: None,
                        },
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    type Why = BTreeMap<(String, String), NotPlaced>;

    /// Schedules the whole fleet unit by unit; app → devices.
    fn schedule(
        apps: &[App],
        devices: &[Device],
        current: &BTreeMap<String, BTreeSet<String>>,
    ) -> (BTreeMap<String, BTreeSet<String>>, Why) {
        let by_name: BTreeMap<String, App> =
            apps.iter().map(|a| (a.metadata.name.clone(), a.clone())).collect();
        let order = placement_order(&apps.iter().collect::<Vec<_>>());
        let mut units: BTreeMap<Unit, Vec<&Device>> = BTreeMap::new();
        for d in devices {
            units.entry(Unit::of(d)).or_default().push(d);
        }
        let mut by_app: BTreeMap<String, BTreeSet<String>> =
            apps.iter().map(|a| (a.metadata.name.clone(), BTreeSet::new())).collect();
        let mut why = BTreeMap::new();
        for devs in units.values() {
            let p = schedule_unit(&order, &by_name, devs, &|d| current.get(d).cloned());
            for (d, apps) in p.by_device {
                for a in apps {
                    by_app.entry(a).or_default().insert(d.clone());
                }
            }
            why.extend(p.not_placed);
        }
        (by_app, why)
    }

    fn by_device(by_app: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, ds) in by_app {
            for d in ds {
                out.entry(d.clone()).or_default().insert(a.clone());
            }
        }
        out
    }

    fn reason(why: &Why, app: &str, dev: &str) -> String {
        why[&(app.to_string(), dev.to_string())].reason().to_string()
    }

    #[test]
    fn selector_and_sites_choose_devices() {
        let devices = vec![
            device("a", "s1", &[("role", "pos")], 1000, 1 << 30),
            device("b", "s2", &[("role", "pos")], 1000, 1 << 30),
            device("c", "s1", &[("role", "kiosk")], 1000, 1 << 30),
        ];
        let mut pos = app("pos", 1, Some("pos"), 100, 1 << 20, None);
        let (p, why) = schedule(std::slice::from_ref(&pos), &devices, &BTreeMap::new());
        assert_eq!(p["pos"], set(&["a", "b"]));
        assert!(matches!(why[&("pos".into(), "c".into())], NotPlaced::NotSelected(_)));
        pos.spec.placement.sites = vec!["s2".into()];
        let (p, why) = schedule(&[pos], &devices, &BTreeMap::new());
        assert_eq!(p["pos"], set(&["b"]));
        assert!(reason(&why, "pos", "a").contains("not in placement.sites"));
    }

    #[test]
    fn older_apps_keep_resources_and_misfits_say_why() {
        let devices = vec![device("a", "", &[], 1000, 100 << 20)];
        let old = app("old", 5, None, 600, 60 << 20, None);
        let new = app("new", 9, None, 600, 10 << 20, None);
        // Listed new-first: order of input must not matter.
        let (p, why) = schedule(&[new, old], &devices, &BTreeMap::new());
        assert_eq!(p["old"], set(&["a"]));
        assert!(p["new"].is_empty());
        assert!(reason(&why, "new", "a").contains("not enough CPU"));
    }

    #[test]
    fn host_ports_conflict() {
        let devices = vec![device("a", "", &[], 4000, 1 << 30)];
        let (p, why) = schedule(
            &[app("x", 1, None, 10, 1 << 20, Some(80)), app("y", 2, None, 10, 1 << 20, Some(80))],
            &devices,
            &BTreeMap::new(),
        );
        assert_eq!(p["x"], set(&["a"]));
        assert!(reason(&why, "y", "a").contains("host port 80"));
        // Isolated apps publish only a hostPort: containerPort 80 twice is no clash,
        // hostPort 8080 twice is.
        let isolated = |name: &str, rev, host_port: Option<u16>| {
            let mut a = app(name, rev, None, 10, 1 << 20, Some(80));
            a.spec.network = shared_proto::NetworkMode::Isolated;
            a.spec.containers[0].ports[0].host_port = host_port;
            a
        };
        let (p, _) = schedule(&[isolated("x", 1, None), isolated("y", 2, None)], &devices, &BTreeMap::new());
        assert_eq!((p["x"].clone(), p["y"].clone()), (set(&["a"]), set(&["a"])));
        let (p, why) = schedule(
            &[isolated("x", 1, Some(8080)), isolated("y", 2, Some(8080))],
            &devices,
            &BTreeMap::new(),
        );
        assert!(p["y"].is_empty() && reason(&why, "y", "a").contains("host port 8080"), "{p:?}");
    }

    #[test]
    fn max_per_site_prefers_current_devices_then_names() {
        let devices = vec![
            device("a", "s1", &[], 1000, 1 << 30),
            device("b", "s1", &[], 1000, 1 << 30),
            device("c", "s2", &[], 1000, 1 << 30),
            device("d", "", &[], 1000, 1 << 30),
            device("e", "", &[], 1000, 1 << 30),
        ];
        let mut x = app("x", 1, None, 10, 1 << 20, None);
        x.spec.placement.max_per_site = Some(1);
        let (p, why) = schedule(std::slice::from_ref(&x), &devices, &BTreeMap::new());
        assert_eq!(p["x"], set(&["a", "c", "d", "e"]), "devices without a site are not limited");
        assert!(reason(&why, "x", "b").contains("maxPerSite"));
        let current = BTreeMap::from([("b".to_string(), set(&["x"]))]);
        let (p, _) = schedule(&[x], &devices, &current);
        assert_eq!(p["x"], set(&["b", "c", "d", "e"]));
    }

    #[test]
    fn cordoned_devices_keep_what_they_run_but_take_nothing_new() {
        let mut a = device("a", "", &[], 1000, 1 << 30);
        a.spec.unschedulable = true;
        let x = app("x", 1, None, 10, 1 << 20, None);
        let y = app("y", 2, None, 10, 1 << 20, None);
        let current = BTreeMap::from([("a".to_string(), set(&["x"]))]);
        let (p, why) = schedule(&[x, y], &[a], &current);
        assert_eq!(p["x"], set(&["a"]));
        assert!(p["y"].is_empty());
        assert!(reason(&why, "y", "a").contains("cordoned"));
    }

    #[test]
    fn decommissioned_devices_run_nothing() {
        let mut a = device("a", "", &[], 1000, 1 << 30);
        a.status.phase = DevicePhase::Decommissioned;
        let x = app("x", 1, None, 10, 1 << 20, None);
        let current = BTreeMap::from([("a".to_string(), set(&["x"]))]);
        let (p, why) = schedule(&[x], &[a], &current);
        assert!(p["x"].is_empty(), "not even what it ran");
        assert!(reason(&why, "x", "a").contains("decommissioned"));
    }

    #[test]
    fn taints_reserve_devices_for_apps_that_tolerate_them() {
        let mut pos = device("pos-1", "s1", &[], 1000, 1 << 30);
        pos.spec.taints = vec![Taint { key: "dedicated".into(), value: "pos".into(), ..Default::default() }];
        let other = device("gw-1", "s1", &[], 1000, 1 << 30);
        let mut till = app("till", 1, None, 10, 1 << 20, None);
        till.spec.placement.tolerations =
            vec![Toleration { key: "dedicated".into(), value: "pos".into(), ..Default::default() }];
        let metrics = app("metrics", 2, None, 10, 1 << 20, None);
        let (p, why) =
            schedule(&[till.clone(), metrics.clone()], &[pos.clone(), other.clone()], &BTreeMap::new());
        assert_eq!(p["till"], set(&["gw-1", "pos-1"]));
        assert_eq!(p["metrics"], set(&["gw-1"]));
        assert!(reason(&why, "metrics", "pos-1").contains("taint dedicated=pos:NoSchedule"));
        // NoSchedule lets what runs stay; NoExecute removes it.
        let current = BTreeMap::from([("pos-1".to_string(), set(&["metrics"]))]);
        let (p, _) = schedule(&[till.clone(), metrics.clone()], &[pos.clone(), other.clone()], &current);
        assert!(p["metrics"].contains("pos-1"));
        pos.spec.taints[0].effect = TaintEffect::NoExecute;
        let (p, _) = schedule(&[till, metrics.clone()], &[pos.clone(), other], &current);
        assert!(!p["metrics"].contains("pos-1"));
        // An empty key with Exists tolerates everything.
        let mut any = metrics;
        any.spec.placement.tolerations =
            vec![Toleration { operator: TolerationOperator::Exists, ..Default::default() }];
        let (p, _) = schedule(&[any], &[pos], &BTreeMap::new());
        assert_eq!(p["metrics"], set(&["pos-1"]));
    }

    #[test]
    fn affinity_follows_the_other_app_even_when_younger() {
        let devices = vec![
            device("a", "s1", &[("role", "pos")], 1000, 1 << 30),
            device("b", "s1", &[], 1000, 1 << 30),
            device("c", "s2", &[], 1000, 1 << 30),
        ];
        // The sidecar is older than the app it needs: it is still placed after it.
        let mut sidecar = app("sidecar", 1, None, 10, 1 << 20, None);
        sidecar.spec.placement.affinity =
            vec![AppAffinity { app: "till".into(), scope: AffinityScope::Device }];
        let till = app("till", 2, Some("pos"), 10, 1 << 20, None);
        let mut backup = app("backup", 3, None, 10, 1 << 20, None);
        backup.spec.placement.affinity = vec![AppAffinity { app: "till".into(), scope: AffinityScope::Site }];
        let (p, why) = schedule(&[sidecar, till, backup], &devices, &BTreeMap::new());
        assert_eq!(p["sidecar"], set(&["a"]));
        assert!(reason(&why, "sidecar", "b").contains("affinity: app till does not run on this device"));
        assert_eq!(p["backup"], set(&["a", "b"]), "anywhere in a site where till runs");
        assert!(reason(&why, "backup", "c").contains("this site"));
    }

    #[test]
    fn anti_affinity_keeps_apps_apart() {
        let devices = vec![
            device("a", "s1", &[], 1000, 1 << 30),
            device("b", "s1", &[], 1000, 1 << 30),
            device("c", "s2", &[], 1000, 1 << 30),
        ];
        let heavy = app("heavy", 1, None, 10, 1 << 20, None);
        let mut quiet = app("quiet", 2, None, 10, 1 << 20, None);
        quiet.spec.placement.anti_affinity =
            vec![AppAffinity { app: "heavy".into(), scope: AffinityScope::Device }];
        let mut heavy_a = heavy.clone();
        heavy_a.spec.placement.sites = vec!["s1".into()];
        let (p, why) = schedule(&[heavy_a.clone(), quiet.clone()], &devices, &BTreeMap::new());
        assert_eq!(p["heavy"], set(&["a", "b"]));
        assert_eq!(p["quiet"], set(&["c"]));
        assert!(reason(&why, "quiet", "a").contains("anti-affinity: app heavy runs on this device"));
        // One per site: anti-affinity with itself at site scope.
        let mut spread = app("spread", 3, None, 10, 1 << 20, None);
        spread.spec.placement.anti_affinity =
            vec![AppAffinity { app: "spread".into(), scope: AffinityScope::Site }];
        let (p, _) = schedule(&[spread], &devices, &BTreeMap::new());
        assert_eq!(p["spread"], set(&["a", "c"]));
    }

    #[test]
    fn unknown_capacity_does_not_block() {
        let devices = vec![device("a", "", &[], 0, 0)];
        let (p, _) = schedule(&[app("x", 1, None, 500, 1 << 30, None)], &devices, &BTreeMap::new());
        assert_eq!(p["x"], set(&["a"]));
    }

    #[test]
    fn scheduling_is_idempotent() {
        let mut devices: Vec<Device> = (0..20)
            .map(|i| device(&format!("d{i:02}"), &format!("s{}", i % 4), &[], 1000, 1 << 30))
            .collect();
        devices[3].spec.taints = vec![Taint { key: "k".into(), ..Default::default() }];
        let mut apps: Vec<App> =
            (0..6).map(|i| app(&format!("a{i}"), i, None, 300, 100 << 20, None)).collect();
        apps[2].spec.placement.affinity = vec![AppAffinity { app: "a4".into(), scope: AffinityScope::Site }];
        apps[5].spec.placement.anti_affinity =
            vec![AppAffinity { app: "a1".into(), scope: AffinityScope::Device }];
        let (first, _) = schedule(&apps, &devices, &BTreeMap::new());
        let (second, _) = schedule(&apps, &devices, &by_device(&first));
        assert_eq!(first, second);
    }
}
