//! The desired-state sync protocol as two pure state machines, one per side, in the
//! manner of quinn-proto: no sockets, no tasks, no clock.
//!
//! - [`AgentSession`] is the device's side of one sync stream: hello, welcome, desired
//!   manifests in, reports and heartbeats out.
//! - [`HubSession`] is the hub's side: it answers the hello, decides which manifest to
//!   send whenever it is told the device's manifest may have changed, and takes in
//!   reports and heartbeats.
//!
//! Each is driven the same way. Bytes that arrive go to `handle_bytes(now, …)`;
//! `poll_transmit()` hands out bytes to write, `poll_event()` what the shell must act
//! on, and `poll_timeout()` the next deadline, at which the shell calls
//! `handle_timeout(now)`. The async shells around them (the agent, the hub, and
//! `flotilla sim`) only move bytes, run timers and carry out events, so everything
//! that decides is tested here with simulated time, with byte streams cut at every
//! point, dropped connections and reordered notifications.
//!
//! Framing lives inside the machines ([`crate::wire::FrameDecoder`]): every byte read
//! is owned by the machine the moment it is handed over, so no frame is ever lost to a
//! shell that stops waiting on a read to do something else.

mod agent;
mod hub;

pub use agent::{AgentEvent, AgentSession, AgentSessionConfig};
pub use hub::{HubEvent, HubSession, HubSessionConfig, desired_frame};

use std::time::Duration;

/// Why a session ended. The shell closes the stream (and, for a protocol error, the
/// connection) and decides when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer ended the stream cleanly.
    PeerClosed,
    /// The hub refused this device (deleted, not enrolled, wrong name).
    Refused(String),
    /// The hub is busy: try again no sooner than `after`.
    RetryAfter { after: Duration, message: String },
    /// The peer broke the protocol: a malformed or unexpected frame.
    Protocol(String),
    /// The peer stayed silent past its deadline.
    TimedOut(String),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::PeerClosed => f.write_str("the peer closed the stream"),
            SessionEnd::Refused(m) => write!(f, "refused: {m}"),
            SessionEnd::RetryAfter { after, message } => {
                write!(f, "{message}; retry after {} ms", after.as_millis())
            }
            SessionEnd::Protocol(m) => write!(f, "protocol error: {m}"),
            SessionEnd::TimedOut(m) => write!(f, "timed out: {m}"),
        }
    }
}

#[cfg(test)]
mod tests;
