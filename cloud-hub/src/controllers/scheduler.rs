//! The scheduler: decides which devices run which apps. A pure function of the apps,
//! the devices and the current placement, so it is tested without I/O and gives the
//! same answer on every hub.
//!
//! Rules, in the order they are applied:
//! - an app goes only to devices its selector matches and, when `placement.sites` is
//!   set, only to devices in those sites;
//! - a device must have room: the sum of reserved CPU and memory of its apps stays
//!   within its capacity, and no two apps publish the same host port;
//! - placements are sticky: an app already on a device stays there while it still
//!   matches and fits, even if the device was cordoned (`unschedulable`) since, so a
//!   re-run never shuffles running workloads;
//! - older apps (lower create revision) are placed first, so a new app can never
//!   push an existing one off a full device;
//! - `placement.maxPerSite` keeps at most that many devices per site, preferring
//!   devices that already run the app, then by name.

use shared_proto::{App, Capacity, Device, PortSpec, Protocol};
use std::collections::{BTreeMap, BTreeSet};

/// Where every app runs, plus why it does not run elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// app name → devices, sorted.
    pub by_app: BTreeMap<String, BTreeSet<String>>,
    /// app name → device → why the app matched the device but could not be placed.
    pub unplaced: BTreeMap<String, BTreeMap<String, String>>,
}

impl Placement {
    /// device name → apps placed on it.
    pub fn by_device(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (app, devices) in &self.by_app {
            for d in devices {
                out.entry(d.clone()).or_default().insert(app.clone());
            }
        }
        out
    }
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
        d.host_ports.extend(c.ports.iter().map(|p: &PortSpec| (p.effective_host_port(), p.protocol)));
    }
    if app.spec.network == shared_proto::NetworkMode::None {
        d.host_ports.clear();
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

fn eligible(app: &App, device: &Device) -> bool {
    app.spec.selector.matches(&device.metadata.labels)
        && (app.spec.placement.sites.is_empty() || app.spec.placement.sites.contains(&device.spec.site))
}

/// Places `apps` on `devices`. `current` is device → apps it runs now (from the stored
/// manifests), used to keep placements stable.
pub fn schedule(apps: &[App], devices: &[Device], current: &BTreeMap<String, BTreeSet<String>>) -> Placement {
    let mut order: Vec<&App> = apps.iter().collect();
    order.sort_by(|a, b| {
        (a.metadata.create_revision, &a.metadata.name).cmp(&(b.metadata.create_revision, &b.metadata.name))
    });
    let mut devices: Vec<&Device> = devices.iter().collect();
    devices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut load: BTreeMap<&str, DeviceLoad> = BTreeMap::new();
    let mut out = Placement::default();
    for app in order {
        let name = app.metadata.name.as_str();
        let want = demand(app);
        let runs_on = |d: &Device| current.get(&d.metadata.name).is_some_and(|apps| apps.contains(name));
        // Sticky first, then by name; cordoned devices only keep what they run.
        let mut candidates: Vec<&Device> = devices
            .iter()
            .copied()
            .filter(|d| eligible(app, d) && (runs_on(d) || !d.spec.unschedulable))
            .collect();
        candidates.sort_by_key(|d| (!runs_on(d), d.metadata.name.clone()));

        let mut per_site: BTreeMap<&str, u32> = BTreeMap::new();
        let mut placed = BTreeSet::new();
        let mut unplaced = BTreeMap::new();
        for d in candidates {
            let site = d.spec.site.as_str();
            if let Some(max) = app.spec.placement.max_per_site
                && per_site.get(site).copied().unwrap_or(0) >= max
            {
                continue;
            }
            let dl = load.entry(d.metadata.name.as_str()).or_default();
            match dl.misfit(&d.status.capacity, &want) {
                Some(why) => {
                    unplaced.insert(d.metadata.name.clone(), why);
                }
                None => {
                    dl.add(&want);
                    *per_site.entry(site).or_default() += 1;
                    placed.insert(d.metadata.name.clone());
                }
            }
        }
        if !unplaced.is_empty() {
            out.unplaced.insert(name.to_string(), unplaced);
        }
        out.by_app.insert(name.to_string(), placed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::{
        AppSpec, Bytes, ContainerSpec, CpuMillis, DeviceSpec, LabelSelector, ObjectMeta, ResourceLimits,
        ResourceRequirements,
    };

    fn device(name: &str, site: &str, labels: &[(&str, &str)], cpu: u64, mem: u64) -> Device {
        let mut meta = ObjectMeta::named(name);
        meta.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut d = Device::new(meta, DeviceSpec { site: site.into(), unschedulable: false });
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

    #[test]
    fn selector_and_sites_choose_devices() {
        let devices = vec![
            device("a", "s1", &[("role", "pos")], 1000, 1 << 30),
            device("b", "s2", &[("role", "pos")], 1000, 1 << 30),
            device("c", "s1", &[("role", "kiosk")], 1000, 1 << 30),
        ];
        let mut pos = app("pos", 1, Some("pos"), 100, 1 << 20, None);
        let p = schedule(std::slice::from_ref(&pos), &devices, &BTreeMap::new());
        assert_eq!(p.by_app["pos"], set(&["a", "b"]));
        pos.spec.placement.sites = vec!["s2".into()];
        let p = schedule(&[pos], &devices, &BTreeMap::new());
        assert_eq!(p.by_app["pos"], set(&["b"]));
    }

    #[test]
    fn older_apps_keep_resources_and_misfits_say_why() {
        let devices = vec![device("a", "", &[], 1000, 100 << 20)];
        let old = app("old", 5, None, 600, 60 << 20, None);
        let new = app("new", 9, None, 600, 10 << 20, None);
        // Listed new-first: order of input must not matter.
        let p = schedule(&[new, old], &devices, &BTreeMap::new());
        assert_eq!(p.by_app["old"], set(&["a"]));
        assert!(p.by_app["new"].is_empty());
        assert!(p.unplaced["new"]["a"].contains("not enough CPU"), "{:?}", p.unplaced);
    }

    #[test]
    fn host_ports_conflict() {
        let devices = vec![device("a", "", &[], 4000, 1 << 30)];
        let p = schedule(
            &[app("x", 1, None, 10, 1 << 20, Some(80)), app("y", 2, None, 10, 1 << 20, Some(80))],
            &devices,
            &BTreeMap::new(),
        );
        assert_eq!(p.by_app["x"], set(&["a"]));
        assert!(p.unplaced["y"]["a"].contains("host port 80"));
    }

    #[test]
    fn max_per_site_prefers_current_devices_then_names() {
        let devices = vec![
            device("a", "s1", &[], 1000, 1 << 30),
            device("b", "s1", &[], 1000, 1 << 30),
            device("c", "s2", &[], 1000, 1 << 30),
        ];
        let mut x = app("x", 1, None, 10, 1 << 20, None);
        x.spec.placement.max_per_site = Some(1);
        let p = schedule(std::slice::from_ref(&x), &devices, &BTreeMap::new());
        assert_eq!(p.by_app["x"], set(&["a", "c"]));
        let current = BTreeMap::from([("b".to_string(), set(&["x"]))]);
        let p = schedule(&[x], &devices, &current);
        assert_eq!(p.by_app["x"], set(&["b", "c"]));
    }

    #[test]
    fn cordoned_devices_keep_what_they_run_but_take_nothing_new() {
        let mut a = device("a", "", &[], 1000, 1 << 30);
        a.spec.unschedulable = true;
        let x = app("x", 1, None, 10, 1 << 20, None);
        let y = app("y", 2, None, 10, 1 << 20, None);
        let current = BTreeMap::from([("a".to_string(), set(&["x"]))]);
        let p = schedule(&[x, y], &[a], &current);
        assert_eq!(p.by_app["x"], set(&["a"]));
        assert!(p.by_app["y"].is_empty());
    }

    #[test]
    fn unknown_capacity_does_not_block() {
        let devices = vec![device("a", "", &[], 0, 0)];
        let p = schedule(&[app("x", 1, None, 500, 1 << 30, None)], &devices, &BTreeMap::new());
        assert_eq!(p.by_app["x"], set(&["a"]));
    }

    #[test]
    fn scheduling_is_idempotent() {
        let devices: Vec<Device> = (0..20)
            .map(|i| device(&format!("d{i:02}"), &format!("s{}", i % 4), &[], 1000, 1 << 30))
            .collect();
        let apps: Vec<App> = (0..6).map(|i| app(&format!("a{i}"), i, None, 300, 100 << 20, None)).collect();
        let first = schedule(&apps, &devices, &BTreeMap::new());
        let second = schedule(&apps, &devices, &first.by_device());
        assert_eq!(first, second);
    }
}
