//! Carries out what [`crate::reconcile`] decides, against a [`ContainerRuntime`] and
//! a [`Host`] (the device's filesystems and namespaces), and keeps what the pure core
//! needs to see next time: exits, restart back-off, pulls, probe verdicts. It decides
//! nothing itself; it is generic over both so that it is tested with
//! [`agent_runtime::FakeRuntime`] and a fake host (see the tests below), while the
//! agent runs it on the real runtime helper and [`crate::host::DeviceHost`].

use crate::pull::Puller;
use crate::reconcile::{
    self, Action, Observed, ProbeRun, ProbeTracker, PullState, RestartState, RuntimeStatus, RuntimeView,
    StopPolicy,
};
use crate::state::StateDb;
use agent_runtime::{ContainerRuntime, ContainerStatus};
use shared_proto::Timestamp;
use shared_proto::agent_state::{ContainerRecord, ImageRecord};
use shared_proto::clock::SharedClock;
use shared_proto::manifest::{DesiredApp, DesiredConfig, DesiredContainer, DesiredManifest};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a post-start hook may take before the container counts as failed.
pub const POST_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What a container needs prepared before it is created.
#[derive(Debug, Clone)]
pub struct Prepare {
    pub id: String,
    pub app: DesiredApp,
    pub container: DesiredContainer,
    pub image: ImageRecord,
    /// The Configs and Secrets the container uses, with their data.
    pub configs: Vec<DesiredConfig>,
}

/// The device-side I/O around containers that is not the container runtime: root
/// filesystems and bundles, pods, volumes and devices. Blocking; the executor calls it
/// off the async threads.
pub trait Host: Send + Sync + 'static {
    /// Prepares the root filesystem and writes the OCI bundle; returns the bundle.
    /// Errors are for the operator (a volume not allowed, a missing device).
    fn prepare(&self, p: &Prepare) -> Result<PathBuf, String>;
    /// Removes what `prepare` made for `id`.
    fn release(&self, id: &str) -> Result<(), String>;
    fn create_pod(&self, app: &DesiredApp) -> Result<(), String>;
    fn remove_pod(&self, app: &str) -> Result<(), String>;
    /// Apps whose pod exists.
    fn pods(&self) -> Vec<String>;
    /// The app's network namespace, when it has one of its own.
    fn netns(&self, app: &str) -> Option<PathBuf>;
    /// Brings the device's network (isolated apps' addresses, published ports,
    /// policies, names in pods' `/etc/hosts`) in line with the desired apps. Called
    /// every pass; cheap when nothing changed.
    fn sync_network(&self, apps: &[DesiredApp]) -> Result<(), String>;
    /// The kernel killed `id` for its memory limit (asked right after it exited).
    fn oom_killed(&self, id: &str) -> bool;
    /// Ids that still have a root filesystem or a bundle here.
    fn prepared(&self) -> Vec<String>;
    /// CPU time used so far (ns) and memory in use (bytes, the working set) of a
    /// running container, from its cgroup.
    fn usage(&self, id: &str) -> Option<(u64, u64)>;
}

/// Containers removed on purpose whose exit may still be reported (bounded: an exit
/// that never comes must not pile up).
const MAX_REMOVED: usize = 256;

/// Usage is sent at most this often…
pub const USAGE_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// …unless a container came or went, then after this long…
pub const USAGE_SET_CHANGE_INTERVAL: Duration = Duration::from_secs(10);
/// …and at least this often while it runs anything, moved or not.
pub const USAGE_MAX_INTERVAL: Duration = Duration::from_secs(900);

/// Whether a new usage sample is worth sending, given the last one sent: an idle
/// device costs a few hundred bytes every 15 minutes, a busy one at most one report a
/// minute. Moves under a quarter (and under 50 millicores or 4 MiB) are noise.
pub fn usage_worth_sending(
    last: Option<&(shared_proto::wire::UsageReport, Timestamp)>,
    next: &shared_proto::wire::UsageReport,
    now: Timestamp,
) -> bool {
    let Some((prev, at)) = last else { return !next.containers.is_empty() };
    let since = now.since(*at);
    let same_set = prev.containers.len() == next.containers.len()
        && prev.containers.iter().zip(&next.containers).all(|(p, n)| p.app == n.app && p.name == n.name);
    if !same_set {
        // A container came or went: worth telling soon, but not at every crash.
        return since >= USAGE_SET_CHANGE_INTERVAL;
    }
    if since < USAGE_MIN_INTERVAL {
        return false;
    }
    if since >= USAGE_MAX_INTERVAL && !next.containers.is_empty() {
        return true;
    }
    let moved = |a: u64, b: u64, floor: u64| a.abs_diff(b) > floor.max(a.max(b) / 4);
    prev.containers.iter().zip(&next.containers).any(|(p, n)| {
        moved(u64::from(p.cpu_millis), u64::from(n.cpu_millis), 50)
            || moved(p.memory_bytes, n.memory_bytes, 4 << 20)
    })
}

/// A probe's outcome, sent back to the loop.
pub type ProbeDone = (ProbeRun, Result<(), String>);

pub struct Executor<R: ContainerRuntime + 'static, H: Host> {
    pub clock: SharedClock,
    pub runtime: Arc<R>,
    pub host: Arc<H>,
    pub db: StateDb,
    pub puller: Option<Puller>,
    images: BTreeMap<String, ImageRecord>,
    pulls: BTreeMap<String, PullState>,
    pull_failures: HashMap<String, u32>,
    restarts: BTreeMap<(String, String), RestartState>,
    exit_codes: HashMap<String, Option<i32>>,
    started_at: HashMap<String, Timestamp>,
    /// Why a container was stopped on purpose (a failed probe), for its exit.
    stopping: HashMap<String, String>,
    /// Removed on purpose: their exits are not restarts.
    removed: std::collections::HashSet<String>,
    stop_policies: BTreeMap<String, StopPolicy>,
    pull_done: mpsc::UnboundedSender<(String, Result<ImageRecord, String>)>,
    pub probes: ProbeTracker,
    probe_done: mpsc::UnboundedSender<ProbeDone>,
    /// Container exits. The helper reports an exit before it answers the next request,
    /// so draining this right after listing means no stopped container is seen
    /// without its exit code.
    pub exits: tokio::sync::broadcast::Receiver<agent_runtime::ContainerExit>,
    usage_prev: HashMap<String, (Timestamp, u64)>,
    usage_sent: Option<(shared_proto::wire::UsageReport, Timestamp)>,
    /// The last network failure logged, so a lasting one is logged once.
    network_error: Option<String>,
}

impl<R: ContainerRuntime + 'static, H: Host> Executor<R, H> {
    pub fn new(
        clock: SharedClock,
        runtime: Arc<R>,
        host: Arc<H>,
        db: StateDb,
        puller: Option<Puller>,
        pull_done: mpsc::UnboundedSender<(String, Result<ImageRecord, String>)>,
        probe_done: mpsc::UnboundedSender<ProbeDone>,
    ) -> anyhow::Result<Self> {
        let mut images = BTreeMap::new();
        for r in db.images()? {
            if std::path::Path::new(&r.rootfs).is_dir() {
                images.insert(r.manifest_digest.clone(), r);
            }
        }
        let stop_policies = db
            .containers()?
            .into_iter()
            .map(|r| {
                let policy = StopPolicy {
                    grace: Duration::from_secs(u64::from(r.grace_period_seconds)),
                    pre_stop: r.pre_stop.clone(),
                };
                (r.id, policy)
            })
            .collect();
        let exits = runtime.subscribe_exits();
        Ok(Executor {
            exits,
            usage_prev: HashMap::new(),
            usage_sent: None,
            network_error: None,
            clock,
            runtime,
            host,
            db,
            puller,
            images,
            pulls: BTreeMap::new(),
            pull_failures: HashMap::new(),
            restarts: BTreeMap::new(),
            exit_codes: HashMap::new(),
            started_at: HashMap::new(),
            stopping: HashMap::new(),
            removed: Default::default(),
            stop_policies,
            pull_done,
            probes: ProbeTracker::default(),
            probe_done,
        })
    }

    /// Marks an image as unpacked (tests, and images that arrive by other roads).
    pub fn add_image(&mut self, record: ImageRecord) {
        self.images.insert(record.manifest_digest.clone(), record);
    }

    pub async fn observe(&mut self) -> anyhow::Result<Observed> {
        let listed = self.runtime.list().await?;
        self.drain_exits();
        let mut runtime = BTreeMap::new();
        for c in listed {
            let status = match c.status {
                ContainerStatus::Creating => RuntimeStatus::Creating,
                ContainerStatus::Created => RuntimeStatus::Created,
                ContainerStatus::Running | ContainerStatus::Paused => RuntimeStatus::Running,
                ContainerStatus::Stopped => RuntimeStatus::Stopped,
            };
            let exit_code = self.exit_codes.get(&c.id).copied().flatten();
            let started_at = self.started_at.get(&c.id).copied().or(c.created_at);
            runtime.insert(c.id, RuntimeView { status, exit_code, started_at });
        }
        let host = self.host.clone();
        let pods = tokio::task::spawn_blocking(move || host.pods()).await?.into_iter().collect();
        Ok(Observed {
            runtime,
            images: self.images.keys().cloned().collect(),
            pulls: self.pulls.clone(),
            restarts: self.restarts.clone(),
            pods,
            stop_policies: self.stop_policies.clone(),
            probes: self.probes.verdicts(),
        })
    }

    /// Takes every exit already reported.
    pub fn drain_exits(&mut self) {
        use tokio::sync::broadcast::error::TryRecvError;
        loop {
            match self.exits.try_recv() {
                Ok(exit) => {
                    let now = self.clock.now();
                    self.on_exit(&exit.id, exit.exit_code, now);
                }
                Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    self.exits = self.runtime.subscribe_exits();
                    break;
                }
            }
        }
    }

    /// Records a container's exit and schedules its restart back-off.
    pub fn on_exit(&mut self, id: &str, exit_code: Option<i32>, now: Timestamp) {
        // Stopped because it is no longer wanted (an update, a removal): not a crash.
        if self.removed.remove(id) {
            return;
        }
        self.exit_codes.insert(id.to_string(), exit_code);
        let oom = exit_code == Some(137) && self.host.oom_killed(id);
        let stopped_for = self.stopping.remove(id);
        if let Some((app, name)) = reconcile::parse_container_id(id) {
            let rs = self.restarts.entry((app.to_string(), name.to_string())).or_default();
            let ran_for = self.started_at.get(id).map(|s| now.since(*s)).unwrap_or_default();
            if ran_for >= reconcile::BACKOFF_RESET_AFTER || rs.id != id {
                *rs = reconcile::RestartState { id: id.to_string(), ..Default::default() };
            }
            rs.n_restarts += 1;
            rs.not_before = now.saturating_add(reconcile::backoff(rs.n_restarts));
            rs.last_error = None;
            rs.last_termination = if oom { Some("OOMKilled".into()) } else { stopped_for };
            if let Some(why) = &rs.last_termination {
                tracing::warn!(%id, reason = %why, "container ended");
            }
        }
    }

    pub fn on_pull_done(&mut self, digest: String, result: Result<ImageRecord, String>, now: Timestamp) {
        match result {
            Ok(record) => {
                if let Err(e) = self.db.put_image(&record) {
                    tracing::warn!(error = %e, "recording an image");
                }
                tracing::info!(image = %digest, "image ready");
                self.pulls.remove(&digest);
                self.pull_failures.remove(&digest);
                self.images.insert(digest, record);
            }
            Err(reason) => {
                let n = self.pull_failures.entry(digest.clone()).or_default();
                *n += 1;
                let retry_at = now.saturating_add(reconcile::backoff(*n).max(Duration::from_secs(2)));
                tracing::warn!(image = %digest, %reason, "image pull failed");
                self.pulls.insert(digest, PullState::Failed { reason, retry_at });
            }
        }
    }

    /// Follows the running containers and starts the probes that are due.
    pub fn run_probes(&mut self, running: &[(String, Timestamp, DesiredContainer)], now: Timestamp) {
        self.probes.sync(running.iter().map(|(id, at, c)| (id.as_str(), *at, c)));
        for run in self.probes.due(now) {
            let runtime = self.runtime.clone();
            let netns = reconcile::parse_container_id(&run.id).and_then(|(app, _)| self.host.netns(app));
            let done = self.probe_done.clone();
            tokio::spawn(async move {
                let result = crate::probes::run_probe(runtime.as_ref(), &run, netns.as_deref()).await;
                if let Err(why) = &result {
                    tracing::debug!(id = %run.id, kind = run.kind.as_str(), %why, "probe failed");
                }
                let _ = done.send((run, result));
            });
        }
    }

    pub fn on_probe_done(&mut self, done: ProbeDone, now: Timestamp) {
        let (run, result) = done;
        let was_ready = self.probes.verdict(&run.id).is_some_and(|v| v.ready);
        self.probes.handle_result(&run, result, now);
        match self.probes.verdict(&run.id) {
            Some(v) if v.ready && !was_ready => tracing::info!(id = %run.id, "container ready"),
            Some(v) if !v.ready && was_ready => {
                tracing::warn!(id = %run.id, why = %v.message, "container no longer ready")
            }
            _ => {}
        }
    }

    /// [`Host::sync_network`] off the async threads; `false` when it failed (retried
    /// on the next pass). A failure is logged when it first appears or changes.
    pub async fn sync_network(&mut self, desired: &DesiredManifest) -> bool {
        let host = self.host.clone();
        let apps = desired.apps.clone();
        let r = tokio::task::spawn_blocking(move || host.sync_network(&apps)).await;
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(()) => {
                if self.network_error.take().is_some() {
                    tracing::info!("device network in line again");
                }
                true
            }
            Err(e) => {
                if self.network_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "setting up the device network failed; will retry");
                    self.network_error = Some(e);
                }
                false
            }
        }
    }

    /// Carries out one action; `false` when it failed (it is retried on a later pass).
    pub async fn execute(&mut self, action: Action, now: Timestamp) -> bool {
        match action {
            Action::Pull { digest } => {
                if matches!(self.pulls.get(&digest), Some(PullState::InFlight)) {
                    return true;
                }
                let Some(puller) = self.puller.clone() else {
                    self.on_pull_done(digest, Err("no image source".into()), now);
                    return false;
                };
                self.pulls.insert(digest.clone(), PullState::InFlight);
                let done = self.pull_done.clone();
                tokio::spawn(async move {
                    let r = puller.pull(&digest).await.map_err(|e| format!("{e:#}"));
                    let _ = done.send((digest, r));
                });
                true
            }
            Action::CreatePod { app } => {
                let host = self.host.clone();
                let name = app.name.clone();
                let r = tokio::task::spawn_blocking(move || host.create_pod(&app)).await;
                match r.map_err(|e| e.to_string()).and_then(|r| r) {
                    Ok(()) => {
                        tracing::info!(app = %name, "pod created");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(app = %name, error = %e, "creating the app's pod failed");
                        false
                    }
                }
            }
            Action::RemovePod { app } => {
                let host = self.host.clone();
                let name = app.clone();
                let r = tokio::task::spawn_blocking(move || host.remove_pod(&name)).await;
                match r.map_err(|e| e.to_string()).and_then(|r| r) {
                    Ok(()) => {
                        tracing::info!(%app, "pod removed");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(%app, error = %e, "removing a pod failed; will retry");
                        false
                    }
                }
            }
            Action::Run { id, app, container, init, configs } => {
                let key = (app.name.clone(), container.name.clone());
                match self.run(&id, &app, &container, init, configs, now).await {
                    Ok(()) => {
                        tracing::info!(%id, "container started");
                        true
                    }
                    Err(reason) => {
                        tracing::warn!(%id, error = %reason, "container did not start");
                        self.remove(&id, &StopPolicy { grace: Duration::ZERO, pre_stop: None }).await.ok();
                        let rs = self.restarts.entry(key).or_default();
                        if rs.id != id {
                            *rs = reconcile::RestartState { id: id.clone(), ..Default::default() };
                        }
                        rs.n_restarts += 1;
                        rs.not_before = now.saturating_add(reconcile::backoff(rs.n_restarts));
                        rs.last_error = Some(reason);
                        false
                    }
                }
            }
            Action::Start { id } => match self.runtime.start(&id).await {
                Ok(()) => {
                    self.started_at.insert(id, now);
                    true
                }
                Err(e) => {
                    tracing::warn!(%id, error = %e, "starting a created container failed; recreating it");
                    self.remove(&id, &StopPolicy { grace: Duration::ZERO, pre_stop: None }).await.ok();
                    false
                }
            },
            Action::Stop { id, stop, reason } => {
                tracing::warn!(%id, %reason, "stopping a container to restart it");
                self.stopping.insert(id.clone(), reason);
                self.pre_stop(&id, &stop).await;
                match agent_runtime::terminate(self.runtime.as_ref(), &id, stop.grace).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "stopping a container failed; will retry");
                        false
                    }
                }
            }
            Action::Remove { id, stop } => self.remove_many(&[(id, stop)]).await,
        }
    }

    async fn run(
        &mut self,
        id: &str,
        app: &DesiredApp,
        container: &DesiredContainer,
        init: bool,
        configs: Vec<DesiredConfig>,
        now: Timestamp,
    ) -> Result<(), String> {
        let image = self
            .images
            .get(&container.image_digest)
            .ok_or_else(|| format!("image {} is not unpacked", container.image))?
            .clone();
        // Made again (a retry of the same version): its exits count again.
        self.removed.remove(id);
        let prepare =
            Prepare { id: id.to_string(), app: app.clone(), container: container.clone(), image, configs };
        let host = self.host.clone();
        let bundle = tokio::task::spawn_blocking(move || host.prepare(&prepare))
            .await
            .map_err(|e| e.to_string())??;
        self.runtime.create(id, &bundle).await.map_err(|e| e.to_string())?;
        self.runtime.start(id).await.map_err(|e| e.to_string())?;
        self.started_at.insert(id.to_string(), now);
        self.exit_codes.remove(id);
        let policy = StopPolicy::of(app, container);
        let record = ContainerRecord {
            id: id.to_string(),
            app: app.name.clone(),
            name: container.name.clone(),
            generation: app.generation,
            spec_hash: id.rsplit('_').next().unwrap_or_default().to_string(),
            image_digest: container.image_digest.clone(),
            created_at: self.clock.now(),
            restarts: 0,
            init,
            grace_period_seconds: app.grace_period_seconds,
            pre_stop: policy.pre_stop.clone(),
        };
        self.db.put_container(&record).map_err(|e| e.to_string())?;
        self.stop_policies.insert(id.to_string(), policy);
        if let Some(hook) = &container.lifecycle.post_start {
            let netns = self.host.netns(&app.name);
            crate::probes::run_handler(self.runtime.as_ref(), id, hook, netns.as_deref(), POST_START_TIMEOUT)
                .await
                .map_err(|e| format!("post-start hook failed: {e}"))?;
        }
        Ok(())
    }

    /// Runs a container's pre-stop hook, if it has one, within its grace period.
    async fn pre_stop(&self, id: &str, stop: &StopPolicy) {
        let Some(hook) = &stop.pre_stop else { return };
        let netns = reconcile::parse_container_id(id).and_then(|(app, _)| self.host.netns(app));
        let timeout = stop.grace.max(Duration::from_secs(1));
        if let Err(e) =
            crate::probes::run_handler(self.runtime.as_ref(), id, hook, netns.as_deref(), timeout).await
        {
            tracing::warn!(%id, error = %e, "pre-stop hook failed; stopping anyway");
        }
    }

    /// Stops and deletes a container, its root filesystem, bundle and record.
    pub async fn remove(&mut self, id: &str, stop: &StopPolicy) -> anyhow::Result<()> {
        self.pre_stop(id, stop).await;
        match agent_runtime::stop(self.runtime.as_ref(), id, stop.grace).await {
            Ok(()) | Err(agent_runtime::RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.cleanup(id).await
    }

    /// Removes several containers, stopping them all at once: each may take its
    /// whole grace period, and an app's containers should not wait for each other.
    pub async fn remove_many(&mut self, list: &[(String, StopPolicy)]) -> bool {
        for (id, _) in list {
            // Its exit, if it still comes, is not a restart.
            if self.removed.len() >= MAX_REMOVED {
                self.removed.clear();
            }
            self.removed.insert(id.clone());
        }
        let this = &*self;
        let stops = list.iter().map(|(id, stop)| async move {
            this.pre_stop(id, stop).await;
            agent_runtime::stop(this.runtime.as_ref(), id, stop.grace).await
        });
        let results = futures::future::join_all(stops).await;
        let mut all_ok = true;
        for ((id, _), stopped) in list.iter().zip(results) {
            let result = match stopped {
                Ok(()) | Err(agent_runtime::RuntimeError::NotFound { .. }) => self.cleanup(id).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => tracing::info!(%id, "container removed"),
                Err(e) => {
                    tracing::warn!(%id, error = %format!("{e:#}"), "removing a container failed; will retry");
                    all_ok = false;
                }
            }
        }
        all_ok
    }

    /// Everything but the container itself: root filesystem, bundle, record.
    async fn cleanup(&mut self, id: &str) -> anyhow::Result<()> {
        let host = self.host.clone();
        let id_owned = id.to_string();
        tokio::task::spawn_blocking(move || host.release(&id_owned)).await?.map_err(anyhow::Error::msg)?;
        self.db.remove_container(id)?;
        self.exit_codes.remove(id);
        self.started_at.remove(id);
        self.stop_policies.remove(id);
        Ok(())
    }

    /// Releases what was prepared for containers the runtime no longer has and drops
    /// their records: what an agent killed between a container's delete and its
    /// cleanup (or between prepare and create) leaves behind. Runs only between
    /// passes, when no run is half-way.
    pub async fn sweep(&mut self) {
        let Ok(listed) = self.runtime.list().await else { return };
        let live: BTreeSet<String> = listed.into_iter().map(|c| c.id).collect();
        let host = self.host.clone();
        let prepared = tokio::task::spawn_blocking(move || host.prepared()).await.unwrap_or_default();
        let recorded: Vec<String> =
            self.db.containers().unwrap_or_default().into_iter().map(|r| r.id).collect();
        let stale: BTreeSet<String> =
            prepared.into_iter().chain(recorded).filter(|id| !live.contains(id)).collect();
        for id in stale {
            match self.cleanup(&id).await {
                Ok(()) => tracing::info!(%id, "released what a gone container left"),
                Err(e) => {
                    tracing::warn!(%id, error = %format!("{e:#}"), "could not release a gone container's files")
                }
            }
        }
    }

    /// Samples the running containers' use; `Some` when it is worth sending.
    pub fn sample_usage(
        &mut self,
        running: &[String],
        now: Timestamp,
    ) -> Option<shared_proto::wire::UsageReport> {
        let mut containers = Vec::with_capacity(running.len());
        let mut seen = HashMap::new();
        for id in running {
            let Some((cpu_ns, memory_bytes)) = self.host.usage(id) else { continue };
            let Some((app, name)) = reconcile::parse_container_id(id) else { continue };
            let cpu_millis = match self.usage_prev.get(id) {
                Some((at, prev_ns)) if now > *at && cpu_ns >= *prev_ns => {
                    let elapsed_ms = now.since(*at).as_millis().max(1) as u64;
                    u32::try_from((cpu_ns - prev_ns) / (elapsed_ms * 1000)).unwrap_or(u32::MAX)
                }
                _ => 0,
            };
            seen.insert(id.clone(), (now, cpu_ns));
            containers.push(shared_proto::wire::ContainerUsage {
                app: app.to_string(),
                name: name.to_string(),
                cpu_millis,
                memory_bytes,
            });
        }
        self.usage_prev = seen;
        containers.sort_by(|a, b| (&a.app, &a.name).cmp(&(&b.app, &b.name)));
        let report = shared_proto::wire::UsageReport { containers };
        usage_worth_sending(self.usage_sent.as_ref(), &report, now).then(|| {
            self.usage_sent = Some((report.clone(), now));
            report
        })
    }

    /// Images the desired state names, to keep.
    pub fn wanted_images(desired: &DesiredManifest) -> BTreeSet<String> {
        desired
            .apps
            .iter()
            .flat_map(|a| a.containers.iter().chain(&a.init_containers).map(|c| c.image_digest.clone()))
            .collect()
    }

    /// Unpacked images the desired state no longer names: forgotten here, returned
    /// so the caller removes them from disk.
    pub fn forget_unused_images(&mut self, desired: &DesiredManifest) -> Vec<ImageRecord> {
        let wanted = Self::wanted_images(desired);
        let unused: Vec<String> = self.images.keys().filter(|d| !wanted.contains(*d)).cloned().collect();
        unused.into_iter().filter_map(|d| self.images.remove(&d)).collect()
    }

    /// Puts back an image whose removal failed.
    pub fn keep_image(&mut self, record: ImageRecord) {
        self.images.insert(record.manifest_digest.clone(), record);
    }

    pub fn image_digests(&self) -> Vec<String> {
        self.images.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_runtime::{ExecOutput, FakeCall, FakeRuntime};
    use shared_proto::agent_state::ImageRunConfig;
    use shared_proto::clock::Clock;
    use shared_proto::workload::{ExecAction, Handler, Lifecycle, Probe};
    use std::sync::Mutex;

    /// A host that records what it was asked and keeps pods in memory.
    #[derive(Default)]
    struct FakeHost {
        pods: Mutex<BTreeSet<String>>,
        calls: Mutex<Vec<String>>,
        oom: Mutex<BTreeSet<String>>,
        usage: Mutex<BTreeMap<String, (u64, u64)>>,
    }

    impl Host for FakeHost {
        fn prepare(&self, p: &Prepare) -> Result<PathBuf, String> {
            self.calls.lock().unwrap().push(format!("prepare {}", p.id));
            Ok(PathBuf::from(format!("/bundles/{}", p.id)))
        }
        fn release(&self, id: &str) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("release {id}"));
            Ok(())
        }
        fn create_pod(&self, app: &DesiredApp) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("pod {}", app.name));
            self.pods.lock().unwrap().insert(app.name.clone());
            Ok(())
        }
        fn remove_pod(&self, app: &str) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("unpod {app}"));
            self.pods.lock().unwrap().remove(app);
            Ok(())
        }
        fn pods(&self) -> Vec<String> {
            self.pods.lock().unwrap().iter().cloned().collect()
        }
        fn netns(&self, _app: &str) -> Option<PathBuf> {
            None
        }
        fn sync_network(&self, apps: &[DesiredApp]) -> Result<(), String> {
            let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            self.calls.lock().unwrap().push(format!("network {}", names.join(",")));
            Ok(())
        }
        fn oom_killed(&self, id: &str) -> bool {
            self.oom.lock().unwrap().contains(id)
        }
        fn usage(&self, id: &str) -> Option<(u64, u64)> {
            self.usage.lock().unwrap().get(id).copied()
        }
        fn prepared(&self) -> Vec<String> {
            let calls = self.calls.lock().unwrap();
            let mut ids = BTreeSet::new();
            for c in calls.iter() {
                if let Some(id) = c.strip_prefix("prepare ") {
                    ids.insert(id.to_string());
                } else if let Some(id) = c.strip_prefix("release ") {
                    ids.remove(id);
                }
            }
            ids.into_iter().collect()
        }
    }

    struct World {
        exec: Executor<FakeRuntime, FakeHost>,
        runtime: Arc<FakeRuntime>,
        host: Arc<FakeHost>,
        clock: Arc<shared_proto::clock::ManualClock>,
        probe_rx: mpsc::UnboundedReceiver<ProbeDone>,
        _dir: tempfile::TempDir,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("state.redb")).unwrap();
        let runtime = Arc::new(FakeRuntime::new());
        let host = Arc::new(FakeHost::default());
        let clock = Arc::new(shared_proto::clock::ManualClock::new(Timestamp(1_000_000)));
        let (pull_tx, _pull_rx) = mpsc::unbounded_channel();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let shared: SharedClock = clock.clone();
        let mut exec =
            Executor::new(shared, runtime.clone(), host.clone(), db, None, pull_tx, probe_tx).unwrap();
        exec.add_image(ImageRecord {
            manifest_digest: "sha256:img".into(),
            config: ImageRunConfig { cmd: vec!["/serve".into()], ..Default::default() },
            rootfs: "/images/img".into(),
            size: 1,
            unpacked_at: Timestamp(0),
        });
        World { exec, runtime, host, clock, probe_rx, _dir: dir }
    }

    fn container(name: &str) -> DesiredContainer {
        DesiredContainer {
            name: name.into(),
            image: "img:1".into(),
            image_digest: "sha256:img".into(),
            ..Default::default()
        }
    }

    fn manifest(app: DesiredApp) -> DesiredManifest {
        DesiredManifest { device: "pi".into(), revision: 1, apps: vec![app], configs: vec![] }
    }

    impl World {
        /// One pass of the loop: observe, plan, probe, act. Returns the plan's report.
        async fn pass(&mut self, m: &DesiredManifest) -> reconcile::Plan {
            let now = self.clock.now();
            let obs = self.exec.observe().await.unwrap();
            let plan = reconcile::reconcile(m, &obs, now);
            self.exec.sync_network(m).await;
            self.exec.run_probes(&plan.running, now);
            for a in plan.actions.clone() {
                self.exec.execute(a, now).await;
            }
            plan
        }

        async fn settle(&mut self, m: &DesiredManifest) -> reconcile::Plan {
            for _ in 0..10 {
                let plan = self.pass(m).await;
                if plan.actions.is_empty() {
                    return plan;
                }
            }
            panic!("no fixed point in 10 passes");
        }

        /// The container's process ends; the executor hears of it as from the helper.
        fn exit(&mut self, id: &str, code: i32) {
            self.runtime.exit(id, Some(code));
        }
    }

    fn created(calls: &[FakeCall]) -> Vec<String> {
        calls
            .iter()
            .filter_map(|c| match c {
                FakeCall::Create { id, .. } => reconcile::parse_container_id(id).map(|(_, n)| n.to_string()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn an_update_starts_the_new_version_without_the_old_ones_back_off() {
        let mut w = world();
        let app =
            DesiredApp { name: "pos".into(), containers: vec![container("main")], ..Default::default() };
        let m1 = manifest(app.clone());
        let id1 = w.settle(&m1).await.report[0].id.clone();
        // It crashed: the next start waits out a back-off.
        w.exit(&id1, 1);
        let plan = w.pass(&m1).await;
        assert!(plan.report[0].reason.contains("back"), "{:?}", plan.report[0]);
        // A new version does not wait for it, nor does the old one's removal count.
        let mut next = app;
        next.containers[0].args = vec!["--v2".into()];
        let m2 = manifest(next);
        let plan = w.settle(&m2).await;
        let id2 = plan.report[0].id.clone();
        assert_ne!(id1, id2);
        assert_eq!(
            plan.report[0].phase,
            shared_proto::manifest::ContainerPhase::Running,
            "{:?}",
            plan.report[0]
        );
        assert_eq!(plan.report[0].restarts, 0);
        assert!(created(&w.runtime.calls()).len() >= 2);
    }

    #[tokio::test]
    async fn a_pod_first_then_init_containers_in_order_then_the_app() {
        let mut w = world();
        let app = DesiredApp {
            name: "pos".into(),
            init_containers: vec![container("migrate"), container("seed")],
            containers: vec![container("main"), container("sidecar")],
            ..Default::default()
        };
        let m = manifest(app);
        let plan = w.pass(&m).await;
        assert!(matches!(plan.actions[..], [Action::CreatePod { .. }]), "{:?}", plan.actions);
        assert_eq!(w.host.pods(), vec!["pos".to_string()]);
        let plan = w.settle(&m).await;
        assert_eq!(created(&w.runtime.take_calls()), ["migrate"], "one init container at a time");
        let migrate = plan.report.iter().find(|r| r.name == "migrate").unwrap();
        assert!(migrate.init);
        let seed = plan.report.iter().find(|r| r.name == "seed").unwrap();
        assert_eq!(seed.reason, "waiting for init container migrate");
        let id = migrate.id.clone();
        w.exit(&id, 0);
        w.settle(&m).await;
        assert_eq!(created(&w.runtime.take_calls()), ["seed"]);
        let seed_id =
            w.exec.observe().await.unwrap().runtime.keys().find(|k| k.contains("_seed_")).unwrap().clone();
        // A failing init container is retried after its back-off; the app waits.
        w.exit(&seed_id, 3);
        let plan = w.settle(&m).await;
        let main = plan.report.iter().find(|r| r.name == "main").unwrap();
        assert_eq!(main.reason, "waiting for init container seed");
        assert!(created(&w.runtime.take_calls()).is_empty(), "back-off first");
        w.clock.advance(Duration::from_secs(2));
        w.settle(&m).await;
        assert_eq!(created(&w.runtime.take_calls()), ["seed"]);
        w.exit(&seed_id, 0);
        let plan = w.settle(&m).await;
        let mut started = created(&w.runtime.take_calls());
        started.sort();
        assert_eq!(started, ["main", "sidecar"]);
        assert!(plan.report.iter().filter(|r| !r.init).all(|r| r.ready), "{:?}", plan.report);
    }

    #[tokio::test]
    async fn a_failing_liveness_probe_restarts_the_container_through_its_pre_stop_hook() {
        let mut w = world();
        let mut c = container("main");
        c.liveness_probe = Some(Probe {
            exec: Some(ExecAction { command: vec!["/alive".into()] }),
            period_seconds: 1,
            failure_threshold: 2,
            ..Default::default()
        });
        c.lifecycle = Lifecycle {
            pre_stop: Some(Handler {
                exec: Some(ExecAction { command: vec!["/drain".into()] }),
                http_get: None,
            }),
            post_start: None,
        };
        let m = manifest(DesiredApp {
            name: "pos".into(),
            containers: vec![c],
            grace_period_seconds: 3,
            ..Default::default()
        });
        let plan = w.settle(&m).await;
        assert!(plan.report[0].ready);
        w.runtime.take_calls();
        w.runtime.set_exec_result("/alive", ExecOutput { exit_code: Some(1), output: b"stuck".to_vec() });
        for _ in 0..2 {
            let done = w.probe_rx.recv().await.unwrap();
            w.exec.on_probe_done(done, w.clock.now());
            w.clock.advance(Duration::from_secs(1));
            w.pass(&m).await;
        }
        let calls = w.runtime.take_calls();
        let execs: Vec<&FakeCall> = calls
            .iter()
            .filter(|c| matches!(c, FakeCall::Exec { args, .. } if args[0] == "/drain"))
            .collect();
        assert_eq!(execs.len(), 1, "pre-stop hook ran once: {calls:?}");
        let drain_at = calls
            .iter()
            .position(|c| matches!(c, FakeCall::Exec { args, .. } if args[0] == "/drain"))
            .unwrap();
        let term_at = calls.iter().position(|c| matches!(c, FakeCall::Kill { signal: 15, .. })).unwrap();
        assert!(drain_at < term_at, "the hook runs before SIGTERM: {calls:?}");
        // The exit (SIGTERM ended it) counts as a restart, with the probe's words.
        let plan = w.pass(&m).await;
        assert_eq!(plan.report[0].restarts, 1);
        assert!(
            plan.report[0].reason.contains("liveness probe failed 2 times: /alive exited with code 1: stuck"),
            "{}",
            plan.report[0].reason
        );
        w.clock.advance(Duration::from_secs(2));
        w.runtime.set_exec_result("/alive", ExecOutput { exit_code: Some(0), output: vec![] });
        w.settle(&m).await;
        assert_eq!(created(&w.runtime.take_calls()), ["main"], "restarted");
    }

    #[tokio::test]
    async fn usage_is_sampled_from_cgroups_and_sent_only_when_it_moved() {
        let mut w = world();
        let m = manifest(DesiredApp {
            name: "pos".into(),
            containers: vec![container("main")],
            ..Default::default()
        });
        let plan = w.settle(&m).await;
        let ids: Vec<String> = plan.running.iter().map(|(id, _, _)| id.clone()).collect();
        let t0 = w.clock.now();
        assert_eq!(w.exec.sample_usage(&[], t0), None, "nothing runs: nothing to say");
        w.host.usage.lock().unwrap().insert(ids[0].clone(), (1_000_000_000, 20 << 20));
        let first = w.exec.sample_usage(&ids, t0).expect("the first sample is sent");
        assert_eq!((first.containers[0].cpu_millis, first.containers[0].memory_bytes), (0, 20 << 20));
        // Half a core over 30 s, but within a minute of the last report: kept back.
        w.host.usage.lock().unwrap().insert(ids[0].clone(), (16_000_000_000, 20 << 20));
        assert_eq!(w.exec.sample_usage(&ids, t0.saturating_add(Duration::from_secs(30))), None);
        // 60 s later: 250 millicores since the last sample, a real move.
        w.host.usage.lock().unwrap().insert(ids[0].clone(), (23_500_000_000, 21 << 20));
        let moved = w.exec.sample_usage(&ids, t0.saturating_add(Duration::from_secs(60))).expect("it moved");
        assert_eq!(moved.containers[0].cpu_millis, 250);
        assert_eq!((moved.containers[0].app.as_str(), moved.containers[0].name.as_str()), ("pos", "main"));
        // Steady: nothing until the 15-minute refresh.
        for k in 1..=15u64 {
            let t = t0.saturating_add(Duration::from_secs(60 + 60 * k));
            let ns = 23_500_000_000 + k * 15_000_000_000;
            w.host.usage.lock().unwrap().insert(ids[0].clone(), (ns, 21 << 20));
            let sent = w.exec.sample_usage(&ids, t);
            assert_eq!(sent.is_some(), k == 15, "minute {k}");
        }
    }

    #[tokio::test]
    async fn a_sweep_releases_what_a_killed_agent_left_and_nothing_else() {
        let mut w = world();
        let m = manifest(DesiredApp {
            name: "pos".into(),
            containers: vec![container("main")],
            ..Default::default()
        });
        let plan = w.settle(&m).await;
        let id = plan.report[0].id.clone();
        // A container deleted by the runtime whose files the agent never released
        // (killed in between), and one prepared but never created.
        w.host
            .prepare(&Prepare {
                id: "pos_old_123".into(),
                app: m.apps[0].clone(),
                container: container("old"),
                image: w.exec.images.values().next().unwrap().clone(),
                configs: vec![],
            })
            .unwrap();
        w.exec.sweep().await;
        assert_eq!(w.host.prepared(), vec![id.clone()], "only the live container keeps its files");
        assert_eq!(
            w.exec.db.containers().unwrap().iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            vec![id]
        );
    }

    #[tokio::test]
    async fn an_oom_kill_says_so_and_a_removed_app_loses_its_pod() {
        let mut w = world();
        let m = manifest(DesiredApp {
            name: "pos".into(),
            containers: vec![container("main")],
            ..Default::default()
        });
        let plan = w.settle(&m).await;
        let id = plan.report[0].id.clone();
        w.host.oom.lock().unwrap().insert(id.clone());
        w.exit(&id, 137);
        let plan = w.pass(&m).await;
        assert!(
            plan.report[0].reason.contains("exited with code 137 (OOMKilled)"),
            "{}",
            plan.report[0].reason
        );
        let empty = DesiredManifest { device: "pi".into(), revision: 2, apps: vec![], configs: vec![] };
        w.settle(&empty).await;
        assert!(w.host.pods().is_empty());
        let calls = w.host.calls.lock().unwrap().clone();
        let release = calls.iter().position(|c| c.starts_with("release")).unwrap();
        let unpod = calls.iter().position(|c| c == "unpod pos").unwrap();
        assert!(release < unpod, "containers go before their pod: {calls:?}");
    }
}
