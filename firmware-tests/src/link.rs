//! A userspace link emulator (the kernel here has no netem): a relay that listens on
//! one IP:port for UDP and TCP and forwards to a target (the hub), adding delay,
//! jitter, loss, reordering, a bandwidth cap, partitions and a UDP block that the
//! test changes while it runs. UDP gets one upstream socket per client, like a NAT,
//! and [`LinkHandle::rebind`] makes it forget them, as a NAT that lost its mappings.
//!
//! The relay runs on its own thread with its own tokio runtime, so plain `#[test]`
//! functions can use it. Decisions about each datagram are made by [`Pipe`], a pure,
//! seeded state machine that is given the time; the async tasks only move bytes.
//!
//! "Up" is client → target (agent → hub), "down" is target → client.

use crate::prng::SplitMix64;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a packet held back for reordering waits for a successor before it is
/// sent anyway, so a lone packet (a heartbeat) is late but not lost.
pub const REORDER_HOLD_MAX: Duration = Duration::from_millis(50);
/// Largest UDP payload relayed.
const MAX_DATAGRAM: usize = 65_536;
/// Socket buffers for the relay's UDP sockets, so bursts are not lost in the kernel
/// before the impairments decide their fate.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// What happens to traffic in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// Added to every packet (and to every TCP chunk).
    pub delay: Duration,
    /// Each datagram's delay is `delay` ± a uniform `jitter` (never below zero), so
    /// jitter larger than the packet spacing reorders naturally. TCP ignores it.
    pub jitter: Duration,
    /// Probability (0..=1) that a datagram is dropped. TCP is never lossy: the kernel
    /// retransmits on each leg, so loss would only look like delay.
    pub loss: f64,
    /// Probability (0..=1) that a datagram is held back and sent right after the
    /// next one (or after [`REORDER_HOLD_MAX`] if none comes).
    pub reorder: f64,
    /// Bandwidth cap in bytes per second (token bucket); `None` for no cap, `Some(0)`
    /// lets nothing through.
    pub bandwidth: Option<u64>,
    /// Bucket size: bytes that may go at once after an idle spell.
    pub burst_bytes: u64,
    /// The most bytes waiting for the cap: a datagram that would wait longer than
    /// `queue_bytes / bandwidth` is dropped (tail drop). TCP waits instead.
    pub queue_bytes: u64,
}

impl Default for Shaping {
    fn default() -> Shaping {
        Shaping {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            reorder: 0.0,
            bandwidth: None,
            burst_bytes: 8 << 10,
            queue_bytes: 64 << 10,
        }
    }
}

/// Everything the test can change at runtime.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairments {
    pub up: Shaping,
    pub down: Shaping,
    /// Drop every datagram both ways, and stall TCP (bytes wait for the heal).
    pub partition: bool,
    /// With `partition`, close the relayed TCP connections (and refuse new ones)
    /// instead of stalling them.
    pub cut_tcp_on_partition: bool,
    /// Drop all UDP, let TCP through: a network that blocks QUIC.
    pub block_udp: bool,
}

impl Impairments {
    /// The same shaping both ways.
    pub fn symmetric(shaping: Shaping) -> Impairments {
        Impairments { up: shaping.clone(), down: shaping, ..Default::default() }
    }

    pub fn dir(&self, dir: Direction) -> &Shaping {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn both(&mut self, f: impl Fn(&mut Shaping)) {
        f(&mut self.up);
        f(&mut self.down);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → target.
    Up,
    /// Target → client.
    Down,
}

/// Where the relay listens and forwards to.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// UDP and TCP listen on this address; port 0 picks one free for both.
    pub listen: SocketAddr,
    /// Where UDP and TCP go (the hub's QUIC address; its TCP fallback shares it).
    pub target: SocketAddr,
    /// Seeds every random decision: same seed and same packets, same fate.
    pub seed: u64,
    pub impairments: Impairments,
}

impl LinkConfig {
    /// A clean link listening on `listen_ip` (a free port) to `target`, seed 0.
    pub fn new(listen_ip: impl Into<IpAddr>, target: SocketAddr) -> LinkConfig {
        LinkConfig {
            listen: SocketAddr::new(listen_ip.into(), 0),
            target,
            seed: 0,
            impairments: Impairments::default(),
        }
    }

    pub fn seed(mut self, seed: u64) -> LinkConfig {
        self.seed = seed;
        self
    }

    pub fn impairments(mut self, impairments: Impairments) -> LinkConfig {
        self.impairments = impairments;
        self
    }
}

/// Counters for one direction. UDP counts datagrams, TCP bytes only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub packets: u64,
    pub bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub tcp_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub up: DirectionStats,
    pub down: DirectionStats,
    /// Client addresses with an upstream UDP socket now.
    pub udp_flows: u64,
    /// Times the flow table was forgotten ([`LinkHandle::rebind`]).
    pub rebinds: u64,
    pub tcp_accepted: u64,
    /// TCP connections closed by a partition with `cut_tcp_on_partition`.
    pub tcp_cut: u64,
}

#[derive(Default)]
struct DirectionCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped_packets: AtomicU64,
    dropped_bytes: AtomicU64,
    tcp_bytes: AtomicU64,
}

impl DirectionCounters {
    fn forwarded(&self, len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
    fn dropped(&self, len: usize) {
        self.dropped_packets.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped_packets: self.dropped_packets.load(Ordering::Relaxed),
            dropped_bytes: self.dropped_bytes.load(Ordering::Relaxed),
            tcp_bytes: self.tcp_bytes.load(Ordering::Relaxed),
        }
    }
}

enum Command {
    /// Forget every UDP flow.
    Rebind,
}

struct Shared {
    addr: SocketAddr,
    target: SocketAddr,
    impairments: watch::Sender<Impairments>,
    up: DirectionCounters,
    down: DirectionCounters,
    udp_flows: AtomicU64,
    rebinds: AtomicU64,
    tcp_accepted: AtomicU64,
    tcp_cut: AtomicU64,
    commands: mpsc::UnboundedSender<Command>,
}

impl Shared {
    fn counters(&self, dir: Direction) -> &DirectionCounters {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }
}

/// Changes and reads a running link from any thread; cheap to clone.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
}

impl LinkHandle {
    /// Where clients send (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    pub fn impairments(&self) -> Impairments {
        self.shared.impairments.borrow().clone()
    }

    /// Changes anything; takes effect for the next packet (and for packets still
    /// held, as far as partitions and the UDP block go).
    pub fn update(&self, f: impl FnOnce(&mut Impairments)) {
        self.shared.impairments.send_modify(f);
    }

    /// A clean link again (no delay, loss, cap or partition).
    pub fn heal(&self) {
        self.update(|i| *i = Impairments::default());
    }

    /// Delay and jitter, both ways.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.update(|i| {
            i.both(|s| {
                s.delay = delay;
                s.jitter = jitter;
            })
        });
    }

    /// Loss probability, both ways.
    pub fn set_loss(&self, loss: f64) {
        self.update(|i| i.both(|s| s.loss = loss));
    }

    /// Reordering probability, both ways.
    pub fn set_reorder(&self, reorder: f64) {
        self.update(|i| i.both(|s| s.reorder = reorder));
    }

    /// Bandwidth cap in bytes per second, each way.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.update(|i| i.both(|s| s.bandwidth = bytes_per_sec));
    }

    pub fn set_partition(&self, on: bool) {
        self.update(|i| i.partition = on);
    }

    pub fn set_cut_tcp_on_partition(&self, on: bool) {
        self.update(|i| i.cut_tcp_on_partition = on);
    }

    pub fn set_block_udp(&self, on: bool) {
        self.update(|i| i.block_udp = on);
    }

    /// Forgets every UDP flow: the next datagram from each client gets a new
    /// upstream socket, so the target sees it from a new port (QUIC migration).
    /// Replies to the old port are lost, as behind a NAT that lost its mapping.
    pub fn rebind(&self) {
        // Counted here, so a test that reads the count after calling sees it.
        self.shared.rebinds.fetch_add(1, Ordering::Relaxed);
        let _ = self.shared.commands.send(Command::Rebind);
    }

    pub fn stats(&self) -> LinkStats {
        let s = &self.shared;
        LinkStats {
            up: s.up.snapshot(),
            down: s.down.snapshot(),
            udp_flows: s.udp_flows.load(Ordering::Relaxed),
            rebinds: s.rebinds.load(Ordering::Relaxed),
            tcp_accepted: s.tcp_accepted.load(Ordering::Relaxed),
            tcp_cut: s.tcp_cut.load(Ordering::Relaxed),
        }
    }
}

/// A running relay; stops (closing its sockets and connections) on drop. Derefs to
/// its [`LinkHandle`]; clone [`LinkEmulator::handle`] to give other threads one.
pub struct LinkEmulator {
    handle: LinkHandle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for LinkEmulator {
    type Target = LinkHandle;
    fn deref(&self) -> &LinkHandle {
        &self.handle
    }
}

impl LinkEmulator {
    /// Binds and starts the relay; panics if the address cannot be bound.
    pub fn start(config: LinkConfig) -> LinkEmulator {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let listen = config.listen;
        let thread = std::thread::Builder::new()
            .name(format!("link-{listen}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (udp, tcp, shared, commands) = match bind(&config).await {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(LinkHandle { shared: shared.clone() }));
                    tokio::select! {
                        _ = shutdown_rx => {}
                        _ = run(shared, config.seed, udp, tcp, commands) => {}
                    }
                });
                // Dropping the runtime cancels every task and closes every socket.
            })
            .expect("spawning the link emulator thread");
        let handle = match ready_rx.recv() {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => panic!("link emulator on {listen}: {e}"),
            Err(_) => panic!("link emulator on {listen}: its thread died while starting"),
        };
        LinkEmulator { handle, shutdown: Some(shutdown_tx), thread: Some(thread) }
    }

    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enlarge_buffers(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    // Best effort: the *Force variants exceed the sysctl limits as root.
    let _ = setsockopt(sock, sockopt::RcvBufForce, &UDP_SOCKET_BUFFER);
    let _ = setsockopt(sock, sockopt::SndBufForce, &UDP_SOCKET_BUFFER);
}

type Bound = (Arc<UdpSocket>, TcpListener, Arc<Shared>, mpsc::UnboundedReceiver<Command>);

/// Binds UDP and TCP on one port (retrying when port 0 gave a UDP port whose TCP
/// twin is taken).
async fn bind(config: &LinkConfig) -> io::Result<Bound> {
    let mut attempt = 0;
    let (udp, tcp) = loop {
        attempt += 1;
        let udp = UdpSocket::bind(config.listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => break (udp, tcp),
            Err(e) if config.listen.port() == 0 && attempt < 20 && e.kind() == io::ErrorKind::AddrInUse => {
                continue;
            }
            Err(e) => return Err(e),
        }
    };
    enlarge_buffers(&udp);
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        addr: udp.local_addr()?,
        target: config.target,
        impairments: watch::Sender::new(config.impairments.clone()),
        up: DirectionCounters::default(),
        down: DirectionCounters::default(),
        udp_flows: AtomicU64::new(0),
        rebinds: AtomicU64::new(0),
        tcp_accepted: AtomicU64::new(0),
        tcp_cut: AtomicU64::new(0),
        commands: commands_tx,
    });
    Ok((Arc::new(udp), tcp, shared, commands_rx))
}

async fn run(
    shared: Arc<Shared>,
    seed: u64,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut rng = SplitMix64::new(seed);
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    let up = tokio::spawn(run_pipe(Direction::Up, shared.clone(), up_rx, rng.fork()));
    let down = tokio::spawn(run_pipe(Direction::Down, shared.clone(), down_rx, rng.fork()));
    let tcp = tokio::spawn(tcp_front(shared.clone(), tcp));
    udp_front(shared, udp, up_tx, down_tx, commands).await;
    up.abort();
    down.abort();
    tcp.abort();
}

// ---- UDP ----

/// A datagram on its way out, with the socket and address to send it from and to.
struct Datagram {
    data: Vec<u8>,
    out: Arc<UdpSocket>,
    to: SocketAddr,
}

/// Receives from clients, keeps one upstream socket per client address, and
/// hands datagrams to the up pipe.
async fn udp_front(
    shared: Arc<Shared>,
    listen: Arc<UdpSocket>,
    up: mpsc::UnboundedSender<Datagram>,
    down: mpsc::UnboundedSender<Datagram>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut flows: HashMap<SocketAddr, (Arc<UdpSocket>, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let unspecified: SocketAddr = match shared.target {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    loop {
        tokio::select! {
            // Commands first: a datagram sent after `rebind()` returned must see it.
            biased;
            cmd = commands.recv() => match cmd {
                Some(Command::Rebind) => {
                    for (_, (_, reader)) in flows.drain() {
                        reader.abort();
                    }
                    shared.udp_flows.store(0, Ordering::Relaxed);
                }
                None => return,
            },
            received = listen.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(x) => x,
                    // ICMP errors for earlier sends; nothing to do with this socket.
                    Err(_) => continue,
                };
                let upstream = match flows.get(&client) {
                    Some((sock, _)) => sock.clone(),
                    None => match UdpSocket::bind(unspecified).await {
                        Ok(sock) => {
                            enlarge_buffers(&sock);
                            let sock = Arc::new(sock);
                            let reader = tokio::spawn(udp_back(
                                sock.clone(),
                                shared.target,
                                client,
                                listen.clone(),
                                down.clone(),
                            ));
                            flows.insert(client, (sock.clone(), reader));
                            shared.udp_flows.store(flows.len() as u64, Ordering::Relaxed);
                            sock
                        }
                        Err(_) => {
                            shared.up.dropped(n);
                            continue;
                        }
                    },
                };
                let _ = up.send(Datagram { data: buf[..n].to_vec(), out: upstream, to: shared.target });
            }
        }
    }
}

/// Receives the target's replies on one flow's upstream socket.
async fn udp_back(
    sock: Arc<UdpSocket>,
    target: SocketAddr,
    client: SocketAddr,
    listen: Arc<UdpSocket>,
    down: mpsc::UnboundedSender<Datagram>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) if from == target => {
                let d = Datagram { data: buf[..n].to_vec(), out: listen.clone(), to: client };
                if down.send(d).is_err() {
                    return;
                }
            }
            // Only the target may answer through a mapping, as with a NAT.
            Ok(_) => {}
            Err(e)
                if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => {}
            Err(_) => return,
        }
    }
}

/// Runs one direction's [`Pipe`]: admits what arrives, sends what is due.
async fn run_pipe(
    dir: Direction,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Datagram>,
    rng: SplitMix64,
) {
    let counters = shared.counters(dir);
    let mut pipe: Pipe<Datagram> = Pipe::new(rng);
    loop {
        // Send what is due before waiting, so a steady inflow cannot starve the timer.
        while let Some(d) = pipe.pop_due(Instant::now()) {
            let blocked = {
                let i = shared.impairments.borrow();
                i.partition || i.block_udp
            };
            // A partition that starts while a packet is held loses it too.
            if blocked {
                counters.dropped(d.data.len());
                continue;
            }
            // Awaited, not `try_send_to`: that one trusts tokio's readiness cache,
            // which is empty for a socket the reactor has not polled yet (a new
            // flow), and would drop its first datagram. A UDP send does not block.
            match d.out.send_to(&d.data, d.to).await {
                Ok(_) => counters.forwarded(d.data.len()),
                Err(_) => counters.dropped(d.data.len()),
            }
        }
        let deadline = pipe.next_deadline();
        tokio::select! {
            biased;
            received = rx.recv() => {
                let Some(d) = received else { return };
                let len = d.data.len();
                let (blocked, shaping) = {
                    let i = shared.impairments.borrow();
                    (i.partition || i.block_udp, i.dir(dir).clone())
                };
                if blocked || pipe.push(Instant::now(), len, d, &shaping).is_err() {
                    counters.dropped(len);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
        }
    }
}

// ---- the pure core ----

/// Why [`Pipe::push`] dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Loss,
    QueueFull,
}

struct Scheduled<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Scheduled<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Held<T> {
    at: Instant,
    flush_at: Instant,
    item: T,
}

/// One direction of the link as a state machine: [`Pipe::push`] decides a
/// datagram's fate (loss, queueing for the cap, delay, jitter, reordering) at the
/// time it is given; [`Pipe::pop_due`] hands out what is due by then. Every
/// decision comes from the seeded generator, and it draws the same numbers per
/// datagram whatever the settings, so one seed gives one fate per datagram.
pub struct Pipe<T> {
    rng: SplitMix64,
    queue: BinaryHeap<Reverse<Scheduled<T>>>,
    seq: u64,
    /// When the cap's virtual transmitter is next free (token bucket as a clock).
    link_free_at: Option<Instant>,
    held: Option<Held<T>>,
}

impl<T> Pipe<T> {
    pub fn new(rng: SplitMix64) -> Pipe<T> {
        Pipe { rng, queue: BinaryHeap::new(), seq: 0, link_free_at: None, held: None }
    }

    /// Admits a datagram of `len` bytes at `now`, or drops it.
    pub fn push(&mut self, now: Instant, len: usize, item: T, s: &Shaping) -> Result<(), DropReason> {
        let lost = self.rng.chance(s.loss);
        let jitter_draw = self.rng.symmetric();
        let reorder = self.rng.chance(s.reorder);
        if lost {
            return Err(DropReason::Loss);
        }
        let departure = match s.bandwidth {
            None => now,
            Some(0) => return Err(DropReason::QueueFull),
            Some(rate) => {
                let rate = rate as f64;
                // Tokens never exceed the bucket: an idle link earns at most a burst.
                let full_bucket = now.checked_sub(Duration::from_secs_f64(s.burst_bytes as f64 / rate));
                let free = match (self.link_free_at, full_bucket) {
                    (Some(f), Some(b)) => f.max(b),
                    (Some(f), None) => f,
                    (None, b) => b.unwrap_or(now),
                };
                let done = free + Duration::from_secs_f64(len as f64 / rate);
                let wait = done.saturating_duration_since(now);
                // Half a byte of slack absorbs float rounding at an exactly full queue.
                if wait.as_secs_f64() * rate > s.queue_bytes as f64 + 0.5 {
                    return Err(DropReason::QueueFull);
                }
                self.link_free_at = Some(done);
                done.max(now)
            }
        };
        let offset = s.delay.as_secs_f64() + s.jitter.as_secs_f64() * jitter_draw;
        let at = departure + Duration::from_secs_f64(offset.max(0.0));
        if let Some(held) = self.held.take() {
            // This one overtakes the held one, which follows right behind it.
            self.schedule(at, item);
            self.schedule(held.at.max(at), held.item);
        } else if reorder {
            self.held = Some(Held { at, flush_at: at + REORDER_HOLD_MAX, item });
        } else {
            self.schedule(at, item);
        }
        Ok(())
    }

    fn schedule(&mut self, at: Instant, item: T) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at, seq: self.seq, item }));
    }

    /// When something is next due, if anything is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        let queued = self.queue.peek().map(|Reverse(s)| s.at);
        let held = self.held.as_ref().map(|h| h.flush_at);
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram due at `now`, in the order they are due.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.held.as_ref().is_some_and(|h| h.flush_at <= now)
            && let Some(h) = self.held.take()
        {
            self.schedule(h.at, h.item);
        }
        if self.queue.peek().is_some_and(|Reverse(s)| s.at <= now) {
            return self.queue.pop().map(|Reverse(s)| s.item);
        }
        None
    }

    /// Datagrams waiting (queued or held).
    pub fn len(&self) -> usize {
        self.queue.len() + usize::from(self.held.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---- TCP ----

async fn tcp_front(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        shared.tcp_accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(tcp_conn(shared.clone(), client));
    }
}

async fn tcp_conn(shared: Arc<Shared>, client: TcpStream) {
    let mut imp = shared.impairments.subscribe();
    let (partition, cut) = {
        let i = imp.borrow_and_update();
        (i.partition, i.cut_tcp_on_partition)
    };
    if partition {
        if cut {
            shared.tcp_cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Stalled: the client's handshake went through, nothing else does.
        if imp.wait_for(|i| !i.partition).await.is_err() {
            return;
        }
    }
    let upstream =
        match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(shared.target)).await {
            Ok(Ok(s)) => s,
            _ => return,
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let up = tcp_pump(Direction::Up, shared.clone(), client_r, upstream_w);
    let down = tcp_pump(Direction::Down, shared.clone(), upstream_r, client_w);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        cut = async { imp.wait_for(|i| i.partition && i.cut_tcp_on_partition).await.is_ok() } => {
            if cut {
                shared.tcp_cut.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Dropping the halves closes both connections.
}

/// Copies one direction of a TCP connection with the direction's delay and cap,
/// stalling while partitioned. Chunks go through a bounded channel, so a slow
/// side pushes back on the other instead of queueing without end.
async fn tcp_pump(
    dir: Direction,
    shared: Arc<Shared>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader = {
        let mut imp = shared.impairments.subscribe();
        async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if imp.wait_for(|i| !i.partition).await.is_err() {
                    break;
                }
                let delay = imp.borrow().dir(dir).delay;
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    };
    let writer = {
        let mut imp = shared.impairments.subscribe();
        let shared = shared.clone();
        async move {
            let mut free_at = Instant::now();
            while let Some((at, data)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                if imp.wait_for(|i| !i.partition).await.is_err() {
                    break;
                }
                let bandwidth = imp.borrow().dir(dir).bandwidth;
                if let Some(rate) = bandwidth {
                    // Pace: the chunk leaves once the cap has had time to send it.
                    let rate = rate.max(1) as f64;
                    free_at = free_at.max(Instant::now()) + Duration::from_secs_f64(data.len() as f64 / rate);
                    tokio::time::sleep_until(free_at).await;
                }
                // Counted before it is written: whoever sees the bytes arrive sees them counted.
                shared.counters(dir).tcp_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                if to.write_all(&data).await.is_err() {
                    break;
                }
            }
            // Pass the end of the stream on (half-close), as a router would.
            let _ = to.shutdown().await;
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Pushes `n` datagrams of `len` bytes at `now` and drains everything; the
    /// survivors in the order they left, with their exit times.
    fn run(
        pipe: &mut Pipe<u32>,
        s: &Shaping,
        start: Instant,
        n: u32,
        spacing: Duration,
    ) -> Vec<(u32, Instant)> {
        let mut out = Vec::new();
        for i in 0..n {
            let now = start + spacing * i;
            while let Some(d) = pipe.next_deadline().filter(|d| *d <= now) {
                while let Some(x) = pipe.pop_due(d) {
                    out.push((x, d));
                }
            }
            let _ = pipe.push(now, 100, i, s);
        }
        while let Some(d) = pipe.next_deadline() {
            while let Some(x) = pipe.pop_due(d) {
                out.push((x, d));
            }
        }
        out
    }

    #[test]
    fn delay_and_jitter_stay_in_bounds() {
        let s = Shaping { delay: ms(100), jitter: ms(20), ..Default::default() };
        let start = t0();
        let mut pipe = Pipe::new(SplitMix64::new(1));
        let mut sent = std::collections::HashMap::new();
        for i in 0..200u32 {
            sent.insert(i, start + ms(i.into()));
        }
        let out = run(&mut pipe, &s, start, 200, ms(1));
        assert_eq!(out.len(), 200);
        for (i, at) in &out {
            let d = *at - sent[i];
            assert!(d >= ms(80) && d <= ms(120), "datagram {i} took {d:?}");
        }
        let in_order = out.windows(2).all(|w| w[0].0 < w[1].0);
        assert!(!in_order, "jitter wider than the spacing reorders");
    }

    #[test]
    fn same_seed_same_fate_other_seed_other_fate() {
        let s = Shaping { loss: 0.3, jitter: ms(5), delay: ms(10), reorder: 0.1, ..Default::default() };
        let start = t0();
        let fate = |seed| {
            let mut pipe = Pipe::new(SplitMix64::new(seed));
            run(&mut pipe, &s, start, 500, ms(1)).into_iter().map(|(i, _)| i).collect::<Vec<_>>()
        };
        assert_eq!(fate(9), fate(9));
        assert_ne!(fate(9), fate(10));
        let kept = fate(9).len();
        assert!((300..400).contains(&kept), "{kept} of 500 kept at 30% loss");
    }

    #[test]
    fn reorder_puts_a_held_datagram_behind_the_next() {
        let s = Shaping { reorder: 1.0, ..Default::default() };
        let start = t0();
        let mut pipe = Pipe::new(SplitMix64::new(3));
        pipe.push(start, 10, 1, &s).unwrap();
        assert_eq!(pipe.pop_due(start), None, "held back");
        pipe.push(start + ms(1), 10, 2, &s).unwrap();
        assert_eq!(pipe.pop_due(start + ms(1)), Some(2));
        assert_eq!(pipe.pop_due(start + ms(1)), Some(1));
        // A lone held datagram still leaves, late.
        pipe.push(start + ms(2), 10, 3, &s).unwrap();
        assert_eq!(pipe.next_deadline(), Some(start + ms(2) + REORDER_HOLD_MAX));
        assert_eq!(pipe.pop_due(start + ms(3)), None);
        assert_eq!(pipe.pop_due(start + ms(2) + REORDER_HOLD_MAX), Some(3));
        assert!(pipe.is_empty());
    }

    #[test]
    fn bandwidth_cap_spaces_datagrams_and_drops_the_tail() {
        // 10 kB/s, 1 kB bucket, 2 kB queue: 100-byte datagrams every 10 ms fit
        // exactly; a burst of 50 gets the bucket's 10 through at once, 20 more
        // queued, and the rest dropped.
        let s =
            Shaping { bandwidth: Some(10_000), burst_bytes: 1_000, queue_bytes: 2_000, ..Default::default() };
        let start = t0();
        let mut pipe = Pipe::new(SplitMix64::new(5));
        let mut dropped = 0;
        for i in 0..50 {
            if pipe.push(start, 100, i, &s) == Err(DropReason::QueueFull) {
                dropped += 1;
            }
        }
        assert_eq!(dropped, 50 - 10 - 20, "bucket plus queue");
        let mut last = start;
        let mut n = 0;
        while let Some(d) = pipe.next_deadline() {
            while pipe.pop_due(d).is_some() {
                n += 1;
                last = d;
            }
        }
        assert_eq!(n, 30);
        // 20 queued datagrams of 100 bytes at 10 kB/s: the last leaves 200 ms in.
        let took = last - start;
        assert!(took >= ms(199) && took <= ms(201), "{took:?}");

        let mut pipe = Pipe::new(SplitMix64::new(5));
        let steady = run(&mut pipe, &s, start + ms(1000), 100, ms(10));
        assert_eq!(steady.len(), 100, "a flow under the cap loses nothing");
    }

    #[test]
    fn zero_bandwidth_lets_nothing_through() {
        let s = Shaping { bandwidth: Some(0), ..Default::default() };
        let mut pipe = Pipe::new(SplitMix64::new(0));
        assert_eq!(pipe.push(t0(), 1, 0, &s), Err(DropReason::QueueFull));
    }
}
