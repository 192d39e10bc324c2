//! What a token scoped to sites may see and change. Pure: the handlers ask, with the
//! objects they read, and answer 403 for anything outside the scope (lists leave it out).
//!
//! A site's objects: the site itself, its devices (and their manifests), its
//! enrolment tokens, and the apps placed only within it. Apps placed fleet-wide or
//! across other sites are visible when they reach one of the token's sites, never
//! changeable. Images are fleet-wide: visible, imported only by unscoped tokens.

use shared_proto::store::{EnrolmentTokenRecord, Object};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every site.
    All,
    /// Only these.
    Sites(BTreeSet<String>),
}

impl Scope {
    pub fn from_sites(sites: &[String]) -> Scope {
        if sites.is_empty() { Scope::All } else { Scope::Sites(sites.iter().cloned().collect()) }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Scope::All)
    }

    /// Whether `site` is one of the scope's (an empty site belongs to no scope).
    pub fn has_site(&self, site: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Sites(s) => s.contains(site),
        }
    }

    /// Whether the caller may read `o`.
    pub fn sees(&self, o: &Object) -> bool {
        let Scope::Sites(sites) = self else { return true };
        match o {
            Object::App(a) => {
                let placed = &a.spec.placement.sites;
                placed.is_empty() || placed.iter().any(|s| sites.contains(s))
            }
            Object::Image(_) => true,
            _ => self.may_change(o),
        }
    }

    /// Whether the caller may create, change or delete `o`.
    pub fn may_change(&self, o: &Object) -> bool {
        let Scope::Sites(sites) = self else { return true };
        match o {
            Object::Site(s) => sites.contains(&s.metadata.name),
            Object::Device(d) => sites.contains(&d.spec.site),
            Object::App(a) => {
                let placed = &a.spec.placement.sites;
                !placed.is_empty() && placed.iter().all(|s| sites.contains(s))
            }
            Object::EnrolmentToken(t) => self.token_in_scope(t),
            // Images, manifests (the controllers' own) and the hub's records.
            _ => false,
        }
    }

    pub fn token_in_scope(&self, t: &EnrolmentTokenRecord) -> bool {
        self.has_site(&t.site)
    }

    /// Says what the scope is, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Scope::All => "every site".into(),
            Scope::Sites(s) => format!("sites {}", s.iter().cloned().collect::<Vec<_>>().join(", ")),
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
            assert!(Scope::All.sees(&o) && Scope::All.may_change(&o));
        }
    }
}
