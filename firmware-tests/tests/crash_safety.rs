//! SIGKILL at seeded random points of an apply, an update and a removal: every time,
//! the restarted agent resumes from what its state database and the runtime hold and
//! converges to exactly the desired containers, leaving no root filesystem, bundle,
//! pod or record behind.
//!
//! The seed list is fixed; `FLOTILLA_CRASH_SEED=<n>` replays one seed alone. Each
//! seed draws one kill delay per step, from the moment the hub accepted the change
//! (so before, during and after the agent acts on it).

use firmware_tests::prng::SplitMix64;
use firmware_tests::{Agent, Hub, busybox_image, busybox_image_running, require_root, wait_until};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);
const SEEDS: [u64; 3] = [7, 1_234, 987_654];
/// Kill points are drawn in `0..MAX_KILL_DELAY_MS` after the hub took the change.
const MAX_KILL_DELAY_MS: u64 = 1_200;

const APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: shop
spec:
  selector:
    matchLabels: {role: shop}
  network: None
  terminationGracePeriodSeconds: 2
  volumes:
    - name: data
      persistent: {}
  initContainers:
    - name: setup
      image: shop:1
      command: ["/bin/sh", "-c", "echo ready > /data/state"]
      volumeMounts: [{name: data, mountPath: /data}]
  containers:
    - name: main
      image: shop:VERSION
      command: ["/bin/sleep", "3600"]
      volumeMounts: [{name: data, mountPath: /data}]
    - name: helper
      image: shop:1
      command: ["/bin/sleep", "3600"]
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Apply,
    Update,
    Remove,
}

fn seeds() -> Vec<u64> {
    match std::env::var("FLOTILLA_CRASH_SEED") {
        Ok(s) => vec![s.parse().expect("FLOTILLA_CRASH_SEED must be a number")],
        Err(_) => SEEDS.to_vec(),
    }
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

fn dirs_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the device holds exactly what `step` leaves desired, and nothing else.
fn converged(agent: &Agent, step: Step, stale: Option<&str>) -> Result<(), String> {
    let live: BTreeSet<String> = agent.runtime_containers().into_iter().collect();
    if let Some(old) = stale.filter(|old| live.contains(*old)) {
        return Err(format!("{old} still runs the version before"));
    }
    let names: Vec<&str> = live.iter().filter_map(|id| id.split('_').nth(1)).collect();
    let expected: &[&str] = match step {
        Step::Remove => &[],
        _ => &["helper", "main", "setup"],
    };
    let mut sorted = names.clone();
    sorted.sort();
    if sorted != expected {
        return Err(format!("containers {live:?}, want one each of {expected:?}"));
    }
    let containers = agent.state_dir.join("containers");
    let roots = dirs_in(&containers);
    if roots != live {
        return Err(format!("root filesystems {roots:?} for containers {live:?}"));
    }
    let bundles = dirs_in(&agent.runtime_dir.join("private/bundles"));
    if bundles != live {
        return Err(format!("bundles {bundles:?} for containers {live:?}"));
    }
    let overlays = mounts_under(&containers).len();
    // The init container has exited; its root stays mounted like the others' until it
    // is removed.
    if overlays != live.len() {
        return Err(format!("{overlays} overlay mounts for {} containers", live.len()));
    }
    let pods = dirs_in(&agent.runtime_dir.join("pods"));
    let want_pods: BTreeSet<String> =
        if step == Step::Remove { BTreeSet::new() } else { ["shop".to_string()].into() };
    if pods != want_pods {
        return Err(format!("pods {pods:?}"));
    }
    Ok(())
}

#[test]
fn sigkill_at_seeded_points_of_apply_update_and_removal_leaves_a_state_the_agent_resumes_from() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let v1 = busybox_image(dir.path(), "shop:1");
    let v2 = busybox_image_running(dir.path(), "shop:2", &["/bin/sleep", "7200"]);
    hub.cli_ok(&["image", "import", v1.to_str().unwrap()]);
    hub.cli_ok(&["image", "import", v2.to_str().unwrap()]);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-crash", &hub.quic, &token, &[("role", "shop")]);
    agent.start();
    wait_until("the agent to enrol", LONG, || hub.get("devices", Some("pi-crash")).map(drop));

    for seed in seeds() {
        let mut rng = SplitMix64::new(seed);
        let mut main_v1 = String::new();
        for step in [Step::Apply, Step::Update, Step::Remove] {
            let delay = Duration::from_millis(rng.next_u64() % MAX_KILL_DELAY_MS);
            let out = match step {
                Step::Apply => hub.apply(dir.path(), &APP.replace("VERSION", "1")),
                Step::Update => hub.apply(dir.path(), &APP.replace("VERSION", "2")),
                Step::Remove => hub.cli(&["delete", "app", "shop"]),
            };
            assert!(out.status.success(), "seed {seed} {step:?}: {}", String::from_utf8_lossy(&out.stderr));
            // The fault's timing, not an assertion: the kill lands wherever this is.
            std::thread::sleep(delay);
            agent.kill();
            agent.start();
            let context = format!("seed {seed}, {step:?}, killed {} ms after the change", delay.as_millis());
            let mut last = String::new();
            let deadline = std::time::Instant::now() + LONG;
            loop {
                let stale = (step == Step::Update).then_some(main_v1.as_str());
                match converged(&agent, step, stale) {
                    Ok(()) => break,
                    Err(why) if std::time::Instant::now() < deadline => {
                        last = why;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(why) => panic!("{context}: did not converge: {why} (before: {last})"),
                }
            }
            let main = agent.runtime_containers().into_iter().find(|id| id.starts_with("shop_main_"));
            match step {
                Step::Apply => main_v1 = main.expect("converged"),
                Step::Update => {
                    assert_ne!(main.as_deref(), Some(main_v1.as_str()), "{context}: main runs version 2")
                }
                Step::Remove => {}
            }
        }
    }
}
