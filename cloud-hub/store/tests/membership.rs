//! Membership changes while writes go on: a hub is removed and another added (asked of
//! followers, which forward to the leader), then the leader itself is removed. Every write
//! acknowledged to the writer is on every remaining hub afterwards, with its revision.

mod common;

use common::*;
use hub_store::{NodeId, RaftTuning, Store, StoreError};
use shared_proto::store::{Precondition as P, StoreKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

fn tuning() -> RaftTuning {
    // Snapshots now and then, so the added hub may catch up from one.
    RaftTuning { snapshot_every_n_logs: 50, n_logs_kept_after_snapshot: 10, ..test_tuning() }
}

async fn open(
    dir: &std::path::Path,
    id: NodeId,
    addr: SocketAddr,
    members: &BTreeMap<NodeId, String>,
    ca: &TestCa,
) -> Store {
    Store::open_with_tuning(tls_node_config(dir, id, addr, members, ca), tuning()).await.unwrap()
}

/// Writes sites through whichever hub `target` names until told to stop; records what was
/// acknowledged. Unavailable answers (an election, a removed hub) are retried with a new name.
fn spawn_writer(
    stores: Arc<Mutex<BTreeMap<NodeId, Store>>>,
    target: watch::Receiver<NodeId>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 0;
        while !*stop.borrow() {
            i += 1;
            let id = *target.borrow();
            let store = stores.lock().unwrap().get(&id).cloned();
            let Some(store) = store else { continue };
            let name = format!("w-{i}");
            match store.write(put(site(&name, "writer"), P::MustNotExist)).await {
                Ok(outcome) => acked.push((name, applied(outcome))),
                Err(StoreError::Unavailable(_) | StoreError::NotLeader { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("write through node {id}: {e}"),
            }
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_are_removed_and_added_while_writes_continue() {
    init_logging();
    let ca = TestCa::new();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let members: BTreeMap<NodeId, String> = (1..=3).zip(addrs.iter().map(|a| a.to_string())).collect();
    let (s1, s2, s3) = tokio::join!(
        open(dirs[0].path(), 1, addrs[0], &members, &ca),
        open(dirs[1].path(), 2, addrs[1], &members, &ca),
        open(dirs[2].path(), 3, addrs[2], &members, &ca),
    );
    let leader = agreed_leader(&[&s1, &s2, &s3]).await;
    let stores = Arc::new(Mutex::new(BTreeMap::from([(1, s1), (2, s2), (3, s3)])));
    let get = |id: NodeId| stores.lock().unwrap()[&id].clone();
    let followers: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    let (keep, remove) = (followers[0], followers[1]);

    // The writer goes through a follower, which forwards.
    let (target_tx, target_rx) = watch::channel(keep);
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = spawn_writer(stores.clone(), target_rx, stop_rx);
    let progress = |n: u64| {
        let s = get(keep);
        async move {
            let from = s.revision();
            eventually("writes to go on", || s.revision() >= from + n).await;
        }
    };
    progress(30).await;

    // Remove a follower, asked of the other follower.
    get(keep).remove_member(remove).await.unwrap();
    let removed = stores.lock().unwrap().remove(&remove).unwrap();
    assert!(!get(leader).status().voters.contains_key(&remove));
    removed.shutdown().await.unwrap();
    progress(30).await;

    // Add a fresh hub 4, asked of the follower; it does not form a cluster of its own.
    let s4 = open(dirs[3].path(), 4, addrs[3], &members, &ca).await;
    stores.lock().unwrap().insert(4, s4.clone());
    get(keep).add_member(4, addrs[3].to_string()).await.unwrap();
    let voters: Vec<NodeId> = get(leader).status().voters.keys().copied().collect();
    assert_eq!(voters, {
        let mut v = vec![leader, keep, 4];
        v.sort();
        v
    });
    progress(30).await;

    // Remove the leader itself: the two others carry on with a new one.
    target_tx.send_replace(4);
    get(4).remove_member(leader).await.unwrap();
    let old_leader = stores.lock().unwrap().remove(&leader).unwrap();
    let new_leader = agreed_leader(&[&get(keep), &get(4)]).await;
    assert_ne!(new_leader, leader);
    old_leader.shutdown().await.unwrap();
    progress(30).await;

    stop_tx.send_replace(true);
    let acked = writer.await.unwrap();
    assert!(acked.len() >= 100, "only {} writes acknowledged", acked.len());
    let last = acked.last().unwrap().1;
    for id in [keep, 4] {
        let s = get(id);
        eventually("the remaining hubs to apply every write", || s.revision() >= last).await;
        for (name, revision) in &acked {
            let got = s.get_local_revisioned(StoreKind::Site, name).unwrap();
            assert_eq!(got.map(|r| r.revision), Some(*revision), "node {id}: {name}");
        }
    }
    assert_eq!(get(keep).status().voters.keys().copied().collect::<Vec<_>>(), {
        let mut v = vec![keep, 4];
        v.sort();
        v
    });
    let remaining: Vec<Store> = stores.lock().unwrap().values().cloned().collect();
    for s in remaining {
        s.shutdown().await.unwrap();
    }
}
