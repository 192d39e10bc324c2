//! Configs and Secrets end to end, with a real hub, agent and container: the secret
//! reaches the container as a file and a variable, and nowhere else in the clear (not
//! the hub's store, Raft log or any file under its data directory, not the agent's
//! state, not a log); a change to it or to the config rolls the container.

use firmware_tests::{Agent, Hub, busybox_image, require_root, wait_until};
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

const APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: pay
spec:
  selector:
    matchLabels: {role: pay}
  network: None
  terminationGracePeriodSeconds: 1
  volumes:
    - name: creds
      secret: {name: pay-creds}
    - name: conf
      config: {name: pay-conf}
  containers:
    - name: main
      image: pay:1
      command: ["/bin/sleep", "3600"]
      env:
        - name: PAY_PASSWORD
          valueFrom: {secret: {name: pay-creds, key: password}}
        - name: PAY_MODE
          valueFrom: {config: {name: pay-conf, key: mode}}
      volumeMounts:
        - {name: creds, mountPath: /run/creds}
        - {name: conf, mountPath: /etc/pay}
"#;

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file()
                && let Ok(bytes) = std::fs::read(e.path())
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

/// The container's variables, read from the host.
fn environ(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

fn running_pid(agent: &Agent) -> Option<(String, i32)> {
    let id = agent.runtime_containers().into_iter().find(|id| id.starts_with("pay_main_"))?;
    let pid = agent.container_pid(&id)?;
    Some((id, pid))
}

#[test]
fn a_secret_reaches_its_container_and_nothing_else_and_a_change_rolls_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-pay", &hub.quic, &token, &[("role", "pay")]);
    agent.start();
    let image = busybox_image(dir.path(), "pay:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let password = format!("pw-{nanos}-correct-horse");
    hub.cli_ok(&["create", "secret", "pay-creds", "--from-literal", &format!("password={password}")]);
    hub.cli_ok(&["create", "config", "pay-conf", "--from-literal", "mode=live"]);
    let out = hub.apply(dir.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // In the container: as a file (read-only) and as a variable.
    let (id, pid) = wait_until("the app's container to run", LONG, || running_pid(&agent));
    let root = format!("/proc/{pid}/root");
    wait_until("the secret file in the container", LONG, || {
        (std::fs::read_to_string(format!("{root}/run/creds/password")).ok()? == password).then_some(())
    });
    assert_eq!(std::fs::read_to_string(format!("{root}/etc/pay/mode")).unwrap(), "live");
    // Read from the container's process as it is now: a pid read earlier may have ended
    // and been reused by the time its environment is read (seen on a loaded CI machine).
    let expected = [format!("PAY_PASSWORD={password}"), "PAY_MODE=live".to_string()];
    wait_until("the secret and the config in the container's environment", LONG, || {
        let (_, pid) = running_pid(&agent)?;
        let env = environ(pid);
        expected.iter().all(|e| env.contains(e)).then_some(())
    });

    // The API shows its keys, never its value.
    let listed = hub.cli_ok(&["get", "secrets"]);
    assert!(listed.contains("pay-creds") && listed.contains("password"), "{listed}");
    let described = hub.cli_ok(&["describe", "app", "pay"]);
    assert!(
        described.contains("Secrets:     pay-creds") && described.contains("Configs:     pay-conf"),
        "{described}"
    );
    let shown = hub.cli_ok(&["get", "secret", "pay-creds", "-o", "yaml"]);
    assert!(!shown.contains(&password), "{shown}");

    // Nowhere else in the clear: not in any file under the hub's data directory (store,
    // Raft log, snapshots), the agent's state directory (its database, logs of
    // containers) or either process's log.
    let needle = password.as_bytes();
    assert_eq!(files_containing(&hub.data_dir, needle), Vec::<String>::new(), "hub data");
    assert_eq!(files_containing(&agent.state_dir, needle), Vec::<String>::new(), "agent state");
    // On the device it lives only in the agent's private tmpfs.
    let private = agent.runtime_dir.join("private");
    let outside: Vec<String> = files_containing(&agent.runtime_dir, needle)
        .into_iter()
        .filter(|f| !Path::new(f).starts_with(&private))
        .collect();
    assert_eq!(outside, Vec::<String>::new(), "agent runtime files outside its tmpfs");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.lines().any(|l| l.split(' ').nth(4) == private.to_str() && l.contains(" - tmpfs ")),
        "{} is a tmpfs",
        private.display()
    );
    assert!(!std::fs::read(hub.log_path()).unwrap().windows(needle.len()).any(|w| w == needle), "hub log");
    assert!(!agent.log().contains(&password), "agent log");

    // A new value rolls the container, which then sees it.
    let rotated = format!("pw-{nanos}-rotated");
    hub.cli_ok(&["create", "secret", "pay-creds", "--from-literal", &format!("password={rotated}")]);
    let (new_id, new_pid) = wait_until("the container to be recreated with the new secret", LONG, || {
        running_pid(&agent).filter(|(i, _)| *i != id)
    });
    assert!(environ(new_pid).contains(&format!("PAY_PASSWORD={rotated}")));
    assert_eq!(std::fs::read_to_string(format!("/proc/{new_pid}/root/run/creds/password")).unwrap(), rotated);
    // A config change rolls it too.
    hub.cli_ok(&["create", "config", "pay-conf", "--from-literal", "mode=training"]);
    let (_, pid3) = wait_until("the container to be recreated with the new config", LONG, || {
        running_pid(&agent).filter(|(i, _)| *i != new_id)
    });
    assert_eq!(std::fs::read_to_string(format!("/proc/{pid3}/root/etc/pay/mode")).unwrap(), "training");

    // Still used: the hub keeps it.
    let out = hub.cli(&["delete", "secret", "pay-creds"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by app pay"), "{:?}", out);
    assert_eq!(files_containing(&agent.state_dir, rotated.as_bytes()), Vec::<String>::new());
}

#[test]
fn one_app_name_in_two_namespaces_runs_twice_on_a_device_each_with_its_own_secret() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-ns", &hub.quic, &token, &[("role", "pay")]);
    agent.start();
    let image = busybox_image(dir.path(), "pay:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    // The same names in the default namespace and in `kiosk`: by -n, and by the document.
    for (ns, password, mode) in [("default", "pw-default-1", "live"), ("kiosk", "pw-kiosk-2", "kiosk")] {
        hub.cli_ok(&[
            "-n",
            ns,
            "create",
            "secret",
            "pay-creds",
            "--from-literal",
            &format!("password={password}"),
        ]);
        hub.cli_ok(&["-n", ns, "create", "config", "pay-conf", "--from-literal", &format!("mode={mode}")]);
    }
    let out = hub.apply(dir.path(), APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hub.apply(dir.path(), &APP.replace("  name: pay\n", "  name: pay\n  namespace: kiosk\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Two containers, each seeing its own namespace's secret and config.
    let env_of = |prefix: &str| {
        let id = agent.runtime_containers().into_iter().find(|id| id.starts_with(prefix))?;
        Some(environ(agent.container_pid(&id)?))
    };
    for (prefix, password, mode) in
        [("pay_main_", "pw-default-1", "live"), ("pay.kiosk_main_", "pw-kiosk-2", "kiosk")]
    {
        let expected = [format!("PAY_PASSWORD={password}"), format!("PAY_MODE={mode}")];
        wait_until(&format!("{prefix} to run with its namespace's secret and config"), LONG, || {
            let env = env_of(prefix)?;
            expected.iter().all(|e| env.contains(e)).then_some(())
        });
    }
    let all = hub.cli_ok(&["get", "apps", "-A"]);
    assert!(all.starts_with("NAMESPACE") && all.contains("default") && all.contains("kiosk"), "{all}");
    let kiosk = hub.cli_ok(&["-n", "kiosk", "get", "apps"]);
    assert_eq!(kiosk.lines().count(), 2, "one app in kiosk: {kiosk}");
    // Deleting kiosk's app leaves the default one running; then kiosk's secret may go.
    hub.cli_ok(&["-n", "kiosk", "delete", "app", "pay"]);
    wait_until("kiosk's container to go", LONG, || env_of("pay.kiosk_main_").is_none().then_some(()));
    assert!(env_of("pay_main_").is_some(), "the default namespace's app keeps running");
    hub.cli_ok(&["-n", "kiosk", "delete", "secret", "pay-creds"]);
    let out = hub.cli(&["delete", "secret", "pay-creds"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("used by app pay"), "{out:?}");
}
