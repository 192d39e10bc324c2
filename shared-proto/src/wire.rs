//! Agent↔hub frames carried over QUIC (ALPN `flotilla/1`, mutual TLS).
//!
//! Every bidirectional stream is opened by the agent and starts with one
//! [`StreamOpen`] frame saying what the stream is for:
//! - `Enrol`: the only thing a connection without a device certificate may do;
//!   the hub answers one [`EnrolReply`] and the stream ends.
//! - `Sync`: the long-lived desired-state stream. The agent says which desired
//!   revision it holds ([`AgentHello`]); the hub answers [`HubFrame::Welcome`] and then
//!   either the newer manifest or `UpToDate`, and pushes a new manifest whenever the
//!   device's desired state changes. The agent sends [`AgentFrame`]s: reports of what
//!   it runs, only when that changes, and small heartbeats.
//! - `Blob`: one content-addressed blob, answered by [`BlobReply`] and then the raw
//!   bytes from the requested offset, so an interrupted download resumes.
//!
//! A frame is a little-endian `u32` length and then a versioned postcard body
//! ([`crate::codec`]). A length over [`MAX_FRAME_BYTES`] or a body that does not decode
//! is a protocol error that closes that one connection.

use crate::codec::{self, CodecError};
use crate::manifest::{DesiredManifest, ObservedContainer};
use crate::resource::Capacity;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of every frame body defined here.
pub const PROTOCOL_VERSION: u32 = 1;
/// TLS application protocol both ends insist on.
pub const ALPN: &[u8] = b"flotilla/1";
/// Largest frame either side accepts. A desired manifest for a busy device is a few
/// kilobytes; this leaves room without letting a peer make us allocate gigabytes.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamOpen {
    Enrol(EnrolRequest),
    Sync(AgentHello),
    Blob(BlobRequest),
}

/// Facts about a device that the agent discovers and the hub records.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// OCI architecture: `amd64`, `arm64`, `arm`.
    pub arch: String,
    pub os: String,
    pub agent_version: String,
    pub capacity: Capacity,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The enrolment token as the operator got it from `flotilla token create`.
    pub token: String,
    pub device_name: String,
    /// PKCS#10 request for the key the device generated and keeps.
    pub csr_der: Vec<u8>,
    pub facts: DeviceFacts,
    /// Labels the device asks for; the token's labels win on conflict.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrolReply {
    Accepted {
        device: String,
        /// Device certificate first, then intermediates, if any.
        cert_chain_der: Vec<Vec<u8>>,
        /// The fleet CA that devices trust for the hub.
        ca_der: Vec<u8>,
    },
    Refused {
        reason: EnrolRefusal,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrolRefusal {
    /// Unknown token id, wrong secret or malformed token.
    InvalidToken,
    Expired,
    /// The token's use limit is reached.
    UsedUp,
    /// A device with that name is already enrolled.
    NameTaken,
    /// The request itself is malformed (bad name, bad CSR).
    BadRequest,
    /// The hub cannot take enrolments right now (no leader); retry.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// Must match the device certificate; the hub checks.
    pub device: String,
    pub facts: DeviceFacts,
    /// Revision of the desired manifest the agent holds (0: none).
    pub held_revision: u64,
    /// Changes on every boot of the device: lets the hub tell reboots from reconnects.
    pub boot_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentFrame {
    /// What the agent runs now. Sent when it changes and after every (re)connect.
    Report(AgentReport),
    /// Liveness only; never written to the store.
    Heartbeat { seq: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AgentReport {
    /// Revision of the desired manifest the agent holds and is converging on.
    pub held_revision: u64,
    pub containers: Vec<ObservedContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubFrame {
    Welcome(HubWelcome),
    /// A desired manifest newer than (or different from) the one the agent holds.
    Desired(DesiredManifest),
    /// The agent already holds the current revision.
    UpToDate {
        revision: u64,
    },
    /// The hub ends the session; `message` says why and what to do.
    Refused {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubWelcome {
    pub hub_version: String,
    /// How often the agent should send a heartbeat.
    pub heartbeat_interval_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Resume point: bytes before it are not sent.
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobReply {
    /// `size` is the whole blob; `size - offset` raw bytes follow, then the stream ends.
    Found {
        size: u64,
    },
    NotFound {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one length-prefixed frame.
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = codec::encode_versioned(PROTOCOL_VERSION, "frame", msg)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a frame header and returns the body length that follows.
pub fn frame_body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame body (without its length header).
pub fn decode_frame_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(codec::decode_versioned(PROTOCOL_VERSION, "frame", body)?)
}

/// Decodes one whole frame, header included, as produced by [`encode_frame`].
pub fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let header: [u8; 4] = frame.get(..4).and_then(|h| h.try_into().ok()).ok_or(FrameError::Truncated)?;
    let len = frame_body_len(header)?;
    let body = frame.get(4..).ok_or(FrameError::Truncated)?;
    if body.len() < len {
        return Err(FrameError::Truncated);
    }
    if body.len() > len {
        return Err(CodecError::TrailingBytes { what: "frame", extra: body.len() - len }.into());
    }
    decode_frame_body(body)
}

#[cfg(feature = "tokio")]
mod io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads one frame. `Ok(None)` when the stream ended cleanly before a frame began.
    pub async fn read_frame<T, R>(r: &mut R) -> Result<Option<T>, FrameError>
    where
        T: DeserializeOwned,
        R: AsyncRead + Unpin,
    {
        let mut header = [0u8; 4];
        let mut filled = 0;
        while filled < 4 {
            let n = r.read(&mut header[filled..]).await?;
            if n == 0 {
                return if filled == 0 { Ok(None) } else { Err(FrameError::Truncated) };
            }
            filled += n;
        }
        let len = frame_body_len(header)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        })?;
        decode_frame_body(&body).map(Some)
    }

    /// Writes one frame.
    pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), FrameError>
    where
        T: Serialize,
        W: AsyncWrite + Unpin,
    {
        let frame = encode_frame(msg)?;
        w.write_all(&frame).await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use io::{read_frame, write_frame};
