//! Failure paths of the runtime and its helper: unknown ids, broken bundles, garbage
//! on the helper's stdin, and a helper that dies with requests in flight.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_runtime::{ContainerRuntime, HELPER_SUBCOMMAND, RuntimeError};
use common::*;
use shared_proto::NetworkMode;
use shared_proto::manifest::ContainerLimits;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found_and_bad_ids_are_invalid() {
    let env = TestEnv::new();
    let id = unique_id("ghost");
    assert_eq!(env.runtime.start(&id).await, Err(RuntimeError::NotFound { id: id.clone() }));
    assert!(matches!(env.runtime.kill(&id, libc::SIGTERM).await, Err(RuntimeError::NotFound { .. })));
    assert!(matches!(env.runtime.delete(&id, true).await, Err(RuntimeError::NotFound { .. })));
    assert_eq!(env.runtime.state(&id).await, Ok(None));
    for bad in ["../etc", "", "a/b", ".."] {
        assert!(
            matches!(env.runtime.start(bad).await, Err(RuntimeError::InvalidRequest(_))),
            "id {bad:?} is refused"
        );
    }
    env.finish().await;
}

fn assert_nothing_left(env: &TestEnv, id: &str) {
    assert!(!env.state_dir(id).exists(), "no state dir left for {id}");
    for c in CGROUP_CONTROLLERS {
        assert!(!cgroup_dir(c, id).exists(), "no {c} cgroup left for {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bundles_fail_clearly_and_leave_nothing_behind() {
    let env = TestEnv::new();

    let id = unique_id("badjson");
    let bundle = env.dir.path().join("bad-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{ not json").unwrap();
    match env.runtime.create(&id, &bundle).await {
        Err(RuntimeError::InvalidRequest(m)) => assert!(m.contains(&id), "message names the container: {m}"),
        other => panic!("expected an invalid request, got {other:?}"),
    }
    assert_nothing_left(&env, &id);

    let id = unique_id("nobundle");
    let missing = env.dir.path().join("no-such-bundle");
    match env.runtime.create(&id, &missing).await {
        Err(RuntimeError::InvalidRequest(m)) => assert!(m.contains("config.json"), "{m}"),
        other => panic!("expected an invalid request, got {other:?}"),
    }
    assert_nothing_left(&env, &id);

    // Far enough to make namespaces and cgroups before the init finds no executable.
    let id = unique_id("noexec");
    let bundle = env.bundle(&id, &["/no/such/binary"], NetworkMode::None, ContainerLimits::default());
    match env.runtime.create(&id, &bundle).await {
        Err(RuntimeError::InvalidRequest(m)) => assert!(m.contains("/no/such/binary"), "{m}"),
        other => panic!("expected an invalid request, got {other:?}"),
    }
    assert_nothing_left(&env, &id);

    // A rootfs that vanished: libcontainer fails after making its state dir.
    let id = unique_id("norootfs");
    let bundle = env.bundle(&id, &["/bin/true"], NetworkMode::None, ContainerLimits::default());
    env.rootfs.release(&id).unwrap();
    assert!(env.runtime.create(&id, &bundle).await.is_err());
    assert_nothing_left(&env, &id);

    assert!(env.runtime.list().await.unwrap().is_empty(), "nothing listed after failed creates");
    // The helper survived all of that and still runs containers.
    let id = unique_id("after");
    let bundle = env.bundle(&id, &["/bin/true"], NetworkMode::None, ContainerLimits::default());
    let mut exits = env.runtime.subscribe_exits();
    env.runtime.create(&id, &bundle).await.unwrap();
    env.runtime.start(&id).await.unwrap();
    assert_eq!(wait_exit(&mut exits, &id).await.exit_code, Some(0));
    env.runtime.delete(&id, false).await.unwrap();
    env.rootfs.release(&id).unwrap();
    env.finish().await;
}

/// Runs the helper binary by hand, feeds it `input`, closes stdin and returns its
/// exit code and stderr.
fn helper_with_input(input: &[u8]) -> (Option<i32>, String) {
    let root = tempfile::tempdir().unwrap();
    let mut child = Command::new(HELPER_BIN)
        .arg(HELPER_SUBCOMMAND)
        .arg("--root")
        .arg(root.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The helper may exit before reading everything; a broken pipe here is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "helper did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn garbage_on_the_helper_stdin_makes_it_exit_with_an_error() {
    // A well-formed length with a body that is not a request.
    let (code, stderr) = helper_with_input(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("malformed request frame"), "stderr: {stderr}");
    // Text: its first four bytes read as a length far over the limit.
    let (code, stderr) = helper_with_input(b"hello, helper\n");
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("exceeds"), "stderr: {stderr}");
    // Half a frame, then EOF.
    let (code, _) = helper_with_input(&[40, 0, 0, 0, 1]);
    assert_eq!(code, Some(2));
    // Plain EOF is the agent going away: a clean exit.
    assert_eq!(helper_with_input(&[]).0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_death_fails_requests_in_flight_and_the_next_request_respawns_it() {
    let env = TestEnv::new();
    env.runtime.ensure_helper().await.unwrap();
    let first = env.runtime.helper_pid().await.unwrap() as i32;
    let first_pid = nix::unistd::Pid::from_raw(first);
    // Frozen, it cannot answer: the list request below stays in flight.
    nix::sys::signal::kill(first_pid, nix::sys::signal::SIGSTOP).unwrap();
    // `join!` polls the request first: it is registered and sent before the kill.
    let list = env.runtime.list();
    let killer = async {
        nix::sys::signal::kill(first_pid, nix::sys::signal::SIGKILL).unwrap();
    };
    let (result, ()) = tokio::join!(list, killer);
    match result {
        Err(RuntimeError::Helper(m)) => assert!(m.contains("helper"), "{m}"),
        other => panic!("expected a helper error, got {other:?}"),
    }
    assert!(env.runtime.list().await.unwrap().is_empty(), "a new helper answers");
    let second = env.runtime.helper_pid().await.unwrap() as i32;
    assert_ne!(first, second);
    env.finish().await;
}
