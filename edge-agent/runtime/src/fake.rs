//! [`FakeRuntime`]: an in-memory [`ContainerRuntime`] that records every call, for unit
//! tests of code that drives containers (the agent's reconcile loop, [`crate::stop`]).
//!
//! It follows the real runtime's state rules (create → created, start → running,
//! delete needs stopped unless forced, errors of the same kinds), makes processes exit
//! on SIGKILL and (unless told otherwise) SIGTERM, and lets tests end processes
//! ([`FakeRuntime::exit`]), plant containers left by a previous agent
//! ([`FakeRuntime::insert`]) and inject failures ([`FakeRuntime::fail_next`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::{
    ContainerExit, ContainerRuntime, ContainerState, ContainerStatus, ExecOutput, RuntimeError, RuntimeFuture,
};
use std::time::Duration;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Create { id: String, bundle: String },
    Start { id: String },
    Kill { id: String, signal: i32 },
    Delete { id: String, force: bool },
    State { id: String },
    List,
    Exec { id: String, args: Vec<String> },
}

/// Which operation an injected failure applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    Create,
    Start,
    Kill,
    Delete,
    State,
    List,
    Exec,
}

#[derive(Default)]
struct FakeInner {
    containers: BTreeMap<String, ContainerState>,
    calls: Vec<FakeCall>,
    failures: HashMap<FakeOp, Vec<RuntimeError>>,
    ignores_sigterm: bool,
    next_pid: i32,
    /// What execs answer, by program (`args[0]`); unset programs exit 0.
    exec_results: HashMap<String, ExecOutput>,
}

pub struct FakeRuntime {
    inner: Mutex<FakeInner>,
    exits: broadcast::Sender<ContainerExit>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        FakeRuntime {
            inner: Mutex::new(FakeInner { next_pid: 1000, ..Default::default() }),
            exits: broadcast::channel(256).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// Every call so far, clearing the record.
    pub fn take_calls(&self) -> Vec<FakeCall> {
        std::mem::take(&mut self.lock().calls)
    }

    /// Plants a container, as if left running by a previous agent.
    pub fn insert(&self, state: ContainerState) {
        self.lock().containers.insert(state.id.clone(), state);
    }

    /// The next `op` fails with `error` (queued: several calls fail in order).
    pub fn fail_next(&self, op: FakeOp, error: RuntimeError) {
        self.lock().failures.entry(op).or_default().push(error);
    }

    /// Whether running processes shrug off SIGTERM, like a shell as pid 1.
    /// What an exec of `program` returns from now on.
    pub fn set_exec_result(&self, program: &str, result: ExecOutput) {
        self.lock().exec_results.insert(program.to_string(), result);
    }

    pub fn set_ignores_sigterm(&self, ignores: bool) {
        self.lock().ignores_sigterm = ignores;
    }

    /// Ends container `id`'s process now with `exit_code` and reports it.
    pub fn exit(&self, id: &str, exit_code: Option<i32>) {
        let exit = {
            let mut inner = self.lock();
            let Some(c) = inner.containers.get_mut(id) else { return };
            if c.status == ContainerStatus::Stopped {
                return;
            }
            c.status = ContainerStatus::Stopped;
            ContainerExit { id: id.to_string(), pid: c.pid.take().unwrap_or(0), exit_code }
        };
        let _ = self.exits.send(exit);
    }

    /// Records the call and pops an injected failure for it, if any.
    fn begin(&self, op: FakeOp, call: FakeCall) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(call);
        match inner.failures.get_mut(&op) {
            Some(queue) if !queue.is_empty() => Err(queue.remove(0)),
            _ => Ok(()),
        }
    }

    fn do_create(&self, id: &str, bundle: &Path) -> Result<(), RuntimeError> {
        crate::validate_container_id(id)?;
        let mut inner = self.lock();
        if inner.containers.contains_key(id) {
            return Err(RuntimeError::InvalidRequest(format!("container {id} already exists")));
        }
        inner.next_pid += 1;
        let pid = inner.next_pid;
        inner.containers.insert(
            id.to_string(),
            ContainerState {
                id: id.to_string(),
                status: ContainerStatus::Created,
                pid: Some(pid),
                bundle: bundle.to_path_buf(),
                created_at: None,
            },
        );
        Ok(())
    }

    fn do_start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        let c = inner.containers.get_mut(id).ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
        if c.status != ContainerStatus::Created {
            return Err(RuntimeError::InvalidRequest(format!("container {id} is {:?}", c.status)));
        }
        c.status = ContainerStatus::Running;
        Ok(())
    }

    fn do_kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let dies = {
            let inner = self.lock();
            let c = inner.containers.get(id).ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?;
            if c.status == ContainerStatus::Stopped {
                return Err(RuntimeError::InvalidRequest(format!("container {id} is not running")));
            }
            signal == libc::SIGKILL || (signal == libc::SIGTERM && !inner.ignores_sigterm)
        };
        if dies {
            self.exit(id, Some(128 + signal));
        }
        Ok(())
    }

    fn do_delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let status = {
            let inner = self.lock();
            inner.containers.get(id).ok_or_else(|| RuntimeError::NotFound { id: id.to_string() })?.status
        };
        if status != ContainerStatus::Stopped {
            if !force {
                return Err(RuntimeError::InvalidRequest(format!("container {id} is running")));
            }
            self.exit(id, Some(128 + libc::SIGKILL));
        }
        self.lock().containers.remove(id);
        Ok(())
    }
}

impl ContainerRuntime for FakeRuntime {
    fn create<'a>(&'a self, id: &'a str, bundle: &'a Path) -> RuntimeFuture<'a, ()> {
        let call = FakeCall::Create { id: id.to_string(), bundle: bundle.display().to_string() };
        let result = self.begin(FakeOp::Create, call).and_then(|()| self.do_create(id, bundle));
        Box::pin(async move { result })
    }

    fn start<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        let result = self
            .begin(FakeOp::Start, FakeCall::Start { id: id.to_string() })
            .and_then(|()| self.do_start(id));
        Box::pin(async move { result })
    }

    fn kill<'a>(&'a self, id: &'a str, signal: i32) -> RuntimeFuture<'a, ()> {
        let result = self
            .begin(FakeOp::Kill, FakeCall::Kill { id: id.to_string(), signal })
            .and_then(|()| self.do_kill(id, signal));
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, id: &'a str, force: bool) -> RuntimeFuture<'a, ()> {
        let result = self
            .begin(FakeOp::Delete, FakeCall::Delete { id: id.to_string(), force })
            .and_then(|()| self.do_delete(id, force));
        Box::pin(async move { result })
    }

    fn state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<ContainerState>> {
        let result = self
            .begin(FakeOp::State, FakeCall::State { id: id.to_string() })
            .map(|()| self.lock().containers.get(id).cloned());
        Box::pin(async move { result })
    }

    fn list(&self) -> RuntimeFuture<'_, Vec<ContainerState>> {
        let result = self
            .begin(FakeOp::List, FakeCall::List)
            .map(|()| self.lock().containers.values().cloned().collect());
        Box::pin(async move { result })
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        _timeout: Duration,
    ) -> RuntimeFuture<'a, ExecOutput> {
        let result = self
            .begin(FakeOp::Exec, FakeCall::Exec { id: id.to_string(), args: args.to_vec() })
            .and_then(|()| {
                let inner = self.lock();
                match inner.containers.get(id) {
                    Some(c) if c.status == ContainerStatus::Running => {}
                    Some(_) => {
                        return Err(RuntimeError::InvalidRequest(format!("container {id} is not running")));
                    }
                    None => return Err(RuntimeError::NotFound { id: id.to_string() }),
                }
                let program = args.first().cloned().unwrap_or_default();
                Ok(inner
                    .exec_results
                    .get(&program)
                    .cloned()
                    .unwrap_or(ExecOutput { exit_code: Some(0), output: vec![] }))
            });
        Box::pin(async move { result })
    }

    fn subscribe_exits(&self) -> broadcast::Receiver<ContainerExit> {
        self.exits.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_the_real_state_rules() {
        let rt = FakeRuntime::new();
        let mut exits = rt.subscribe_exits();
        rt.create("a", Path::new("/b")).await.unwrap();
        assert!(matches!(rt.create("a", Path::new("/b")).await, Err(RuntimeError::InvalidRequest(_))));
        assert!(matches!(rt.start("zz").await, Err(RuntimeError::NotFound { .. })));
        rt.start("a").await.unwrap();
        assert!(matches!(rt.delete("a", false).await, Err(RuntimeError::InvalidRequest(_))));
        rt.exit("a", Some(3));
        let exit = exits.recv().await.unwrap();
        assert_eq!((exit.id.as_str(), exit.exit_code), ("a", Some(3)));
        assert_eq!(rt.state("a").await.unwrap().unwrap().status, ContainerStatus::Stopped);
        rt.delete("a", false).await.unwrap();
        assert!(rt.list().await.unwrap().is_empty());
        assert_eq!(rt.calls().len(), 8);
    }
}
