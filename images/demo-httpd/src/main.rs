//! demo-httpd: the static HTTP service in Flotilla's demo image. Serves `/healthz` and a
//! page naming the host and version on `0.0.0.0:$PORT` (default 8080), one thread per
//! connection up to a cap, and exits 0 on SIGTERM or SIGINT.

mod http;

use http::Identity;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// More connections than this get a 503 instead of a thread.
const MAX_CONNECTIONS: usize = 64;
/// The whole request head must arrive within this.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection may keep draining what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

fn main() {
    // Before any other thread exists, so that every thread inherits the mask.
    let signals = signals::block_termination();

    let port = match std::env::var("PORT") {
        Ok(p) => match p.parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("demo-httpd: PORT={p:?} is not a port number");
                std::process::exit(2);
            }
        },
        Err(_) => 8080,
    };
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-httpd: cannot listen on 0.0.0.0:{port}: {e}");
            std::process::exit(1);
        }
    };
    let id = Identity {
        hostname: hostname(),
        version: std::env::var("DEMO_VERSION").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_string()),
    };
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(port);

    std::thread::spawn(move || {
        let sig = signals::wait(&signals);
        // Not println!: it panics when stdout is gone, and this thread must reach exit.
        let _ = writeln!(std::io::stdout(), "demo-httpd: got signal {sig}, exiting");
        // In-flight requests are tiny; the runtime's grace period is for slower apps.
        std::process::exit(0);
    });

    let _ = writeln!(std::io::stdout(), "demo-httpd {} listening on 0.0.0.0:{bound}", id.version);
    serve(listener, Arc::new(id));
}

fn serve(listener: TcpListener, id: Arc<Identity>) {
    let started = Instant::now();
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = http::Response::text(503, "too many connections\n").write_to(&mut stream);
            continue;
        }
        let (id, slot) = (id.clone(), active.clone());
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
            handle(stream, &id, started.elapsed());
            slot.fetch_sub(1, Ordering::AcqRel);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn handle(mut stream: TcpStream, id: &Identity, uptime: Duration) {
    let response = match http::read_head(&mut stream, Instant::now() + HEAD_DEADLINE) {
        Ok(head) => match http::parse_head(&head) {
            Ok(req) => http::route(&req, id, uptime),
            Err(e) => http::parse_error_response(&e),
        },
        Err(e) => match http::error_response(&e) {
            Some(r) => r,
            None => return,
        },
    };
    let _ = response.write_to(&mut stream);
    linger_close(stream);
}

/// Closing a socket with unread input makes the kernel send a reset, which can destroy
/// the response before the client reads it (say, after a 431 for an oversized head).
/// So: end our side, then read and drop what the client still sends, within bounds.
fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut n_drained = 0;
    while n_drained < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n_drained += n,
        }
    }
}

/// From uname(2) rather than /proc, which a minimal rootfs may not have mounted.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the result is NUL-terminated within it
    // or truncated, which the search for NUL below handles.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// SIGTERM/SIGINT handling that also works as PID 1 of a PID namespace, where the
/// kernel drops signals whose action is the default. A signal that is blocked is never
/// dropped, so we block both in every thread and take them with `sigwait`.
mod signals {
    pub struct Blocked(libc::sigset_t);

    pub fn block_termination() -> Blocked {
        // SAFETY: plain libc calls on a sigset_t we own; no handler runs our code.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Blocked(set)
        }
    }

    /// Waits for one of the blocked signals and returns its number.
    pub fn wait(blocked: &Blocked) -> i32 {
        let mut sig = 0;
        loop {
            // SAFETY: `blocked.0` is an initialised sigset_t and `sig` a valid out pointer.
            if unsafe { libc::sigwait(&blocked.0, &mut sig) } == 0 {
                return sig;
            }
        }
    }
}
