//! The agent's main loop: carries out what [`crate::reconcile`] decides, against the
//! real runtime (libcontainer via the helper process), the overlay root filesystems,
//! the image puller and the state database, and publishes what runs for the sync
//! session to report. It needs no hub: it converges on the last desired manifest it
//! stored, from the first second after start.

use crate::config::AgentConfig;
use crate::pull::Puller;
use crate::reconcile::{self, Action, Observed, PullState, RestartState, RuntimeStatus, RuntimeView};
use crate::state::StateDb;
use agent_runtime::rootfs::OverlayRootfs;
use agent_runtime::{ContainerRuntime, ContainerStatus, HelperConfig, HelperRuntime};
use anyhow::Context;
use shared_proto::agent_state::{ContainerRecord, ImageRecord};
use shared_proto::clock::SharedClock;
use shared_proto::manifest::{DesiredContainer, DesiredManifest};
use shared_proto::wire::AgentReport;
use shared_proto::{NetworkMode, Timestamp};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long a container gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// With nothing to do, look again this often anyway (cheap: one runtime list).
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Image garbage collection runs at most this often.
const GC_EVERY: Duration = Duration::from_secs(60);

pub fn helper_runtime(config: &AgentConfig) -> HelperRuntime {
    HelperRuntime::new(HelperConfig::new(config.runtime_state_dir(), config.logs_dir()))
}

/// What the loop keeps between passes.
pub struct Executor {
    pub clock: SharedClock,
    pub runtime: Arc<HelperRuntime>,
    pub rootfs: OverlayRootfs,
    pub db: StateDb,
    pub puller: Puller,
    bundles_dir: PathBuf,
    cgroup_parent: String,
    images: BTreeMap<String, ImageRecord>,
    pulls: BTreeMap<String, PullState>,
    pull_failures: HashMap<String, u32>,
    restarts: BTreeMap<(String, String), RestartState>,
    exit_codes: HashMap<String, Option<i32>>,
    started_at: HashMap<String, Timestamp>,
    pull_done: mpsc::UnboundedSender<(String, Result<ImageRecord, String>)>,
    last_gc: Option<tokio::time::Instant>,
}

impl Executor {
    pub fn new(
        clock: SharedClock,
        config: &AgentConfig,
        runtime: Arc<HelperRuntime>,
        db: StateDb,
        puller: Puller,
        pull_done: mpsc::UnboundedSender<(String, Result<ImageRecord, String>)>,
    ) -> anyhow::Result<Executor> {
        let mut images = BTreeMap::new();
        for r in db.images()? {
            if std::path::Path::new(&r.rootfs).is_dir() {
                images.insert(r.manifest_digest.clone(), r);
            }
        }
        Ok(Executor {
            clock,
            runtime,
            rootfs: OverlayRootfs::new(config.containers_dir()),
            db,
            puller,
            bundles_dir: config.bundles_dir(),
            cgroup_parent: config.cgroup_parent.clone(),
            images,
            pulls: BTreeMap::new(),
            pull_failures: HashMap::new(),
            restarts: BTreeMap::new(),
            exit_codes: HashMap::new(),
            started_at: HashMap::new(),
            pull_done,
            last_gc: None,
        })
    }

    pub async fn observe(&self) -> anyhow::Result<Observed> {
        let mut runtime = BTreeMap::new();
        for c in self.runtime.list().await? {
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
        Ok(Observed {
            runtime,
            images: self.images.keys().cloned().collect(),
            pulls: self.pulls.clone(),
            restarts: self.restarts.clone(),
        })
    }

    /// Records a container's exit and schedules its restart back-off.
    pub fn on_exit(&mut self, id: &str, exit_code: Option<i32>, now: Timestamp) {
        self.exit_codes.insert(id.to_string(), exit_code);
        if let Some((app, name)) = reconcile::parse_container_id(id) {
            let rs = self.restarts.entry((app.to_string(), name.to_string())).or_default();
            let ran_for = self.started_at.get(id).map(|s| now.since(*s)).unwrap_or_default();
            if ran_for >= reconcile::BACKOFF_RESET_AFTER {
                rs.n_restarts = 0;
            }
            rs.n_restarts += 1;
            rs.not_before = now.saturating_add(reconcile::backoff(rs.n_restarts));
            rs.last_error = None;
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

    /// Carries out one action; `false` when it failed (it is retried on a later pass).
    pub async fn execute(&mut self, action: Action, now: Timestamp) -> bool {
        match action {
            Action::Pull { digest } => {
                if matches!(self.pulls.get(&digest), Some(PullState::InFlight)) {
                    return true;
                }
                self.pulls.insert(digest.clone(), PullState::InFlight);
                let puller = self.puller.clone();
                let done = self.pull_done.clone();
                tokio::spawn(async move {
                    let r = puller.pull(&digest).await.map_err(|e| format!("{e:#}"));
                    let _ = done.send((digest, r));
                });
                true
            }
            Action::Run { id, app, generation, network, container } => {
                let key = (app.clone(), container.name.clone());
                match self.run(&id, &app, generation, network, &container).await {
                    Ok(()) => {
                        tracing::info!(%id, "container started");
                        self.started_at.insert(id.clone(), now);
                        self.exit_codes.remove(&id);
                        true
                    }
                    Err(e) => {
                        let reason = format!("{e:#}");
                        tracing::warn!(%id, error = %reason, "container did not start");
                        self.remove(&id).await.ok();
                        let rs = self.restarts.entry(key).or_default();
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
                    self.remove(&id).await.ok();
                    false
                }
            },
            Action::Remove { id } => self.remove_many(&[id]).await,
        }
    }

    async fn run(
        &self,
        id: &str,
        app: &str,
        generation: u64,
        network: NetworkMode,
        container: &DesiredContainer,
    ) -> anyhow::Result<()> {
        let image = self
            .images
            .get(&container.image_digest)
            .with_context(|| format!("image {} is not unpacked", container.image))?
            .clone();
        let rootfs = self.rootfs.clone();
        let (id_owned, lower) = (id.to_string(), PathBuf::from(&image.rootfs));
        let merged = tokio::task::spawn_blocking(move || rootfs.prepare(&id_owned, &lower)).await??;
        let bundle_dir = self.bundles_dir.join(id);
        let (c, cfg, m, i, b) =
            (container.clone(), image.config.clone(), merged.clone(), id.to_string(), bundle_dir.clone());
        let cg = self.cgroup_parent.clone();
        let bundle = tokio::task::spawn_blocking(move || {
            let spec = agent_runtime::bundle::BundleSpec {
                id: &i,
                cgroup_parent: &cg,
                container: &c,
                network,
                image: &cfg,
                rootfs: &m,
                hostname: &c.name,
            };
            agent_runtime::bundle::write_bundle(&b, &spec)
        })
        .await??;
        self.runtime.create(id, &bundle).await?;
        self.runtime.start(id).await?;
        let record = ContainerRecord {
            id: id.to_string(),
            app: app.to_string(),
            name: container.name.clone(),
            generation,
            spec_hash: id.rsplit('_').next().unwrap_or_default().to_string(),
            image_digest: container.image_digest.clone(),
            created_at: self.clock.now(),
            restarts: 0,
        };
        self.db.put_container(&record)?;
        Ok(())
    }

    /// Stops and deletes a container, its root filesystem, bundle and record.
    pub async fn remove(&mut self, id: &str) -> anyhow::Result<()> {
        match agent_runtime::stop(self.runtime.as_ref(), id, STOP_GRACE).await {
            Ok(()) | Err(agent_runtime::RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.cleanup(id).await
    }

    /// Removes several containers, stopping them all at once: each may take its
    /// whole grace period, and an app's containers should not wait for each other.
    pub async fn remove_many(&mut self, ids: &[String]) -> bool {
        let runtime = self.runtime.clone();
        let stops = ids.iter().map(|id| agent_runtime::stop(runtime.as_ref(), id, STOP_GRACE));
        let results = futures::future::join_all(stops).await;
        let mut all_ok = true;
        for (id, stopped) in ids.iter().zip(results) {
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
        let rootfs = self.rootfs.clone();
        let id_owned = id.to_string();
        let bundle = self.bundles_dir.join(id);
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            rootfs.release(&id_owned)?;
            match std::fs::remove_dir_all(&bundle) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await??;
        self.db.remove_container(id)?;
        self.exit_codes.remove(id);
        self.started_at.remove(id);
        Ok(())
    }

    /// Drops unpacked images and blobs that the desired state no longer names.
    async fn collect_garbage(&mut self, desired: &DesiredManifest) {
        if self.last_gc.is_some_and(|t| t.elapsed() < GC_EVERY) {
            return;
        }
        self.last_gc = Some(tokio::time::Instant::now());
        let wanted: std::collections::BTreeSet<&str> =
            desired.apps.iter().flat_map(|a| a.containers.iter().map(|c| c.image_digest.as_str())).collect();
        let unused: Vec<String> =
            self.images.keys().filter(|d| !wanted.contains(d.as_str())).cloned().collect();
        for digest in unused {
            if let Some(record) = self.images.remove(&digest) {
                let path = PathBuf::from(&record.rootfs);
                let removed = tokio::task::spawn_blocking(move || images::remove_rootfs(&path)).await;
                if !matches!(removed, Ok(Ok(()))) {
                    tracing::warn!(image = %digest, "could not remove an unused image; keeping its record");
                    self.images.insert(digest, record);
                    continue;
                }
                let _ = self.db.remove_image(&digest);
                tracing::info!(image = %digest, "removed an unused image");
            }
        }
        let blobs = self.puller.blobs.clone();
        let keep: Vec<String> = self.images.keys().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || gc_blobs(&blobs, &keep)).await;
    }
}

/// Removes blobs not reachable from the manifests in `keep`.
fn gc_blobs(blobs: &images::blobstore::BlobStore, keep: &[String]) -> anyhow::Result<()> {
    let mut reachable = std::collections::BTreeSet::new();
    for d in keep {
        let digest = images::digest::Digest::parse(d)?;
        reachable.insert(digest);
        if let Ok(bytes) = blobs.read_to_vec(&digest, 4 << 20)
            && let Ok(m) = serde_json::from_slice::<images::oci::ImageManifest>(&bytes)
        {
            reachable.insert(m.config.digest);
            reachable.extend(m.layers.iter().map(|l| l.digest));
        }
    }
    for d in blobs.list()? {
        if !reachable.contains(&d) {
            blobs.remove(&d)?;
        }
    }
    Ok(())
}

/// The reconcile loop. Publishes the first report, then prints `agent running` once.
pub async fn reconcile_loop(
    mut exec: Executor,
    mut desired: watch::Receiver<DesiredManifest>,
    report: watch::Sender<AgentReport>,
    mut pull_done: mpsc::UnboundedReceiver<(String, Result<ImageRecord, String>)>,
) -> anyhow::Result<()> {
    let mut exits = exec.runtime.subscribe_exits();
    let mut announced = false;
    loop {
        let manifest = desired.borrow_and_update().clone();
        let now = exec.clock.now();
        let observed = match exec.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list containers; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let plan = reconcile::reconcile(&manifest, &observed, now);
        let busy = !plan.actions.is_empty();
        let (removals, others): (Vec<Action>, Vec<Action>) =
            plan.actions.into_iter().partition(|a| matches!(a, Action::Remove { .. }));
        let ids: Vec<String> = removals
            .into_iter()
            .filter_map(|a| match a {
                Action::Remove { id } => Some(id),
                _ => None,
            })
            .collect();
        // Removals first (they free host ports and resources), all at once.
        let mut all_ok = ids.is_empty() || exec.remove_many(&ids).await;
        for action in others {
            all_ok &= exec.execute(action, now).await;
        }
        let mut next = AgentReport { held_revision: manifest.revision, containers: plan.report };
        next.truncate_to_limits();
        report.send_if_modified(|r| {
            let changed = *r != next;
            *r = next;
            changed
        });
        if !announced {
            announced = true;
            println!("agent running");
        }
        if busy && all_ok {
            // Look at the result of what we just did before waiting.
            continue;
        }
        if !busy {
            exec.collect_garbage(&manifest).await;
        }
        let wait = match plan.wake_at {
            Some(at) => at.since(now).max(Duration::from_millis(50)),
            None if all_ok => IDLE_RECHECK,
            None => Duration::from_secs(1),
        };
        tokio::select! {
            r = desired.changed() => if r.is_err() { return Ok(()) },
            e = exits.recv() => match e {
                Ok(exit) => exec.on_exit(&exit.id, exit.exit_code, exec.clock.now()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => exits = exec.runtime.subscribe_exits(),
            },
            Some((digest, result)) = pull_done.recv() => exec.on_pull_done(digest, result, exec.clock.now()),
            _ = tokio::time::sleep(wait) => {}
        }
        // Take every exit already queued so one pass sees them all.
        while let Ok(exit) = exits.try_recv() {
            exec.on_exit(&exit.id, exit.exit_code, exec.clock.now());
        }
    }
}

fn ensure_dir(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `flotilla-agent run`.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let clock = shared_proto::clock::SystemClock::shared();
    ensure_dir(&config.state_dir, 0o700)?;
    ensure_dir(&config.runtime_dir, 0o700)?;
    let db = StateDb::open(&config.db_path())?;
    let runtime = Arc::new(helper_runtime(&config));
    let blobs = images::blobstore::BlobStore::open(config.blobs_dir())?;
    let held = db.desired()?.map(|h| h.manifest).unwrap_or_else(|| DesiredManifest {
        device: config.name.clone(),
        revision: 0,
        apps: vec![],
    });
    tracing::info!(
        revision = held.revision,
        apps = held.apps.len(),
        "starting from the stored desired state"
    );
    let (desired_tx, desired_rx) = watch::channel(held.clone());
    let (report_tx, report_rx) =
        watch::channel(AgentReport { held_revision: held.revision, containers: vec![] });
    let (link_tx, link_rx) = watch::channel(None);
    let (pull_tx, pull_rx) = mpsc::unbounded_channel();
    let puller = Puller { blobs, images_dir: config.images_dir(), link: link_rx, clock: clock.clone() };
    let exec = Executor::new(clock.clone(), &config, runtime, db.clone(), puller, pull_tx)?;
    tokio::spawn(crate::logs::run(config.logs_dir(), config.max_log_bytes));
    // Converge on what we have before (and whether or not) the hub answers.
    let mut reconciler = tokio::spawn(reconcile_loop(exec, desired_rx, report_tx, pull_rx));

    let endpoint = crate::transport::client_endpoint()?;
    let identity = tokio::select! {
        id = crate::enrol::ensure_identity(&config, &db, &endpoint, &clock) => id?,
        r = &mut reconciler => return r?.context("the reconcile loop stopped"),
    };
    let channels = crate::sync::SyncChannels { desired: desired_tx, report: report_rx, link: link_tx };
    tokio::select! {
        r = crate::sync::run(&config, identity, endpoint, db, clock, channels) => r,
        r = reconciler => r?.context("the reconcile loop stopped"),
    }
}

/// `flotilla-agent reset`: stops and deletes every container this agent runs and
/// unmounts their root filesystems. Identity, desired state and images stay.
pub async fn reset(config: AgentConfig) -> anyhow::Result<()> {
    if !config.runtime_dir.exists() && !config.state_dir.exists() {
        return Ok(());
    }
    let runtime = helper_runtime(&config);
    let rootfs = OverlayRootfs::new(config.containers_dir());
    let mut failed = 0;
    // All at once: each may take its whole grace period.
    let containers = runtime.list().await.unwrap_or_default();
    let stops = containers.iter().map(|c| agent_runtime::stop(&runtime, &c.id, Duration::from_secs(5)));
    for (c, result) in containers.iter().zip(futures::future::join_all(stops).await) {
        if let Err(e) = result {
            eprintln!("warning: {}: {e}", c.id);
            failed += 1;
        }
    }
    if let Ok(entries) = std::fs::read_dir(config.containers_dir()) {
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_str()
                && let Err(e) = rootfs.release(id)
            {
                eprintln!("warning: {id}: {e}");
                failed += 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(config.bundles_dir());
    if let Ok(db) = StateDb::open(&config.db_path()) {
        for c in db.containers().unwrap_or_default() {
            let _ = db.remove_container(&c.id);
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} container(s) could not be removed");
    }
    Ok(())
}
