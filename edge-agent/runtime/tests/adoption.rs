//! The agent dies (its helper is SIGKILLed): containers keep running, and a new
//! `HelperRuntime` over the same state adopts them instead of starting duplicates.
//!
//! Its own test binary because it makes the test process a child subreaper: orphaned
//! container processes then become our children, and we reap them, instead of
//! piling up as zombies under a PID 1 that may not reap.

mod common;

use std::time::Duration;

use agent_runtime::{ContainerRuntime, ContainerState, ContainerStatus, HelperRuntime, RuntimeError, stop};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use shared_proto::NetworkMode;
use shared_proto::manifest::ContainerLimits;

fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }, 0);
}

/// Reaps `pid`, an orphan handed to us, once it has exited.
async fn reap(pid: i32) {
    wait_until("the orphan to exit", || {
        !matches!(
            waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)),
            Ok(WaitStatus::StillAlive)
        )
    })
    .await;
}

fn find<'a>(states: &'a [ContainerState], id: &str) -> &'a ContainerState {
    states.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("{id} not listed in {states:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_leaves_containers_running_and_the_next_one_adopts_them() {
    become_subreaper();
    let env = TestEnv::new();
    let script = "trap 'exit 0' TERM; while true; do sleep 0.05; done";
    let (running, exited, stranger) = (unique_id("adopt"), unique_id("gone"), unique_id("reused"));
    let mut pids = Vec::new();
    for id in [&running, &exited, &stranger] {
        let bundle =
            env.bundle(id, &["/bin/sh", "-c", script], NetworkMode::None, ContainerLimits::default());
        env.runtime.create(id, &bundle).await.unwrap();
        env.runtime.start(id).await.unwrap();
        pids.push(env.runtime.state(id).await.unwrap().unwrap().pid.unwrap());
    }
    let (running_pid, exited_pid, stranger_pid) = (pids[0], pids[1], pids[2]);

    // The agent dies: its helper is SIGKILLed, no chance to clean up.
    let helper = env.runtime.helper_pid().await.expect("a helper runs") as i32;
    kill(Pid::from_raw(helper), Signal::SIGKILL).unwrap();
    wait_until("the helper to die", || !std::path::Path::new(&format!("/proc/{helper}")).exists()).await;
    for pid in &pids {
        assert!(process_alive(*pid), "container process {pid} survived its helper");
    }

    // While no helper watches: one container ends (nobody sees its exit), and another's
    // recorded start time stops matching, as if its pid now belonged to a stranger.
    kill(Pid::from_raw(exited_pid), Signal::SIGKILL).unwrap();
    reap(exited_pid).await;
    std::fs::write(env.state_dir(&stranger).join("flotilla-init"), format!("{stranger_pid} 1\n")).unwrap();

    // The restarted agent.
    let agent = HelperRuntime::new(env.config.clone());
    let mut exits = agent.subscribe_exits();
    let listed = agent.list().await.unwrap();
    assert_eq!(listed.len(), 3);
    let adopted = find(&listed, &running);
    assert_eq!((adopted.status, adopted.pid), (ContainerStatus::Running, Some(running_pid)));
    let gone = find(&listed, &exited);
    assert_eq!((gone.status, gone.pid), (ContainerStatus::Stopped, None));
    let strange = find(&listed, &stranger);
    assert_eq!((strange.status, strange.pid), (ContainerStatus::Stopped, None));

    // No duplicate: the id is taken by the adopted container.
    let bundle = env.dir.path().join("bundles").join(&running);
    assert!(matches!(agent.create(&running, &bundle).await, Err(RuntimeError::InvalidRequest(_))));
    // A process whose identity does not match is never signalled.
    assert!(matches!(agent.kill(&stranger, libc::SIGKILL).await, Err(RuntimeError::InvalidRequest(_))));
    assert!(process_alive(stranger_pid));

    // stop() works on the adopted container; its exit is reported without a code.
    stop(&agent, &running, Duration::from_secs(10)).await.unwrap();
    let exit = wait_exit(&mut exits, &running).await;
    assert_eq!((exit.pid, exit.exit_code), (running_pid, None));
    reap(running_pid).await;
    assert_eq!(agent.state(&running).await.unwrap(), None);
    for c in CGROUP_CONTROLLERS {
        assert!(!cgroup_dir(c, &running).exists(), "cgroup {c} of the adopted container removed");
    }

    agent.delete(&exited, false).await.unwrap();
    // Forced delete still clears out what is in the container's own cgroup.
    agent.delete(&stranger, true).await.unwrap();
    reap(stranger_pid).await;
    assert!(agent.list().await.unwrap().is_empty());
    for id in [&running, &exited, &stranger] {
        env.rootfs.release(id).unwrap();
    }
    agent.shutdown().await;
    env.finish().await;
}
