//! Raft's progress as the hub's metrics read it, and the liveness probe behind the systemd
//! watchdog, on a real single-member store.

mod common;

use common::*;
use hub_store::Store;
use shared_proto::store::Precondition as P;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_follows_writes_and_the_probe_answers() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(single_node_config(dir.path())).await.unwrap();
    store.probe(Duration::from_secs(5)).await.expect("a fresh store answers the probe");

    let before = store.raft_progress();
    assert!(before.is_leader && before.term >= 1, "{before:?}");
    let revision = applied(store.write(put(site("a", "Aachen"), P::None)).await.unwrap());

    // openraft publishes its metrics after the apply the write waited for: poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let p = store.raft_progress();
        if p.applied_index >= revision {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "applied index stuck at {p:?}, wrote {revision}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(after.committed_index >= revision && after.last_log_index >= revision, "{after:?}");
    assert!(after.applied_index > before.applied_index, "{before:?} -> {after:?}");
    assert_eq!(after.apply_lag(), after.committed_index - after.applied_index);
    assert_eq!(after.term, before.term, "no election on a single member");

    // A stopped store fails the probe instead of hanging.
    store.shutdown().await.unwrap();
    assert!(store.probe(Duration::from_secs(5)).await.is_err());
}
