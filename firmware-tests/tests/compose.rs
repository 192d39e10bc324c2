//! Bring your compose file: a real-world `docker-compose.yml` (several services, a
//! named volume, a device, a healthcheck, a one-shot seeding service) is converted
//! and applied as it is, and runs on a real agent. (The test image's entrypoint is
//! `sleep`, so services set `entrypoint`, as Compose requires to replace it.)

use firmware_tests::{Agent, Hub, busybox_image, free_port, http_status, require_root, wait_until};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

const COMPOSE: &str = r#"name: kiosk
x-flotilla:
  selector: {role: kiosk}
services:
  seed:
    image: kiosk:1
    entrypoint: ["/bin/sh", "-c", "echo welcome > /www/index.html"]
    volumes: [site:/www]
  web:
    image: kiosk:1
    entrypoint: /bin/busybox httpd -f -p PORT -h /www
    ports: ["PORT:PORT"]
    volumes: [site:/www]
    restart: unless-stopped
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:PORT/index.html"]
      interval: 1s
      timeout: 2s
      retries: 3
    depends_on:
      seed: {condition: service_completed_successfully}
  scale:
    image: kiosk:1
    entrypoint: ["/bin/sh", "-c", "echo weight=42 > /dev/ttyS0; sleep 3600"]
    devices: ["PTY:/dev/ttyS0"]
    environment:
      UNIT: grams
    restart: always
  poller:
    image: kiosk:1
    entrypoint: ["/bin/sh", "-c"]
    command: ["while true; do wget -q -O /www/polled http://web:PORT/index.html; sleep 1; done"]
    volumes: [site:/www]
    mem_limit: 32m
    restart: always
volumes:
  site: {}
"#;

#[test]
fn a_real_world_compose_file_is_converted_and_runs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A pty pair stands in for the scale's serial port.
    let (mut master, slave) = {
        use std::os::fd::FromRawFd;
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty writes two fds; the other arguments may be null.
        let rc = unsafe {
            libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
        };
        assert_eq!(rc, 0);
        let path = std::fs::read_link(format!("/proc/self/fd/{s}")).unwrap().to_string_lossy().into_owned();
        // SAFETY: a fresh fd from openpty, ours from here on (the slave stays open).
        (unsafe { std::fs::File::from_raw_fd(m) }, path)
    };
    let hub = Hub::start(dir.path());
    let image = busybox_image(dir.path(), "kiosk:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-kiosk", &hub.quic, &token, &[("role", "kiosk")]);
    agent.set_config(&format!("allowed_devices = [\"{slave}\"]"));
    agent.start();
    let compose = dir.path().join("docker-compose.yml");
    std::fs::write(&compose, COMPOSE.replace("PORT", &port.to_string()).replace("PTY", &slave)).unwrap();

    // Converting says what it approximated and prints an App.
    let out = hub.cli(&["convert", "compose", compose.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("kind: App") && yaml.contains("initContainers"), "{yaml}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("readiness probe"),
        "the healthcheck's mapping is said"
    );

    // Applied as it is.
    let out = hub.cli(&["apply", "-f", compose.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("app/kiosk"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until("the kiosk app to be Running (healthcheck passing)", LONG, || {
        (hub.get("apps", Some("kiosk"))?["status"]["phase"] == "Running").then_some(())
    });
    assert_eq!(http_status(port, "/index.html"), Some(200), "the published port serves the seeded page");
    let volume = agent.state_dir.join("volumes/kiosk/site");
    wait_until("the poller to reach web by its service name", LONG, || {
        (std::fs::read_to_string(volume.join("polled")).ok()? == "welcome\n").then_some(())
    });
    use std::io::Read;
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut seen = String::new();
    wait_until("the scale's reading on the serial line", LONG, || {
        let mut buf = [0u8; 256];
        if let Ok(n) = master.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen.contains("weight=42").then_some(())
    });

    // A compose file with what Flotilla cannot do is refused, each thing named.
    let bad = dir.path().join("bad-compose.yml");
    std::fs::write(&bad, "x-flotilla: {selector: {role: kiosk}}\nservices:\n  app:\n    build: .\n    image: a:1\n    networks: [x]\n").unwrap();
    let out = hub.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services.app.build") && err.contains("services.app.networks"), "{err}");
}
