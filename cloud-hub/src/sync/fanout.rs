//! Fan-out of desired-manifest changes to the sync sessions that hold the affected
//! devices. One task reads the store's watch; each change costs a map lookup, so a
//! change for one device is O(1) work however large the fleet. The new manifest
//! travels with the news, so ten thousand sessions woken by one change do not each
//! read it back from the store.

use hub_store::Store;
use shared_proto::store::{Object, StoreKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a session is told.
#[derive(Debug, Clone, Default)]
pub enum ManifestNews {
    /// Nothing yet.
    #[default]
    None,
    /// The device's manifest is now this (`None`: deleted).
    Changed(Option<Arc<Object>>),
    /// Something may have changed (the fan-out lagged): read the store.
    ReadStore,
}

#[derive(Default)]
pub struct ManifestFanout {
    /// device → (registration id, sender of the latest news).
    sessions: Mutex<HashMap<String, (u64, watch::Sender<ManifestNews>)>>,
    next_id: Mutex<u64>,
}

/// A session's registration; dropping it does not unregister (call `unregister`).
pub struct Registration {
    pub id: u64,
    pub changes: watch::Receiver<ManifestNews>,
}

impl ManifestFanout {
    /// Registers the session now serving `device`; a newer session replaces an older one.
    pub fn register(&self, device: &str) -> Registration {
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let (tx, rx) = watch::channel(ManifestNews::None);
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(device.to_string(), (id, tx));
        Registration { id, changes: rx }
    }

    pub fn unregister(&self, device: &str, id: u64) {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if s.get(device).is_some_and(|(cur, _)| *cur == id) {
            s.remove(device);
        }
    }

    fn notify(&self, device: &str, news: ManifestNews) {
        if let Some((_, tx)) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(device) {
            tx.send_replace(news);
        }
    }

    fn notify_all(&self) {
        for (_, tx) in self.sessions.lock().unwrap_or_else(|p| p.into_inner()).values() {
            tx.send_replace(ManifestNews::ReadStore);
        }
    }

    /// Follows the store's watch until it closes.
    pub async fn run(&self, store: Store) {
        loop {
            let (_, mut rx) = store.subscribe();
            // Anything may have changed while we were not subscribed.
            self.notify_all();
            loop {
                match rx.recv().await {
                    Ok(batch) => {
                        for c in batch.changes.iter().filter(|c| c.kind == StoreKind::Manifest) {
                            self.notify(&c.name, ManifestNews::Changed(c.object.clone()));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "manifest fan-out lagged; waking every session");
                        break;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_session_replaces_the_old_and_the_old_cannot_unregister_it() {
        let f = ManifestFanout::default();
        let old = f.register("pi");
        let mut new = f.register("pi");
        f.unregister("pi", old.id);
        f.notify("pi", ManifestNews::Changed(None));
        assert!(new.changes.has_changed().unwrap());
        assert!(matches!(*new.changes.borrow_and_update(), ManifestNews::Changed(None)));
        f.unregister("pi", new.id);
        f.notify("pi", ManifestNews::ReadStore);
        assert!(!new.changes.has_changed().unwrap_or(false));
    }
}
