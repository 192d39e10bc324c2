//! `flotilla get -l/--site/--field-selector` and `flotilla get -w` against a real hub
//! process (`flotilla hub serve` on loopback, with a two-revision history window): filtered
//! lists, and a watch that prints each change once as it comes, resumes through a hub restart
//! (SIGKILL), and lists again (after a 410) when it was away while the window moved past it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn flotilla() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    c.env_remove("FLOTILLA_HUB").env_remove("FLOTILLA_TOKEN");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Hub {
    data_dir: PathBuf,
    log: PathBuf,
    api: String,
    quic: String,
    child: Option<Child>,
}

impl Hub {
    fn start(dir: &Path) -> Hub {
        let mut hub = Hub {
            data_dir: dir.join("hub"),
            log: dir.join("hub.log"),
            api: format!("127.0.0.1:{}", free_port()),
            quic: format!("127.0.0.1:{}", free_port()),
            child: None,
        };
        hub.spawn();
        hub
    }

    fn context(&self) -> PathBuf {
        self.data_dir.join("context.json")
    }

    fn spawn(&mut self) {
        let readies = std::fs::read_to_string(&self.log).unwrap_or_default().matches("hub ready\n").count();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = flotilla()
            .args(["hub", "serve", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--api-listen", &self.api, "--quic-listen", &self.quic, "--tcp-listen", "off"])
            // A tiny history window, so that a watcher that misses a few changes must list again.
            .args(["--watch-history", "2"])
            .env("FLOTILLA_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.matches("hub ready\n").count() > readies && self.cli(&["get", "sites"]).status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "the hub did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        flotilla().args(args).env("FLOTILLA_CONTEXT", self.context()).output().unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "flotilla {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, dir: &Path, yaml: &str) {
        let path = dir.join("apply.yaml");
        std::fs::write(&path, yaml).unwrap();
        self.cli_ok(&["apply", "-f", path.to_str().unwrap()]);
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- hub log ----\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        self.kill();
    }
}

fn app(name: &str, labels: &str, image: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: App\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  containers:\n  - name: c\n    image: {image}\n"
    )
}

/// A `flotilla get -w` process, its stdout lines on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Each shown app's image, as the events told.
    images: std::collections::BTreeMap<String, String>,
}

impl Watcher {
    /// The next event, as (type, name, image), leaving out the hub's own status writes (a
    /// MODIFIED with the image the watch already showed: the app controller's).
    fn next(&mut self) -> (String, String, String) {
        loop {
            let line =
                self.lines.recv_timeout(DEADLINE).expect("a line from flotilla get -w within the deadline");
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let e = (
                v["type"].as_str().unwrap().to_string(),
                v["object"]["metadata"]["name"].as_str().unwrap().to_string(),
                v["object"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string(),
            );
            let shown = self.images.get(&e.1) == Some(&e.2);
            match e.0.as_str() {
                "DELETED" => drop(self.images.remove(&e.1)),
                _ => drop(self.images.insert(e.1.clone(), e.2.clone())),
            }
            if e.0 == "MODIFIED" && shown {
                continue;
            }
            return e;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ev(t: &str, name: &str, image: &str) -> (String, String, String) {
    (t.to_string(), name.to_string(), image.to_string())
}

#[test]
fn get_filters_and_follows_changes_through_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path());
    hub.apply(dir.path(), &app("web", "tier: web", "img:1"));
    hub.apply(dir.path(), &app("api", "tier: web, canary: 'yes'", "img:1"));
    hub.apply(dir.path(), &app("db", "tier: db", "img:1"));

    // Filtered lists, in table and JSON.
    let table = hub.cli_ok(&["get", "apps", "-l", "tier=web,!canary"]);
    let rows: Vec<&str> = table.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(rows, ["web"], "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&hub.cli_ok(&["get", "apps", "-l", "tier in (web,db)", "-o", "json"])).unwrap();
    let names: Vec<&str> =
        json["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "db", "web"]);
    assert!(json["metadata"]["revision"].as_u64().unwrap() > 0);
    let json: serde_json::Value = serde_json::from_str(&hub.cli_ok(&[
        "get",
        "apps",
        "--field-selector",
        "metadata.name=db",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(json["items"].as_array().unwrap().len(), 1);
    let out = hub.cli(&["get", "apps", "-l", "tier in (web"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected"), "a bad selector says what is wrong: {err}");
    let out = hub.cli(&["get", "configs", "--site", "s1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("site"), "{out:?}");

    // Follow the web tier: the list first, then each change once.
    let mut child = flotilla()
        .args(["get", "apps", "-w", "-l", "tier=web", "-o", "json"])
        .env("FLOTILLA_CONTEXT", hub.context())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut watcher = Watcher { child, lines, images: Default::default() };
    let mut listed = vec![watcher.next(), watcher.next()];
    listed.sort();
    assert_eq!(listed, [ev("ADDED", "api", "img:1"), ev("ADDED", "web", "img:1")]);
    hub.apply(dir.path(), &app("db", "tier: db", "img:2"));
    hub.apply(dir.path(), &app("web", "tier: web", "img:2"));
    assert_eq!(watcher.next(), ev("MODIFIED", "web", "img:2"), "the db change is not shown");
    hub.apply(dir.path(), &app("api", "tier: db", "img:1"));
    assert_eq!(watcher.next(), ev("DELETED", "api", "img:1"), "api left the selection");
    hub.apply(dir.path(), &app("cache", "tier: web", "img:1"));
    assert_eq!(watcher.next(), ev("ADDED", "cache", "img:1"));

    // Through a hub restart (SIGKILL): the watch reconnects and resumes where it was, or,
    // when the restarted hub's history starts after that point, lists again (ADDED for what
    // is there, each once) and follows on. Either way the next change comes through once.
    hub.kill();
    hub.spawn();
    hub.apply(dir.path(), &app("web", "tier: web", "img:3"));
    let mut relisted = Vec::new();
    loop {
        let e = watcher.next();
        let done = e.1 == "web" && e.2 == "img:3";
        relisted.push(e);
        if done {
            break;
        }
    }
    // Either the resumed stream's change, or a new list (taken after the change) that ends
    // with it; nothing twice.
    let resumed = [ev("MODIFIED", "web", "img:3")];
    let listed_after = [ev("ADDED", "cache", "img:1"), ev("ADDED", "web", "img:3")];
    let listed_before =
        [ev("ADDED", "cache", "img:1"), ev("ADDED", "web", "img:2"), ev("MODIFIED", "web", "img:3")];
    eprintln!("after the restart the watch showed {relisted:?}");
    let last = relisted.pop().unwrap();
    relisted.sort();
    relisted.push(last);
    assert!(
        relisted == resumed || relisted == listed_after || relisted == listed_before,
        "after the restart: {relisted:?}"
    );
    hub.apply(dir.path(), &app("cache", "tier: web", "img:2"));
    assert_eq!(watcher.next(), ev("MODIFIED", "cache", "img:2"));

    // The watcher is away (stopped) while the hub restarts and changes move its history
    // window past the watcher's resume point: it is told 410, lists again and follows on.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(watcher.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    hub.kill();
    hub.spawn();
    for i in 0..3 {
        hub.apply(dir.path(), &app("db", "tier: db", &format!("img:{}", 10 + i)));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut relisted = vec![watcher.next(), watcher.next()];
    relisted.sort();
    assert_eq!(relisted, [ev("ADDED", "cache", "img:2"), ev("ADDED", "web", "img:3")]);
    hub.apply(dir.path(), &app("web", "tier: web", "img:4"));
    assert_eq!(watcher.next(), ev("MODIFIED", "web", "img:4"));
}
