//! The one clock of the hub and the agent. Pure cores never read time: the async
//! shells ask a [`Clock`] and pass the answer in, so state machines are driven with
//! simulated time in tests and the same inputs always give the same outputs.
//!
//! Two readings, for two jobs: [`Clock::now`] is wall-clock time, for what is stored
//! and shown (a device's last transition); [`Clock::monotonic`] is for timers and
//! deadlines, which must not jump when NTP corrects a Raspberry Pi that booted
//! without a real-time clock.

use crate::time::Timestamp;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time.
    fn now(&self) -> Timestamp;
    /// Monotonic time, for deadlines.
    fn monotonic(&self) -> Instant;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: for tests and deterministic simulations.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    wall_origin: Timestamp,
    elapsed_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(wall_origin: Timestamp) -> ManualClock {
        ManualClock { origin: Instant::now(), wall_origin, elapsed_ms: AtomicU64::new(0) }
    }

    pub fn advance(&self, by: Duration) {
        self.elapsed_ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms.load(Ordering::Relaxed))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.wall_origin.saturating_add(self.elapsed())
    }

    fn monotonic(&self) -> Instant {
        self.origin + self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_readings_together() {
        let c = ManualClock::new(Timestamp(1_000));
        let m0 = c.monotonic();
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now(), Timestamp(1_250));
        assert_eq!(c.monotonic() - m0, Duration::from_millis(250));
    }
}
