//! Harness for whole-system tests: the hub and agents run as the real binaries, in
//! their own processes, with real containers. Build the binaries first
//! (`cargo xtask test` does); tests find them in the target directory.
//!
//! Waiting is always on a condition with a deadline ([`wait_until`]); when a test
//! fails, the processes' logs are printed.
//!
//! For faulty links, [`netns`] gives the hub and agents network namespaces of their
//! own and [`link`] puts an emulated link (delay, loss, partitions, NAT rebinding)
//! between them: [`Hub::start_with`] and [`Agent::start_in`] run them there.
//!
//! For cgroup v2, [`vm`] boots a guest whose only cgroup hierarchy is v2, and runs a
//! test binary inside it.

pub mod link;
pub mod netns;
pub mod prng;
pub mod vm;

use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

/// `program`, run in `netns` if there is one.
fn command_in(netns: Option<&netns::Netns>, program: &Path) -> Command {
    match netns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    }
}

/// How [`Hub::start_with`] runs the hub. The default is what [`Hub::start`] does:
/// loopback, heartbeats every second, Offline after 3 s.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Run the hub inside this namespace.
    pub netns: Option<netns::Netns>,
    /// The API and QUIC (and by default the TCP fallback) listen on this IP; with a
    /// namespace, its `ns_ip`, which the CLI reaches from the root namespace.
    pub listen_ip: IpAddr,
    /// `--tcp-listen`: an address, or `off`; `None` for the hub's default (the QUIC
    /// address over TCP).
    pub tcp_listen: Option<String>,
    /// `--advertise`: more names or IPs for the hub's certificate. Give it the
    /// address of every link emulator agents dial, or their TLS check fails.
    pub advertise: Vec<String>,
    pub heartbeat_interval: String,
    pub offline_grace: String,
    /// Anything else for `flotilla hub serve` (e.g. `--session-rate 5`).
    pub extra_args: Vec<String>,
    /// Run Raft on a loopback port (`--raft-listen`): a hub that founds or joins a cluster.
    pub raft: bool,
    /// Join the cluster of this hub (`flotilla hub join`), with a join token; the CLI then
    /// uses that hub's context (its token and CA) pointed at this hub.
    pub join: Option<(String, String, PathBuf)>,
}

impl Default for HubOptions {
    fn default() -> HubOptions {
        HubOptions {
            netns: None,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tcp_listen: None,
            advertise: Vec::new(),
            heartbeat_interval: "1s".into(),
            offline_grace: "3s".into(),
            extra_args: Vec::new(),
            raft: false,
            join: None,
        }
    }
}

impl HubOptions {
    pub fn netns(mut self, ns: &netns::Netns) -> HubOptions {
        self.netns = Some(ns.clone());
        self
    }
    pub fn listen_ip(mut self, ip: impl Into<IpAddr>) -> HubOptions {
        self.listen_ip = ip.into();
        self
    }
    pub fn tcp_listen(mut self, addr: impl Into<String>) -> HubOptions {
        self.tcp_listen = Some(addr.into());
        self
    }
    pub fn advertise(mut self, name: impl ToString) -> HubOptions {
        self.advertise.push(name.to_string());
        self
    }
    pub fn heartbeat_interval(mut self, d: impl Into<String>) -> HubOptions {
        self.heartbeat_interval = d.into();
        self
    }
    pub fn offline_grace(mut self, d: impl Into<String>) -> HubOptions {
        self.offline_grace = d.into();
        self
    }
    /// Found a hub cluster (Raft on a loopback port).
    pub fn raft(mut self) -> HubOptions {
        self.raft = true;
        self
    }
    /// Join `hub`'s cluster with `token` (from `flotilla hub join-token create`).
    pub fn join(mut self, hub: &Hub, token: &str) -> HubOptions {
        self.raft = true;
        self.join = Some((hub.api.clone(), token.to_string(), hub.context.clone()));
        self
    }
    pub fn arg(mut self, arg: impl Into<String>) -> HubOptions {
        self.extra_args.push(arg.into());
        self
    }
}

/// A hub process.
pub struct Hub {
    pub data_dir: PathBuf,
    pub context: PathBuf,
    /// QUIC `ip:port`.
    pub quic: String,
    /// `https://ip:port`.
    pub api: String,
    /// The TCP fallback's `ip:port`, `None` when it is off.
    pub tcp: Option<String>,
    log: PathBuf,
    child: Option<Child>,
    api_port: u16,
    quic_port: u16,
    pub raft_port: u16,
    options: HubOptions,
}

impl Hub {
    /// Starts a hub on loopback, ports chosen free, keeping its data in `dir`.
    pub fn start(dir: &Path) -> Hub {
        Hub::start_with(dir, HubOptions::default())
    }

    /// Starts a hub as `options` say (in a namespace, on another IP, with more
    /// arguments), keeping its data in `dir`.
    pub fn start_with(dir: &Path, options: HubOptions) -> Hub {
        let context = match &options.join {
            Some((_, _, context)) => context.clone(),
            None => dir.join("hub").join("context.json"),
        };
        let mut hub = Hub {
            data_dir: dir.join("hub"),
            context,
            quic: String::new(),
            api: String::new(),
            tcp: None,
            log: dir.join("hub.log"),
            child: None,
            api_port: free_port(),
            quic_port: free_port(),
            raft_port: free_port(),
            options,
        };
        hub.spawn();
        hub
    }

    /// The QUIC address, parsed (a link emulator's target).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic.parse().expect("the hub's QUIC address")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("hub log");
        let stdout = log.try_clone().expect("hub log");
        // The log is appended across restarts: wait for a "hub ready" of this start.
        let readies_before =
            std::fs::read_to_string(&self.log).unwrap_or_default().matches("hub ready\n").count();
        let o = &self.options;
        let api = SocketAddr::new(o.listen_ip, self.api_port);
        let quic = SocketAddr::new(o.listen_ip, self.quic_port);
        let mut cmd = command_in(o.netns.as_ref(), &bin("flotilla"));
        match &o.join {
            Some((api, token, _)) => cmd.args(["hub", "join", api, "--join-token", token]),
            None => cmd.args(["hub", "serve"]),
        };
        if o.raft {
            cmd.args(["--raft-listen", &SocketAddr::new(o.listen_ip, self.raft_port).to_string()]);
        }
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--api-listen", &api.to_string()])
            .args(["--quic-listen", &quic.to_string()])
            .args(["--heartbeat-interval", &o.heartbeat_interval, "--offline-grace", &o.offline_grace]);
        if let Some(tcp) = &o.tcp_listen {
            cmd.args(["--tcp-listen", tcp]);
        }
        for name in &o.advertise {
            cmd.args(["--advertise", name]);
        }
        let child = cmd
            .args(&o.extra_args)
            .env("FLOTILLA_LOG", "info,hub_store=info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("starting flotilla hub serve");
        self.child = Some(child);
        self.api = format!("https://{api}");
        self.quic = quic.to_string();
        self.tcp = match o.tcp_listen.as_deref() {
            Some("off") => None,
            Some(a) => Some(a.to_string()),
            None => Some(self.quic.clone()),
        };
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

    /// The hub's log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Runs the CLI against this hub.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("flotilla"));
        if self.options.join.is_some() {
            // The context is the founding hub's: point it at this one.
            cmd.args(["--hub", &self.api]);
        }
        cmd.args(args)
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
    hub: String,
    hub_tcp: Option<String>,
    token: String,
    labels: Vec<(String, String)>,
    netns: Option<netns::Netns>,
    cgroup_parent: String,
    /// Extra `key = value` lines for the agent's config.
    extra: Vec<String>,
    /// The bridge and nftables table of its isolated apps, once [`Agent::own_bridge`]
    /// gave it its own.
    pub bridge: Option<(String, String)>,
}

impl Agent {
    /// Writes the agent's config. `labels` are `key=value`.
    pub fn configure(dir: &Path, name: &str, hub_quic: &str, token: &str, labels: &[(&str, &str)]) -> Agent {
        let agent = Agent {
            name: name.into(),
            config: dir.join(format!("agent-{name}.toml")),
            state_dir: dir.join(format!("agent-{name}")),
            runtime_dir: dir.join(format!("agent-{name}-run")),
            log: dir.join(format!("agent-{name}.log")),
            child: None,
            hub: hub_quic.into(),
            hub_tcp: None,
            token: token.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            netns: None,
            extra: Vec::new(),
            bridge: None,
            cgroup_parent: {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("flt-{}-{n}", std::process::id())
            },
        };
        agent.write_config();
        agent
    }

    /// The cgroup this agent's containers live under: one per test agent, so two
    /// agents with the same app never share a container's cgroup.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    fn write_config(&self) {
        let mut cfg = format!("hub = \"{}\"\n", self.hub);
        if let Some(tcp) = &self.hub_tcp {
            cfg.push_str(&format!("hub_tcp = \"{tcp}\"\n"));
        }
        cfg.push_str(&format!(
            "enrolment_token = \"{}\"\nname = \"{}\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\ncgroup_parent = \"{}\"\n[labels]\n",
            self.token,
            self.name,
            self.state_dir.display(),
            self.runtime_dir.display(),
            self.cgroup_parent
        ));
        // Top-level keys must come before the [labels] table: insert them above it.
        if !self.extra.is_empty() {
            let at = cfg.find("[labels]").expect("the labels table");
            cfg.insert_str(at, &self.extra.iter().map(|l| format!("{l}\n")).collect::<String>());
        }
        for (k, v) in &self.labels {
            cfg.push_str(&format!("{k} = \"{v}\"\n"));
        }
        std::fs::write(&self.config, cfg).expect("writing agent config");
    }

    /// Adds a `key = value` line to the agent's config (read when it next starts).
    pub fn set_config(&mut self, line: &str) {
        self.extra.push(line.to_string());
        self.write_config();
    }

    /// Gives the agent a bridge, network and nftables table of its own (tests run
    /// side by side, and never on the device defaults). Returns the network.
    pub fn own_bridge(&mut self) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let bridge = format!("fb{:x}x{n:x}", pid & 0xff_ffff);
        let table = format!("flt_{pid}_{n}");
        // 172.29.0.0/16, a /24 per agent: away from the netns module's 10.200+.
        let subnet = format!("172.29.{}.0/24", (pid % 40) * 6 + n % 6);
        self.set_config(&format!("bridge = \"{bridge}\""));
        self.set_config(&format!("bridge_subnet = \"{subnet}\""));
        self.set_config(&format!("nft_table = \"{table}\""));
        self.bridge = Some((bridge, table));
        subnet
    }

    /// What a power cycle leaves: no processes, no cgroups, no mounts, an empty
    /// `/run`, no bridge, veths or nftables rules.
    pub fn power_cycle(&mut self) {
        self.kill();
        for id in self.runtime_containers() {
            if let Some(pid) = self.container_pid(&id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                wait_until("a container process to die", Duration::from_secs(60), || {
                    (!pid_alive(pid)).then_some(())
                });
            }
        }
        // Every mount under the agent's directories goes (overlay roots, pod
        // namespaces), deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| {
                m.starts_with(self.runtime_dir.to_str().unwrap_or("-"))
                    || m.starts_with(self.state_dir.to_str().unwrap_or("-"))
            })
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        // Container cgroups, in every hierarchy.
        for root in cgroup_roots() {
            let parent = root.join(&self.cgroup_parent);
            if let Ok(children) = std::fs::read_dir(&parent) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        std::fs::remove_dir_all(&self.runtime_dir).expect("removing the runtime dir");
        // Network devices and rules live in the kernel: a reboot takes them too.
        if let Some((bridge, table)) = &self.bridge {
            let ports = Command::new("ip").args(["-o", "link", "show", "master", bridge]).output();
            for line in
                ports.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default().lines()
            {
                if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                    let _ = Command::new("ip").args(["link", "del", name]).status();
                }
            }
            let _ = Command::new("ip").args(["link", "del", bridge]).status();
            let _ = Command::new("nft").args(["delete", "table", "inet", table]).status();
        }
    }

    /// Points the agent at another QUIC address (e.g. a link emulator); rewrites
    /// the config, which the agent reads when it next starts.
    pub fn set_hub(&mut self, hub_quic: &str) {
        self.hub = hub_quic.into();
        self.write_config();
    }

    /// Sets (or with `None` removes) `hub_tcp`, the TCP fallback's `host:port`;
    /// without it the agent uses the QUIC address over TCP.
    pub fn set_hub_tcp(&mut self, hub_tcp: Option<&str>) {
        self.hub_tcp = hub_tcp.map(str::to_string);
        self.write_config();
    }

    /// Runs this agent (now and on later starts) inside `ns`; host-network
    /// containers then share the namespace's network (so reach their ports with
    /// `ns.spawn(move || http_status(port, "/"))`).
    pub fn set_netns(&mut self, ns: &netns::Netns) {
        self.netns = Some(ns.clone());
    }

    /// [`Agent::set_netns`] then [`Agent::start`].
    pub fn start_in(&mut self, ns: &netns::Netns) {
        self.set_netns(ns);
        self.start();
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the agent with these environment variables besides the usual ones.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("agent log");
        let child = command_in(self.netns.as_ref(), &bin("flotilla-agent"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("FLOTILLA_LOG", "info,edge_agent::sync=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .spawn()
            .expect("starting flotilla-agent");
        self.child = Some(child);
    }

    /// Runs the agent to completion (for enrolment failures); returns its output.
    pub fn run_to_exit(&self, timeout: Duration) -> (Option<i32>, String) {
        let mut child = command_in(self.netns.as_ref(), &bin("flotilla-agent"))
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
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
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
        // The agent leaves its (now empty) cgroup parent behind, as it should on a
        // device; a test run removes it.
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(&self.cgroup_parent));
        }
    }
}

/// Where a cgroup path can live: `/sys/fs/cgroup` itself (cgroup v2) and each
/// hierarchy mounted under it (v1, and hybrid's `unified`).
fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    roots
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

/// Builds a one-layer busybox test image archive named `ref_name` whose entrypoint
/// is `entrypoint`: two of them with different entrypoints are two image versions.
pub fn busybox_image_running(dir: &Path, ref_name: &str, entrypoint: &[&str]) -> PathBuf {
    let path = dir.join(format!("{}.tar", ref_name.replace([':', '/'], "_")));
    images::testing::busybox_image(&path, ref_name, entrypoint).expect("building a busybox test image");
    path
}

/// Builds a one-layer busybox test image archive named `ref_name`.
pub fn busybox_image(dir: &Path, ref_name: &str) -> PathBuf {
    let path = dir.join(format!("{}.oci.tar", ref_name.replace([':', '/'], "_")));
    images::testing::busybox_image(&path, ref_name, &["/bin/sleep", "3600"])
        .expect("building a busybox test image");
    path
}

/// A `flotilla sim` process: simulated agents against a hub, with its JSON stats file.
pub struct Sim {
    pub stats_path: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Sim {
    /// Starts `flotilla sim --agents N` against `hub`, with `extra` arguments.
    pub fn start(dir: &Path, hub: &Hub, agents: usize, extra: &[&str]) -> Sim {
        let stats_path = dir.join(format!("sim-stats-{}.json", std::process::id()));
        let log = dir.join("sim.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("sim log");
        let child = Command::new(bin("flotilla"))
            .arg("sim")
            .args(["--agents", &agents.to_string()])
            .arg("--stats")
            .arg(&stats_path)
            .args(extra)
            .env("FLOTILLA_CONTEXT", &hub.context)
            .env("FLOTILLA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("sim log"))
            .stderr(out)
            .spawn()
            .expect("starting flotilla sim");
        Sim { stats_path, log, child: Some(child) }
    }

    /// The simulator's latest JSON stats, once it has written them.
    pub fn stats(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(&self.stats_path).ok()?).ok()
    }

    /// A counter from the stats (`connected`, `sessions`, `reconnects`…).
    pub fn count(&self, key: &str) -> u64 {
        self.stats().and_then(|s| s[key].as_u64()).unwrap_or(0)
    }

    /// How many agents received generation `generation` of `app`.
    pub fn received(&self, app: &str, generation: u64) -> u64 {
        self.stats()
            .and_then(|s| {
                s["generations"].as_array()?.iter().find_map(|g| {
                    (g["app"] == app && g["generation"].as_u64() == Some(generation))
                        .then(|| g["agents"].as_u64())?
                })
            })
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("FLOTILLA_TEST_LOGS").is_some() {
            eprintln!("---- sim log (tail) ----\n{}\n----", tail(&self.log, 40));
        }
        if let Some(mut c) = self.child.take() {
            signal(&c, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Devices whose agent holds the manifest the hub wants it to hold, and how many
/// devices there are, from `flotilla get devices`.
pub fn devices_in_sync(hub: &Hub, name_prefix: &str) -> (usize, usize) {
    let Some(list) = hub.get("devices", None) else { return (0, 0) };
    let items =
        list.get("items").and_then(Value::as_array).or_else(|| list.as_array()).cloned().unwrap_or_default();
    let mine: Vec<&Value> = items
        .iter()
        .filter(|d| d["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(name_prefix)))
        .collect();
    let synced = mine
        .iter()
        .filter(|d| {
            let s = &d["status"];
            s["desiredRevision"].as_u64().is_some_and(|r| r > 0)
                && s["appliedRevision"] == s["desiredRevision"]
        })
        .count();
    (synced, mine.len())
}

/// Checks `holds` every 200 ms for `duration`, panicking the first time it fails:
/// for invariants that must stay true over a window (containers keep running during
/// a partition), the mirror image of [`wait_until`].
pub fn assert_during(what: &str, duration: Duration, mut holds: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if let Err(why) = holds() {
            panic!("{what} stopped holding: {why}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
