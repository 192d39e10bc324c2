//! The agent's reconcile core: a pure function from (desired manifest, what runs,
//! what is unpacked, restart history, probe verdicts, now) to the actions that close
//! the gap, plus the report of every desired container's state. No I/O, no clock: the
//! agent's loop gathers the inputs and carries out the actions, so this is tested
//! exhaustively without containers.
//!
//! An app runs as a pod: its containers share a network namespace (unless the app
//! uses the host's) and an IPC namespace, held by the pod itself so that they outlive
//! any one container, and its volumes. Its init containers run first, one at a time
//! and in order, each to a successful exit; then its containers start.
//!
//! Invariants:
//! - running the same inputs twice yields the same actions (idempotent);
//! - containers no longer desired are removed before new ones start, so an update
//!   that keeps a host port can take it over; a pod goes once its containers have;
//! - a container whose spec is unchanged across app generations keeps running;
//! - init containers are done once each exited 0, or once any of the app's containers
//!   runs (an agent restart does not run them again under a running app);
//! - a failing container, a failing liveness or startup probe, or a failing image pull
//!   is retried with exponential back-off, never in a hot loop, and the report says why
//!   it waits;
//! - a report changes only when the state does: reasons name the back-off step, never
//!   a countdown, so an unchanged device sends nothing and the hub writes nothing.

pub mod probes;

use shared_proto::manifest::{
    ContainerPhase, DesiredApp, DesiredConfig, DesiredContainer, DesiredManifest, ObservedContainer,
};
use shared_proto::workload::Handler;
use shared_proto::{RestartPolicy, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use probes::{ProbeKind, ProbeRun, ProbeTracker, ProbeVerdict};

/// Longest wait between two restarts or pull attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting starts its back-off afresh.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// What the runtime reports about one container, plus the exit code if we saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeView {
    pub status: RuntimeStatus,
    /// Known only when the agent's helper reaped the process.
    pub exit_code: Option<i32>,
    pub started_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeStatus {
    Creating,
    Created,
    Running,
    Stopped,
}

/// Where an image pull stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullState {
    InFlight,
    Failed { reason: String, retry_at: Timestamp },
}

/// Restart bookkeeping for one (app, container).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartState {
    /// The container (version) these failures are of: a new version starts afresh,
    /// as a new pod does.
    pub id: String,
    pub n_restarts: u32,
    /// No new attempt before this time.
    pub not_before: Timestamp,
    /// Why the last attempt failed (create/start error), if it did.
    pub last_error: Option<String>,
    /// Why the last run ended when the exit code does not say it all (`OOMKilled`, a
    /// failed liveness probe).
    pub last_termination: Option<String>,
}

/// The exponential back-off after `n` consecutive failures: 1s, 2s, 4s … 5 min.
pub fn backoff(n: u32) -> Duration {
    let secs = 1u64.checked_shl(n.saturating_sub(1).min(20)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// How a container stops: its app's grace period and pre-stop hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopPolicy {
    pub grace: Duration,
    pub pre_stop: Option<Handler>,
}

impl Default for StopPolicy {
    fn default() -> Self {
        StopPolicy {
            grace: Duration::from_secs(u64::from(shared_proto::manifest::v1::DEFAULT_GRACE_SECONDS)),
            pre_stop: None,
        }
    }
}

impl StopPolicy {
    pub fn of(app: &DesiredApp, c: &DesiredContainer) -> StopPolicy {
        StopPolicy {
            grace: Duration::from_secs(u64::from(app.grace_period_seconds)),
            pre_stop: c.lifecycle.pre_stop.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Observed {
    /// Runtime containers by id.
    pub runtime: BTreeMap<String, RuntimeView>,
    /// Unpacked images by manifest digest.
    pub images: BTreeSet<String>,
    pub pulls: BTreeMap<String, PullState>,
    /// By (app, container name).
    pub restarts: BTreeMap<(String, String), RestartState>,
    /// Apps whose pod (shared namespaces) exists.
    pub pods: BTreeSet<String>,
    /// How existing containers stop, from their records (for those no longer desired).
    pub stop_policies: BTreeMap<String, StopPolicy>,
    /// Probe verdicts of running containers, by id.
    pub probes: BTreeMap<String, ProbeVerdict>,
}

/// The app a container runs in: what a run needs to know (its volumes, its network,
/// the names of its containers for the pod's `/etc/hosts`).
pub fn app_context(app: &DesiredApp) -> Box<DesiredApp> {
    Box::new(app.clone())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch and unpack an image.
    Pull { digest: String },
    /// Create the app's pod: the namespaces its containers share.
    CreatePod { app: Box<DesiredApp> },
    /// Remove a pod none of whose containers exist any more.
    RemovePod { app: String },
    /// Create and start a container in its app's pod, then run its post-start hook.
    /// `configs`: the Configs and Secrets it uses, with their data.
    Run {
        id: String,
        app: Box<DesiredApp>,
        container: Box<DesiredContainer>,
        init: bool,
        configs: Vec<DesiredConfig>,
    },
    /// Start a created container.
    Start { id: String },
    /// Stop a container and keep it (its exit then counts as a restart): a failed
    /// liveness or startup probe.
    Stop { id: String, stop: StopPolicy, reason: String },
    /// Stop (pre-stop hook, SIGTERM, grace, SIGKILL) and delete a container and its
    /// root filesystem.
    Remove { id: String, stop: StopPolicy },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub report: Vec<ObservedContainer>,
    /// When to look again even if nothing happens (a back-off expiring).
    pub wake_at: Option<Timestamp>,
    /// Running containers and when they started, for the probe tracker.
    pub running: Vec<(String, Timestamp, DesiredContainer)>,
}

/// The runtime id of a container: app, name and a hash of its effective spec,
/// everything that requires a new container when it changes. `_` cannot appear in
/// app or container names, so the id parses back unambiguously.
///
/// The hash covers a canonical form of the spec in which fields holding their default
/// (empty, unset, false) are left out, so a field added to [`DesiredContainer`] in a
/// later version changes the id only of containers that set it: upgrading the hub or
/// the agent never restarts a fleet's containers by itself. Fields are hashed under
/// their JSON names, which therefore never change.
pub fn container_id(app: &DesiredApp, c: &DesiredContainer, configs: &[DesiredConfig]) -> String {
    let is_init = app.init_containers.iter().any(|i| i.name == c.name);
    // And when a Config or Secret it uses changes (their digests).
    let used: Vec<&str> = configs_of(app, c, configs).iter().map(|x| x.digest.as_str()).collect();
    // A container is recreated when what it runs in changes: the volumes it mounts,
    // the user namespace, and (for the app's containers) the init containers that
    // prepare it, as a Kubernetes pod is.
    let volumes: Vec<_> =
        app.volumes.iter().filter(|v| c.volume_mounts.iter().any(|m| m.name == v.name)).collect();
    let init: Vec<String> = if is_init {
        vec![]
    } else {
        app.init_containers.iter().map(|i| container_id(app, i, configs)).collect()
    };
    let spec = serde_json::json!({
        "container": c,
        "network": app.network,
        "volumes": volumes,
        "userNamespace": app.user_namespace,
        "init": init,
        "configs": used,
    });
    let mut canonical = String::new();
    write_canonical(&spec, &mut canonical);
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    format!("{}_{}_{}", app.name, c.name, hex::encode(&digest.as_ref()[..6]))
}

/// The `Config`s and `Secret`s of the manifest that container `c` mounts or reads.
pub fn configs_of<'a>(
    app: &DesiredApp,
    c: &DesiredContainer,
    configs: &'a [DesiredConfig],
) -> Vec<&'a DesiredConfig> {
    let mut refs: BTreeSet<(bool, &str)> = BTreeSet::new();
    for m in &c.volume_mounts {
        if let Some(v) = app.volumes.iter().find(|v| v.name == m.name) {
            if let Some(r) = &v.config {
                refs.insert((false, r.name.as_str()));
            }
            if let Some(r) = &v.secret {
                refs.insert((true, r.name.as_str()));
            }
        }
    }
    for (_, from) in &c.env_from {
        if let Some(r) = &from.config {
            refs.insert((false, r.name.as_str()));
        }
        if let Some(r) = &from.secret {
            refs.insert((true, r.name.as_str()));
        }
    }
    configs.iter().filter(|x| refs.contains(&(x.secret, x.name.as_str()))).collect()
}

/// The id first-light agents (0.1) gave the same container: a hash of its postcard
/// encoding in manifest shape 1. A container running under it is adopted, not
/// replaced.
pub fn legacy_container_id(app: &DesiredApp, c: &DesiredContainer) -> String {
    let shape1 = shared_proto::manifest::v1::DesiredContainer::from(c);
    let bytes = postcard::to_stdvec(&(shape1, app.network)).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    format!("{}_{}_{}", app.name, c.name, hex::encode(&digest.as_ref()[..6]))
}

fn is_default(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_default),
        Value::Bool(true) | Value::Number(_) => false,
    }
}

/// JSON with object keys sorted and default-valued fields left out (array elements
/// are kept as they are: their positions mean something).
fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().filter(|k| !is_default(&o[*k])).collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// App and container name of an id made by [`container_id`].
pub fn parse_container_id(id: &str) -> Option<(&str, &str)> {
    let mut parts = id.splitn(3, '_');
    Some((parts.next()?, parts.next()?)).filter(|_| parts.next().is_some())
}

fn earliest(a: Option<Timestamp>, b: Timestamp) -> Option<Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// What one pass is building.
struct Pass<'a> {
    obs: &'a Observed,
    configs: &'a [DesiredConfig],
    now: Timestamp,
    plan: Plan,
    runs: Vec<Action>,
    pulls: BTreeSet<String>,
}

impl Pass<'_> {
    fn run(&mut self, id: &str, app: &DesiredApp, c: &DesiredContainer, init: bool) {
        self.runs.push(Action::Run {
            id: id.to_string(),
            app: app_context(app),
            container: Box::new(c.clone()),
            init,
            configs: configs_of(app, c, self.configs).into_iter().cloned().collect(),
        });
    }

    /// The report of one desired container, and what it needs done.
    fn step(&mut self, app: &DesiredApp, c: &DesiredContainer, id: &str, init: bool) -> ObservedContainer {
        let (obs, now) = (self.obs, self.now);
        let restart = match obs.restarts.get(&(app.name.clone(), c.name.clone())) {
            Some(r) if r.id.is_empty() || r.id == id => r.clone(),
            _ => RestartState::default(),
        };
        let mut report = ObservedContainer {
            app: app.name.clone(),
            generation: app.generation,
            name: c.name.clone(),
            id: id.to_string(),
            restarts: restart.n_restarts,
            init,
            ..Default::default()
        };
        let waiting = now < restart.not_before;
        match obs.runtime.get(id) {
            Some(rt) if rt.status == RuntimeStatus::Running => {
                report.phase = ContainerPhase::Running;
                report.started_at = rt.started_at;
                if init {
                    return report;
                }
                let started_at = rt.started_at.unwrap_or_default();
                self.plan.running.push((id.to_string(), started_at, c.clone()));
                let no_probes = c.readiness_probe.is_none() && c.startup_probe.is_none();
                match obs.probes.get(id) {
                    Some(v) if v.failed.is_some() => {
                        let reason = v.failed.clone().unwrap_or_default();
                        report.reason = format!("restarting: {reason}");
                        self.plan.actions.push(Action::Stop {
                            id: id.to_string(),
                            stop: StopPolicy::of(app, c),
                            reason,
                        });
                    }
                    Some(v) => {
                        report.ready = v.ready;
                        report.reason = v.message.clone();
                    }
                    None => {
                        report.ready = no_probes;
                        if !no_probes {
                            report.reason = "waiting for its first probe".into();
                        }
                    }
                }
            }
            Some(rt) if rt.status == RuntimeStatus::Created => {
                report.reason = "starting".into();
                self.plan.actions.push(Action::Start { id: id.to_string() });
            }
            Some(rt) if rt.status == RuntimeStatus::Stopped => {
                report.exit_code = rt.exit_code;
                let failed = rt.exit_code != Some(0);
                let again = match (init, app.restart_policy) {
                    (_, RestartPolicy::Never) => false,
                    (true, _) | (false, RestartPolicy::OnFailure) => failed,
                    (false, RestartPolicy::Always) => true,
                };
                report.phase = ContainerPhase::Exited;
                let code = rt.exit_code.map_or("unknown".into(), |c| c.to_string());
                let why = restart.last_termination.as_deref().map(|t| format!(" ({t})")).unwrap_or_default();
                if !again {
                    report.reason = match rt.exit_code {
                        Some(code) => format!("exited with code {code}{why}"),
                        None => "exited while the agent was not watching".into(),
                    };
                    if init && failed {
                        report.phase = ContainerPhase::Failed;
                        report.reason = format!("init container {}", report.reason);
                    }
                } else if waiting {
                    report.reason = format!(
                        "exited with code {code}{why}; back-off {}s before restart {}",
                        backoff(restart.n_restarts).as_secs(),
                        restart.n_restarts + 1
                    );
                    if restart.n_restarts >= 3 && failed {
                        report.phase = ContainerPhase::Failed;
                        report.reason = format!("crash loop: {}", report.reason);
                    }
                    self.plan.wake_at = earliest(self.plan.wake_at, restart.not_before);
                } else {
                    report.reason = "restarting".into();
                    self.plan
                        .actions
                        .push(Action::Remove { id: id.to_string(), stop: StopPolicy::of(app, c) });
                    self.run(id, app, c, init);
                }
            }
            Some(_) => report.reason = "being created".into(),
            None if obs.images.contains(&c.image_digest) => {
                if waiting {
                    report.phase = ContainerPhase::Failed;
                    report.reason = format!(
                        "{}; back-off {}s before attempt {}",
                        restart.last_error.as_deref().unwrap_or("could not start"),
                        backoff(restart.n_restarts).as_secs(),
                        restart.n_restarts + 1
                    );
                    self.plan.wake_at = earliest(self.plan.wake_at, restart.not_before);
                } else {
                    report.reason = "creating".into();
                    self.run(id, app, c, init);
                }
            }
            None => match obs.pulls.get(&c.image_digest) {
                Some(PullState::InFlight) => report.reason = format!("pulling image {}", c.image),
                Some(PullState::Failed { reason, retry_at }) if now < *retry_at => {
                    report.phase = ContainerPhase::Failed;
                    report.reason =
                        format!("image {} not available: {reason}; retrying after back-off", c.image);
                    self.plan.wake_at = earliest(self.plan.wake_at, *retry_at);
                }
                _ => {
                    report.reason = format!("pulling image {}", c.image);
                    self.pull(&c.image_digest);
                }
            },
        }
        report
    }

    fn pull(&mut self, digest: &str) {
        if !self.obs.images.contains(digest)
            && !matches!(self.obs.pulls.get(digest), Some(PullState::InFlight))
            && self.pulls.insert(digest.to_string())
        {
            let failed_until = match self.obs.pulls.get(digest) {
                Some(PullState::Failed { retry_at, .. }) if self.now < *retry_at => Some(*retry_at),
                _ => None,
            };
            match failed_until {
                Some(at) => self.plan.wake_at = earliest(self.plan.wake_at, at),
                None => self.plan.actions.push(Action::Pull { digest: digest.to_string() }),
            }
        }
    }

    fn waiting_report(
        app: &DesiredApp,
        c: &DesiredContainer,
        id: &str,
        init: bool,
        reason: String,
    ) -> ObservedContainer {
        ObservedContainer {
            app: app.name.clone(),
            generation: app.generation,
            name: c.name.clone(),
            id: id.to_string(),
            init,
            reason,
            ..Default::default()
        }
    }

    fn app(&mut self, app: &DesiredApp) -> BTreeSet<String> {
        let (obs, configs) = (self.obs, self.configs);
        let resolve = |c: &DesiredContainer| {
            let id = container_id(app, c, configs);
            let legacy = legacy_container_id(app, c);
            if !obs.runtime.contains_key(&id) && obs.runtime.contains_key(&legacy) { legacy } else { id }
        };
        let init_ids: Vec<String> =
            app.init_containers.iter().map(|c| container_id(app, c, configs)).collect();
        let main_ids: Vec<String> = app.containers.iter().map(resolve).collect();
        let wanted: BTreeSet<String> = init_ids.iter().chain(&main_ids).cloned().collect();
        if !obs.pods.contains(&app.name) {
            self.plan.actions.push(Action::CreatePod { app: app_context(app) });
            let all = app.init_containers.iter().zip(&init_ids).map(|(c, id)| (c, id, true));
            for (c, id, init) in all.chain(app.containers.iter().zip(&main_ids).map(|(c, id)| (c, id, false)))
            {
                self.pull(&c.image_digest);
                self.plan.report.push(Self::waiting_report(
                    app,
                    c,
                    id,
                    init,
                    "creating the app's pod".into(),
                ));
            }
            return wanted;
        }
        // Init containers: done when each exited 0, or when the app already runs.
        let app_runs = main_ids.iter().any(|id| obs.runtime.contains_key(id));
        let mut blocking: Option<&str> = None;
        for (c, id) in app.init_containers.iter().zip(&init_ids) {
            let done = matches!(obs.runtime.get(id), Some(v) if v.status == RuntimeStatus::Stopped && v.exit_code == Some(0));
            if let Some(first) = blocking {
                self.pull(&c.image_digest);
                self.plan.report.push(Self::waiting_report(
                    app,
                    c,
                    id,
                    true,
                    format!("waiting for init container {first}"),
                ));
                continue;
            }
            if done || app_runs {
                let mut r = Self::waiting_report(app, c, id, true, "completed".into());
                r.phase = ContainerPhase::Exited;
                r.exit_code = obs.runtime.get(id).and_then(|v| v.exit_code);
                r.restarts =
                    obs.restarts.get(&(app.name.clone(), c.name.clone())).map_or(0, |r| r.n_restarts);
                self.plan.report.push(r);
                continue;
            }
            let report = self.step(app, c, id, true);
            self.plan.report.push(report);
            blocking = Some(&c.name);
        }
        for (c, id) in app.containers.iter().zip(&main_ids) {
            let report = match blocking {
                Some(first) => {
                    self.pull(&c.image_digest);
                    Self::waiting_report(app, c, id, false, format!("waiting for init container {first}"))
                }
                None => self.step(app, c, id, false),
            };
            self.plan.report.push(report);
        }
        wanted
    }
}

pub fn reconcile(desired: &DesiredManifest, obs: &Observed, now: Timestamp) -> Plan {
    let mut pass = Pass {
        obs,
        configs: &desired.configs,
        now,
        plan: Plan::default(),
        runs: vec![],
        pulls: BTreeSet::new(),
    };
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for app in &desired.apps {
        wanted.extend(pass.app(app));
    }
    let Pass { mut plan, runs, .. } = pass;
    // Remove what is no longer wanted before starting anything new.
    let mut actions: Vec<Action> = obs
        .runtime
        .keys()
        .filter(|id| !wanted.contains(*id))
        .map(|id| Action::Remove {
            id: id.clone(),
            stop: obs.stop_policies.get(id).cloned().unwrap_or_default(),
        })
        .collect();
    let desired_apps: BTreeSet<&str> = desired.apps.iter().map(|a| a.name.as_str()).collect();
    let occupied: BTreeSet<&str> =
        obs.runtime.keys().filter_map(|id| parse_container_id(id).map(|(a, _)| a)).collect();
    for pod in &obs.pods {
        if !desired_apps.contains(pod.as_str()) && !occupied.contains(pod.as_str()) {
            actions.push(Action::RemovePod { app: pod.clone() });
        }
    }
    actions.append(&mut plan.actions);
    actions.extend(runs);
    plan.actions = actions;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::NetworkMode;
    use shared_proto::manifest::ContainerLimits;

    fn container(name: &str, digest: &str) -> DesiredContainer {
        DesiredContainer {
            name: name.into(),
            image: "img:1".into(),
            image_digest: digest.into(),
            command: vec![],
            args: vec![],
            env: vec![],
            ports: vec![],
            limits: ContainerLimits::default(),
            working_dir: String::new(),
            ..Default::default()
        }
    }

    fn manifest(policy: RestartPolicy, containers: Vec<DesiredContainer>) -> DesiredManifest {
        DesiredManifest {
            device: "pi".into(),
            revision: 3,
            apps: vec![DesiredApp {
                name: "web".into(),
                generation: 2,
                restart_policy: policy,
                network: NetworkMode::Host,
                containers,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn id_of(m: &DesiredManifest, i: usize) -> String {
        container_id(&m.apps[0], &m.apps[0].containers[i], &m.configs)
    }

    /// What a pass sees once the app's pod exists.
    fn observed() -> Observed {
        Observed { pods: ["web".to_string()].into(), ..Default::default() }
    }

    fn rt(status: RuntimeStatus, exit_code: Option<i32>) -> RuntimeView {
        RuntimeView { status, exit_code, started_at: None }
    }

    #[test]
    fn missing_images_are_pulled_once_then_containers_run() {
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x"), container("b", "sha256:x")]);
        let mut obs = observed();
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert_eq!(plan.actions, vec![Action::Pull { digest: "sha256:x".into() }]);
        assert!(
            plan.report.iter().all(|r| r.phase == ContainerPhase::Pending && r.reason.contains("pulling"))
        );
        obs.pulls.insert("sha256:x".into(), PullState::InFlight);
        assert!(reconcile(&m, &obs, Timestamp(0)).actions.is_empty());
        obs.images.insert("sha256:x".into());
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert!(matches!(&plan.actions[..], [Action::Run { .. }, Action::Run { .. }]));
    }

    #[test]
    fn running_containers_are_left_alone_and_reconcile_is_idempotent() {
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        let mut obs = observed();
        obs.images.insert("sha256:x".into());
        obs.runtime.insert(id_of(&m, 0), rt(RuntimeStatus::Running, None));
        let first = reconcile(&m, &obs, Timestamp(5));
        assert!(first.actions.is_empty());
        assert_eq!(first.report[0].phase, ContainerPhase::Running);
        assert_eq!(first, reconcile(&m, &obs, Timestamp(5)));
    }

    #[test]
    fn unwanted_containers_go_first() {
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:new")]);
        let mut obs = observed();
        obs.images.insert("sha256:new".into());
        obs.runtime.insert("web_a_oldhash".into(), rt(RuntimeStatus::Running, None));
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert_eq!(
            plan.actions[0],
            Action::Remove { id: "web_a_oldhash".into(), stop: StopPolicy::default() }
        );
        assert!(matches!(plan.actions[1], Action::Run { .. }));
    }

    #[test]
    fn restart_policies() {
        for (policy, code, restarts) in [
            (RestartPolicy::Always, Some(0), true),
            (RestartPolicy::Always, Some(1), true),
            (RestartPolicy::OnFailure, Some(0), false),
            (RestartPolicy::OnFailure, Some(2), true),
            (RestartPolicy::OnFailure, None, true),
            (RestartPolicy::Never, Some(1), false),
        ] {
            let m = manifest(policy, vec![container("a", "sha256:x")]);
            let mut obs = observed();
            obs.images.insert("sha256:x".into());
            obs.runtime.insert(id_of(&m, 0), rt(RuntimeStatus::Stopped, code));
            let plan = reconcile(&m, &obs, Timestamp(0));
            assert_eq!(!plan.actions.is_empty(), restarts, "{policy:?} {code:?}");
            assert_eq!(plan.report[0].exit_code, code);
            if !restarts {
                assert_eq!(plan.report[0].phase, ContainerPhase::Exited);
            }
        }
    }

    #[test]
    fn crash_loops_back_off_and_say_so() {
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        let mut obs = observed();
        obs.images.insert("sha256:x".into());
        obs.runtime.insert(id_of(&m, 0), rt(RuntimeStatus::Stopped, Some(1)));
        obs.restarts.insert(
            ("web".into(), "a".into()),
            RestartState { n_restarts: 4, not_before: Timestamp(8_000), ..Default::default() },
        );
        let plan = reconcile(&m, &obs, Timestamp(1_000));
        assert!(plan.actions.is_empty());
        assert_eq!(plan.report[0].phase, ContainerPhase::Failed);
        assert!(plan.report[0].reason.contains("crash loop"), "{}", plan.report[0].reason);
        assert!(plan.report[0].reason.contains("back-off 8s before restart 5"), "{}", plan.report[0].reason);
        assert_eq!(plan.wake_at, Some(Timestamp(8_000)));
        // Waiting out the back-off changes nothing in the report: nothing to send.
        assert_eq!(reconcile(&m, &obs, Timestamp(7_999)).report, plan.report);
        let plan = reconcile(&m, &obs, Timestamp(8_000));
        assert!(matches!(&plan.actions[..], [Action::Remove { .. }, Action::Run { .. }]));
    }

    #[test]
    fn failed_pulls_wait_then_retry() {
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        let mut obs = observed();
        obs.pulls.insert(
            "sha256:x".into(),
            PullState::Failed { reason: "hub unreachable".into(), retry_at: Timestamp(4_000) },
        );
        let plan = reconcile(&m, &obs, Timestamp(1_000));
        assert!(plan.actions.is_empty());
        assert!(plan.report[0].reason.contains("hub unreachable"));
        assert_eq!(reconcile(&m, &obs, Timestamp(3_999)).report, plan.report, "no countdown");
        assert_eq!(plan.wake_at, Some(Timestamp(4_000)));
        assert_eq!(
            reconcile(&m, &obs, Timestamp(4_000)).actions,
            vec![Action::Pull { digest: "sha256:x".into() }]
        );
    }

    #[test]
    fn created_but_not_started_containers_are_started() {
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        let mut obs = observed();
        obs.runtime.insert(id_of(&m, 0), rt(RuntimeStatus::Created, None));
        assert_eq!(reconcile(&m, &obs, Timestamp(0)).actions, vec![Action::Start { id: id_of(&m, 0) }]);
    }

    #[test]
    fn ids_change_with_the_spec_and_parse_back() {
        let m1 = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        let mut m2 = m1.clone();
        m2.apps[0].generation = 9;
        m2.apps[0].restart_policy = RestartPolicy::Never;
        assert_eq!(id_of(&m1, 0), id_of(&m2, 0), "policy and generation do not recreate containers");
        m2.apps[0].containers[0].image_digest = "sha256:y".into();
        assert_ne!(id_of(&m1, 0), id_of(&m2, 0));
        assert_eq!(parse_container_id(&id_of(&m1, 0)), Some(("web", "a")));
        assert_eq!(parse_container_id("nounderscores"), None);
    }

    #[test]
    fn a_field_added_with_its_default_keeps_the_id() {
        // What a later version's container spec looks like: one more field, unset.
        #[derive(serde::Serialize)]
        struct NextContainer<'a> {
            #[serde(flatten)]
            today: &'a DesiredContainer,
            volumes: Vec<String>,
            user: Option<String>,
            privileged: bool,
        }
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        let (app, c) = (&m.apps[0], &m.apps[0].containers[0]);
        let next = |volumes: Vec<String>| {
            let spec = serde_json::json!({
                "container": NextContainer { today: c, volumes, user: None, privileged: false },
                "network": app.network,
            });
            let mut s = String::new();
            write_canonical(&spec, &mut s);
            format!(
                "{}_{}_{}",
                app.name,
                c.name,
                hex::encode(&ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref()[..6])
            )
        };
        assert_eq!(next(vec![]), container_id(app, c, &[]), "an unset new field changes nothing");
        assert_ne!(next(vec!["/data".into()]), container_id(app, c, &[]), "a set one does");
    }

    #[test]
    fn containers_started_under_the_first_light_id_are_adopted() {
        let m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        let legacy = legacy_container_id(&m.apps[0], &m.apps[0].containers[0]);
        assert_ne!(legacy, id_of(&m, 0));
        let mut obs = observed();
        obs.images.insert("sha256:x".into());
        obs.runtime.insert(legacy.clone(), rt(RuntimeStatus::Running, None));
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.report[0].id, legacy);
        assert_eq!(plan.report[0].phase, ContainerPhase::Running);
    }

    fn pod_app() -> DesiredManifest {
        let mut m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        m.apps[0].init_containers = vec![container("init", "sha256:x")];
        m.apps[0].grace_period_seconds = 7;
        m
    }

    #[test]
    fn no_pod_no_containers_but_images_are_fetched_meanwhile() {
        let m = pod_app();
        let plan = reconcile(&m, &Observed::default(), Timestamp(0));
        assert!(
            matches!(&plan.actions[..], [Action::CreatePod { .. }, Action::Pull { .. }]),
            "{:?}",
            plan.actions
        );
        assert!(plan.report.iter().all(|r| r.reason == "creating the app's pod"));
    }

    #[test]
    fn init_containers_are_done_once_they_exited_zero_or_the_app_runs() {
        let m = pod_app();
        let init_id = container_id(&m.apps[0], &m.apps[0].init_containers[0], &[]);
        let mut obs = observed();
        obs.images.insert("sha256:x".into());
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert!(matches!(&plan.actions[..], [Action::Run { init: true, .. }]), "{:?}", plan.actions);
        obs.runtime.insert(init_id.clone(), rt(RuntimeStatus::Stopped, Some(0)));
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert!(matches!(&plan.actions[..], [Action::Run { init: false, .. }]), "{:?}", plan.actions);
        // Exit code unknown (an agent restart), but the app runs: not run again.
        obs.runtime.insert(init_id.clone(), rt(RuntimeStatus::Stopped, None));
        obs.runtime.insert(id_of(&m, 0), rt(RuntimeStatus::Running, None));
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.report.iter().find(|r| r.init).unwrap().reason, "completed");
    }

    #[test]
    fn a_failed_init_container_under_never_fails_the_app() {
        let mut m = pod_app();
        m.apps[0].restart_policy = RestartPolicy::Never;
        let init_id = container_id(&m.apps[0], &m.apps[0].init_containers[0], &[]);
        let mut obs = observed();
        obs.images.insert("sha256:x".into());
        obs.runtime.insert(init_id, rt(RuntimeStatus::Stopped, Some(4)));
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert!(plan.actions.is_empty());
        let init = plan.report.iter().find(|r| r.init).unwrap();
        assert_eq!(init.phase, ContainerPhase::Failed);
        assert_eq!(init.reason, "init container exited with code 4");
        let main = plan.report.iter().find(|r| !r.init).unwrap();
        assert_eq!(main.reason, "waiting for init container init");
    }

    #[test]
    fn probe_verdicts_become_readiness_and_stops() {
        let mut m = manifest(RestartPolicy::Always, vec![container("a", "sha256:x")]);
        m.apps[0].containers[0].readiness_probe = Some(Default::default());
        let id = id_of(&m, 0);
        let mut obs = observed();
        obs.runtime.insert(id.clone(), rt(RuntimeStatus::Running, None));
        let plan = reconcile(&m, &obs, Timestamp(0));
        assert!(!plan.report[0].ready, "a readiness probe must pass first");
        assert_eq!(plan.running.len(), 1, "handed to the probe tracker");
        obs.probes.insert(id.clone(), ProbeVerdict { started: true, ready: true, ..Default::default() });
        assert!(reconcile(&m, &obs, Timestamp(0)).report[0].ready);
        obs.probes.insert(
            id.clone(),
            ProbeVerdict {
                started: true,
                failed: Some("liveness probe failed 3 times: x".into()),
                ..Default::default()
            },
        );
        let plan = reconcile(&m, &obs, Timestamp(0));
        let [Action::Stop { id: stopped, stop, reason }] = &plan.actions[..] else {
            panic!("{:?}", plan.actions)
        };
        assert_eq!(
            (stopped, stop.grace, reason.as_str()),
            (&id, Duration::from_secs(10), "liveness probe failed 3 times: x")
        );
    }

    #[test]
    fn a_departed_app_stops_with_its_recorded_grace_and_its_pod_goes_last() {
        let empty = DesiredManifest { device: "pi".into(), revision: 9, apps: vec![], configs: vec![] };
        let mut obs = observed();
        obs.runtime.insert("web_a_1".into(), rt(RuntimeStatus::Running, None));
        let policy = StopPolicy { grace: Duration::from_secs(30), pre_stop: None };
        obs.stop_policies.insert("web_a_1".into(), policy.clone());
        let plan = reconcile(&empty, &obs, Timestamp(0));
        assert_eq!(
            plan.actions,
            vec![Action::Remove { id: "web_a_1".into(), stop: policy }],
            "the pod waits"
        );
        obs.runtime.clear();
        let plan = reconcile(&empty, &obs, Timestamp(0));
        assert_eq!(plan.actions, vec![Action::RemovePod { app: "web".into() }]);
    }

    #[test]
    fn an_init_container_change_recreates_the_app_s_containers_and_a_volume_mount_does_too() {
        let m1 = pod_app();
        let mut m2 = m1.clone();
        m2.apps[0].init_containers[0].command = vec!["/migrate".into()];
        assert_ne!(id_of(&m1, 0), id_of(&m2, 0));
        let mut m3 = m1.clone();
        m3.apps[0].grace_period_seconds = 99;
        assert_eq!(id_of(&m1, 0), id_of(&m3, 0), "the grace period is how it stops, not what it is");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
