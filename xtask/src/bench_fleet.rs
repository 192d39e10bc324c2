//! `cargo xtask bench fleet --agents N`: one release hub and `flotilla sim` side by
//! side on this machine, measuring what a fleet costs the hub:
//!
//! - agents held, and hub RSS per agent;
//! - a desired change to every agent, until each has it: p50 and p99;
//! - an app change that touches one device: CPU time of the controller pass;
//! - idle bytes per agent per hour at the UDP socket, with 60 s liveness;
//! - after a SIGKILL and restart of the hub, the time until every agent is back.
//!
//! Prints `METRIC name value unit` lines, like the anchor scripts.

use crate::bench::{free_port, wait};
use crate::util::{cargo, run};
use anyhow::{Context, bail};
use clap::Parser;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug, Clone)]
pub struct FleetArgs {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Sites they are spread over (default: a quarter of the agents: retail stores).
    #[arg(long)]
    pub sites: Option<usize>,
    /// How long to count idle traffic.
    #[arg(long, default_value_t = 120)]
    pub idle_secs: u64,
    /// Liveness: the hub's heartbeat interval.
    #[arg(long, default_value = "60s")]
    pub heartbeat: String,
    /// Keep the hub's and the simulator's logs and data (the path is printed).
    #[arg(long)]
    pub keep: bool,
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

struct Bench {
    flotilla: PathBuf,
    dir: PathBuf,
    context: PathBuf,
    api: u16,
    quic: u16,
    heartbeat: String,
}

impl Bench {
    fn start_hub(&self) -> anyhow::Result<Proc> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("hub.log"))?;
        let child = Command::new(&self.flotilla)
            .args(["hub", "serve", "--data-dir"])
            .arg(self.dir.join("hub"))
            .args(["--api-listen", &format!("127.0.0.1:{}", self.api)])
            .args(["--quic-listen", &format!("127.0.0.1:{}", self.quic)])
            .args(["--heartbeat-interval", &self.heartbeat])
            .env("FLOTILLA_LOG", "info,cloud_hub::controllers=debug,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let hub = Proc { child };
        wait("the hub", Duration::from_secs(60), || Ok(self.cli(&["get", "sites"]).ok()))?;
        Ok(hub)
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.flotilla).args(args).env("FLOTILLA_CONTEXT", &self.context).output()?;
        if !out.status.success() {
            bail!("flotilla {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        self.cli(&["apply", "-f", path.to_str().context("path")?])?;
        Ok(())
    }

    fn stats(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(self.dir.join("sim-stats.json")).ok()?).ok()
    }

    fn count(&self, key: &str) -> u64 {
        self.stats().and_then(|s| s[key].as_u64()).unwrap_or(0)
    }

    /// (agents, p50, p99) of an app generation's receipt times, relative to `t0`.
    fn received(&self, app: &str, generation: u64, t0: u64) -> Option<(u64, u64, u64)> {
        let s = self.stats()?;
        let g = s["generations"]
            .as_array()?
            .iter()
            .find(|g| g["app"] == app && g["generation"] == generation)?
            .clone();
        Some((
            g["agents"].as_u64()?,
            g["p50_ms"].as_u64()?.saturating_sub(t0),
            g["p99_ms"].as_u64()?.saturating_sub(t0),
        ))
    }

    /// The CPU time of the first controller pass after `since_line` that wrote manifests.
    fn pass_cpu_after(&self, since_line: usize) -> Option<(u64, String)> {
        let log = std::fs::read_to_string(self.dir.join("hub.log")).ok()?;
        log.lines().skip(since_line).filter(|l| l.contains("controller pass")).find_map(|l| {
            let field = |name: &str| -> Option<u64> {
                let rest = &l[l.find(&format!("{name}="))? + name.len() + 1..];
                rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            };
            (field("manifests")? >= 1).then(|| (field("cpu_us").unwrap_or(0), l.to_string()))
        })
    }

    fn log_lines(&self) -> usize {
        std::fs::read_to_string(self.dir.join("hub.log")).map(|s| s.lines().count()).unwrap_or(0)
    }
}

fn app_yaml(name: &str, selector: &str, marker: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  selector:\n    matchLabels: {{{selector}}}\n  containers:\n    - name: c\n      image: bench:1\n      env: [{{name: MARKER, value: \"{marker}\"}}]\n"
    )
}

pub fn run_task(args: FleetArgs) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    run(cargo().current_dir(&root).args(["build", "--release", "-p", "cloud-hub"]))?;
    let dir = std::env::temp_dir().join(format!("flotilla-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let b = Bench {
        flotilla: root.join("target/release/flotilla"),
        context: dir.join("hub/context.json"),
        dir: dir.clone(),
        api: free_port()?,
        quic: free_port()?,
        heartbeat: args.heartbeat.clone(),
    };
    let result = bench(&b, &args);
    if args.keep {
        println!("# kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn bench(b: &Bench, args: &FleetArgs) -> anyhow::Result<()> {
    let n = args.agents;
    let sites = args.sites.unwrap_or((n / 4).max(1));
    let mut hub = b.start_hub()?;
    let image = b.dir.join("bench.oci.tar");
    images::testing::busybox_image(&image, "bench:1", &["/bin/sleep", "100000"])?;
    b.cli(&["image", "import", image.to_str().context("path")?])?;
    let rss_idle = rss_kib(hub.child.id());
    println!("# {n} agents in {sites} sites; hub heartbeat {}", args.heartbeat);

    let sim_log = std::fs::File::create(b.dir.join("sim.log"))?;
    let t_sim = Instant::now();
    let _sim = Proc {
        child: Command::new(&b.flotilla)
            .args(["sim", "--agents", &n.to_string(), "--sites", &sites.to_string(), "--ramp", "5s"])
            .args(["--label", "role=bench", "--stats"])
            .arg(b.dir.join("sim-stats.json"))
            .env("FLOTILLA_CONTEXT", &b.context)
            .env("FLOTILLA_LOG", "warn")
            .stdout(sim_log.try_clone()?)
            .stderr(sim_log)
            .spawn()?,
    };
    wait("every agent to connect", Duration::from_secs(900), || {
        Ok((b.count("connected") == n as u64).then_some(()))
    })?;
    println!("# all {n} agents enrolled and connected in {:.1} s", t_sim.elapsed().as_secs_f64());
    // Let enrolment's writes and the first reports settle before measuring memory.
    std::thread::sleep(Duration::from_secs(5));
    let rss = rss_kib(hub.child.id());
    println!("METRIC fleet_agents_held {n} agents");
    println!("METRIC fleet_hub_rss_kib {rss} KiB");
    println!(
        "METRIC fleet_hub_rss_per_agent_kib {:.1} KiB",
        (rss.saturating_sub(rss_idle)) as f64 / n as f64
    );

    // A desired change to every agent.
    for (generation, marker) in [(1, "one"), (2, "two")] {
        let t0 = now_ms();
        b.apply("all", &app_yaml("all", "role: bench", marker))?;
        let (_, p50, p99) = wait("every agent to receive the change", Duration::from_secs(600), || {
            Ok(b.received("all", generation, t0).filter(|(k, _, _)| *k == n as u64))
        })?;
        let what = if generation == 1 { "new_app" } else { "change" };
        println!("METRIC fleet_{what}_to_all_p50_ms {p50} ms");
        println!("METRIC fleet_{what}_to_all_p99_ms {p99} ms");
        // Let the hub take in every report (device and app status) before the next
        // change: the next figure is one change on a quiet hub.
        wait("the hub to see the app running everywhere", Duration::from_secs(600), || {
            let v: Value = serde_json::from_str(&b.cli(&["get", "apps", "all", "-o", "json"])?)?;
            Ok((v["status"]["runningDevices"].as_u64() == Some(n as u64)
                && v["status"]["observedGeneration"].as_u64() == Some(generation))
            .then_some(()))
        })?;
    }

    // An app change that touches one device.
    let name = "sim-00000";
    let dev: Value = serde_json::from_str(&b.cli(&["get", "devices", name, "-o", "json"])?)?;
    let mut labels = dev["metadata"]["labels"].clone();
    labels["bench-target"] = "yes".into();
    let patch = serde_json::json!({ "apiVersion": "flotilla.dev/v1", "kind": "Device",
        "metadata": { "name": name, "labels": labels }, "spec": dev["spec"] });
    b.apply("target", &patch.to_string())?;
    wait("the label to settle", Duration::from_secs(60), || {
        Ok(b.cli(&["get", "devices", name, "-o", "json"])?.contains("bench-target").then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let mark = b.log_lines();
    b.apply("one", &app_yaml("one", "bench-target: \"yes\"", "x"))?;
    let (cpu_us, line) = wait("the controller pass", Duration::from_secs(60), || Ok(b.pass_cpu_after(mark)))?;
    println!("# {}", line.trim());
    println!("METRIC fleet_one_device_change_pass_cpu_us {cpu_us} us");

    // Idle traffic at the UDP socket.
    std::thread::sleep(Duration::from_secs(5));
    let bytes = |s: &Value| s["udp_tx_bytes"].as_u64().unwrap_or(0) + s["udp_rx_bytes"].as_u64().unwrap_or(0);
    let before = b.stats().context("sim stats")?;
    let t_idle = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let after = b.stats().context("sim stats")?;
    let per_hour =
        (bytes(&after) - bytes(&before)) as f64 / n as f64 * 3600.0 / t_idle.elapsed().as_secs_f64();
    println!("METRIC fleet_idle_bytes_per_agent_hour {:.0} B", per_hour);

    // Reconnect storm.
    let sessions = b.count("sessions");
    drop(hub);
    let t_restart = Instant::now();
    hub = b.start_hub()?;
    let up = t_restart.elapsed();
    let mut next_report = Duration::from_secs(5);
    wait("every agent to reconnect", Duration::from_secs(900), || {
        if t_restart.elapsed() >= next_report {
            next_report += Duration::from_secs(5);
            println!(
                "# {:>4.0} s after the restart: {} sessions back",
                t_restart.elapsed().as_secs_f64(),
                b.count("sessions").saturating_sub(sessions)
            );
        }
        Ok((b.count("sessions") >= sessions + n as u64 && b.count("connected") == n as u64).then_some(()))
    })?;
    println!("# hub back in {:.1} s", up.as_secs_f64());
    println!("METRIC fleet_resync_after_restart_s {:.1} s", t_restart.elapsed().as_secs_f64());
    println!("METRIC fleet_retry_after_answers {} answers", b.count("retry_after"));
    drop(hub);
    Ok(())
}
