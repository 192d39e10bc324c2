//! Raft's progress on this node, for the hub's metrics, and the liveness probe behind its
//! systemd watchdog. Both read openraft here, so nothing outside this crate names it.

use crate::StoreError;
use crate::store::Store;
use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

/// A point-in-time view of where this node's log and state machine stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RaftProgress {
    pub term: u64,
    /// The last entry appended to this node's log (flushed or not).
    pub last_log_index: u64,
    /// The last entry this node knows to be committed (its local view of the quorum's).
    pub committed_index: u64,
    /// The last entry applied to this node's state machine.
    pub applied_index: u64,
    pub is_leader: bool,
}

impl RaftProgress {
    /// Committed entries not yet applied on this node.
    pub fn apply_lag(&self) -> u64 {
        self.committed_index.saturating_sub(self.applied_index)
    }
}

impl Store {
    /// Raft's progress as openraft's metrics watch last published it (no round trip).
    pub fn raft_progress(&self) -> RaftProgress {
        let m = self.raft().metrics().borrow_watched().clone();
        RaftProgress {
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m.local_committed.as_ref().map_or(0, |id| id.index),
            applied_index: m.last_applied.as_ref().map_or(0, |id| id.index),
            is_leader: self.is_leader(),
        }
    }

    /// Proves the store is alive: a request goes through openraft's core task to the state
    /// machine's worker and back, behind every apply already queued there. A core or a state
    /// machine that is stuck (a wedged disk, a deadlock) does not answer `within`. It needs no
    /// quorum, so a follower cut off from its leader is still alive.
    pub async fn probe(&self, within: Duration) -> Result<(), StoreError> {
        let answered = self.raft().with_state_machine(|_sm| Box::pin(async {}));
        match tokio::time::timeout(within, answered).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(fatal)) => Err(StoreError::Fatal(fatal.to_string())),
            Err(_) => {
                Err(StoreError::Unavailable(format!("the state machine did not answer within {within:?}")))
            }
        }
    }
}
