//! The checks behind probes and lifecycle hooks: a command run in the container, an
//! HTTP GET or a TCP connection to one of its ports. When the app has a network
//! namespace of its own, the agent makes the socket inside it (the pod's `net`), so it
//! reaches the container at `127.0.0.1` whatever the app publishes.
//!
//! The HTTP check is a plain HTTP/1.1 GET written by hand: it needs a request line
//! and a status code, and an HTTP client crate would add more to the agent's size
//! than the whole probe runner.

use crate::reconcile::ProbeRun;
use agent_runtime::ContainerRuntime;
use shared_proto::workload::{ExecAction, Handler, HttpGetAction};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Most of a probe's output or HTTP answer kept in a failure message.
const MAX_MESSAGE: usize = 200;

/// Runs one probe within its timeout: `Ok` on success, else why it failed, in words
/// that stay the same from one failure to the next (no timings).
pub async fn run_probe<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    run: &ProbeRun,
    netns: Option<&Path>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(run.probe.timeout_seconds.max(1)));
    let p = &run.probe;
    if let Some(e) = &p.exec {
        return exec(runtime, &run.id, e, timeout).await;
    }
    if let Some(h) = &p.http_get {
        return http_get(h, netns, timeout).await;
    }
    if let Some(t) = &p.tcp_socket {
        return tokio::time::timeout(timeout, connect(t.port, netns))
            .await
            .map_err(|_| format!("no connection to port {} within {}s", t.port, timeout.as_secs()))?
            .map(drop);
    }
    Err("the probe sets none of exec, httpGet and tcpSocket".into())
}

/// Runs a lifecycle hook within `timeout`.
pub async fn run_handler<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    id: &str,
    handler: &Handler,
    netns: Option<&Path>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = &handler.exec {
        return exec(runtime, id, e, timeout).await;
    }
    if let Some(h) = &handler.http_get {
        return http_get(h, netns, timeout).await;
    }
    Ok(())
}

async fn exec<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    id: &str,
    e: &ExecAction,
    timeout: Duration,
) -> Result<(), String> {
    let out = runtime.exec(id, &e.command, timeout).await.map_err(|e| e.to_string())?;
    match out.exit_code {
        Some(0) => Ok(()),
        Some(code) => {
            let text = String::from_utf8_lossy(&out.output);
            let text = text.trim();
            let tail: String =
                text.chars().rev().take(MAX_MESSAGE).collect::<Vec<_>>().into_iter().rev().collect();
            if tail.is_empty() {
                Err(format!("{} exited with code {code}", e.command[0]))
            } else {
                Err(format!("{} exited with code {code}: {tail}", e.command[0]))
            }
        }
        None => Err(format!("{} did not finish within {}s", e.command[0], timeout.as_secs())),
    }
}

async fn connect(port: u16, netns: Option<&Path>) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = match netns {
        None => TcpSocket::new_v4().map_err(|e| e.to_string())?,
        Some(ns) => {
            let ns = ns.to_path_buf();
            let fd = tokio::task::spawn_blocking(move || agent_runtime::pod::tcp_socket_in(&ns, false))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("entering the app's network: {e}"))?;
            // SAFETY: a fresh, owned, non-blocking stream socket.
            unsafe { TcpSocket::from_raw_fd(fd.into_raw_fd()) }
        }
    };
    socket.connect(addr).await.map_err(|e| format!("port {port}: {}", io_words(&e)))
}

/// An I/O error without the OS error number, so the message stays stable.
fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

async fn http_get(h: &HttpGetAction, netns: Option<&Path>, timeout: Duration) -> Result<(), String> {
    let work = async {
        let mut stream = connect(h.port, netns).await?;
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: flotilla-probe\r\nConnection: close\r\n",
            h.path, h.port
        );
        for (k, v) in &h.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.map_err(|e| io_words(&e))?;
        // The status line is all we need; read at most a little more than it.
        let mut buf = vec![0u8; 512];
        let mut n = 0;
        while n < buf.len() && !buf[..n].windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf[n..]).await.map_err(|e| io_words(&e))? {
                0 => break,
                k => n += k,
            }
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let status_line = head.lines().next().unwrap_or("");
        let mut parts = status_line.split_whitespace();
        let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
            return Err(format!("GET {} on port {}: no HTTP answer", h.path, h.port));
        };
        let code: u16 = match (version.starts_with("HTTP/"), code.parse()) {
            (true, Ok(c)) => c,
            _ => return Err(format!("GET {} on port {}: not an HTTP answer", h.path, h.port)),
        };
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("GET {} on port {} answered {code}", h.path, h.port))
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("GET {} on port {}: no answer within {}s", h.path, h.port, timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::ProbeKind;
    use agent_runtime::{ExecOutput, FakeRuntime};
    use shared_proto::workload::{Probe, TcpSocketAction};
    use tokio::net::TcpListener;

    fn run(probe: Probe) -> ProbeRun {
        ProbeRun { id: "web_a_1".into(), kind: ProbeKind::Liveness, probe, started_at: Default::default() }
    }

    async fn serve_once(answer: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_tcp_and_exec_checks() {
        let fake = FakeRuntime::new();
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let http = |port| Probe {
            http_get: Some(HttpGetAction { path: "/healthz".into(), port, headers: vec![] }),
            ..Default::default()
        };
        assert_eq!(run_probe(&fake, &run(http(ok)), None).await, Ok(()));
        assert_eq!(
            run_probe(&fake, &run(http(bad)), None).await,
            Err(format!("GET /healthz on port {bad} answered 503"))
        );
        // A closed port: refused, in the same words every time.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let tcp = Probe { tcp_socket: Some(TcpSocketAction { port: closed }), ..Default::default() };
        assert_eq!(
            run_probe(&fake, &run(tcp), None).await,
            Err(format!("port {closed}: connection refused"))
        );
        let tcp = Probe { tcp_socket: Some(TcpSocketAction { port: ok }), ..Default::default() };
        assert_eq!(run_probe(&fake, &run(tcp), None).await, Ok(()));
        // Exec goes through the runtime, in the container.
        fake.insert(agent_runtime::ContainerState {
            id: "web_a_1".into(),
            status: agent_runtime::ContainerStatus::Running,
            pid: Some(1),
            bundle: "/b".into(),
            created_at: None,
        });
        fake.set_exec_result(
            "/bin/check",
            ExecOutput { exit_code: Some(2), output: b"disk full\n".to_vec() },
        );
        let exec =
            Probe { exec: Some(ExecAction { command: vec!["/bin/check".into()] }), ..Default::default() };
        assert_eq!(
            run_probe(&fake, &run(exec), None).await,
            Err("/bin/check exited with code 2: disk full".into())
        );
        let exec =
            Probe { exec: Some(ExecAction { command: vec!["/bin/true".into()] }), ..Default::default() };
        assert_eq!(run_probe(&fake, &run(exec), None).await, Ok(()));
    }
}
