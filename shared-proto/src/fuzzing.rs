//! Fuzz harnesses for the frame decoder and the two sync session machines, shared by
//! the cargo-fuzz targets in `shared-proto/fuzz/` and by the corpus replay test, so CI
//! runs every target on every change without a nightly toolchain.
//!
//! Each harness takes arbitrary bytes and must return for every input. It panics only
//! when one of the invariants below breaks, which is a bug in [`crate::wire`] or
//! [`crate::session`] (or in the invariant as written here).
//!
//! [`frames`]: the first byte seeds how the rest is cut into pieces for a
//! [`FrameDecoder`](crate::wire::FrameDecoder); every body that comes out is decoded as each frame type.
//! - F1. A body that decodes re-encodes at the version it was read at, and those bytes
//!   decode to the value as that version expresses it ([`WireFrame::for_version`]),
//!   and encode again to the same bytes: one canonical encoding per value.
//! - F2. The decoder never holds more than one frame's worth plus the last piece:
//!   `MAX_FRAME_BYTES + 4 + piece`, and no body it returns exceeds the limit.
//! - F3. The pieces do not matter: the bytes fed in one piece yield the same bodies,
//!   then the same error or the same leftover, as fed in pieces.
//!
//! [`hub_session`] and [`agent_session`]: the first bytes set the session up (protocol
//! version, the device's revision; for the hub, the shell's admission decision and
//! whether bytes came in the same read as the hello); the rest is a script of
//! [`Op`]s: bytes from the peer, simulated time passing, the shell's updates, the end
//! of the stream. After every step:
//! - S1. Once ended, a session stays ended, emits no event and queues no byte.
//! - S2. One `Ended` event at most, and `is_ended()` exactly when it has been emitted.
//! - S3. `poll_timeout()` is `None` exactly when the session has ended, and otherwise
//!   lies in the future: a shell that sleeps until it and calls `handle_timeout`
//!   never spins.
//! - S4. Every queued transmit is one whole frame at the session's version, of the type
//!   the peer expects (`HubFrame` from the hub; `StreamOpen` then `AgentFrame` from the
//!   agent), and a version-1 peer is never sent what version 1 lacks.
//! - S5. The events are exactly the frames the peer sent, in order, whatever the pieces
//!   they arrived in, up to the first malformed or unexpected frame, which ends the
//!   session as a protocol error. (Checked against a model: a second decoder fed the
//!   same bytes and the protocol's rules as the module docs state them.)
//! - S6. Deadlines: the hub times out a device exactly when it has been silent for
//!   `silence_timeout`; the agent gives up on the welcome at `welcome_timeout` and,
//!   once welcomed, sends a heartbeat exactly when it has sent nothing for a heartbeat
//!   interval, numbered 1, 2, 3...
//! - S7. Only differences are sent: the hub pushes a manifest only when its revision
//!   differs from the one the device holds as far as the hub knows; the agent sends a
//!   report only when it differs from the last one sent, and while the session is up
//!   the hub has always been sent the latest one.

mod agent;
mod frames;
mod hub;
mod seeds;

pub use agent::agent_session;
pub use frames::frames;
pub use hub::hub_session;
pub use seeds::{Seed, seed_corpus};

use crate::manifest::{DesiredApp, DesiredManifest, ObservedContainer};
use crate::session::SessionEnd;
use crate::wire::{self, AgentHello, AgentReport, DeviceFacts, WireFrame};
use crate::{NetworkMode, RestartPolicy};
use std::time::{Duration, Instant};

/// The fuzz targets, by the names of their `fuzz_targets/*.rs` and corpus directories.
pub const TARGETS: [&str; 3] = ["frames", "hub_session", "agent_session"];

/// The harness behind a target name.
pub fn harness(target: &str) -> Option<fn(&[u8])> {
    match target {
        "frames" => Some(frames),
        "hub_session" => Some(hub_session),
        "agent_session" => Some(agent_session),
        _ => None,
    }
}

/// One step of a session script. Each is one byte (`tag % 16`, weighted towards
/// bytes from the peer) and its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Bytes from the peer as one read: a length byte, then up to that many bytes.
    Bytes(&'a [u8]),
    /// Simulated time moves on by this many ms; the timer fires if it is due.
    Advance(u16),
    /// Time jumps to the session's deadline and the timer fires: an idle shell.
    Sleep,
    /// `handle_timeout` now, due or not: a spurious wake-up.
    Timeout,
    /// The shell's news: a new manifest for the hub ([`manifest`]), a new report for
    /// the agent ([`report`]).
    Update(u8),
    /// The peer ended the stream.
    Eof,
}

impl<'a> Op<'a> {
    fn next(input: &mut Input<'a>) -> Option<Op<'a>> {
        let tag = input.byte()?;
        Some(match tag % 16 {
            6 | 7 => Op::Advance(u16::from_le_bytes([input.byte().unwrap_or(0), input.byte().unwrap_or(0)])),
            8 | 9 => Op::Sleep,
            10 => Op::Timeout,
            11..=13 => Op::Update(input.byte().unwrap_or(0)),
            14 => Op::Eof,
            _ => {
                let len = input.byte().unwrap_or(0);
                Op::Bytes(input.take(usize::from(len)))
            }
        })
    }

    /// Appends this step as the harnesses read it; long byte runs become several reads.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Op::Bytes(bytes) => {
                for chunk in bytes.chunks(255) {
                    out.extend([0, chunk.len() as u8]);
                    out.extend_from_slice(chunk);
                }
            }
            Op::Advance(ms) => {
                out.push(6);
                out.extend(ms.to_le_bytes());
            }
            Op::Sleep => out.push(8),
            Op::Timeout => out.push(10),
            Op::Update(k) => out.extend([11, k]),
            Op::Eof => out.push(14),
        }
    }
}

/// A script: its set-up bytes, then its steps.
pub fn script(setup: &[u8], ops: &[Op<'_>]) -> Vec<u8> {
    let mut out = setup.to_vec();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

#[derive(Clone, Copy)]
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// Simulated time. Returns whether the shell calls `handle_timeout` for this step.
fn step_clock(op: Op<'_>, now: &mut Instant, deadline: Option<Instant>) -> bool {
    match op {
        Op::Advance(ms) => {
            *now += Duration::from_millis(u64::from(ms));
            deadline.is_some_and(|d| d <= *now)
        }
        Op::Sleep => match deadline {
            Some(d) => {
                *now = (*now).max(d);
                true
            }
            None => false,
        },
        Op::Timeout => true,
        Op::Bytes(_) | Op::Update(_) | Op::Eof => false,
    }
}

/// The device every session is for.
pub const DEVICE: &str = "pi-1";

pub fn hello(held_revision: u64) -> AgentHello {
    AgentHello {
        device: DEVICE.into(),
        facts: DeviceFacts { arch: "arm64".into(), os: "linux".into(), ..DeviceFacts::default() },
        held_revision,
        boot_id: "b".into(),
    }
}

/// The manifest the hub's store holds, chosen by one byte: none at all (deleted), or
/// revision 0–63 with 0–2 apps. Revisions repeat with different apps on purpose.
pub fn manifest(k: u8) -> Option<DesiredManifest> {
    let n_apps = k % 4;
    let revision = u64::from(k >> 2);
    (n_apps != 0).then(|| DesiredManifest {
        device: DEVICE.into(),
        revision,
        apps: (1..n_apps)
            .map(|i| DesiredApp {
                name: format!("app{i}"),
                generation: revision,
                restart_policy: RestartPolicy::Always,
                network: NetworkMode::Host,
                ..Default::default()
            })
            .collect(),
        configs: vec![],
    })
}

/// What the device runs, chosen by one byte: revision 0–63 and 0–3 containers.
pub fn report(k: u8) -> AgentReport {
    AgentReport {
        held_revision: u64::from(k >> 2),
        containers: (0..k % 4)
            .map(|i| ObservedContainer {
                app: "web".into(),
                name: format!("c{i}"),
                id: format!("web_c{i}"),
                restarts: u32::from(i),
                ..ObservedContainer::default()
            })
            .collect(),
    }
}

/// Decodes one whole transmit (S4): exactly one frame, at `version`.
fn whole_frame<T: WireFrame>(bytes: &[u8], version: u32, from: &str) -> T {
    let header: [u8; 4] =
        bytes.get(..4).and_then(|h| h.try_into().ok()).expect("S4: a transmit without a header");
    assert_eq!(
        u32::from_le_bytes(header) as usize,
        bytes.len() - 4,
        "S4: a transmit that is not one whole frame"
    );
    let (found, frame) = wire::decode_frame_body_versioned::<T>(&bytes[4..])
        .unwrap_or_else(|e| panic!("S4: the {from} queued a frame that does not decode: {e}"));
    assert_eq!(found, version, "S4: the {from} wrote at version {found}, the session speaks {version}");
    frame
}

/// Whether two ends are the same, ignoring the wording of errors.
fn same_end(got: &SessionEnd, want: &SessionEnd) -> bool {
    match (got, want) {
        (SessionEnd::Protocol(_), SessionEnd::Protocol(_))
        | (SessionEnd::TimedOut(_), SessionEnd::TimedOut(_)) => true,
        _ => got == want,
    }
}

/// S1/S2 bookkeeping shared by both sides.
#[derive(Default)]
struct EndWatch {
    ended: bool,
}

impl EndWatch {
    /// Checks one drained batch of events; returns the end among them, if any.
    fn check<'e>(&mut self, ends: impl Iterator<Item = Option<&'e SessionEnd>>) -> Option<&'e SessionEnd> {
        let mut found = None;
        for end in ends {
            assert!(!self.ended, "S1/S2: an event after the end");
            if let Some(end) = end {
                self.ended = true;
                found = Some(end);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_read_back_as_written() {
        let long = [7u8; 300];
        let ops =
            [Op::Bytes(&[1, 2, 3]), Op::Advance(65_535), Op::Sleep, Op::Timeout, Op::Update(9), Op::Eof];
        let bytes = script(&[], &[&ops[..], &[Op::Bytes(&long)]].concat());
        let mut input = Input(&bytes);
        let read: Vec<Op<'_>> = std::iter::from_fn(|| Op::next(&mut input)).collect();
        assert_eq!(read[..ops.len()], ops);
        assert_eq!(
            read[ops.len()..],
            [Op::Bytes(&long[..255]), Op::Bytes(&long[255..])],
            "one read per 255 bytes"
        );
    }

    #[test]
    fn every_byte_is_a_script() {
        // A truncated step still reads as a step, so no input is wasted on rejection.
        for tag in 0..=u8::MAX {
            let mut input = Input(&[tag]);
            assert!(Op::next(&mut input).is_some(), "tag {tag}");
            assert!(Op::next(&mut input).is_none());
        }
    }
}
