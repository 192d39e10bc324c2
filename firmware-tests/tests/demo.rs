//! The README's demo, as a user runs it: `flotilla demo` brings up a hub, an agent
//! and the demo app; the CLI sees the device Online and the app Running; the app
//! answers HTTP; Ctrl-C removes the containers and their cgroups.

use firmware_tests::{bin, free_port, http_status, require_root, wait_until};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn demo_image() -> PathBuf {
    let path = std::env::var_os("FLOTILLA_DEMO_IMAGE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/out/demo-httpd.oci.tar")
    });
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo xtask images` (cargo xtask test does)",
        path.display()
    );
    path
}

fn flotilla_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup/memory/flotilla")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("demo_"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_demo_command_runs_the_app_and_cleans_up() {
    require_root();
    let image = demo_image();
    let app_port = free_port();
    let mut child = Command::new(bin("flotilla"))
        .arg("demo")
        .arg("--image")
        .arg(&image)
        .args(["--app-port", &app_port.to_string()])
        .args(["--api-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--quic-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--agent-bin")
        .arg(bin("flotilla-agent"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting flotilla demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("[demo] {line}");
            let _ = tx.send(line);
        }
    });
    let mut context = None;
    let mut lines = Vec::new();
    wait_until("the demo to say it is running", Duration::from_secs(180), || {
        while let Ok(line) = rx.try_recv() {
            if let Some(rest) = line.split("export FLOTILLA_CONTEXT=").nth(1) {
                context = Some(PathBuf::from(rest.trim()));
            }
            lines.push(line);
        }
        assert!(child.try_wait().unwrap().is_none(), "the demo exited early: {lines:#?}");
        lines.iter().any(|l| l.contains("Flotilla demo is running")).then_some(())
    });
    let context = context.expect("the demo prints how to point the CLI at the hub");
    assert!(lines.iter().any(|l| l.contains(&format!("http://127.0.0.1:{app_port}/"))), "{lines:#?}");

    assert_eq!(http_status(app_port, "/healthz"), Some(200));
    assert_eq!(http_status(app_port, "/"), Some(200));
    let cli = |args: &[&str]| {
        let out =
            Command::new(bin("flotilla")).args(args).env("FLOTILLA_CONTEXT", &context).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let devices = cli(&["get", "devices"]);
    assert!(devices.lines().any(|l| l.starts_with("demo-device") && l.contains("Online")), "{devices}");
    let apps = cli(&["get", "apps"]);
    assert!(apps.lines().any(|l| l.starts_with("demo") && l.contains("Running")), "{apps}");
    assert_eq!(flotilla_cgroups().len(), 1, "one demo container cgroup");

    // Ctrl-C: everything goes.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let status = wait_until("the demo to exit", Duration::from_secs(90), || child.try_wait().unwrap());
    assert!(status.success(), "demo exit status {status}");
    assert_eq!(http_status(app_port, "/healthz"), None, "the app is gone");
    assert!(flotilla_cgroups().is_empty(), "cgroups left: {:?}", flotilla_cgroups());
    assert!(!context.exists(), "the temporary data directory is removed");
}
