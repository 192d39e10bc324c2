//! openraft's state machine over the store's redb file: applies committed entries, builds and
//! installs snapshots, and tells watchers what changed.
//!
//! Each `apply` call writes all the entries openraft hands over, and the new last-applied log id,
//! in one redb transaction. The objects and last-applied can therefore never disagree after a
//! crash, and openraft re-applies from the log whatever the recovered file does not cover (see
//! [`APPLY_DURABILITY`]).

use crate::apply::{self, KeyRevisions, KeyWrite};
use crate::db::{
    self, DbError, KEY_APPLIED, KEY_MEMBERSHIP, KEY_SNAPSHOT_META, OBJECTS, SM_META, begin_read, begin_write,
    begin_write_with, read_record, run_blocking,
};
use crate::history::{History, HistoryLimits, RevisionEvents, WatchEvent, is_watched_kind};
use crate::snapshot;
use crate::snapshot_files::SnapshotFiles;
use crate::types::{
    ApplyResponse, CommandBytes, Entry, LogId, Snapshot, SnapshotBlob, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use crate::wal::Wal;
use crate::{Change, ChangeBatch};
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadableTable, Table};
use shared_proto::store::{Object, StoreCommand, StoreKind, StoreOutcome};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// How many change batches a watcher may fall behind before it lags and must relist.
const WATCH_CAPACITY: usize = 4096;

/// Publishes applied changes to watchers, keeps the window of recent history, and tracks the
/// applied revision.
///
/// Publishing and subscribing take the same lock, so a subscriber either sees a batch in its
/// receiver or its start revision already covers it: never both, never neither. The history
/// is fed under the same lock, in the same order, so it can never lag behind or skip.
pub(crate) struct Publisher {
    inner: Mutex<PublisherInner>,
    revision: AtomicU64,
    /// The applied revision, for watchers to wait on.
    applied: watch::Sender<u64>,
}

struct PublisherInner {
    tx: broadcast::Sender<Arc<ChangeBatch>>,
    history: History,
    /// How many objects of each kind (by `StoreKind::as_str`) are applied, so that counting
    /// one kind (the audit log's trim does, every thousand writes) costs no scan.
    counts: ObjectCounts,
}

/// Objects per kind, keyed by `StoreKind::as_str`.
pub(crate) type ObjectCounts = BTreeMap<String, usize>;

/// Counts every object in the table by kind: once at open and after a snapshot replaced the
/// state; applies keep the counts from then on.
pub(crate) fn count_objects(db: &Database) -> Result<ObjectCounts, DbError> {
    let txn = begin_read(db)?;
    let objects = txn.open_table(OBJECTS)?;
    let mut counts = ObjectCounts::new();
    for item in objects.iter()? {
        let (key, _) = item?;
        let kind = key.value().split_once('/').map_or(key.value(), |(kind, _)| kind);
        match counts.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                counts.insert(kind.to_string(), 1);
            }
        }
    }
    Ok(counts)
}

/// What one log entry changed, for watchers: the batch for subscribers, and the watched
/// changes with what they replaced for the history window.
pub(crate) struct AppliedChanges {
    pub batch: ChangeBatch,
    pub history: RevisionEvents,
    /// Encoded size of the history's objects, before and after.
    pub n_history_bytes: usize,
    /// Objects added (+1) and removed (-1), by kind.
    pub count_deltas: Vec<(StoreKind, isize)>,
}

impl Publisher {
    /// `counts`: the objects of each kind at `revision` ([`count_objects`]).
    pub(crate) fn new(revision: u64, limits: HistoryLimits, counts: ObjectCounts) -> Self {
        let (tx, _) = broadcast::channel(WATCH_CAPACITY);
        let (applied, _) = watch::channel(revision);
        Publisher {
            inner: Mutex::new(PublisherInner { tx, history: History::new(revision, limits), counts }),
            revision: AtomicU64::new(revision),
            applied,
        }
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// How many objects of `kind` are applied.
    pub(crate) fn count(&self, kind: StoreKind) -> usize {
        self.lock().counts.get(kind.as_str()).copied().unwrap_or(0)
    }

    pub(crate) fn subscribe(&self) -> (u64, broadcast::Receiver<Arc<ChangeBatch>>) {
        let inner = self.lock();
        (self.revision(), inner.tx.subscribe())
    }

    pub(crate) fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Runs `f` on the history window, under the publisher's lock (keep it short).
    pub(crate) fn with_history<T>(&self, f: impl FnOnce(&History) -> T) -> T {
        f(&self.lock().history)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PublisherInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called after the redb commit of `changes`, with the commit's last log index.
    fn publish(&self, revision: u64, changes: Vec<AppliedChanges>) {
        let mut inner = self.lock();
        for c in changes {
            // An error only means nobody is watching right now.
            let _ = inner.tx.send(Arc::new(c.batch));
            inner.history.push(c.history, c.n_history_bytes);
            for (kind, delta) in c.count_deltas {
                let n = inner.counts.entry(kind.as_str().to_string()).or_default();
                *n = n.saturating_add_signed(delta);
            }
        }
        inner.history.advance(revision);
        self.revision.fetch_max(revision, Ordering::AcqRel);
        self.applied.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
    }

    /// Called after a snapshot replaced the whole state at `revision`: subscribers get the net
    /// difference as one batch; the history window starts again at `revision`.
    fn publish_reset(&self, revision: u64, batch: Option<ChangeBatch>, counts: ObjectCounts) {
        let mut inner = self.lock();
        inner.counts = counts;
        if let Some(batch) = batch {
            let _ = inner.tx.send(Arc::new(batch));
        }
        inner.history.reset(revision);
        self.revision.fetch_max(revision, Ordering::AcqRel);
        self.applied.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
    }
}

/// Cheap to clone: the snapshot builder is a clone reading its own redb transaction.
#[derive(Clone)]
pub(crate) struct StateMachineStore {
    db: Arc<Database>,
    /// The raft log, synced before every durable commit here (see [`APPLY_DURABILITY`]).
    wal: Arc<Wal>,
    snapshots: Arc<SnapshotFiles>,
    publisher: Arc<Publisher>,
    /// Entries applied since the last durable apply commit.
    n_applied_since_durable: Arc<AtomicU64>,
}

impl StateMachineStore {
    pub(crate) fn new(
        db: Arc<Database>,
        wal: Arc<Wal>,
        snapshots: Arc<SnapshotFiles>,
        publisher: Arc<Publisher>,
    ) -> Self {
        StateMachineStore {
            db,
            wal,
            snapshots,
            publisher,
            n_applied_since_durable: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The last applied log id and membership, as recorded with the objects.
pub(crate) fn read_applied_state(db: &Database) -> Result<(Option<LogId>, StoredMembership), DbError> {
    read_applied_state_in(&begin_read(db)?)
}

/// [`read_applied_state`] within a read transaction, to pair it with the objects it covers.
pub(crate) fn read_applied_state_in(
    txn: &redb::ReadTransaction,
) -> Result<(Option<LogId>, StoredMembership), DbError> {
    let meta = txn.open_table(SM_META)?;
    let applied: Option<Option<LogId>> = read_record(&meta, KEY_APPLIED, "last applied log id")?;
    let membership: Option<StoredMembership> = read_record(&meta, KEY_MEMBERSHIP, "last membership")?;
    Ok((applied.flatten(), membership.unwrap_or_default()))
}

/// What one `apply` transaction produced, for after its commit.
struct AppliedEntries {
    last_index: u64,
    responses: Vec<ApplyResponse>,
    batches: Vec<AppliedChanges>,
}

/// Durability of apply transactions: `None`, i.e. no fdatasync of their own, except one in every
/// [`DURABLE_APPLY_EVERY`] entries. Recovery stays correct because:
/// - objects and the last-applied log id are written in the same transaction, and redb commits
///   are atomic at any durability, so after a crash the file holds the objects of exactly the
///   recovered last-applied id (redb falls back to its last durable commit, all of whose
///   earlier commits it also persisted);
/// - the state machine is never durable ahead of the log: every durable commit here (the
///   periodic one, a snapshot, `Store::shutdown`) first fdatasyncs the raft log, which holds
///   every entry applied so far;
/// - openraft purges only entries covered by a snapshot, whose commit is durable; so every
///   entry above the recovered last-applied id is still in the log, and openraft re-applies it
///   once it knows the entry is committed;
/// - until then a restarted node may serve older *local* reads than before the crash, which
///   local reads allow; linearizable reads stay correct because a restarted leader must win a
///   new election (`enable_leader_restore` is off, see `config.rs`) and commit an entry of its
///   term, which makes it re-apply everything first.
///
/// The periodic durable commit bounds what a restart re-applies and lets redb reuse the pages
/// that non-durable commits freed (it cannot before a durable one).
///
/// `tests/crash.rs` SIGKILLs a writer mid-stream and checks that no acknowledged write is lost.
pub(crate) const APPLY_DURABILITY: Durability = Durability::None;

/// Every this many applied entries, an apply commit is durable (see [`APPLY_DURABILITY`]).
pub(crate) const DURABLE_APPLY_EVERY: u64 = 1024;

fn apply_entries(
    db: &Database,
    wal: &Wal,
    entries: Vec<Entry>,
    durable: bool,
) -> Result<AppliedEntries, DbError> {
    let txn = if durable {
        wal.sync()?;
        begin_write(db)?
    } else {
        begin_write_with(db, APPLY_DURABILITY)?
    };
    let mut responses = Vec::with_capacity(entries.len());
    let mut batches = Vec::new();
    let mut last_log_id = None;
    let mut membership = None;
    {
        let mut objects = txn.open_table(OBJECTS)?;
        for entry in entries {
            let index = entry.log_id.index;
            let response = match entry.payload {
                EntryPayload::Blank => ApplyResponse::Outcome(StoreOutcome::Applied { revision: index }),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    ApplyResponse::Outcome(StoreOutcome::Applied { revision: index })
                }
                EntryPayload::Normal(cmd) => apply_normal(&mut objects, &cmd, index, &mut batches)?,
            };
            responses.push(response);
            last_log_id = Some(entry.log_id);
        }
    }
    let last_index = last_log_id.as_ref().map_or(0, |id| id.index);
    {
        let mut meta = txn.open_table(SM_META)?;
        meta.insert(KEY_APPLIED, db::encode("last applied log id", &last_log_id)?.as_slice())?;
        if let Some(membership) = membership {
            meta.insert(KEY_MEMBERSHIP, db::encode("last membership", &membership)?.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(AppliedEntries { last_index, responses, batches })
}

fn lookup(
    objects: &Table<'_, &'static str, (u64, u64, &'static [u8])>,
    key: &str,
) -> Result<Option<KeyRevisions>, DbError> {
    Ok(objects.get(key)?.map(|guard| {
        let (mod_revision, create_revision, _) = guard.value();
        KeyRevisions { mod_revision, create_revision }
    }))
}

/// Applies one command. A command this build cannot read or store is answered with
/// `Rejected` and writes nothing; only storage failures are errors (they stop the node).
fn apply_normal(
    objects: &mut Table<'_, &'static str, (u64, u64, &'static [u8])>,
    cmd: &CommandBytes,
    index: u64,
    batches: &mut Vec<AppliedChanges>,
) -> Result<ApplyResponse, DbError> {
    let cmd = match StoreCommand::decode(&cmd.0) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::warn!(index, error = %e, "rejecting an unreadable store command");
            return Ok(ApplyResponse::Rejected(format!(
                "store command at log index {index} is unreadable: {e}"
            )));
        }
    };
    let applied = apply::apply_command(|key| lookup(objects, key), &cmd, index)?;
    if applied.writes.is_empty() {
        return Ok(ApplyResponse::Outcome(applied.outcome));
    }
    // Encode everything before writing anything, so a failure leaves the command unapplied.
    let mut prepared = Vec::with_capacity(applied.writes.len());
    for write in applied.writes {
        let bytes = match &write {
            KeyWrite::Put { object, .. } => match object.encode() {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(index, error = %e, "rejecting a store command whose object cannot be encoded");
                    return Ok(ApplyResponse::Rejected(format!("store command at log index {index}: {e}")));
                }
            },
            KeyWrite::Delete { .. } => Vec::new(),
        };
        prepared.push((write, bytes));
    }
    let mut changes = Vec::with_capacity(prepared.len());
    let mut watched = Vec::new();
    let mut n_history_bytes = 0;
    let mut count_deltas = Vec::new();
    for (write, bytes) in prepared {
        match write {
            KeyWrite::Put { key, revisions, object } => {
                let kind = object.kind();
                let old = objects.insert(
                    key.as_str(),
                    (revisions.mod_revision, revisions.create_revision, bytes.as_slice()),
                )?;
                if old.is_none() {
                    count_deltas.push((kind, 1));
                }
                let old = old.filter(|_| is_watched_kind(kind)).map(|guard| guard.value().2.to_vec());
                let object = Arc::new(*object);
                if is_watched_kind(kind) {
                    n_history_bytes += bytes.len() + old.as_ref().map_or(0, Vec::len) + EVENT_OVERHEAD;
                    watched.push(WatchEvent {
                        kind,
                        name: object.name().to_string(),
                        object: Some(object.clone()),
                        previous: old.and_then(|b| decode_previous(&key, &b)),
                    });
                }
                changes.push(Change { kind, name: object.name().to_string(), object: Some(object) });
            }
            KeyWrite::Delete { key, kind, name } => {
                let old = objects.remove(key.as_str())?;
                if old.is_some() {
                    count_deltas.push((kind, -1));
                }
                let old = old.filter(|_| is_watched_kind(kind)).map(|guard| guard.value().2.to_vec());
                if is_watched_kind(kind) {
                    n_history_bytes += old.as_ref().map_or(0, Vec::len) + EVENT_OVERHEAD;
                    watched.push(WatchEvent {
                        kind,
                        name: name.clone(),
                        object: None,
                        previous: old.and_then(|b| decode_previous(&key, &b)),
                    });
                }
                changes.push(Change { kind, name, object: None });
            }
        }
    }
    batches.push(AppliedChanges {
        batch: ChangeBatch { revision: index, changes },
        history: RevisionEvents { revision: index, events: watched },
        n_history_bytes,
        count_deltas,
    });
    Ok(ApplyResponse::Outcome(applied.outcome))
}

/// What a history entry costs beyond its objects' bytes (names, pointers, the entry itself).
const EVENT_OVERHEAD: usize = 128;

/// The object a change replaced; an unreadable one (it was stored, so it was readable then)
/// is left out of the history rather than failing the apply.
fn decode_previous(key: &str, bytes: &[u8]) -> Option<Arc<Object>> {
    match Object::decode(bytes) {
        Ok(object) => Some(Arc::new(object)),
        Err(e) => {
            tracing::warn!(key, error = %e, "the object a change replaced is unreadable");
            None
        }
    }
}

/// Builds a snapshot from one read transaction and keeps it as the current snapshot, unless a
/// newer one (installed meanwhile) is already there. The blob goes to its own file first, so the
/// database's writer is held only for the meta (see `snapshot_files.rs`).
fn build_snapshot(db: &Database, wal: &Wal, files: &SnapshotFiles) -> Result<Snapshot, DbError> {
    let (meta, blob) = {
        let txn = begin_read(db)?;
        let sm_meta = txn.open_table(SM_META)?;
        let applied: Option<Option<LogId>> = read_record(&sm_meta, KEY_APPLIED, "last applied log id")?;
        let membership: Option<StoredMembership> = read_record(&sm_meta, KEY_MEMBERSHIP, "last membership")?;
        let objects = txn.open_table(OBJECTS)?;
        let blob = snapshot::write_snapshot(&objects)?;
        let meta =
            SnapshotMeta { last_log_id: applied.flatten(), last_membership: membership.unwrap_or_default() };
        (meta, blob)
    };
    let _files = files.lock();
    files.write(&meta, &blob)?;
    // This commit makes every earlier apply durable: the log must hold their entries first.
    wal.sync()?;
    let txn = begin_write(db)?;
    let current = {
        let mut sm_meta = txn.open_table(SM_META)?;
        let current: Option<SnapshotMeta> = read_record(&sm_meta, KEY_SNAPSHOT_META, "snapshot meta")?;
        match current {
            Some(current) if current.last_log_id >= meta.last_log_id => current,
            _ => {
                sm_meta.insert(KEY_SNAPSHOT_META, db::encode("snapshot meta", &meta)?.as_slice())?;
                meta.clone()
            }
        }
    };
    txn.commit()?;
    files.remove_all_but(&current);
    Ok(Snapshot { meta, snapshot: blob })
}

/// Replaces every object with the snapshot's, in one transaction, and returns the changes
/// watchers must see to go from the old state to the new one.
pub(crate) fn install_snapshot(
    db: &Database,
    files: &SnapshotFiles,
    meta: &SnapshotMeta,
    blob: &[u8],
) -> Result<Vec<Change>, DbError> {
    let records = snapshot::read_snapshot(blob)?;
    let _files = files.lock();
    files.write(meta, blob)?;
    let txn = begin_write(db)?;
    let mut changes = Vec::new();
    {
        let mut objects = txn.open_table(OBJECTS)?;
        let mut old: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for item in objects.iter()? {
            let (key, value) = item?;
            old.insert(key.value().to_string(), value.value().2.to_vec());
        }
        objects.retain(|_, _| false)?;
        for record in records {
            let r = record.revisions;
            objects
                .insert(record.key.as_str(), (r.mod_revision, r.create_revision, record.bytes.as_slice()))?;
            if old.remove(&record.key).as_deref() != Some(record.bytes.as_slice()) {
                let object = record.object;
                changes.push(Change {
                    kind: object.kind(),
                    name: object.name().to_string(),
                    object: Some(Arc::new(object)),
                });
            }
        }
        for (key, bytes) in old {
            // Deleted keys are named by their old object; an unreadable one was corrupt anyway.
            match Object::decode(&bytes) {
                Ok(object) => changes.push(Change {
                    kind: object.kind(),
                    name: object.name().to_string(),
                    object: None,
                }),
                Err(e) => {
                    tracing::warn!(key, error = %e, "dropping an unreadable object replaced by a snapshot")
                }
            }
        }
    }
    {
        let mut sm_meta = txn.open_table(SM_META)?;
        sm_meta.insert(KEY_APPLIED, db::encode("last applied log id", &meta.last_log_id)?.as_slice())?;
        sm_meta.insert(KEY_MEMBERSHIP, db::encode("last membership", &meta.last_membership)?.as_slice())?;
        sm_meta.insert(KEY_SNAPSHOT_META, db::encode("snapshot meta", meta)?.as_slice())?;
    }
    txn.commit()?;
    files.remove_all_but(meta);
    Ok(changes)
}

fn current_snapshot(db: &Database, files: &SnapshotFiles) -> Result<Option<Snapshot>, DbError> {
    let _files = files.lock();
    let txn = begin_read(db)?;
    let sm_meta = txn.open_table(SM_META)?;
    let Some(meta) = read_record::<SnapshotMeta, _>(&sm_meta, KEY_SNAPSHOT_META, "snapshot meta")? else {
        return Ok(None);
    };
    let blob = files.read(&meta)?;
    Ok(Some(Snapshot { meta, snapshot: blob }))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotBlob;
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let db = self.db.clone();
        Ok(run_blocking(move || read_applied_state(&db)).await?)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        let durable = self.n_applied_since_durable.fetch_add(n, Ordering::Relaxed) + n >= DURABLE_APPLY_EVERY;
        if durable {
            self.n_applied_since_durable.store(0, Ordering::Relaxed);
        }
        let applied = if durable {
            let (db, wal) = (self.db.clone(), self.wal.clone());
            run_blocking(move || apply_entries(&db, &wal, batch, true)).await?
        } else {
            // A commit without fdatasync writes a few pages to the page cache: tens of
            // microseconds, less than the two thread switches a blocking task would cost on
            // every write (this runs on openraft's state-machine task, not a request's).
            apply_entries(&self.db, &self.wal, batch, false)?
        };
        // Watchers first: once a writer hears back, `revision()` and watches already cover it.
        self.publisher.publish(applied.last_index, applied.batches);
        for (responder, response) in responders.into_iter().zip(applied.responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotBlob,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let owned_meta = meta.clone();
        let files = self.snapshots.clone();
        let (changes, counts) = run_blocking(move || {
            let changes = install_snapshot(&db, &files, &owned_meta, &snapshot)?;
            Ok((changes, count_objects(&db)?))
        })
        .await?;
        let revision = meta.last_log_id.as_ref().map_or(0, |id| id.index);
        tracing::info!(revision, n_changes = changes.len(), "installed a snapshot");
        let batch = (!changes.is_empty()).then_some(ChangeBatch { revision, changes });
        self.publisher.publish_reset(revision, batch, counts);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let db = self.db.clone();
        let files = self.snapshots.clone();
        Ok(run_blocking(move || current_snapshot(&db, &files)).await?)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotBlob;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (db, wal, files) = (self.db.clone(), self.wal.clone(), self.snapshots.clone());
        let snapshot = run_blocking(move || build_snapshot(&db, &wal, &files)).await?;
        tracing::info!(
            last_log_id = ?snapshot.meta.last_log_id,
            n_bytes = snapshot.snapshot.len(),
            "built a snapshot"
        );
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::open_database;
    use openraft::vote::RaftLeaderIdExt;
    use redb::ReadableTableMetadata;
    use shared_proto::store::Precondition;
    use shared_proto::{ObjectMeta, Site, SiteSpec};

    fn entry(index: u64, payload: EntryPayload<CommandBytes, u64, openraft::BasicNode>) -> Entry {
        let leader = <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(1, 1);
        Entry { log_id: LogId::new(leader, index), payload }
    }

    fn put_site(name: &str) -> CommandBytes {
        let object = Object::Site(Site::new(ObjectMeta::named(name), SiteSpec::default()));
        CommandBytes(StoreCommand::put(object, Precondition::None).encode().unwrap())
    }

    #[test]
    fn unreadable_commands_are_rejected_and_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_database(&dir.path().join("store.redb")).unwrap();
        let (wal, _) = Wal::open(&dir.path().join("raft-log")).unwrap();
        let mut newer_version = put_site("b").0;
        let newer = shared_proto::store::STORE_FORMAT_VERSION + 1;
        newer_version[0] = u8::try_from(newer).unwrap();
        let applied = apply_entries(
            &db,
            &wal,
            vec![
                entry(1, EntryPayload::Blank),
                entry(2, EntryPayload::Normal(CommandBytes(vec![0xff, 0xff, 0xff]))),
                entry(3, EntryPayload::Normal(CommandBytes(newer_version))),
                entry(4, EntryPayload::Normal(put_site("a"))),
            ],
            true,
        )
        .unwrap();

        assert_eq!(applied.last_index, 4);
        assert_eq!(applied.responses[0], ApplyResponse::Outcome(StoreOutcome::Applied { revision: 1 }));
        assert!(matches!(&applied.responses[1], ApplyResponse::Rejected(m) if m.contains("log index 2")));
        assert!(
            matches!(&applied.responses[2], ApplyResponse::Rejected(m) if m.contains(&format!("version {newer}")))
        );
        assert_eq!(applied.responses[3], ApplyResponse::Outcome(StoreOutcome::Applied { revision: 4 }));
        // Only the readable command changed anything, and watchers hear only of it.
        let revisions: Vec<u64> = applied.batches.iter().map(|b| b.batch.revision).collect();
        assert_eq!(revisions, vec![4]);
        let txn = begin_read(&db).unwrap();
        assert_eq!(txn.open_table(OBJECTS).unwrap().len().unwrap(), 1);
        let (last_applied, _) = read_applied_state(&db).unwrap();
        assert_eq!(last_applied.map(|id| id.index), Some(4));
    }
}
