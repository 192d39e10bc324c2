//! Why an app runs where it runs: for `flotilla describe app`, every device with the
//! scheduler's verdict. Computed on demand from the hub's local copy of the store, with
//! the same pure scheduler the controllers use, so it answers on any hub (leader or
//! not) and says exactly what the controllers would decide.

use super::cache::FleetCache;
use super::scheduler::{NotPlaced, Unit, placement_order, schedule_unit};
use serde::Serialize;
use shared_proto::App;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceVerdict {
    pub device: String,
    pub placed: bool,
    /// `selected` when the app wants the device (selector and sites match).
    pub selected: bool,
    /// Why not, when not placed.
    pub reason: String,
}

/// The verdict on every device for `app`, devices in name order.
pub fn explain_app(cache: &FleetCache, app: &str) -> Vec<DeviceVerdict> {
    let apps: Vec<&App> = cache.apps.values().collect();
    let order = placement_order(&apps);
    let mut units: BTreeMap<Unit, ()> = BTreeMap::new();
    for d in cache.devices.values() {
        units.insert(Unit::of(d), ());
    }
    let mut out = Vec::with_capacity(cache.devices.len());
    for unit in units.keys() {
        let devices = cache.unit_devices(unit);
        let current = |d: &str| -> Option<BTreeSet<String>> {
            cache.manifests.get(d).map(|m| m.apps.iter().map(|a| a.name.clone()).collect())
        };
        let up = schedule_unit(&order, &cache.apps, &devices, &current);
        for d in devices {
            let name = d.metadata.name.clone();
            let placed = up.by_device.get(&name).is_some_and(|a| a.contains(app));
            let verdict = match up.not_placed.get(&(app.to_string(), name.clone())) {
                _ if placed => DeviceVerdict { device: name, placed, selected: true, reason: String::new() },
                Some(NotPlaced::NotSelected(r)) => {
                    DeviceVerdict { device: name, placed, selected: false, reason: r.clone() }
                }
                Some(NotPlaced::Unfit(r)) => {
                    DeviceVerdict { device: name, placed, selected: true, reason: r.clone() }
                }
                None => {
                    DeviceVerdict { device: name, placed, selected: false, reason: "not scheduled".into() }
                }
            };
            out.push(verdict);
        }
    }
    out.sort_by(|a, b| a.device.cmp(&b.device));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::store::Object;
    use shared_proto::{AppSpec, ContainerSpec, Device, DeviceSpec, ObjectMeta, Taint};

    #[test]
    fn every_device_gets_a_verdict() {
        let mut cache = FleetCache::default();
        let mut pos = ObjectMeta::named("pos-1");
        pos.labels.insert("role".into(), "pos".into());
        cache.put(Object::Device(Device::new(pos, DeviceSpec::default())));
        let mut tainted = ObjectMeta::named("pos-2");
        tainted.labels.insert("role".into(), "pos".into());
        let spec = DeviceSpec {
            taints: vec![Taint { key: "repair".into(), ..Default::default() }],
            ..Default::default()
        };
        cache.put(Object::Device(Device::new(tainted, spec)));
        cache.put(Object::Device(Device::new(ObjectMeta::named("kiosk-1"), DeviceSpec::default())));
        let mut spec = AppSpec {
            containers: vec![ContainerSpec { name: "c".into(), image: "i:1".into(), ..Default::default() }],
            ..Default::default()
        };
        spec.selector.match_labels.insert("role".into(), "pos".into());
        cache.put(Object::App(shared_proto::App::new(ObjectMeta::named("till"), spec)));
        let v = explain_app(&cache, "till");
        let by: BTreeMap<&str, &DeviceVerdict> = v.iter().map(|d| (d.device.as_str(), d)).collect();
        assert!(by["pos-1"].placed);
        assert!(!by["kiosk-1"].selected && by["kiosk-1"].reason.contains("selector"));
        assert!(by["pos-2"].selected && by["pos-2"].reason.contains("taint repair"));
    }
}
