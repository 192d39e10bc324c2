//! A real three-hub cluster on loopback: election, replication to followers, followers
//! refusing writes, failover without losing acknowledged writes, and a restarted hub
//! catching up from its own data directory.

mod common;

use common::*;
use hub_store::{NodeId, Store, StoreError};
use shared_proto::store::{Object, Precondition as P, StoreKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;

async fn open_node(
    dir: &std::path::Path,
    id: NodeId,
    addr: SocketAddr,
    members: &BTreeMap<NodeId, String>,
) -> Store {
    Store::open_with_tuning(node_config(dir, id, addr, members), test_tuning()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_replicate_fail_over_and_catch_up() {
    init_logging();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let members: BTreeMap<NodeId, String> = (1..=3).zip(addrs.iter().map(|a| a.to_string())).collect();
    let (s1, s2, s3) = tokio::join!(
        open_node(dirs[0].path(), 1, addrs[0], &members),
        open_node(dirs[1].path(), 2, addrs[1], &members),
        open_node(dirs[2].path(), 3, addrs[2], &members),
    );
    let mut stores: BTreeMap<NodeId, Store> = BTreeMap::from([(1, s1), (2, s2), (3, s3)]);

    let leader_id = agreed_leader(&stores.values().collect::<Vec<_>>()).await;
    let leader = stores[&leader_id].clone();
    assert_eq!(leader.status().voters, members);

    // Writes through the leader reach every follower.
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    for i in 0..10 {
        let name = format!("site-{i}");
        let r = applied(leader.write(put(site(&name, "first term"), P::MustNotExist)).await.unwrap());
        acknowledged.push((name, r));
    }
    let last = acknowledged.last().unwrap().1;
    let want = leader.list(StoreKind::Site).await.unwrap();
    for store in stores.values() {
        eventually("followers to apply the writes", || store.revision() >= last).await;
        assert_eq!(store.list_local(StoreKind::Site).unwrap(), want);
    }

    // A follower refuses writes and linearizable reads, naming the leader.
    let (follower_id, follower) = stores.iter().find(|(id, _)| **id != leader_id).unwrap();
    assert!(!follower.is_leader());
    let expect_not_leader = |res: Result<_, StoreError>| match res {
        Err(StoreError::NotLeader { leader, leader_addr }) => {
            assert_eq!(leader, Some(leader_id));
            assert_eq!(leader_addr.as_deref(), Some(members[&leader_id].as_str()));
        }
        other => panic!("node {follower_id}: expected NotLeader, got {other:?}"),
    };
    expect_not_leader(follower.write(put(site("from-follower", ""), P::None)).await.map(|_| ()));
    expect_not_leader(follower.get(StoreKind::Site, "site-0").await.map(|_| ()));
    assert!(follower.get_local(StoreKind::Site, "site-0").unwrap().is_some(), "local reads work anywhere");

    // Kill the leader: the two others elect a new one, and nothing acknowledged is lost.
    leader.shutdown().await.unwrap();
    let old = stores.remove(&leader_id).unwrap();
    drop((leader, old));
    let new_leader_id = agreed_leader(&stores.values().collect::<Vec<_>>()).await;
    assert_ne!(new_leader_id, leader_id);
    let new_leader = stores[&new_leader_id].clone();
    for (name, revision) in &acknowledged {
        let object =
            new_leader.get(StoreKind::Site, name).await.unwrap().expect("acknowledged write survives");
        assert_eq!(object.metadata().unwrap().revision, *revision);
    }
    for i in 10..15 {
        let name = format!("site-{i}");
        let r = applied(new_leader.write(put(site(&name, "second term"), P::MustNotExist)).await.unwrap());
        assert!(r > last);
        acknowledged.push((name, r));
    }

    // Restart the old leader from its data dir: it rejoins as a follower and catches up.
    let idx = usize::try_from(leader_id - 1).unwrap();
    let restarted = open_node(dirs[idx].path(), leader_id, addrs[idx], &members).await;
    let target = new_leader.revision();
    eventually("the restarted hub to catch up", || restarted.revision() >= target).await;
    let want: Vec<Object> = new_leader.list(StoreKind::Site).await.unwrap();
    assert_eq!(want.len(), 15);
    assert_eq!(restarted.list_local(StoreKind::Site).unwrap(), want);
    eventually("the restarted hub to learn the leader", || {
        *restarted.leader().borrow() == Some(new_leader_id)
    })
    .await;
    stores.insert(leader_id, restarted);

    for store in stores.values() {
        store.shutdown().await.unwrap();
    }
}
