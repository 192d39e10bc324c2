//! The [`Store`] facade: opens the redb file, runs this hub's openraft member and its RPC
//! listener, and turns openraft's API and errors into the store's.

use crate::config::{RaftTuning, StoreConfig};
use crate::db::{self, DbError, OBJECTS, begin_read, run_blocking};
use crate::history::{Compacted, HistoryPage};
use crate::log_store::{self, LogStore};
use crate::network::{HttpNetworkFactory, PeerClients};
use crate::server::RaftServer;
use crate::snapshot_files::SnapshotFiles;
use crate::state_machine::{self, Publisher, StateMachineStore};
use crate::types::{ApplyResponse, CommandBytes, NodeId, Raft, TypeConfig};
use crate::wal::Wal;
use crate::{ChangeBatch, DB_FILE_NAME, MAX_COMMAND_BYTES, Revisioned, StoreError, StoreStatus};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    ChangeMembershipError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, LinearizableReadError,
    RaftError,
};
use openraft::{BasicNode, ChangeMembers, ReadPolicy};
use redb::Database;
use shared_proto::store::{Object, StoreCommand, StoreKind, StoreOutcome};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, broadcast, watch};
use tokio::task::JoinHandle;

/// How long `open` waits for a single-member cluster to elect itself, so the first write after
/// `open` does not bounce off a node that is still a candidate.
const SINGLE_NODE_ELECTION_WAIT: Duration = Duration::from_secs(10);
/// How long `add_member` keeps retrying while an earlier membership change is still committing.
const MEMBERSHIP_CHANGE_WAIT: Duration = Duration::from_secs(30);
/// How long `shutdown` waits for openraft's tasks to let go of the database file.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A handle on this hub's store. Clones share one store.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    node_id: NodeId,
    raft: Raft,
    /// `None` once shut down, so that local reads fail instead of touching a closed store.
    db: RwLock<Option<Arc<Database>>>,
    /// The raft log, synced before the state machine's last durable commit at shutdown.
    wal: Arc<Wal>,
    pub(crate) publisher: Arc<Publisher>,
    leader_rx: watch::Receiver<Option<NodeId>>,
    leader_task: JoinHandle<()>,
    server: Mutex<Option<RaftServer>>,
    /// HTTP clients for the peers, shared with openraft's network (`forward.rs` uses them).
    pub(crate) clients: Arc<PeerClients>,
    /// The hub's own services for its peers, on the Raft listener (`serve_peers`).
    pub(crate) peer_routes: RwLock<Option<axum::Router>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.leader_task.abort();
    }
}

impl Store {
    /// Opens (or creates) the store in `cfg.data_dir` and starts this node's Raft member.
    ///
    /// A restart recovers everything. `revision()` continues from where it was, plus the blank
    /// entry every newly elected leader commits. A single-member store has re-applied its whole
    /// committed log, even after a crash, when this returns; a member of a larger cluster
    /// catches up in the background.
    pub async fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_tuning(cfg, RaftTuning::default()).await
    }

    /// [`Store::open`] with non-default Raft timing and snapshot policy.
    pub async fn open_with_tuning(cfg: StoreConfig, tuning: RaftTuning) -> Result<Store, StoreError> {
        let raft_config = tuning.to_openraft().map_err(|e| StoreError::Fatal(format!("raft tuning: {e}")))?;
        tokio::fs::create_dir_all(&cfg.data_dir).await.map_err(|e| {
            StoreError::Fatal(format!("creating the store directory {}: {e}", cfg.data_dir.display()))
        })?;
        let path = cfg.data_dir.join(DB_FILE_NAME);
        let db = run_blocking(move || db::open_database(&path).map(Arc::new)).await?;
        let (wal, snapshots) = {
            let (db, dir) = (db.clone(), cfg.data_dir.clone());
            run_blocking(move || {
                let wal = log_store::open_log(&dir, &db)?;
                let snapshots = SnapshotFiles::open(&dir)?;
                snapshots.move_out_of(&db)?;
                Ok((wal, Arc::new(snapshots)))
            })
            .await?
        };
        let (applied, counts) = {
            let db = db.clone();
            run_blocking(move || {
                Ok((state_machine::read_applied_state(&db)?.0, state_machine::count_objects(&db)?))
            })
            .await?
        };
        let publisher =
            Arc::new(Publisher::new(applied.map_or(0, |id| id.index), tuning.watch_history, counts));

        // Bind before starting Raft: a taken port is an error of `open`, not a silent partition.
        let listener = match cfg.raft_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| StoreError::Fatal(format!("binding the raft address {addr}: {e}")))?,
            ),
            None => None,
        };
        let clients = Arc::new(
            PeerClients::new(cfg.peer_tls.as_ref())
                .map_err(|e| StoreError::Fatal(format!("building the raft http client: {e}")))?,
        );
        let network = HttpNetworkFactory::new(cfg.node_id, clients.clone());
        let raft = Raft::new(
            cfg.node_id,
            Arc::new(raft_config),
            network,
            LogStore::new(wal.clone()),
            StateMachineStore::new(db.clone(), wal.clone(), snapshots, publisher.clone()),
        )
        .await
        .map_err(|e| StoreError::Fatal(format!("starting raft: {e}")))?;
        let (leader_rx, leader_task) = watch_leader(&raft);

        let store = Store {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                raft,
                db: RwLock::new(Some(db)),
                wal,
                publisher,
                leader_rx,
                leader_task,
                server: Mutex::new(None),
                clients,
                peer_routes: RwLock::new(None),
                closed: AtomicBool::new(false),
            }),
        };
        if let Some(l) = listener {
            let tls = cfg.peer_tls.as_ref().map(|t| t.server.clone());
            let server = RaftServer::spawn(
                l,
                cfg.node_id,
                store.inner.raft.clone(),
                Arc::downgrade(&store.inner),
                tls,
            );
            *store.inner.server.lock().await = Some(server);
        }
        if let Err(e) = store.initialize(&cfg).await {
            let _ = store.shutdown().await;
            return Err(e);
        }
        Ok(store)
    }

    /// Forms the cluster on a pristine node that is one of `initial_members`.
    async fn initialize(&self, cfg: &StoreConfig) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        if !raft.is_initialized().await.map_err(fatal_to_error)? {
            let members: BTreeMap<NodeId, BasicNode> = if cfg.initial_members.is_empty() {
                let addr = cfg.raft_addr.map(|a| a.to_string()).unwrap_or_default();
                BTreeMap::from([(cfg.node_id, BasicNode::new(addr))])
            } else {
                cfg.initial_members.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect()
            };
            if members.contains_key(&cfg.node_id) {
                tracing::info!(node_id = cfg.node_id, members = ?members.keys(), "initialising a new raft cluster");
                match raft.initialize(members).await {
                    Ok(()) => {}
                    // Another call got there first: the goal (an initialised node) is reached.
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(RaftError::APIError(e)) => return Err(StoreError::Rejected(e.to_string())),
                    Err(RaftError::Fatal(f)) => return Err(fatal_to_error(f)),
                }
            } else {
                tracing::info!(node_id = cfg.node_id, "empty store: waiting for a leader to add this node");
                return Ok(());
            }
        }
        // Asked of the core itself: right after `initialize` the metrics may not show the new
        // membership yet.
        let voters: BTreeSet<NodeId> = raft
            .with_raft_state(|st| st.membership_state.effective().voter_ids().collect())
            .await
            .map_err(fatal_to_error)?;
        let is_single_voter = voters == BTreeSet::from([cfg.node_id]);
        if is_single_voter {
            let me = cfg.node_id;
            let waited = raft
                .wait(Some(SINGLE_NODE_ELECTION_WAIT))
                .metrics(
                    |m| m.current_leader == Some(me) && m.state.is_leader(),
                    "single member elects itself",
                )
                .await;
            if let Err(e) = waited {
                tracing::warn!(error = %e, "the single member has not become leader yet");
                return Ok(());
            }
            // After a crash the state machine may be behind the durable log (applies are not
            // fdatasync'ed): a read barrier makes it re-apply everything committed, so local
            // reads and `revision()` start where the crashed process left off.
            let barrier = raft.ensure_linearizable(ReadPolicy::ReadIndex);
            match tokio::time::timeout(SINGLE_NODE_ELECTION_WAIT, barrier).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the single member could not catch up on open"),
                Err(_) => tracing::warn!("the single member did not catch up on open in time"),
            }
        }
        Ok(())
    }

    /// Proposes `cmd` through Raft; returns once it is committed and applied on this node.
    /// On a follower the write is forwarded to the leader (see `forward.rs`).
    ///
    /// `Ok(StoreOutcome::Conflict { .. })` means a precondition failed and nothing changed.
    /// [`StoreError::Unavailable`] after a leader change can mean the command still commits:
    /// make retries safe with preconditions, or re-read before retrying.
    pub async fn write(&self, cmd: StoreCommand) -> Result<StoreOutcome, StoreError> {
        self.check_open()?;
        let bytes = cmd.encode()?;
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(StoreError::Rejected(format!(
                "the command encodes to {} bytes, more than the {MAX_COMMAND_BYTES} a write may carry: split it",
                bytes.len()
            )));
        }
        match self.write_anywhere(CommandBytes(bytes)).await? {
            ApplyResponse::Outcome(outcome) => Ok(outcome),
            ApplyResponse::Rejected(msg) => Err(StoreError::Rejected(msg)),
        }
    }

    /// Proposes an encoded command on this node, which must be the leader; returns the state
    /// machine's answer and the entry's log index.
    pub(crate) async fn write_here(&self, cmd: CommandBytes) -> Result<(ApplyResponse, u64), StoreError> {
        self.check_open()?;
        match self.inner.raft.client_write(cmd).await {
            Ok(resp) => Ok((resp.data, resp.log_id.index)),
            Err(RaftError::APIError(e)) => Err(self.write_error(e)),
            Err(RaftError::Fatal(f)) => Err(fatal_to_error(f)),
        }
    }

    /// Linearizable read of one object: confirms leadership with a quorum, waits until this
    /// node has applied everything committed before, then reads locally. Followers answer
    /// [`StoreError::NotLeader`].
    pub async fn get(&self, kind: StoreKind, name: &str) -> Result<Option<Object>, StoreError> {
        self.read_barrier().await?;
        self.get_local(kind, name)
    }

    /// Linearizable list of one kind, sorted by name. See [`Store::get`].
    pub async fn list(&self, kind: StoreKind) -> Result<Vec<Object>, StoreError> {
        self.read_barrier().await?;
        self.list_local(kind)
    }

    /// [`Store::get`] with the key's revisions.
    pub async fn get_revisioned(
        &self,
        kind: StoreKind,
        name: &str,
    ) -> Result<Option<Revisioned>, StoreError> {
        self.read_barrier().await?;
        self.get_local_revisioned(kind, name)
    }

    /// Local read with no barrier: what this node has applied, possibly stale.
    pub fn get_local(&self, kind: StoreKind, name: &str) -> Result<Option<Object>, StoreError> {
        Ok(self.get_local_revisioned(kind, name)?.map(|r| r.object))
    }

    /// [`Store::get_local`] with the key's revisions.
    pub fn get_local_revisioned(
        &self,
        kind: StoreKind,
        name: &str,
    ) -> Result<Option<Revisioned>, StoreError> {
        let db = self.db()?;
        let txn = begin_read(&db)?;
        let objects = txn.open_table(OBJECTS).map_err(DbError::from)?;
        let key = kind.key(name);
        let Some(guard) = objects.get(key.as_str()).map_err(DbError::from)? else {
            return Ok(None);
        };
        let (revision, create_revision, bytes) = guard.value();
        Ok(Some(Revisioned { object: decode_stored(&key, bytes)?, revision, create_revision }))
    }

    /// Local list with no barrier, sorted by name.
    pub fn list_local(&self, kind: StoreKind) -> Result<Vec<Object>, StoreError> {
        let db = self.db()?;
        let txn = begin_read(&db)?;
        let objects = txn.open_table(OBJECTS).map_err(DbError::from)?;
        let prefix = kind.prefix();
        // Keys are `kind/name`: every key of the kind sorts in [`kind/`, `kind0`), as '0' is the
        // character after '/'.
        let end = format!("{}0", kind.as_str());
        let mut out = Vec::new();
        for item in objects.range(prefix.as_str()..end.as_str()).map_err(DbError::from)? {
            let (key, value) = item.map_err(DbError::from)?;
            out.push(decode_stored(key.value(), value.value().2)?);
        }
        Ok(out)
    }

    /// How many objects of `kind` this hub has applied: kept by the state machine as it applies,
    /// so this costs no scan.
    pub fn count_local(&self, kind: StoreKind) -> Result<usize, StoreError> {
        self.check_open()?;
        Ok(self.inner.publisher.count(kind))
    }

    /// The names of the first `n` objects of `kind` in key order, without decoding any.
    pub fn first_names_local(&self, kind: StoreKind, n: usize) -> Result<Vec<String>, StoreError> {
        let db = self.db()?;
        let txn = begin_read(&db)?;
        let objects = txn.open_table(OBJECTS).map_err(DbError::from)?;
        let prefix = kind.prefix();
        let end = format!("{}0", kind.as_str());
        let mut names = Vec::new();
        for item in objects.range(prefix.as_str()..end.as_str()).map_err(DbError::from)?.take(n) {
            let (key, _) = item.map_err(DbError::from)?;
            names.push(key.value().strip_prefix(prefix.as_str()).unwrap_or_default().to_string());
        }
        Ok(names)
    }

    /// A backup file of this node's state machine: a linearizable read barrier (so it holds
    /// every write acknowledged before the call), then every object with its revisions from one
    /// read transaction, at the revision applied in that same transaction. Writes go on
    /// meanwhile. The file is built in memory (the store is, in a snapshot, anyway).
    pub async fn backup(
        &self,
        hub_version: &str,
        created_at: shared_proto::Timestamp,
    ) -> Result<(crate::BackupHeader, Vec<u8>), StoreError> {
        self.read_barrier().await?;
        let db = self.db()?;
        let hub_version = hub_version.to_string();
        let built = run_blocking(move || {
            let txn = begin_read(&db)?;
            let (applied, _) = state_machine::read_applied_state_in(&txn)?;
            let objects = txn.open_table(OBJECTS)?;
            let n_objects = redb::ReadableTableMetadata::len(&objects)?;
            let blob = crate::snapshot::write_snapshot(&objects)?;
            let revision = applied.map_or(0, |id| id.index);
            Ok(crate::backup::encode_backup(&blob, n_objects, revision, created_at, &hub_version))
        })
        .await?;
        built.map_err(|e| StoreError::Fatal(e.to_string()))
    }

    /// Serves `routes` to the other hubs on this hub's Raft listener, behind the same mutual
    /// TLS (only hubs reach them); paths must not start with `/raft/`.
    pub fn serve_peers(&self, routes: axum::Router) {
        *self.inner.peer_routes.write().unwrap_or_else(|p| p.into_inner()) = Some(routes);
    }

    /// A GET of `path` on member `node`'s peer services (see [`Store::serve_peers`]), over the
    /// hubs' mutual TLS. The answer is returned whatever its status; `timeout` bounds the
    /// whole exchange, body included.
    pub async fn peer_get(
        &self,
        node: NodeId,
        path: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, StoreError> {
        self.peer_request(node, reqwest::Method::GET, path, None, timeout).await
    }

    /// A POST of `body` (JSON) to `path` on member `node`'s peer services, as
    /// [`Store::peer_get`].
    pub async fn peer_post(
        &self,
        node: NodeId,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<reqwest::Response, StoreError> {
        self.peer_request(node, reqwest::Method::POST, path, Some(body), timeout).await
    }

    async fn peer_request(
        &self,
        node: NodeId,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<reqwest::Response, StoreError> {
        self.check_open()?;
        let st = self.status();
        let addr = st
            .voters
            .get(&node)
            .or_else(|| st.learners.get(&node))
            .filter(|a| !a.is_empty())
            .ok_or_else(|| StoreError::Rejected(format!("node {node} is not a member of the cluster")))?;
        let (client, base_url) = self
            .inner
            .clients
            .client(node, addr)
            .await
            .map_err(|e| StoreError::Unavailable(format!("node {node}: {e}")))?;
        let mut request = client
            .request(method, format!("{base_url}{path}"))
            .header(crate::rpc::HEADER_TARGET_NODE, node.to_string())
            .timeout(timeout);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        request.send().await.map_err(|e| StoreError::Unavailable(format!("node {node}: {e}")))
    }

    /// Revision of the last applied entry (its log index; 0 for an empty store).
    pub fn revision(&self) -> u64 {
        self.inner.publisher.revision()
    }

    /// Race-free watch: returns the revision `R` the subscription starts at and a receiver
    /// that gets every [`ChangeBatch`] with revision > `R`, in order.
    ///
    /// Start from a list taken at revision >= `R` (e.g. `list_local` right after subscribing)
    /// and skip batches at or below the list's revision. A receiver that falls more than a few
    /// thousand batches behind gets `RecvError::Lagged`: it has missed changes and must relist
    /// and subscribe again. Installing a snapshot from the leader shows up as one batch holding
    /// the net difference.
    pub fn subscribe(&self) -> (u64, broadcast::Receiver<Arc<ChangeBatch>>) {
        self.inner.publisher.subscribe()
    }

    /// The watched changes (API kinds only) after revision `cursor`, at most `max` revisions of
    /// them, from this hub's history window; [`StoreError::Compacted`] when the window no longer
    /// reaches back to `cursor`. Every hub keeps the same changes at the same revisions, so a
    /// watcher can resume on any hub whose window covers its cursor.
    pub fn history_after(&self, cursor: u64, max: usize) -> Result<HistoryPage, StoreError> {
        self.check_open()?;
        self.inner.publisher.with_history(|h| h.read_after(cursor, max)).map_err(compacted)
    }

    /// The revision this hub has applied, changing as it applies more (for watchers to wait on
    /// instead of polling). Its history window covers the value seen.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.publisher.applied()
    }

    pub fn is_leader(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire) && self.inner.raft.is_leader()
    }

    /// The current leader's id as this node knows it; changes are observable.
    pub fn leader(&self) -> watch::Receiver<Option<NodeId>> {
        self.inner.leader_rx.clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// This node's openraft member, for the crate's other views of it (`progress.rs`).
    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn status(&self) -> StoreStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let addr = |id: NodeId| membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        StoreStatus {
            node_id: self.inner.node_id,
            leader: metrics.current_leader,
            is_leader: self.is_leader(),
            revision: self.revision(),
            last_log_index: metrics.last_log_index,
            snapshot_revision: metrics.snapshot.as_ref().map(|id| id.index),
            purged_revision: metrics.purged.as_ref().map(|id| id.index),
            voters: membership.voter_ids().map(|id| (id, addr(id))).collect(),
            learners: membership.learner_ids().map(|id| (id, addr(id))).collect(),
        }
    }

    /// Adds node `id`, reachable at `raft_addr`, as a voter: first as a learner that catches up
    /// (from the log or a snapshot), then promoted. Idempotent for a node already a voter at the
    /// same address. Any member may be asked; a follower forwards to the leader.
    pub async fn add_member(&self, id: NodeId, raft_addr: String) -> Result<(), StoreError> {
        self.check_open()?;
        self.change_membership_anywhere(crate::rpc::MembershipChange::Add { id, raft_addr }).await
    }

    /// Removes node `id` from the cluster (voter or learner). Idempotent. Removing the leader
    /// makes it step down once the change commits. Any member may be asked.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), StoreError> {
        self.check_open()?;
        self.change_membership_anywhere(crate::rpc::MembershipChange::Remove { id }).await
    }

    pub(crate) async fn add_member_here(&self, id: NodeId, raft_addr: String) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        {
            let metrics = raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            let is_voter = membership.voter_ids().any(|v| v == id);
            if is_voter && membership.get_node(&id).is_some_and(|n| n.addr == raft_addr) {
                return Ok(());
            }
        }
        let deadline = Instant::now() + MEMBERSHIP_CHANGE_WAIT;
        let node = BasicNode::new(&raft_addr);
        self.retry_membership_change(deadline, || raft.add_learner(id, node.clone(), true)).await?;
        let voters = BTreeSet::from([id]);
        self.retry_membership_change(deadline, || {
            raft.change_membership(ChangeMembers::AddVoterIds(voters.clone()), false)
        })
        .await?;
        tracing::info!(node_id = id, raft_addr, "added a voting member");
        Ok(())
    }

    pub(crate) async fn remove_member_here(&self, id: NodeId) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        let (is_voter, is_member) = {
            let metrics = raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            (membership.voter_ids().any(|v| v == id), membership.get_node(&id).is_some())
        };
        if !is_member {
            return Ok(());
        }
        let deadline = Instant::now() + MEMBERSHIP_CHANGE_WAIT;
        let ids = BTreeSet::from([id]);
        if is_voter {
            self.retry_membership_change(deadline, || {
                raft.change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            })
            .await?;
        } else {
            self.retry_membership_change(deadline, || {
                raft.change_membership(ChangeMembers::RemoveNodes(ids.clone()), false)
            })
            .await?;
        }
        tracing::info!(node_id = id, "removed a member");
        Ok(())
    }

    /// Runs one membership change, retrying while an earlier one is still committing (the
    /// initial membership right after `initialize`, or the leader's first entry of its term).
    async fn retry_membership_change<F, Fut, T>(
        &self,
        deadline: Instant,
        mut change: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>,
    {
        let mut backoff = Duration::from_millis(20);
        loop {
            match change().await {
                Ok(v) => return Ok(v),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    e @ (ChangeMembershipError::InProgress(_)
                    | ChangeMembershipError::UncommittedLeaderLog(_)),
                ))) => {
                    if Instant::now() + backoff > deadline {
                        return Err(StoreError::Unavailable(format!("membership change still blocked: {e}")));
                    }
                    tracing::debug!(error = %e, "membership change must wait for an earlier one");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(RaftError::APIError(e)) => return Err(self.write_error(e)),
                Err(RaftError::Fatal(f)) => return Err(fatal_to_error(f)),
            }
        }
    }

    /// Stops Raft and the RPC server and closes the database file. Idempotent; afterwards every
    /// call answers [`StoreError::Unavailable`].
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(mut server) = self.inner.server.lock().await.take() {
            server.stop().await;
        }
        // Stopping Raft closes its metrics, which ends the leader watch with `None`.
        let raft_result = self.inner.raft.shutdown().await;
        let db = self.inner.db.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(db) = db {
            // Applies commit without fdatasync; make them durable so a clean restart starts
            // exactly where this one stopped.
            let flushed = {
                let (db, wal) = (db.clone(), self.inner.wal.clone());
                run_blocking(move || {
                    // The state machine must never be durable ahead of the log.
                    wal.sync()?;
                    Ok(db::begin_write(&db)?.commit()?)
                })
                .await
            };
            release_database(db).await;
            flushed?;
        }
        raft_result.map_err(|e| StoreError::Fatal(format!("raft stopped abnormally: {e}")))
    }

    /// Whether [`Store::shutdown`] ran: nothing will work again.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the store is shut down".to_string()));
        }
        Ok(())
    }

    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        let guard = self.inner.db.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| StoreError::Unavailable("the store is shut down".to_string()))
    }

    /// Makes the next local read linearizable: on the leader a read-index barrier; on a
    /// follower the leader's read index, then waiting until this node has applied it.
    pub(crate) async fn read_barrier(&self) -> Result<(), StoreError> {
        self.check_open()?;
        self.read_barrier_anywhere().await
    }

    /// openraft's read-index barrier on this node, which must lead.
    pub(crate) async fn local_read_barrier(&self) -> Result<(), StoreError> {
        match self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => Err(not_leader(f)),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                Err(StoreError::Unavailable(format!("no quorum to confirm leadership: {q}")))
            }
            Err(RaftError::Fatal(f)) => Err(fatal_to_error(f)),
        }
    }

    /// The leader's read index: confirms leadership with a quorum and returns the log index a
    /// node must have applied for a local read to be linearizable.
    pub(crate) async fn read_index_here(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        match self.inner.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(l) => Ok(l.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => Err(not_leader(f)),
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                Err(StoreError::Unavailable(format!("no quorum to confirm leadership: {q}")))
            }
            Err(RaftError::Fatal(f)) => Err(fatal_to_error(f)),
        }
    }

    fn write_error(&self, e: ClientWriteError<TypeConfig>) -> StoreError {
        match e {
            ClientWriteError::ForwardToLeader(f) => not_leader(f),
            ClientWriteError::LogEntryDiscarded(f) => StoreError::Unavailable(format!(
                "the leader changed before the write committed, so it may or may not apply \
                 (new leader: {:?}): re-read, then retry",
                f.leader_id
            )),
            ClientWriteError::ChangeMembershipError(ChangeMembershipError::NodeMetadataChanged(e)) => {
                StoreError::Rejected(e.to_string())
            }
            ClientWriteError::ChangeMembershipError(e) => StoreError::Unavailable(e.to_string()),
            ClientWriteError::PreconditionFailed(e) => StoreError::Unavailable(e.to_string()),
        }
    }
}

pub(crate) fn compacted(c: Compacted) -> StoreError {
    StoreError::Compacted { requested: c.requested, oldest: c.floor }
}

fn not_leader(f: ForwardToLeader<TypeConfig>) -> StoreError {
    StoreError::NotLeader { leader: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
}

fn fatal_to_error(f: Fatal<TypeConfig>) -> StoreError {
    match f {
        Fatal::Stopped => StoreError::Unavailable("the store is shutting down".to_string()),
        Fatal::StorageError(e) => StoreError::Fatal(e.to_string()),
        Fatal::Panicked => StoreError::Fatal("raft panicked".to_string()),
    }
}

pub(crate) fn decode_stored(key: &str, bytes: &[u8]) -> Result<Object, StoreError> {
    Object::decode(bytes).map_err(|e| StoreError::Fatal(format!("stored object {key} is unreadable: {e}")))
}

/// Mirrors openraft's view of the leader into a tokio watch channel.
fn watch_leader(raft: &Raft) -> (watch::Receiver<Option<NodeId>>, JoinHandle<()>) {
    let mut metrics = raft.metrics();
    let (tx, rx) = watch::channel(metrics.borrow_watched().current_leader);
    let task = tokio::spawn(async move {
        loop {
            if metrics.changed().await.is_err() {
                // Raft stopped: nobody leads as far as this node knows.
                tx.send_replace(None);
                return;
            }
            let leader = metrics.borrow_watched().current_leader;
            tx.send_if_modified(|current| {
                let changed = *current != leader;
                *current = leader;
                changed
            });
        }
    });
    (rx, task)
}

/// Waits (bounded) until openraft's tasks have dropped their handles on the database, so that
/// the file lock is released when `shutdown` returns and the store can be reopened at once.
async fn release_database(db: Arc<Database>) {
    let deadline = Instant::now() + RELEASE_WAIT;
    let mut db = db;
    loop {
        match Arc::try_unwrap(db) {
            Ok(db) => {
                drop(db);
                return;
            }
            Err(shared) if Instant::now() >= deadline => {
                tracing::warn!("openraft still holds the store database; it closes when its last task ends");
                drop(shared);
                return;
            }
            Err(shared) => {
                db = shared;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

// The hub shares one `Store` between its tasks.
const _: fn() = || {
    fn check<T: Send + Sync>() {}
    check::<Store>();
};
