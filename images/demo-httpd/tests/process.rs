//! The real binary on loopback: it answers, and it exits 0 on SIGTERM, also as PID 1 of
//! a PID namespace (which is how the agent runs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_demo-httpd");
const DEADLINE: Duration = Duration::from_secs(10);

/// Kills the process on drop, so a failed test leaves nothing running.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Running {
    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

/// Starts `cmd` and reads the port it announces on stdout.
fn start(mut cmd: Command) -> (Running, u16) {
    let mut child = cmd.env("PORT", "0").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Running(Some(child));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        tx.send(line).unwrap();
    });
    let line = rx.recv_timeout(DEADLINE).expect("demo-httpd did not announce its port");
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("{line:?}"));
    (child, port)
}

fn get(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn wait_with_deadline(mut running: Running) -> ExitStatus {
    let (tx, rx) = mpsc::channel();
    let pid = running.id();
    let mut child = running.0.take().unwrap();
    let waiter = std::thread::spawn(move || {
        let status = child.wait().unwrap();
        let _ = tx.send(status);
        child
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(status) => status,
        Err(_) => {
            // SAFETY: plain kill(2) on the child we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("process {pid} did not exit after SIGTERM");
        }
    }
}

fn sigterm(pid: u32) {
    // SAFETY: plain kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
}

#[test]
fn serves_and_exits_zero_on_sigterm() {
    let mut cmd = Command::new(BIN);
    cmd.env("DEMO_VERSION", "9.9.9");
    let (child, port) = start(cmd);
    let health = get(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(health.ends_with("\r\n\r\nok"), "{health}");
    let page = get(port, "GET / HTTP/1.1\r\n\r\n");
    assert!(page.contains("Flotilla demo\nhostname: "), "{page}");
    assert!(page.contains("version: 9.9.9\n"), "{page}");
    assert!(get(port, "GET /missing HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert!(get(port, &huge).starts_with("HTTP/1.1 431"));

    // A client that never finishes its request does not stop others being served.
    let _slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(get(port, "GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));

    sigterm(child.id());
    assert_eq!(wait_with_deadline(child).code(), Some(0));
}

#[test]
fn exits_zero_on_sigterm_as_pid_1_of_a_pid_namespace() {
    let is_root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if !is_root.unwrap_or(false) || Command::new("unshare").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and util-linux unshare to make a PID namespace");
        return;
    }
    let mut cmd = Command::new("unshare");
    // --kill-child: if this test fails, killing unshare takes the server down too.
    cmd.args(["--pid", "--fork", "--kill-child", BIN]);
    let (unshare, port) = start(cmd);
    assert!(get(port, "GET /healthz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
    // The server is unshare's only child; in its namespace it is PID 1.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let server: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{server}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.split_whitespace().last() == Some("1"), "{nspid}");

    sigterm(server);
    // unshare exits with its child's status.
    assert_eq!(wait_with_deadline(unshare).code(), Some(0));
}
