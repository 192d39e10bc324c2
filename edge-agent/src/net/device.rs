//! The shell around the pure network planners: keeps the address book in the state
//! database, attaches and detaches pods, and applies the ruleset when it changed
//! (and once after every start: a reboot empties the kernel's tables).

use super::ipam::AddressBook;
use super::{NetConfig, NetPlan, link};
use crate::state::StateDb;
use shared_proto::manifest::DesiredApp;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

pub struct DeviceNet {
    pub cfg: NetConfig,
    db: Option<StateDb>,
    inner: Mutex<Inner>,
}

struct Inner {
    book: AddressBook,
    /// The ruleset last applied by this process; `None` until the first sync.
    applied: Option<String>,
    peers: Vec<(String, Ipv4Addr)>,
    /// Where the hub last said the site's replicas are (kept in the state database).
    site_peers: Vec<shared_proto::wire::AppPeers>,
}

impl DeviceNet {
    /// `db` keeps the address book; without one (tests) it lives in memory.
    pub fn new(cfg: NetConfig, db: Option<StateDb>) -> DeviceNet {
        let record = db.as_ref().and_then(|d| match d.bridge_addresses() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading the bridge addresses; isolated apps get new ones");
                None
            }
        });
        let book = AddressBook::from_record(cfg.subnet, record.as_ref());
        let site_peers =
            db.as_ref().and_then(|d| d.site_peers().ok().flatten()).map(|p| p.apps).unwrap_or_default();
        DeviceNet { cfg, db, inner: Mutex::new(Inner { book, applied: None, peers: vec![], site_peers }) }
    }

    /// The hub named the site's replicas: kept durably, applied at the next sync.
    /// `false` when nothing changed.
    pub fn set_site_peers(&self, apps: Vec<shared_proto::wire::AppPeers>) -> Result<bool, String> {
        let mut inner = self.lock();
        if inner.site_peers == apps {
            return Ok(false);
        }
        if let Some(db) = &self.db {
            db.set_site_peers(&shared_proto::agent_state::SitePeers { apps: apps.clone() })
                .map_err(|e| e.to_string())?;
        }
        inner.site_peers = apps;
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Isolated apps and their addresses as of the last sync, for `/etc/hosts`.
    pub fn peers(&self) -> Vec<(String, Ipv4Addr)> {
        self.lock().peers.clone()
    }

    /// Brings addresses and the ruleset in line with the desired apps; `pods` are the
    /// apps whose pod still exists (they keep their address until it goes). Returns
    /// the plan it made.
    pub fn sync(&self, apps: &[DesiredApp], pods: &[String]) -> Result<NetPlan, String> {
        let mut inner = self.lock();
        let wanted: Vec<&str> = super::isolated(apps).map(|a| a.name.as_str()).collect();
        let keep: Vec<&str> = pods.iter().map(String::as_str).collect();
        let changed = inner.book.update(&wanted, &keep).map_err(|e| e.to_string())?;
        if changed && let Some(db) = &self.db {
            db.set_bridge_addresses(&inner.book.to_record()).map_err(|e| e.to_string())?;
        }
        let plan = super::plan(&self.cfg, apps, &inner.book, &inner.site_peers);
        inner.peers = plan.peers();
        if inner.applied.as_deref() != Some(plan.ruleset.as_str()) {
            if plan.ruleset.is_empty() {
                // No isolated app (left): our table goes, if there is one. A device
                // without nft that never ran an isolated app has nothing to remove.
                let t = &self.cfg.table;
                let script = format!("table inet {t} {{}}\ndelete table inet {t}\n");
                if let Err(e) = link::nft_apply(&script)
                    && inner.applied.is_some()
                {
                    return Err(e);
                }
            } else {
                let s = self.cfg.subnet;
                link::ensure_bridge(&self.cfg.bridge, s.gateway(), s.prefix)?;
                link::nft_apply(&plan.ruleset)?;
                tracing::info!(apps = plan.apps.len(), table = %self.cfg.table, "network rules applied");
            }
            inner.applied = Some(plan.ruleset.clone());
        }
        Ok(plan)
    }

    /// Puts the app's pod (its network namespace at `netns`) on the bridge at its
    /// address, giving it one if the last sync did not.
    pub fn attach(&self, app: &str, netns: &Path) -> Result<Ipv4Addr, String> {
        let address = {
            let mut inner = self.lock();
            let (address, new) = inner.book.assign(app).map_err(|e| e.to_string())?;
            if new && let Some(db) = &self.db {
                db.set_bridge_addresses(&inner.book.to_record()).map_err(|e| e.to_string())?;
            }
            address
        };
        let s = self.cfg.subnet;
        link::ensure_bridge(&self.cfg.bridge, s.gateway(), s.prefix)?;
        link::attach(
            &self.cfg.bridge,
            &super::veth_name(&self.cfg.bridge, app),
            netns,
            address,
            s.gateway(),
            s.prefix,
        )?;
        tracing::info!(%app, %address, bridge = %self.cfg.bridge, "pod attached to the bridge");
        Ok(address)
    }

    /// Takes the app's pod off the bridge (its address stays until the next sync
    /// finds the app neither desired nor with a pod).
    pub fn detach(&self, app: &str) -> Result<(), String> {
        link::detach(&super::veth_name(&self.cfg.bridge, app))
    }
}
