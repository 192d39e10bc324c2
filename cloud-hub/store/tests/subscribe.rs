//! Watching the store: every applied change arrives once, in revision order, and a subscription
//! never misses or repeats a change relative to the revision it starts at.

mod common;

use common::*;
use hub_store::{ChangeBatch, Store};
use shared_proto::store::{Precondition as P, StoreCommand, StoreKind};
use std::sync::Arc;
use tokio::sync::broadcast;

async fn next_batch(rx: &mut broadcast::Receiver<Arc<ChangeBatch>>) -> Arc<ChangeBatch> {
    tokio::time::timeout(DEADLINE, rx.recv()).await.expect("a change batch in time").expect("no lag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_every_later_write_in_order() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(single_node_config(dir.path())).await.unwrap();

    let (start, mut rx) = store.subscribe();
    assert_eq!(start, store.revision());

    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(applied(store.write(put(site(&format!("s{i:02}"), "x"), P::None)).await.unwrap()));
    }
    for (i, revision) in revisions.iter().enumerate() {
        let batch = next_batch(&mut rx).await;
        assert_eq!(batch.revision, *revision);
        assert!(batch.revision > start);
        assert_eq!(batch.changes.len(), 1);
        let change = &batch.changes[0];
        assert_eq!((change.kind, change.name.as_str()), (StoreKind::Site, format!("s{i:02}").as_str()));
        let object = change.object.as_ref().expect("a put");
        assert_eq!(object.metadata().unwrap().revision, *revision);
    }

    // A subscriber created between writes sees only the later ones.
    let (middle, mut late_rx) = store.subscribe();
    assert_eq!(middle, *revisions.last().unwrap());
    let batch_cmd = StoreCommand::Batch(vec![
        delete(StoreKind::Site, "s00", P::MustExist),
        put(site("s01", "y"), P::MustExist),
    ]);
    let r_batch = applied(store.write(batch_cmd).await.unwrap());
    // Entries that change nothing (a failed precondition, deleting a missing key) emit nothing.
    store.write(put(site("s02", "z"), P::MustNotExist)).await.unwrap();
    store.write(delete(StoreKind::Site, "nope", P::None)).await.unwrap();
    let r_last = applied(store.write(put(site("s03", "z"), P::None)).await.unwrap());

    for rx in [&mut rx, &mut late_rx] {
        let batch = next_batch(rx).await;
        assert_eq!(batch.revision, r_batch);
        let changes: Vec<_> = batch.changes.iter().map(|c| (c.name.as_str(), c.object.is_some())).collect();
        assert_eq!(changes, vec![("s00", false), ("s01", true)]);
        assert_eq!(next_batch(rx).await.revision, r_last);
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
    }
    store.shutdown().await.unwrap();
}

/// Writers race with a subscriber: whatever revision the subscription starts at, the batches
/// it then receives are exactly the writes above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_during_concurrent_writes_misses_nothing() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(single_node_config(dir.path())).await.unwrap();
    let n_writes = 200;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..n_writes {
                let r = applied(store.write(put(site(&format!("w{i}"), ""), P::None)).await.unwrap());
                revisions.push(r);
            }
            revisions
        })
    };
    // Subscribe while the writer is running.
    while store.list_local(StoreKind::Site).unwrap().len() < 20 {
        tokio::task::yield_now().await;
    }
    let (start, mut rx) = store.subscribe();
    let revisions = writer.await.unwrap();
    let want: Vec<u64> = revisions.into_iter().filter(|r| *r > start).collect();
    assert!(want.len() < n_writes, "the subscription started after some writes");
    let mut got = Vec::new();
    while got.len() < want.len() {
        got.push(next_batch(&mut rx).await.revision);
    }
    assert_eq!(got, want);
    store.shutdown().await.unwrap();
}
