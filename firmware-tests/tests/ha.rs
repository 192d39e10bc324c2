//! A hub cluster of real processes on loopback, formed as an operator forms one: the first
//! hub founds it, two more join with a join token (`flotilla hub join`). Raft between them
//! is mutual TLS. A writer applies objects continuously through every hub (followers
//! forward to the leader) while the leader is SIGKILLed and later restarted:
//! - every write that got a 2xx is on the new leader and on the restarted old one, with the
//!   same revision on both;
//! - a watcher on a surviving hub sees every change exactly once, in revision order;
//! - the cluster's membership is what `flotilla hub members` says; a hub removed with
//!   `flotilla hub remove` is gone from it while writes go on.
//!
//! - a device held by a follower is seen by the leader, and moves to another hub without
//!   going Offline when its own dies.
//!
//! The tests with an agent need root (its containers); the others do not.

use firmware_tests::{Hub, HubOptions, bin, wait_until};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// One row of `flotilla hub members`: node id, voter, leader.
fn members(hub: &Hub) -> Option<Vec<(u64, bool, bool)>> {
    let out = hub.cli(&["hub", "members"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let id = cols.first()?.parse().ok()?;
                Some((id, cols.get(2) == Some(&"yes"), cols.get(3) == Some(&"*")))
            })
            .collect(),
    )
}

/// The leader's node id once the hub agrees there is one among `voters` voters.
fn leader(hub: &Hub, voters: usize) -> u64 {
    wait_until("the cluster to have its voters and a leader", DEADLINE, || {
        let m = members(hub)?;
        let n_voters = m.iter().filter(|(_, v, _)| *v).count();
        let leader = m.iter().find(|(_, _, l)| *l).map(|(id, _, _)| *id)?;
        (n_voters == voters).then_some(leader)
    })
}

/// Applies sites through whichever hubs are up, round robin, until stopped; records the
/// names of the writes that were acknowledged.
struct Writer {
    targets: Arc<Mutex<Vec<String>>>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(context: PathBuf, targets: Vec<String>) -> Writer {
        let targets = Arc::new(Mutex::new(targets));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (targets, acked, stop) = (targets.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let hub = {
                        let t = targets.lock().unwrap();
                        t[i % t.len()].clone()
                    };
                    let name = format!("w-{i:05}");
                    let yaml = format!(
                        "apiVersion: flotilla.dev/v1\nkind: Site\nmetadata: {{name: {name}}}\nspec: {{location: writer}}\n"
                    );
                    let mut child = Command::new(bin("flotilla"))
                        .args(["--hub", &hub, "apply", "-f", "-"])
                        .env("FLOTILLA_CONTEXT", &context)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("flotilla apply");
                    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
                    if child.wait().unwrap().success() {
                        acked.lock().unwrap().push((name, Instant::now()));
                    }
                }
            })
        };
        Writer { targets, acked, stop, thread: Some(thread) }
    }

    fn n_acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn wait_for(&self, more: usize) {
        let from = self.n_acked();
        wait_until("more writes to be acknowledged", DEADLINE, || {
            (self.n_acked() >= from + more).then_some(())
        });
    }

    fn set_targets(&self, targets: Vec<String>) {
        *self.targets.lock().unwrap() = targets;
    }

    fn finish(mut self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

/// name -> revision of the writer's sites, as `hub` lists them.
fn written_sites(hub: &Hub) -> BTreeMap<String, u64> {
    let list = wait_until("the hub to list sites", DEADLINE, || hub.get("sites", None));
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            let name = s["metadata"]["name"].as_str()?;
            name.starts_with("w-").then(|| (name.to_string(), s["metadata"]["revision"].as_u64().unwrap()))
        })
        .collect()
}

fn start_cluster(dirs: &[&Path]) -> Vec<Hub> {
    start_cluster_with(dirs, HubOptions::default())
}

fn start_cluster_with(dirs: &[&Path], options: HubOptions) -> Vec<Hub> {
    for d in dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let first = Hub::start_with(dirs[0], options.clone().raft());
    let token = first.cli_ok(&["hub", "join-token", "create", "--ttl", "10m"]).trim().to_string();
    assert!(token.starts_with("flj1."), "{token}");
    let mut hubs = vec![first];
    for dir in &dirs[1..] {
        let hub = Hub::start_with(dir, options.clone().join(&hubs[0], &token));
        hubs.push(hub);
    }
    leader(&hubs[0], dirs.len());
    hubs
}

#[test]
fn leader_failover_keeps_every_acknowledged_write_and_watches_see_each_change_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("h{i}"))).collect();
    let mut hubs = start_cluster(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let context = hubs[0].context.clone();
    // Node ids are 1, 2, 3 in the order the hubs started.
    let leader_id = leader(&hubs[0], 3);
    let leader_idx = usize::try_from(leader_id - 1).unwrap();
    let watch_idx = (leader_idx + 1) % 3;

    // A watcher on a hub that survives, from revision 0 on.
    let watch_log = tmp.path().join("watch.jsonl");
    let mut watcher = Command::new(bin("flotilla"))
        .args(["--hub", &hubs[watch_idx].api, "get", "sites", "-w", "-o", "json"])
        .env("FLOTILLA_CONTEXT", &context)
        .stdout(std::fs::File::create(&watch_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let writer = Writer::start(context.clone(), hubs.iter().map(|h| h.api.clone()).collect());
    writer.wait_for(15);

    // SIGKILL the leader; writes go on through the two others.
    writer.set_targets(
        hubs.iter().enumerate().filter(|(i, _)| *i != leader_idx).map(|(_, h)| h.api.clone()).collect(),
    );
    let killed_at = Instant::now();
    hubs[leader_idx].kill();
    let new_leader = wait_until("a new leader", DEADLINE, || {
        let m = members(&hubs[watch_idx])?;
        m.iter().find(|(_, _, l)| *l).map(|(id, _, _)| *id).filter(|id| *id != leader_id)
    });
    writer.wait_for(15);
    let first_after = writer.acked.lock().unwrap().iter().find(|(_, at)| *at > killed_at).map(|(_, at)| *at);
    eprintln!(
        "failover: node {leader_id} killed; node {new_leader} leads; first write acknowledged {:?} after the kill",
        first_after.map(|t| t - killed_at)
    );

    // The old leader restarts from its data directory and catches up.
    hubs[leader_idx].restart();
    writer.set_targets(hubs.iter().map(|h| h.api.clone()).collect());
    writer.wait_for(10);
    let acked = writer.finish();
    let acked_names: BTreeSet<&str> = acked.iter().map(|(n, _)| n.as_str()).collect();

    let new_leader_idx = usize::try_from(new_leader - 1).unwrap();
    let on_leader = written_sites(&hubs[new_leader_idx]);
    let on_restarted = wait_until("the restarted hub to hold every acknowledged write", DEADLINE, || {
        let sites = written_sites(&hubs[leader_idx]);
        acked_names.iter().all(|n| sites.contains_key(*n)).then_some(sites)
    });
    for name in &acked_names {
        let revision =
            on_leader.get(*name).unwrap_or_else(|| panic!("acknowledged {name} is lost on the new leader"));
        assert_eq!(on_restarted.get(*name), Some(revision), "{name}: the same revision on both");
    }

    // Every change once, in revision order, across the leader's death.
    let last = *on_leader.values().max().unwrap();
    let events = wait_until("the watcher to see the last write", DEADLINE, || {
        let text = std::fs::read_to_string(&watch_log).unwrap_or_default();
        let events: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let seen = events.iter().any(|e| e["object"]["metadata"]["revision"].as_u64() == Some(last));
        seen.then_some(events)
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    let mut seen = BTreeSet::new();
    let mut previous = 0;
    for e in events
        .iter()
        .filter(|e| e["object"]["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("w-")))
    {
        let name = e["object"]["metadata"]["name"].as_str().unwrap().to_string();
        let revision = e["object"]["metadata"]["revision"].as_u64().unwrap();
        assert!(revision > previous, "{name} at {revision} after {previous}: out of order");
        previous = revision;
        assert!(seen.insert(name.clone()), "{name} seen twice");
        assert_eq!(on_leader.get(&name), Some(&revision), "{name}: the watcher saw the stored revision");
    }
    assert_eq!(seen, on_leader.keys().cloned().collect::<BTreeSet<_>>(), "the watcher saw every write");
}

#[test]
fn a_hub_is_removed_and_another_joins_while_writes_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=4).map(|i| tmp.path().join(format!("h{i}"))).collect();
    let mut hubs = start_cluster(&dirs[..3].iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let context = hubs[0].context.clone();
    let leader_id = leader(&hubs[0], 3);
    // Remove a follower (not hub 1, whose context the CLI uses).
    let removed_id = (2..=3).find(|id| *id != leader_id).unwrap();
    let removed_idx = usize::try_from(removed_id - 1).unwrap();
    let others: Vec<String> =
        hubs.iter().enumerate().filter(|(i, _)| *i != removed_idx).map(|(_, h)| h.api.clone()).collect();
    let writer = Writer::start(context, others.clone());
    writer.wait_for(10);

    let out = hubs[0].cli_ok(&["hub", "remove", &removed_id.to_string()]);
    assert!(out.contains(&format!("removed node {removed_id}")), "{out}");
    hubs[removed_idx].stop();
    let ids: Vec<u64> = members(&hubs[0]).unwrap().iter().map(|(id, _, _)| *id).collect();
    assert!(!ids.contains(&removed_id), "{ids:?}");
    writer.wait_for(10);

    // A new hub joins; it gets the next free node id (4) and catches up.
    let token = hubs[0].cli_ok(&["hub", "join-token", "create"]).trim().to_string();
    std::fs::create_dir_all(&dirs[3]).unwrap();
    let joined = Hub::start_with(&dirs[3], HubOptions::default().join(&hubs[0], &token));
    leader(&hubs[0], 3);
    let ids: BTreeSet<u64> = members(&hubs[0]).unwrap().iter().map(|(id, _, _)| *id).collect();
    assert!(ids.contains(&4) && !ids.contains(&removed_id), "{ids:?}");
    let mut targets = others;
    targets.push(joined.api.clone());
    writer.set_targets(targets);
    writer.wait_for(10);
    let acked = writer.finish();
    let on_joined = wait_until("the new hub to hold every acknowledged write", DEADLINE, || {
        let sites = written_sites(&joined);
        acked.iter().all(|(n, _)| sites.contains_key(n)).then_some(sites)
    });
    assert_eq!(
        on_joined,
        written_sites(&hubs[0]),
        "the new hub holds what the first does, revisions included"
    );

    // A bad or expired token is refused with a clear message, and changes nothing.
    let bad = Command::new(bin("flotilla"))
        .args([
            "hub",
            "join",
            &hubs[0].api,
            "--join-token",
            "flj1.00.1.ab.cd",
            "--raft-listen",
            "127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("h5"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("join token"), "{err}");
    assert_eq!(members(&hubs[0]).unwrap().len(), 3);
}

const APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata: {name: till}
spec:
  selector:
    matchLabels: {role: till}
  network: None
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: till:1
"#;

/// An agent connected to one hub runs an image imported through another: its hub fetches
/// the blobs from the peer that holds them (over the hubs' mutual TLS) before serving them.
#[test]
fn an_agent_on_one_hub_runs_an_image_imported_through_another() {
    firmware_tests::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("h{i}"))).collect();
    let hubs = start_cluster(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let (importer, serving) = (&hubs[0], &hubs[2]);
    let image = firmware_tests::busybox_image(tmp.path(), "till:1");
    importer.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let blobs_of =
        |hub: &Hub| std::fs::read_dir(hub.data_dir.join("blobs/blobs/sha256")).map_or(0, |d| d.count());
    let imported = blobs_of(importer);
    assert!(imported >= 3, "the importing hub holds the image's blobs ({imported})");

    let token = serving.enrolment_token(&["--allow-label", "role"]);
    let agent_dir = tmp.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let mut agent =
        firmware_tests::Agent::configure(&agent_dir, "pi-till", &serving.quic, &token, &[("role", "till")]);
    agent.start();
    let out = serving.apply(tmp.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the app's container to run on the device of the other hub", DEADLINE, || {
        let id = agent.runtime_containers().into_iter().find(|id| id.starts_with("till_main_"))?;
        agent.container_pid(&id)
    });
    let log = std::fs::read_to_string(serving.log_path()).unwrap();
    assert!(
        log.contains("fetched a blob this hub lacked from a peer"),
        "the serving hub fetched from its peer"
    );
    assert!(blobs_of(serving) >= imported.min(3), "the serving hub now holds the blobs it served");
    agent.kill();
    agent.reset();
}

/// Backup of a cluster, every hub wiped, restore into a new first hub, two more join:
/// every object is back on every hub with the revision it had.
#[test]
fn a_cluster_comes_back_from_a_backup_after_every_hub_is_wiped() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("h{i}"))).collect();
    let mut hubs = start_cluster(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let context = tmp.path().join("context.json");
    std::fs::copy(&hubs[0].context, &context).unwrap();
    let writer = Writer::start(context.clone(), hubs.iter().map(|h| h.api.clone()).collect());
    writer.wait_for(20);
    writer.finish();
    let before = written_sites(&hubs[1]);
    let file = tmp.path().join("cluster.backup");
    let key = tmp.path().join("secrets.key");
    std::fs::copy(hubs[0].data_dir.join("secrets.key"), &key).unwrap();
    hubs[2].cli_ok(&["backup", "create", file.to_str().unwrap()]);
    for hub in &mut hubs {
        hub.kill();
    }
    drop(hubs);
    for d in &dirs {
        std::fs::remove_dir_all(d).unwrap();
    }

    let restored_dir = tmp.path().join("r1");
    let raft = format!("127.0.0.1:{}", firmware_tests::free_port());
    let out = Command::new(bin("flotilla"))
        .args(["backup", "restore", file.to_str().unwrap(), "--secrets-key", key.to_str().unwrap()])
        .args(["--raft-advertise", &raft, "--data-dir"])
        .arg(restored_dir.join("hub"))
        .env_remove("FLOTILLA_CONTEXT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The restored hub keeps the old tokens: the saved context works against it.
    std::fs::copy(&context, restored_dir.join("hub").join("context.json")).unwrap();
    let first = Hub::start_with(&restored_dir, HubOptions::default().arg("--raft-listen").arg(&raft));
    let token = first.cli_ok(&["hub", "join-token", "create"]).trim().to_string();
    let mut hubs = vec![first];
    for i in 2..=3 {
        let d = tmp.path().join(format!("r{i}"));
        std::fs::create_dir_all(&d).unwrap();
        hubs.push(Hub::start_with(&d, HubOptions::default().join(&hubs[0], &token)));
    }
    leader(&hubs[0], 3);
    for hub in &hubs {
        assert_eq!(written_sites(hub), before, "every object back with its revision on {}", hub.api);
    }
}

/// What `flotilla hub members` on `hub` says of devices: where each member takes them, and
/// (on the leader) how many are connected to the cluster.
fn device_addresses(hub: &Hub) -> Option<(Vec<String>, Option<u64>)> {
    let out = hub.cli(&["hub", "members"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addresses = text
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().next().is_some_and(|c| c.parse::<u64>().is_ok()))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect();
    let connected = text
        .lines()
        .find_map(|l| l.strip_prefix("devices connected to the cluster: "))
        .and_then(|n| n.trim().parse().ok());
    Some((addresses, connected))
}

/// Agents on all three hubs, running a real app; the leader is SIGKILLed. The devices it
/// held move to the other hubs (which their own named to them), none is ever written
/// Offline, and all keep converging: a change applied after the kill reaches every one.
/// A device that then goes away for good is marked Offline by the new leader after the
/// grace period, though it was connected to a follower.
#[test]
fn agents_on_every_hub_keep_converging_and_none_goes_offline_when_a_hub_dies() {
    firmware_tests::require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("h{i}"))).collect();
    let mut hubs = start_cluster_with(
        &dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        HubOptions::default().offline_grace("20s"),
    );
    let leader_id = leader(&hubs[0], 3);
    let leader_idx = usize::try_from(leader_id - 1).unwrap();
    let survivor = (0..3).find(|i| *i != leader_idx).unwrap();
    wait_until("every hub to record where devices reach it", DEADLINE, || {
        let (addresses, _) = device_addresses(&hubs[0])?;
        (addresses.len() == 3 && addresses.iter().all(|a| a != "-")).then_some(())
    });
    let (addresses, _) = device_addresses(&hubs[0]).unwrap();
    for hub in &hubs {
        assert!(addresses.contains(&hub.quic), "{} among {addresses:?}", hub.quic);
    }

    let image = firmware_tests::busybox_image(tmp.path(), "till:1");
    hubs[0].cli_ok(&["image", "import", image.to_str().unwrap()]);
    let mut agents = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        let token = hub.enrolment_token(&["--allow-label", "role"]);
        let dir = tmp.path().join(format!("agent{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut agent = firmware_tests::Agent::configure(
            &dir,
            &format!("pi-{i}"),
            &hub.quic,
            &token,
            &[("role", "till")],
        );
        agent.start();
        agents.push(agent);
    }
    let out = hubs[survivor].apply(tmp.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Only the leader writes statuses: in sync means it saw every hub's devices.
    wait_until("every device to run the app", DEADLINE, || {
        (firmware_tests::devices_in_sync(&hubs[survivor], "pi-") == (3, 3)).then_some(())
    });
    for agent in &agents {
        wait_until("the device to learn the cluster's hubs", DEADLINE, || {
            agent.log().contains("the hub named the cluster's hubs").then_some(())
        });
    }
    wait_until("the leader to count every hub's devices", DEADLINE, || {
        (device_addresses(&hubs[leader_idx])?.1 == Some(3)).then_some(())
    });
    // What a device's containers use stays with its hub; any hub answers for it.
    let (asked, held) = (survivor, (survivor + 1) % 3);
    let used = wait_until("another hub's device's usage", Duration::from_secs(90), || {
        let out = hubs[asked].cli(&["describe", "device", &format!("pi-{held}")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.trim_start().starts_with("till/main"))?.to_string();
        let cols: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        (cols.len() > 4 && cols[4] != "-").then_some(cols)
    });
    assert!(used[4].ends_with("Mi"), "{used:?}");

    let watch_log = tmp.path().join("devices.jsonl");
    let mut watcher = Command::new(bin("flotilla"))
        .args(["--hub", &hubs[survivor].api, "get", "devices", "-w", "-o", "json"])
        .env("FLOTILLA_CONTEXT", &hubs[0].context)
        .stdout(std::fs::File::create(&watch_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the watcher to list the devices", DEADLINE, || {
        std::fs::read_to_string(&watch_log).unwrap_or_default().contains("pi-2").then_some(())
    });

    let killed_at = Instant::now();
    hubs[leader_idx].kill();
    let new_leader = wait_until("a new leader", DEADLINE, || {
        let m = members(&hubs[survivor])?;
        m.iter().find(|(_, _, l)| *l).map(|(id, _, _)| *id).filter(|id| *id != leader_id)
    });
    let new_leader_idx = usize::try_from(new_leader - 1).unwrap();
    // A change while the dead hub's device is still on its way to another hub.
    let out = hubs[survivor].apply(
        tmp.path(),
        &APP.replace("image: till:1", "image: till:1\n      env: [{name: V, value: \"2\"}]"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // It notices when its link times out, and connects to another hub.
    let moved = &agents[leader_idx];
    wait_until("the dead hub's device to move to another hub", Duration::from_secs(120), || {
        moved.log().contains("connected to another hub of the cluster").then_some(())
    });
    eprintln!("the dead hub's device moved {:?} after the kill", killed_at.elapsed());
    wait_until("every device to converge on the change", DEADLINE, || {
        let list = hubs[survivor].get("devices", None)?;
        let items = list["items"].as_array()?.clone();
        let done = items.iter().filter(|d| {
            let s = &d["status"];
            s["desiredRevision"].as_u64().is_some_and(|r| r > 0)
                && s["appliedRevision"] == s["desiredRevision"]
                && s["containers"].as_array().is_some_and(|c| c.iter().any(|c| c["phase"] == "Running"))
        });
        (done.count() == 3).then_some(())
    });
    // With its old hub lost, the new leader counts the moved device through its new hub:
    // its Offline transition is not coming.
    wait_until("the new leader to count every device", DEADLINE, || {
        (device_addresses(&hubs[new_leader_idx])?.1 == Some(3)).then_some(())
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    let text = std::fs::read_to_string(&watch_log).unwrap();
    let phases: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| {
            let name = e["object"]["metadata"]["name"].as_str()?.to_string();
            Some((name, e["object"]["status"]["phase"].as_str().unwrap_or_default().to_string()))
        })
        .collect();
    assert!(phases.len() >= 3, "{phases:?}");
    assert!(phases.iter().all(|(_, p)| p == "Online"), "the devices' phases across the kill: {phases:?}");

    // Gone for good from a follower: the new leader marks it Offline after the grace.
    let follower_idx = (0..3).find(|i| *i != leader_idx && *i != new_leader_idx).unwrap();
    let gone = format!("pi-{follower_idx}");
    agents[follower_idx].kill();
    let offline =
        wait_until("the new leader to mark the follower's device Offline", Duration::from_secs(90), || {
            let d = hubs[new_leader_idx].get("devices", Some(&gone))?;
            (d["status"]["phase"] == "Offline").then_some(d)
        });
    assert!(offline["status"]["message"].as_str().unwrap_or_default().contains("no connection since"));
    for agent in &mut agents {
        agent.kill();
        agent.reset();
    }
}

/// A cluster formed from static peers: `flotilla hub bootstrap` writes a data directory per
/// hub (Raft identity, hub key, members, the fleet CA sealed, an admin CLI context), the
/// three start at once with `hub serve`, elect a leader, and work as one.
#[test]
fn a_cluster_forms_from_static_peers_made_by_hub_bootstrap() {
    let tmp = tempfile::tempdir().unwrap();
    let rafts: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", firmware_tests::free_port())).collect();
    let out = tmp.path().join("bootstrap");
    let mut cmd = Command::new(bin("flotilla"));
    cmd.args(["hub", "bootstrap", "--out"]).arg(&out);
    for (i, r) in rafts.iter().enumerate() {
        cmd.args(["--member", &format!("{}={r}", i + 1)]);
    }
    let made = cmd.output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let report = String::from_utf8_lossy(&made.stdout);
    assert!(report.contains("--raft-listen"), "{report}");
    // Bootstrapping over it again is refused.
    let again = Command::new(bin("flotilla"))
        .args(["hub", "bootstrap", "--member", &format!("1={}", rafts[0]), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // Each directory goes to its machine (here: its own place), and all start at once.
    let dirs: Vec<PathBuf> = (1..=3).map(|i| tmp.path().join(format!("s{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d).unwrap();
        std::fs::rename(out.join(format!("hub-{}", i + 1)), d.join("hub")).unwrap();
    }
    let hubs: Vec<Hub> = std::thread::scope(|s| {
        let started: Vec<_> = dirs
            .iter()
            .zip(&rafts)
            .map(|(d, r)| {
                s.spawn(move || Hub::start_with(d, HubOptions::default().arg("--raft-listen").arg(r)))
            })
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let leader_id = leader(&hubs[0], 3);
    for hub in &hubs {
        let ids: BTreeSet<u64> = members(hub).unwrap().iter().map(|(id, _, _)| *id).collect();
        assert_eq!(ids, BTreeSet::from([1, 2, 3]));
        assert!(!hub.data_dir.join("founding-ca.sealed").exists(), "the CA is in the store now");
    }
    // One fleet CA for all: every hub's CLI context (rewritten by its hub) trusts the others.
    let out = hubs[1].apply(
        tmp.path(),
        "apiVersion: flotilla.dev/v1\nkind: Site\nmetadata: {name: s-1}\nspec: {location: x}\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let site = wait_until("the site on another hub", DEADLINE, || hubs[2].get("sites", Some("s-1")));
    assert_eq!(site["metadata"]["name"], "s-1");
    eprintln!("static cluster formed; node {leader_id} leads");
}
