//! Fleet-wide liveness across a hub cluster. Each hub holds the connections of its own
//! devices ([`LivenessTable`]); the leader's controllers must see them all. So every
//! follower reports its table to the leader over the hubs' mutually authenticated peer
//! channel (`POST /peer/v1/liveness`): a full snapshot when it starts reporting to a
//! leader, then only the devices whose view changed (connects, disconnects, reports,
//! facts; never heartbeats), with a small keep-alive every [`FEED_INTERVAL`]. The
//! leader merges the views in [`FleetLiveness`].
//!
//! A hub the leader has not heard from for [`HUB_SILENCE`] is lost: its devices count
//! as disconnected since it went silent, but their offline grace starts only when they
//! could have noticed and moved to another hub ([`MOVE_ALLOWANCE`] later). A device
//! that moves within it is never marked Offline.
//!
//! Messages carry the sender's epoch (random per start) and a sequence number. The
//! leader takes a delta only if it follows the last message it took from that epoch;
//! otherwise it answers `resync` and the sender starts again with a full snapshot. A
//! hub that becomes leader starts with no remote views: its followers' next messages
//! are refused and they resync within one interval, while the planner's takeover grace
//! covers the devices it has not heard of yet.
//!
//! The merge is pure ([`merge`], [`Remote`]); [`run_feed`] and the route are its I/O.

use super::liveness::LivenessTable;
use crate::controllers::devices::LiveDevice;
use hub_store::Store;
use serde::{Deserialize, Serialize};
use shared_proto::Timestamp;
use shared_proto::clock::SharedClock;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A follower tells the leader at least this often, with nothing changed.
pub const FEED_INTERVAL: Duration = Duration::from_secs(2);
/// A hub unheard this long is lost.
pub const HUB_SILENCE: Duration = Duration::from_secs(8);
/// After its hub went silent, how long a device has to notice (its link's idle
/// timeout) and reconnect to another hub, before its offline grace starts.
pub const MOVE_ALLOWANCE: Duration =
    Duration::from_secs(shared_proto::wire::LINK_IDLE_TIMEOUT.as_secs() + 10);
/// A lost hub's views are dropped after this long (its devices were marked Offline
/// long before, or came back elsewhere).
const FORGET_LOST_HUB: Duration = Duration::from_secs(3600);
/// Most devices in one message.
pub const MAX_FEED_DEVICES: usize = 1000;
/// Largest message body the leader reads.
pub const MAX_FEED_BYTES: usize = 16 << 20;
/// Format of the messages (hubs of one cluster may differ by a version during an
/// upgrade; a field added later must default).
const FEED_VERSION: u32 = 1;
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// One message from a follower to the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedMessage {
    pub version: u32,
    /// The sender's node id.
    pub hub: u64,
    /// Random per start of the sender.
    pub epoch: u64,
    pub seq: u64,
    /// Starts a full snapshot: the views that follow (until `last`) replace the
    /// sender's.
    pub full: bool,
    /// Ends a full snapshot (always true on a delta).
    pub last: bool,
    /// `None`: the sender forgot the device (it was deleted).
    pub devices: Vec<(String, Option<LiveDevice>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedReply {
    /// The leader lost track: send a full snapshot.
    pub resync: bool,
}

/// The device's view to act on, from every hub's (`lost_at`: when its hub went
/// silent, if it did). The newest connection wins; with none, the newest
/// disconnection. A lost hub's connected device counts as disconnected since the hub
/// went silent, with its offline grace from [`MOVE_ALLOWANCE`] later.
pub fn merge<'a>(views: impl IntoIterator<Item = (&'a LiveDevice, Option<Timestamp>)>) -> Option<LiveDevice> {
    let mut best: Option<LiveDevice> = None;
    for (view, lost_at) in views {
        let mut v = view.clone();
        if let Some(at) = lost_at
            && v.connected
        {
            v.connected = false;
            v.since = at;
            v.grace_from = Some(at.saturating_add(MOVE_ALLOWANCE));
        }
        let better = match &best {
            None => true,
            Some(b) => (v.connected, v.since) > (b.connected, b.since),
        };
        if better {
            best = Some(v);
        }
    }
    best
}

#[derive(Debug, Default)]
struct RemoteHub {
    epoch: u64,
    seq: u64,
    last_heard: Timestamp,
    /// When it went silent, if it did.
    lost_at: Option<Timestamp>,
    devices: HashMap<String, LiveDevice>,
    /// A full snapshot arriving in parts, swapped in with its last.
    pending: Option<HashMap<String, LiveDevice>>,
}

/// The other hubs' views, as the leader holds them. Pure: time comes in.
#[derive(Debug, Default)]
pub struct Remote {
    hubs: HashMap<u64, RemoteHub>,
    dirty: BTreeSet<String>,
}

impl Remote {
    /// Takes one message; `false`: refused, the sender must resync.
    pub fn receive(&mut self, msg: FeedMessage, now: Timestamp) -> bool {
        if !msg.full {
            let follows = self.hubs.get(&msg.hub).is_some_and(|h| {
                h.epoch == msg.epoch && msg.seq == h.seq + 1 && (h.lost_at.is_none() || h.pending.is_some())
            });
            if !follows {
                return false;
            }
        }
        let hub = self.hubs.entry(msg.hub).or_default();
        hub.last_heard = now;
        hub.epoch = msg.epoch;
        hub.seq = msg.seq;
        if msg.full {
            hub.pending = Some(HashMap::new());
        }
        let Some(pending) = hub.pending.as_mut() else {
            for (name, view) in msg.devices {
                match view {
                    Some(v) => hub.devices.insert(name.clone(), v),
                    None => hub.devices.remove(&name),
                };
                self.dirty.insert(name);
            }
            return true;
        };
        pending.extend(msg.devices.into_iter().filter_map(|(n, v)| v.map(|v| (n, v))));
        if msg.last {
            let new = hub.pending.take().unwrap_or_default();
            let was_lost = hub.lost_at.take();
            let old = std::mem::replace(&mut hub.devices, new);
            self.dirty.extend(hub.devices.keys().cloned());
            for (name, before) in old {
                // Connected there, and gone without its session ending (the hub
                // restarted): disconnected from now, with time to come back.
                if before.connected && !hub.devices.contains_key(&name) {
                    let since = was_lost.unwrap_or(now);
                    let grace_from = Some(since.saturating_add(MOVE_ALLOWANCE));
                    hub.devices
                        .insert(name.clone(), LiveDevice { connected: false, since, grace_from, ..before });
                }
                self.dirty.insert(name);
            }
        }
        true
    }

    /// Marks hubs silent for [`HUB_SILENCE`] as lost, and forgets long-lost ones;
    /// returns when to look again.
    pub fn tick(&mut self, now: Timestamp) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut forget = vec![];
        for (id, hub) in &mut self.hubs {
            match hub.lost_at {
                None => {
                    let due = hub.last_heard.saturating_add(HUB_SILENCE);
                    if now >= due {
                        tracing::warn!(
                            hub = id,
                            "a hub of the cluster went silent; its devices count as moving"
                        );
                        hub.lost_at = Some(hub.last_heard);
                        hub.pending = None;
                        self.dirty.extend(hub.devices.keys().cloned());
                    } else {
                        next = Some(next.map_or(due, |n| n.min(due)));
                    }
                }
                Some(at) if now >= at.saturating_add(FORGET_LOST_HUB) => forget.push(*id),
                Some(_) => {}
            }
        }
        for id in forget {
            if let Some(hub) = self.hubs.remove(&id) {
                self.dirty.extend(hub.devices.into_keys());
            }
        }
        next
    }

    /// Every remote view of `device`, with its hub's loss time.
    fn views<'a>(
        &'a self,
        device: &'a str,
    ) -> impl Iterator<Item = (&'a LiveDevice, Option<Timestamp>)> + 'a {
        self.hubs.values().filter_map(move |h| h.devices.get(device).map(|v| (v, h.lost_at)))
    }

    pub fn take_dirty(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty)
    }

    /// Devices connected through other hubs that are not lost.
    pub fn n_connected(&self) -> usize {
        self.hubs
            .values()
            .filter(|h| h.lost_at.is_none())
            .map(|h| h.devices.values().filter(|d| d.connected).count())
            .sum()
    }
}

/// This hub's devices and, on the leader, the other hubs' views of theirs.
pub struct FleetLiveness {
    pub local: Arc<LivenessTable>,
    remote: Mutex<Remote>,
    changed: Notify,
}

impl FleetLiveness {
    pub fn new(local: Arc<LivenessTable>) -> FleetLiveness {
        FleetLiveness { local, remote: Mutex::new(Remote::default()), changed: Notify::new() }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Remote) -> R) -> R {
        f(&mut self.remote.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// This hub starts leading: views the other hubs sent earlier may be stale.
    pub fn lead_started(&self) {
        self.with(|r| *r = Remote::default());
    }

    pub fn receive(&self, msg: FeedMessage, now: Timestamp) -> FeedReply {
        let taken = self.with(|r| r.receive(msg, now));
        if taken {
            self.changed.notify_one();
        }
        FeedReply { resync: !taken }
    }

    /// The merged view of `device`.
    pub fn get(&self, device: &str) -> Option<LiveDevice> {
        let local = self.local.get(device);
        self.with(|r| merge(local.as_ref().map(|l| (l, None)).into_iter().chain(r.views(device))))
    }

    /// Devices whose merged view may have changed since the last call, and when hubs'
    /// silence is next due to be checked.
    pub fn take_dirty(&self, now: Timestamp) -> (BTreeSet<String>, Option<Timestamp>) {
        let mut dirty = self.local.take_dirty();
        let next = self.with(|r| {
            let next = r.tick(now);
            dirty.extend(r.take_dirty());
            next
        });
        (dirty, next)
    }

    pub async fn wait_changed(&self) {
        tokio::select! {
            _ = self.local.wait_changed() => {}
            _ = self.changed.notified() => {}
        }
    }

    /// Devices connected to any hub the leader hears from.
    pub fn n_connected(&self) -> usize {
        self.local.n_connected() + self.with(|r| r.n_connected())
    }
}

/// The leader's side: `POST /peer/v1/liveness`.
pub fn peer_routes(fleet: Arc<FleetLiveness>, clock: SharedClock) -> axum::Router {
    use axum::extract::{DefaultBodyLimit, State};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    async fn take(
        State((fleet, clock)): State<(Arc<FleetLiveness>, SharedClock)>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        match serde_json::from_slice::<FeedMessage>(&body) {
            Ok(msg) if msg.devices.len() <= MAX_FEED_DEVICES => {
                axum::Json(fleet.receive(msg, clock.now())).into_response()
            }
            Ok(msg) => (StatusCode::BAD_REQUEST, format!("{} devices in one message", msg.devices.len()))
                .into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, format!("not a liveness report: {e}")).into_response(),
        }
    }
    async fn usage(
        State((fleet, _)): State<(Arc<FleetLiveness>, SharedClock)>,
        axum::extract::Path(device): axum::extract::Path<String>,
    ) -> axum::response::Response {
        match fleet.local.usage_of(&device) {
            Some((usage, at)) => axum::Json(PeerUsage { usage, at }).into_response(),
            None => (StatusCode::NOT_FOUND, "this hub has no usage of that device").into_response(),
        }
    }
    axum::Router::new()
        .route("/peer/v1/liveness", axum::routing::post(take))
        .route("/peer/v1/usage/{device}", axum::routing::get(usage))
        .layer(DefaultBodyLimit::max(MAX_FEED_BYTES))
        .with_state((fleet, clock))
}

/// A device's latest resource use as the hub it is connected to holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerUsage {
    pub usage: shared_proto::wire::UsageReport,
    pub at: Timestamp,
}

/// How long a peer has to answer for a device's usage.
const USAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// A device's latest resource use from the other hubs (usage stays in the memory of the
/// hub the device reports to): the newest any of them holds.
pub async fn usage_from_peers(
    store: &Store,
    device: &str,
) -> Option<(shared_proto::wire::UsageReport, Timestamp)> {
    let st = store.status();
    let peers: Vec<u64> =
        st.voters.keys().chain(st.learners.keys()).copied().filter(|id| *id != st.node_id).collect();
    let path = format!("/peer/v1/usage/{device}");
    let asks = peers.into_iter().map(|peer| {
        let path = path.clone();
        async move {
            let resp = store.peer_get(peer, &path, USAGE_TIMEOUT).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let bytes = resp.bytes().await.ok()?;
            // A usage report is bounded by the agent's frame limit.
            if bytes.len() > shared_proto::wire::MAX_FRAME_BYTES {
                return None;
            }
            serde_json::from_slice::<PeerUsage>(&bytes).ok()
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().max_by_key(|u| u.at).map(|u| (u.usage, u.at))
}

/// The follower's side: reports this hub's table to whichever hub leads, until the
/// store closes.
pub async fn run_feed(store: Store, local: Arc<LivenessTable>) {
    let me = store.node_id();
    let epoch = {
        let mut b = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        u64::from_le_bytes(b)
    };
    let mut seq = 0u64;
    let mut leader_rx = store.leader();
    loop {
        if store.is_closed() {
            return;
        }
        let leader = *leader_rx.borrow_and_update();
        let Some(leader) = leader.filter(|l| *l != me) else {
            // Leading (the controllers read the table directly) or no leader yet.
            if leader_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        match feed_leader(&store, &local, leader, epoch, &mut seq, &mut leader_rx).await {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(leader, error = %format!("{e:#}"), "reporting liveness to the leader; starting again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn send(store: &Store, leader: u64, msg: &FeedMessage) -> anyhow::Result<FeedReply> {
    let body = serde_json::to_vec(msg)?;
    let resp = store.peer_post(leader, "/peer/v1/liveness", body, SEND_TIMEOUT).await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        anyhow::bail!("the leader answered {status}: {}", text.chars().take(200).collect::<String>());
    }
    let bytes = resp.bytes().await?;
    if bytes.len() > 4096 {
        anyhow::bail!("an answer of {} bytes", bytes.len());
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Feeds `leader` until leadership moves (`Ok`) or a message fails (`Err`).
async fn feed_leader(
    store: &Store,
    local: &LivenessTable,
    leader: u64,
    epoch: u64,
    seq: &mut u64,
    leader_rx: &mut tokio::sync::watch::Receiver<Option<u64>>,
) -> anyhow::Result<()> {
    let me = store.node_id();
    let message = |seq: u64, full: bool, last: bool, devices| FeedMessage {
        version: FEED_VERSION,
        hub: me,
        epoch,
        seq,
        full,
        last,
        devices,
    };
    // The full snapshot, in parts.
    let snapshot = local.feed_snapshot();
    let mut parts = snapshot.chunks(MAX_FEED_DEVICES).peekable();
    let mut first = true;
    loop {
        let part = parts.next().unwrap_or(&[]);
        let last = parts.peek().is_none();
        *seq += 1;
        let devices = part.iter().map(|(n, v)| (n.clone(), Some(v.clone()))).collect();
        if send(store, leader, &message(*seq, first, last, devices)).await?.resync {
            anyhow::bail!("the leader refused a full snapshot");
        }
        first = false;
        if last {
            break;
        }
    }
    tracing::debug!(leader, devices = snapshot.len(), "reported this hub's devices to the leader");
    loop {
        if !local.has_feed_dirty() {
            tokio::select! {
                _ = local.wait_feed_changed() => {}
                _ = tokio::time::sleep(FEED_INTERVAL) => {}
                changed = leader_rx.changed() => {
                    if changed.is_err() || *leader_rx.borrow() != Some(leader) {
                        return Ok(());
                    }
                }
            }
        }
        if *leader_rx.borrow() != Some(leader) {
            return Ok(());
        }
        let devices = local.take_feed_dirty(MAX_FEED_DEVICES);
        *seq += 1;
        // On a failure they are not lost: the snapshot that starts the next round has them.
        if send(store, leader, &message(*seq, false, true, devices)).await?.resync {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn live(connected: bool, since: u64) -> LiveDevice {
        LiveDevice { connected, since: Timestamp(since * S), ..Default::default() }
    }

    fn msg(
        hub: u64,
        epoch: u64,
        seq: u64,
        full: bool,
        last: bool,
        devices: &[(&str, Option<LiveDevice>)],
    ) -> FeedMessage {
        FeedMessage {
            version: FEED_VERSION,
            hub,
            epoch,
            seq,
            full,
            last,
            devices: devices.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(),
        }
    }

    fn view(r: &Remote, device: &str) -> Option<LiveDevice> {
        merge(r.views(device))
    }

    #[test]
    fn the_newest_connection_wins_and_a_lost_hub_s_devices_get_the_allowance() {
        let on2 = live(true, 10);
        let off3 = live(false, 20);
        assert_eq!(merge([(&on2, None), (&off3, None)]).unwrap(), on2, "connected anywhere is connected");
        let on3 = live(true, 30);
        assert_eq!(merge([(&on2, None), (&on3, None)]).unwrap(), on3);
        let lost = merge([(&on2, Some(Timestamp(50 * S)))]).unwrap();
        assert!(!lost.connected);
        assert_eq!(lost.since, Timestamp(50 * S), "last heard of through its hub");
        assert_eq!(lost.grace_start(), Timestamp(50 * S).saturating_add(MOVE_ALLOWANCE));
        assert_eq!(merge(std::iter::empty()), None);
    }

    #[test]
    fn deltas_follow_a_full_snapshot_and_a_gap_asks_for_another() {
        let mut r = Remote::default();
        assert!(
            !r.receive(msg(2, 7, 1, false, true, &[("pi", Some(live(true, 1)))]), Timestamp(S)),
            "no snapshot yet"
        );
        assert!(r.receive(msg(2, 7, 1, true, true, &[("pi", Some(live(true, 1)))]), Timestamp(S)));
        assert_eq!(r.take_dirty().into_iter().collect::<Vec<_>>(), ["pi"]);
        assert!(r.receive(msg(2, 7, 2, false, true, &[("pi", Some(live(false, 2)))]), Timestamp(2 * S)));
        assert_eq!(view(&r, "pi").unwrap(), live(false, 2));
        assert!(!r.receive(msg(2, 7, 4, false, true, &[]), Timestamp(3 * S)), "seq 3 went missing");
        assert!(
            !r.receive(msg(2, 8, 3, false, true, &[]), Timestamp(3 * S)),
            "another epoch: the hub restarted"
        );
        // Forgotten devices go.
        assert!(r.receive(msg(2, 7, 3, false, true, &[("pi", None)]), Timestamp(3 * S)));
        assert_eq!(view(&r, "pi"), None);
    }

    #[test]
    fn a_snapshot_in_parts_replaces_the_views_only_when_complete() {
        let mut r = Remote::default();
        assert!(r.receive(
            msg(2, 1, 1, true, true, &[("a", Some(live(true, 1))), ("b", Some(live(true, 1)))]),
            Timestamp(S)
        ));
        r.take_dirty();
        // The hub restarted (new epoch) and holds only `a` again, sent in two parts.
        assert!(r.receive(msg(2, 2, 1, true, false, &[]), Timestamp(5 * S)));
        assert_eq!(view(&r, "b").unwrap(), live(true, 1), "unchanged until the last part");
        assert!(r.receive(msg(2, 2, 2, false, true, &[("a", Some(live(true, 4)))]), Timestamp(5 * S)));
        assert_eq!(view(&r, "a").unwrap(), live(true, 4));
        let b = view(&r, "b").unwrap();
        assert!(!b.connected, "dropped by the restart");
        assert_eq!(
            b.grace_start(),
            Timestamp(5 * S).saturating_add(MOVE_ALLOWANCE),
            "with time to come back"
        );
        assert_eq!(r.take_dirty().into_iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn a_silent_hub_is_lost_then_forgotten_and_comes_back_with_a_snapshot() {
        let mut r = Remote::default();
        assert!(r.receive(msg(3, 1, 1, true, true, &[("pi", Some(live(true, 1)))]), Timestamp(10 * S)));
        r.take_dirty();
        let due = r.tick(Timestamp(11 * S)).unwrap();
        assert_eq!(due, Timestamp(10 * S).saturating_add(HUB_SILENCE));
        assert!(r.take_dirty().is_empty());
        assert_eq!(r.tick(due), None);
        assert_eq!(r.take_dirty().into_iter().collect::<Vec<_>>(), ["pi"]);
        let v = view(&r, "pi").unwrap();
        assert!(!v.connected);
        assert_eq!(
            v.grace_start(),
            Timestamp(10 * S).saturating_add(MOVE_ALLOWANCE),
            "from when it went silent"
        );
        assert_eq!(r.n_connected(), 0);
        // A delta from a lost hub is refused: it must resync.
        assert!(!r.receive(msg(3, 1, 2, false, true, &[]), Timestamp(20 * S)));
        assert!(r.receive(msg(3, 1, 2, true, true, &[("pi", Some(live(true, 19)))]), Timestamp(20 * S)));
        assert_eq!(view(&r, "pi").unwrap(), live(true, 19));
        assert_eq!(r.n_connected(), 1);
        // Long lost: forgotten.
        r.tick(Timestamp(20 * S).saturating_add(HUB_SILENCE));
        r.take_dirty();
        r.tick(Timestamp(20 * S).saturating_add(FORGET_LOST_HUB).saturating_add(HUB_SILENCE));
        assert_eq!(view(&r, "pi"), None);
        assert_eq!(r.take_dirty().into_iter().collect::<Vec<_>>(), ["pi"]);
    }
}
