//! What a token scoped to sites or namespaces may see and change. Pure: the handlers
//! ask, with the objects they read, and answer 403 for anything outside the scope
//! (lists leave it out).
//!
//! A site's objects: the site itself, its devices (and their manifests), its
//! enrolment tokens, and the apps placed only within it. Apps placed fleet-wide or
//! across other sites are visible when they reach one of the token's sites, never
//! changeable. Configs and secrets are not placed, so a site-scoped token sees none.
//!
//! A namespace's objects: its apps, configs and secrets. A token scoped to namespaces
//! sees and changes those (within its sites, if it has sites too) and sees the fleet's
//! sites, devices and images, but changes none of them: they are shared by every
//! namespace.
//!
//! Images are fleet-wide: visible, imported only by unscoped tokens.

use shared_proto::store::{EnrolmentTokenRecord, Object};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    /// `None`: every site.
    pub sites: Option<BTreeSet<String>>,
    /// `None`: every namespace.
    pub namespaces: Option<BTreeSet<String>>,
}

fn set_of(names: &[String]) -> Option<BTreeSet<String>> {
    if names.is_empty() { None } else { Some(names.iter().cloned().collect()) }
}

impl Scope {
    /// Every site and namespace.
    pub const ALL: Scope = Scope { sites: None, namespaces: None };

    /// A token's scope from its record (an empty list: no limit).
    pub fn of(sites: &[String], namespaces: &[String]) -> Scope {
        Scope { sites: set_of(sites), namespaces: set_of(namespaces) }
    }

    pub fn from_sites(sites: &[String]) -> Scope {
        Scope::of(sites, &[])
    }

    /// Neither sites nor namespaces limit it.
    pub fn is_all(&self) -> bool {
        self.sites.is_none() && self.namespaces.is_none()
    }

    /// Whether `site` is one of the scope's (an empty site belongs to no scope).
    pub fn has_site(&self, site: &str) -> bool {
        self.sites.as_ref().is_none_or(|s| s.contains(site))
    }

    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|n| n.contains(namespace))
    }

    fn in_namespace(&self, o: &Object) -> bool {
        match o.metadata() {
            Some(meta) if o.kind().is_namespaced() => self.has_namespace(&meta.namespace),
            _ => true,
        }
    }

    /// Whether the caller may read `o`.
    pub fn sees(&self, o: &Object) -> bool {
        if !self.in_namespace(o) {
            return false;
        }
        let Some(sites) = &self.sites else { return true };
        match o {
            Object::App(a) => {
                let placed = &a.spec.placement.sites;
                placed.is_empty() || placed.iter().any(|s| sites.contains(s))
            }
            Object::Image(_) => true,
            _ => self.within_sites(o),
        }
    }

    /// Whether the caller may create, change or delete `o`.
    pub fn may_change(&self, o: &Object) -> bool {
        if self.is_all() {
            return true;
        }
        if o.kind().is_namespaced() {
            self.in_namespace(o) && self.within_sites(o)
        } else {
            // Sites, devices and enrolment tokens serve every namespace.
            self.namespaces.is_none() && self.within_sites(o)
        }
    }

    /// Whether `o` belongs to the token's sites (anything does when it has none).
    fn within_sites(&self, o: &Object) -> bool {
        let Some(sites) = &self.sites else { return true };
        match o {
            Object::Site(s) => sites.contains(&s.metadata.name),
            Object::Device(d) => sites.contains(&d.spec.site),
            Object::App(a) => {
                let placed = &a.spec.placement.sites;
                !placed.is_empty() && placed.iter().all(|s| sites.contains(s))
            }
            Object::EnrolmentToken(t) => self.token_in_scope(t),
            // Configs and secrets (placed nowhere), images, manifests (the
            // controllers' own) and the hub's records.
            _ => false,
        }
    }

    pub fn token_in_scope(&self, t: &EnrolmentTokenRecord) -> bool {
        self.namespaces.is_none() && self.has_site(&t.site)
    }

    /// Says what the scope is, for error messages.
    pub fn describe(&self) -> String {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        match (&self.sites, &self.namespaces) {
            (None, None) => "every site and namespace".into(),
            (Some(s), None) => format!("sites {}", list(s)),
            (None, Some(n)) => format!("namespaces {}", list(n)),
            (Some(s), Some(n)) => format!("sites {} and namespaces {}", list(s), list(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::{App, AppSpec, Device, DeviceSpec, Image, ObjectMeta, Placement, Site, SiteSpec};

    fn scope_a() -> Scope {
        Scope::from_sites(&["a".to_string()])
    }

    fn app(sites: &[&str]) -> Object {
        Object::App(App::new(
            ObjectMeta::named("web"),
            AppSpec {
                placement: Placement {
                    sites: sites.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                ..Default::default()
            },
        ))
    }

    fn device(site: &str) -> Object {
        Object::Device(Device::new(
            ObjectMeta::named("pi"),
            DeviceSpec { site: site.into(), ..Default::default() },
        ))
    }

    #[test]
    fn a_site_scoped_token_sees_and_changes_its_sites_only() {
        let a = scope_a();
        assert!(a.sees(&device("a")) && a.may_change(&device("a")));
        assert!(!a.sees(&device("c")) && !a.may_change(&device("c")));
        assert!(!a.sees(&device("")), "a device in no site belongs to no scope");
        let site = |n: &str| Object::Site(Site::new(ObjectMeta::named(n), SiteSpec::default()));
        assert!(a.may_change(&site("a")) && !a.sees(&site("c")));
        // Apps: visible when they reach the scope, changeable only when wholly inside.
        assert!(a.sees(&app(&["a"])) && a.may_change(&app(&["a"])));
        assert!(a.sees(&app(&["a", "c"])) && !a.may_change(&app(&["a", "c"])));
        assert!(a.sees(&app(&[])) && !a.may_change(&app(&[])));
        assert!(!a.sees(&app(&["c"])));
        let image = Object::Image(Image::new(ObjectMeta::named("img:1"), Default::default()));
        assert!(a.sees(&image) && !a.may_change(&image));
        for o in [device("c"), app(&[]), image, site("c")] {
            assert!(Scope::ALL.sees(&o) && Scope::ALL.may_change(&o));
        }
    }

    fn in_namespace(o: Object, namespace: &str) -> Object {
        let mut o = o;
        if let Some(m) = o.metadata_mut() {
            m.namespace = namespace.into();
        }
        o
    }

    #[test]
    fn a_namespace_scoped_token_changes_its_namespaces_only_and_no_fleet_object() {
        let pos = Scope::of(&[], &["pos".to_string()]);
        let web = |ns: &str| in_namespace(app(&[]), ns);
        assert!(pos.sees(&web("pos")) && pos.may_change(&web("pos")));
        assert!(!pos.sees(&web("default")) && !pos.may_change(&web("default")));
        let config = |ns: &str| {
            Object::Config(shared_proto::Config::new(ObjectMeta::namespaced(ns, "c"), Default::default()))
        };
        assert!(pos.sees(&config("pos")) && pos.may_change(&config("pos")));
        assert!(!pos.sees(&config("kitchen")));
        // Fleet objects: visible, never changeable.
        assert!(pos.sees(&device("a")) && !pos.may_change(&device("a")));
        let site = Object::Site(Site::new(ObjectMeta::named("a"), SiteSpec::default()));
        assert!(pos.sees(&site) && !pos.may_change(&site));
        assert!(!pos.is_all());
        // Both: the namespace's apps placed within the sites.
        let both = Scope::of(&["a".to_string()], &["pos".to_string()]);
        assert!(both.may_change(&in_namespace(app(&["a"]), "pos")));
        assert!(!both.may_change(&in_namespace(app(&["a"]), "kitchen")));
        assert!(!both.may_change(&in_namespace(app(&["c"]), "pos")));
        assert!(!both.sees(&config("pos")), "configs are placed nowhere: outside any site scope");
        assert_eq!(both.describe(), "sites a and namespaces pos");
    }
}
