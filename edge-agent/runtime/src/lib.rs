//! The agent's container runtime: everything between "run this container" and the
//! kernel.
//!
//! - [`ContainerRuntime`] is the narrow async interface the agent's reconcile loop
//!   drives. [`HelperRuntime`] is the real implementation; [`FakeRuntime`] records calls
//!   for unit tests.
//! - [`HelperRuntime`] never forks the agent's tokio process for a container: it spawns a
//!   helper process (the agent binary re-executed as `runtime-helper`, entering
//!   [`helper_main`]) and talks to it with `shared_proto::runtime` frames over pipes.
//!   The helper is single-threaded, drives libcontainer, is the parent of every
//!   container it creates and reports their exits. If the agent dies, the helper sees
//!   EOF and exits, leaving containers running; the next helper adopts them.
//! - [`bundle`] writes a container's OCI bundle (`config.json`) from the desired state,
//!   [`rootfs`] gives each container a writable overlay over its image's read-only
//!   root, and [`stop`] is the SIGTERM → grace → SIGKILL → delete sequence;
//!   [`seccomp`] is the default seccomp profile every unprivileged container gets;
//!   [`capabilities`] decides a container's capabilities, never more than the agent holds.
//!
//! Container output goes to one log file per container, `<log_dir>/<id>.log`
//! ([`HelperConfig::log_dir`]); the runtime appends and never removes it, so an exited
//! container's output outlives `delete`. Removing or rotating logs is the caller's job.

pub mod bundle;
pub mod capabilities;
mod client;
mod fake;
mod helper;
pub mod pod;
pub mod rootfs;
pub mod seccomp;
mod stop;
pub mod userns;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use shared_proto::Timestamp;
use shared_proto::runtime::{RuntimeContainerState, RuntimeFailure, RuntimeFailureKind, RuntimeStatus};

pub use client::{HelperConfig, HelperRuntime};
pub use fake::{FakeCall, FakeOp, FakeRuntime};
pub use helper::{HELPER_SUBCOMMAND, helper_main};
pub use stop::{stop, terminate};
pub use userns::{POD_HOLDER_SUBCOMMAND, pod_holder_main};

/// What every [`ContainerRuntime`] method returns: a boxed future, so the trait stays
/// object-safe (`Arc<dyn ContainerRuntime>`) without an async-trait macro.
pub type RuntimeFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RuntimeError>> + Send + 'a>>;

/// The container operations the agent needs, in OCI runtime terms.
pub trait ContainerRuntime: Send + Sync {
    /// Creates container `id` from the OCI bundle directory `bundle`; it does not run yet.
    fn create<'a>(&'a self, id: &'a str, bundle: &'a Path) -> RuntimeFuture<'a, ()>;
    /// Runs the process of a created container.
    fn start<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()>;
    /// Sends `signal` to the container's init process.
    fn kill<'a>(&'a self, id: &'a str, signal: i32) -> RuntimeFuture<'a, ()>;
    /// Removes a stopped container (with `force`, kills a live one first).
    fn delete<'a>(&'a self, id: &'a str, force: bool) -> RuntimeFuture<'a, ()>;
    /// `None` when no container has that id.
    fn state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<ContainerState>>;
    fn list(&self) -> RuntimeFuture<'_, Vec<ContainerState>>;
    /// Runs `args` inside running container `id` and waits for it, at most `timeout`
    /// (then it is killed and `exit_code` is `None`).
    fn exec<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: Duration,
    ) -> RuntimeFuture<'a, ExecOutput>;
    /// Starts `args` in running container `id` with the operator's stdio (`io`) and
    /// returns at once: `exited` yields its status. It runs until it ends or
    /// [`ContainerRuntime::kill_exec`]. Runtimes without it refuse.
    fn exec_with<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        io: shared_proto::runtime::ExecIo,
    ) -> RuntimeFuture<'a, AttachedExec> {
        let _ = (id, args, io);
        Box::pin(async {
            Err(RuntimeError::InvalidRequest("this runtime cannot attach to a process".into()))
        })
    }
    /// SIGKILLs a process started by `exec_with` that still runs.
    fn kill_exec(&self, exec_id: u64) -> RuntimeFuture<'_, ()> {
        let _ = exec_id;
        Box::pin(async { Ok(()) })
    }
    /// Exit notifications. Exits of containers that are not the helper's children
    /// (adopted after an agent restart) are still reported, with `None` for the code.
    fn subscribe_exits(&self) -> tokio::sync::broadcast::Receiver<ContainerExit>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub status: ContainerStatus,
    /// Host pid of the init process while it lives.
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    pub created_at: Option<Timestamp>,
}

/// Most output [`ContainerRuntime::exec`] returns: the end of what the process wrote.
pub const MAX_EXEC_OUTPUT: usize = 4096;

/// What a process run with [`ContainerRuntime::exec`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status or 128 + signal; `None` when it ran out of time and was killed.
    pub exit_code: Option<i32>,
    /// The last [`MAX_EXEC_OUTPUT`] bytes of its stdout and stderr, interleaved.
    pub output: Vec<u8>,
}

/// A process started with [`ContainerRuntime::exec_with`].
#[derive(Debug)]
pub struct AttachedExec {
    pub exec_id: u64,
    /// Its exit status, or 128 + signal; closed if the helper went away.
    pub exited: tokio::sync::oneshot::Receiver<i32>,
}

/// A container's init process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerExit {
    pub id: String,
    pub pid: i32,
    /// Exit status, or 128 + signal number; `None` when the process was adopted (not the
    /// helper's child), so its status could not be collected.
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {id} not found")]
    NotFound { id: String },
    /// The request cannot succeed as asked (bad id or bundle, wrong container state).
    #[error("invalid container request: {0}")]
    InvalidRequest(String),
    /// The request was valid but the node failed to carry it out.
    #[error("container operation failed: {0}")]
    Failed(String),
    /// The helper process is broken or gone; the next request starts a new one.
    #[error("container runtime helper unavailable: {0}")]
    Helper(String),
}

impl RuntimeError {
    pub(crate) fn from_failure(id: Option<&str>, failure: RuntimeFailure) -> Self {
        match failure.kind {
            RuntimeFailureKind::NotFound => RuntimeError::NotFound { id: id.unwrap_or_default().to_string() },
            RuntimeFailureKind::InvalidRequest => RuntimeError::InvalidRequest(failure.message),
            RuntimeFailureKind::Failed => RuntimeError::Failed(failure.message),
        }
    }
}

impl From<RuntimeStatus> for ContainerStatus {
    fn from(s: RuntimeStatus) -> Self {
        match s {
            RuntimeStatus::Creating => ContainerStatus::Creating,
            RuntimeStatus::Created => ContainerStatus::Created,
            RuntimeStatus::Running => ContainerStatus::Running,
            RuntimeStatus::Paused => ContainerStatus::Paused,
            RuntimeStatus::Stopped => ContainerStatus::Stopped,
        }
    }
}

impl From<RuntimeContainerState> for ContainerState {
    fn from(s: RuntimeContainerState) -> Self {
        ContainerState {
            id: s.id,
            status: s.status.into(),
            pid: s.pid,
            bundle: PathBuf::from(s.bundle),
            created_at: s.created_at,
        }
    }
}

/// Container ids become directory and cgroup names: the same rule as libcontainer's,
/// checked on both sides of the pipe so a bad id is an invalid request, never a path.
pub fn validate_container_id(id: &str) -> Result<(), RuntimeError> {
    let ok_chars = id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if id.is_empty() || id == "." || id == ".." || !ok_chars || id.len() > 128 {
        return Err(RuntimeError::InvalidRequest(format!(
            "container id {id:?} must be 1-128 characters of a-z, A-Z, 0-9, '_', '+', '-', '.'"
        )));
    }
    Ok(())
}
