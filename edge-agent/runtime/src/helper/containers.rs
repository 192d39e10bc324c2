//! The helper's container table: every request is carried out here through libcontainer,
//! and every container init process is watched here, whether the helper created it (its
//! child: reaped, exit code known) or found it at start-up (adopted: watched through a
//! pidfd, exit code unknown).
//!
//! libcontainer identifies a container's process by pid alone, and a pid is reused once
//! its process has been reaped. So the table keeps a pidfd for every live init process
//! and records the process's start time next to libcontainer's state
//! (`<root>/<id>/flotilla-init`); a pid whose start time does not match is a stranger,
//! and the container is reported stopped rather than signalled.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use libcontainer::config::YoukiConfig;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus as LcStatus};
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::PollTimeout;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use shared_proto::Timestamp;
use shared_proto::runtime::{
    RuntimeContainerState, RuntimeFailure, RuntimeFailureKind, RuntimeMessage, RuntimeOp, RuntimeReply,
    RuntimeStatus,
};

use super::cgroups;
use super::sys;

/// Written next to libcontainer's `state.json`; removed with the container directory.
const INIT_RECORD: &str = "flotilla-init";
/// How long a forced delete waits for a SIGKILLed init to die before going on anyway.
const KILL_WAIT_MS: u16 = 10_000;

/// One container's init process as the helper sees it.
struct Tracked {
    pid: i32,
    /// Present while the process lives.
    pidfd: Option<OwnedFd>,
    /// Our own child: `waitpid` gives its exit status.
    child: bool,
}

impl Tracked {
    fn ended(pid: i32) -> Self {
        Tracked { pid, pidfd: None, child: false }
    }

    fn alive(&self) -> bool {
        self.pidfd.is_some()
    }
}

pub(super) struct Containers {
    root: PathBuf,
    tracked: HashMap<String, Tracked>,
    /// Pid → id, for the children whose exits `waitpid` reports.
    children: HashMap<i32, String>,
    /// Processes started by `Exec`: pid → exec id, and exec id → pidfd to kill it by.
    execs: HashMap<i32, u64>,
    exec_fds: HashMap<u64, OwnedFd>,
    own_pid: i32,
}

type OpResult = Result<RuntimeReply, RuntimeFailure>;

fn failure(kind: RuntimeFailureKind, message: impl Into<String>) -> RuntimeFailure {
    RuntimeFailure { kind, message: message.into() }
}

fn invalid(message: impl Into<String>) -> RuntimeFailure {
    failure(RuntimeFailureKind::InvalidRequest, message)
}

fn failed(message: impl Into<String>) -> RuntimeFailure {
    failure(RuntimeFailureKind::Failed, message)
}

fn not_found(id: &str) -> RuntimeFailure {
    failure(RuntimeFailureKind::NotFound, format!("container {id} not found"))
}

/// An error and all its causes on one line; libcontainer's own messages are terse
/// ("io error") and only the chain says what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Keeps "the caller asked for something impossible" apart from "this node failed".
fn classify(e: &LibcontainerError) -> RuntimeFailureKind {
    use LibcontainerError as E;
    match e {
        E::IncorrectStatus(_)
        | E::Exist
        | E::InvalidInput(_)
        | E::InvalidID(_)
        | E::MissingSpec(_)
        | E::InvalidSpec(_)
        | E::Spec(_)
        | E::NoDirectory => RuntimeFailureKind::InvalidRequest,
        _ => {
            // The init process checks the executable and reports back only a string,
            // wrapped in libcontainer's private CreateContainerError.
            let text = chain(e);
            if text.contains("not found in $PATH") || text.contains("does not have correct permissions") {
                RuntimeFailureKind::InvalidRequest
            } else {
                RuntimeFailureKind::Failed
            }
        }
    }
}

fn lc_failure(what: &str, e: &LibcontainerError) -> RuntimeFailure {
    failure(classify(e), format!("{what}: {}", chain(e)))
}

fn exit_code(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

impl Containers {
    pub(super) fn new(root: PathBuf) -> Self {
        Containers {
            root,
            tracked: HashMap::new(),
            children: HashMap::new(),
            execs: HashMap::new(),
            exec_fds: HashMap::new(),
            own_pid: std::process::id() as i32,
        }
    }

    /// Starts watching every container already under the root (left by a helper that
    /// died), so their exits are reported even if nobody asks about them.
    pub(super) fn adopt_existing(&mut self) {
        for id in self.ids() {
            if let Ok(container) = Container::load(self.root.join(&id)) {
                self.track(&id, &container);
            }
        }
    }

    /// Pidfds of live init processes and of running execs, to poll alongside the
    /// request pipe: an exec's end is reported the moment it happens (a probe waits
    /// for it), not at the next sweep.
    pub(super) fn watched(&self) -> Vec<BorrowedFd<'_>> {
        self.tracked
            .values()
            .filter_map(|t| t.pidfd.as_ref().map(|fd| fd.as_fd()))
            .chain(self.exec_fds.values().map(|fd| fd.as_fd()))
            .collect()
    }

    /// Collects the exits that happened since the last call: reaps our children
    /// (and any orphan that the subreaper flag handed us) and checks adopted pidfds.
    /// Runs only between operations, never while libcontainer waits for its own
    /// processes.
    pub(super) fn collect_exits(&mut self, out: &mut Vec<RuntimeMessage>) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if let Some((pid, code)) = exit_code(status)
                        && let Some(exec_id) = self.execs.remove(&pid)
                    {
                        self.exec_fds.remove(&exec_id);
                        out.push(RuntimeMessage::ExecExited { exec_id, exit_code: code });
                    } else if let Some((pid, code)) = exit_code(status)
                        && let Some(id) = self.children.remove(&pid)
                    {
                        if let Some(t) = self.tracked.get_mut(&id) {
                            t.pidfd = None;
                        }
                        out.push(RuntimeMessage::Exited { id, pid, exit_code: Some(code) });
                    }
                }
            }
        }
        for (id, t) in &mut self.tracked {
            if t.child {
                continue;
            }
            let ended = match &t.pidfd {
                Some(fd) => sys::pidfd_exited(fd.as_fd(), PollTimeout::ZERO).unwrap_or(true),
                None => false,
            };
            if ended {
                t.pidfd = None;
                out.push(RuntimeMessage::Exited { id: id.clone(), pid: t.pid, exit_code: None });
            }
        }
    }

    pub(super) fn handle(&mut self, op: RuntimeOp, out: &mut Vec<RuntimeMessage>) -> OpResult {
        match op {
            RuntimeOp::Create { id, bundle, log_path } => {
                self.create(&id, Path::new(&bundle), Path::new(&log_path))
            }
            RuntimeOp::Start { id } => self.start(&id),
            RuntimeOp::Kill { id, signal } => self.kill(&id, signal),
            RuntimeOp::Delete { id, force } => self.delete(&id, force, out),
            RuntimeOp::Exec { id, exec_id, args, output_path } => {
                self.exec(&id, exec_id, args, Path::new(&output_path))
            }
            RuntimeOp::ExecWith { id, exec_id, args, io } => self.exec_with(&id, exec_id, args, &io),
            RuntimeOp::KillExec { exec_id } => {
                if let Some(fd) = self.exec_fds.get(&exec_id) {
                    let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                }
                Ok(RuntimeReply::Done)
            }
            RuntimeOp::State { id } => {
                let container = self.load(&id)?;
                Ok(RuntimeReply::State(self.describe(&id, &container)))
            }
            RuntimeOp::List => {
                let mut states = Vec::new();
                for id in self.ids() {
                    match Container::load(self.root.join(&id)) {
                        Ok(container) => states.push(self.describe(&id, &container)),
                        // A directory without readable state (a create interrupted by a
                        // crash) is still listed, as stopped, so the agent deletes it.
                        Err(_) => states.push(RuntimeContainerState {
                            id,
                            status: RuntimeStatus::Stopped,
                            pid: None,
                            bundle: String::new(),
                            created_at: None,
                        }),
                    }
                }
                Ok(RuntimeReply::List(states))
            }
        }
    }

    fn ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Vec::new() };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| crate::validate_container_id(id).is_ok())
            .collect();
        ids.sort();
        ids
    }

    fn check_id(id: &str) -> Result<(), RuntimeFailure> {
        crate::validate_container_id(id).map_err(|e| invalid(e.to_string()))
    }

    fn load(&mut self, id: &str) -> Result<Container, RuntimeFailure> {
        Self::check_id(id)?;
        let dir = self.root.join(id);
        if !dir.is_dir() {
            self.forget(id);
            return Err(not_found(id));
        }
        let container =
            Container::load(dir).map_err(|e| lc_failure(&format!("loading container {id}"), &e))?;
        self.track(id, &container);
        Ok(container)
    }

    fn forget(&mut self, id: &str) {
        if let Some(t) = self.tracked.remove(id) {
            self.children.remove(&t.pid);
        }
    }

    /// Makes sure `id` is in the table, adopting its process if it still runs and
    /// really is the process libcontainer started.
    fn track(&mut self, id: &str, container: &Container) {
        if self.tracked.contains_key(id) {
            return;
        }
        let Some(pid) = container.pid().map(|p| p.as_raw()) else {
            self.tracked.insert(id.to_string(), Tracked::ended(0));
            return;
        };
        let tracked = match Self::adopt(&self.root.join(id), container, pid) {
            Some((pidfd, stat)) => {
                let child = stat.ppid == self.own_pid;
                if child {
                    self.children.insert(pid, id.to_string());
                }
                Tracked { pid, pidfd: Some(pidfd), child }
            }
            None => Tracked::ended(pid),
        };
        self.tracked.insert(id.to_string(), tracked);
    }

    fn adopt(dir: &Path, container: &Container, pid: i32) -> Option<(OwnedFd, sys::ProcStat)> {
        // Open the pidfd first: if the start time read afterwards matches, the pidfd
        // refers to the right process even if the pid is recycled later.
        let pidfd = sys::pidfd_open(pid).ok()?;
        let stat = sys::proc_stat(pid).ok()?;
        if stat.has_ended() {
            return None;
        }
        let same = match fs::read_to_string(dir.join(INIT_RECORD)) {
            Ok(text) => parse_init_record(&text) == Some((pid, stat.start_ticks)),
            // No record: the helper died between libcontainer's create and writing it.
            // Accept a process that started around the container's creation time.
            Err(_) => container
                .created()
                .is_some_and(|created| started_near(stat.start_ticks, created.timestamp()).unwrap_or(false)),
        };
        same.then_some((pidfd, stat))
    }

    fn describe(&self, id: &str, container: &Container) -> RuntimeContainerState {
        let alive = self.tracked.get(id).is_some_and(Tracked::alive);
        let status = match container.status() {
            _ if !alive => RuntimeStatus::Stopped,
            LcStatus::Creating => RuntimeStatus::Creating,
            LcStatus::Created => RuntimeStatus::Created,
            LcStatus::Running => RuntimeStatus::Running,
            LcStatus::Paused => RuntimeStatus::Paused,
            LcStatus::Stopped => RuntimeStatus::Stopped,
        };
        RuntimeContainerState {
            id: id.to_string(),
            status,
            pid: if status == RuntimeStatus::Stopped { None } else { container.pid().map(|p| p.as_raw()) },
            bundle: container.bundle().to_string_lossy().into_owned(),
            created_at: container.created().map(|c| Timestamp(c.timestamp_millis().max(0) as u64)),
        }
    }

    fn create(&mut self, id: &str, bundle: &Path, log_path: &Path) -> OpResult {
        Self::check_id(id)?;
        let dir = self.root.join(id);
        if dir.exists() {
            return Err(invalid(format!("container {id} already exists")));
        }
        self.forget(id);
        if !bundle.join("config.json").is_file() {
            return Err(invalid(format!("bundle {} has no config.json", bundle.display())));
        }
        let (stdin, stdout, stderr) = open_stdio(log_path)
            .map_err(|e| failed(format!("opening log file {}: {e}", log_path.display())))?;

        let built = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.root)
            .and_then(|b| b.validate_id())
            .map(|b| b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr))
            .and_then(|b| b.as_init(bundle).with_systemd(false).with_detach(true).build());
        let container = match built {
            Ok(c) => c,
            Err(e) => {
                self.remove_leftovers(id);
                return Err(lc_failure(&format!("creating container {id} from {}", bundle.display()), &e));
            }
        };
        match self.watch_new(id, &container) {
            Ok(()) => Ok(RuntimeReply::Done),
            Err(message) => {
                // Never leave a half-set-up container behind: kill it and remove it.
                if let Some(t) = self.tracked.get(id)
                    && let Some(fd) = &t.pidfd
                {
                    let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                }
                self.remove_leftovers(id);
                Err(failed(format!("setting up container {id}: {message}")))
            }
        }
    }

    /// Records a freshly created init process: pidfd, start time, loopback.
    fn watch_new(&mut self, id: &str, container: &Container) -> Result<(), String> {
        let pid = container.pid().ok_or("libcontainer reported no init pid")?.as_raw();
        // Our unreaped child: the pid cannot have been recycled yet.
        let pidfd = sys::pidfd_open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        self.children.insert(pid, id.to_string());
        self.tracked.insert(id.to_string(), Tracked { pid, pidfd: Some(pidfd), child: true });
        let stat = sys::proc_stat(pid).map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
        fs::write(self.root.join(id).join(INIT_RECORD), format!("{pid} {}\n", stat.start_ticks))
            .map_err(|e| format!("writing {INIT_RECORD}: {e}"))?;
        sys::bring_up_loopback(pid).map_err(|e| format!("bringing up loopback: {e}"))?;
        Ok(())
    }

    /// After a failed create: whatever libcontainer left (it cleans up most failures,
    /// but not all, e.g. a missing rootfs) goes, cgroup included when it can be found.
    fn remove_leftovers(&mut self, id: &str) {
        self.forget(id);
        let dir = self.root.join(id);
        if !dir.exists() {
            return;
        }
        if let Ok(mut c) = Container::load(dir.clone()) {
            let _ = c.delete(true);
        }
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
    }

    fn start(&mut self, id: &str) -> OpResult {
        let mut container = self.load(id)?;
        if !self.tracked.get(id).is_some_and(Tracked::alive) {
            return Err(invalid(format!("container {id} has stopped; delete it and create it again")));
        }
        container.start().map_err(|e| lc_failure(&format!("starting container {id}"), &e))?;
        Ok(RuntimeReply::Done)
    }

    /// Starts a process in a running container (libcontainer's tenant: the container's
    /// namespaces, cgroup, user, capabilities and seccomp) and returns at once; the
    /// helper, as subreaper, reaps it and reports `ExecExited`.
    /// Runs `args` in the container with stdout and stderr to `output_path` and stdin
    /// from `/dev/null` (probes, hooks): `exec_with` without the operator's stdio.
    fn exec(&mut self, id: &str, exec_id: u64, args: Vec<String>, output_path: &Path) -> OpResult {
        let io = shared_proto::runtime::ExecIo {
            output_path: output_path.to_string_lossy().into_owned(),
            stdin_path: None,
            tty: None,
        };
        self.exec_with(id, exec_id, args, &io)
    }

    /// `exec` with the operator's stdio: stdin from a FIFO (the agent holds it open for
    /// writing, so opening it here does not block), and on a terminal the container's
    /// own process settings (environment, user, capabilities, directory) with these
    /// arguments, the terminal's master end going to the agent's console socket.
    fn exec_with(
        &mut self,
        id: &str,
        exec_id: u64,
        args: Vec<String>,
        io: &shared_proto::runtime::ExecIo,
    ) -> OpResult {
        let container = self.load(id)?;
        if !self.tracked.get(id).is_some_and(Tracked::alive) {
            return Err(invalid(format!("container {id} is not running")));
        }
        if args.first().is_none_or(|a| a.is_empty()) {
            return Err(invalid("exec needs a program"));
        }
        let output_path = Path::new(&io.output_path);
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(output_path)
            .map_err(|e| failed(format!("opening {}: {e}", output_path.display())))?;
        let err = out.try_clone().map_err(|e| failed(format!("duplicating the output: {e}")))?;
        let stdin = match &io.stdin_path {
            Some(p) => OpenOptions::new().read(true).open(p),
            None => File::open("/dev/null"),
        }
        .map_err(|e| failed(format!("opening the exec's input: {e}")))?;
        let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.root)
            .map(|b| b.with_stdin(stdin).with_stdout(out).with_stderr(err))
            .map_err(|e| lc_failure(&format!("running a process in container {id}"), &e))?;
        let tenant = match &io.tty {
            Some(tty) => {
                builder = builder.with_console_socket(Some(&tty.console_socket));
                let config = container.bundle().join("config.json");
                let spec = oci_spec::runtime::Spec::load(&config)
                    .map_err(|e| failed(format!("reading {}: {e}", config.display())))?;
                let mut process = spec.process().clone().unwrap_or_default();
                process.set_args(Some(args));
                process.set_terminal(Some(true));
                let size = oci_spec::runtime::BoxBuilder::default()
                    .width(u64::from(tty.cols.max(1)))
                    .height(u64::from(tty.rows.max(1)))
                    .build()
                    .map_err(|e| failed(format!("terminal size: {e}")))?;
                process.set_console_size(Some(size));
                let path = self.root.join(format!(".exec-{exec_id}.process.json"));
                let json = serde_json::to_vec(&process).map_err(|e| failed(format!("process.json: {e}")))?;
                fs::write(&path, json).map_err(|e| failed(format!("writing {}: {e}", path.display())))?;
                let built = builder.as_tenant().with_process(Some(&path)).with_detach(true).build();
                let _ = fs::remove_file(&path);
                built
            }
            None => builder.as_tenant().with_container_args(args).with_detach(true).build(),
        };
        let pid =
            tenant.map_err(|e| lc_failure(&format!("running a process in container {id}"), &e))?.as_raw();
        self.execs.insert(pid, exec_id);
        if let Ok(fd) = sys::pidfd_open(pid) {
            self.exec_fds.insert(exec_id, fd);
        }
        Ok(RuntimeReply::Done)
    }

    fn kill(&mut self, id: &str, signal: i32) -> OpResult {
        self.load(id)?;
        let fd = self
            .tracked
            .get(id)
            .and_then(|t| t.pidfd.as_ref())
            .ok_or_else(|| invalid(format!("container {id} is not running")))?;
        // Through the pidfd, never by pid: the signal cannot hit a recycled pid.
        sys::pidfd_send_signal(fd.as_fd(), signal).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => invalid(format!("container {id} is not running")),
            Some(libc::EINVAL) => invalid(format!("invalid signal {signal}")),
            _ => failed(format!("signalling container {id}: {e}")),
        })?;
        Ok(RuntimeReply::Done)
    }

    fn delete(&mut self, id: &str, force: bool, out: &mut Vec<RuntimeMessage>) -> OpResult {
        Self::check_id(id)?;
        let dir = self.root.join(id);
        let mut container = match self.load(id) {
            Ok(c) => Some(c),
            Err(f) if f.kind == RuntimeFailureKind::NotFound => return Err(f),
            // Unreadable state (interrupted create): only the directory can go.
            Err(_) => None,
        };
        if self.tracked.get(id).is_some_and(Tracked::alive) {
            if !force {
                return Err(invalid(format!(
                    "container {id} is running: stop it first, or delete it with force"
                )));
            }
            self.kill_and_wait(id, out);
        }
        if let Some(c) = container.as_mut()
            && !remove_stopped(&dir, c)
        {
            // The init is gone (or never ran), so force only reaches what is left in
            // the container's cgroup; it also covers libcontainer mistaking a recycled
            // pid for the container.
            c.delete(true).map_err(|e| lc_failure(&format!("deleting container {id}"), &e))?;
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| failed(format!("removing {}: {e}", dir.display())))?;
        }
        self.forget(id);
        Ok(RuntimeReply::Done)
    }

    /// SIGKILLs a live init and waits for it, so the delete that follows finds a
    /// stopped container and the exit is reported like any other.
    fn kill_and_wait(&mut self, id: &str, out: &mut Vec<RuntimeMessage>) {
        let Some(t) = self.tracked.get_mut(id) else { return };
        let Some(fd) = &t.pidfd else { return };
        let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
        let ended = sys::pidfd_exited(fd.as_fd(), PollTimeout::from(KILL_WAIT_MS)).unwrap_or(false);
        if !ended {
            return;
        }
        let pid = t.pid;
        t.pidfd = None;
        let exit_code = if t.child {
            self.children.remove(&pid);
            waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)).ok().and_then(exit_code).map(|(_, c)| c)
        } else {
            None
        };
        out.push(RuntimeMessage::Exited { id: id.to_string(), pid, exit_code });
    }
}

/// The common case of delete, done directly: a container whose processes are all gone
/// and that uses nothing but cgroups (no hooks, no systemd, no RDT) only needs its
/// empty cgroup directories removed. `false` sends the caller to libcontainer's full
/// delete, which also kills what is left.
fn remove_stopped(dir: &Path, container: &Container) -> bool {
    if container.systemd() || container.intel_rdt_dir().is_some() {
        return false;
    }
    match YoukiConfig::load(dir) {
        Ok(config) if config.hooks.is_none() => {
            matches!(cgroups::remove_container_cgroups(&config.cgroup_path), Ok(true))
        }
        _ => false,
    }
}

fn open_stdio(log_path: &Path) -> io::Result<(File, File, File)> {
    if let Some(parent) = log_path.parent() {
        fs::DirBuilder::new().recursive(true).mode(0o750).create(parent)?;
    }
    let log = OpenOptions::new().create(true).append(true).mode(0o640).open(log_path)?;
    let stdin = File::open("/dev/null")?;
    Ok((stdin, log.try_clone()?, log))
}

fn parse_init_record(text: &str) -> Option<(i32, u64)> {
    let mut parts = text.split_whitespace();
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether a process that started `start_ticks` after boot started within a minute
/// before (or a moment after) `created_secs`, libcontainer's creation timestamp.
fn started_near(start_ticks: u64, created_secs: i64) -> io::Result<bool> {
    let started = sys::boot_time_secs()? as i64 + (start_ticks / sys::clock_ticks_per_sec()) as i64;
    Ok(started <= created_secs + 2 && started + 60 >= created_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_record_round_trip() {
        assert_eq!(parse_init_record("42 123456\n"), Some((42, 123456)));
        assert_eq!(parse_init_record("42"), None);
        assert_eq!(parse_init_record("x 1"), None);
    }

    #[test]
    fn chain_joins_causes_without_repeats() {
        let io = io::Error::new(io::ErrorKind::NotFound, "no such file");
        let e = LibcontainerError::OtherIO(io);
        assert_eq!(chain(&e), "io error: no such file");
        assert_eq!(classify(&e), RuntimeFailureKind::Failed);
        assert_eq!(classify(&LibcontainerError::Exist), RuntimeFailureKind::InvalidRequest);
    }
}
