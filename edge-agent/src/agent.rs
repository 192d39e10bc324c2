//! The agent's main loop: carries out what [`crate::reconcile`] decides, against the
//! real runtime (libcontainer via the helper process), the overlay root filesystems,
//! the image puller and the state database, and publishes what runs for the sync
//! session to report. It needs no hub: it converges on the last desired manifest it
//! stored, from the first second after start.

use crate::config::AgentConfig;
use crate::executor::{Executor, Host, ProbeDone};
use crate::host::DeviceHost;
use crate::pull::Puller;
use crate::reconcile::{self, Action};
use crate::state::StateDb;
use agent_runtime::rootfs::OverlayRootfs;
use agent_runtime::{ContainerRuntime, HelperConfig, HelperRuntime};
use anyhow::Context;
use shared_proto::agent_state::ImageRecord;
use shared_proto::manifest::DesiredManifest;
use shared_proto::wire::{AgentReport, UsageReport};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// With nothing to do, look again this often anyway (cheap: one runtime list).
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Containers' resource use is sampled this often (and sent only when it moved).
const USAGE_SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// Image garbage collection runs at most this often.
const GC_EVERY: Duration = Duration::from_secs(60);

pub fn helper_runtime(config: &AgentConfig) -> HelperRuntime {
    HelperRuntime::new(HelperConfig::new(config.runtime_state_dir(), config.logs_dir()))
}

/// Drops unpacked images, blobs and persistent volumes that the desired state no
/// longer names.
async fn collect_garbage<R: ContainerRuntime + 'static, H: Host>(
    exec: &mut Executor<R, H>,
    desired: &DesiredManifest,
    volumes_dir: &std::path::Path,
) {
    for record in exec.forget_unused_images(desired) {
        let digest = record.manifest_digest.clone();
        let path = PathBuf::from(&record.rootfs);
        let removed = tokio::task::spawn_blocking(move || images::remove_rootfs(&path)).await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::warn!(image = %digest, "could not remove an unused image; keeping its record");
            exec.keep_image(record);
            continue;
        }
        let _ = exec.db.remove_image(&digest);
        tracing::info!(image = %digest, "removed an unused image");
    }
    if let Some(puller) = &exec.puller {
        let blobs = puller.blobs.clone();
        let keep = exec.image_digests();
        let _ = tokio::task::spawn_blocking(move || gc_blobs(&blobs, &keep)).await;
    }
    let apps: Vec<String> = desired.apps.iter().map(|a| a.name.clone()).collect();
    let dir = volumes_dir.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = apps.iter().map(String::as_str).collect();
        crate::volumes::remove_departed(&dir, &names)
    })
    .await
    .unwrap_or_default();
    for app in removed {
        tracing::info!(%app, "removed the volumes of an app that left this device");
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
pub async fn reconcile_loop<R: ContainerRuntime + 'static, H: Host>(
    mut exec: Executor<R, H>,
    mut desired: watch::Receiver<DesiredManifest>,
    report: watch::Sender<AgentReport>,
    usage: watch::Sender<Option<UsageReport>>,
    mut pull_done: mpsc::UnboundedReceiver<(String, Result<ImageRecord, String>)>,
    mut probe_done: mpsc::UnboundedReceiver<ProbeDone>,
    volumes_dir: PathBuf,
) -> anyhow::Result<()> {
    let mut announced = false;
    let mut last_gc: Option<tokio::time::Instant> = None;
    let mut next_sample = tokio::time::Instant::now();
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
        // Addresses, published ports and policies before any pod or container of
        // this pass: a new pod needs its address, a new container its peers' names.
        let network_ok = exec.sync_network(&manifest).await;
        exec.run_probes(&plan.running, now);
        let running: Vec<String> = plan.running.iter().map(|(id, _, _)| id.clone()).collect();
        let busy = !plan.actions.is_empty();
        let (removals, others): (Vec<Action>, Vec<Action>) =
            plan.actions.into_iter().partition(|a| matches!(a, Action::Remove { .. }));
        let list: Vec<_> = removals
            .into_iter()
            .filter_map(|a| match a {
                Action::Remove { id, stop } => Some((id, stop)),
                _ => None,
            })
            .collect();
        // Removals first (they free host ports and resources), all at once.
        let mut all_ok = (list.is_empty() || exec.remove_many(&list).await) && network_ok;
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
        if !busy && last_gc.is_none_or(|t| t.elapsed() >= GC_EVERY) {
            last_gc = Some(tokio::time::Instant::now());
            exec.sweep().await;
            collect_garbage(&mut exec, &manifest, &volumes_dir).await;
        }
        let wake_at = match (plan.wake_at, exec.probes.next_wake()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if tokio::time::Instant::now() >= next_sample {
            next_sample = tokio::time::Instant::now() + USAGE_SAMPLE_EVERY;
            if let Some(u) = exec.sample_usage(&running, exec.clock.now()) {
                let _ = usage.send(Some(u));
            }
        }
        let wait = match wake_at {
            Some(at) => at.since(now).max(Duration::from_millis(50)),
            None if all_ok => IDLE_RECHECK,
            None => Duration::from_secs(1),
        }
        .min(
            next_sample.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(50)),
        );
        tokio::select! {
            r = desired.changed() => if r.is_err() { return Ok(()) },
            e = exec.exits.recv() => match e {
                Ok(exit) => exec.on_exit(&exit.id, exit.exit_code, exec.clock.now()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => exec.exits = exec.runtime.subscribe_exits(),
            },
            Some((digest, result)) = pull_done.recv() => exec.on_pull_done(digest, result, exec.clock.now()),
            Some(done) = probe_done.recv() => exec.on_probe_done(done, exec.clock.now()),
            _ = tokio::time::sleep(wait) => {}
        }
        // Take every exit and probe result already queued so one pass sees them all.
        exec.drain_exits();
        while let Ok(done) = probe_done.try_recv() {
            exec.on_probe_done(done, exec.clock.now());
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
    // Search-only for others: apps' roots in user namespaces pass through (crate::dirs).
    ensure_dir(&config.state_dir, agent_runtime::userns::PASS_THROUGH_MODE)?;
    ensure_dir(&config.runtime_dir, agent_runtime::userns::PASS_THROUGH_MODE)?;
    crate::secrets::ensure_private_tmpfs(&config.private_dir())?;
    crate::dirs::make_private_but_passable(&config)
        .context("setting who may enter the agent's directories")?;
    // Bundles of an agent before 0.2 sat on the disk: they are written again.
    let _ = std::fs::remove_dir_all(config.state_dir.join("bundles"));
    let db = StateDb::open(&config.db_path())?;
    let runtime = Arc::new(helper_runtime(&config));
    let blobs = images::blobstore::BlobStore::open(config.blobs_dir())?;
    let held = db.desired()?.map(|h| h.manifest).unwrap_or_else(|| DesiredManifest {
        device: config.name.clone(),
        revision: 0,
        apps: vec![],
        ..Default::default()
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
    let (usage_tx, usage_rx) = watch::channel(None);
    let (pull_tx, pull_rx) = mpsc::unbounded_channel();
    let (probe_tx, probe_rx) = mpsc::unbounded_channel();
    let puller = Puller { blobs, images_dir: config.images_dir(), link: link_rx, clock: clock.clone() };
    let host = Arc::new(DeviceHost::new(&config, Some(db.clone())));
    let net = host.net.clone();
    let log_clock = std::sync::Arc::new(std::sync::Mutex::new(crate::logs::LogClock::default()));
    tokio::spawn(crate::logs::run(config.logs_dir(), config.max_log_bytes, log_clock.clone()));
    let attach = crate::exec::AttachContext {
        db: db.clone(),
        logs_dir: config.logs_dir(),
        scratch_dir: config.private_dir().join("attach"),
        runtime: runtime.clone(),
        clock: log_clock,
    };
    let exec = Executor::new(clock.clone(), runtime, host, db.clone(), Some(puller), pull_tx, probe_tx)?;
    // Converge on what we have before (and whether or not) the hub answers.
    let mut reconciler = tokio::spawn(reconcile_loop(
        exec,
        desired_rx,
        report_tx,
        usage_tx,
        pull_rx,
        probe_rx,
        config.volumes_dir(),
    ));
    // systemd (Type=notify): the agent is up once it converges on its stored state,
    // which it does whether or not the hub answers.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }

    let endpoint = crate::transport::client_endpoint()?;
    let identity = tokio::select! {
        id = crate::enrol::ensure_identity(&config, &db, &endpoint, &clock) => id?,
        r = &mut reconciler => return r?.context("the reconcile loop stopped"),
    };
    let channels = crate::sync::SyncChannels {
        desired: desired_tx,
        report: report_rx,
        link: link_tx,
        usage: usage_rx,
        attach: Some(attach),
        net: Some(net),
    };
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
    let _ = std::fs::remove_dir_all(config.configs_dir());
    if crate::secrets::is_tmpfs(&config.private_dir()) && !crate::secrets::is_tmpfs(&config.runtime_dir) {
        let _ = nix::mount::umount2(&config.private_dir(), nix::mount::MntFlags::MNT_DETACH);
    }
    for app in agent_runtime::pod::list_pods(&config.pods_dir()) {
        let _ = crate::net::link::detach(&crate::net::veth_name(&config.net.bridge, &app));
        if let Err(e) = agent_runtime::pod::remove_pod(&config.pods_dir(), &app) {
            eprintln!("warning: pod {app}: {e}");
            failed += 1;
        }
    }
    if let Err(e) = agent_runtime::pod::release_root(&config.pods_dir()) {
        eprintln!("warning: {}: {e}", config.pods_dir().display());
        failed += 1;
    }
    // The device network goes with the pods; the next start makes it again.
    if let Err(e) = crate::net::link::remove_all(&config.net) {
        eprintln!("warning: device network: {e}");
        failed += 1;
    }
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
