//! Frames between the agent and its runtime helper: a re-executed copy of the agent
//! binary (`flotilla-agent runtime-helper --root <dir>`) that performs every container
//! operation through libcontainer, so that nothing ever forks the agent's multi-threaded
//! tokio process. The helper is the parent (and child subreaper) of every container it
//! creates, reaps them and reports their exits; containers it finds at start-up (left by
//! a helper that died) are watched through pidfds and reported without an exit code.
//!
//! The agent writes [`RuntimeRequest`]s to the helper's stdin; the helper writes
//! [`RuntimeMessage`]s to its stdout: exactly one `Reply` per request (matched by
//! `request_id`; the helper serves requests one at a time, in order) and an `Exited`
//! whenever a container's init process ends. Framing is the same as on the QUIC wire
//! (a `u32` length, then a versioned body), at its own [`RUNTIME_PROTOCOL_VERSION`]; the
//! agent and its helper are the same binary, so both ends always agree. A frame the
//! helper cannot decode makes it exit with an error (its containers keep running).

use crate::time::Timestamp;
use crate::wire::{self, FrameError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Version of the agent↔helper frames.
pub const RUNTIME_PROTOCOL_VERSION: u32 = 3;

/// Encodes one agent↔helper frame, length header included.
pub fn encode_runtime_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    wire::encode_raw_frame(RUNTIME_PROTOCOL_VERSION, msg)
}

/// Decodes one agent↔helper frame body (without its length header).
pub fn decode_runtime_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(crate::codec::decode_versioned(RUNTIME_PROTOCOL_VERSION, "runtime frame", body)?)
}

/// Agent → helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRequest {
    /// Echoed in the reply.
    pub request_id: u64,
    pub op: RuntimeOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeOp {
    /// Create the container from the OCI bundle at `bundle` (a directory holding
    /// `config.json`), leaving it created but not started. The container's stdout and
    /// stderr are appended to `log_path` (created with its parent directories if
    /// missing); its stdin is `/dev/null`.
    Create {
        id: String,
        bundle: String,
        log_path: String,
    },
    Start {
        id: String,
    },
    /// Send `signal` to the container's init process.
    Kill {
        id: String,
        signal: i32,
    },
    /// Remove the container's state and cgroup; with `force`, kill it first.
    Delete {
        id: String,
        force: bool,
    },
    State {
        id: String,
    },
    List,
    /// Run `args` inside running container `id` (its namespaces, cgroup, user and
    /// capabilities), with stdout and stderr to `output_path` (truncated) and stdin
    /// from `/dev/null`. Replied to once the process runs; its end is reported by
    /// `ExecExited` with the same `exec_id` (version 2).
    Exec {
        id: String,
        exec_id: u64,
        args: Vec<String>,
        output_path: String,
    },
    /// SIGKILL an exec that is still running (version 2).
    KillExec {
        exec_id: u64,
    },
    /// Like `Exec`, with the operator's stdio (`flotilla exec`, version 3): stdin from a
    /// FIFO the agent holds open, or a terminal whose master end libcontainer hands to
    /// the agent over a console socket.
    ExecWith {
        id: String,
        exec_id: u64,
        args: Vec<String>,
        io: ExecIo,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecIo {
    /// stdout and stderr (without a terminal), truncated first.
    pub output_path: String,
    /// A FIFO for stdin; `None`: `/dev/null`.
    pub stdin_path: Option<String>,
    pub tty: Option<TtyIo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyIo {
    /// A Unix socket the agent listens on; the terminal's master end arrives on it.
    pub console_socket: String,
    pub cols: u16,
    pub rows: u16,
}

/// Helper → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeMessage {
    Reply {
        request_id: u64,
        result: Result<RuntimeReply, RuntimeFailure>,
    },
    /// A container's init process ended. `exit_code` is the exit status, or 128 + the
    /// signal number when a signal killed it; `None` when the process was not the
    /// helper's child (adopted after a helper restart), so its status is unknowable.
    Exited {
        id: String,
        pid: i32,
        exit_code: Option<i32>,
    },
    /// A process started by `Exec` ended: its exit status, or 128 + the signal number
    /// (version 2).
    ExecExited {
        exec_id: u64,
        exit_code: i32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeReply {
    Done,
    State(RuntimeContainerState),
    List(Vec<RuntimeContainerState>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeFailure {
    pub kind: RuntimeFailureKind,
    /// Lowercase, with the causes chained: meant for an operator.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeFailureKind {
    /// No container with that id exists.
    NotFound,
    /// The request cannot succeed as asked: bad id, broken bundle, wrong state
    /// (starting a running container, deleting a running one without `force`),
    /// an id that already exists.
    InvalidRequest,
    /// The request was fine but the node could not carry it out (cgroup, mount,
    /// namespace or process failures).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeContainerState {
    pub id: String,
    pub status: RuntimeStatus,
    /// Host pid of the container's init process; `None` once it has stopped (the
    /// number may already belong to another process).
    pub pid: Option<i32>,
    pub bundle: String,
    pub created_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_frame<T: Serialize>(m: &T) -> Vec<u8> {
        encode_runtime_frame(m).unwrap()
    }

    fn decode_frame<T: DeserializeOwned>(f: &[u8]) -> Result<T, FrameError> {
        wire::decode_raw_frame(RUNTIME_PROTOCOL_VERSION, f)
    }

    // Golden vectors: the agent and its helper are one binary, but pinning the bytes
    // still catches an accidental reordering that would break a helper left running
    // across an in-place upgrade.
    #[test]
    fn golden_request_and_exit_frames() {
        let req = RuntimeRequest {
            request_id: 7,
            op: RuntimeOp::Create { id: "c1".into(), bundle: "/b".into(), log_path: "/l".into() },
        };
        let frame = encode_frame(&req);
        assert_eq!(frame, [12, 0, 0, 0, 3, 7, 0, 2, b'c', b'1', 2, b'/', b'b', 2, b'/', b'l']);
        assert_eq!(decode_frame::<RuntimeRequest>(&frame).unwrap(), req);

        let exit = RuntimeMessage::Exited { id: "c1".into(), pid: 300, exit_code: Some(3) };
        let frame = encode_frame(&exit);
        assert_eq!(frame, [9, 0, 0, 0, 3, 1, 2, b'c', b'1', 0xd8, 0x04, 1, 6]);
        assert_eq!(decode_frame::<RuntimeMessage>(&frame).unwrap(), exit);
        let done = RuntimeMessage::ExecExited { exec_id: 5, exit_code: 3 };
        let frame = encode_frame(&done);
        assert_eq!(frame, [4, 0, 0, 0, 3, 2, 5, 6]);
        assert_eq!(decode_frame::<RuntimeMessage>(&frame).unwrap(), done);
        let with = RuntimeRequest {
            request_id: 1,
            op: RuntimeOp::ExecWith {
                id: "c".into(),
                exec_id: 2,
                args: vec!["sh".into()],
                io: ExecIo {
                    output_path: "/o".into(),
                    stdin_path: None,
                    tty: Some(TtyIo { console_socket: "/s".into(), cols: 80, rows: 24 }),
                },
            },
        };
        let frame = encode_frame(&with);
        assert_eq!(
            frame,
            [20, 0, 0, 0, 3, 1, 8, 1, b'c', 2, 1, 2, b's', b'h', 2, b'/', b'o', 0, 1, 2, b'/', b's', 80, 24]
        );
        assert_eq!(decode_frame::<RuntimeRequest>(&frame).unwrap(), with);
    }

    #[test]
    fn replies_round_trip() {
        let msgs = [
            RuntimeMessage::Reply {
                request_id: 1,
                result: Ok(RuntimeReply::List(vec![RuntimeContainerState {
                    id: "c".into(),
                    status: RuntimeStatus::Running,
                    pid: Some(42),
                    bundle: "/b".into(),
                    created_at: Some(Timestamp(5)),
                }])),
            },
            RuntimeMessage::Reply {
                request_id: 2,
                result: Err(RuntimeFailure { kind: RuntimeFailureKind::NotFound, message: "x".into() }),
            },
            RuntimeMessage::Exited { id: "c".into(), pid: 1, exit_code: None },
        ];
        for m in msgs {
            assert_eq!(decode_frame::<RuntimeMessage>(&encode_frame(&m)).unwrap(), m);
        }
    }
}
