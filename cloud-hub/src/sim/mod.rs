//! `flotilla sim`: a fleet of protocol-level agents in one process, for scale tests
//! and benchmarks. Each simulated agent enrols with a real CSR and certificate, keeps
//! a real QUIC connection with mutual TLS, and runs the agent's own sync core
//! (`shared_proto::session::AgentSession`); it applies desired manifests at once and
//! reports them running, without containers.
//!
//! It prints a progress line every second on stderr (plain lines rather than a
//! redrawn bar: the simulator's output is read by scripts and CI logs), can keep the
//! same numbers as JSON in a stats file, and prints a JSON summary as its last line
//! on stdout when it stops (SIGINT, SIGTERM or `--duration`).

pub mod agent;
pub mod stats;

use crate::cli::client::{HubArgs, HubClient};
use anyhow::{Context, anyhow};
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use shared_proto::clock::SystemClock;
use stats::SimStats;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// How many agents to simulate.
    #[arg(long)]
    pub agents: usize,
    /// Spread them over this many sites (`<prefix>-site-<n>`); 0: no sites.
    #[arg(long, default_value_t = 0)]
    pub sites: usize,
    /// Device names are `<prefix>-<n>`.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Labels every simulated device gets (`key=value`, repeatable); `sim=true` always.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The hub's agent address (default: the context's).
    #[arg(long)]
    pub hub_quic: Option<String>,
    /// Keep device identities here and reuse them on the next run.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Rewrite this file with the JSON summary every second.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// Enrolments in flight at once.
    #[arg(long, default_value_t = 64)]
    pub enrol_concurrency: usize,
    /// Agents sharing one UDP socket.
    #[arg(long, default_value_t = 500)]
    pub agents_per_socket: usize,
    /// Start the agents' first connections spread over this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub ramp: Duration,
}

fn parse_labels(labels: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    out.insert("sim".into(), "true".into());
    for l in labels {
        let (k, v) = l.split_once('=').ok_or_else(|| anyhow!("--label {l:?}: expected key=value"))?;
        out.insert(k.to_string(), v.into());
    }
    Ok(out)
}

fn site_name(prefix: &str, site: usize) -> String {
    format!("{prefix}-site-{site:04}")
}

/// Creates the sites and one enrolment token per site (or one for all).
async fn tokens(client: &HubClient, args: &SimArgs) -> anyhow::Result<Vec<String>> {
    let labels = parse_labels(&args.labels)?;
    let groups = args.sites.max(1);
    let per_group = args.agents.div_ceil(groups) as u32 + 1;
    let mut out = Vec::with_capacity(groups);
    for g in 0..groups {
        let site = if args.sites > 0 { site_name(&args.prefix, g) } else { String::new() };
        if !site.is_empty() {
            let body = json!({ "apiVersion": shared_proto::API_VERSION, "kind": "Site",
                "metadata": { "name": site }, "spec": { "displayName": format!("simulated store {g}") } });
            client.send_json(Method::PUT, &format!("/api/v1/sites/{site}"), &body).await?;
        }
        let body = json!({ "ttl": "24h", "maxUses": per_group, "labels": labels, "site": site,
            "description": format!("flotilla sim {}", args.prefix) });
        let (_, v) = client.send_json(Method::POST, "/api/v1/enrolment-tokens", &body).await?;
        out.push(v["token"].as_str().ok_or_else(|| anyhow!("the hub returned no token"))?.to_string());
    }
    Ok(out)
}

async fn wait_for_stop(duration: Option<Duration>) {
    let signals = crate::hub::wait_for_signal();
    match duration {
        Some(d) => {
            tokio::select! {
                _ = signals => {}
                _ = tokio::time::sleep(d) => {}
            }
        }
        None => signals.await,
    }
}

pub async fn run(hub_args: &HubArgs, args: SimArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let clock = SystemClock::shared();
    let client = HubClient::connect(hub_args)?;
    let ca = client.ca_cert().clone();
    let hub_addr_text = args.hub_quic.clone().unwrap_or_else(|| client.quic.clone());
    if hub_addr_text.is_empty() {
        anyhow::bail!("no agent address: pass --hub-quic or a context file written by the hub");
    }
    let hub: SocketAddr = tokio::net::lookup_host(&hub_addr_text)
        .await
        .with_context(|| format!("resolving {hub_addr_text}"))?
        .next()
        .ok_or_else(|| anyhow!("{hub_addr_text} resolves to no address"))?;
    let hub_name = agent::server_name(&hub_addr_text).to_string();
    if let Some(dir) = &args.state_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let n_sockets = args.agents.div_ceil(args.agents_per_socket.max(1)).max(1);
    let endpoints: Vec<quinn::Endpoint> = (0..n_sockets)
        .map(|_| -> std::io::Result<quinn::Endpoint> {
            let socket = crate::sync::udp_socket("0.0.0.0:0".parse().expect("address"))?;
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
        })
        .collect::<Result<_, _>>()
        .context("opening UDP sockets")?;
    let stats = Arc::new(SimStats::new(args.agents));

    let reporter = {
        let stats = stats.clone();
        let path = args.stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let s = stats.summary(started.elapsed().as_millis() as u64);
                eprintln!(
                    "sim: {}/{} enrolled, {} connected, {} sessions ({} reconnects, {} told to retry later), {} manifests, udp {} B out / {} B in",
                    s.enrolled,
                    s.agents,
                    s.connected,
                    s.sessions,
                    s.reconnects,
                    s.retry_after,
                    s.manifests,
                    s.udp_tx_bytes,
                    s.udp_rx_bytes
                );
                if let Some(p) = &path
                    && let Ok(bytes) = serde_json::to_vec(&s)
                {
                    let _ = provisioning::files::write_file_atomic(p, &bytes, 0o644);
                }
            }
        })
    };

    // Identities: reuse the kept ones, enrol the rest.
    let tokens = match (0..args.agents).all(|i| {
        args.state_dir
            .as_deref()
            .is_some_and(|d| agent::SimIdentity::load(d, &format!("{}-{i:05}", args.prefix)).is_some())
    }) {
        true => vec![],
        false => tokens(&client, &args).await.context("creating enrolment tokens")?,
    };
    let ramp = args.ramp;
    let n = args.agents;
    let mut identities = futures::stream::iter(0..n)
        .map(|idx| {
            let name = format!("{}-{idx:05}", args.prefix);
            let token = tokens.get(if args.sites > 0 { idx % args.sites } else { 0 }).cloned();
            let endpoint = endpoints[idx % endpoints.len()].clone();
            let keep = args.state_dir.clone();
            let hub_name = hub_name.clone();
            async move {
                if let Some(id) = keep.as_deref().and_then(|d| agent::SimIdentity::load(d, &name)) {
                    return (idx, Ok(id));
                }
                let token = match token {
                    Some(t) => t,
                    None => return (idx, Err(anyhow!("no enrolment token for {name}"))),
                };
                (idx, agent::enrol(&endpoint, hub, &hub_name, &token, &name, keep.as_deref()).await)
            }
        })
        .buffer_unordered(args.enrol_concurrency.max(1));
    let mut tasks = Vec::with_capacity(n);
    let stop = wait_for_stop(args.duration);
    tokio::pin!(stop);
    let mut stopped = false;
    loop {
        let next = tokio::select! {
            next = identities.next() => next,
            _ = &mut stop => { stopped = true; None }
        };
        let Some((idx, identity)) = next else { break };
        let identity = match identity {
            Ok(id) => id,
            Err(e) => {
                eprintln!("sim: agent {idx}: {e:#}");
                continue;
            }
        };
        stats.enrolled();
        let task = agent::AgentTask {
            idx,
            identity,
            endpoint: endpoints[idx % endpoints.len()].clone(),
            hub,
            hub_name: hub_name.clone(),
            ca: ca.clone(),
            stats: stats.clone(),
            clock: clock.clone(),
        };
        // Spread the first connections over the ramp, as a fleet coming up would.
        let delay = ramp.mul_f64(idx as f64 / n.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            agent::run(task).await
        }));
    }
    drop(identities);
    if !stopped {
        stop.await;
    }
    for t in &tasks {
        t.abort();
    }
    reporter.abort();
    let summary = stats.summary(started.elapsed().as_millis() as u64);
    if let Some(p) = &args.stats {
        let _ = provisioning::files::write_file_atomic(p, &serde_json::to_vec(&summary)?, 0o644);
    }
    for e in &endpoints {
        e.close(0u32.into(), b"simulation over");
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
