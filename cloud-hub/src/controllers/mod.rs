//! Controllers: the scheduler, the manifest planner, device lifecycle and app status.
//! Each is a pure function in its own module; [`planner::Planner`] combines them
//! incrementally over a [`cache::FleetCache`], and [`run`] is the thin async loop that
//! feeds the planner from the store's watch and the fleet's liveness (this hub's table
//! merged with the other hubs' reports, `crate::sync::fleet`), runs passes on the Raft
//! leader, and writes what they plan.
//!
//! Data flow:
//!
//! ```text
//!  store watch ──ChangeBatch──▶ FleetCache.apply ──Changed──▶ Planner (marks units,
//!  fleet liveness ──dirty devices─────────────────────────▶   manifests, rows, sites)
//!                                                               │ plan(now)
//!                          store.write(Each chunk) ◀── PassPlan ┘
//!                          outcome (conflicts) ──▶ Planner.handle_outcome (retry those)
//! ```
//!
//! A watch that lags is not trusted: the cache is loaded again and everything
//! planned once, so a missed change (a deletion, say) is never missed for long.

pub mod apps;
pub mod cache;
pub mod devices;
pub mod explain;
pub mod manifests;
pub mod planner;
pub mod scheduler;

use crate::metrics::HubMetrics;
use crate::sync::fleet::FleetLiveness;
use cache::FleetCache;
use futures::StreamExt;
use hub_store::Store;
use planner::Planner;
use shared_proto::clock::SharedClock;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Tunables of the controller loop.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a device may stay disconnected before it is marked Offline.
    pub offline_grace: Duration,
    /// After this hub starts (or takes over as leader), how long devices it has not
    /// heard from yet have to come back before they count as disconnected. A restarted
    /// hub sees the whole fleet return over tens of seconds; marking it Offline and
    /// Online again would cost two writes per device for nothing.
    pub startup_grace: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { offline_grace: Duration::from_secs(30), startup_grace: Duration::from_secs(90) }
    }
}

/// With nothing to do, a pass runs this often anyway (cheap: nothing is dirty).
const IDLE_PASS: Duration = Duration::from_secs(30);
/// Controller writes in flight at once.
const WRITES_IN_FLIGHT: usize = 8;
/// Conflicted writes are planned again no later than this.
const RETRY_AFTER_CONFLICT: Duration = Duration::from_millis(500);

/// Why the inner loop stopped.
enum Stop {
    /// Load the cache again: the watch lagged, or leadership may have moved.
    Relist,
    /// The store closed or the hub is shutting down.
    Done,
}

/// Runs the controllers whenever this hub leads, until `shutdown` flips.
pub async fn run(
    store: Store,
    live: Arc<FleetLiveness>,
    clock: SharedClock,
    cfg: ControllerConfig,
    metrics: Arc<HubMetrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut grace_until = clock.now().saturating_add(cfg.startup_grace);
    let mut leading = false;
    let mut leader = store.leader();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !store.is_leader() {
            leading = false;
            tokio::select! {
                _ = leader.changed() => continue,
                _ = shutdown.changed() => continue,
            }
        }
        if !leading {
            // Taking over: the other hubs' views come again, and the devices the old
            // leader held need time to notice and reconnect somewhere.
            leading = true;
            live.lead_started();
            grace_until = grace_until.max(clock.now().saturating_add(cfg.startup_grace));
        }
        // Subscribe before loading, so nothing written in between is missed.
        let (_, mut rx) = store.subscribe();
        let cache = match FleetCache::load(&store) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "controllers cannot read the store; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!(devices = cache.devices.len(), apps = cache.apps.len(), "controllers running");
        let mut planner = Planner::new(cache, cfg.clone(), grace_until);
        match lead(&store, &live, &clock, &metrics, &mut planner, &mut rx, &mut leader, &mut shutdown).await {
            Stop::Relist => continue,
            Stop::Done => return,
        }
    }
}

/// CPU time this thread has used: a pass runs on one thread, without awaiting.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[allow(clippy::too_many_arguments)]
async fn lead(
    store: &Store,
    live: &FleetLiveness,
    clock: &SharedClock,
    metrics: &HubMetrics,
    planner: &mut Planner,
    rx: &mut tokio::sync::broadcast::Receiver<Arc<hub_store::ChangeBatch>>,
    leader: &mut tokio::sync::watch::Receiver<Option<hub_store::NodeId>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Stop {
    while store.is_leader() && !*shutdown.borrow() {
        let (cpu0, wall0) = (thread_cpu_time(), std::time::Instant::now());
        let mut lap_start = std::time::Instant::now();
        let (dirty, hubs_due) = live.take_dirty(clock.now());
        let plan = planner.plan_with_laps(clock.now(), &|d| live.get(d), dirty, &mut |c| {
            let now = std::time::Instant::now();
            metrics.controller_pass(c, now.duration_since(lap_start));
            lap_start = now;
        });
        let s = planner.stats;
        if s != planner::PassStats::default() {
            tracing::debug!(
                cpu_us = thread_cpu_time().saturating_sub(cpu0).as_micros() as u64,
                wall_us = wall0.elapsed().as_micros() as u64,
                units = s.n_units,
                manifests = s.n_manifests,
                devices = s.n_devices,
                rows = s.n_rows,
                apps = s.n_apps,
                sites = s.n_sites,
                writes = plan.writes.len(),
                "controller pass"
            );
        }
        // The writes are independent: in flight together, Raft batches them into
        // fewer log appends (and fsyncs) than one after the other.
        let results = futures::stream::iter(plan.writes.into_iter().map(|write| async move {
            let outcome = store.write(write.clone()).await;
            (write, outcome)
        }))
        .buffered(WRITES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
        for (write, outcome) in results {
            match outcome {
                Ok(outcome) => planner.handle_outcome(&write, Ok(&outcome)),
                Err(e) => {
                    tracing::warn!(error = %e, "controller write failed; will retry");
                    planner.handle_outcome(&write, Err(()));
                }
            }
        }
        let wake_at = match (plan.wake_at, hubs_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut wait = wake_at.map_or(IDLE_PASS, |w| w.since(clock.now()).max(Duration::from_millis(10)));
        if planner.has_retries() {
            wait = wait.min(RETRY_AFTER_CONFLICT);
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(batch) => planner.handle_batch(&batch),
                Err(RecvError::Lagged(n)) => {
                    tracing::info!(missed = n, "controller watch lagged; loading the store again");
                    return Stop::Relist;
                }
                Err(RecvError::Closed) => return Stop::Done,
            },
            _ = live.wait_changed() => {}
            _ = tokio::time::sleep(wait) => {}
            // The watch follows every applied write, leader or not: only a lost
            // leadership stops the loop (and the cache stays good for the next).
            _ = leader.changed() => if !store.is_leader() { return Stop::Relist },
            _ = shutdown.changed() => {}
        }
        // Take everything else already queued, so one pass covers a burst.
        loop {
            match rx.try_recv() {
                Ok(batch) => planner.handle_batch(&batch),
                Err(TryRecvError::Lagged(n)) => {
                    tracing::info!(missed = n, "controller watch lagged; loading the store again");
                    return Stop::Relist;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return Stop::Done,
            }
        }
    }
    if *shutdown.borrow() { Stop::Done } else { Stop::Relist }
}
