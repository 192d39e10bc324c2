//! Crash recovery: a child process writes as fast as it can and is killed with SIGKILL at an
//! arbitrary point; reopening its data dir must lose no acknowledged write.
//!
//! Applies commit without their own fdatasync (see `state_machine::APPLY_DURABILITY`), so this
//! is what proves the state machine is rebuilt from the durable log after a crash.

mod common;

use common::*;
use hub_store::Store;
use shared_proto::store::{Precondition as P, StoreKind};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const CHILD_DIR_ENV: &str = "HUB_STORE_CRASH_CHILD_DIR";

/// The child: writes sites until killed, printing each acknowledged write. Ignored, so that a
/// normal test run never executes it; the parent runs it with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run only as the crash_recovery test's child process"]
async fn crash_child() {
    let dir = std::env::var(CHILD_DIR_ENV).expect("the crash test's child needs its data dir");
    let store = Store::open(single_node_config(std::path::Path::new(&dir))).await.unwrap();
    let mut stdout = std::io::stdout();
    for i in 0.. {
        let name = format!("site-{i:06}");
        let revision = applied(store.write(put(site(&name, "crash"), P::MustNotExist)).await.unwrap());
        writeln!(stdout, "acked {name} {revision}").unwrap();
        stdout.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Lines come through a thread so that a hung child fails the test instead of hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    while acked.len() < 300 {
        let Ok(line) = rx.recv_timeout(DEADLINE) else {
            child.kill().unwrap();
            panic!("the child stopped acknowledging writes after {}", acked.len());
        };
        let Some(rest) = line.strip_prefix("acked ") else { continue };
        let (name, revision) = rest.split_once(' ').unwrap();
        acked.insert(name.to_string(), revision.parse().unwrap());
    }
    // SIGKILL, mid-stream: the child is writing its next entries right now.
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(single_node_config(dir.path())).await.unwrap();
    // A single-member store has re-applied its committed log by the time `open` returns.
    assert!(store.revision() >= *acked.values().max().unwrap());
    // A linearizable list waits until the restarted node has re-applied its committed log.
    let sites = store.list(StoreKind::Site).await.unwrap();
    let stored: BTreeMap<String, u64> =
        sites.iter().map(|s| (s.name().to_string(), s.metadata().unwrap().revision)).collect();
    for (name, revision) in &acked {
        assert_eq!(stored.get(name), Some(revision), "acknowledged write {name} survives the crash");
    }
    // And the store keeps working.
    applied(store.write(put(site("after-crash", ""), P::MustNotExist)).await.unwrap());
    store.shutdown().await.unwrap();
}
