//! Stopping a container the way `docker stop` does, then removing it.

use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use crate::{ContainerExit, ContainerRuntime, ContainerStatus, RuntimeError};

/// After SIGKILL the process only has to be scheduled to die; past this, delete anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Exit notifications are the fast path; a periodic look at the state covers an exit
/// whose notification was lost (a helper restart in between, a lagging receiver).
const STATE_RECHECK: Duration = Duration::from_secs(1);

/// SIGTERM, up to `grace` for the container to exit, SIGKILL, then delete.
///
/// A container that does not exist counts as stopped, so running this twice is fine.
/// Containers that were created but never started (or are paused) go straight to a
/// forced delete: their init cannot act on SIGTERM yet.
pub async fn stop<R>(runtime: &R, id: &str, grace: Duration) -> Result<(), RuntimeError>
where
    R: ContainerRuntime + ?Sized,
{
    if !terminate(runtime, id, grace).await? {
        return Ok(());
    }
    match runtime.delete(id, true).await {
        Ok(()) | Err(RuntimeError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// SIGTERM, up to `grace` for the container to exit, then SIGKILL; the container
/// stays, stopped (its exit is reported as any other). `false` when it does not exist.
pub async fn terminate<R>(runtime: &R, id: &str, grace: Duration) -> Result<bool, RuntimeError>
where
    R: ContainerRuntime + ?Sized,
{
    // Subscribe before signalling so that the exit cannot slip past unseen.
    let mut exits = runtime.subscribe_exits();
    let Some(state) = runtime.state(id).await? else { return Ok(false) };
    if state.status == ContainerStatus::Running
        && signal(runtime, id, libc::SIGTERM).await?
        && !wait_exit(runtime, &mut exits, id, grace).await?
        && signal(runtime, id, libc::SIGKILL).await?
    {
        wait_exit(runtime, &mut exits, id, KILL_WAIT).await?;
    }
    Ok(true)
}

/// Sends `sig`; `false` when the container turned out to have stopped already.
async fn signal<R>(runtime: &R, id: &str, sig: i32) -> Result<bool, RuntimeError>
where
    R: ContainerRuntime + ?Sized,
{
    match runtime.kill(id, sig).await {
        Ok(()) => Ok(true),
        Err(RuntimeError::NotFound { .. }) => Ok(false),
        Err(e @ RuntimeError::InvalidRequest(_)) => {
            if is_stopped(runtime, id).await? {
                Ok(false)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}

async fn is_stopped<R>(runtime: &R, id: &str) -> Result<bool, RuntimeError>
where
    R: ContainerRuntime + ?Sized,
{
    Ok(runtime.state(id).await?.is_none_or(|s| s.status == ContainerStatus::Stopped))
}

/// Waits up to `timeout` for `id` to exit; `true` once it has.
async fn wait_exit<R>(
    runtime: &R,
    exits: &mut broadcast::Receiver<ContainerExit>,
    id: &str,
    timeout: Duration,
) -> Result<bool, RuntimeError>
where
    R: ContainerRuntime + ?Sized,
{
    let deadline = Instant::now() + timeout;
    loop {
        let recheck = (Instant::now() + STATE_RECHECK).min(deadline);
        match tokio::time::timeout_at(recheck, exits.recv()).await {
            Ok(Ok(exit)) if exit.id == id => return Ok(true),
            Ok(Ok(_)) => continue,
            // Only a dropped runtime closes the channel; keep to the recheck pace.
            Ok(Err(RecvError::Closed)) => tokio::time::sleep_until(recheck).await,
            Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
        }
        if is_stopped(runtime, id).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FakeCall, FakeOp, FakeRuntime};
    use std::path::Path;

    #[tokio::test(start_paused = true)]
    async fn sigterm_is_enough_for_a_cooperative_container() {
        let rt = FakeRuntime::new();
        rt.create("a", Path::new("/b")).await.unwrap();
        rt.start("a").await.unwrap();
        rt.take_calls();
        stop(&rt, "a", Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            rt.take_calls(),
            vec![
                FakeCall::State { id: "a".into() },
                FakeCall::Kill { id: "a".into(), signal: libc::SIGTERM },
                FakeCall::Delete { id: "a".into(), force: true },
            ]
        );
        assert!(rt.state("a").await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn sigkill_after_grace_when_sigterm_is_ignored() {
        let rt = FakeRuntime::new();
        rt.set_ignores_sigterm(true);
        rt.create("a", Path::new("/b")).await.unwrap();
        rt.start("a").await.unwrap();
        let t0 = Instant::now();
        stop(&rt, "a", Duration::from_secs(3)).await.unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(3), "waited the grace period");
        let kills: Vec<_> = rt
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                FakeCall::Kill { signal, .. } => Some(signal),
                _ => None,
            })
            .collect();
        assert_eq!(kills, vec![libc::SIGTERM, libc::SIGKILL]);
        assert!(rt.state("a").await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn created_and_missing_containers() {
        let rt = FakeRuntime::new();
        rt.create("c", Path::new("/b")).await.unwrap();
        rt.take_calls();
        stop(&rt, "c", Duration::from_secs(3)).await.unwrap();
        assert_eq!(
            rt.take_calls(),
            vec![FakeCall::State { id: "c".into() }, FakeCall::Delete { id: "c".into(), force: true }]
        );
        stop(&rt, "nope", Duration::from_secs(3)).await.unwrap();
        assert_eq!(rt.take_calls(), vec![FakeCall::State { id: "nope".into() }]);
    }

    #[tokio::test(start_paused = true)]
    async fn vanishing_container_is_fine_but_a_broken_helper_is_not() {
        let rt = FakeRuntime::new();
        rt.create("a", Path::new("/b")).await.unwrap();
        rt.start("a").await.unwrap();
        rt.fail_next(FakeOp::Kill, RuntimeError::NotFound { id: "a".into() });
        stop(&rt, "a", Duration::from_secs(3)).await.unwrap();
        assert!(rt.state("a").await.unwrap().is_none());

        rt.create("b", Path::new("/b")).await.unwrap();
        rt.start("b").await.unwrap();
        rt.fail_next(FakeOp::Kill, RuntimeError::Helper("gone".into()));
        assert_eq!(stop(&rt, "b", Duration::from_secs(3)).await, Err(RuntimeError::Helper("gone".into())));
    }
}
