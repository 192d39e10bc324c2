//! Cold container run latency: Flotilla's `HelperRuntime` against `crun run` and
//! `runc run`.
//!
//! `cargo bench -p agent-runtime --bench container_start [-- N]` (root; N=100 default,
//! 5 warm-ups; `BENCH_WARMUP` overrides).
//!
//! One iteration of ours = create → start → wait for the exit notification → delete of
//! a container running `/bin/busybox true`, through `HelperRuntime` exactly as the agent
//! drives it (helper process, frames over pipes, libcontainer). One iteration of crun =
//! the whole `crun --root S run --bundle B id` child process (likewise runc), timed
//! from outside, as in
//! `/work/shared/anchors/oci-runtime.sh`. Both use the same `config.json` from
//! `crun spec` (pid, network, ipc, uts, mount namespaces; terminal off, rootfs writable),
//! differing only in `linux.cgroupsPath`. Both keep their runtime state on tmpfs
//! (`/dev/shm`, as `/run` would be on a device; `BENCH_STATE_DIR` overrides).
//!
//! crun 1.8 refuses this host's hybrid cgroup layout, so phase "v1" runs inside a
//! private mount namespace with `/sys/fs/cgroup/unified` detached (plain cgroup v1),
//! interleaving crun and ours; phase "hybrid" then times ours alone on the host's own
//! hybrid layout (what the agent really sees). Each phase is this binary re-executed
//! with `FLOTILLA_BENCH_PHASE` set.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use agent_runtime::{ContainerRuntime, HelperConfig, HelperRuntime};
use serde_json::{Value, json};

const HELPER_BIN: &str = env!("CARGO_BIN_EXE_flotilla-runtime-helper");
const PHASE_ENV: &str = "FLOTILLA_BENCH_PHASE";
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; the first number is N.
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(100);
    let warmup: usize = std::env::var("BENCH_WARMUP").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let result = match std::env::var(PHASE_ENV).as_deref() {
        Ok("v1") => phase(n, warmup, true),
        Ok("hybrid") => phase(n, warmup, false),
        _ => orchestrate(n),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("container_start bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type BenchResult<T> = Result<T, String>;

fn run_cmd(cmd: &mut Command) -> BenchResult<std::process::Output> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(out)
}

/// The OCI runtimes we stand beside.
const OTHERS: [&str; 2] = ["crun", "runc"];

fn ensure_runtimes() -> BenchResult<()> {
    for rt in OTHERS {
        if Command::new(rt).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
            continue;
        }
        eprintln!("# installing {rt}");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        run_cmd(Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends", rt]))?;
    }
    Ok(())
}

fn orchestrate(n: usize) -> BenchResult<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (namespaces, cgroups)".into());
    }
    ensure_runtimes()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // Phase 1: plain v1 in a private mount namespace; nothing on the host changes.
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("if mountpoint -q /sys/fs/cgroup/unified; then umount -l /sys/fs/cgroup/unified; fi; exec \"$0\" \"$@\"")
        .arg(&exe)
        .arg(n.to_string())
        .env(PHASE_ENV, "v1")
        .status()
        .map_err(|e| format!("unshare: {e}"))?;
    if !status.success() {
        return Err(format!("phase v1 failed: {status}"));
    }
    // Phase 2: the host's hybrid layout, ours only (crun refuses it).
    let status =
        Command::new(&exe).arg(n.to_string()).env(PHASE_ENV, "hybrid").status().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("phase hybrid failed: {status}"));
    }
    Ok(())
}

struct Work {
    dir: PathBuf,
    /// Runtime state of both runtimes (crun's `--root`, libcontainer's root).
    state: PathBuf,
    tag: u32,
}

impl Work {
    fn new() -> BenchResult<Self> {
        let tag = std::process::id();
        let dir = PathBuf::from(format!("/tmp/flotilla-bench-{tag}"));
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .map_err(|e| format!("copying busybox: {e}"))?;
        for a in ["true", "sh", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all(dir.join("spec")).map_err(|e| e.to_string())?;
        run_cmd(Command::new("crun").arg("spec").current_dir(dir.join("spec")))?;
        // Runtime state belongs on tmpfs, as /run is on a real host (crun's and
        // runc's defaults live there too); BENCH_STATE_DIR moves it, e.g. to /tmp.
        let state_base =
            std::env::var_os("BENCH_STATE_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
        let state = state_base.join(format!("flotilla-bench-state-{tag}"));
        std::fs::create_dir_all(&state).map_err(|e| format!("creating {}: {e}", state.display()))?;
        Ok(Work { dir, state, tag })
    }

    /// The anchor's recipe: `crun spec`, terminal off, absolute writable root, and a
    /// cgroup path of the runtime's own.
    fn bundle(&self, name: &str, runtime: &str, args: &[&str]) -> BenchResult<PathBuf> {
        let base = std::fs::read(self.dir.join("spec/config.json")).map_err(|e| e.to_string())?;
        let mut c: Value = serde_json::from_slice(&base).map_err(|e| e.to_string())?;
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(args);
        c["root"] = json!({ "path": self.dir.join("rootfs"), "readonly": false });
        c["hostname"] = json!("bench");
        c["linux"]["cgroupsPath"] = json!(format!("/bench/{runtime}-{}", self.tag));
        let dir = self.dir.join(format!("{name}-{runtime}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&c).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        Ok(dir)
    }

    fn namespaces(&self) -> String {
        let spec = std::fs::read(self.dir.join("spec/config.json")).unwrap_or_default();
        let c: Value = serde_json::from_slice(&spec).unwrap_or_default();
        c["linux"]["namespaces"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["type"].as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for rt in OTHERS {
            let state = self.state.join(rt);
            if let Ok(out) = Command::new(rt).arg("--root").arg(&state).args(["list", "-q"]).output() {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new(rt).arg("--root").arg(&state).args(["delete", "-f", id]).output();
                }
            }
        }
        for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let bench = controller.path().join("bench");
            for rt in ["crun", "runc", "flotilla"] {
                let _ = std::fs::remove_dir(bench.join(format!("{rt}-{}", self.tag)));
            }
            let _ = std::fs::remove_dir(&bench);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn oci_run(rt: &str, work: &Work, bundle: &Path, id: &str) -> BenchResult<(f64, String)> {
    let state = work.state.join(rt);
    let t0 = Instant::now();
    let out = Command::new(rt)
        .arg("--root")
        .arg(&state)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{rt}: {e}"))?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        let _ = Command::new(rt).arg("--root").arg(&state).args(["delete", "-f", id]).output();
        return Err(format!(
            "{rt} run {id}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((ms, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Per-step times of one run of ours, in ms.
#[derive(Default, Clone, Copy)]
struct Steps {
    create: f64,
    start: f64,
    exit: f64,
    delete: f64,
    total: f64,
}

async fn flotilla_run(rt: &HelperRuntime, bundle: &Path, id: &str) -> BenchResult<Steps> {
    let mut exits = rt.subscribe_exits();
    let t0 = Instant::now();
    rt.create(id, bundle).await.map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    rt.start(id).await.map_err(|e| e.to_string())?;
    let t2 = Instant::now();
    let code = tokio::time::timeout(EXIT_DEADLINE, async {
        loop {
            match exits.recv().await {
                Ok(e) if e.id == id => return Ok(e.exit_code),
                Ok(_) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| format!("{id} did not exit within {EXIT_DEADLINE:?}"))??;
    let t3 = Instant::now();
    rt.delete(id, false).await.map_err(|e| e.to_string())?;
    let t4 = Instant::now();
    if code != Some(0) {
        return Err(format!("{id} exited with {code:?}"));
    }
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    Ok(Steps {
        create: ms(t0, t1),
        start: ms(t1, t2),
        exit: ms(t2, t3),
        delete: ms(t3, t4),
        total: ms(t0, t4),
    })
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Same nearest-rank rule as the anchor script.
fn pct(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let k = ((p / 100.0 * v.len() as f64 + 0.5).round() as isize - 1).clamp(0, v.len() as isize - 1);
    v[k as usize]
}

fn phase(n: usize, warmup: usize, with_crun: bool) -> BenchResult<()> {
    let work = Work::new()?;
    let ours = work.bundle("bundle", "flotilla", &["/bin/busybox", "true"])?;
    let ours_check = work.bundle("check", "flotilla", &["/bin/busybox", "echo", "oci-run-ok"])?;
    let others: Vec<(&str, PathBuf, PathBuf)> = OTHERS
        .iter()
        .map(|rt| {
            Ok((
                *rt,
                work.bundle("bundle", rt, &["/bin/busybox", "true"])?,
                work.bundle("check", rt, &["/bin/busybox", "echo", "oci-run-ok"])?,
            ))
        })
        .collect::<BenchResult<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let config =
        HelperConfig::new(work.state.join("flotilla"), work.dir.join("logs")).with_helper_exe(HELPER_BIN);
    let label = if with_crun { "v1" } else { "hybrid" };

    runtime.block_on(async {
        let rt = HelperRuntime::new(config);
        // The agent's helper is long-lived: starting it is not part of a container run.
        rt.ensure_helper().await.map_err(|e| e.to_string())?;
        let check_id = format!("check-{}", work.tag);
        flotilla_run(&rt, &ours_check, &check_id).await?;
        let log = std::fs::read_to_string(rt.log_path(&check_id)).unwrap_or_default();
        if !log.contains("oci-run-ok") {
            return Err(format!("our check container logged {log:?}"));
        }
        if with_crun {
            for (rt, _, check) in &others {
                let (_, out) = oci_run(rt, &work, check, &format!("check-{rt}-{}", work.tag))?;
                if !out.contains("oci-run-ok") {
                    return Err(format!("{rt} check container printed {out:?}"));
                }
            }
        }

        let mut ours_steps = Vec::new();
        let mut other_ms: Vec<Vec<f64>> = vec![Vec::new(); others.len()];
        for i in 0..warmup + n {
            if with_crun {
                // Interleaved, so drift in the machine's state hits every runtime alike.
                for ((rt, bundle, _), times) in others.iter().zip(&mut other_ms) {
                    let (ms, _) = oci_run(rt, &work, bundle, &format!("{rt}-{}-{i}", work.tag))?;
                    if i >= warmup {
                        times.push(ms);
                    }
                }
            }
            let steps = flotilla_run(&rt, &ours, &format!("fl-{}-{i}", work.tag)).await?;
            if i >= warmup {
                ours_steps.push(steps);
            }
        }
        if !rt.list().await.map_err(|e| e.to_string())?.is_empty() {
            return Err("containers left behind".into());
        }
        rt.shutdown().await;

        let col = |f: fn(&Steps) -> f64| ours_steps.iter().map(f).collect::<Vec<_>>();
        let total = col(|s| s.total);
        let name = if with_crun { "flotilla" } else { "flotilla_hybrid" };
        println!(
            "# phase={label} n={n} warmup={warmup} namespaces={} state={}",
            work.namespaces(),
            work.state.display()
        );
        println!(
            "# {name} steps median ms: create={:.2} start={:.2} exit={:.2} delete={:.2}; min={:.2} max={:.2}",
            median(&col(|s| s.create)),
            median(&col(|s| s.start)),
            median(&col(|s| s.exit)),
            median(&col(|s| s.delete)),
            pct(&total, 0.0),
            pct(&total, 100.0),
        );
        println!("METRIC {name}_run_ms_median {:.2} ms", median(&total));
        println!("METRIC {name}_run_ms_p99 {:.2} ms", pct(&total, 99.0));
        if with_crun {
            for ((rt, _, _), ms) in others.iter().zip(&other_ms) {
                println!("# {rt}: min={:.2} max={:.2} ms", pct(ms, 0.0), pct(ms, 100.0));
                println!("METRIC {rt}_run_ms_median {:.2} ms", median(ms));
                println!("METRIC {rt}_run_ms_p99 {:.2} ms", pct(ms, 99.0));
                println!("METRIC flotilla_vs_{rt}_median_ratio {:.3}", median(&total) / median(ms));
            }
        }
        Ok(())
    })
}
