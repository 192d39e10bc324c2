//! Operating a hub, against the real `flotilla` binary in its own process: `/metrics`
//! (a strict parse of the OpenMetrics text, counters by route template, Raft indexes,
//! connected devices with a simulated agent, who may read it), systemd's notify
//! protocol (`READY=1` only once the API answers, watchdog pings), JSON logs with
//! rustls's `log` records bridged in, and the address `token create` gives devices.
//!
//! Every wait polls a condition against a deadline.

use provisioning::pem;
use shared_proto::config::CliContext;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `flotilla hub serve` process on loopback, ports chosen by the system.
struct HubProcess {
    child: Child,
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl HubProcess {
    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> HubProcess {
        std::fs::create_dir_all(dir).unwrap();
        let data = dir.join("hub");
        let (stdout, stderr) = (dir.join("hub.out"), dir.join("hub.err"));
        let mut cmd = Command::new(FLOTILLA);
        cmd.args(["hub", "serve", "--data-dir"]).arg(&data);
        if !args.contains(&"--api-listen") {
            cmd.args(["--api-listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--quic-listen") {
            cmd.args(["--quic-listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env("FLOTILLA_LOG", "info,openraft=warn")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("FLOTILLA_LOG_FORMAT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting flotilla hub serve");
        HubProcess { child, dir: dir.to_path_buf(), stdout, stderr }
    }

    fn start(dir: &Path, args: &[&str]) -> HubProcess {
        let hub = HubProcess::spawn(dir, args, &[]);
        hub.wait_ready();
        hub
    }

    fn wait_ready(&self) {
        wait_until("the hub to say it is ready", Duration::from_secs(60), || {
            self.stdout_text().contains("hub ready\n").then_some(())
        });
        wait_until("the API to answer", Duration::from_secs(30), || self.healthz().then_some(()));
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn context_path(&self) -> PathBuf {
        self.dir.join("hub").join("context.json")
    }

    fn context(&self) -> CliContext {
        serde_json::from_slice(&std::fs::read(self.context_path()).expect("context file")).expect("context")
    }

    fn client(&self) -> reqwest::Client {
        let cas = pem::decode_certs(&self.context().ca_cert_pem).unwrap();
        let tls = provisioning::tls::api_client_config_trusting(&cas).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// One request over HTTPS: status, content type and body.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let url = format!("{}{path}", self.context().hub);
        let mut req = self.client().request(method.parse().unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        http_response(req)
    }

    fn healthz(&self) -> bool {
        if !self.context_path().exists() {
            return false;
        }
        let url = format!("{}/healthz", self.context().hub);
        let answered = runtime().block_on(async { self.client().get(url).send().await });
        answered.is_ok_and(|r| r.status().is_success())
    }

    fn admin(&self) -> String {
        self.context().token
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(FLOTILLA)
            .args(args)
            .env("FLOTILLA_CONTEXT", self.context_path())
            .env_remove("FLOTILLA_HUB")
            .env_remove("FLOTILLA_TOKEN")
            .output()
            .expect("running the CLI")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "flotilla {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Scrapes `/metrics` with the admin token and parses it strictly.
    fn scrape(&self) -> Exposition {
        let (status, ctype, text) = self.call("GET", "/metrics", Some(&self.admin()), None);
        assert_eq!(status, 200, "{text}");
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        Exposition::parse(&text)
    }

    fn sigterm(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- hub stdout ---\n{}", self.stdout_text());
            eprintln!("--- hub stderr ---\n{}", self.stderr_text());
        }
    }
}

/// A runtime for the HTTP client; the tests themselves are synchronous.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Sends `req`: status, content type and body.
fn http_response(req: reqwest::RequestBuilder) -> (u16, String, String) {
    runtime().block_on(async {
        let resp = req.send().await.expect("the hub answers");
        let status = resp.status().as_u16();
        let ctype =
            resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, ctype, resp.text().await.unwrap())
    })
}

/// An OpenMetrics text exposition, parsed strictly: every line a known comment or a
/// sample of a declared family, label values quoted and escaped, values numbers, and
/// `# EOF` last.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name -> type.
    types: BTreeMap<String, String>,
    /// (sample name, labels) -> value.
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"), "the exposition must end with # EOF");
        assert!(text.ends_with("# EOF\n"), "a newline after # EOF");
        for line in &lines[..lines.len() - 1] {
            if let Some(rest) = line.strip_prefix("# ") {
                let (keyword, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("bad comment {line:?}"));
                let (name, value) = rest.split_once(' ').unwrap_or_else(|| panic!("bad comment {line:?}"));
                assert!(valid_name(name), "bad metric name in {line:?}");
                match keyword {
                    "TYPE" => {
                        let known =
                            ["counter", "gauge", "histogram", "info", "summary", "unknown", "stateset"];
                        assert!(known.contains(&value), "unknown type in {line:?}");
                        assert!(e.types.insert(name.into(), value.into()).is_none(), "{name} declared twice");
                    }
                    "HELP" | "UNIT" => {}
                    _ => panic!("unknown comment {line:?}"),
                }
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner =
                        rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    (name, parse_labels(inner, line))
                }
            };
            assert!(valid_name(name), "bad sample name in {line:?}");
            let family =
                e.family_of(name).unwrap_or_else(|| panic!("sample of no declared family: {line:?}"));
            let kind = &e.types[&family];
            let suffix = &name[family.len()..];
            let allowed: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            assert!(allowed.contains(&suffix), "{name} is no sample of {kind} {family}");
            if suffix == "_bucket" {
                assert!(labels.contains_key("le"), "a bucket without le: {line:?}");
            }
            let key = (name.to_string(), labels);
            assert!(e.samples.insert(key, value).is_none(), "a sample twice: {line:?}");
        }
        e
    }

    fn family_of(&self, sample: &str) -> Option<String> {
        self.types.keys().filter(|f| sample.starts_with(f.as_str())).max_by_key(|f| f.len()).cloned()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    fn labels_of(&self, name: &str) -> Vec<&BTreeMap<String, String>> {
        self.samples.keys().filter(|(n, _)| n == name).map(|(_, l)| l).collect()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `a="x",b="y\"z"`: names, quoted values with `\\`, `\"` and `\n` escapes.
fn parse_labels(mut s: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (name, rest) = s.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
        assert!(valid_name(name), "bad label name in {line:?}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(labels.insert(name.to_string(), value).is_none(), "label twice in {line:?}");
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    labels
}

#[test]
fn metrics_count_requests_by_route_follow_raft_and_connected_devices() {
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every second: a killed agent's session ends 3 s after its last word.
    let hub =
        HubProcess::start(dir.path(), &["--metrics-listen", "127.0.0.1:0", "--heartbeat-interval", "1s"]);
    let admin = hub.admin();

    // Who may read them: nobody without a token, nobody scoped to sites.
    let (status, _, _) = hub.call("GET", "/metrics", None, None);
    assert_eq!(status, 401);
    let scoped = hub.cli_ok(&["api-token", "create", "--role", "viewer", "--site", "a"]);
    let (status, _, body) = hub.call("GET", "/metrics", Some(scoped.trim()), None);
    assert_eq!(status, 403, "{body}");
    let viewer = hub.cli_ok(&["api-token", "create", "--role", "viewer"]);
    let (status, _, _) = hub.call("GET", "/metrics", Some(viewer.trim()), None);
    assert_eq!(status, 200);

    let first = hub.scrape();
    for (family, kind) in [
        ("flotilla_api_requests", "counter"),
        ("flotilla_api_request_duration_seconds", "histogram"),
        ("flotilla_connected_devices", "gauge"),
        ("flotilla_sync_sessions_opened", "counter"),
        ("flotilla_sync_sessions_closed", "counter"),
        ("flotilla_sync_frames_rejected", "counter"),
        ("flotilla_enrolments", "counter"),
        ("flotilla_blob_bytes_served", "counter"),
        ("flotilla_controller_pass_duration_seconds", "histogram"),
        ("flotilla_raft_term", "gauge"),
        ("flotilla_raft_last_log_index", "gauge"),
        ("flotilla_raft_commit_index", "gauge"),
        ("flotilla_raft_applied_index", "gauge"),
        ("flotilla_raft_apply_lag", "gauge"),
        ("flotilla_raft_leader", "gauge"),
        ("flotilla_build", "info"),
    ] {
        assert_eq!(first.types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    assert_eq!(first.value("flotilla_raft_leader", &[]), Some(1.0));
    assert!(first.value("flotilla_raft_term", &[]).unwrap() >= 1.0);
    // The controllers ran at start: every planner timed.
    for c in ["scheduler", "manifests", "devices", "apps", "sites"] {
        let n = first.value("flotilla_controller_pass_duration_seconds_count", &[("controller", c)]);
        assert!(n.is_some_and(|n| n >= 1.0), "{c}: {n:?}");
    }

    // Requests are counted under the route's template, not the path asked for.
    let sites = [("method", "GET"), ("route", "/api/v1/{kind}"), ("code", "200")];
    let site = [("method", "GET"), ("route", "/api/v1/{kind}/{name}"), ("code", "404")];
    let before = first.value("flotilla_api_requests_total", &sites).unwrap_or(0.0);
    let before_404 = first.value("flotilla_api_requests_total", &site).unwrap_or(0.0);
    for _ in 0..3 {
        assert_eq!(hub.call("GET", "/api/v1/sites", Some(&admin), None).0, 200);
    }
    for name in ["no-such-1", "no-such-2"] {
        assert_eq!(hub.call("GET", &format!("/api/v1/sites/{name}"), Some(&admin), None).0, 404);
    }
    let applied_before = first.value("flotilla_raft_applied_index", &[]).unwrap();
    let body = r#"{"apiVersion":"flotilla.dev/v1","kind":"Site","metadata":{"name":"berlin"},"spec":{}}"#;
    let (status, _, text) = hub.call("PUT", "/api/v1/sites/berlin", Some(&admin), Some(body));
    assert!(status == 200 || status == 201, "{status} {text}");
    let after = hub.scrape();
    assert_eq!(after.value("flotilla_api_requests_total", &sites), Some(before + 3.0));
    assert_eq!(after.value("flotilla_api_requests_total", &site), Some(before_404 + 2.0));
    let histogram_count = after.value("flotilla_api_request_duration_seconds_count", &sites);
    assert_eq!(histogram_count, Some(before + 3.0));
    for labels in after.labels_of("flotilla_api_requests_total") {
        assert!(!labels["route"].contains("no-such") && !labels["route"].contains("berlin"), "{labels:?}");
    }
    // The write went through Raft: the applied index moved, and nothing is left unapplied
    // for long.
    assert!(after.value("flotilla_raft_applied_index", &[]).unwrap() > applied_before);
    assert!(
        after.value("flotilla_raft_commit_index", &[]).unwrap()
            >= after.value("flotilla_raft_applied_index", &[]).unwrap()
    );
    assert!(
        after.value("flotilla_raft_last_log_index", &[]).unwrap()
            >= after.value("flotilla_raft_commit_index", &[]).unwrap()
    );

    // A simulated agent (the agent's own sync core, in another process) connects: one
    // device over QUIC, an enrolment accepted; gone again when it is killed.
    let quic = [("transport", "quic")];
    let mut sim = Command::new(FLOTILLA)
        .args(["sim", "--agents", "1", "--prefix", "metrics", "--ramp", "0s"])
        .arg("--state-dir")
        .arg(dir.path().join("sim"))
        .env("FLOTILLA_CONTEXT", hub.context_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let connected = wait_until("the simulated device to count as connected", Duration::from_secs(60), || {
        let m = hub.scrape();
        (m.value("flotilla_connected_devices", &quic) == Some(1.0)).then_some(m)
    });
    assert_eq!(connected.value("flotilla_sync_sessions_opened_total", &quic), Some(1.0));
    assert_eq!(connected.value("flotilla_enrolments_total", &[("outcome", "accepted")]), Some(1.0));
    let _ = sim.kill();
    let _ = sim.wait();
    // Killed, it says nothing more: its session ends at the silence deadline.
    let gone = wait_until("the device to count as gone", Duration::from_secs(30), || {
        let m = hub.scrape();
        (m.value("flotilla_connected_devices", &quic) == Some(0.0)).then_some(m)
    });
    assert_eq!(gone.value("flotilla_sync_sessions_closed_total", &quic), Some(1.0));

    // The plain loopback listener serves the same series without a token.
    let stdout = hub.stdout_text();
    let url = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics  "))
        .unwrap_or_else(|| panic!("no metrics address in {stdout}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (status, ctype, text) = http_response(reqwest::Client::new().get(url));
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let plain = Exposition::parse(&text);
    assert_eq!(plain.value("flotilla_raft_leader", &[]), Some(1.0));
}

#[test]
fn the_plain_metrics_listener_refuses_addresses_other_than_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::spawn(dir.path(), &["--metrics-listen", "0.0.0.0:0"], &[]);
    let status = wait_until("the hub to refuse", Duration::from_secs(60), || hub.child.try_wait().unwrap());
    assert!(!status.success());
    let err = hub.stderr_text();
    assert!(err.contains("loopback") && err.contains("--metrics-listen"), "{err}");
    assert!(!hub.stdout_text().contains("hub ready"));
}

/// Receives what the hub tells systemd, one datagram at a time, within `timeout`.
fn recv_notification(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("notify socket: {e}"),
    }
}

#[test]
fn systemd_hears_ready_once_the_api_answers_then_watchdog_pings_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut hub = HubProcess::spawn(
        dir.path(),
        &[],
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")],
    );

    // The first thing the hub says is READY=1, and the API answers at that moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no READY=1 within 60 s");
        if let Some(msg) = recv_notification(&socket, left) {
            break msg;
        }
    };
    assert!(ready.lines().any(|l| l == "READY=1"), "first notification: {ready:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=serving the API")), "{ready:?}");
    assert!(hub.healthz(), "READY=1 came before the API answered");
    assert!(hub.context_path().exists());

    // Watchdog: at least three pings, half a period (0.5 s) apart, within 5 s.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert!(started.elapsed() < Duration::from_secs(5), "{pings} watchdog pings in 5 s");
        match recv_notification(&socket, Duration::from_secs(1)) {
            Some(m) if m.lines().any(|l| l == "WATCHDOG=1") => pings += 1,
            Some(m) => panic!("unexpected notification {m:?}"),
            None => {}
        }
    }
    // The first may have waited in the socket since READY; the third comes a whole
    // period after it, give or take the health check's time.
    assert!(started.elapsed() >= Duration::from_millis(600), "pings come every half period, not in a burst");

    hub.sigterm();
    let stopping = wait_until("STOPPING=1", Duration::from_secs(30), || {
        recv_notification(&socket, Duration::from_millis(200))
            .filter(|m| m.lines().any(|l| l == "STOPPING=1"))
    });
    assert!(stopping.contains("STATUS=shutting down"), "{stopping:?}");
    let status = wait_until("the hub to exit", Duration::from_secs(30), || hub.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
}

#[test]
fn json_logs_carry_rustls_records_bridged_from_log() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::spawn(
        dir.path(),
        &["--log-format", "json"],
        &[("FLOTILLA_LOG", "info,openraft=warn,rustls=debug")],
    );
    hub.wait_ready();
    // A TLS handshake, for rustls to log about.
    assert_eq!(hub.call("GET", "/api/v1/cluster", Some(&hub.admin()), None).0, 200);
    let lines = wait_until("a rustls record in the log", Duration::from_secs(30), || {
        let text = hub.stderr_text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect();
        lines.iter().any(|v| v["target"].as_str().is_some_and(|t| t.starts_with("rustls::"))).then_some(lines)
    });
    let ready = lines.iter().find(|v| v["message"] == "hub ready").expect("the hub's own record");
    assert_eq!(ready["level"], "INFO");
    assert!(ready["api"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{ready}");
    assert!(ready["timestamp"].is_string());
    let rustls = lines.iter().find(|v| v["target"].as_str().unwrap_or("").starts_with("rustls::")).unwrap();
    assert_eq!(rustls["level"], "DEBUG", "{rustls}");
    assert!(rustls["message"].is_string(), "{rustls}");
}

#[test]
fn token_create_gives_devices_an_address_they_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    // Bound to every interface, no --advertise: an address of this machine, not loopback.
    let hub = HubProcess::start(&dir.path().join("any"), &["--quic-listen", "0.0.0.0:0"]);
    let out = hub.cli_ok(&["token", "create"]);
    let addr = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("hub = \"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no hub line in {out}"));
    let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|_| panic!("{addr:?} is not ip:port"));
    assert!(!addr.ip().is_loopback() && !addr.ip().is_unspecified(), "{addr}");
    assert_eq!(addr.port(), hub.context().quic.rsplit_once(':').unwrap().1.parse::<u16>().unwrap());
    assert!(cloud_hub::advertise::interface_addresses().contains(&addr.ip()), "{addr} is not this machine's");
    drop(hub);

    // --advertise decides, port added.
    let hub = HubProcess::start(
        &dir.path().join("advertised"),
        &["--quic-listen", "0.0.0.0:0", "--advertise", "hub.example.test"],
    );
    let out = hub.cli_ok(&["token", "create"]);
    let port = hub.context().quic.rsplit_once(':').unwrap().1.to_string();
    assert!(out.contains(&format!("hub = \"hub.example.test:{port}\"")), "{out}");
}

#[test]
fn a_frame_over_the_limit_is_counted_and_closes_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path(), &[]);
    let tcp = [("transport", "tcp")];
    assert_eq!(hub.scrape().value("flotilla_sync_frames_rejected_total", &tcp), Some(0.0));

    // An enrolling device (no certificate) on the TCP fallback, whose first frame
    // announces 4 GiB: the hub gives up on that stream and counts it.
    let ctx = hub.context();
    let ca = pem::decode_certs(&ctx.ca_cert_pem).unwrap().remove(0);
    let tls = provisioning::tls::enrolment_client_config(provisioning::sha256_fingerprint(&ca)).unwrap();
    let rt = runtime();
    let mut conn = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(&ctx.quic).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = tokio_rustls::TlsConnector::from(tls).connect(name, stream).await.unwrap();
        conn.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        conn.flush().await.unwrap();
        conn
    });
    wait_until("the rejected frame to be counted", Duration::from_secs(10), || {
        (hub.scrape().value("flotilla_sync_frames_rejected_total", &tcp) == Some(1.0)).then_some(())
    });
    // The peer says nothing more; the hub still hangs up on it (before, the reader
    // task kept the connection open until the peer wrote again or keep-alive ended it).
    let closed = rt.block_on(async {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await
    });
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the hub kept the connection of a peer that sent a malformed frame open: {closed:?}"
    );
}
