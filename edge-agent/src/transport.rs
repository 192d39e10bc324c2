//! QUIC to the hub: one client endpoint, connections with a deadline, and the
//! reconnect back-off (jittered, so a store's devices do not all reconnect in step).

use anyhow::{Context, anyhow};
use quinn::{ClientConfig, Connection, Endpoint};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    // The hub's heartbeat interval keeps the path alive; QUIC keep-alives would only
    // add idle traffic. The hub's own (shorter) idle timeout wins the negotiation.
    transport.max_idle_timeout(Some(Duration::from_secs(180).try_into()?));
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

pub async fn connect(endpoint: &Endpoint, hub: &str, config: ClientConfig) -> anyhow::Result<Connection> {
    let addr = resolve(hub).await?;
    let connecting = endpoint
        .connect_with(config, addr, server_name(hub))
        .with_context(|| format!("connecting to {hub}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow!("no answer from the hub at {hub} within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to the hub at {hub}"))
}

/// Exponential back-off with jitter for reconnects: 0.5 s doubling to `max`, each
/// wait randomised to 50–100 % of its step.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_millis(500);

    pub fn new(max: Duration) -> Backoff {
        Backoff { step: Self::INITIAL, max }
    }

    pub fn reset(&mut self) {
        self.step = Self::INITIAL;
    }

    /// The next wait, given a random value in [0, 1).
    pub fn next_with(&mut self, random: f64) -> Duration {
        let wait = self.step.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0);
        self.step = (self.step * 2).min(self.max);
        wait
    }

    pub fn next_wait(&mut self) -> Duration {
        let mut b = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        self.next_with(f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX))
    }
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
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_secs(4));
        assert_eq!(b.next_with(1.0), Duration::from_millis(500));
        assert_eq!(b.next_with(0.0), Duration::from_millis(500));
        assert_eq!(b.next_with(1.0), Duration::from_secs(2));
        assert_eq!(b.next_with(1.0), Duration::from_secs(4));
        assert_eq!(b.next_with(1.0), Duration::from_secs(4));
        b.reset();
        assert_eq!(b.next_with(1.0), Duration::from_millis(500));
    }
}
