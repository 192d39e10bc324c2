//! Watches and list pages at a past revision, on real stores: a watch that moves to another
//! hub of a three-hub cluster after the leader is killed sees every change exactly once, in
//! revision order; pages read at a revision show the store as it was then, however it changed
//! since; and a revision that left the history window is refused.

mod common;

use common::*;
use hub_store::{
    HistoryLimits, NodeId, PageRequest, RaftTuning, RevisionEvents, Store, StoreError, WatchEvent,
};
use shared_proto::store::{Object, Precondition as P, StoreKind, StoreOutcome};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Follows `store`'s history from `cursor` until it has seen revision `until`, appending to
/// `seen`; returns the new cursor.
async fn follow(store: &Store, mut cursor: u64, until: u64, seen: &mut Vec<Arc<RevisionEvents>>) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    let mut applied = store.applied();
    while cursor < until {
        let page = store.history_after(cursor, 16).unwrap();
        seen.extend(page.entries.iter().cloned());
        cursor = page.through;
        if page.entries.is_empty() && cursor < until {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out following node {} to {until} (at {cursor})", store.node_id());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), applied.changed()).await;
        }
    }
    cursor
}

/// Replays watch events onto an empty map: the state they describe.
fn replay(seen: &[Arc<RevisionEvents>]) -> BTreeMap<String, Object> {
    let mut state = BTreeMap::new();
    for entry in seen {
        for WatchEvent { name, object, previous, .. } in &entry.events {
            assert_eq!(
                state.get(name),
                previous.as_deref(),
                "the event at {} replaces what the watch last saw of {name}",
                entry.revision
            );
            match object {
                Some(o) => state.insert(name.clone(), (**o).clone()),
                None => state.remove(name),
            };
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_moved_to_another_hub_after_the_leader_dies_sees_every_change_once() {
    init_logging();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // `free_addr` can race another process for a port: try again with new ones.
    let mut attempt = 0;
    let stores = loop {
        attempt += 1;
        let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let members: BTreeMap<NodeId, String> = (1..=3).zip(addrs.iter().map(|a| a.to_string())).collect();
        let open = |i: usize| {
            Store::open_with_tuning(
                node_config(dirs[i].path(), i as NodeId + 1, addrs[i], &members),
                test_tuning(),
            )
        };
        match tokio::join!(open(0), open(1), open(2)) {
            (Ok(s1), Ok(s2), Ok(s3)) => break [s1, s2, s3],
            (r1, r2, r3) => {
                for r in [r1, r2, r3] {
                    match r {
                        Ok(s) => s.shutdown().await.unwrap(),
                        Err(e) => {
                            assert!(
                                attempt < 3 && e.to_string().contains("binding"),
                                "opening the cluster: {e}"
                            )
                        }
                    }
                }
                for d in &dirs {
                    let _ = std::fs::remove_dir_all(d.path().join(hub_store::DB_FILE_NAME));
                }
            }
        }
    };
    let leader_id = agreed_leader(&stores.iter().collect::<Vec<_>>()).await;
    let leader = stores.iter().find(|s| s.node_id() == leader_id).unwrap().clone();
    let start = leader.revision();

    // Four writers put and delete keys continuously, each through whichever hub leads now.
    let acknowledged: Arc<Mutex<Vec<(u64, String, bool)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let stores = stores.clone();
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{w}-{}", i % 7);
                let delete = i % 5 == 4;
                let cmd =
                    if delete { delete_cmd(&name) } else { put(site(&name, &format!("write {i}")), P::None) };
                for store in &stores {
                    match store.write(cmd.clone()).await {
                        Ok(StoreOutcome::Applied { revision }) => {
                            acknowledged.lock().unwrap().push((revision, name.clone(), delete));
                            break;
                        }
                        // Deleting a key that is not there changes nothing.
                        Ok(_) => break,
                        // Not the leader, shut down, or a leader change in the middle: the
                        // write may or may not have applied, which the watch will tell.
                        Err(_) => continue,
                    }
                }
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }

    // Watch on the leader until it has seen some changes, then kill it.
    let mut seen = Vec::new();
    let cursor = follow(&leader, start, start + 40, &mut seen).await;
    leader.shutdown().await.unwrap();
    let survivors: Vec<Store> = stores.iter().filter(|s| s.node_id() != leader_id).cloned().collect();
    let new_leader_id = agreed_leader(&survivors.iter().collect::<Vec<_>>()).await;
    let follower = survivors.iter().find(|s| s.node_id() != new_leader_id).unwrap().clone();

    // Let the writers go on under the new leader, then stop them.
    let after_failover = {
        let new_leader = survivors.iter().find(|s| s.node_id() == new_leader_id).unwrap();
        new_leader.revision() + 40
    };
    eventually("writes under the new leader", || {
        acknowledged.lock().unwrap().iter().any(|(r, _, _)| *r >= after_failover)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let last = acknowledged.lock().unwrap().iter().map(|(r, _, _)| *r).max().unwrap();

    // The watch continues on a follower of the new leader, from its cursor.
    follow(&follower, cursor, last, &mut seen).await;

    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revision order, no repeat: {revisions:?}");
    let by_revision: BTreeMap<u64, &RevisionEvents> = seen.iter().map(|e| (e.revision, &**e)).collect();
    for (revision, name, delete) in acknowledged.lock().unwrap().iter() {
        let entry = by_revision.get(revision).unwrap_or_else(|| panic!("write at {revision} not seen"));
        assert_eq!(entry.events.len(), 1);
        assert_eq!((&entry.events[0].name, entry.events[0].object.is_none()), (name, *delete));
    }
    // What the watch saw, replayed from the empty store it started at, is the state the
    // cluster reached.
    let state = replay(&seen);
    let now: BTreeMap<String, Object> = follower
        .list_local(StoreKind::Site)
        .unwrap()
        .into_iter()
        .map(|o| (o.name().to_string(), o))
        .collect();
    assert_eq!(state, now);
    for s in survivors {
        s.shutdown().await.unwrap();
    }
}

fn delete_cmd(name: &str) -> shared_proto::store::StoreCommand {
    delete(StoreKind::Site, name, P::MustExist)
}

#[tokio::test]
async fn pages_read_at_a_revision_show_the_store_as_it_was() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let tuning = RaftTuning {
        watch_history: HistoryLimits { max_revisions: 30, max_bytes: 1 << 20 },
        ..test_tuning()
    };
    let store = Store::open_with_tuning(single_node_config(dir.path()), tuning).await.unwrap();
    for i in 0..10 {
        store.write(put(site(&format!("s{i}"), "v1"), P::None)).await.unwrap();
    }
    let first = store
        .list_page(StoreKind::Site, &PageRequest { limit: Some(4), ..Default::default() }, |_| true)
        .await
        .unwrap();
    let at = first.revision;
    assert_eq!(names(&first.items), ["s0", "s1", "s2", "s3"]);
    assert_eq!(first.next_after.as_deref(), Some("s3"));
    let then: BTreeMap<String, Object> =
        store.list_local(StoreKind::Site).unwrap().into_iter().map(|o| (o.name().to_string(), o)).collect();

    // Change everything after the first page: updates, deletes, new names before and after.
    store.write(put(site("s5", "v2"), P::None)).await.unwrap();
    store.write(delete(StoreKind::Site, "s6", P::None)).await.unwrap();
    store.write(put(site("s35", "new"), P::None)).await.unwrap();
    store.write(put(site("s0", "v2"), P::None)).await.unwrap();
    store.write(delete(StoreKind::Site, "s9", P::None)).await.unwrap();
    store.write(put(site("s9", "again"), P::None)).await.unwrap();
    store.write(put(site("zz", "new"), P::None)).await.unwrap();

    let mut all = first.items.clone();
    let mut after = first.next_after;
    while let Some(a) = after {
        let page = store
            .list_page(StoreKind::Site, &PageRequest { after: Some(a), at: Some(at), limit: Some(4) }, |_| {
                true
            })
            .await
            .unwrap();
        assert_eq!(page.revision, at);
        all.extend(page.items);
        after = page.next_after;
    }
    let all: BTreeMap<String, Object> = all.into_iter().map(|o| (o.name().to_string(), o)).collect();
    assert_eq!(all, then, "the pages together are the list at the first page's revision");

    // A filter applies to the objects as they were.
    let page = store
        .list_page(
            StoreKind::Site,
            &PageRequest { at: Some(at), ..Default::default() },
            |o| matches!(o, Object::Site(s) if s.spec.location == "v1"),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 10);

    // Once the revision leaves the window, pages at it are refused.
    for i in 0..40 {
        store.write(put(site("churn", &i.to_string()), P::None)).await.unwrap();
    }
    let err = store
        .list_page(
            StoreKind::Site,
            &PageRequest { after: Some("s3".into()), at: Some(at), limit: Some(4) },
            |_| true,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Compacted { requested, .. } if requested == at), "{err:?}");
    assert!(matches!(store.history_after(at, 10), Err(StoreError::Compacted { .. })));

    // A restarted hub's window starts where it opened: nothing older can be served.
    let revision = store.revision();
    store.shutdown().await.unwrap();
    drop(store);
    let store = Store::open_with_tuning(single_node_config(dir.path()), test_tuning()).await.unwrap();
    let opened_at = store.status().revision;
    assert!(opened_at >= revision);
    assert!(matches!(store.history_after(revision - 1, 10), Err(StoreError::Compacted { .. })));
    let seen = store.history_after(opened_at, 10).unwrap();
    assert!(seen.entries.is_empty());
    let first = BTreeSet::from(["s0".to_string()]);
    let page = store
        .list_page(StoreKind::Site, &PageRequest::default(), |o| first.contains(&*o.name()))
        .await
        .unwrap();
    assert_eq!(names(&page.items), ["s0"]);
    store.shutdown().await.unwrap();
}
