//! The objects the controllers read, kept current from the store's watch, with the
//! indexes that let a change find what it touches without scanning the fleet: devices
//! by site, by label and by label key, and apps by the images they name.

use super::scheduler::Unit;
use hub_store::ChangeBatch;
use shared_proto::manifest::{DesiredConfig, DesiredManifest};
use shared_proto::store::{Object, StoreKind};
use shared_proto::{App, Device, Image, LabelSelector, SelectorOperator, Site};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default, Clone)]
pub struct FleetCache {
    pub sites: BTreeMap<String, Site>,
    /// By store name, as the controllers and devices see them ([`App::qualified`]):
    /// named, and naming their configs, secrets and fellow apps, by qualified name.
    pub apps: BTreeMap<String, App>,
    /// The same apps as stored, for writing their status back.
    pub stored_apps: BTreeMap<String, App>,
    pub devices: BTreeMap<String, Device>,
    pub images: BTreeMap<String, Image>,
    pub manifests: BTreeMap<String, DesiredManifest>,
    /// `Config`s (with their data) and `Secret`s (digest only: sealed data stays in the
    /// store until a device's session sends it), by (is a secret, name).
    pub configs: BTreeMap<(bool, String), (u64, DesiredConfig)>,
    /// site → its devices (devices with no site are not listed).
    site_members: BTreeMap<String, BTreeSet<String>>,
    /// (label key, value) → devices.
    by_label: BTreeMap<(String, String), BTreeSet<String>>,
    /// label key → devices that have it.
    by_label_key: BTreeMap<String, BTreeSet<String>>,
}

/// What one change did, for the planner to follow up.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    Site(String),
    /// Old and new (either may be absent).
    App(Option<App>, Option<App>),
    Device(Option<Device>, Option<Device>),
    Image(String),
    Manifest(String),
    /// A `Config` (`false`) or `Secret` (`true`) came, changed or went.
    Config(bool, String),
}

fn revision_of(o: &Object) -> u64 {
    match o {
        Object::Manifest(m) => m.revision,
        other => other.metadata().map_or(0, |m| m.revision),
    }
}

impl FleetCache {
    pub fn load(store: &hub_store::Store) -> Result<FleetCache, hub_store::StoreError> {
        let mut cache = FleetCache::default();
        for kind in [
            StoreKind::Site,
            StoreKind::App,
            StoreKind::Device,
            StoreKind::Image,
            StoreKind::Manifest,
            StoreKind::Config,
            StoreKind::Secret,
        ] {
            for o in store.list_local(kind)? {
                cache.put(o);
            }
        }
        Ok(cache)
    }

    fn index_device(&mut self, d: &Device, add: bool) {
        let name = &d.metadata.name;
        let edit = |set: &mut BTreeSet<String>| {
            if add {
                set.insert(name.clone());
            } else {
                set.remove(name);
            }
        };
        if !d.spec.site.is_empty() {
            edit(self.site_members.entry(d.spec.site.clone()).or_default());
        }
        for (k, v) in &d.metadata.labels {
            edit(self.by_label.entry((k.clone(), v.clone())).or_default());
            edit(self.by_label_key.entry(k.clone()).or_default());
        }
        if !add {
            self.site_members.retain(|_, s| !s.is_empty());
            self.by_label.retain(|_, s| !s.is_empty());
            self.by_label_key.retain(|_, s| !s.is_empty());
        }
    }

    /// Stores `o`; returns what changed.
    pub fn put(&mut self, o: Object) -> Option<Changed> {
        match o {
            Object::Site(x) => {
                let name = x.metadata.name.clone();
                self.sites.insert(name.clone(), x);
                Some(Changed::Site(name))
            }
            Object::App(stored) => {
                let a = stored.qualified();
                self.stored_apps.insert(a.metadata.name.clone(), stored);
                let old = self.apps.insert(a.metadata.name.clone(), a.clone());
                Some(Changed::App(old, Some(a)))
            }
            Object::Device(d) => {
                let old = self.devices.insert(d.metadata.name.clone(), d.clone());
                if let Some(old) = &old {
                    self.index_device(old, false);
                }
                self.index_device(&d, true);
                Some(Changed::Device(old, Some(d)))
            }
            Object::Image(i) => {
                let name = i.metadata.name.clone();
                self.images.insert(name.clone(), i);
                Some(Changed::Image(name))
            }
            Object::Manifest(m) => {
                let name = m.device.clone();
                self.manifests.insert(name.clone(), m);
                Some(Changed::Manifest(name))
            }
            Object::Config(c) => {
                let name = c.metadata.qualified_name();
                let desired = DesiredConfig {
                    name: name.clone(),
                    secret: false,
                    digest: c.status.digest.clone(),
                    data: c.spec.entries().unwrap_or_default(),
                };
                self.configs.insert((false, name.clone()), (c.metadata.revision, desired));
                Some(Changed::Config(false, name))
            }
            Object::Secret(s) => {
                let name = s.metadata.qualified_name();
                let desired = DesiredConfig {
                    name: name.clone(),
                    secret: true,
                    digest: s.digest.clone(),
                    data: vec![],
                };
                self.configs.insert((true, name.clone()), (s.metadata.revision, desired));
                Some(Changed::Config(true, name))
            }
            _ => None,
        }
    }

    fn remove(&mut self, kind: StoreKind, name: &str) -> Option<Changed> {
        match kind {
            StoreKind::Site => self.sites.remove(name).map(|_| Changed::Site(name.to_string())),
            StoreKind::App => {
                self.stored_apps.remove(name);
                self.apps.remove(name).map(|a| Changed::App(Some(a), None))
            }
            StoreKind::Device => {
                let old = self.devices.remove(name)?;
                self.index_device(&old, false);
                Some(Changed::Device(Some(old), None))
            }
            StoreKind::Image => self.images.remove(name).map(|_| Changed::Image(name.to_string())),
            StoreKind::Manifest => self.manifests.remove(name).map(|_| Changed::Manifest(name.to_string())),
            StoreKind::Config | StoreKind::Secret => {
                let secret = kind == StoreKind::Secret;
                self.configs
                    .remove(&(secret, name.to_string()))
                    .map(|_| Changed::Config(secret, name.to_string()))
            }
            _ => None,
        }
    }

    fn cached_revision(&self, kind: StoreKind, name: &str) -> Option<u64> {
        match kind {
            StoreKind::Site => self.sites.get(name).map(|x| x.metadata.revision),
            StoreKind::App => self.apps.get(name).map(|a| a.metadata.revision),
            StoreKind::Device => self.devices.get(name).map(|d| d.metadata.revision),
            StoreKind::Image => self.images.get(name).map(|i| i.metadata.revision),
            StoreKind::Manifest => self.manifests.get(name).map(|m| m.revision),
            StoreKind::Config | StoreKind::Secret => {
                self.configs.get(&(kind == StoreKind::Secret, name.to_string())).map(|(r, _)| *r)
            }
            _ => None,
        }
    }

    /// Applies one watch batch and returns what changed. Events older than what the
    /// cache holds are skipped, so a batch seen both by the initial load and the watch
    /// is harmless.
    pub fn apply(&mut self, batch: &ChangeBatch) -> Vec<Changed> {
        let mut out = Vec::new();
        for change in &batch.changes {
            if self.cached_revision(change.kind, &change.name).is_some_and(|r| r >= batch.revision) {
                continue;
            }
            match &change.object {
                Some(o) if revision_of(o) >= batch.revision || revision_of(o) == 0 => {
                    out.extend(self.put(o.as_ref().clone()));
                }
                Some(_) => {}
                None => out.extend(self.remove(change.kind, &change.name)),
            }
        }
        out
    }

    /// The devices of a scheduling unit.
    pub fn unit_devices(&self, unit: &Unit) -> Vec<&Device> {
        match unit {
            Unit::Site(site) => self
                .site_members
                .get(site)
                .into_iter()
                .flatten()
                .filter_map(|d| self.devices.get(d))
                .collect(),
            Unit::Lone(d) => self.devices.get(d).filter(|d| d.spec.site.is_empty()).into_iter().collect(),
        }
    }

    /// Devices that may match `selector`, found through the label indexes: a superset
    /// of the matches (check each with the selector), or `None` when the selector
    /// narrows nothing an index knows (then every device is a candidate).
    pub fn selector_candidates(&self, selector: &LabelSelector) -> Option<BTreeSet<String>> {
        let mut best: Option<BTreeSet<String>> = None;
        let mut narrow = |set: BTreeSet<String>| {
            if best.as_ref().is_none_or(|b| set.len() < b.len()) {
                best = Some(set);
            }
        };
        for (k, v) in &selector.match_labels {
            narrow(self.by_label.get(&(k.clone(), v.clone())).cloned().unwrap_or_default());
        }
        for r in &selector.match_expressions {
            match r.operator {
                SelectorOperator::In => narrow(
                    r.values
                        .iter()
                        .flat_map(|v| {
                            self.by_label.get(&(r.key.clone(), v.clone())).into_iter().flatten().cloned()
                        })
                        .collect(),
                ),
                SelectorOperator::Exists => {
                    narrow(self.by_label_key.get(&r.key).cloned().unwrap_or_default())
                }
                SelectorOperator::NotIn | SelectorOperator::DoesNotExist => {}
            }
        }
        best
    }

    /// Devices of the given sites.
    pub fn site_devices<'a>(&'a self, sites: &'a [String]) -> impl Iterator<Item = &'a String> + 'a {
        sites.iter().flat_map(|s| self.site_members.get(s).into_iter().flatten())
    }

    /// Apps that name `image` (a normalised reference) in one of their containers.
    /// Apps that mount or read the `Config` (or `Secret`) `name`.
    pub fn apps_using_config(&self, secret: bool, name: &str) -> Vec<String> {
        self.apps
            .values()
            .filter(|a| a.spec.config_refs(secret).contains(name))
            .map(|a| a.metadata.name.clone())
            .collect()
    }

    pub fn apps_using_image(&self, image: &str) -> Vec<String> {
        self.apps
            .values()
            .filter(|a| {
                a.spec.containers.iter().any(|c| {
                    let r = super::manifests::normalize_reference(&c.image);
                    r == image || r.split_once('@').is_some()
                })
            })
            .map(|a| a.metadata.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_store::Change;
    use shared_proto::{DeviceSpec, ObjectMeta, SelectorRequirement};
    use std::sync::Arc;

    fn device(name: &str, site: &str, labels: &[(&str, &str)], rev: u64) -> Device {
        let mut meta = ObjectMeta::named(name);
        meta.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        meta.revision = rev;
        Device::new(meta, DeviceSpec { site: site.into(), ..Default::default() })
    }

    fn batch(revision: u64, o: Object) -> ChangeBatch {
        ChangeBatch {
            revision,
            changes: vec![Change { kind: o.kind(), name: o.name().to_string(), object: Some(Arc::new(o)) }],
        }
    }

    #[test]
    fn stale_events_are_skipped_and_indexes_follow_the_devices() {
        let mut c = FleetCache::default();
        c.put(Object::Device(device("pi", "s1", &[("role", "pos")], 5)));
        assert!(c.apply(&batch(4, Object::Device(device("pi", "s2", &[], 4)))).is_empty(), "stale");
        let changed = c.apply(&batch(9, Object::Device(device("pi", "s2", &[("role", "kiosk")], 9))));
        assert!(matches!(&changed[..], [Changed::Device(Some(_), Some(_))]));
        assert!(c.unit_devices(&Unit::Site("s1".into())).is_empty());
        assert_eq!(c.unit_devices(&Unit::Site("s2".into())).len(), 1);
        let mut sel = LabelSelector::default();
        sel.match_labels.insert("role".into(), "pos".into());
        assert_eq!(c.selector_candidates(&sel), Some(BTreeSet::new()));
        sel.match_labels.insert("role".into(), "kiosk".into());
        assert_eq!(c.selector_candidates(&sel).unwrap().len(), 1);
        let gone = ChangeBatch {
            revision: 10,
            changes: vec![Change { kind: StoreKind::Device, name: "pi".into(), object: None }],
        };
        assert!(matches!(&c.apply(&gone)[..], [Changed::Device(Some(_), None)]));
        assert!(c.unit_devices(&Unit::Site("s2".into())).is_empty());
        assert!(c.by_label.is_empty() && c.by_label_key.is_empty());
    }

    #[test]
    fn selector_candidates_narrow_by_the_smallest_index() {
        let mut c = FleetCache::default();
        for i in 0..10 {
            let role = if i < 2 { "pos" } else { "kiosk" };
            c.put(Object::Device(device(&format!("d{i}"), "", &[("role", role), ("tier", "a")], 1)));
        }
        let mut sel = LabelSelector::default();
        sel.match_labels.insert("tier".into(), "a".into());
        sel.match_expressions.push(SelectorRequirement {
            key: "role".into(),
            operator: SelectorOperator::In,
            values: vec!["pos".into()],
        });
        assert_eq!(c.selector_candidates(&sel).unwrap().len(), 2);
        assert_eq!(c.selector_candidates(&LabelSelector::default()), None, "matches everything");
    }
}
