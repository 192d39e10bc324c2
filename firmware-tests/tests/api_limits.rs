//! The HTTPS API under a crowd of idle clients: 2,000 TLS connections opened and left
//! idle cannot lock operators out. `/healthz` and an operator's GET still answer
//! within a second, the crowd's client is held to its share of connections, and the
//! connections it did get are closed once idle past the header deadline.

use firmware_tests::{Hub, require_root, wait_until};
use rustls_pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CROWD: usize = 2000;

fn api_addr(hub: &Hub) -> SocketAddr {
    hub.api.trim_start_matches("https://").parse().expect("the hub's API address")
}

fn tls_config(hub: &Hub) -> Arc<rustls::ClientConfig> {
    let ctx: shared_proto::config::CliContext =
        serde_json::from_slice(&std::fs::read(&hub.context).unwrap()).unwrap();
    let ca = provisioning::pem::decode_cert(&ctx.ca_cert_pem).unwrap();
    provisioning::tls::api_client_config(&ca).unwrap()
}

/// A TCP connection from `local` (a loopback address of its own) to the API.
fn connect_from(rt: &tokio::runtime::Runtime, local: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{local}:0").parse().unwrap())?;
        let stream = socket.connect(to).await?.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// Completes a TLS handshake on `tcp`; `None` when the hub closed it instead.
fn handshake(
    tls: &Arc<rustls::ClientConfig>,
    mut tcp: TcpStream,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut conn =
        rustls::ClientConnection::new(tls.clone(), ServerName::try_from("127.0.0.1").unwrap()).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    Some(rustls::StreamOwned::new(conn, tcp))
}

/// `GET path` with an optional bearer token on a fresh connection from 127.0.0.1;
/// the status code and how long the whole exchange took.
fn get(hub: &Hub, tls: &Arc<rustls::ClientConfig>, path: &str, token: Option<&str>) -> (u16, Duration) {
    let start = Instant::now();
    let tcp = TcpStream::connect(api_addr(hub)).expect("connect");
    let mut s = handshake(tls, tcp).expect("the operator gets a TLS session");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: hub\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let status = reply.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, start.elapsed())
}

#[test]
fn idle_tls_crowds_cannot_lock_operators_out() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let tls = tls_config(&hub);
    let ctx: serde_json::Value = serde_json::from_slice(&std::fs::read(&hub.context).unwrap()).unwrap();
    let token = ctx["token"].as_str().expect("the context's admin token").to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // The crowd: one client address opens 2,000 connections, completes what TLS
    // handshakes it can, and then says nothing.
    let addr = api_addr(&hub);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..CROWD {
        match connect_from(&rt, "127.0.0.2", addr).ok().and_then(|tcp| handshake(&tls, tcp)) {
            Some(s) => held.push(s),
            None => refused += 1,
        }
    }
    eprintln!("crowd: {} TLS sessions held, {refused} connections refused", held.len());
    assert!(refused > 0, "one client must not get 2,000 connections");
    assert!(!held.is_empty(), "the crowd's client still gets its share");

    // The operator, from another address, is served at once.
    let (status, took) = get(&hub, &tls, "/healthz", None);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "/healthz took {took:?} behind the crowd");
    let (status, took) = get(&hub, &tls, "/api/v1/devices", Some(&token));
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "an operator's GET took {took:?} behind the crowd");

    // Idle past the header deadline, the crowd's connections are closed by the hub.
    let mut open = held.len();
    wait_until("the hub to close the idle connections", Duration::from_secs(60), || {
        held.retain_mut(|s| {
            s.sock.set_nonblocking(true).ok();
            let mut b = [0u8; 1];
            let closed = !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            !closed
        });
        open = held.len();
        held.is_empty().then_some(())
    });
    assert_eq!(open, 0);
    // The crowd's client has its share back.
    let tcp = connect_from(&rt, "127.0.0.2", addr).unwrap();
    assert!(handshake(&tls, tcp).is_some(), "slots come back when connections close");
}
