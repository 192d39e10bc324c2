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
/// the store closes or the task is aborted.
pub async fn watchdog(store: Store, period: Duration) {
    let every = period / 2;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match store.probe(every).await {
            Ok(()) => {
                if failing {
                    tracing::info!("the store answers again; watchdog pings resume");
                    failing = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            Err(e) => {
                // Not pinging is the message: systemd restarts the hub if this lasts.
                if !failing {
                    tracing::error!(error = %e, ?period, "the store did not answer its liveness probe; withholding the watchdog ping");
                    failing = true;
                }
            }
        }
    }
}
