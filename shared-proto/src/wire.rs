//! Agent↔hub frames, carried over QUIC (ALPN `flotilla/1`, mutual TLS) or, where a
//! store's firewall drops UDP, over TCP with TLS: the same frames either way.
//!
//! Every bidirectional stream (on TCP: every connection) is opened by the agent and starts with one
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
//! - `Renew` (version 3): a new certificate for a new key the device generated,
//!   answered by one [`RenewReply`]. The hub asks for it ([`HubFrame::Renew`]) when the
//!   certificate nears its end or the fleet's CAs changed; a device whose certificate
//!   expired while it was away asks on its own and is quarantined until an operator
//!   approves.
//!
//! A frame is a little-endian `u32` length and then a versioned postcard body
//! ([`crate::codec`]). A length over [`MAX_FRAME_BYTES`] or a body that does not decode
//! is a protocol error that closes that one connection. The version of the stream's
//! first frame is the version the peer speaks; the answer is written in it
//! ([`encode_frame_for`]), so hubs and agents one version apart interoperate.

use crate::codec::{self, CodecError};
use crate::manifest::{DesiredManifest, ObservedContainer};
use crate::resource::Capacity;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod v3;

/// Version of the frame bodies this build writes.
pub const PROTOCOL_VERSION: u32 = 6;
/// Oldest version this build still reads and can answer in: a hub and an agent one
/// version apart interoperate. Version 2 added [`HubFrame::RetryAfter`]; version 3
/// certificate renewal ([`HubFrame::Renew`], [`StreamOpen::Renew`], [`RenewReply`]),
/// which the hub never asks of an older agent; version 4 moved manifests and reports
/// to manifest shape 2 (probes, volumes, init containers…), which an older peer
/// receives in shape 1, without what it cannot express; version 5 added logs and exec
/// through the hub ([`HubFrame::Attach`], [`StreamOpen::Attach`]), which the hub never
/// asks of an older agent; version 6 the cluster's hubs ([`HubFrame::Hubs`]), which
/// an older agent is not told.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Most CA certificates a renewal hands a device (the fleet CA and the ones being
/// rotated in or out).
pub const MAX_TRUSTED_CAS: usize = 8;
/// Longest name-like string a device may send: names, ids, versions, the boot id.
pub const MAX_FRAME_NAME: usize = 253;
/// Longest free text a device may send (a container's reason).
pub const MAX_FRAME_TEXT: usize = 1024;
/// Most containers one report may list.
pub const MAX_REPORT_CONTAINERS: usize = 1024;
/// Most labels a device may ask for at enrolment.
pub const MAX_ENROL_LABELS: usize = 64;
/// Largest certificate request, token text and label (key plus value) at enrolment.
pub const MAX_CSR_BYTES: usize = 8 << 10;
pub const MAX_TOKEN_BYTES: usize = 512;

fn too_long(field: &str, value: &str, max: usize) -> Option<String> {
    (value.len() > max).then(|| format!("{field} is {} bytes, more than {max}", value.len()))
}

impl DeviceFacts {
    /// What is wrong with these facts, if anything: every string is bounded.
    pub fn problem(&self) -> Option<String> {
        [
            ("facts.arch", &self.arch),
            ("facts.os", &self.os),
            ("facts.agentVersion", &self.agent_version),
            ("facts.hostname", &self.hostname),
        ]
        .into_iter()
        .find_map(|(f, v)| too_long(f, v, MAX_FRAME_NAME))
    }
}

impl AgentHello {
    /// What is wrong with this hello, if anything.
    pub fn problem(&self) -> Option<String> {
        too_long("device", &self.device, MAX_FRAME_NAME)
            .or_else(|| too_long("bootId", &self.boot_id, MAX_FRAME_NAME))
            .or_else(|| self.facts.problem())
    }
}

impl AgentReport {
    /// What is wrong with this report, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.containers.len() > MAX_REPORT_CONTAINERS {
            return Some(format!(
                "a report lists {} containers, more than {MAX_REPORT_CONTAINERS}",
                self.containers.len()
            ));
        }
        self.containers.iter().enumerate().find_map(|(i, c)| {
            [("app", &c.app), ("name", &c.name), ("id", &c.id)]
                .into_iter()
                .find_map(|(f, v)| too_long(&format!("containers[{i}].{f}"), v, MAX_FRAME_NAME))
                .or_else(|| too_long(&format!("containers[{i}].reason"), &c.reason, MAX_FRAME_TEXT))
        })
    }

    /// Cuts every free-text field to its bound (on a character boundary), so that an
    /// agent's long error chain never costs it its session.
    pub fn truncate_to_limits(&mut self) {
        for c in &mut self.containers {
            if c.reason.len() > MAX_FRAME_TEXT {
                let mut end = MAX_FRAME_TEXT - '…'.len_utf8();
                while !c.reason.is_char_boundary(end) {
                    end -= 1;
                }
                c.reason.truncate(end);
                c.reason.push('…');
            }
        }
    }
}

impl RenewRequest {
    /// What is wrong with this request, if anything (before any of it is trusted).
    pub fn problem(&self) -> Option<String> {
        (self.csr_der.len() > MAX_CSR_BYTES).then(|| {
            format!("the certificate request is {} bytes, more than {MAX_CSR_BYTES}", self.csr_der.len())
        })
    }
}

impl EnrolRequest {
    /// What is wrong with this request, if anything (before any of it is trusted).
    pub fn problem(&self) -> Option<String> {
        if self.csr_der.len() > MAX_CSR_BYTES {
            return Some(format!(
                "the certificate request is {} bytes, more than {MAX_CSR_BYTES}",
                self.csr_der.len()
            ));
        }
        if self.labels.len() > MAX_ENROL_LABELS {
            return Some(format!("{} labels asked for, more than {MAX_ENROL_LABELS}", self.labels.len()));
        }
        too_long("token", &self.token, MAX_TOKEN_BYTES)
            .or_else(|| too_long("deviceName", &self.device_name, MAX_FRAME_NAME))
            .or_else(|| self.facts.problem())
            .or_else(|| {
                self.labels.iter().find_map(|(k, v)| {
                    too_long(&format!("labels[{k:.64}]"), v, MAX_FRAME_NAME)
                        .or_else(|| too_long("a label key", k, MAX_FRAME_NAME))
                })
            })
    }
}

/// Application error codes the hub closes QUIC connections with. Over the TCP
/// fallback the hub just closes the connection.
pub mod close_code {
    /// The peer's frames broke the protocol.
    pub const PROTOCOL: u32 = 1;
    /// A stream other than enrolment without a device certificate, or a certificate
    /// that does not name a device.
    pub const UNAUTHENTICATED: u32 = 2;
    pub const SHUTDOWN: u32 = 3;
    /// The first frame was written at a protocol version this hub does not speak; the
    /// agent may retry at an older one.
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// The certificate no longer opens a session: its device was deleted, or
    /// re-enrolled with another certificate. Reconnecting with it will not help.
    pub const REVOKED: u32 = 5;
    /// The device holds as many connections as it may; one must close first.
    pub const TOO_MANY_CONNECTIONS: u32 = 6;
    /// The certificate expired: it opens nothing but a renewal stream, which
    /// quarantines the device until an operator approves.
    pub const CERT_EXPIRED: u32 = 7;
}
/// TLS application protocol both ends insist on. It names the protocol family; the
/// version of each frame travels in the frame itself.
pub const ALPN: &[u8] = b"flotilla/1";
/// Largest frame either side accepts. A desired manifest for a busy device is a few
/// kilobytes; this leaves room without letting a peer make us allocate gigabytes.
pub const MAX_FRAME_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamOpen {
    Enrol(EnrolRequest),
    Sync(AgentHello),
    Blob(BlobRequest),
    /// Version 3.
    Renew(RenewRequest),
    /// Version 5: the stream the hub asked for with [`HubFrame::Attach`]. The agent
    /// then writes [`AttachFrame`]s, the hub [`AttachInput`]s.
    Attach(AttachOpen),
}

/// Opens the stream of attach request `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachOpen {
    pub id: u64,
}

/// An operator's request to read a container's log or run a command in it, carried
/// to the device on its sync stream. The device answers by opening a `StreamOpen::
/// Attach` stream with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The hub's, unique among its pending requests.
    pub id: u64,
    pub app: String,
    /// Empty: the app's only (or first) container.
    pub container: String,
    pub what: AttachKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachKind {
    Logs(LogsRequest),
    Exec(ExecRequest),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogsRequest {
    /// Keep sending what the container writes until the stream is closed.
    pub follow: bool,
    /// Only the last lines.
    pub tail_lines: Option<u32>,
    /// Only what was written since (Unix milliseconds).
    pub since_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// Run on a terminal (stdout and stderr are one stream then).
    pub tty: bool,
    /// The operator's input follows as [`AttachInput::Stdin`].
    pub stdin: bool,
    /// Terminal size (0 when not a terminal).
    pub cols: u16,
    pub rows: u16,
}

/// Most arguments of an exec command, and the longest one.
pub const MAX_EXEC_ARGS: usize = 256;
pub const MAX_EXEC_ARG_BYTES: usize = 4096;
/// Largest chunk of output or input one attach frame carries.
pub const MAX_ATTACH_CHUNK: usize = 64 << 10;

impl AttachRequest {
    /// What is wrong with this request, if anything: the agent bounds what it runs.
    pub fn problem(&self) -> Option<String> {
        too_long("app", &self.app, MAX_FRAME_NAME)
            .or_else(|| too_long("container", &self.container, MAX_FRAME_NAME))
            .or_else(|| match &self.what {
                AttachKind::Logs(_) => None,
                AttachKind::Exec(e) => {
                    if e.command.is_empty() || e.command.len() > MAX_EXEC_ARGS {
                        return Some(format!("a command of {} arguments", e.command.len()));
                    }
                    e.command.iter().enumerate().find_map(|(i, a)| {
                        too_long(&format!("command[{i}]"), a, MAX_EXEC_ARG_BYTES)
                            .or_else(|| a.contains('\0').then(|| format!("command[{i}] contains NUL")))
                    })
                }
            })
    }
}

/// What the device sends on an attach stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachFrame {
    /// The log is being read or the command runs.
    Started,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended (exec only); the stream ends after it.
    Exit {
        code: i32,
    },
    /// It could not be done; the stream ends after it.
    Error {
        message: String,
    },
}

/// What the hub sends on an attach stream (exec only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttachInput {
    Stdin(Vec<u8>),
    /// The operator closed their input.
    StdinEof,
    Resize {
        cols: u16,
        rows: u16,
    },
}

/// A certificate for a new key, on a connection authenticated with the current (or an
/// expired) certificate of the device: the handshake proved the device holds the old
/// key, the request's signature that it holds the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// PKCS#10 request for the new key.
    pub csr_der: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenewReply {
    Renewed {
        /// Device certificate first, then intermediates, if any.
        cert_chain_der: Vec<Vec<u8>>,
        /// Every CA the device should trust for the hub from now on.
        trusted_ca_der: Vec<Vec<u8>>,
    },
    /// The certificate had expired: the device is quarantined until an operator
    /// approves. Ask again, with the same key, after this long.
    Pending { retry_after_ms: u32, message: String },
    /// Not now, or not ever: `message` says which and what to do.
    Refused { message: String },
}

impl RenewReply {
    /// What is wrong with this reply, if anything: the agent bounds what it keeps.
    pub fn problem(&self) -> Option<String> {
        match self {
            RenewReply::Renewed { cert_chain_der, trusted_ca_der } => {
                if cert_chain_der.is_empty() || cert_chain_der.len() > MAX_TRUSTED_CAS {
                    return Some(format!("a certificate chain of {} certificates", cert_chain_der.len()));
                }
                if trusted_ca_der.is_empty() || trusted_ca_der.len() > MAX_TRUSTED_CAS {
                    return Some(format!("{} CAs to trust", trusted_ca_der.len()));
                }
                None
            }
            RenewReply::Pending { .. } | RenewReply::Refused { .. } => None,
        }
    }
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
    /// Labels the device asks for, within what its token allows.
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
    /// What each running container uses (version 4; sent only to hubs that speak it).
    /// Kept in the hub's memory, never written to the store.
    Usage(UsageReport),
    /// The device's own addresses on its site's network (version 5), which its site
    /// peers balance published ports to. Sent after the welcome and when they change.
    Addresses(Vec<String>),
}

/// Most addresses a device reports, and most peers or apps the hub names.
pub const MAX_ADDRESSES: usize = 16;
pub const MAX_PEER_APPS: usize = 64;
pub const MAX_PEERS: usize = 64;

/// The other devices of the site that run `app` and have it ready: where a published
/// port of it is balanced to (version 5).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppPeers {
    pub app: String,
    /// One address per peer device.
    pub addresses: Vec<String>,
}

/// What is wrong with a list of addresses, if anything: bounded and each an IP.
pub fn addresses_problem(addresses: &[String], max: usize) -> Option<String> {
    if addresses.len() > max {
        return Some(format!("{} addresses, more than {max}", addresses.len()));
    }
    addresses
        .iter()
        .find(|a| a.len() > 45 || a.parse::<std::net::IpAddr>().is_err())
        .map(|a| format!("{a:?} is not an IP address"))
}

/// What is wrong with the peers the hub names, if anything.
pub fn peers_problem(peers: &[AppPeers]) -> Option<String> {
    if peers.len() > MAX_PEER_APPS {
        return Some(format!("peers of {} apps, more than {MAX_PEER_APPS}", peers.len()));
    }
    peers.iter().find_map(|p| {
        too_long("app", &p.app, MAX_FRAME_NAME).or_else(|| addresses_problem(&p.addresses, MAX_PEERS))
    })
}

/// Resource use of the running containers, sampled by the agent from their cgroups.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub containers: Vec<ContainerUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    pub app: String,
    pub name: String,
    /// Average CPU over the last sampling interval, in thousandths of a core.
    pub cpu_millis: u32,
    /// Memory in use, page cache that can be reclaimed left out (the working set).
    pub memory_bytes: u64,
}

impl UsageReport {
    /// What is wrong with this report, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.containers.len() > MAX_REPORT_CONTAINERS {
            return Some(format!(
                "a usage report lists {} containers, more than {MAX_REPORT_CONTAINERS}",
                self.containers.len()
            ));
        }
        self.containers.iter().enumerate().find_map(|(i, c)| {
            too_long(&format!("containers[{i}].app"), &c.app, MAX_FRAME_NAME)
                .or_else(|| too_long(&format!("containers[{i}].name"), &c.name, MAX_FRAME_NAME))
        })
    }
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
    /// The hub is busy (a reconnect storm after a restart): come back after this long.
    /// Version 2; a version-1 agent is sent `Refused` instead.
    RetryAfter {
        after_ms: u32,
        message: String,
    },
    /// Renew the certificate now: open a `Renew` stream with a new key. Version 3; the
    /// hub never sends it to an older agent.
    Renew {
        reason: String,
    },
    /// The CAs the device should trust for the hub from now on (the fleet CA, plus the
    /// one staged to replace it or the one it replaced during a rotation). Sent after
    /// every welcome, version 3.
    Trust {
        ca_der: Vec<Vec<u8>>,
    },
    /// Open an attach stream for this request (version 5; never sent to an older
    /// agent).
    Attach(AttachRequest),
    /// Where the device's published ports are balanced to, besides its own pods
    /// (version 5): sent when it changes, and kept by the device for when the hub is
    /// out of reach.
    Peers(Vec<AppPeers>),
    /// Every hub of the cluster devices may connect to (version 6): sent after the
    /// welcome and when the cluster changes, and kept by the device, which moves to
    /// another of them when the one it holds goes away.
    Hubs(Vec<HubEndpoint>),
}

/// An agent's link to its hub, silent this long, is dead (a keep-alive and its
/// retransmissions went unanswered): how long a device may take to notice that its
/// hub vanished without a word, and move to another.
pub const LINK_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

/// Most hubs the hub names to a device (a cluster has 1, 3 or 5).
pub const MAX_HUBS: usize = 16;
/// Longest `host:port` of a hub endpoint.
pub const MAX_ENDPOINT: usize = 262;

/// Where devices reach one hub: `host:port` of its QUIC endpoint and of its TCP
/// fallback.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubEndpoint {
    pub quic: String,
    pub tcp: String,
}

/// What is wrong with a list of hub endpoints, if anything: bounded, and each a
/// `host:port` with a port.
pub fn hubs_problem(hubs: &[HubEndpoint]) -> Option<String> {
    if hubs.len() > MAX_HUBS {
        return Some(format!("{} hubs, more than {MAX_HUBS}", hubs.len()));
    }
    let bad = |a: &str| {
        a.len() > MAX_ENDPOINT
            || a.chars().any(|c| c.is_whitespace() || c.is_control())
            || a.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    };
    hubs.iter().flat_map(|h| [&h.quic, &h.tcp]).find(|a| bad(a)).map(|a| format!("{a:?} is not host:port"))
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

/// A message that travels as a frame, with how it reads and writes older versions.
///
/// Every version from [`MIN_PROTOCOL_VERSION`] to [`PROTOCOL_VERSION`] must decode
/// (golden vectors in `tests/golden.rs` pin each one), and a writer answering a peer
/// that speaks an older version re-expresses the message in that version's terms.
pub trait WireFrame: Serialize + DeserializeOwned + Clone {
    /// Decodes a body written at `version` (already known to be supported). The
    /// default fits types whose older shapes are a prefix of the current one (only
    /// enum variants appended since).
    fn decode_body(_version: u32, body: &[u8]) -> Result<Self, CodecError> {
        codec::decode_body("frame", body)
    }

    /// This message as a peer speaking `version` must receive it.
    fn for_version(&self, _version: u32) -> Self {
        self.clone()
    }

    /// The versioned body a peer speaking `version` reads. The default fits types
    /// whose shape did not change (only variants appended).
    fn encode_body(&self, version: u32) -> Result<Vec<u8>, CodecError> {
        codec::encode_versioned(version, "frame", &self.for_version(version))
    }
}

impl WireFrame for StreamOpen {}

impl WireFrame for AgentFrame {
    fn decode_body(version: u32, body: &[u8]) -> Result<Self, CodecError> {
        match version {
            ..4 => codec::decode_body::<v3::AgentFrame>("frame", body).map(Into::into),
            _ => codec::decode_body("frame", body),
        }
    }

    fn for_version(&self, version: u32) -> Self {
        match version {
            ..4 => v3::AgentFrame::from(self).into(),
            _ => self.clone(),
        }
    }

    fn encode_body(&self, version: u32) -> Result<Vec<u8>, CodecError> {
        match version {
            ..4 => codec::encode_versioned(version, "frame", &v3::AgentFrame::from(self)),
            _ => codec::encode_versioned(version, "frame", self),
        }
    }
}
impl WireFrame for EnrolReply {}
impl WireFrame for AttachFrame {}
impl WireFrame for AttachInput {}
impl WireFrame for BlobReply {}
impl WireFrame for RenewReply {}

impl WireFrame for HubFrame {
    fn decode_body(version: u32, body: &[u8]) -> Result<Self, CodecError> {
        match version {
            ..4 => codec::decode_body::<v3::HubFrame>("frame", body).map(Into::into),
            _ => codec::decode_body("frame", body),
        }
    }

    fn for_version(&self, version: u32) -> Self {
        match self {
            HubFrame::RetryAfter { after_ms, message } if version < 2 => HubFrame::Refused {
                message: format!("{message}; try again in {} s", (*after_ms).div_ceil(1000)),
            },
            HubFrame::Desired(_) if version < 4 => v3::HubFrame::from(self).into(),
            other => other.clone(),
        }
    }

    fn encode_body(&self, version: u32) -> Result<Vec<u8>, CodecError> {
        let frame = self.for_version(version);
        match version {
            ..4 => codec::encode_versioned(version, "frame", &v3::HubFrame::from(&frame)),
            _ => codec::encode_versioned(version, "frame", &frame),
        }
    }
}

/// Encodes `body` (already versioned) behind its length.
fn with_header(body: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes any serialisable value as one length-prefixed frame at `version`. Other
/// framed protocols (the runtime helper's) use this with their own version.
pub fn encode_raw_frame<T: Serialize>(version: u32, msg: &T) -> Result<Vec<u8>, FrameError> {
    with_header(codec::encode_versioned(version, "frame", msg)?)
}

/// Encodes `msg` as one frame at this build's [`PROTOCOL_VERSION`].
pub fn encode_frame<T: WireFrame>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_raw_frame(PROTOCOL_VERSION, msg)
}

/// Encodes `msg` for a peer that speaks `version` (clamped to what this build knows).
pub fn encode_frame_for<T: WireFrame>(version: u32, msg: &T) -> Result<Vec<u8>, FrameError> {
    let version = version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
    with_header(msg.encode_body(version)?)
}

/// Checks a frame header and returns the body length that follows.
pub fn frame_body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame body (without its length header) written at any supported
/// version, and says which version that was.
pub fn decode_frame_body_versioned<T: WireFrame>(body: &[u8]) -> Result<(u32, T), FrameError> {
    Ok(codec::decode_versioned_range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, "frame", body, T::decode_body)?)
}

/// Decodes one frame body (without its length header) written at any supported version.
pub fn decode_frame_body<T: WireFrame>(body: &[u8]) -> Result<T, FrameError> {
    decode_frame_body_versioned(body).map(|(_, v)| v)
}

/// Splits one whole frame, header included, into its body.
fn split_frame(frame: &[u8]) -> Result<&[u8], FrameError> {
    let header: [u8; 4] = frame.get(..4).and_then(|h| h.try_into().ok()).ok_or(FrameError::Truncated)?;
    let len = frame_body_len(header)?;
    let body = frame.get(4..).ok_or(FrameError::Truncated)?;
    if body.len() < len {
        return Err(FrameError::Truncated);
    }
    if body.len() > len {
        return Err(CodecError::TrailingBytes { what: "frame", extra: body.len() - len }.into());
    }
    Ok(body)
}

/// Decodes one whole frame, header included, as produced by [`encode_frame`].
pub fn decode_frame<T: WireFrame>(frame: &[u8]) -> Result<T, FrameError> {
    decode_frame_body(split_frame(frame)?)
}

/// Decodes one whole frame of a protocol with a single `version` (the runtime helper's).
pub fn decode_raw_frame<T: DeserializeOwned>(version: u32, frame: &[u8]) -> Result<T, FrameError> {
    Ok(codec::decode_versioned(version, "frame", split_frame(frame)?)?)
}

/// Cuts a byte stream into frame bodies, whatever the sizes of the pieces it arrives
/// in. It owns every byte it has been given, so nothing is lost when the task reading
/// the stream is interrupted between two reads: the next read simply continues.
///
/// A header that announces more than [`MAX_FRAME_BYTES`] is refused as soon as its
/// four bytes are in, before any of the body is buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    consumed: usize,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends bytes as they came off the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed == self.buf.len() {
            self.buf.clear();
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame body, or `None` until more bytes arrive.
    pub fn next_body(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let pending = &self.buf[self.consumed..];
        let Some(header) = pending.get(..4) else { return Ok(None) };
        let len = frame_body_len(header.try_into().expect("4 bytes"))?;
        let Some(body) = pending.get(4..4 + len) else { return Ok(None) };
        let body = body.to_vec();
        self.consumed += 4 + len;
        // Keep the buffer from growing without bound across many frames.
        if self.consumed > 64 * 1024 && self.consumed * 2 > self.buf.len() {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        Ok(Some(body))
    }

    /// Bytes received but not yet returned as a frame: a partial frame, if any.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }
}

#[cfg(feature = "tokio")]
mod io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads one raw frame body. `Ok(None)` when the stream ended cleanly before a frame
    /// began. Not cancel-safe: use it only where nothing can interrupt the read (one
    /// reader task per stream, or a request/response exchange).
    pub async fn read_raw_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
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
        Ok(Some(body))
    }

    /// Reads one frame of any supported version; see [`read_raw_frame`].
    pub async fn read_frame<T, R>(r: &mut R) -> Result<Option<T>, FrameError>
    where
        T: WireFrame,
        R: AsyncRead + Unpin,
    {
        match read_raw_frame(r).await? {
            Some(body) => decode_frame_body(&body).map(Some),
            None => Ok(None),
        }
    }

    /// Reads one frame and the version it was written at; see [`read_raw_frame`].
    pub async fn read_frame_versioned<T, R>(r: &mut R) -> Result<Option<(u32, T)>, FrameError>
    where
        T: WireFrame,
        R: AsyncRead + Unpin,
    {
        match read_raw_frame(r).await? {
            Some(body) => decode_frame_body_versioned(&body).map(Some),
            None => Ok(None),
        }
    }

    /// Writes one frame at this build's version.
    pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), FrameError>
    where
        T: WireFrame,
        W: AsyncWrite + Unpin,
    {
        write_frame_for(w, PROTOCOL_VERSION, msg).await
    }

    /// Writes one frame for a peer that speaks `version`.
    pub async fn write_frame_for<T, W>(w: &mut W, version: u32, msg: &T) -> Result<(), FrameError>
    where
        T: WireFrame,
        W: AsyncWrite + Unpin,
    {
        let frame = encode_frame_for(version, msg)?;
        w.write_all(&frame).await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use io::{read_frame, read_frame_versioned, read_raw_frame, write_frame, write_frame_for};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_reassembles_frames_from_any_split() {
        let frames: Vec<Vec<u8>> =
            (0..5u64).map(|seq| encode_frame(&AgentFrame::Heartbeat { seq: seq * 1000 }).unwrap()).collect();
        let stream: Vec<u8> = frames.concat();
        for chunk in 1..stream.len() {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(body) = d.next_body().unwrap() {
                    got.push(decode_frame_body::<AgentFrame>(&body).unwrap());
                }
            }
            let want: Vec<AgentFrame> =
                (0..5u64).map(|seq| AgentFrame::Heartbeat { seq: seq * 1000 }).collect();
            assert_eq!(got, want, "chunk size {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn every_string_a_device_sends_is_bounded_and_reports_are_cut_to_fit() {
        let hello = AgentHello {
            device: "pi".into(),
            facts: DeviceFacts { os: "x".repeat(MAX_FRAME_NAME + 1), ..Default::default() },
            held_revision: 0,
            boot_id: "b".into(),
        };
        assert!(hello.problem().unwrap().contains("facts.os"));
        let container = crate::manifest::ObservedContainer {
            app: "a".into(),
            generation: 1,
            name: "c".into(),
            id: "i".into(),
            phase: Default::default(),
            exit_code: None,
            restarts: 0,
            started_at: None,
            reason: "é".repeat(MAX_FRAME_TEXT),
            ..Default::default()
        };
        let mut report = AgentReport { held_revision: 1, containers: vec![container] };
        assert!(report.problem().unwrap().contains("containers[0].reason"));
        report.truncate_to_limits();
        assert_eq!(report.problem(), None);
        assert!(report.containers[0].reason.ends_with('…'));
        assert!(report.containers[0].reason.len() <= MAX_FRAME_TEXT);
        let req = EnrolRequest {
            token: "t".into(),
            device_name: "pi".into(),
            csr_der: vec![0; MAX_CSR_BYTES + 1],
            facts: Default::default(),
            labels: Default::default(),
        };
        assert!(req.problem().unwrap().contains("certificate request"));
    }

    #[test]
    fn decoder_refuses_an_oversized_header_before_the_body() {
        let mut d = FrameDecoder::new();
        d.push(&((MAX_FRAME_BYTES as u32) + 1).to_le_bytes());
        assert!(matches!(d.next_body(), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn retry_after_is_refused_for_version_one_peers() {
        let f = HubFrame::RetryAfter { after_ms: 2500, message: "the hub is busy".into() };
        assert_eq!(f.for_version(2), f);
        let HubFrame::Refused { message } = f.for_version(1) else { panic!("not downgraded") };
        assert!(message.contains("try again in 3 s"), "{message}");
        let bytes = encode_frame_for(1, &f).unwrap();
        assert_eq!(bytes[4], 1, "written at version 1");
        assert!(matches!(decode_frame::<HubFrame>(&bytes).unwrap(), HubFrame::Refused { .. }));
    }
}
