//! Telling a cloned SD card from a rebooted device. Both present the same certificate
//! from a new boot (a new `boot_id` in the hello); what differs is that a clone's
//! original is still alive and comes back. So each certificate's recent sessions are
//! remembered by boot id (by certificate, not by device name: a device enrolled anew
//! under an old name is another machine, not a clone), and a new session is refused as a clone when its boot id
//! had a session, lost it to the boot id that holds the device now, and returns while
//! that one is still connected. The machine connected keeps its session; the other
//! is refused on every try, instead of the two taking the session from each other.
//! A device that reboots never comes back from its old boot, and an agent that only
//! restarts keeps its boot id, so neither is ever taken for a clone.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a boot id that lost the device counts against a return.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Session starts remembered per device.
const REMEMBERED: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Another machine, with this boot id, holds the device's session now.
    Clone {
        holder: String,
    },
}

#[derive(Debug, Default)]
struct Sessions {
    /// Session id and boot id of the session serving the device, if any.
    current: Option<(u64, String)>,
    /// Recent session starts, oldest first.
    starts: VecDeque<(String, Instant)>,
}

/// The decision, from what is remembered of a device.
fn verdict(s: &Sessions, boot_id: &str, now: Instant) -> Verdict {
    let Some((_, holder)) = &s.current else { return Verdict::Accept };
    if holder == boot_id {
        return Verdict::Accept;
    }
    // When the holder's latest session started, and whether this boot id had one
    // before that, recently.
    let holder_start = s.starts.iter().rev().find(|(b, _)| b == holder).map(|(_, at)| *at);
    let returning = s.starts.iter().any(|(b, at)| {
        b == boot_id && holder_start.is_some_and(|h| *at <= h) && now.saturating_duration_since(*at) <= WINDOW
    });
    if returning { Verdict::Clone { holder: holder.clone() } } else { Verdict::Accept }
}

/// Every certificate's recent sessions (by serial), in memory.
#[derive(Debug, Default)]
pub struct SessionBook {
    by_serial: Mutex<HashMap<String, Sessions>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl SessionBook {
    /// A session id for [`SessionBook::start`] and [`SessionBook::end`].
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// A session with certificate `serial` from `boot_id` asks to start; accepted ones
    /// are recorded as the certificate's current session under `session`.
    pub fn start(&self, serial: &str, boot_id: &str, session: u64, now: Instant) -> Verdict {
        let mut by_serial = self.by_serial.lock().unwrap_or_else(|p| p.into_inner());
        let s = by_serial.entry(serial.to_string()).or_default();
        let v = verdict(s, boot_id, now);
        if v == Verdict::Accept {
            s.current = Some((session, boot_id.to_string()));
            s.starts.push_back((boot_id.to_string(), now));
            while s.starts.len() > REMEMBERED {
                s.starts.pop_front();
            }
        }
        v
    }

    /// Session `session` with certificate `serial` ended.
    pub fn end(&self, serial: &str, session: u64) {
        let mut by_serial = self.by_serial.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = by_serial.get_mut(serial)
            && s.current.as_ref().is_some_and(|(id, _)| *id == session)
        {
            s.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_is_refused_while_its_twin_holds_the_session() {
        let book = SessionBook::default();
        let t = Instant::now();
        let s = |secs| t + Duration::from_secs(secs);
        assert_eq!(book.start("pi", "A", 1, s(0)), Verdict::Accept);
        // B takes over: from here it cannot yet be told from a reboot.
        assert_eq!(book.start("pi", "B", 2, s(10)), Verdict::Accept);
        book.end("pi", 1);
        // A comes back while B holds the device: a clone.
        assert_eq!(book.start("pi", "A", 3, s(12)), Verdict::Clone { holder: "B".into() });
        assert_eq!(book.start("pi", "A", 4, s(60)), Verdict::Clone { holder: "B".into() }, "on every try");
        // B's own reconnects are fine.
        assert_eq!(book.start("pi", "B", 5, s(61)), Verdict::Accept);
        book.end("pi", 2);
        // With B gone, A may hold the device; then B is the one refused.
        book.end("pi", 5);
        assert_eq!(book.start("pi", "A", 6, s(70)), Verdict::Accept);
        assert_eq!(book.start("pi", "B", 7, s(71)), Verdict::Clone { holder: "A".into() });
    }

    #[test]
    fn reboots_and_restarts_are_not_clones() {
        let book = SessionBook::default();
        let t = Instant::now();
        // An agent restart keeps its boot id; its old session may still look alive.
        assert_eq!(book.start("pi", "A", 1, t), Verdict::Accept);
        assert_eq!(book.start("pi", "A", 2, t + Duration::from_secs(1)), Verdict::Accept);
        // A reboot: a new boot id while the old session has not timed out yet.
        assert_eq!(book.start("pi", "B", 3, t + Duration::from_secs(30)), Verdict::Accept);
        // The next reboot, and the one after: never a return of an old boot id.
        assert_eq!(book.start("pi", "C", 4, t + Duration::from_secs(90)), Verdict::Accept);
        // A boot id seen long ago is not held against a device.
        book.end("pi", 4);
        assert_eq!(book.start("pi", "D", 5, t + Duration::from_secs(100)), Verdict::Accept);
        assert_eq!(book.start("pi", "C", 6, t + WINDOW + Duration::from_secs(200)), Verdict::Accept);
    }
}
