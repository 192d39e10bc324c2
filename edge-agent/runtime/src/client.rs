//! [`HelperRuntime`]: the agent's side of the runtime helper. It starts the helper on
//! first use, multiplexes requests over the helper's stdin/stdout by request id,
//! fans `Exited` notifications out to subscribers, and starts a fresh helper after the
//! old one died (which adopts the containers the old one left running).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared_proto::runtime::{RuntimeFailure, RuntimeMessage, RuntimeOp, RuntimeReply, RuntimeRequest};
use shared_proto::runtime::{decode_runtime_body, encode_runtime_frame};
use shared_proto::wire::read_raw_frame;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::{
    ContainerExit, ContainerRuntime, ContainerState, ExecOutput, HELPER_SUBCOMMAND, RuntimeError,
    RuntimeFuture, validate_container_id,
};

/// How [`HelperRuntime`] starts its helper and where containers keep their state.
#[derive(Debug, Clone)]
pub struct HelperConfig {
    /// Binary to run as `<helper_exe> runtime-helper --root <state_root>`. The default,
    /// `/proc/self/exe`, is the running agent itself, and still works after the agent's
    /// file was replaced by an upgrade.
    pub helper_exe: PathBuf,
    /// libcontainer's state directory (one sub-directory per container). Put it on
    /// tmpfs, e.g. `/run/flotilla/containers`: the state must not outlive a reboot (the
    /// processes do not), and every container start rewrites it several times, which
    /// costs milliseconds on flash or on a disk mounted with `discard`.
    pub state_root: PathBuf,
    /// Container output goes to `<log_dir>/<id>.log`.
    pub log_dir: PathBuf,
    /// A helper that does not answer within this long is wedged: it is killed (its
    /// containers keep running) and the next request starts a new one.
    pub request_timeout: Duration,
}

impl HelperConfig {
    pub fn new(state_root: impl Into<PathBuf>, log_dir: impl Into<PathBuf>) -> Self {
        HelperConfig {
            helper_exe: PathBuf::from("/proc/self/exe"),
            state_root: state_root.into(),
            log_dir: log_dir.into(),
            request_timeout: Duration::from_secs(60),
        }
    }

    pub fn with_helper_exe(mut self, exe: impl Into<PathBuf>) -> Self {
        self.helper_exe = exe.into();
        self
    }
}

type ReplyResult = Result<RuntimeReply, RuntimeFailure>;

/// Requests waiting for their reply from one helper process.
#[derive(Default)]
struct Pending {
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    waiting: HashMap<u64, oneshot::Sender<ReplyResult>>,
    /// Why this helper can no longer answer; set once.
    closed: Option<String>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, request_id: u64, tx: oneshot::Sender<ReplyResult>) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.closed {
            return Err(RuntimeError::Helper(reason.clone()));
        }
        inner.waiting.insert(request_id, tx);
        Ok(())
    }

    fn complete(&self, request_id: u64, result: ReplyResult) {
        if let Some(tx) = self.lock().waiting.remove(&request_id) {
            let _ = tx.send(result);
        }
    }

    /// Fails every waiting request: dropping their senders wakes them up.
    fn close(&self, reason: String) {
        let mut inner = self.lock();
        inner.closed.get_or_insert(reason);
        inner.waiting.clear();
    }

    fn closed_reason(&self) -> Option<String> {
        self.lock().closed.clone()
    }
}

/// One running helper process.
struct Session {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Pending>,
    kill: Arc<Notify>,
    pid: Option<u32>,
    /// Finishes once the helper has exited and been reaped.
    watcher: tokio::task::JoinHandle<()>,
}

/// Execs waiting for their process to end, by exec id.
type ExecWaiters = Mutex<HashMap<u64, oneshot::Sender<i32>>>;

struct Shared {
    config: HelperConfig,
    exits: broadcast::Sender<ContainerExit>,
    execs: Arc<ExecWaiters>,
    session: tokio::sync::Mutex<Option<Session>>,
    next_request_id: AtomicU64,
}

/// The real [`ContainerRuntime`]: containers run through libcontainer in a helper
/// process, never in the agent's own (multi-threaded) process.
///
/// Dropping it closes the helper's stdin; the helper then exits and leaves every
/// container running, exactly as when the agent is killed.
pub struct HelperRuntime {
    shared: Arc<Shared>,
}

impl HelperRuntime {
    /// The helper starts on the first request (or [`HelperRuntime::ensure_helper`]).
    pub fn new(config: HelperConfig) -> Self {
        HelperRuntime {
            shared: Arc::new(Shared {
                config,
                exits: broadcast::channel(256).0,
                execs: Arc::default(),
                session: tokio::sync::Mutex::new(None),
                next_request_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn config(&self) -> &HelperConfig {
        &self.shared.config
    }

    /// Where container `id`'s stdout and stderr go. Appended to across re-creations
    /// with the same id and left in place by `delete`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        let dir = &self.shared.config.log_dir;
        std::path::absolute(dir).unwrap_or_else(|_| dir.clone()).join(format!("{id}.log"))
    }

    /// Starts the helper now if none runs, so that containers left by a previous agent
    /// are adopted and their exits reported without waiting for a first request.
    pub async fn ensure_helper(&self) -> Result<(), RuntimeError> {
        self.session().await.map(|_| ())
    }

    /// Closes the helper's stdin and waits until it has exited; containers keep running.
    /// Requests made afterwards start a new helper.
    pub async fn shutdown(&self) {
        let session = self.shared.session.lock().await.take();
        if let Some(Session { frames, watcher, .. }) = session {
            drop(frames);
            let _ = watcher.await;
        }
    }

    /// Pid of the current helper process, if one runs.
    pub async fn helper_pid(&self) -> Option<u32> {
        let slot = self.shared.session.lock().await;
        slot.as_ref().filter(|s| s.pending.closed_reason().is_none()).and_then(|s| s.pid)
    }

    async fn session(
        &self,
    ) -> Result<(mpsc::UnboundedSender<Vec<u8>>, Arc<Pending>, Arc<Notify>), RuntimeError> {
        let mut slot = self.shared.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.pending.closed_reason().is_none()) {
            return Ok((s.frames.clone(), s.pending.clone(), s.kill.clone()));
        }
        if let Some(old) = slot.take() {
            // One helper per state root, ever: make sure the broken one is gone (and
            // reaped) before its successor starts adopting its containers.
            drop(old.frames);
            old.kill.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(5), old.watcher).await;
        }
        let s = self.spawn()?;
        let handles = (s.frames.clone(), s.pending.clone(), s.kill.clone());
        *slot = Some(s);
        Ok(handles)
    }

    fn spawn(&self) -> Result<Session, RuntimeError> {
        let config = &self.shared.config;
        let root = std::path::absolute(&config.state_root)
            .map_err(|e| RuntimeError::Helper(format!("state root {}: {e}", config.state_root.display())))?;
        let mut child = Command::new(&config.helper_exe)
            .arg(HELPER_SUBCOMMAND)
            .arg("--root")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C meant for the agent must not kill the
            // helper in the middle of an operation.
            .process_group(0)
            // libcontainer would hand systemd socket-activation fds to containers.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                RuntimeError::Helper(format!(
                    "starting {} {HELPER_SUBCOMMAND}: {e}",
                    config.helper_exe.display()
                ))
            })?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(RuntimeError::Helper("runtime helper pipes missing".into()));
        };
        let pending = Arc::new(Pending::default());
        let kill = Arc::new(Notify::new());
        let (frames, frames_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(stdin, frames_rx, pending.clone(), kill.clone()));
        let reader = tokio::spawn(read_messages(
            stdout,
            pending.clone(),
            self.shared.exits.clone(),
            self.shared.execs.clone(),
            kill.clone(),
        ));
        let watcher = tokio::spawn(watch_child(child, reader, pending.clone(), kill.clone()));
        Ok(Session { frames, pending, kill, pid, watcher })
    }

    async fn request(&self, id: Option<&str>, op: RuntimeOp) -> Result<RuntimeReply, RuntimeError> {
        if let Some(id) = id {
            validate_container_id(id)?;
        }
        let (frames, pending, kill) = self.session().await?;
        let request_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_runtime_frame(&RuntimeRequest { request_id, op })
            .map_err(|e| RuntimeError::InvalidRequest(format!("encoding request: {e}")))?;
        let (tx, rx) = oneshot::channel();
        pending.register(request_id, tx)?;
        // Whole frames go through one writer task, so a caller that gives up halfway
        // can never leave half a frame in the pipe.
        if frames.send(frame).is_err() {
            pending.close("runtime helper input closed".into());
        }
        match tokio::time::timeout(self.shared.config.request_timeout, rx).await {
            Ok(Ok(result)) => result.map_err(|f| RuntimeError::from_failure(id, f)),
            Ok(Err(_)) => Err(RuntimeError::Helper(
                pending.closed_reason().unwrap_or_else(|| "runtime helper went away".into()),
            )),
            Err(_) => {
                let reason = format!(
                    "runtime helper did not answer within {:?}; it was killed and will be restarted",
                    self.shared.config.request_timeout
                );
                pending.close(reason.clone());
                kill.notify_one();
                Err(RuntimeError::Helper(reason))
            }
        }
    }
}

async fn write_frames(
    mut stdin: ChildStdin,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Arc<Pending>,
    kill: Arc<Notify>,
) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = stdin.write_all(&frame).await {
            pending.close(format!("runtime helper is gone (writing its input: {e})"));
            kill.notify_one();
            return;
        }
    }
    // Every sender is gone (the runtime was dropped): dropping stdin lets the helper
    // see EOF and exit, leaving containers running.
}

async fn read_messages(
    mut stdout: ChildStdout,
    pending: Arc<Pending>,
    exits: broadcast::Sender<ContainerExit>,
    execs: Arc<ExecWaiters>,
    kill: Arc<Notify>,
) {
    loop {
        let frame = read_raw_frame(&mut stdout)
            .await
            .and_then(|f| f.map(|b| decode_runtime_body::<RuntimeMessage>(&b)).transpose());
        match frame {
            Ok(Some(RuntimeMessage::Reply { request_id, result })) => pending.complete(request_id, result),
            Ok(Some(RuntimeMessage::Exited { id, pid, exit_code })) => {
                // No subscriber is fine: nobody is waiting for exits right now.
                let _ = exits.send(ContainerExit { id, pid, exit_code });
            }
            Ok(Some(RuntimeMessage::ExecExited { exec_id, exit_code })) => {
                let waiter = execs.lock().unwrap_or_else(|e| e.into_inner()).remove(&exec_id);
                if let Some(tx) = waiter {
                    let _ = tx.send(exit_code);
                }
            }
            Ok(None) => {
                pending.close("runtime helper closed its output".into());
                return;
            }
            Err(e) => {
                // The stream is out of step; nothing after this can be trusted.
                pending.close(format!("runtime helper sent a malformed frame: {e}"));
                kill.notify_one();
                return;
            }
        }
    }
}

/// Reaps the helper and fails what still waits once it is gone. Output EOF alone is
/// not enough: a created-but-not-started container briefly holds a copy of the
/// helper's stdout.
async fn watch_child(
    mut child: Child,
    reader: tokio::task::JoinHandle<()>,
    pending: Arc<Pending>,
    kill: Arc<Notify>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        _ = kill.notified() => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    // Let the reader drain replies the helper wrote just before exiting.
    let mut reader = reader;
    if tokio::time::timeout(Duration::from_millis(200), &mut reader).await.is_err() {
        reader.abort();
    }
    let status = match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status: {e}"),
    };
    pending.close(format!("runtime helper exited ({status})"));
}

impl ContainerRuntime for HelperRuntime {
    fn create<'a>(&'a self, id: &'a str, bundle: &'a Path) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            let bundle = std::path::absolute(bundle).map_err(|e| {
                RuntimeError::InvalidRequest(format!("bundle path {}: {e}", bundle.display()))
            })?;
            let (Some(bundle), Some(log_path)) =
                (bundle.to_str().map(String::from), self.log_path(id).to_str().map(String::from))
            else {
                return Err(RuntimeError::InvalidRequest("bundle and log paths must be UTF-8".into()));
            };
            self.request(Some(id), RuntimeOp::Create { id: id.to_string(), bundle, log_path }).await?;
            Ok(())
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.request(Some(id), RuntimeOp::Start { id: id.to_string() }).await?;
            Ok(())
        })
    }

    fn kill<'a>(&'a self, id: &'a str, signal: i32) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.request(Some(id), RuntimeOp::Kill { id: id.to_string(), signal }).await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, id: &'a str, force: bool) -> RuntimeFuture<'a, ()> {
        Box::pin(async move {
            self.request(Some(id), RuntimeOp::Delete { id: id.to_string(), force }).await?;
            Ok(())
        })
    }

    fn state<'a>(&'a self, id: &'a str) -> RuntimeFuture<'a, Option<ContainerState>> {
        Box::pin(async move {
            match self.request(Some(id), RuntimeOp::State { id: id.to_string() }).await {
                Ok(RuntimeReply::State(s)) => Ok(Some(s.into())),
                Ok(other) => Err(unexpected(other)),
                Err(RuntimeError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn list(&self) -> RuntimeFuture<'_, Vec<ContainerState>> {
        Box::pin(async move {
            match self.request(None, RuntimeOp::List).await? {
                RuntimeReply::List(states) => Ok(states.into_iter().map(Into::into).collect()),
                other => Err(unexpected(other)),
            }
        })
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        timeout: Duration,
    ) -> RuntimeFuture<'a, ExecOutput> {
        Box::pin(async move {
            let exec_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
            let root = std::path::absolute(&self.shared.config.state_root)
                .map_err(|e| RuntimeError::Helper(format!("state root: {e}")))?;
            // A file, not a directory: the helper lists directories as containers.
            let output_path = root.join(format!(".exec-{exec_id}.out"));
            let (tx, rx) = oneshot::channel();
            self.shared.execs.lock().unwrap_or_else(|e| e.into_inner()).insert(exec_id, tx);
            let op = RuntimeOp::Exec {
                id: id.to_string(),
                exec_id,
                args: args.to_vec(),
                output_path: output_path.to_string_lossy().into_owned(),
            };
            let forget = || self.shared.execs.lock().unwrap_or_else(|e| e.into_inner()).remove(&exec_id);
            if let Err(e) = self.request(Some(id), op).await {
                forget();
                let _ = std::fs::remove_file(&output_path);
                return Err(e);
            }
            let exit_code = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(code)) => Some(code),
                Ok(Err(_)) => None,
                Err(_) => {
                    forget();
                    let _ = self.request(None, RuntimeOp::KillExec { exec_id }).await;
                    None
                }
            };
            let output = tokio::task::spawn_blocking(move || {
                let out = read_tail(&output_path, crate::MAX_EXEC_OUTPUT);
                let _ = std::fs::remove_file(&output_path);
                out
            })
            .await
            .unwrap_or_default();
            Ok(ExecOutput { exit_code, output })
        })
    }

    fn exec_with<'a>(
        &'a self,
        id: &'a str,
        args: &'a [String],
        io: shared_proto::runtime::ExecIo,
    ) -> RuntimeFuture<'a, crate::AttachedExec> {
        Box::pin(async move {
            let exec_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.shared.execs.lock().unwrap_or_else(|e| e.into_inner()).insert(exec_id, tx);
            let op = RuntimeOp::ExecWith { id: id.to_string(), exec_id, args: args.to_vec(), io };
            if let Err(e) = self.request(Some(id), op).await {
                self.shared.execs.lock().unwrap_or_else(|e| e.into_inner()).remove(&exec_id);
                return Err(e);
            }
            Ok(crate::AttachedExec { exec_id, exited: rx })
        })
    }

    fn kill_exec(&self, exec_id: u64) -> RuntimeFuture<'_, ()> {
        Box::pin(async move { self.request(None, RuntimeOp::KillExec { exec_id }).await.map(drop) })
    }

    fn subscribe_exits(&self) -> broadcast::Receiver<ContainerExit> {
        self.shared.exits.subscribe()
    }
}

/// The last `max` bytes of a file (empty when it cannot be read).
fn read_tail(path: &Path, max: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return vec![] };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max as u64)));
    let mut buf = Vec::with_capacity(max.min(len as usize));
    let _ = f.take(max as u64).read_to_end(&mut buf);
    buf
}

fn unexpected(reply: RuntimeReply) -> RuntimeError {
    RuntimeError::Helper(format!("runtime helper answered with the wrong reply kind: {reply:?}"))
}
