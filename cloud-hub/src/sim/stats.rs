//! What the simulator counts, and the JSON it reports: connections, sessions,
//! manifests, bytes at the UDP socket (QUIC's own per-connection counters), and for
//! each app generation when every agent received it, as wall-clock milliseconds so a
//! benchmark can subtract the moment it made the change.

use serde::Serialize;
use shared_proto::Timestamp;
use shared_proto::manifest::DesiredManifest;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct SimStats {
    pub n_agents: usize,
    enrolled: AtomicU64,
    connected: AtomicU64,
    sessions: AtomicU64,
    reconnects: AtomicU64,
    retry_after: AtomicU64,
    connect_failures: AtomicU64,
    manifests: AtomicU64,
    /// Bytes of connections that have ended.
    closed_tx: AtomicU64,
    closed_rx: AtomicU64,
    /// The live connection of each agent, for its byte counters.
    connections: Vec<Mutex<Option<quinn::Connection>>>,
    /// (app, generation) → when each agent first received it (ms since the epoch).
    received: Mutex<BTreeMap<(String, u64), Vec<u64>>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GenerationSummary {
    pub app: String,
    pub generation: u64,
    pub agents: usize,
    pub first_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub last_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub agents: usize,
    pub enrolled: u64,
    pub connected: u64,
    pub sessions: u64,
    pub reconnects: u64,
    pub retry_after: u64,
    pub connect_failures: u64,
    pub manifests: u64,
    pub udp_tx_bytes: u64,
    pub udp_rx_bytes: u64,
    pub elapsed_ms: u64,
    /// The newest generation of each app the agents received.
    pub generations: Vec<GenerationSummary>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

impl SimStats {
    pub fn new(n_agents: usize) -> SimStats {
        SimStats {
            n_agents,
            connections: (0..n_agents).map(|_| Mutex::new(None)).collect(),
            ..Default::default()
        }
    }

    pub fn enrolled(&self) {
        self.enrolled.fetch_add(1, Relaxed);
    }

    /// A session was welcomed; `again` when this agent had one before.
    pub fn welcomed(&self, again: bool) {
        self.sessions.fetch_add(1, Relaxed);
        if again {
            self.reconnects.fetch_add(1, Relaxed);
        }
        self.connected.fetch_add(1, Relaxed);
    }

    pub fn session_ended(&self) {
        self.connected.fetch_sub(1, Relaxed);
    }

    pub fn retry_after(&self) {
        self.retry_after.fetch_add(1, Relaxed);
    }

    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Relaxed);
    }

    pub fn set_connection(&self, idx: usize, conn: Option<quinn::Connection>) {
        let Some(slot) = self.connections.get(idx) else { return };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            let s = old.stats();
            self.closed_tx.fetch_add(s.udp_tx.bytes, Relaxed);
            self.closed_rx.fetch_add(s.udp_rx.bytes, Relaxed);
        }
        *slot = conn;
    }

    /// A new manifest arrived; records the first receipt of each app generation.
    pub fn desired(&self, new: &DesiredManifest, held: &DesiredManifest, now: Timestamp) {
        self.manifests.fetch_add(1, Relaxed);
        let mut received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        for app in &new.apps {
            let had = held.apps.iter().any(|a| a.name == app.name && a.generation == app.generation);
            if !had {
                received.entry((app.name.clone(), app.generation)).or_default().push(now.millis());
            }
        }
    }

    fn udp_bytes(&self) -> (u64, u64) {
        let (mut tx, mut rx) = (self.closed_tx.load(Relaxed), self.closed_rx.load(Relaxed));
        for slot in &self.connections {
            if let Some(c) = slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let s = c.stats();
                tx += s.udp_tx.bytes;
                rx += s.udp_rx.bytes;
            }
        }
        (tx, rx)
    }

    pub fn summary(&self, elapsed_ms: u64) -> Summary {
        let (udp_tx_bytes, udp_rx_bytes) = self.udp_bytes();
        let received = self.received.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest: BTreeMap<&str, (u64, &Vec<u64>)> = BTreeMap::new();
        for ((app, generation), times) in received.iter() {
            newest.insert(app.as_str(), (*generation, times));
        }
        let generations = newest
            .into_iter()
            .map(|(app, (generation, times))| {
                let mut sorted = times.clone();
                sorted.sort_unstable();
                GenerationSummary {
                    app: app.to_string(),
                    generation,
                    agents: sorted.len(),
                    first_ms: sorted.first().copied().unwrap_or(0),
                    p50_ms: percentile(&sorted, 0.5),
                    p99_ms: percentile(&sorted, 0.99),
                    last_ms: sorted.last().copied().unwrap_or(0),
                }
            })
            .collect();
        Summary {
            agents: self.n_agents,
            enrolled: self.enrolled.load(Relaxed),
            connected: self.connected.load(Relaxed),
            sessions: self.sessions.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            retry_after: self.retry_after.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            manifests: self.manifests.load(Relaxed),
            udp_tx_bytes,
            udp_rx_bytes,
            elapsed_ms,
            generations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::manifest::DesiredApp;
    use shared_proto::{NetworkMode, RestartPolicy};

    fn manifest(generation: u64) -> DesiredManifest {
        DesiredManifest {
            device: "d".into(),
            revision: generation,
            apps: vec![DesiredApp {
                name: "web".into(),
                generation,
                restart_policy: RestartPolicy::Always,
                network: NetworkMode::Host,
                containers: vec![],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn generations_are_summarised_by_first_receipt() {
        let s = SimStats::new(3);
        let empty = DesiredManifest::default();
        for (i, t) in [100u64, 300, 200].into_iter().enumerate() {
            s.desired(&manifest(1), &empty, Timestamp(t));
            // The same generation again (a reconnect) is not a new receipt.
            s.desired(&manifest(1), &manifest(1), Timestamp(t + 1000 + i as u64));
        }
        s.desired(&manifest(2), &manifest(1), Timestamp(900));
        let sum = s.summary(1);
        assert_eq!(sum.manifests, 7);
        assert_eq!(sum.generations.len(), 1, "only the newest generation");
        assert_eq!(
            sum.generations[0],
            GenerationSummary {
                app: "web".into(),
                generation: 2,
                agents: 1,
                first_ms: 900,
                p50_ms: 900,
                p99_ms: 900,
                last_ms: 900
            }
        );
        assert_eq!(percentile(&[100, 200, 300], 0.5), 200);
        assert_eq!(percentile(&[100, 200, 300], 0.99), 300);
    }
}
