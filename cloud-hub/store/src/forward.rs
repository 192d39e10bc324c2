//! Any hub takes writes, linearizable reads and membership changes: a follower forwards them to
//! the leader over the hubs' own RPC channel (mutual TLS, see `network.rs`) and, for writes and
//! reads, waits until it has applied the leader's index itself, so a client reads its own
//! writes on the hub it wrote to and watches there see them in order.
//!
//! A request that finds no leader (an election) waits for one, up to [`LEADER_WAIT`]. A write
//! is sent again only when it certainly was not proposed: the leader was unreachable before
//! the request reached it, or answered that it is no longer the leader. A write whose answer
//! was lost is reported as [`StoreError::Unavailable`], as a write on the leader that lost its
//! leadership is: it may or may not have been applied.

use crate::network::CallError;
use crate::rpc::{self, Forwarded, MembershipChange};
use crate::types::{ApplyResponse, CommandBytes, NodeId};
use crate::{Store, StoreError};
use openraft::async_runtime::WatchReceiver;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::time::Instant;

/// How long a request waits for a leader to be elected or reachable.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long one forwarded call may take (a write waits for a quorum's fdatasync).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Membership changes wait for a learner to catch up.
const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a follower waits to apply what the leader committed for it.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Where a request goes now.
enum Route {
    Here,
    Leader(NodeId, String),
}

impl Store {
    /// This node if it leads, the leader it knows of otherwise; waits while there is none.
    async fn route(&self, deadline: Instant) -> Result<Route, StoreError> {
        // openraft's metrics, not just the leader: a new member may know the leader before
        // it has the membership entry that gives the leader's address.
        let mut metrics = self.raft().metrics();
        loop {
            let known = {
                let m = metrics.borrow_watched();
                m.current_leader.map(|id| {
                    let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone());
                    (id, addr.filter(|a| !a.is_empty()))
                })
            };
            match known {
                Some((id, _)) if id == self.node_id() && self.is_leader() => return Ok(Route::Here),
                Some((id, Some(addr))) if id != self.node_id() => return Ok(Route::Leader(id, addr)),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(StoreError::Unavailable("the store is shutting down".into())),
                Err(_) => {
                    let st = self.status();
                    return Err(StoreError::Unavailable(format!(
                        "no reachable leader within {}s (an election, or no quorum): retry later \
                         (node {} knows leader {:?}, voters {:?})",
                        LEADER_WAIT.as_secs(),
                        st.node_id,
                        st.leader,
                        st.voters
                    )));
                }
            }
        }
    }

    /// Waits for the next leader change, or a short pause, before trying again.
    async fn backoff(&self, attempt: u32, deadline: Instant) {
        let pause = Duration::from_millis(25u64 << attempt.min(5)).min(Duration::from_millis(500));
        let mut leader_rx = self.leader();
        leader_rx.borrow_and_update();
        let until = (Instant::now() + pause).min(deadline);
        let _ = tokio::time::timeout_at(until, leader_rx.changed()).await;
    }

    /// Runs `here` on the leader, or sends `req` to `path` on it. `resend_if_unsure`: whether
    /// the request may be sent again when its answer is lost (true for reads).
    async fn on_leader<Req, T, F, Fut>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
        resend_if_unsure: bool,
        here: F,
    ) -> Result<T, StoreError>
    where
        Req: Serialize,
        T: DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        // Encoded only if a forward is needed: on the leader a write goes straight in.
        let mut body: Option<Vec<u8>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.route(deadline).await? {
                Route::Here => match here().await {
                    Err(StoreError::NotLeader { .. }) => {}
                    other => return other,
                },
                Route::Leader(id, addr) => {
                    let bytes = match &body {
                        Some(b) => b.clone(),
                        None => body.insert(rpc::encode("forwarded request", req)?).clone(),
                    };
                    let answer: Result<Forwarded<T>, CallError> =
                        self.inner.clients.call(id, &addr, path, bytes, timeout).await;
                    match answer {
                        Ok(Ok(t)) => return Ok(t),
                        Ok(Err(rpc::WireError::NotLeader { .. })) => {}
                        Ok(Err(e)) => return Err(e.into()),
                        Err(CallError::Unreachable(why)) => {
                            tracing::debug!(leader = id, %why, "the leader is unreachable; retrying");
                        }
                        Err(e) if resend_if_unsure => {
                            tracing::debug!(leader = id, error = %e, "forwarded request failed; retrying");
                        }
                        Err(e) => {
                            return Err(StoreError::Unavailable(format!(
                                "the leader (node {id}) did not answer the forwarded write ({e}), so it may or \
                                 may not apply: re-read, then retry"
                            )));
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "no leader took the request within {}s: retry later",
                    LEADER_WAIT.as_secs()
                )));
            }
            self.backoff(attempt, deadline).await;
        }
    }

    /// Waits until this node has applied revision `index`.
    async fn await_applied(&self, index: u64) -> Result<(), StoreError> {
        let mut applied = self.applied();
        let waited = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|r| *r >= index)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Unavailable("the store is shutting down".into())),
            Err(_) => Err(StoreError::Unavailable(format!(
                "this hub has not applied revision {index} within {}s (it is at {}): it is lagging",
                APPLY_WAIT.as_secs(),
                self.revision()
            ))),
        }
    }

    pub(crate) async fn write_anywhere(&self, cmd: CommandBytes) -> Result<ApplyResponse, StoreError> {
        let (response, index) = self
            .on_leader(rpc::PATH_FORWARD_WRITE, &cmd, CALL_TIMEOUT, false, || self.write_here(cmd.clone()))
            .await?;
        // Committed; a follower answers once it has applied it too (read-your-writes here).
        if let Err(e) = self.await_applied(index).await {
            tracing::warn!(error = %e, revision = index, "a forwarded write committed but is not applied here yet");
        }
        Ok(response)
    }

    pub(crate) async fn read_barrier_anywhere(&self) -> Result<(), StoreError> {
        if self.is_leader() {
            // The common case on the leader: openraft's own barrier, which waits for the apply.
            match self.local_read_barrier().await {
                Err(StoreError::NotLeader { .. }) => {}
                other => return other,
            }
        }
        let index = self
            .on_leader(rpc::PATH_FORWARD_READ_INDEX, &(), CALL_TIMEOUT, true, || self.read_index_here())
            .await?;
        self.await_applied(index).await
    }

    pub(crate) async fn change_membership_anywhere(
        &self,
        change: MembershipChange,
    ) -> Result<(), StoreError> {
        let here = || {
            let change = change.clone();
            async move {
                match change {
                    MembershipChange::Add { id, raft_addr } => self.add_member_here(id, raft_addr).await,
                    MembershipChange::Remove { id } => self.remove_member_here(id).await,
                }
            }
        };
        // Membership changes are idempotent, so resending one is safe.
        self.on_leader(rpc::PATH_FORWARD_MEMBERSHIP, &change, MEMBERSHIP_CALL_TIMEOUT, true, here).await
    }
}
