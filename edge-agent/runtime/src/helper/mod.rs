//! The runtime helper process: `flotilla-agent runtime-helper --root <dir>`.
//!
//! It is single-threaded whenever it forks and has no async runtime, because libcontainer
//! forks and clones and must not do so from a multi-threaded process (its one extra
//! thread, compiling the usual seccomp profile at start, is joined before the first
//! request that may fork: see `may_fork`). It reads
//! [`shared_proto::runtime::RuntimeRequest`] frames on stdin, serves them one at a time,
//! and writes replies and `Exited` notifications on stdout. Between requests it sleeps in
//! `poll(2)` on stdin and on a pidfd per live container.
//!
//! It is a child subreaper and the parent of every container init it creates (youki
//! clones the init as a sibling of its intermediate process, i.e. as our child), so it
//! collects their exit codes. When stdin reaches EOF (the agent exited or was killed) it
//! exits at once and leaves every container running; the next helper adopts them.

mod cgroups;
mod containers;
pub(crate) mod sys;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::fcntl::{FcntlArg, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction, sigprocmask};
use shared_proto::runtime::{RuntimeMessage, RuntimeOp, RuntimeRequest};
use shared_proto::runtime::{decode_runtime_body, encode_runtime_frame};
use shared_proto::wire::{FrameError, frame_body_len};

use containers::Containers;

/// The first argument that makes the agent binary act as the runtime helper.
pub const HELPER_SUBCOMMAND: &str = "runtime-helper";

/// Orphans handed to us as subreaper (processes of a container without its own pid
/// namespace, remains of a failed create) do not wake us; sweep for them this often.
const SWEEP_INTERVAL_MS: u16 = 5_000;

#[derive(Debug, thiserror::Error)]
enum HelperError {
    #[error("usage: {HELPER_SUBCOMMAND} --root <container state dir> ({0})")]
    Usage(String),
    #[error("setting up the helper process: {0}")]
    Setup(#[source] io::Error),
    #[error("malformed request frame: {0}")]
    Protocol(#[from] FrameError),
    #[error("request stream ended inside a frame")]
    Truncated,
    #[error("i/o on the agent pipes: {0}")]
    Io(#[source] io::Error),
}

impl HelperError {
    fn exit_code(&self) -> u8 {
        match self {
            HelperError::Usage(_) => 64,
            HelperError::Setup(_) => 70,
            HelperError::Protocol(_) | HelperError::Truncated => 2,
            HelperError::Io(_) => 74,
        }
    }
}

/// Entry point of the helper. `args` are the arguments after [`HELPER_SUBCOMMAND`]:
/// `--root <dir>`, libcontainer's state directory (created if missing).
///
/// The agent's `main` must route `flotilla-agent runtime-helper ...` here first thing,
/// before it starts a tokio runtime or anything else that spawns threads: libcontainer
/// forks, which is only safe in a single-threaded process.
///
/// Exits 0 when the agent closes the pipe, 2 on a malformed frame, 64 on bad arguments,
/// 70 when the process cannot be set up, 74 on pipe errors. Never kills containers.
pub fn helper_main<I, S>(args: I) -> ExitCode
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    match run(args.into_iter().map(Into::into).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla runtime helper: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: Vec<OsString>) -> Result<(), HelperError> {
    let root = parse_args(args)?;
    let (input, output) = setup_process().map_err(HelperError::Setup)?;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&root).map_err(HelperError::Setup)?;
    let root = root.canonicalize().map_err(HelperError::Setup)?;
    serve(Containers::new(root), input, output)
}

fn parse_args(args: Vec<OsString>) -> Result<PathBuf, HelperError> {
    let mut args = args.into_iter();
    let mut root = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--root") => {
                root = Some(PathBuf::from(
                    args.next().ok_or_else(|| HelperError::Usage("--root needs a value".into()))?,
                ))
            }
            _ => return Err(HelperError::Usage(format!("unexpected argument {arg:?}"))),
        }
    }
    let root = root.ok_or_else(|| HelperError::Usage("--root is required".into()))?;
    if !root.is_absolute() {
        return Err(HelperError::Usage("--root must be an absolute path".into()));
    }
    Ok(root)
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Makes the process fit to parent containers; returns the request and reply pipes.
fn setup_process() -> io::Result<(File, File)> {
    // Orphans of containers come to us rather than to PID 1, so nothing a container
    // leaves behind escapes reaping.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Containers inherit signal dispositions and the mask across clone and exec, and
    // libcontainer resets neither: start them from a clean slate. SIGPIPE gets a no-op
    // handler rather than SIG_IGN (Rust's default) so that a write to a vanished agent
    // fails with EPIPE here, while exec still resets it to the default in containers.
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        let handler =
            if sig == Signal::SIGPIPE { SigHandler::Handler(ignore_signal) } else { SigHandler::SigDfl };
        // SAFETY: the only handler installed does nothing, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &SigAction::new(handler, SaFlags::SA_RESTART, SigSet::empty())) };
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;

    // Move the frame pipes off fds 0 and 1 (close-on-exec, so no container inherits
    // them) and put /dev/null and stderr there: a stray print from a library, or a
    // container created without explicit stdio, can then never corrupt the frames.
    let input = fcntl(0, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: fcntl just returned a new fd that nothing else owns.
    let input = File::from(unsafe { OwnedFd::from_raw_fd(input) });
    let output = fcntl(1, FcntlArg::F_DUPFD_CLOEXEC(3))?;
    // SAFETY: as above.
    let output = File::from(unsafe { OwnedFd::from_raw_fd(output) });
    let devnull = OpenOptions::new().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2(devnull.as_raw_fd(), 0)?;
    if nix::unistd::dup2(2, 1).is_err() {
        nix::unistd::dup2(devnull.as_raw_fd(), 1)?;
    }
    Ok((input, output))
}

/// Splits one request off the front of `buf`, if a whole frame is there.
fn next_request(buf: &[u8]) -> Result<Option<(RuntimeRequest, usize)>, FrameError> {
    let Some(header) = buf.get(..4) else { return Ok(None) };
    let header: [u8; 4] = [header[0], header[1], header[2], header[3]];
    let len = frame_body_len(header)?;
    let Some(body) = buf.get(4..4 + len) else { return Ok(None) };
    Ok(Some((decode_runtime_body(body)?, 4 + len)))
}

/// Outcome of writing to the agent: a vanished agent ends the helper quietly.
enum Sent {
    Ok,
    AgentGone,
}

fn send(output: &mut File, msgs: impl IntoIterator<Item = RuntimeMessage>) -> Result<Sent, HelperError> {
    let mut bytes = Vec::new();
    for msg in msgs {
        bytes.extend_from_slice(&encode_runtime_frame(&msg)?);
    }
    if bytes.is_empty() {
        return Ok(Sent::Ok);
    }
    match output.write_all(&bytes) {
        Ok(()) => Ok(Sent::Ok),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Sent::AgentGone),
        Err(e) => Err(HelperError::Io(e)),
    }
}

fn serve(mut containers: Containers, mut input: File, mut output: File) -> Result<(), HelperError> {
    // libpathrs caches one private procfs handle per process; opening it here means
    // every container's forked setup processes inherit it instead of mounting their own.
    let _ = pathrs::procfs::ProcfsHandle::new();
    containers.adopt_existing();
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut events = Vec::new();
    // The usual seccomp profile is compiled on a thread while the helper answers its
    // first requests (lists, states), so the first creates after a boot find it ready;
    // a container whose profile differs compiles its own when it is created. The
    // thread is joined before anything that may fork: libcontainer forks, which is
    // only safe single-threaded.
    let mut seccomp_warm_up = Some(std::thread::spawn(|| {
        if let Some(profile) = crate::bundle::usual_seccomp_profile()
            && let Err(e) = libcontainer::seccomp::compile_seccomp(&profile)
        {
            tracing::debug!(error = %e, "compiling the usual seccomp profile ahead");
        }
    }));
    loop {
        let input_ready = {
            let mut fds = vec![PollFd::new(input.as_fd(), PollFlags::POLLIN)];
            fds.extend(containers.watched().into_iter().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
            match poll(&mut fds, PollTimeout::from(SWEEP_INTERVAL_MS)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(HelperError::Io(e.into())),
            }
            fds[0].revents().is_some_and(|r| !r.is_empty())
        };
        if input_ready {
            let n = match input.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HelperError::Io(e)),
            };
            if n == 0 {
                // The agent is gone. Leave every container running.
                return if pending.is_empty() { Ok(()) } else { Err(HelperError::Truncated) };
            }
            pending.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let Some((request, len)) = next_request(&pending[used..])? {
                used += len;
                if may_fork(&request.op)
                    && let Some(warm_up) = seccomp_warm_up.take()
                {
                    let _ = warm_up.join();
                    // libseccomp's working set is freed but stays in the heap: give it
                    // back rather than have every container's setup process share it.
                    // SAFETY: malloc_trim only releases free heap memory.
                    #[cfg(target_env = "gnu")]
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
                let result = containers.handle(request.op, &mut events);
                containers.collect_exits(&mut events);
                // Exits first: whoever sees the reply to a forced delete has already
                // been told the container exited.
                events.push(RuntimeMessage::Reply { request_id: request.request_id, result });
                if let Sent::AgentGone = send(&mut output, events.drain(..))? {
                    return Ok(());
                }
            }
            pending.drain(..used);
        }
        containers.collect_exits(&mut events);
        if let Sent::AgentGone = send(&mut output, events.drain(..))? {
            return Ok(());
        }
    }
}

/// Whether carrying out `op` may fork (libcontainer's create, start, delete and its
/// tenant processes): the helper must then be single-threaded.
fn may_fork(op: &RuntimeOp) -> bool {
    match op {
        RuntimeOp::Create { .. }
        | RuntimeOp::Start { .. }
        | RuntimeOp::Delete { .. }
        | RuntimeOp::Exec { .. }
        | RuntimeOp::ExecWith { .. } => true,
        RuntimeOp::Kill { .. } | RuntimeOp::KillExec { .. } | RuntimeOp::State { .. } | RuntimeOp::List => {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_rejects_garbage() {
        let a = encode_runtime_frame(&RuntimeRequest { request_id: 1, op: RuntimeOp::List }).unwrap();
        let b =
            encode_runtime_frame(&RuntimeRequest { request_id: 2, op: RuntimeOp::State { id: "x".into() } })
                .unwrap();
        let mut buf = a.clone();
        buf.extend_from_slice(&b[..3]);
        let (req, used) = next_request(&buf).unwrap().unwrap();
        assert_eq!((req.request_id, used), (1, a.len()));
        assert!(next_request(&buf[used..]).unwrap().is_none(), "partial frame waits for more");
        assert!(next_request(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).is_err());
        assert!(next_request(&[0xff, 0xff, 0xff, 0xff]).is_err(), "oversized length is refused");
    }

    #[test]
    fn arguments() {
        let ok = parse_args(vec!["--root".into(), "/run/x".into()]).unwrap();
        assert_eq!(ok, PathBuf::from("/run/x"));
        assert!(parse_args(vec![]).is_err());
        assert!(parse_args(vec!["--root".into(), "rel".into()]).is_err());
        assert!(parse_args(vec!["--bogus".into()]).is_err());
    }
}
