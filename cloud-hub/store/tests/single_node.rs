//! A single-member store on a real redb file: write semantics, revisions, listing, and
//! recovery of everything across a close and reopen.

mod common;

use common::*;
use hub_store::{Store, StoreError};
use shared_proto::Timestamp;
use shared_proto::store::{
    ApiTokenRecord, Object, Precondition as P, Role, StoreCommand, StoreKind, StoreOutcome,
};

fn conflict(kind: StoreKind, name: &str, current_revision: Option<u64>) -> StoreOutcome {
    StoreOutcome::Conflict { kind, name: name.to_string(), current_revision }
}

fn api_token(id: &str, description: &str) -> Object {
    Object::ApiToken(ApiTokenRecord {
        id: id.to_string(),
        secret_sha256: "ab".repeat(32),
        role: Role::Operator,
        created_at: Timestamp(1_700_000_000_000),
        description: description.to_string(),
        expires_at: None,
        sites: vec![],
        namespaces: vec![],
    })
}

fn meta_revisions(object: &Object) -> (u64, u64) {
    let meta = object.metadata().expect("api object");
    (meta.revision, meta.create_revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_preconditions_and_recovery() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(single_node_config(dir.path())).await.unwrap();
    assert!(store.is_leader());
    let start = store.revision();

    // Puts: revisions are log indexes, strictly increasing, and revision() follows them.
    let r_b = applied(store.write(put(site("b", "Berlin"), P::MustNotExist)).await.unwrap());
    assert!(r_b > start);
    assert_eq!(store.revision(), r_b);
    let r_a = applied(store.write(put(site("a", "Aachen"), P::None)).await.unwrap());
    let r_c = applied(store.write(put(site("c", "Cork"), P::None)).await.unwrap());
    assert!(r_b < r_a && r_a < r_c, "{r_b} {r_a} {r_c}");
    assert_eq!(store.status().last_log_index, Some(r_c), "a revision is the entry's log index");

    let b = store.get(StoreKind::Site, "b").await.unwrap().unwrap();
    assert_eq!(meta_revisions(&b), (r_b, r_b));

    // Preconditions and the revisions a conflict reports.
    assert_eq!(
        store.write(put(site("b", "Bonn"), P::MustNotExist)).await.unwrap(),
        conflict(StoreKind::Site, "b", Some(r_b))
    );
    assert_eq!(
        store.write(put(site("b", "Bonn"), P::RevisionIs(r_b + 100))).await.unwrap(),
        conflict(StoreKind::Site, "b", Some(r_b))
    );
    assert_eq!(
        store.write(put(site("z", "Zug"), P::MustExist)).await.unwrap(),
        conflict(StoreKind::Site, "z", None)
    );
    let r_b2 = applied(store.write(put(site("b", "Bonn"), P::RevisionIs(r_b))).await.unwrap());
    let b = store.get_local(StoreKind::Site, "b").unwrap().unwrap();
    assert_eq!(meta_revisions(&b), (r_b2, r_b), "an update keeps the create revision");
    let Object::Site(b_site) = &b else { panic!("a site") };
    assert_eq!(b_site.spec.location, "Bonn");

    // Non-API kinds have revisions too, kept beside the object.
    let r_t = applied(store.write(put(api_token("t1", "first"), P::MustNotExist)).await.unwrap());
    assert_eq!(
        store.write(put(api_token("t1", "second"), P::RevisionIs(r_t - 1))).await.unwrap(),
        conflict(StoreKind::ApiToken, "t1", Some(r_t))
    );
    let r_t2 = applied(store.write(put(api_token("t1", "second"), P::RevisionIs(r_t))).await.unwrap());
    let token = store.get_local_revisioned(StoreKind::ApiToken, "t1").unwrap().unwrap();
    assert_eq!((token.revision, token.create_revision), (r_t2, r_t));
    assert_eq!(token.object, api_token("t1", "second"));

    // Deletes.
    assert_eq!(
        store.write(delete(StoreKind::Site, "c", P::RevisionIs(r_c + 1))).await.unwrap(),
        conflict(StoreKind::Site, "c", Some(r_c))
    );
    let r_del = applied(store.write(delete(StoreKind::Site, "c", P::RevisionIs(r_c))).await.unwrap());
    assert!(store.get(StoreKind::Site, "c").await.unwrap().is_none());
    // Deleting a missing key without a precondition succeeds and changes nothing.
    let r_noop = applied(store.write(delete(StoreKind::Site, "c", P::None)).await.unwrap());
    assert!(r_noop > r_del);
    assert_eq!(
        store.write(delete(StoreKind::Site, "c", P::MustExist)).await.unwrap(),
        conflict(StoreKind::Site, "c", None)
    );

    // A batch is all or nothing; the outcome is its first conflict.
    let before = store.list(StoreKind::Site).await.unwrap();
    let failing = StoreCommand::Batch(vec![
        put(site("d", "Dover"), P::MustNotExist),
        delete(StoreKind::Site, "a", P::None),
        StoreCommand::Batch(vec![put(site("b", "Bern"), P::RevisionIs(r_b))]),
        put(site("e", "Essen"), P::MustExist),
    ]);
    assert_eq!(store.write(failing).await.unwrap(), conflict(StoreKind::Site, "b", Some(r_b2)));
    assert_eq!(store.list(StoreKind::Site).await.unwrap(), before, "nothing of a failed batch applies");

    let ok = StoreCommand::Batch(vec![
        put(site("d", "Dover"), P::MustNotExist),
        delete(StoreKind::Site, "a", P::RevisionIs(r_a)),
        StoreCommand::Batch(vec![put(site("b", "Bern"), P::RevisionIs(r_b2))]),
    ]);
    let r_batch = applied(store.write(ok).await.unwrap());
    let sites = store.list(StoreKind::Site).await.unwrap();
    assert_eq!(names(&sites), vec!["b", "d"], "listed sorted by name");
    assert!(sites.iter().all(|s| meta_revisions(s).0 == r_batch), "one revision for the whole batch");
    assert_eq!(store.list(StoreKind::App).await.unwrap(), vec![]);
    assert_eq!(store.list_local(StoreKind::ApiToken).unwrap().len(), 1, "kinds do not leak into each other");
    // Counted and named in key order without decoding.
    assert_eq!(store.count_local(StoreKind::Site).unwrap(), 2);
    assert_eq!(store.first_names_local(StoreKind::Site, 1).unwrap(), ["b"]);
    assert_eq!(store.first_names_local(StoreKind::Site, 9).unwrap(), ["b", "d"]);
    assert_eq!(store.count_local(StoreKind::App).unwrap(), 0);
    assert!(store.first_names_local(StoreKind::App, 9).unwrap().is_empty());

    // A command too large to replicate is refused before it reaches the log.
    let huge = site("huge", &"x".repeat(hub_store::MAX_COMMAND_BYTES));
    assert!(matches!(store.write(put(huge, P::None)).await, Err(StoreError::Rejected(_))));
    assert!(store.get_local(StoreKind::Site, "huge").unwrap().is_none());

    // Close and reopen: everything is still there, revision() included.
    let revision = store.revision();
    let sites = store.list_local(StoreKind::Site).unwrap();
    store.shutdown().await.unwrap();
    assert!(matches!(store.write(put(site("x", ""), P::None)).await, Err(StoreError::Unavailable(_))));
    assert!(matches!(store.get_local(StoreKind::Site, "b"), Err(StoreError::Unavailable(_))));
    drop(store);

    let store = Store::open(single_node_config(dir.path())).await.unwrap();
    // Nothing is lost; the restarted node wins a new term, whose blank entry is one revision.
    let reopened = store.revision();
    assert!((revision..=revision + 1).contains(&reopened), "{revision} before, {reopened} after");
    assert_eq!(store.list_local(StoreKind::Site).unwrap(), sites);
    assert_eq!(store.list(StoreKind::Site).await.unwrap(), sites);
    assert_eq!(store.count_local(StoreKind::Site).unwrap(), sites.len(), "counted again at open");
    let token = store.get_local_revisioned(StoreKind::ApiToken, "t1").unwrap().unwrap();
    assert_eq!((token.revision, token.create_revision), (r_t2, r_t), "side revisions survive a restart");

    // New writes continue above the recovered revision.
    let r_next = applied(store.write(put(site("f", "Fulda"), P::MustNotExist)).await.unwrap());
    assert!(r_next > revision);
    assert_eq!(store.count_local(StoreKind::Site).unwrap(), sites.len() + 1);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_idempotent_and_releases_the_file() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let store = Store::open(single_node_config(dir.path())).await.unwrap();
        applied(store.write(put(site(&format!("s{round}"), ""), P::MustNotExist)).await.unwrap());
        assert_eq!(store.list_local(StoreKind::Site).unwrap().len(), round + 1);
        let clone = store.clone();
        store.shutdown().await.unwrap();
        clone.shutdown().await.unwrap();
    }
}
