//! `cargo xtask bench agent`: the agent's footprint and offline cold start, measured
//! on the static release binary with real containers (as root).
//!
//! - PSS of the agent and its runtime helper, idle, with 10 containers running;
//! - cold start with the hub unreachable after a simulated reboot (no containers, no
//!   runtime state): time from exec to 10 containers running.
//!
//! Prints `METRIC name value unit` lines, like the anchor scripts.

use crate::util::{cargo, is_root, run};
use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
pub struct Args {
    /// What to measure: `agent` or `fleet`.
    what: String,
    /// Cold-start repetitions.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Containers to run.
    #[arg(long, default_value_t = 10)]
    containers: usize,
    /// Give every container a readiness probe (exec `/bin/true` every 5 s) and also
    /// time the cold start until all are ready.
    #[arg(long)]
    probes: bool,
    /// Apply-latency repetitions: one container's spec changed, from the agent
    /// receiving the manifest to the new container's process running.
    #[arg(long, default_value_t = 20)]
    applies: usize,
    #[command(flatten)]
    fleet: crate::bench_fleet::FleetArgs,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn running_containers(runtime_dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(runtime_dir.join("containers")) else { return 0 };
    rd.flatten()
        .filter(|e| {
            std::fs::read(e.path().join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["status"] == "running")
        })
        .count()
}

pub fn run_task(args: Args) -> anyhow::Result<()> {
    if args.what == "fleet" {
        return crate::bench_fleet::run_task(args.fleet);
    }
    if args.what != "agent" {
        bail!(
            "unknown benchmark {:?}: use `agent` or `fleet` (container start: cargo bench -p agent-runtime)",
            args.what
        );
    }
    if !is_root() {
        bail!("the agent benchmark runs real containers: run it as root");
    }
    let root = crate::workspace_root();
    let agent = crate::agent_static::build("x86_64-unknown-linux-gnu")?;
    run(cargo().current_dir(&root).args(["build", "--release", "-p", "cloud-hub"]))?;
    let flotilla = root.join("target/release/flotilla");
    let dir = tempfile_dir()?;
    let result = bench(&args, &flotilla, &agent, &dir);
    if result.is_err() {
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("---- agent log (tail) ----");
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    let _ = Command::new(&agent).args(["reset", "--config"]).arg(dir.join("agent.toml")).output();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Seconds into the day of a log line's leading RFC 3339 UTC time
/// (`2026-12-03T02:09:51.982539Z`).
fn log_seconds(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split_once('T')?.1.strip_suffix('Z')?;
    let mut parts = t.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("flotilla-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn bench(args: &Args, flotilla: &Path, agent: &Path, dir: &Path) -> anyhow::Result<()> {
    let (api, quic) = (free_port()?, free_port()?);
    let hub_dir = dir.join("hub");
    let mut procs = Procs(vec![]);
    procs.0.push(
        Command::new(flotilla)
            .args(["hub", "serve", "--data-dir"])
            .arg(&hub_dir)
            .args([
                "--api-listen",
                &format!("127.0.0.1:{api}"),
                "--quic-listen",
                &format!("127.0.0.1:{quic}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("hub.log"))?)
            .spawn()?,
    );
    let context = hub_dir.join("context.json");
    let cli = |a: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(flotilla).args(a).env("FLOTILLA_CONTEXT", &context).output()?;
        if !out.status.success() {
            bail!("flotilla {}: {}", a.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait("the hub", Duration::from_secs(60), || Ok(cli(&["get", "sites"]).ok()))?;
    let image = dir.join("busybox.oci.tar");
    images::testing::busybox_image(&image, "bench:1", &["/bin/sleep", "100000"])?;
    cli(&["image", "import", image.to_str().context("path")?])?;
    let token = cli(&["token", "create", "-q"])?.trim().to_string();
    let runtime_dir = dir.join("agent-run");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "hub = \"127.0.0.1:{quic}\"\nenrolment_token = \"{token}\"\nname = \"bench\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n",
            dir.join("agent").display(),
            runtime_dir.display()
        ),
    )?;
    let start_agent = || -> anyhow::Result<Child> {
        Ok(Command::new(agent)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log"))?)
            .spawn()?)
    };
    let mut agent_proc = start_agent()?;
    let containers: Vec<String> = (0..args.containers)
        .map(|i| {
            let probe = if args.probes {
                ", readinessProbe: {exec: {command: [\"/bin/true\"]}, periodSeconds: 5}"
            } else {
                ""
            };
            format!(
                "    - {{name: c{i}, image: \"bench:1\", resources: {{limits: {{memory: 16Mi, pids: 16}}}}{probe}}}"
            )
        })
        .collect();
    let app = format!(
        // `sleep` as a container's first process ignores SIGTERM: without a grace period
        // the apply latency measures the agent, not the old container's grace.
        "apiVersion: flotilla.dev/v1\nkind: App\nmetadata: {{name: bench}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n{}\n",
        containers.join("\n")
    );
    let app_path = dir.join("app.yaml");
    std::fs::write(&app_path, &app)?;
    let app_text = app;
    cli(&["apply", "-f", app_path.to_str().context("path")?])?;
    let n = args.containers;
    wait("containers running", Duration::from_secs(120), || {
        Ok((running_containers(&runtime_dir) == n).then_some(()))
    })?;
    // Let the agent settle: reports sent, pulls done, allocator quiet.
    let settle = Instant::now();
    wait("the app to be Running", Duration::from_secs(60), || {
        let v: Value = serde_json::from_str(&cli(&["get", "apps", "bench", "-o", "json"])?)?;
        Ok((v["status"]["phase"] == "Running" && settle.elapsed() > Duration::from_secs(10)).then_some(()))
    })?;
    let pid = agent_proc.id();
    let helpers = children(pid);
    let agent_pss = pss_kib(pid);
    let helper_pss: u64 = helpers.iter().map(|p| pss_kib(*p)).sum();
    println!("# agent pid {pid}, helper pids {helpers:?}, {n} containers running");
    println!("METRIC agent_pss_kib {agent_pss} KiB");
    println!("METRIC agent_helper_pss_kib {helper_pss} KiB");
    println!("METRIC agent_total_pss_kib {} KiB", agent_pss + helper_pss);

    // Apply latency: the agent's own log says when the manifest arrived ("new desired
    // state", after it is stored) and when the replacement container runs ("container
    // started", after libcontainer's start returned).
    let log = dir.join("agent.log");
    let mut applied = Vec::new();
    for i in 0..args.applies {
        let from = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        let changed = app_text.replacen(
            "name: c0, image: \"bench:1\"",
            &format!("name: c0, image: \"bench:1\", env: [{{name: STEP, value: \"{i}\"}}]"),
            1,
        );
        std::fs::write(&app_path, changed)?;
        cli(&["apply", "-f", app_path.to_str().context("path")?])?;
        let ms = wait("the changed container to run", Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let text = &text[from.min(text.len())..];
            let received = text.lines().find(|l| l.contains("new desired state")).and_then(log_seconds);
            let started = text
                .lines()
                .find(|l| l.contains("container started") && l.contains("id=bench_c0_"))
                .and_then(log_seconds);
            Ok(received.zip(started).map(|(a, b)| ((b - a).rem_euclid(86_400.0)) * 1000.0))
        })?;
        println!("# apply {i}: {ms:.1} ms");
        applied.push(ms);
    }
    if !applied.is_empty() {
        applied.sort_by(f64::total_cmp);
        let pct = |p: f64| applied[((p * applied.len() as f64).ceil() as usize).clamp(1, applied.len()) - 1];
        println!("METRIC agent_apply_ms_p50 {:.1} ms", pct(0.5));
        println!("METRIC agent_apply_ms_p99 {:.1} ms", pct(0.99));
    }

    // Cold start, hub unreachable, after a simulated reboot.
    let _ = procs.0[0].kill();
    let _ = procs.0[0].wait();
    let mut times = Vec::new();
    let mut ready_times = Vec::new();
    let readied = |from: usize| -> usize {
        std::fs::read_to_string(&log)
            .map(|t| t[from.min(t.len())..].matches("container ready").count())
            .unwrap_or(0)
    };
    for i in 0..args.runs {
        let _ = agent_proc.kill();
        let _ = agent_proc.wait();
        let out = Command::new(agent).args(["reset", "--config"]).arg(&config).output()?;
        if !out.status.success() {
            bail!("reset: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&runtime_dir);
        let log_from = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
        let t0 = Instant::now();
        agent_proc = start_agent()?;
        wait("cold start", Duration::from_secs(60), || {
            Ok((running_containers(&runtime_dir) == n).then_some(()))
        })?;
        let dt = t0.elapsed();
        println!("# cold start {i}: {:.1} ms", dt.as_secs_f64() * 1000.0);
        times.push(dt.as_secs_f64() * 1000.0);
        if args.probes {
            wait("every container ready", Duration::from_secs(60), || {
                Ok((readied(log_from) >= n).then_some(()))
            })?;
            let dt = t0.elapsed();
            println!("# ready {i}: {:.1} ms", dt.as_secs_f64() * 1000.0);
            ready_times.push(dt.as_secs_f64() * 1000.0);
        }
    }
    let _ = agent_proc.kill();
    let _ = agent_proc.wait();
    times.sort_by(f64::total_cmp);
    println!("METRIC agent_cold_start_{n}_containers_ms_median {:.1} ms", times[times.len() / 2]);
    println!("METRIC agent_cold_start_{n}_containers_ms_max {:.1} ms", times[times.len() - 1]);
    if !ready_times.is_empty() {
        ready_times.sort_by(f64::total_cmp);
        println!("METRIC agent_cold_start_{n}_ready_ms_median {:.1} ms", ready_times[ready_times.len() / 2]);
        println!("METRIC agent_cold_start_{n}_ready_ms_max {:.1} ms", ready_times[ready_times.len() - 1]);
    }
    Ok(())
}
