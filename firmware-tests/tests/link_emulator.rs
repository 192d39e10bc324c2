//! The link emulator does what it says, measured end to end between two network
//! namespaces: a client in an "edge" namespace talks through the relay (in the root
//! namespace) to UDP and TCP echo servers in a "hub" namespace.

use firmware_tests::link::{Impairments, LinkConfig, LinkEmulator, LinkHandle, Shaping};
use firmware_tests::netns::Netns;
use firmware_tests::{require_root, wait_until};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const ECHO_PORT: u16 = 9000;
/// Long enough for a clean reply on an idle link, so silence means "dropped".
const ABSENCE: Duration = Duration::from_millis(300);
/// Bound for things that must happen.
const PRESENCE: Duration = Duration::from_secs(5);

/// UDP replies are `<peer ip>:<peer port> <datagrams seen>|<payload>`, so a test
/// sees the relay's upstream port and how much got through; TCP echoes bytes.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
SO_RCVBUFFORCE = 33
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
u.bind((host, port))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((host, port))
t.listen(64)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
def accept():
    while True:
        c, _ = t.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
n = 0
while True:
    d, a = u.recvfrom(65536)
    n += 1
    u.sendto(("%s:%d %d|" % (a[0], a[1], n)).encode() + d, a)
"#;

struct EchoServer(Child);

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Hub namespace with the echo servers, edge namespace for the client, and the
/// relay on the edge link's root side. Fields drop in order: relay, server, namespaces.
struct Rig {
    link: LinkEmulator,
    _server: EchoServer,
    edge: Netns,
    _hub: Netns,
}

fn start_rig(seed: u64, impairments: Impairments) -> Rig {
    require_root();
    let hub = Netns::create("lehub");
    let hub_link = hub.link_to_root(1);
    let edge = Netns::create("leedge");
    let edge_link = edge.link_to_root(2);
    let target = SocketAddr::new(hub_link.ns_ip.into(), ECHO_PORT);
    let child = hub
        .command("/usr/bin/python3")
        .args(["-c", ECHO_SERVER, &hub_link.ns_ip.to_string(), &ECHO_PORT.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the python echo server");
    let mut server = EchoServer(child);
    // The root namespace reaches the hub namespace through the veth.
    wait_until("the echo server to listen", PRESENCE, || {
        assert!(server.0.try_wait().expect("echo server status").is_none(), "the echo server exited");
        TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok()
    });
    let link =
        LinkEmulator::start(LinkConfig::new(edge_link.root_ip, target).seed(seed).impairments(impairments));
    Rig { link, _server: server, edge, _hub: hub }
}

impl Rig {
    /// Runs `f` on a thread inside the edge namespace; its panics are the test's.
    fn in_edge<T: Send + 'static>(&self, f: impl FnOnce(LinkHandle) -> T + Send + 'static) -> T {
        let link = self.link.handle();
        self.edge.spawn(move || f(link)).join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Polls `check` every 5 ms (the relay is fast; 100 ms polls would dominate).
fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Debug)]
struct Reply {
    peer: SocketAddr,
    n_seen: u64,
    payload: Vec<u8>,
}

struct UdpClient {
    sock: UdpSocket,
    relay: SocketAddr,
}

impl UdpClient {
    fn new(relay: SocketAddr) -> UdpClient {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("binding a client socket");
        // Replies to a burst must not be lost in our own receive buffer.
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20));
        UdpClient { sock, relay }
    }

    fn send(&self, payload: &[u8]) {
        self.sock.send_to(payload, self.relay).expect("sending to the relay");
    }

    fn recv(&self, timeout: Duration) -> Option<Reply> {
        self.sock.set_read_timeout(Some(timeout)).expect("read timeout");
        let mut buf = [0u8; 2048];
        let n = match self.sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) => panic!("receiving from the relay: {e}"),
        };
        let bar = buf[..n].iter().position(|b| *b == b'|').expect("reply header");
        let header = std::str::from_utf8(&buf[..bar]).expect("utf-8 header");
        let (peer, n_seen) = header.split_once(' ').expect("peer and count");
        Some(Reply {
            peer: peer.parse().expect("peer address"),
            n_seen: n_seen.parse().expect("count"),
            payload: buf[bar + 1..n].to_vec(),
        })
    }

    /// Sends `payload` and waits for its own reply (earlier stragglers skipped).
    fn echo(&self, payload: &[u8], timeout: Duration) -> Option<Reply> {
        self.send(payload);
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.recv(left) {
                Some(r) if r.payload == payload => return Some(r),
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

fn tcp_connect(relay: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&relay, PRESENCE).expect("connecting to the relay over TCP");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads exactly `n` bytes, or `None` if they do not come within `timeout`.
fn tcp_read(s: &mut TcpStream, n: usize, timeout: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + timeout;
    let mut got = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 << 10];
    while got.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf[..(n - got.len()).min(64 << 10)]) {
            Ok(0) => panic!("the relay closed the TCP connection after {} of {n} bytes", got.len()),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) => panic!("reading from the relay: {e}"),
        }
    }
    Some(got)
}

fn tcp_echo(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    s.write_all(msg).expect("writing to the relay");
    tcp_read(s, msg.len(), timeout)
}

/// Whether the peer closed (EOF or reset) within `timeout`.
fn tcp_closed(s: &mut TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).expect("read timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn delay_holds_each_direction() {
    let delay = Duration::from_millis(60);
    let jitter = Duration::from_millis(10);
    let rig = start_rig(1, Impairments::symmetric(Shaping { delay, jitter, ..Default::default() }));
    rig.in_edge(move |link| {
        let c = UdpClient::new(link.addr());
        for i in 0..5 {
            let t = Instant::now();
            c.echo(format!("ping {i}").as_bytes(), PRESENCE).expect("an echo through a slow link");
            let rtt = t.elapsed();
            assert!(rtt >= 2 * (delay - jitter), "UDP round trip {rtt:?} under 2 × (delay - jitter)");
            assert!(rtt < 2 * (delay + jitter) + Duration::from_secs(1), "UDP round trip {rtt:?}");
        }
        // TCP chunks get the delay too (without jitter, which would reorder a stream).
        let mut s = tcp_connect(link.addr());
        for i in 0..3 {
            let t = Instant::now();
            let msg = format!("tcp {i}");
            assert_eq!(tcp_echo(&mut s, msg.as_bytes(), PRESENCE).as_deref(), Some(msg.as_bytes()));
            let rtt = t.elapsed();
            assert!(rtt >= 2 * delay, "TCP round trip {rtt:?} under 2 × delay");
        }
    });
}

/// Sends `n` numbered datagrams in batches of 100, waiting after each batch until
/// the relay has decided every datagram both ways (so no socket buffer overflows
/// and every drop is the emulator's); returns how many replies came back.
fn send_in_batches(c: &UdpClient, link: &LinkHandle, n: u64) -> u64 {
    const BATCH: u64 = 100;
    let mut n_back = 0;
    for batch in 0..n / BATCH {
        for i in 0..BATCH {
            c.send(format!("{}", batch * BATCH + i).as_bytes());
        }
        let sent = (batch + 1) * BATCH;
        // What the server got, it echoed: the down side is decided when it has
        // handled as many as went up.
        let s = poll("the batch to be forwarded or dropped both ways", PRESENCE, || {
            let s = link.stats();
            (s.up.packets + s.up.dropped_packets == sent
                && s.down.packets + s.down.dropped_packets == s.up.packets)
                .then_some(s)
        });
        while n_back < s.down.packets {
            c.recv(PRESENCE).expect("a reply the relay forwarded");
            n_back += 1;
        }
    }
    n_back
}

#[test]
fn loss_rate_is_near_the_setting_and_fate_follows_the_seed() {
    const N: u64 = 2000;
    let lossy = || Impairments::symmetric(Shaping { loss: 0.3, ..Default::default() });
    let rig = start_rig(0x5eed, lossy());
    let (stats, n_back, final_reply) = rig.in_edge(move |link| {
        let c = UdpClient::new(link.addr());
        let n_back = send_in_batches(&c, &link, N);
        let stats = link.stats();
        link.set_loss(0.0);
        let final_reply = c.echo(b"final", PRESENCE).expect("an echo on a clean link");
        (stats, n_back, final_reply)
    });
    let up_loss = stats.up.dropped_packets as f64 / N as f64;
    let down_loss = stats.down.dropped_packets as f64 / stats.up.packets as f64;
    let delivered = n_back as f64 / N as f64;
    eprintln!("up loss {up_loss:.3}, down loss {down_loss:.3}, round trips {delivered:.3}");
    assert!((0.25..0.35).contains(&up_loss), "up loss {up_loss}");
    assert!((0.25..0.35).contains(&down_loss), "down loss {down_loss}");
    assert!((0.42..0.56).contains(&delivered), "round trips delivered {delivered} (0.7 × 0.7 = 0.49)");
    assert_eq!(final_reply.n_seen, stats.up.packets + 1, "the server saw exactly what the relay forwarded");
    drop(rig);

    // The same seed and the same datagrams meet the same fate.
    let again = start_rig(0x5eed, lossy());
    let (stats_again, n_back_again) = again.in_edge(move |link| {
        let c = UdpClient::new(link.addr());
        let n_back = send_in_batches(&c, &link, N);
        (link.stats(), n_back)
    });
    assert_eq!((stats_again.up, stats_again.down, n_back_again), (stats.up, stats.down, n_back));
}

#[test]
fn reordering_reorders_without_losing() {
    const N: u32 = 200;
    let rig = start_rig(7, Impairments::symmetric(Shaping { reorder: 0.3, ..Default::default() }));
    let order = rig.in_edge(move |link| {
        let c = UdpClient::new(link.addr());
        for i in 0..N {
            c.send(i.to_string().as_bytes());
        }
        (0..N)
            .map(|_| {
                let r = c.recv(PRESENCE).expect("every datagram comes back");
                std::str::from_utf8(&r.payload).unwrap().parse::<u32>().unwrap()
            })
            .collect::<Vec<_>>()
    });
    let n_inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..N).collect::<Vec<_>>(), "nothing lost, nothing doubled");
    assert!(n_inversions >= 10, "only {n_inversions} datagrams overtaken at 30% reordering");
}

#[test]
fn partition_stops_everything_until_it_heals() {
    let rig = start_rig(2, Impairments::default());
    rig.in_edge(move |link| {
        let c = UdpClient::new(link.addr());
        c.echo(b"before", PRESENCE).expect("an echo on a clean link");
        let mut s = tcp_connect(link.addr());
        assert!(tcp_echo(&mut s, b"before", PRESENCE).is_some());

        link.set_partition(true);
        let dropped_before = link.stats().up.dropped_packets;
        for i in 0..3 {
            assert!(c.echo(format!("during {i}").as_bytes(), ABSENCE).is_none(), "UDP crossed a partition");
        }
        assert_eq!(link.stats().up.dropped_packets, dropped_before + 3);
        // TCP stalls: the bytes wait, the connection stays open.
        assert!(tcp_echo(&mut s, b"stalled", ABSENCE).is_none(), "TCP crossed a partition");

        link.set_partition(false);
        assert_eq!(tcp_read(&mut s, 7, PRESENCE).as_deref(), Some(&b"stalled"[..]), "stalled bytes arrive");
        c.echo(b"after", PRESENCE).expect("UDP flows again after the heal");

        // With cut_tcp_on_partition, connections are closed and new ones refused.
        link.update(|i| {
            i.cut_tcp_on_partition = true;
            i.partition = true;
        });
        assert!(tcp_closed(&mut s, PRESENCE), "a partition with cut closes the connection");
        let mut fresh = tcp_connect(link.addr());
        assert!(tcp_closed(&mut fresh, PRESENCE), "a connection made during the cut is closed");
        assert!(link.stats().tcp_cut >= 2);
        link.set_partition(false);
        let mut healed = tcp_connect(link.addr());
        assert!(tcp_echo(&mut healed, b"healed", PRESENCE).is_some());
    });
}

#[test]
fn block_udp_drops_udp_but_tcp_goes_through() {
    let rig = start_rig(3, Impairments { block_udp: true, ..Default::default() });
    rig.in_edge(move |link| {
        let c = UdpClient::new(link.addr());
        assert!(c.echo(b"quic?", ABSENCE).is_none(), "UDP crossed a UDP block");
        let mut s = tcp_connect(link.addr());
        assert_eq!(tcp_echo(&mut s, b"tls!", PRESENCE).as_deref(), Some(&b"tls!"[..]));
        assert!(link.stats().up.tcp_bytes >= 4 && link.stats().down.tcp_bytes >= 4);
        link.set_block_udp(false);
        c.echo(b"quic!", PRESENCE).expect("UDP flows once unblocked");
    });
}

#[test]
fn bandwidth_cap_paces_tcp_and_tail_drops_udp() {
    // 100 kB/s each way: 50 kB of TCP takes about half a second up (and down,
    // overlapped) and arrives intact.
    let shaping = Shaping { bandwidth: Some(100_000), queue_bytes: 10_000, ..Default::default() };
    let rig = start_rig(4, Impairments::symmetric(shaping));
    rig.in_edge(move |link| {
        let mut s = tcp_connect(link.addr());
        let msg: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let t = Instant::now();
        let back = tcp_echo(&mut s, &msg, Duration::from_secs(10)).expect("the echo through the cap");
        let took = t.elapsed();
        assert!(back == msg, "TCP bytes changed on the way");
        assert!(took >= Duration::from_millis(400), "50 kB at 100 kB/s took {took:?}");

        // A burst of 60 × 1000 B: the 8 kB bucket and the 10 kB queue pass about 18,
        // the tail is dropped.
        let c = UdpClient::new(link.addr());
        let payload = vec![b'x'; 1000];
        for _ in 0..60 {
            c.send(&payload);
        }
        let st = poll("the burst to be decided", PRESENCE, || {
            let st = link.stats();
            (st.up.packets + st.up.dropped_packets == 60).then_some(st)
        });
        assert!((15..=22).contains(&st.up.packets), "{} of 60 passed the cap", st.up.packets);
    });
}

#[test]
fn rebind_gives_a_new_upstream_port() {
    let rig = start_rig(5, Impairments::default());
    rig.in_edge(move |link| {
        let c = UdpClient::new(link.addr());
        let first = c.echo(b"a", PRESENCE).expect("echo").peer;
        let again = c.echo(b"b", PRESENCE).expect("echo").peer;
        assert_eq!(first, again, "one flow keeps its upstream port");
        assert_eq!(link.stats().udp_flows, 1);

        link.rebind();
        let moved = c.echo(b"c", PRESENCE).expect("echo after the rebind").peer;
        assert_eq!(moved.ip(), first.ip());
        assert_ne!(moved.port(), first.port(), "the server sees the client from a new port");
        assert_eq!(link.stats().udp_flows, 1);
        assert_eq!(link.stats().rebinds, 1);

        // A second client is a flow of its own.
        let other = UdpClient::new(link.addr());
        let other_peer = other.echo(b"d", PRESENCE).expect("echo").peer;
        assert_ne!(other_peer.port(), moved.port());
        assert_eq!(link.stats().udp_flows, 2);
    });
}

#[test]
fn namespaces_run_processes_and_disappear_on_drop() {
    require_root();
    let ns = Netns::create("lens");
    let link = ns.link_to_root(3);
    let name = ns.name().to_string();
    let out = ns.command("ip").args(["-o", "-4", "addr", "show"]).output().expect("ip in the namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/24", link.ns_ip)), "{text}");
    // Unlike `ip netns exec`, the host's mounts stay: the agent needs the cgroups.
    let out = ns.command("ls").arg("/sys/fs/cgroup").output().expect("ls in the namespace");
    assert!(!out.stdout.is_empty(), "cgroup mounts hidden in the namespace");
    assert!(ns.run(&["route", "show", "default"]).contains(&link.root_ip.to_string()));
    let veth = std::process::Command::new("ip").args(["link", "show", &link.root_if]).output().unwrap();
    assert!(veth.status.success(), "no root-side veth {}", link.root_if);

    drop(ns);
    let listed = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&name), "namespace left behind");
    let veth = std::process::Command::new("ip").args(["link", "show", &link.root_if]).output().unwrap();
    assert!(!veth.status.success(), "veth left behind");
}
