//! The hub's in-memory view of device connections: who is connected, when we last
//! heard from them, and their latest report. Heartbeats land here and nowhere else;
//! the device controller turns changes into store writes.

use crate::controllers::devices::LiveDevice;
use shared_proto::Timestamp;
use shared_proto::manifest::ObservedContainer;
use shared_proto::wire::{DeviceFacts, UsageReport};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
struct Inner {
    devices: HashMap<String, LiveDevice>,
    /// Connection generation per device: a reconnect bumps it, so a stale session
    /// ending late cannot mark the new one disconnected.
    sessions: HashMap<String, u64>,
    next_session: u64,
    dirty: BTreeSet<String>,
    /// Changed since this hub last told the cluster's leader (`super::fleet`).
    feed_dirty: BTreeSet<String>,
    /// Each device's latest resource use and when it arrived: memory only, never the
    /// store (it moves all the time and matters only while fresh).
    usage: HashMap<String, (UsageReport, Timestamp)>,
}

/// Shared by every sync session and the device controller.
#[derive(Default)]
pub struct LivenessTable {
    inner: Mutex<Inner>,
    changed: Notify,
    feed_changed: Notify,
}

/// Identifies one session of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId(u64);

impl LivenessTable {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn touch(&self, device: &str, dirty: bool, f: impl FnOnce(&mut LiveDevice)) {
        self.with(|i| {
            f(i.devices.entry(device.to_string()).or_default());
            if dirty {
                i.dirty.insert(device.to_string());
                i.feed_dirty.insert(device.to_string());
            }
        });
        if dirty {
            self.changed.notify_one();
            self.feed_changed.notify_one();
        }
    }

    pub fn connected(
        &self,
        device: &str,
        facts: DeviceFacts,
        held_revision: u64,
        now: Timestamp,
    ) -> SessionId {
        let id = self.with(|i| {
            i.next_session += 1;
            let id = i.next_session;
            i.sessions.insert(device.to_string(), id);
            id
        });
        self.touch(device, true, |d| {
            d.connected = true;
            d.since = now;
            d.last_seen = now;
            d.facts = Some(facts);
            d.held_revision = held_revision;
        });
        SessionId(id)
    }

    pub fn heartbeat(&self, device: &str, now: Timestamp) {
        self.touch(device, false, |d| d.last_seen = now);
    }

    /// A device's containers' resource use; also proof of life.
    pub fn usage(&self, device: &str, usage: UsageReport, now: Timestamp) {
        self.touch(device, false, |d| d.last_seen = now);
        self.with(|i| i.usage.insert(device.to_string(), (usage, now)));
    }

    /// The latest usage a device sent this hub, and when.
    pub fn usage_of(&self, device: &str) -> Option<(UsageReport, Timestamp)> {
        self.with(|i| i.usage.get(device).cloned())
    }

    pub fn report(
        &self,
        device: &str,
        held_revision: u64,
        containers: Vec<ObservedContainer>,
        now: Timestamp,
    ) {
        self.touch(device, true, |d| {
            d.last_seen = now;
            d.held_revision = held_revision;
            d.containers = Some(containers);
        });
    }

    /// Ends `session`; ignored if the device has reconnected since.
    pub fn disconnected(&self, device: &str, session: SessionId, now: Timestamp) {
        let current = self.with(|i| i.sessions.get(device) == Some(&session.0));
        if current {
            self.touch(device, true, |d| {
                d.connected = false;
                d.since = now;
            });
        }
    }

    pub fn forget(&self, device: &str) {
        self.with(|i| {
            i.devices.remove(device);
            i.sessions.remove(device);
            i.feed_dirty.insert(device.to_string());
        });
        self.feed_changed.notify_one();
    }

    /// Every device this hub holds a view of, for a full report to the leader; clears
    /// the changes not yet reported (the snapshot has them).
    pub fn feed_snapshot(&self) -> Vec<(String, LiveDevice)> {
        self.with(|i| {
            i.feed_dirty.clear();
            i.devices.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        })
    }

    /// The devices whose view changed since the last report to the leader, at most
    /// `max` of them: `None` for a device this hub forgot.
    pub fn take_feed_dirty(&self, max: usize) -> Vec<(String, Option<LiveDevice>)> {
        self.with(|i| {
            let names: Vec<String> = i.feed_dirty.iter().take(max).cloned().collect();
            names
                .into_iter()
                .map(|n| {
                    i.feed_dirty.remove(&n);
                    let view = i.devices.get(&n).cloned();
                    (n, view)
                })
                .collect()
        })
    }

    /// Whether changes wait to be reported to the leader.
    pub fn has_feed_dirty(&self) -> bool {
        self.with(|i| !i.feed_dirty.is_empty())
    }

    pub async fn wait_feed_changed(&self) {
        self.feed_changed.notified().await
    }

    pub fn get(&self, device: &str) -> Option<LiveDevice> {
        self.with(|i| i.devices.get(device).cloned())
    }

    pub fn is_connected(&self, device: &str) -> bool {
        self.with(|i| i.devices.get(device).is_some_and(|d| d.connected))
    }

    pub fn last_seen(&self, device: &str) -> Option<Timestamp> {
        self.with(|i| i.devices.get(device).map(|d| d.last_seen))
    }

    /// Devices whose liveness changed since the last call.
    pub fn take_dirty(&self) -> BTreeSet<String> {
        self.with(|i| std::mem::take(&mut i.dirty))
    }

    pub async fn wait_changed(&self) {
        self.changed.notified().await
    }

    pub fn n_connected(&self) -> usize {
        self.with(|i| i.devices.values().filter(|d| d.connected).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_session_cannot_disconnect_a_reconnected_device() {
        let t = LivenessTable::default();
        let first = t.connected("pi", DeviceFacts::default(), 0, Timestamp(1));
        let second = t.connected("pi", DeviceFacts::default(), 0, Timestamp(2));
        t.disconnected("pi", first, Timestamp(3));
        assert!(t.is_connected("pi"));
        t.disconnected("pi", second, Timestamp(4));
        assert!(!t.is_connected("pi"));
        assert_eq!(t.get("pi").unwrap().since, Timestamp(4));
    }

    #[test]
    fn heartbeats_do_not_mark_dirty() {
        let t = LivenessTable::default();
        t.connected("pi", DeviceFacts::default(), 0, Timestamp(1));
        assert_eq!(t.take_dirty().len(), 1);
        t.heartbeat("pi", Timestamp(2));
        assert!(t.take_dirty().is_empty());
        assert_eq!(t.last_seen("pi"), Some(Timestamp(2)));
        t.report("pi", 3, vec![], Timestamp(3));
        assert_eq!(t.take_dirty().into_iter().collect::<Vec<_>>(), vec!["pi".to_string()]);
    }
}
