//! Harness for whole-system tests: the hub and agents run as the real binaries, in
//! their own processes, with real containers. Build the binaries first
//! (`cargo xtask test` does); tests find them in the target directory.
//!
//! Waiting is always on a condition with a deadline ([`wait_until`]); when a test
//! fails, the processes' logs are printed.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The target directory the binaries were built into.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"),
    }
}

/// A workspace binary, built with the profile in `FLOTILLA_TEST_PROFILE` (default `debug`).
pub fn bin(name: &str) -> PathBuf {
    let profile = std::env::var("FLOTILLA_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = target_dir().join(profile).join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build -p cloud-hub -p edge-agent` (cargo xtask test does this)",
        p.display()
    );
    p
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "whole-system tests run real containers and need root (CI runs them as root)"
    );
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

/// A hub process.
pub struct Hub {
    pub data_dir: PathBuf,
    pub context: PathBuf,
    pub quic: String,
    pub api: String,
    log: PathBuf,
    child: Option<Child>,
    api_port: u16,
    quic_port: u16,
}

impl Hub {
    /// Starts a hub on loopback, ports chosen free, keeping its data in `dir`.
    pub fn start(dir: &Path) -> Hub {
        let mut hub = Hub {
            data_dir: dir.join("hub"),
            context: dir.join("hub").join("context.json"),
            quic: String::new(),
            api: String::new(),
            log: dir.join("hub.log"),
            child: None,
            api_port: free_port(),
            quic_port: free_port(),
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("hub log");
        let stdout = log.try_clone().expect("hub log");
        // The log is appended across restarts: wait for a "hub ready" of this start.
        let readies_before =
            std::fs::read_to_string(&self.log).unwrap_or_default().matches("hub ready\n").count();
        let child = Command::new(bin("flotilla"))
            .args(["hub", "serve", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--api-listen", &format!("127.0.0.1:{}", self.api_port)])
            .args(["--quic-listen", &format!("127.0.0.1:{}", self.quic_port)])
            .args(["--heartbeat-interval", "1s", "--offline-grace", "3s"])
            .env("FLOTILLA_LOG", "info,hub_store=info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("starting flotilla hub serve");
        self.child = Some(child);
        self.api = format!("https://127.0.0.1:{}", self.api_port);
        self.quic = format!("127.0.0.1:{}", self.quic_port);
        let log = self.log.clone();
        wait_until("the hub to be ready", Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let readies = text.matches("hub ready\n").count();
            (readies > readies_before && self.context.exists() && self.api_answers()).then_some(())
        });
    }

    fn api_answers(&self) -> bool {
        self.cli(&["get", "sites", "-o", "json"]).status.success()
    }

    /// Runs the CLI against this hub.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("flotilla"))
            .args(args)
            .env("FLOTILLA_CONTEXT", &self.context)
            .env_remove("FLOTILLA_HUB")
            .env_remove("FLOTILLA_TOKEN")
            .output()
            .expect("running the flotilla CLI")
    }

    /// Runs the CLI and returns its stdout; panics with stderr if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "flotilla {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `flotilla get <kind> [name] -o json`, parsed; `None` if it fails (e.g. 404).
    pub fn get(&self, kind: &str, name: Option<&str>) -> Option<Value> {
        let mut args = vec!["get", kind];
        if let Some(n) = name {
            args.push(n);
        }
        args.extend(["-o", "json"]);
        let out = self.cli(&args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Applies YAML text; returns the CLI's output.
    pub fn apply(&self, dir: &Path, yaml: &str) -> Output {
        let path = dir.join(format!("apply-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).expect("writing manifest");
        self.cli(&["apply", "-f", path.to_str().expect("utf-8 path")])
    }

    pub fn enrolment_token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "-q"];
        args.extend_from_slice(extra);
        self.cli_ok(&args).trim().to_string()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FLOTILLA_TEST_LOGS").is_some() {
            eprintln!("---- hub log (tail) ----\n{}\n----", tail(&self.log, 80));
        }
        self.kill();
    }
}

/// An agent process.
pub struct Agent {
    pub name: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Writes the agent's config. `labels` are `key=value`.
    pub fn configure(dir: &Path, name: &str, hub_quic: &str, token: &str, labels: &[(&str, &str)]) -> Agent {
        let state_dir = dir.join(format!("agent-{name}"));
        let runtime_dir = dir.join(format!("agent-{name}-run"));
        let mut cfg = format!(
            "hub = \"{hub_quic}\"\nenrolment_token = \"{token}\"\nname = \"{name}\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n[labels]\n",
            state_dir.display(),
            runtime_dir.display()
        );
        for (k, v) in labels {
            cfg.push_str(&format!("{k} = \"{v}\"\n"));
        }
        let config = dir.join(format!("agent-{name}.toml"));
        std::fs::write(&config, cfg).expect("writing agent config");
        Agent {
            name: name.into(),
            config,
            state_dir,
            runtime_dir,
            log: dir.join(format!("agent-{name}.log")),
            child: None,
        }
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("agent log");
        let child = Command::new(bin("flotilla-agent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .spawn()
            .expect("starting flotilla-agent");
        self.child = Some(child);
    }

    /// Runs the agent to completion (for enrolment failures); returns its output.
    pub fn run_to_exit(&self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = Command::new(bin("flotilla-agent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting flotilla-agent");
        let status = wait_until("the agent to exit", timeout, || child.try_wait().ok().flatten());
        let out = child.wait_with_output().expect("agent output");
        (
            status.code(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ids of the containers libcontainer knows on this agent.
    pub fn runtime_containers(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.runtime_dir.join("containers"))
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Pid of a container's init process, from libcontainer's state file.
    pub fn container_pid(&self, id: &str) -> Option<i32> {
        let state = std::fs::read(self.runtime_dir.join("containers").join(id).join("state.json")).ok()?;
        let v: Value = serde_json::from_slice(&state).ok()?;
        v.get("pid").and_then(Value::as_i64).map(|p| p as i32)
    }

    /// Stops and removes every container (what a device reboot plus cleanup leaves).
    pub fn reset(&self) {
        let out = Command::new(bin("flotilla-agent"))
            .args(["reset", "--config"])
            .arg(&self.config)
            .output()
            .expect("running flotilla-agent reset");
        assert!(
            out.status.success(),
            "flotilla-agent reset failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FLOTILLA_TEST_LOGS").is_some() {
            eprintln!("---- agent {} log (tail) ----\n{}\n----", self.name, tail(&self.log, 80));
        }
        self.kill();
        let _ = Command::new(bin("flotilla-agent")).args(["reset", "--config"]).arg(&self.config).output();
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// One HTTP/1.1 GET on loopback; the status code, or `None` if nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Builds a one-layer busybox test image archive named `ref_name`.
pub fn busybox_image(dir: &Path, ref_name: &str) -> PathBuf {
    let path = dir.join(format!("{}.oci.tar", ref_name.replace([':', '/'], "_")));
    images::testing::busybox_image(&path, ref_name, &["/bin/sleep", "3600"])
        .expect("building a busybox test image");
    path
}
