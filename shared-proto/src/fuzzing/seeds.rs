//! The seed corpus, `shared-proto/fuzz/corpus/<target>/<name>`, as code: written by
//! `cargo run -p shared-proto --example fuzz_seeds`, checked by `tests/fuzz_corpus.rs`.

use super::{DEVICE, Op, hello, report, script};
use crate::manifest::{DesiredApp, DesiredManifest};
use crate::wire::{
    self, AgentFrame, BlobReply, DeviceFacts, EnrolReply, HubFrame, HubWelcome, MAX_FRAME_BYTES, StreamOpen,
    WireFrame,
};
use crate::{NetworkMode, RestartPolicy};

/// One file of the committed seed corpus, `fuzz/corpus/<target>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// The seed corpus: real frames and the situations the sessions must survive, so the
/// fuzzer starts from inputs that get past the decoder instead of guessing a header.
/// `cargo run -p shared-proto --example fuzz_seeds` writes it; `tests/fuzz_corpus.rs`
/// checks the committed files still match.
pub fn seed_corpus() -> Vec<Seed> {
    let mut seeds = frame_seeds();
    seeds.extend(hub_seeds());
    seeds.extend(agent_seeds());
    seeds
}

fn frame<T: WireFrame>(version: u32, msg: &T) -> Vec<u8> {
    wire::encode_frame_for(version, msg).expect("seed frames are small")
}

/// A richer manifest than [`super::manifest`] makes: the one `tests/golden.rs` pins.
fn golden_manifest() -> DesiredManifest {
    use crate::manifest::{ContainerLimits, DesiredContainer};
    use crate::{PortSpec, Protocol};
    DesiredManifest {
        device: DEVICE.into(),
        revision: 42,
        apps: vec![DesiredApp {
            name: "web".into(),
            generation: 3,
            restart_policy: RestartPolicy::Always,
            network: NetworkMode::Host,
            containers: vec![DesiredContainer {
                name: "httpd".into(),
                image: "demo:1".into(),
                image_digest: "sha256:ab".into(),
                command: vec!["/httpd".into()],
                args: vec![],
                env: vec![("PORT".into(), "80".into())],
                ports: vec![PortSpec {
                    name: String::new(),
                    container_port: 80,
                    host_port: None,
                    protocol: Protocol::TCP,
                }],
                limits: ContainerLimits {
                    cpu_millis: Some(500),
                    memory_bytes: Some(1 << 20),
                    pids: None,
                    cpu_shares: None,
                },
                working_dir: String::new(),
                volume_mounts: vec![crate::VolumeMount {
                    name: "data".into(),
                    mount_path: "/data".into(),
                    read_only: false,
                }],
                readiness_probe: Some(crate::Probe {
                    tcp_socket: Some(crate::TcpSocketAction { port: 80 }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: vec![crate::VolumeSpec {
                name: "data".into(),
                persistent: Some(crate::PersistentVolume {}),
                ..Default::default()
            }],
            ..Default::default()
        }],
        configs: vec![],
    }
}

fn welcome() -> HubFrame {
    HubFrame::Welcome(HubWelcome { hub_version: "0.1.0".into(), heartbeat_interval_ms: 10_000 })
}

fn frame_seeds() -> Vec<Seed> {
    use crate::wire::{BlobRequest, EnrolRefusal, EnrolRequest};
    let seed = |name, chunking: u8, stream: Vec<u8>| Seed {
        target: "frames",
        name,
        bytes: [vec![chunking], stream].concat(),
    };
    let hello = StreamOpen::Sync(hello(7));
    let enrol = StreamOpen::Enrol(EnrolRequest {
        token: "flt_1.secret".into(),
        device_name: DEVICE.into(),
        csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
        facts: DeviceFacts::default(),
        labels: [("site".to_string(), "s1".to_string())].into(),
    });
    let blob = StreamOpen::Blob(BlobRequest { digest: "sha256:ab".into(), offset: 4096 });
    let retry = HubFrame::RetryAfter { after_ms: 1500, message: "busy".into() };
    let accepted = EnrolReply::Accepted {
        device: DEVICE.into(),
        cert_chain_der: vec![vec![0x30, 0x00]],
        ca_der: vec![0x30],
    };
    let refused =
        EnrolReply::Refused { reason: EnrolRefusal::UsedUp, message: "the token is used up".into() };
    let sync_stream = [
        frame(2, &hello),
        frame(2, &AgentFrame::Report(report(7))),
        frame(2, &AgentFrame::Heartbeat { seq: 1 }),
        frame(2, &welcome()),
        frame(2, &HubFrame::UpToDate { revision: 7 }),
    ]
    .concat();
    let heartbeat = frame(2, &AgentFrame::Heartbeat { seq: 9 });
    let mut trailing = heartbeat.clone();
    trailing.push(0);
    trailing[0] += 1;
    let mut future = heartbeat.clone();
    future[4] = wire::PROTOCOL_VERSION as u8 + 1;
    let renewal = [
        frame(3, &HubFrame::Renew { reason: "due".into() }),
        frame(3, &StreamOpen::Renew(wire::RenewRequest { csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x00] })),
        frame(
            3,
            &wire::RenewReply::Renewed { cert_chain_der: vec![vec![0x30]], trusted_ca_der: vec![vec![0x30]] },
        ),
        frame(3, &wire::RenewReply::Pending { retry_after_ms: 10_000, message: "quarantined".into() }),
        frame(3, &HubFrame::Trust { ca_der: vec![vec![0x30, 0x00], vec![0x30, 0x01]] }),
    ]
    .concat();
    let mut half_hello = frame(1, &hello);
    half_hello.truncate(half_hello.len() / 2);
    vec![
        seed("hello-v2-byte-by-byte", 0, frame(2, &hello)),
        seed("hello-v1-small-pieces", 2, frame(1, &hello)),
        seed("enrol-and-blob-requests", 7, [frame(2, &enrol), frame(2, &blob)].concat()),
        seed(
            "desired-v1-and-v2",
            12,
            [
                frame(1, &HubFrame::Desired(golden_manifest())),
                frame(2, &HubFrame::Desired(golden_manifest())),
            ]
            .concat(),
        ),
        seed("sync-stream", 4, sync_stream),
        seed("retry-after-v2", 1, frame(2, &retry)),
        // A version-1 body holding what only version 2 has: read leniently, answered in kind.
        seed("retry-after-inside-v1", 12, wire::encode_raw_frame(1, &retry).expect("small")),
        seed("enrol-replies", 5, [frame(2, &accepted), frame(1, &refused)].concat()),
        seed(
            "blob-replies",
            3,
            [
                frame(2, &BlobReply::Found { size: 1 << 20 }),
                frame(2, &BlobReply::NotFound { message: "gone".into() }),
            ]
            .concat(),
        ),
        seed("empty-frame", 12, 0u32.to_le_bytes().to_vec()),
        seed(
            "oversized-header",
            1,
            [heartbeat.clone(), ((MAX_FRAME_BYTES as u32) + 1).to_le_bytes().to_vec()].concat(),
        ),
        seed(
            "largest-header-truncated",
            6,
            [(MAX_FRAME_BYTES as u32).to_le_bytes().to_vec(), vec![2, 1]].concat(),
        ),
        seed("trailing-byte-in-body", 12, trailing),
        seed("future-version", 12, future),
        seed("truncated-hello", 3, half_hello),
        seed("renewal-v3", 9, renewal),
        seed(
            "hubs-v6",
            5,
            frame(
                6,
                &HubFrame::Hubs(vec![
                    wire::HubEndpoint { quic: "hub-1.example:7441".into(), tcp: "hub-1.example:443".into() },
                    wire::HubEndpoint { quic: "[fd00::2]:7441".into(), tcp: "[fd00::2]:7441".into() },
                ]),
            ),
        ),
    ]
}

fn hub_seeds() -> Vec<Seed> {
    let seed = |name, setup: [u8; 2], ops: &[Op<'_>]| Seed {
        target: "hub_session",
        name,
        bytes: script(&setup, ops),
    };
    // Set-up bytes, see `hub_session`: version bit, decision, impostor, held revision.
    const V1: u8 = 0;
    const V2: u8 = 1;
    const REFUSE: u8 = 6 << 1;
    const RETRY: u8 = 7 << 1;
    const IMPOSTOR: u8 = 3 << 4;
    const WITH_HELLO: u8 = 2 << 4;
    const HELD_2: u8 = 2 << 6;
    // Store bytes, see `manifest`: revision in bits 2–7, apps + 1 in bits 0–1.
    const REV_2: u8 = (2 << 2) | 2;
    const REV_5: u8 = (5 << 2) | 3;
    const DELETED: u8 = 0;
    let report_frame = |v, k| frame(v, &AgentFrame::Report(report(k)));
    let heartbeat_frame = |v, seq| frame(v, &AgentFrame::Heartbeat { seq });
    let report_v1 = report_frame(1, 13);
    let (a, rest) = report_v1.split_at(3);
    let (b, c) = rest.split_at(5);
    let too_many = frame(2, &AgentFrame::Report(report(3)));
    vec![
        seed(
            "report-heartbeat-silence",
            [V2 | HELD_2, REV_2],
            &[
                Op::Bytes(&report_frame(2, 9)),
                Op::Advance(5000),
                Op::Bytes(&heartbeat_frame(2, 1)),
                Op::Sleep,
                Op::Bytes(&heartbeat_frame(2, 2)),
            ],
        ),
        seed(
            "v1-report-in-pieces",
            [V1, REV_5],
            &[
                Op::Bytes(a),
                Op::Advance(20_000),
                Op::Bytes(b),
                Op::Bytes(c),
                Op::Update(REV_5),
                Op::Update(REV_2),
                Op::Update(DELETED),
                Op::Update(DELETED),
                Op::Eof,
            ],
        ),
        seed(
            "manifest-pushes",
            [V2, DELETED],
            &[
                Op::Update(REV_2),
                Op::Update(REV_2 + 1),
                Op::Update(REV_5),
                Op::Timeout,
                Op::Bytes(&heartbeat_frame(1, 1)),
                Op::Update(DELETED),
            ],
        ),
        seed("report-too-long", [V2, REV_2], &[Op::Bytes(&too_many), Op::Bytes(&heartbeat_frame(2, 1))]),
        seed(
            "eof-inside-a-frame",
            [V2, REV_2],
            &[Op::Bytes(&heartbeat_frame(2, 1)[..3]), Op::Eof, Op::Sleep],
        ),
        seed(
            "garbage-then-more",
            [V1, DELETED],
            &[Op::Bytes(&[2, 0, 0, 0, 9, 9]), Op::Bytes(&heartbeat_frame(1, 1))],
        ),
        seed("refused", [V2 | REFUSE, REV_2], &[Op::Bytes(&heartbeat_frame(2, 1)), Op::Eof]),
        seed("retry-after-v1", [V1 | RETRY, REV_2], &[Op::Sleep]),
        seed("retry-after-v2", [V2 | RETRY, REV_2], &[Op::Update(REV_5)]),
        seed(
            "report-behind-the-hello",
            [V1 | WITH_HELLO, REV_2],
            &[
                Op::Bytes(&[report_frame(1, 6), heartbeat_frame(1, 1)].concat()),
                Op::Advance(29_999),
                Op::Sleep,
            ],
        ),
        seed("eof-behind-the-hello", [V2 | WITH_HELLO, REV_2], &[Op::Bytes(&heartbeat_frame(2, 1)), Op::Eof]),
        // Found by the fuzzer: a welcome left a bad header that came with the hello
        // unread, so the session went on as if nothing had arrived.
        seed(
            "regression-bad-header-behind-the-hello",
            [V1 | WITH_HELLO, 0x7e],
            &[Op::Bytes(&[0x0a, 0x7e, 0x7e, 0x7e])],
        ),
        seed("impostor", [V2 | IMPOSTOR, REV_2], &[Op::Bytes(&heartbeat_frame(2, 1))]),
    ]
}

fn agent_seeds() -> Vec<Seed> {
    let seed = |name, setup: u8, ops: &[Op<'_>]| Seed {
        target: "agent_session",
        name,
        bytes: script(&[setup], ops),
    };
    // Set-up byte, see `agent_session`: version bit, held revision, first report.
    const V1: u8 = 0;
    const V2: u8 = 1;
    const HELD_2: u8 = 2 << 1;
    const REPORT: u8 = 9 << 3;
    let desired = |device: &str, revision| {
        HubFrame::Desired(DesiredManifest { device: device.into(), revision, ..Default::default() })
    };
    let welcome_v1 = frame(1, &welcome());
    let byte_by_byte: Vec<Op<'_>> = welcome_v1.chunks(1).map(Op::Bytes).collect();
    let answer = [frame(2, &welcome()), frame(2, &HubFrame::UpToDate { revision: 2 })].concat();
    let fast = HubFrame::Welcome(HubWelcome { hub_version: "x".into(), heartbeat_interval_ms: 0 });
    vec![
        seed(
            "welcome-heartbeats-desired",
            V2 | HELD_2 | REPORT,
            &[
                Op::Bytes(&answer),
                Op::Update(9 << 2),
                Op::Sleep,
                Op::Advance(9_999),
                Op::Sleep,
                Op::Bytes(&frame(2, &HubFrame::Desired(golden_manifest()))),
                Op::Update(42 << 2),
                Op::Eof,
            ],
        ),
        seed(
            "v1-welcome-byte-by-byte",
            V1,
            &[byte_by_byte.as_slice(), &[Op::Timeout, Op::Sleep, Op::Bytes(&frame(1, &desired(DEVICE, 3)))]]
                .concat(),
        ),
        seed(
            "fastest-heartbeat",
            V2,
            &[
                Op::Bytes(&frame(2, &fast)),
                Op::Sleep,
                Op::Sleep,
                Op::Advance(999),
                Op::Timeout,
                Op::Advance(1),
            ],
        ),
        seed("desired-before-welcome", V2, &[Op::Bytes(&frame(2, &desired(DEVICE, 1)))]),
        seed("second-welcome", V1 | REPORT, &[Op::Bytes(&[welcome_v1.clone(), welcome_v1.clone()].concat())]),
        seed(
            "manifest-of-another-device",
            V2,
            &[Op::Bytes(&answer), Op::Bytes(&frame(2, &desired("pi-2", 1)))],
        ),
        seed(
            "refused",
            V2,
            &[Op::Bytes(&frame(2, &HubFrame::Refused { message: "not enrolled".into() })), Op::Sleep],
        ),
        seed(
            "retry-after",
            V2,
            &[Op::Bytes(&frame(2, &HubFrame::RetryAfter { after_ms: 1500, message: "busy".into() }))],
        ),
        seed("no-welcome-in-time", V1, &[Op::Advance(14_999), Op::Sleep, Op::Update(1)]),
        seed("oversized-header", V2, &[Op::Bytes(&answer), Op::Bytes(&u32::MAX.to_le_bytes())]),
        seed("eof-inside-a-frame", V2, &[Op::Bytes(&answer[..answer.len() - 1]), Op::Eof]),
        seed(
            "renew-and-trust",
            V2,
            &[
                Op::Bytes(&answer),
                Op::Bytes(&frame(3, &HubFrame::Trust { ca_der: vec![vec![0x30]] })),
                Op::Bytes(&frame(3, &HubFrame::Renew { reason: "due".into() })),
                Op::Bytes(&frame(3, &HubFrame::Trust { ca_der: vec![] })),
            ],
        ),
    ]
}
