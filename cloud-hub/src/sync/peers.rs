//! Site peers: which devices of a site run which apps, ready, at which addresses, so a
//! published port of an isolated app is balanced across the site's replicas (as a
//! Kubernetes NodePort is across a cluster). Kept in memory from what connected
//! devices report (their addresses and containers), never written to the store; each
//! site has a watch its members' sessions follow, bumped only when something a member
//! would be told changed. A device learns its peers from its session
//! (`HubFrame::Peers`) and keeps them for when the hub is out of reach.

use shared_proto::manifest::{ContainerPhase, DesiredManifest, ObservedContainer};
use shared_proto::resource::NetworkMode;
use shared_proto::wire::{AppPeers, MAX_PEER_APPS, MAX_PEERS};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Debug, Default, Clone, PartialEq)]
struct Member {
    /// Its first reported address on the site's network.
    address: Option<String>,
    /// Apps whose every (non-init) container runs and is ready.
    ready: BTreeSet<String>,
    /// The session that joined, so a late leave of an older one is ignored.
    session: u64,
}

#[derive(Default)]
struct Inner {
    sites: HashMap<String, BTreeMap<String, Member>>,
    watches: HashMap<String, watch::Sender<u64>>,
    next_session: u64,
}

#[derive(Default)]
pub struct PeerDirectory {
    inner: Mutex<Inner>,
}

/// A member's place in its site, for [`PeerDirectory::leave`].
#[derive(Debug, Clone)]
pub struct Membership {
    pub site: String,
    pub device: String,
    session: u64,
}

/// Apps of `containers` whose every non-init container runs and is ready.
pub fn ready_apps(containers: &[ObservedContainer]) -> BTreeSet<String> {
    let mut all: BTreeMap<&str, bool> = BTreeMap::new();
    for c in containers.iter().filter(|c| !c.init) {
        let ok = c.phase == ContainerPhase::Running && c.ready;
        *all.entry(c.app.as_str()).or_insert(true) &= ok;
    }
    all.into_iter().filter(|(_, ok)| *ok).map(|(a, _)| a.to_string()).collect()
}

/// The device's apps that publish ports on an isolated network: the ones with peers.
pub fn published_apps(m: &DesiredManifest) -> Vec<String> {
    m.apps
        .iter()
        .filter(|a| a.network == NetworkMode::Isolated)
        .filter(|a| a.containers.iter().any(|c| c.ports.iter().any(|p| p.host_port.is_some())))
        .map(|a| a.name.clone())
        .collect()
}

/// Pure: for each of `apps`, the other members with it ready and an address.
fn peers_in(members: &BTreeMap<String, Member>, device: &str, apps: &[String]) -> Vec<AppPeers> {
    apps.iter()
        .take(MAX_PEER_APPS)
        .map(|app| AppPeers {
            app: app.clone(),
            addresses: members
                .iter()
                .filter(|(d, m)| d.as_str() != device && m.ready.contains(app))
                .filter_map(|(_, m)| m.address.clone())
                .take(MAX_PEERS)
                .collect(),
        })
        .collect()
}

impl PeerDirectory {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A device of `site` connected: its sessions follow the returned watch.
    pub fn join(&self, site: &str, device: &str) -> (Membership, watch::Receiver<u64>) {
        self.with(|i| {
            i.next_session += 1;
            let session = i.next_session;
            let members = i.sites.entry(site.to_string()).or_default();
            let m = members.entry(device.to_string()).or_default();
            m.session = session;
            let rx = i.watches.entry(site.to_string()).or_insert_with(|| watch::channel(0).0).subscribe();
            (Membership { site: site.to_string(), device: device.to_string(), session }, rx)
        })
    }

    /// The session ended: the device is no one's peer any more (unless it reconnected).
    pub fn leave(&self, m: &Membership) {
        self.edit(m, |members| {
            if members.get(&m.device).is_some_and(|x| x.session == m.session) {
                members.remove(&m.device);
            }
        });
    }

    pub fn set_address(&self, m: &Membership, addresses: &[String]) {
        let address = addresses.first().cloned();
        self.edit(m, |members| {
            if let Some(x) = members.get_mut(&m.device) {
                x.address = address;
            }
        });
    }

    pub fn set_report(&self, m: &Membership, containers: &[ObservedContainer]) {
        let ready = ready_apps(containers);
        self.edit(m, |members| {
            if let Some(x) = members.get_mut(&m.device) {
                x.ready = ready;
            }
        });
    }

    /// Applies `f` to the member's site; the site's watch moves only when it changed.
    fn edit(&self, m: &Membership, f: impl FnOnce(&mut BTreeMap<String, Member>)) {
        self.with(|i| {
            let Some(members) = i.sites.get_mut(&m.site) else { return };
            let before = members.clone();
            f(members);
            let changed = *members != before;
            let empty = members.is_empty();
            if empty {
                i.sites.remove(&m.site);
            }
            if changed && let Some(w) = i.watches.get(&m.site) {
                w.send_modify(|v| *v += 1);
            }
            if empty && i.watches.get(&m.site).is_some_and(|w| w.receiver_count() == 0) {
                i.watches.remove(&m.site);
            }
        });
    }

    /// The peers `device` should be told of, for its `apps`.
    pub fn peers_of(&self, site: &str, device: &str, apps: &[String]) -> Vec<AppPeers> {
        self.with(|i| match i.sites.get(site) {
            Some(members) => peers_in(members, device, apps),
            None => apps.iter().map(|a| AppPeers { app: a.clone(), addresses: vec![] }).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(app: &str, ready: bool) -> ObservedContainer {
        ObservedContainer {
            app: app.into(),
            name: "c".into(),
            phase: ContainerPhase::Running,
            ready,
            ..Default::default()
        }
    }

    #[test]
    fn peers_are_the_other_ready_members_of_the_site_and_changes_wake_the_site() {
        let dir = PeerDirectory::default();
        let (a, mut watch_a) = dir.join("store-1", "pi-a");
        let (b, _watch_b) = dir.join("store-1", "pi-b");
        let (c, _watch_c) = dir.join("store-2", "pi-c");
        for (m, ip) in [(&a, "192.168.1.10"), (&b, "192.168.1.11"), (&c, "192.168.2.10")] {
            dir.set_address(m, &[ip.to_string()]);
            dir.set_report(m, &[running("pos", true)]);
        }
        let apps = vec!["pos".to_string()];
        assert_eq!(dir.peers_of("store-1", "pi-a", &apps)[0].addresses, vec!["192.168.1.11".to_string()]);
        assert_eq!(
            dir.peers_of("store-2", "pi-c", &apps)[0].addresses,
            Vec::<String>::new(),
            "other sites aside"
        );
        watch_a.borrow_and_update();
        // B's app is not ready: no longer a peer, and A's session is woken.
        dir.set_report(&b, &[running("pos", false)]);
        assert!(watch_a.has_changed().unwrap());
        assert!(dir.peers_of("store-1", "pi-a", &apps)[0].addresses.is_empty());
        watch_a.borrow_and_update();
        // The same report again wakes no one.
        dir.set_report(&b, &[running("pos", false)]);
        assert!(!watch_a.has_changed().unwrap());
        // B reconnects, then its old session's leave comes late: it stays.
        dir.set_report(&b, &[running("pos", true)]);
        let (b2, _w) = dir.join("store-1", "pi-b");
        dir.leave(&b);
        assert_eq!(dir.peers_of("store-1", "pi-a", &apps)[0].addresses, vec!["192.168.1.11".to_string()]);
        dir.leave(&b2);
        assert!(dir.peers_of("store-1", "pi-a", &apps)[0].addresses.is_empty());
        dir.leave(&c);
    }

    #[test]
    fn an_app_is_ready_when_all_its_containers_are() {
        let mut side = running("pos", false);
        side.name = "side".into();
        assert!(ready_apps(&[running("pos", true), side]).is_empty());
        let mut init = running("pos", false);
        init.init = true;
        init.phase = ContainerPhase::Exited;
        assert_eq!(ready_apps(&[running("pos", true), init]), BTreeSet::from(["pos".to_string()]));
    }
}
