//! Backup and offline restore on real redb files: every object comes back with its revisions,
//! the restored node leads a new one-member cluster whose writes get higher revisions, and a
//! corrupt, truncated or future file, or a used target, is refused and leaves nothing behind.

mod common;

use common::*;
use hub_store::{BackupError, RestoreError, RestoreTarget, Store, StoreConfig};
use shared_proto::Timestamp;
use shared_proto::store::{ApiTokenRecord, Object, Precondition as P, Role, StoreKind};
use std::collections::BTreeMap;
use std::path::Path;

const KINDS: [StoreKind; 4] = [StoreKind::Site, StoreKind::ApiToken, StoreKind::FleetCa, StoreKind::Audit];

fn api_token(id: &str) -> Object {
    Object::ApiToken(ApiTokenRecord {
        id: id.to_string(),
        secret_sha256: "ab".repeat(32),
        role: Role::Admin,
        created_at: Timestamp(1_700_000_000_000),
        description: String::new(),
        expires_at: None,
        sites: vec![],
        namespaces: vec![],
    })
}

/// Every key of the kinds above with (mod revision, create revision, object).
fn everything(store: &Store) -> BTreeMap<String, (u64, u64, Object)> {
    let mut out = BTreeMap::new();
    for kind in KINDS {
        for object in store.list_local(kind).unwrap() {
            let r = store.get_local_revisioned(kind, &object.name()).unwrap().unwrap();
            out.insert(kind.key(&object.name()), (r.revision, r.create_revision, r.object));
        }
    }
    out
}

fn target() -> RestoreTarget {
    RestoreTarget { node_id: 1, raft_addr: String::new() }
}

fn restore(dir: &Path, file: &[u8]) -> Result<(), RestoreError> {
    let backup = hub_store::decode_backup(file)?;
    hub_store::restore_store(dir, &backup, &target())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_objects_keep_their_revisions_and_new_writes_go_above() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(single_node_config(&dir.path().join("old"))).await.unwrap();
    for name in ["a", "b", "c"] {
        applied(store.write(put(site(name, "here"), P::None)).await.unwrap());
    }
    applied(store.write(put(site("b", "there"), P::None)).await.unwrap());
    applied(store.write(delete(StoreKind::Site, "c", P::None)).await.unwrap());
    applied(store.write(put(api_token("t1"), P::MustNotExist)).await.unwrap());
    let before = everything(&store);
    let (header, file) = store.backup("9.9.9", Timestamp(42)).await.unwrap();
    assert_eq!(header.revision, store.revision());
    assert_eq!(header.n_objects, before.len() as u64);
    // A write after the backup is not in it.
    applied(store.write(put(site("late", "x"), P::None)).await.unwrap());
    store.shutdown().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("old")).unwrap();

    let new_dir = dir.path().join("new");
    restore(&new_dir, &file).unwrap();
    let restored = Store::open(single_node_config(&new_dir)).await.unwrap();
    assert!(restored.is_leader(), "the restored node leads its own cluster");
    assert_eq!(everything(&restored), before, "same objects, same revisions");
    assert!(restored.revision() > header.revision, "its first entry comes after the backup");
    let b = restored.get(StoreKind::Site, "b").await.unwrap().unwrap();
    let meta = b.metadata().unwrap();
    assert!(meta.revision > meta.create_revision, "b was updated once: {meta:?}");
    let r = applied(restored.write(put(site("d", "new"), P::MustNotExist)).await.unwrap());
    assert!(r > header.revision, "a new write gets a higher revision: {r} vs {}", header.revision);
    // Revision preconditions taken before the backup still hold.
    let (b_rev, _, _) = before["site/b"];
    applied(restored.write(put(site("b", "again"), P::RevisionIs(b_rev))).await.unwrap());
    assert_eq!(restored.status().voters.keys().copied().collect::<Vec<_>>(), vec![1]);

    // Restarting the restored node keeps everything.
    restored.shutdown().await.unwrap();
    let reopened = Store::open(single_node_config(&new_dir)).await.unwrap();
    assert_eq!(reopened.get_local_revisioned(StoreKind::Site, "d").unwrap().unwrap().revision, r);
    assert!(reopened.get_local(StoreKind::Site, "late").unwrap().is_none());
    reopened.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_and_used_targets_are_refused_and_change_nothing() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(single_node_config(&dir.path().join("old"))).await.unwrap();
    applied(store.write(put(site("a", "here"), P::None)).await.unwrap());
    let (_, file) = store.backup("9.9.9", Timestamp(42)).await.unwrap();
    store.shutdown().await.unwrap();

    let target_dir = dir.path().join("target");
    let mut truncated = file.clone();
    truncated.truncate(file.len() - 10);
    let mut corrupt = file.clone();
    let last = corrupt.len() - 20;
    corrupt[last] ^= 0xff;
    let mut future = file.clone();
    future[8] = 2;
    for (what, bad) in [("truncated", truncated), ("corrupt", corrupt), ("future", future)] {
        let err = restore(&target_dir, &bad).expect_err(what);
        let msg = err.to_string();
        match what {
            "truncated" => {
                assert!(matches!(err, RestoreError::Backup(BackupError::Truncated { .. })), "{msg}")
            }
            "future" => assert!(msg.contains("format version 2"), "{msg}"),
            _ => assert!(matches!(err, RestoreError::Backup(_)), "{msg}"),
        }
        assert!(!target_dir.exists(), "{what}: nothing was created");
    }

    // A directory that already holds a store is left alone.
    let used = Store::open(single_node_config(&target_dir)).await.unwrap();
    applied(used.write(put(site("mine", "keep"), P::None)).await.unwrap());
    used.shutdown().await.unwrap();
    let err = restore(&target_dir, &file).unwrap_err();
    assert!(matches!(err, RestoreError::TargetNotEmpty(_)), "{err}");
    assert!(err.to_string().contains("empty directory"), "{err}");
    let used = Store::open(StoreConfig { ..single_node_config(&target_dir) }).await.unwrap();
    assert!(used.get_local(StoreKind::Site, "mine").unwrap().is_some());
    assert!(used.get_local(StoreKind::Site, "a").unwrap().is_none());
    used.shutdown().await.unwrap();
}
