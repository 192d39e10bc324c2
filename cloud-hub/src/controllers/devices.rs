//! Device lifecycle: turns what the hub sees of a device's connection into the
//! device's stored status. Only transitions are written (Online ↔ Offline, a new
//! report of what runs, new facts), never heartbeats, so an idle fleet costs the
//! Raft log nothing.

use shared_proto::manifest::ObservedContainer;
use shared_proto::wire::DeviceFacts;
use shared_proto::{Device, DevicePhase, DeviceStatus, Timestamp};
use std::time::Duration;

/// What this hub knows, in memory, about one device's connection. Hubs of a cluster
/// send theirs to the leader (`crate::sync::fleet`), as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LiveDevice {
    pub connected: bool,
    /// When the connection state last changed (or the hub started, if it never
    /// saw the device).
    pub since: Timestamp,
    pub last_seen: Timestamp,
    pub facts: Option<DeviceFacts>,
    /// The last report: held revision and containers.
    pub held_revision: u64,
    pub containers: Option<Vec<ObservedContainer>>,
    /// When its offline grace starts, if later than `since`: a device whose hub went
    /// silent first gets time to notice and move to another (`crate::sync::fleet`).
    pub grace_from: Option<Timestamp>,
}

impl LiveDevice {
    /// When the offline grace of a disconnected device starts.
    pub fn grace_start(&self) -> Timestamp {
        self.grace_from.map_or(self.since, |g| g.max(self.since))
    }
}

/// The status `device` should have now, or `None` if the stored one is right.
///
/// A device that disconnects is marked Offline only after `offline_grace`, so a
/// reconnect over a flaky link does not flap its status (and the log).
pub fn device_status(
    device: &Device,
    live: &LiveDevice,
    now: Timestamp,
    offline_grace: Duration,
) -> Option<DeviceStatus> {
    let old = &device.status;
    if old.phase == DevicePhase::Decommissioned {
        // Retired for good: what it last said stays as it was.
        return None;
    }
    if old.phase == DevicePhase::Quarantined && !live.connected {
        // Waiting for an operator: only an approved renewal (or a decommission) ends it.
        return None;
    }
    let mut new = old.clone();
    if live.connected {
        new.phase = DevicePhase::Online;
    } else if old.phase == DevicePhase::Online && now.since(live.grace_start()) >= offline_grace {
        new.phase = DevicePhase::Offline;
    }
    if new.phase != old.phase {
        new.last_transition_at = Some(now);
        new.message = match new.phase {
            DevicePhase::Offline => format!("no connection since {}", live.since),
            _ => String::new(),
        };
    }
    if let Some(f) = &live.facts {
        new.arch.clone_from(&f.arch);
        new.os.clone_from(&f.os);
        new.agent_version.clone_from(&f.agent_version);
        new.capacity = f.capacity;
    }
    if let Some(containers) = &live.containers {
        new.applied_revision = live.held_revision;
        new.containers.clone_from(containers);
    }
    (new != *old).then_some(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::manifest::ContainerPhase;
    use shared_proto::{DeviceSpec, ObjectMeta};

    const GRACE: Duration = Duration::from_secs(30);

    fn device(phase: DevicePhase) -> Device {
        let mut d = Device::new(ObjectMeta::named("pi"), DeviceSpec::default());
        d.status.phase = phase;
        d
    }

    #[test]
    fn connecting_makes_a_device_online_once() {
        let live = LiveDevice { connected: true, since: Timestamp(1000), ..Default::default() };
        let s = device_status(&device(DevicePhase::Pending), &live, Timestamp(1000), GRACE).unwrap();
        assert_eq!(s.phase, DevicePhase::Online);
        assert_eq!(s.last_transition_at, Some(Timestamp(1000)));
        let mut online = device(DevicePhase::Online);
        online.status = s;
        assert_eq!(device_status(&online, &live, Timestamp(99_000), GRACE), None, "heartbeats write nothing");
    }

    #[test]
    fn a_decommissioned_device_keeps_its_status() {
        let live =
            LiveDevice { connected: true, since: Timestamp(1000), held_revision: 3, ..Default::default() };
        assert_eq!(device_status(&device(DevicePhase::Decommissioned), &live, Timestamp(1000), GRACE), None);
        let gone = LiveDevice { connected: false, ..live.clone() };
        assert_eq!(device_status(&device(DevicePhase::Quarantined), &gone, Timestamp(1000), GRACE), None);
    }

    #[test]
    fn offline_only_after_the_grace_period() {
        let live = LiveDevice { connected: false, since: Timestamp(10_000), ..Default::default() };
        let d = device(DevicePhase::Online);
        assert_eq!(device_status(&d, &live, Timestamp(39_999), GRACE), None);
        let s = device_status(&d, &live, Timestamp(40_000), GRACE).unwrap();
        assert_eq!(s.phase, DevicePhase::Offline);
        assert!(s.message.contains("no connection since"));
        // A device that never connected stays Pending.
        assert_eq!(device_status(&device(DevicePhase::Pending), &live, Timestamp(90_000), GRACE), None);
        // Given time to move first: the grace starts later, the message keeps the truth.
        let moving = LiveDevice { grace_from: Some(Timestamp(70_000)), ..live };
        assert_eq!(device_status(&d, &moving, Timestamp(99_999), GRACE), None);
        let s = device_status(&d, &moving, Timestamp(100_000), GRACE).unwrap();
        assert_eq!(s.phase, DevicePhase::Offline);
        assert!(s.message.contains(&Timestamp(10_000).to_string()), "{}", s.message);
    }

    #[test]
    fn reports_and_facts_are_recorded_when_they_change() {
        let c = ObservedContainer { app: "web".into(), phase: ContainerPhase::Running, ..Default::default() };
        let live = LiveDevice {
            connected: true,
            held_revision: 12,
            containers: Some(vec![c.clone()]),
            facts: Some(DeviceFacts { arch: "arm64".into(), ..Default::default() }),
            ..Default::default()
        };
        let s = device_status(&device(DevicePhase::Online), &live, Timestamp(5), GRACE).unwrap();
        assert_eq!(s.containers, vec![c]);
        assert_eq!(s.applied_revision, 12);
        assert_eq!(s.arch, "arm64");
    }
}
