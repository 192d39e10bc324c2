//! Reaching the hub from a store's network: QUIC first, TCP with TLS when UDP is
//! blocked, and the reconnect back-off.
//!
//! [`Dialer::connect`] races the two transports the way browsers race IPv6 and IPv4
//! ("happy eyeballs"): QUIC gets a head start, TCP follows if QUIC has not answered
//! by then, and the first to complete its handshake wins. What worked is remembered,
//! so a device behind a UDP-dropping firewall goes straight to TCP next time; QUIC is
//! tried again now and then in case the firewall changed.
//!
//! Either way the result is a [`HubLink`] whose streams carry the same frames: on
//! QUIC a stream is a QUIC stream; on TCP each stream is its own TLS connection.

use anyhow::{Context, anyhow, bail};
use quinn::{ClientConfig, Connection, Endpoint};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long QUIC has on its own before TCP joins the race.
const QUIC_HEAD_START: Duration = Duration::from_secs(2);
/// After falling back to TCP, QUIC is tried first again after this long.
const REPROBE_QUIC_AFTER: Duration = Duration::from_secs(15 * 60);
/// Below common NAT UDP mapping timeouts (30 s and up), so the hub can always reach
/// a device behind a cheap router, and cheap: one small packet each way.
pub const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(25);

/// Each device keeps alive at its own pace, between 80 % and 100 % of
/// [`QUIC_KEEP_ALIVE`]: after a fleet-wide change every device was last active at the
/// same moment, and equal intervals would keep them in step, so that a restarted hub
/// met the whole fleet's reconnects in one burst.
pub fn jittered_keep_alive(random: f64) -> Duration {
    QUIC_KEEP_ALIVE.mul_f64(0.8 + 0.2 * random.clamp(0.0, 1.0))
}
/// A connection silent this long is dead: a keep-alive and its retransmissions went
/// unanswered. It bounds how long a device takes to notice a hub that vanished
/// without a stateless reset reaching it.
pub const QUIC_IDLE_TIMEOUT: Duration = shared_proto::wire::LINK_IDLE_TIMEOUT;

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "QUIC",
            Transport::Tcp => "TCP",
        })
    }
}

/// `host` of `host:port` (brackets of an IPv6 literal removed): the TLS server name.
pub fn server_name(hub: &str) -> &str {
    let host = hub.rsplit_once(':').map_or(hub, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

pub async fn resolve(hub: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(hub)
        .await
        .with_context(|| format!("resolving {hub}"))?
        .next()
        .ok_or_else(|| anyhow!("{hub} resolves to no address"))
}

pub fn client_endpoint() -> anyhow::Result<Endpoint> {
    let v6: SocketAddr = "[::]:0".parse()?;
    let v4: SocketAddr = "0.0.0.0:0".parse()?;
    Ok(Endpoint::client(v6).or_else(|_| Endpoint::client(v4))?)
}

pub fn client_config(tls: Arc<rustls::ClientConfig>) -> anyhow::Result<ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(jittered_keep_alive(random_unit())));
    transport.max_idle_timeout(Some(QUIC_IDLE_TIMEOUT.try_into()?));
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// TLS over TCP to the hub's fallback port.
struct TcpDialer {
    addr: String,
    connector: TlsConnector,
    name: ServerName<'static>,
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

impl TcpDialer {
    async fn dial(&self) -> anyhow::Result<TlsStream> {
        let attempt = async {
            let addr = resolve(&self.addr).await?;
            let tcp =
                TcpStream::connect(addr).await.with_context(|| format!("connecting to {}", self.addr))?;
            tune_socket(&tcp)?;
            let tls = self.connector.connect(self.name.clone(), tcp).await?;
            anyhow::Ok(tls)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| anyhow!("no TLS answer from {} within {CONNECT_TIMEOUT:?}", self.addr))?
    }
}

/// Keep-alive probes and a user timeout, so a dead hub is noticed without waiting
/// out TCP's retransmission limits (many minutes).
fn tune_socket(stream: &TcpStream) -> std::io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    use std::os::fd::AsFd;
    stream.set_nodelay(true)?;
    let fd = stream.as_fd();
    setsockopt(&fd, sockopt::KeepAlive, &true)?;
    setsockopt(&fd, sockopt::TcpKeepIdle, &(QUIC_KEEP_ALIVE.as_secs() as u32))?;
    setsockopt(&fd, sockopt::TcpKeepInterval, &10)?;
    setsockopt(&fd, sockopt::TcpKeepCount, &3)?;
    setsockopt(&fd, sockopt::TcpUserTimeout, &(QUIC_IDLE_TIMEOUT.as_millis() as u32))?;
    Ok(())
}

/// A live way to reach the hub; cheap to clone.
#[derive(Clone)]
pub enum HubLink {
    Quic(Connection),
    Tcp(Arc<TcpLink>),
}

pub struct TcpLink {
    dialer: Arc<TcpDialer>,
    /// The connection the race was won with, handed to the first stream.
    first: Mutex<Option<TlsStream>>,
}

impl HubLink {
    pub fn transport(&self) -> Transport {
        match self {
            HubLink::Quic(_) => Transport::Quic,
            HubLink::Tcp(_) => Transport::Tcp,
        }
    }

    /// Opens a stream to the hub, as a read half and a write half.
    pub async fn open_stream(&self) -> anyhow::Result<(BoxRead, BoxWrite)> {
        match self {
            HubLink::Quic(c) => {
                let (send, recv) = c.open_bi().await?;
                Ok((Box::new(recv), Box::new(send)))
            }
            HubLink::Tcp(t) => {
                let first = t.first.lock().unwrap_or_else(|p| p.into_inner()).take();
                let stream = match first {
                    Some(s) => s,
                    None => t.dialer.dial().await?,
                };
                let (r, w) = tokio::io::split(stream);
                Ok((Box::new(r), Box::new(w)))
            }
        }
    }

    /// Whether the link can still open streams.
    pub fn is_alive(&self) -> bool {
        match self {
            HubLink::Quic(c) => c.close_reason().is_none(),
            HubLink::Tcp(_) => true,
        }
    }

    /// The application error code the hub closed a QUIC connection with, if it did.
    pub fn hub_close_code(&self) -> Option<u64> {
        match self {
            HubLink::Quic(c) => match c.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(close)) => Some(close.error_code.into_inner()),
                _ => None,
            },
            HubLink::Tcp(_) => None,
        }
    }

    pub fn close(&self, reason: &[u8]) {
        if let HubLink::Quic(c) = self {
            c.close(0u32.into(), reason);
        }
    }
}

/// One hub the agent may reach: its QUIC address and its TCP fallback.
struct Target {
    quic: String,
    tcp: Arc<TcpDialer>,
}

/// Connects to a hub of the cluster by whichever transport works. With several hubs
/// (the cluster names them, `HubFrame::Hubs`), the one that worked last is tried
/// first, then the others from a random one on, so the devices of a hub that went
/// away spread over the rest.
pub struct Dialer {
    endpoint: Endpoint,
    quic: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    /// The hubs, which worked last, and whether to try it last (its link died).
    targets: Mutex<(Vec<Arc<Target>>, usize, bool)>,
    /// What worked last, and since when.
    preferred: Mutex<(Transport, Instant)>,
}

/// The order to try `n` hubs in: `first`, then the others from `offset` on.
pub fn try_order(n: usize, first: usize, offset: usize) -> Vec<usize> {
    if n == 0 {
        return vec![];
    }
    let first = first.min(n - 1);
    let others: Vec<usize> = (0..n).filter(|i| *i != first).collect();
    let mut order = vec![first];
    for k in 0..others.len() {
        order.push(others[(offset + k) % others.len()]);
    }
    order
}

/// The hubs to try: the cluster's, then the configured one when the cluster did not
/// name it (it may have been a load balancer's name, or a hub removed since).
pub fn hub_list(
    configured: &shared_proto::wire::HubEndpoint,
    learned: &[shared_proto::wire::HubEndpoint],
) -> Vec<shared_proto::wire::HubEndpoint> {
    let mut list: Vec<shared_proto::wire::HubEndpoint> = Vec::new();
    for h in learned.iter().chain(std::iter::once(configured)) {
        if !list.iter().any(|x| x.quic == h.quic) {
            list.push(h.clone());
        }
    }
    list
}

impl Dialer {
    /// `hubs` holds the QUIC and TCP `host:port` of each hub, the one to try first
    /// first; `tls` the client configuration (device certificate, or the enrolment pin).
    pub fn new(
        endpoint: Endpoint,
        hubs: &[shared_proto::wire::HubEndpoint],
        tls: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Dialer> {
        let dialer = Dialer {
            endpoint,
            quic: client_config(tls.clone())?,
            tls,
            targets: Mutex::new((vec![], 0, false)),
            preferred: Mutex::new((Transport::Quic, Instant::now())),
        };
        dialer.set_hubs(hubs)?;
        Ok(dialer)
    }

    /// Replaces the hubs to try; the one that worked last stays first if listed.
    pub fn set_hubs(&self, hubs: &[shared_proto::wire::HubEndpoint]) -> anyhow::Result<()> {
        if hubs.is_empty() {
            bail!("no hub to connect to");
        }
        let mut targets = Vec::with_capacity(hubs.len());
        for h in hubs {
            let name = ServerName::try_from(server_name(&h.tcp).to_string())
                .map_err(|e| anyhow!("{}: not a valid server name: {e}", h.tcp))?;
            let connector = TlsConnector::from(self.tls.clone());
            targets.push(Arc::new(Target {
                quic: h.quic.clone(),
                tcp: Arc::new(TcpDialer { addr: h.tcp.clone(), connector, name }),
            }));
        }
        let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let current = t.0.get(t.1).map(|c| c.quic.clone());
        let first = current.and_then(|q| targets.iter().position(|x| x.quic == q)).unwrap_or(0);
        let avoid = t.2;
        *t = (targets, first, avoid);
        Ok(())
    }

    /// The link to the hub that worked last died without a word from it (a hub that
    /// vanished, or a link that dropped): the next attempt tries the others first.
    pub fn avoid_current(&self) {
        self.targets.lock().unwrap_or_else(|p| p.into_inner()).2 = true;
    }

    fn preferred(&self) -> Transport {
        let (t, since) = *self.preferred.lock().unwrap_or_else(|p| p.into_inner());
        if t == Transport::Tcp && since.elapsed() >= REPROBE_QUIC_AFTER { Transport::Quic } else { t }
    }

    fn remember(&self, t: Transport) {
        let mut p = self.preferred.lock().unwrap_or_else(|p| p.into_inner());
        if p.0 != t {
            *p = (t, Instant::now());
        }
    }

    async fn connect_quic(&self, target: &Target) -> anyhow::Result<HubLink> {
        let hub = &target.quic;
        let addr = resolve(hub).await?;
        let connecting = self
            .endpoint
            .connect_with(self.quic.clone(), addr, server_name(hub))
            .with_context(|| format!("connecting to {hub}"))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("no QUIC answer from the hub at {hub} within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("QUIC to the hub at {hub}"))?;
        Ok(HubLink::Quic(conn))
    }

    async fn connect_tcp(&self, target: &Target, head_start: Duration) -> anyhow::Result<HubLink> {
        tokio::time::sleep(head_start).await;
        let tcp = &target.tcp;
        let stream = tcp.dial().await.with_context(|| format!("TCP to the hub at {}", tcp.addr))?;
        Ok(HubLink::Tcp(Arc::new(TcpLink { dialer: tcp.clone(), first: Mutex::new(Some(stream)) })))
    }

    /// Races QUIC against the TCP fallback to one hub; the first handshake to finish
    /// wins.
    async fn connect_to(&self, target: &Target) -> anyhow::Result<HubLink> {
        if self.preferred() == Transport::Tcp {
            return self.connect_tcp(target, Duration::ZERO).await;
        }
        let quic = self.connect_quic(target);
        let tcp = self.connect_tcp(target, QUIC_HEAD_START);
        tokio::pin!(quic, tcp);
        let (mut quic_err, mut tcp_err) = (None, None);
        let link = loop {
            tokio::select! {
                r = &mut quic, if quic_err.is_none() => match r {
                    Ok(link) => break link,
                    Err(e) => quic_err = Some(e),
                },
                r = &mut tcp, if tcp_err.is_none() => match r {
                    Ok(link) => break link,
                    Err(e) => tcp_err = Some(e),
                },
            }
            if let (Some(q), Some(t)) = (&quic_err, &tcp_err) {
                bail!("cannot reach the hub: {q:#}; fallback: {t:#}");
            }
        };
        if link.transport() == Transport::Tcp {
            let why = quic_err.map_or_else(|| "no answer yet".to_string(), |e| format!("{e:#}"));
            tracing::info!(hub = %target.tcp.addr, quic = %why, "QUIC is not getting through; using the TCP fallback");
        }
        self.remember(link.transport());
        Ok(link)
    }

    /// Connects to the hub tried first, else to each other hub in turn.
    pub async fn connect(&self) -> anyhow::Result<HubLink> {
        let (targets, first, avoid) = {
            let t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            (t.0.clone(), t.1, t.2)
        };
        let offset = (random_unit() * targets.len() as f64) as usize;
        let mut order = try_order(targets.len(), first, offset);
        if avoid {
            order.rotate_left(1);
        }
        let mut errors = Vec::new();
        for i in order {
            match self.connect_to(&targets[i]).await {
                Ok(link) => {
                    let mut t = self.targets.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(pos) = t.0.iter().position(|x| x.quic == targets[i].quic) {
                        if pos != t.1 && targets.len() > 1 {
                            tracing::info!(hub = %targets[i].quic, "connected to another hub of the cluster");
                        }
                        t.1 = pos;
                    }
                    t.2 = false;
                    return Ok(link);
                }
                Err(e) if targets.len() == 1 => return Err(e),
                Err(e) => errors.push(format!("{}: {e:#}", targets[i].quic)),
            }
        }
        bail!("cannot reach any hub of the cluster: {}", errors.join("; "))
    }
}

/// Exponential back-off with full jitter for reconnects: each wait is uniform in
/// [0, step), the step doubling from 1 s to `max`. Full jitter spreads a fleet that
/// lost the hub at the same moment evenly over the window instead of in waves.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_secs(1);

    pub fn new(max: Duration) -> Backoff {
        Backoff { step: Self::INITIAL, max }
    }

    pub fn reset(&mut self) {
        self.step = Self::INITIAL;
    }

    /// The longest the next wait can be.
    pub fn bound(&self) -> Duration {
        self.step
    }

    /// The next wait, given a random value in [0, 1).
    pub fn next_with(&mut self, random: f64) -> Duration {
        let wait = self.step.mul_f64(random.clamp(0.0, 1.0));
        self.step = (self.step * 2).min(self.max);
        wait
    }

    pub fn next_wait(&mut self) -> Duration {
        self.next_with(random_unit())
    }
}

/// A random value in [0, 1).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert_eq!(server_name("hub.example:7441"), "hub.example");
        assert_eq!(server_name("127.0.0.1:7441"), "127.0.0.1");
        assert_eq!(server_name("[::1]:7441"), "::1");
    }

    #[test]
    fn the_hub_that_worked_goes_first_and_the_others_from_a_random_one() {
        assert_eq!(try_order(1, 0, 5), [0]);
        assert_eq!(try_order(3, 1, 0), [1, 0, 2]);
        assert_eq!(try_order(3, 1, 1), [1, 2, 0]);
        assert_eq!(try_order(3, 7, 0), [2, 0, 1], "a stale index is clamped");
        assert!(try_order(0, 0, 0).is_empty());
        let hub = |q: &str| shared_proto::wire::HubEndpoint { quic: q.into(), tcp: q.into() };
        assert_eq!(hub_list(&hub("lb:1"), &[]), [hub("lb:1")]);
        assert_eq!(hub_list(&hub("b:1"), &[hub("a:1"), hub("b:1")]), [hub("a:1"), hub("b:1")]);
        assert_eq!(
            hub_list(&hub("lb:1"), &[hub("a:1")]),
            [hub("a:1"), hub("lb:1")],
            "the configured one last"
        );
    }

    #[test]
    fn backoff_has_full_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(4));
        assert_eq!(b.next_with(0.5), Duration::from_millis(500));
        assert_eq!(b.next_with(0.0), Duration::ZERO, "full jitter reaches zero");
        assert_eq!(b.next_with(0.5), Duration::from_secs(2));
        assert_eq!(b.bound(), Duration::from_secs(4));
        assert_eq!(b.next_with(0.999), Duration::from_secs(4).mul_f64(0.999));
        assert_eq!(b.bound(), Duration::from_secs(4), "capped");
        b.reset();
        assert_eq!(b.bound(), Duration::from_secs(1));
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
        assert_eq!(jittered_keep_alive(0.0), Duration::from_secs(20));
        assert_eq!(jittered_keep_alive(1.0), QUIC_KEEP_ALIVE);
    }
}
