//! Log compaction: with a low snapshot threshold the leader snapshots and purges its log, so
//! new and restarted hubs can only catch up by installing a snapshot; their data must then
//! equal the leader's.

mod common;

use common::*;
use hub_store::{ChangeBatch, NodeId, RaftTuning, Store};
use shared_proto::store::{Precondition as P, StoreKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::broadcast;

fn snapshot_tuning() -> RaftTuning {
    RaftTuning { snapshot_every_n_logs: 20, n_logs_kept_after_snapshot: 0, ..test_tuning() }
}

async fn open_node(
    dir: &std::path::Path,
    id: NodeId,
    addr: SocketAddr,
    members: &BTreeMap<NodeId, String>,
) -> Store {
    // Snapshots travel over the same mutual TLS as every other RPC.
    static CA: std::sync::OnceLock<TestCa> = std::sync::OnceLock::new();
    let ca = CA.get_or_init(TestCa::new);
    Store::open_with_tuning(tls_node_config(dir, id, addr, members, ca), snapshot_tuning()).await.unwrap()
}

/// Writes `n` sites and deletes every third one, so the snapshot holds puts and tombstones.
async fn write_sites(store: &Store, prefix: &str, n: usize) {
    for i in 0..n {
        applied(store.write(put(site(&format!("{prefix}-{i:03}"), prefix), P::MustNotExist)).await.unwrap());
    }
    for i in (0..n).step_by(3) {
        applied(
            store.write(delete(StoreKind::Site, &format!("{prefix}-{i:03}"), P::MustExist)).await.unwrap(),
        );
    }
}

async fn first_batch(rx: &mut broadcast::Receiver<Arc<ChangeBatch>>) -> Arc<ChangeBatch> {
    tokio::time::timeout(DEADLINE, rx.recv()).await.expect("a change batch in time").expect("no lag")
}

async fn assert_same_data(leader: &Store, follower: &Store) {
    let target = leader.revision();
    eventually("the follower to catch up", || follower.revision() >= target).await;
    for kind in [StoreKind::Site, StoreKind::App, StoreKind::ApiToken] {
        let listed = leader.list(kind).await.unwrap();
        assert_eq!(follower.list_local(kind).unwrap(), listed, "{kind}");
        // Counts follow snapshots, restarts and applies alike.
        assert_eq!(follower.count_local(kind).unwrap(), listed.len(), "{kind} counted on the follower");
        assert_eq!(leader.count_local(kind).unwrap(), listed.len(), "{kind} counted on the leader");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_catch_up_through_snapshots() {
    init_logging();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let only_first: BTreeMap<NodeId, String> = BTreeMap::from([(1, addrs[0].to_string())]);

    let leader = open_node(dirs[0].path(), 1, addrs[0], &only_first).await;
    assert!(leader.is_leader());
    write_sites(&leader, "a", 45).await;
    eventually("a snapshot and a purged log", || {
        let status = leader.status();
        status.snapshot_revision.is_some() && status.purged_revision.is_some()
    })
    .await;
    let purged = leader.status().purged_revision.unwrap();
    assert!(purged > 20, "the log is purged behind the snapshot, up to {purged}");

    // A new hub joins: the entries it needs are gone, so it must install a snapshot.
    let joiner = open_node(dirs[1].path(), 2, addrs[1], &only_first).await;
    assert_eq!(joiner.revision(), 0, "a joining hub does not form its own cluster");
    let (_, mut joiner_rx) = joiner.subscribe();
    leader.add_member(2, addrs[1].to_string()).await.unwrap();
    assert_same_data(&leader, &joiner).await;
    let batch = first_batch(&mut joiner_rx).await;
    assert!(batch.changes.len() > 1, "the first change on the joiner is a whole snapshot: {batch:?}");
    assert!(batch.changes.iter().all(|c| c.object.is_some()), "an empty replica only gains objects");
    assert!(joiner.status().snapshot_revision.is_some());
    // A snapshot carries no history: a watch from before it cannot be served there.
    match joiner.history_after(0, 1) {
        Err(hub_store::StoreError::Compacted { oldest, .. }) => assert_eq!(oldest, batch.revision),
        other => panic!("a watch from before the snapshot: {other:?}"),
    }
    assert!(joiner.history_after(batch.revision, 1).is_ok());
    // Adding a voter twice is a no-op.
    leader.add_member(2, addrs[1].to_string()).await.unwrap();

    // A third hub joins, then stops while the others move on past another snapshot.
    let third = open_node(dirs[2].path(), 3, addrs[2], &only_first).await;
    leader.add_member(3, addrs[2].to_string()).await.unwrap();
    assert_same_data(&leader, &third).await;
    let voters: Vec<NodeId> = leader.status().voters.into_keys().collect();
    assert_eq!(voters, vec![1, 2, 3]);
    let stopped_at = third.revision();
    third.shutdown().await.unwrap();
    drop(third);

    write_sites(&leader, "b", 45).await;
    eventually("the leader to purge past the stopped hub", || {
        leader.status().purged_revision.is_some_and(|p| p > stopped_at)
    })
    .await;

    // Restarted from its data dir, it catches up by snapshot again; the install removes the
    // objects deleted meanwhile and adds the new ones, as one change batch.
    let members: BTreeMap<NodeId, String> = (1..=3).zip(addrs.iter().map(|a| a.to_string())).collect();
    let third = open_node(dirs[2].path(), 3, addrs[2], &members).await;
    assert!(third.revision() >= stopped_at, "the restarted hub recovers its own state first");
    let (_, mut third_rx) = third.subscribe();
    assert_same_data(&leader, &third).await;
    let batch = first_batch(&mut third_rx).await;
    assert!(batch.changes.len() > 1, "caught up through a snapshot: {batch:?}");
    assert_eq!(third.status().snapshot_revision, Some(batch.revision));
    assert!(
        matches!(third.history_after(stopped_at, 1), Err(hub_store::StoreError::Compacted { .. })),
        "a watch from before the snapshot ends with 410 rather than skip what the snapshot folded"
    );

    // The snapshot-installed replica survives its own restart.
    let revision = third.revision();
    let sites = third.list_local(StoreKind::Site).unwrap();
    third.shutdown().await.unwrap();
    drop(third);
    let third = open_node(dirs[2].path(), 3, addrs[2], &members).await;
    assert!(third.revision() >= revision);
    assert_eq!(third.list_local(StoreKind::Site).unwrap().len(), sites.len());

    for store in [&leader, &joiner, &third] {
        store.shutdown().await.unwrap();
    }
}
