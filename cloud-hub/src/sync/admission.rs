//! Spreads a reconnect storm. After a hub restart every agent of the fleet comes back
//! within seconds; each new session costs store reads, a liveness entry and a first
//! manifest. Sessions are admitted at up to `rate` per second (with a burst); an agent
//! past that is told to come back at its own slot in a virtual queue, so the fleet
//! returns in an even stream instead of retrying all at once.
//!
//! Pure: time comes in, a decision goes out.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Sessions admitted per second, sustained.
    pub rate: u32,
    /// Sessions admitted at once before the rate applies.
    pub burst: u32,
    /// Longest wait ever handed out.
    pub max_wait: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig { rate: 2_000, burst: 2_000, max_wait: Duration::from_secs(60) }
    }
}

/// Token bucket plus a virtual queue of the sessions asked to wait.
#[derive(Debug)]
pub struct AdmissionControl {
    cfg: AdmissionConfig,
    tokens: f64,
    refilled_at: Option<Instant>,
    /// The next free slot of the virtual queue.
    next_slot: Option<Instant>,
}

impl AdmissionControl {
    pub fn new(cfg: AdmissionConfig) -> AdmissionControl {
        let cfg = AdmissionConfig { rate: cfg.rate.max(1), burst: cfg.burst.max(1), ..cfg };
        AdmissionControl { cfg, tokens: f64::from(cfg.burst), refilled_at: None, next_slot: None }
    }

    /// `Ok` to admit a session now, or how long that agent should wait.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.cfg.rate);
        if let Some(at) = self.refilled_at {
            let earned = now.saturating_duration_since(at).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(f64::from(self.cfg.burst));
        }
        self.refilled_at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        // Slots are spaced one token apart, starting when the bucket can next pay.
        let step = Duration::from_secs_f64(1.0 / rate);
        let earliest = now + Duration::from_secs_f64((1.0 - self.tokens) / rate);
        let slot = self.next_slot.filter(|s| *s > earliest).unwrap_or(earliest);
        let wait = slot.saturating_duration_since(now).min(self.cfg.max_wait);
        self.next_slot = Some(now + wait + step);
        // A queued agent will spend its token when it comes back.
        Err(wait.max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_admitted_then_the_rest_queue_evenly() {
        let cfg = AdmissionConfig { rate: 100, burst: 10, max_wait: Duration::from_secs(60) };
        let mut a = AdmissionControl::new(cfg);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(a.admit(t0), Ok(()));
        }
        let waits: Vec<Duration> = (0..5).map(|_| a.admit(t0).unwrap_err()).collect();
        for pair in waits.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((9..=11).contains(&gap.as_millis()), "slots 10 ms apart: {waits:?}");
        }
        assert!(waits[0] <= Duration::from_millis(11));
    }

    #[test]
    fn the_bucket_refills_and_waits_are_capped() {
        let cfg = AdmissionConfig { rate: 10, burst: 1, max_wait: Duration::from_secs(2) };
        let mut a = AdmissionControl::new(cfg);
        let t0 = Instant::now();
        assert!(a.admit(t0).is_ok());
        assert!(a.admit(t0).is_err());
        assert!(a.admit(t0 + Duration::from_millis(200)).is_ok(), "refilled");
        for _ in 0..100 {
            assert!(a.admit(t0 + Duration::from_millis(200)).unwrap_err() <= Duration::from_secs(2));
        }
    }
}
