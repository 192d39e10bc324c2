//! When each container's probes run and what their results mean: a pure state
//! machine, fed the running containers and the results of the checks it asked for,
//! with time passed in. The runners (exec, HTTP, TCP) are in [`crate::probes`]; the
//! verdicts go to [`super::reconcile`], which decides restarts and readiness.
//!
//! The rules are Kubernetes':
//! - the first check of a kind runs `initialDelaySeconds` after the container started,
//!   the next one `periodSeconds` after the previous result;
//! - while a startup probe has not passed, liveness and readiness are not checked; it
//!   fails the container after `failureThreshold` consecutive failures;
//! - liveness fails the container after `failureThreshold` consecutive failures;
//! - readiness starts false, turns true after `successThreshold` consecutive
//!   successes and false again after `failureThreshold` consecutive failures;
//! - a container that started again (a new start time) starts from scratch, and a
//!   failed container is not checked again until then.

use shared_proto::Timestamp;
use shared_proto::manifest::DesiredContainer;
use shared_proto::workload::Probe;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

/// One check to run now. The runner enforces `probe.timeout_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRun {
    pub id: String,
    pub kind: ProbeKind,
    pub probe: Probe,
    /// The container start this check belongs to: a result for an older start is
    /// dropped.
    pub started_at: Timestamp,
}

/// What the probes say about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeVerdict {
    /// The startup probe passed, or there is none.
    pub started: bool,
    /// Started, and the readiness probe passes (or there is none).
    pub ready: bool,
    /// Liveness or startup failed: the container must be restarted, for this reason.
    pub failed: Option<String>,
    /// Why it is not ready, when it is not: stable text (no counts that move).
    pub message: String,
}

#[derive(Debug, Clone, Default)]
struct KindState {
    successes: u32,
    failures: u32,
    passing: bool,
    next_at: Timestamp,
    in_flight: bool,
    last_error: String,
}

#[derive(Debug, Clone)]
struct Tracked {
    started_at: Timestamp,
    probes: BTreeMap<ProbeKind, (Probe, KindState)>,
    failed: Option<String>,
}

impl Tracked {
    fn passed(&self, kind: ProbeKind) -> bool {
        self.probes.get(&kind).is_none_or(|(_, s)| s.passing)
    }
}

/// Every running container's probes.
#[derive(Debug, Default)]
pub struct ProbeTracker {
    containers: BTreeMap<String, Tracked>,
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

impl ProbeTracker {
    /// Follows the running containers: new ones (or ones that started again) are
    /// tracked from scratch, gone ones are dropped.
    pub fn sync<'a>(
        &mut self,
        running: impl IntoIterator<Item = (&'a str, Timestamp, &'a DesiredContainer)>,
    ) {
        let mut keep = BTreeMap::new();
        for (id, started_at, c) in running {
            let probes = [
                (ProbeKind::Startup, &c.startup_probe),
                (ProbeKind::Liveness, &c.liveness_probe),
                (ProbeKind::Readiness, &c.readiness_probe),
            ];
            let fresh = || Tracked {
                started_at,
                probes: probes
                    .iter()
                    .filter_map(|(k, p)| {
                        let p = p.as_ref()?;
                        let state = KindState {
                            // Liveness holds until proven otherwise; the rest must pass first.
                            passing: *k == ProbeKind::Liveness,
                            next_at: started_at.saturating_add(secs(p.initial_delay_seconds)),
                            ..Default::default()
                        };
                        Some((*k, (p.clone(), state)))
                    })
                    .collect(),
                failed: None,
            };
            let tracked = match self.containers.remove(id) {
                Some(t) if t.started_at == started_at => t,
                _ => fresh(),
            };
            keep.insert(id.to_string(), tracked);
        }
        self.containers = keep;
    }

    /// The checks due at `now`; each is marked in flight until its result comes.
    pub fn due(&mut self, now: Timestamp) -> Vec<ProbeRun> {
        let mut runs = Vec::new();
        for (id, t) in &mut self.containers {
            if t.failed.is_some() {
                continue;
            }
            let started = t.passed(ProbeKind::Startup);
            for (kind, (probe, state)) in &mut t.probes {
                let gated = *kind != ProbeKind::Startup && !started;
                let done = *kind == ProbeKind::Startup && state.passing;
                if gated || done || state.in_flight || now < state.next_at {
                    continue;
                }
                state.in_flight = true;
                runs.push(ProbeRun {
                    id: id.clone(),
                    kind: *kind,
                    probe: probe.clone(),
                    started_at: t.started_at,
                });
            }
        }
        runs
    }

    /// A check's result. Results for a container that has since restarted or gone are
    /// dropped.
    pub fn handle_result(&mut self, run: &ProbeRun, result: Result<(), String>, now: Timestamp) {
        let Some(t) = self.containers.get_mut(&run.id) else { return };
        if t.started_at != run.started_at {
            return;
        }
        let Some((probe, state)) = t.probes.get_mut(&run.kind) else { return };
        state.in_flight = false;
        state.next_at = now.saturating_add(secs(probe.period_seconds));
        match result {
            Ok(()) => {
                state.failures = 0;
                state.successes = state.successes.saturating_add(1);
                if state.successes >= probe.success_threshold {
                    state.passing = true;
                    state.last_error.clear();
                }
            }
            Err(why) => {
                state.successes = 0;
                state.failures = state.failures.saturating_add(1);
                state.last_error = why;
                if state.failures >= probe.failure_threshold {
                    state.passing = false;
                    if run.kind != ProbeKind::Readiness {
                        t.failed = Some(format!(
                            "{} probe failed {} times: {}",
                            run.kind.as_str(),
                            probe.failure_threshold,
                            state.last_error
                        ));
                    }
                }
            }
        }
    }

    /// The verdict on a tracked container; `None` for one not tracked (not running).
    pub fn verdict(&self, id: &str) -> Option<ProbeVerdict> {
        let t = self.containers.get(id)?;
        let started = t.passed(ProbeKind::Startup);
        let ready = started && t.passed(ProbeKind::Readiness) && t.failed.is_none();
        let message = if ready {
            String::new()
        } else if !started {
            "waiting for the startup probe".to_string()
        } else {
            match t.probes.get(&ProbeKind::Readiness) {
                Some((_, s)) if !s.last_error.is_empty() => format!("readiness probe: {}", s.last_error),
                _ => "waiting for the readiness probe".to_string(),
            }
        };
        Some(ProbeVerdict { started, ready, failed: t.failed.clone(), message })
    }

    /// Verdicts of every tracked container.
    pub fn verdicts(&self) -> BTreeMap<String, ProbeVerdict> {
        self.containers.keys().filter_map(|id| Some((id.clone(), self.verdict(id)?))).collect()
    }

    /// When the next check falls due (checks in flight wake the loop themselves).
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.containers
            .values()
            .filter(|t| t.failed.is_none())
            .flat_map(|t| {
                let started = t.passed(ProbeKind::Startup);
                t.probes.iter().filter_map(move |(k, (_, s))| {
                    let idle = !s.in_flight
                        && (*k == ProbeKind::Startup || started)
                        && !(*k == ProbeKind::Startup && s.passing);
                    idle.then_some(s.next_at)
                })
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::workload::TcpSocketAction;

    fn probe(delay: u32, period: u32, success: u32, failure: u32) -> Probe {
        Probe {
            tcp_socket: Some(TcpSocketAction { port: 80 }),
            initial_delay_seconds: delay,
            period_seconds: period,
            success_threshold: success,
            failure_threshold: failure,
            ..Default::default()
        }
    }

    fn t(secs: u64) -> Timestamp {
        Timestamp(secs * 1000)
    }

    fn run_all(p: &mut ProbeTracker, now: Timestamp, result: Result<(), String>) -> Vec<ProbeKind> {
        let runs = p.due(now);
        for r in &runs {
            p.handle_result(r, result.clone(), now);
        }
        runs.iter().map(|r| r.kind).collect()
    }

    #[test]
    fn readiness_needs_its_successes_and_falls_after_its_failures() {
        let c = DesiredContainer { readiness_probe: Some(probe(5, 10, 2, 3)), ..Default::default() };
        let mut p = ProbeTracker::default();
        p.sync([("a", t(100), &c)]);
        assert!(!p.verdict("a").unwrap().ready, "not ready before its first check");
        assert!(p.due(t(104)).is_empty(), "initial delay");
        assert_eq!(p.next_wake(), Some(t(105)));
        assert_eq!(run_all(&mut p, t(105), Ok(())), vec![ProbeKind::Readiness]);
        assert!(!p.verdict("a").unwrap().ready, "one success of two");
        assert!(p.due(t(114)).is_empty(), "period counts from the result");
        run_all(&mut p, t(115), Ok(()));
        assert!(p.verdict("a").unwrap().ready);
        for n in 0..3 {
            assert!(p.verdict("a").unwrap().ready, "still ready after {n} failures");
            run_all(&mut p, t(125 + 10 * n), Err("connection refused".into()));
        }
        let v = p.verdict("a").unwrap();
        assert!(!v.ready && v.failed.is_none(), "readiness never restarts");
        assert_eq!(v.message, "readiness probe: connection refused");
    }

    #[test]
    fn liveness_fails_the_container_and_stops_checking_until_it_starts_again() {
        let c = DesiredContainer { liveness_probe: Some(probe(0, 1, 1, 2)), ..Default::default() };
        let mut p = ProbeTracker::default();
        p.sync([("a", t(0), &c)]);
        assert!(p.verdict("a").unwrap().ready, "no readiness probe: ready once running");
        run_all(&mut p, t(0), Err("exit code 1".into()));
        assert_eq!(p.verdict("a").unwrap().failed, None);
        run_all(&mut p, t(1), Err("exit code 1".into()));
        let v = p.verdict("a").unwrap();
        assert_eq!(v.failed.as_deref(), Some("liveness probe failed 2 times: exit code 1"));
        assert!(!v.ready);
        assert!(p.due(t(10)).is_empty(), "a failed container is not checked again");
        assert_eq!(p.next_wake(), None);
        // Restarted: a fresh start.
        p.sync([("a", t(20), &c)]);
        assert_eq!(p.verdict("a").unwrap().failed, None);
        assert_eq!(run_all(&mut p, t(20), Ok(())), vec![ProbeKind::Liveness]);
    }

    #[test]
    fn the_startup_probe_gates_the_others() {
        let c = DesiredContainer {
            startup_probe: Some(probe(0, 1, 1, 3)),
            liveness_probe: Some(probe(0, 1, 1, 1)),
            readiness_probe: Some(probe(0, 1, 1, 1)),
            ..Default::default()
        };
        let mut p = ProbeTracker::default();
        p.sync([("a", t(0), &c)]);
        assert_eq!(run_all(&mut p, t(0), Err("refused".into())), vec![ProbeKind::Startup]);
        let v = p.verdict("a").unwrap();
        assert!(!v.started && !v.ready && v.failed.is_none());
        assert_eq!(v.message, "waiting for the startup probe");
        assert_eq!(run_all(&mut p, t(1), Ok(())), vec![ProbeKind::Startup]);
        assert!(p.verdict("a").unwrap().started);
        let kinds = run_all(&mut p, t(2), Ok(()));
        assert_eq!(kinds, vec![ProbeKind::Liveness, ProbeKind::Readiness], "startup runs no more");
        assert!(p.verdict("a").unwrap().ready);
    }

    #[test]
    fn a_startup_probe_that_never_passes_fails_the_container() {
        let c = DesiredContainer { startup_probe: Some(probe(0, 1, 1, 2)), ..Default::default() };
        let mut p = ProbeTracker::default();
        p.sync([("a", t(0), &c)]);
        run_all(&mut p, t(0), Err("timed out".into()));
        run_all(&mut p, t(1), Err("timed out".into()));
        assert_eq!(
            p.verdict("a").unwrap().failed.as_deref(),
            Some("startup probe failed 2 times: timed out")
        );
    }

    #[test]
    fn results_for_an_older_start_or_a_gone_container_are_dropped() {
        let c = DesiredContainer { liveness_probe: Some(probe(0, 1, 1, 1)), ..Default::default() };
        let mut p = ProbeTracker::default();
        p.sync([("a", t(0), &c)]);
        let runs = p.due(t(0));
        assert!(p.due(t(0)).is_empty(), "in flight: not asked twice");
        p.sync([("a", t(5), &c)]);
        p.handle_result(&runs[0], Err("late".into()), t(6));
        assert_eq!(p.verdict("a").unwrap().failed, None);
        p.sync([]);
        assert_eq!(p.verdict("a"), None);
        p.handle_result(&runs[0], Err("late".into()), t(7));
    }
}
