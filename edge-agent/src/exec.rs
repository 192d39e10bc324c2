//! Logs and exec served to the hub. When the hub asks ([`AttachRequest`] on the sync
//! stream), the agent opens a stream of its own to the hub (`StreamOpen::Attach`) and
//! answers on it: a container's log (following it when asked), or a command run in the
//! container with the operator's input and, when asked, a terminal. The device never
//! listens for connections: all of it rides the connection it keeps to the hub.
//!
//! Scratch files (an exec's output, its stdin FIFO, the console socket) live in the
//! agent's private tmpfs.

use crate::state::StateDb;
use crate::transport::HubLink;
use agent_runtime::ContainerRuntime;
use shared_proto::runtime::{ExecIo, TtyIo};
use shared_proto::wire::{
    self, AttachFrame, AttachInput, AttachKind, AttachOpen, AttachRequest, ExecRequest, FrameDecoder,
    LogsRequest, MAX_ATTACH_CHUNK, StreamOpen,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How often a followed log or a running command's output is looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How long the container's terminal may take to reach the agent.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What serving an attach request needs from the agent.
#[derive(Clone)]
pub struct AttachContext {
    pub db: StateDb,
    pub logs_dir: PathBuf,
    /// For exec scratch files: on the agent's private tmpfs.
    pub scratch_dir: PathBuf,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub clock: Arc<Mutex<crate::logs::LogClock>>,
}

type Writer = crate::transport::BoxWrite;

async fn send(w: &mut Writer, frame: &AttachFrame) -> anyhow::Result<()> {
    w.write_all(&wire::encode_frame(frame)?).await?;
    Ok(())
}

async fn send_output(w: &mut Writer, bytes: &[u8]) -> anyhow::Result<()> {
    for chunk in bytes.chunks(MAX_ATTACH_CHUNK) {
        send(w, &AttachFrame::Stdout(chunk.to_vec())).await?;
    }
    w.flush().await?;
    Ok(())
}

/// The container `req` names: the newest record of that app and container (when the
/// request names none, the app's only container).
fn resolve(db: &StateDb, req: &AttachRequest) -> Result<String, String> {
    let records = db.containers().map_err(|e| e.to_string())?;
    let of_app: Vec<_> = records.iter().filter(|r| r.app == req.app).collect();
    if of_app.is_empty() {
        return Err(format!("app {} runs no container on this device", req.app));
    }
    let name = if req.container.is_empty() {
        let mut names: Vec<&str> = of_app.iter().filter(|r| !r.init).map(|r| r.name.as_str()).collect();
        names.sort();
        names.dedup();
        match names.as_slice() {
            [one] => one.to_string(),
            [] => return Err(format!("app {} runs no container now", req.app)),
            many => {
                return Err(format!("app {} has containers {}: choose one (-c)", req.app, many.join(", ")));
            }
        }
    } else {
        req.container.clone()
    };
    of_app
        .iter()
        .filter(|r| r.name == name)
        .max_by_key(|r| r.created_at)
        .map(|r| r.id.clone())
        .ok_or_else(|| format!("app {} has no container {name:?} on this device", req.app))
}

/// Serves one attach request on a stream of its own; errors end only that stream.
pub async fn serve(ctx: AttachContext, link: HubLink, req: AttachRequest) {
    let id = req.id;
    if let Err(e) = serve_inner(ctx, link, req).await {
        tracing::debug!(id, error = %format!("{e:#}"), "an attach stream ended");
    }
}

async fn serve_inner(ctx: AttachContext, link: HubLink, req: AttachRequest) -> anyhow::Result<()> {
    let (reader, mut w) = link.open_stream().await?;
    w.write_all(&wire::encode_frame(&StreamOpen::Attach(AttachOpen { id: req.id }))?).await?;
    let container = match resolve(&ctx.db, &req) {
        Ok(c) => c,
        Err(message) => {
            send(&mut w, &AttachFrame::Error { message }).await?;
            let _ = w.shutdown().await;
            return Ok(());
        }
    };
    let inputs = spawn_inputs(reader);
    let result = match &req.what {
        AttachKind::Logs(l) => logs(&ctx, &container, l, &mut w, inputs).await,
        AttachKind::Exec(e) => {
            tracing::info!(app = %req.app, container = %container, "running a command for the hub (exec)");
            exec(&ctx, &container, req.id, e, &mut w, inputs).await
        }
    };
    if let Err(e) = &result {
        let _ = send(&mut w, &AttachFrame::Error { message: format!("{e:#}") }).await;
    }
    let _ = w.shutdown().await;
    result
}

/// The hub's frames on the stream; `None` once it closed it (the operator left).
fn spawn_inputs(mut reader: crate::transport::BoxRead) -> mpsc::Receiver<Option<AttachInput>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            while let Ok(Some(body)) = decoder.next_body() {
                match wire::decode_frame_body::<AttachInput>(&body) {
                    Ok(i) => {
                        if tx.send(Some(i)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        let _ = tx.send(None).await;
                        return;
                    }
                }
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None).await;
                    return;
                }
                Ok(n) => decoder.push(&buf[..n]),
            }
        }
    });
    rx
}

async fn logs(
    ctx: &AttachContext,
    container: &str,
    req: &LogsRequest,
    w: &mut Writer,
    mut inputs: mpsc::Receiver<Option<AttachInput>>,
) -> anyhow::Result<()> {
    let (dir, id, clock) = (ctx.logs_dir.clone(), container.to_string(), ctx.clock.clone());
    let (since, tail) = (req.since_unix_ms, req.tail_lines);
    let (first, mut pos) =
        tokio::task::spawn_blocking(move || crate::logs::read_log(&dir, &id, &clock, since, tail)).await??;
    send(w, &AttachFrame::Started).await?;
    send_output(w, &first).await?;
    if !req.follow {
        send(w, &AttachFrame::Exit { code: 0 }).await?;
        return Ok(());
    }
    let path = ctx.logs_dir.join(format!("{container}.log"));
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    let mut checks = 0u32;
    loop {
        tokio::select! {
            input = inputs.recv() => if matches!(input, None | Some(None)) {
                return Ok(());
            },
            _ = tick.tick() => {
                let (more, next) = read_from(&path, pos).await?;
                pos = next;
                send_output(w, &more).await?;
                checks += 1;
                // The container replaced or removed: its log is over.
                if checks.is_multiple_of(10) && !ctx.db.containers()?.iter().any(|r| r.id == container) {
                    send(w, &AttachFrame::Exit { code: 0 }).await?;
                    return Ok(());
                }
            }
        }
    }
}

/// What `path` holds past `pos`, and the new position. A file emptied by rotation is
/// read again from its start.
async fn read_from(path: &Path, pos: u64) -> anyhow::Result<(Vec<u8>, u64)> {
    let path = path.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        let start = if len < pos { 0 } else { pos };
        f.seek(SeekFrom::Start(start))?;
        let mut out = Vec::new();
        f.take(len - start).read_to_end(&mut out)?;
        Ok((out, len))
    })
    .await??)
}

async fn exec(
    ctx: &AttachContext,
    container: &str,
    n: u64,
    req: &ExecRequest,
    w: &mut Writer,
    mut inputs: mpsc::Receiver<Option<AttachInput>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&ctx.scratch_dir)?;
    let scratch = Scratch::new(&ctx.scratch_dir, n);
    let mut io =
        ExecIo { output_path: scratch.out.to_string_lossy().into_owned(), stdin_path: None, tty: None };
    // Without a terminal: stdin through a FIFO this side holds open (so the helper's
    // open does not block, and closing it is the command's end of input).
    let mut fifo = None;
    if req.stdin && !req.tty {
        nix::unistd::mkfifo(&scratch.fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        fifo = Some(tokio::net::unix::pipe::OpenOptions::new().read_write(true).open_sender(&scratch.fifo)?);
        io.stdin_path = Some(scratch.fifo.to_string_lossy().into_owned());
    }
    let listener = if req.tty {
        let l = tokio::net::UnixListener::bind(&scratch.sock)?;
        io.tty = Some(TtyIo {
            console_socket: scratch.sock.to_string_lossy().into_owned(),
            cols: req.cols.max(1),
            rows: req.rows.max(1),
        });
        Some(l)
    } else {
        None
    };
    let mut started = ctx.runtime.exec_with(container, &req.command, io).await?;
    let mut tty = match listener {
        Some(l) => {
            let t = receive_terminal(l).await?;
            t.resize(req.cols.max(1), req.rows.max(1));
            Some(t)
        }
        None => None,
    };
    send(w, &AttachFrame::Started).await?;
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    let mut pos = 0u64;
    let mut buf = vec![0u8; MAX_ATTACH_CHUNK];
    let code = loop {
        tokio::select! {
            code = &mut started.exited => break code.unwrap_or(-1),
            input = inputs.recv() => match input.flatten() {
                Some(AttachInput::Stdin(b)) => {
                    if let Some(t) = tty.as_mut() {
                        t.file.write_all(&b).await?;
                    } else if let Some(f) = fifo.as_mut() {
                        // A command that does not read its input just never gets it.
                        let _ = f.write_all(&b).await;
                    }
                }
                Some(AttachInput::StdinEof) => {
                    fifo = None;
                    if let Some(t) = tty.as_mut() {
                        t.file.write_all(&[4]).await?; // ^D, as a terminal's end of input
                    }
                }
                Some(AttachInput::Resize { cols, rows }) => {
                    if let Some(t) = &tty {
                        t.resize(cols, rows);
                    }
                }
                None => {
                    // The operator went away: the command goes too.
                    let _ = ctx.runtime.kill_exec(started.exec_id).await;
                    return Ok(());
                }
            },
            read = async { match tty.as_mut() {
                Some(t) => t.file.read(&mut buf).await,
                None => std::future::pending().await,
            } } => match read {
                Ok(0) | Err(_) => {
                    // The terminal closed (EIO): the command is ending.
                    let code = (&mut started.exited).await.unwrap_or(-1);
                    break code;
                }
                Ok(n) => send_output(w, &buf[..n]).await?,
            },
            _ = tick.tick(), if tty.is_none() => {
                let (more, next) = read_from(&scratch.out, pos).await?;
                pos = next;
                send_output(w, &more).await?;
            }
        }
    };
    if tty.is_none() {
        let (more, _) = read_from(&scratch.out, pos).await?;
        send_output(w, &more).await?;
    } else if let Some(t) = tty.as_mut() {
        // What the terminal still holds.
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), t.file.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            send_output(w, &buf[..n]).await?;
        }
    }
    send(w, &AttachFrame::Exit { code }).await?;
    w.flush().await?;
    Ok(())
}

/// An exec's scratch files, removed when it ends.
struct Scratch {
    out: PathBuf,
    fifo: PathBuf,
    sock: PathBuf,
}

impl Scratch {
    fn new(dir: &Path, n: u64) -> Scratch {
        Scratch {
            out: dir.join(format!("exec-{n}.out")),
            fifo: dir.join(format!("exec-{n}.in")),
            sock: dir.join(format!("exec-{n}.sock")),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in [&self.out, &self.fifo, &self.sock] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The master end of the command's terminal.
struct Terminal {
    file: tokio::fs::File,
    fd: std::os::fd::OwnedFd,
}

impl Terminal {
    fn resize(&self, cols: u16, rows: u16) {
        use std::os::fd::AsRawFd;
        let ws = nix::libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize that outlives the call, on a live fd.
        unsafe { nix::libc::ioctl(self.fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
    }
}

/// Takes the terminal libcontainer sends over the console socket (`SCM_RIGHTS`).
async fn receive_terminal(listener: tokio::net::UnixListener) -> anyhow::Result<Terminal> {
    let (stream, _) = tokio::time::timeout(CONSOLE_TIMEOUT, listener.accept())
        .await
        .map_err(|_| anyhow::anyhow!("the container's terminal did not arrive"))??;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    let fd = tokio::task::spawn_blocking(move || -> anyhow::Result<std::os::fd::OwnedFd> {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut name = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c
                && let Some(fd) = fds.first()
            {
                // SAFETY: the kernel just gave this process the descriptor; it is ours.
                return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) });
            }
        }
        anyhow::bail!("the console socket carried no terminal")
    })
    .await??;
    let file = tokio::fs::File::from_std(std::fs::File::from(fd.try_clone()?));
    Ok(Terminal { file, fd })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::Timestamp;
    use shared_proto::agent_state::ContainerRecord;

    fn record(id: &str, name: &str, init: bool, at: u64) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            app: "pos".into(),
            name: name.into(),
            generation: 1,
            spec_hash: "h".into(),
            image_digest: "sha256:x".into(),
            created_at: Timestamp(at),
            restarts: 0,
            init,
            grace_period_seconds: 10,
            pre_stop: None,
        }
    }

    fn req(container: &str) -> AttachRequest {
        AttachRequest {
            id: 1,
            app: "pos".into(),
            container: container.into(),
            what: AttachKind::Logs(LogsRequest::default()),
        }
    }

    #[test]
    fn the_container_is_the_named_one_or_the_only_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.redb")).unwrap();
        assert!(resolve(&db, &req("")).unwrap_err().contains("runs no container"));
        db.put_container(&record("pos_init_1", "init", true, 1)).unwrap();
        db.put_container(&record("pos_main_1", "main", false, 2)).unwrap();
        db.put_container(&record("pos_main_2", "main", false, 3)).unwrap();
        assert_eq!(resolve(&db, &req("")).unwrap(), "pos_main_2", "the newest, init containers aside");
        assert_eq!(resolve(&db, &req("init")).unwrap(), "pos_init_1");
        db.put_container(&record("pos_side_1", "side", false, 4)).unwrap();
        assert!(resolve(&db, &req("")).unwrap_err().contains("main, side"));
        assert!(resolve(&db, &req("nope")).unwrap_err().contains("no container \"nope\""));
    }
}
