//! systemd's service protocol for `Type=notify` units (`sd-notify`): `READY=1` once the
//! hub serves (store open, API and agent endpoints listening), `STOPPING=1` on the way
//! out, and, when the unit sets `WatchdogSec=`, `WATCHDOG=1` only while the store
//! proves alive. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use hub_store::Store;
use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The hub serves: systemd starts what waits for it.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|p| !p.is_zero())
}

/// Pings the watchdog twice per `period`, each time only after the store answered a
/// probe that goes through Raft's core and its state machine (`Store::probe`). A hub
/// whose store hangs stops pinging, and systemd restarts it after `period`. Runs until
/// the task is aborted.
pub async fn watchdog(store: Store, period: Duration) {
    let every = period / 2;
    ping_while_alive(every, || store.probe(every), || send(&[NotifyState::Watchdog])).await
}

/// Every `every`, asks `probe` and calls `ping` only if it answered `Ok`.
async fn ping_while_alive<P, F, E>(every: Duration, mut probe: P, mut ping: impl FnMut())
where
    P: FnMut() -> F,
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match probe().await {
            Ok(()) => {
                if failing {
                    tracing::info!("the store answers again; watchdog pings resume");
                    failing = false;
                }
                ping();
            }
            Err(e) => {
                // Not pinging is the message: systemd restarts the hub if this lasts.
                if !failing {
                    tracing::error!(error = %e, "the store did not answer its liveness probe; withholding the watchdog ping");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn pings_only_after_a_probe_answered() {
        // Probe i answers as scripted; after the script, probes never answer (a hung store).
        let script = [true, false, false, true, true, false];
        let probes = Arc::new(Mutex::new(0usize));
        // For each ping, the probe it followed.
        let pinged = Arc::new(Mutex::new(Vec::new()));
        let (counter, after) = (probes.clone(), probes.clone());
        let log = pinged.clone();
        let run = tokio::spawn(ping_while_alive(
            Duration::from_millis(5),
            move || {
                let i = {
                    let mut n = counter.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                async move {
                    match script.get(i) {
                        Some(true) => Ok(()),
                        Some(false) => Err("no answer"),
                        None => std::future::pending().await,
                    }
                }
            },
            move || {
                let probe = *after.lock().unwrap() - 1;
                log.lock().unwrap().push(probe);
            },
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while *probes.lock().unwrap() <= script.len() {
            assert!(tokio::time::Instant::now() < deadline, "the loop stopped probing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*pinged.lock().unwrap(), [0, 3, 4]);
        // Stuck on the hung probe: no ping comes however long we wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*pinged.lock().unwrap(), [0, 3, 4]);
        run.abort();
    }
}
