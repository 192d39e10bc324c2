//! Golden byte vectors pin the wire and disk encodings: a change that alters them
//! breaks agents and hubs already in the field, so it must come with a new version.
//! Each frame is pinned at the current protocol version and at the previous one: the
//! previous version's bytes must keep decoding, and a peer that speaks it must be
//! answered with exactly those bytes.

use proptest::prelude::*;
use shared_proto::manifest::{
    ContainerLimits, ContainerPhase, DesiredApp, DesiredContainer, DesiredManifest, ObservedContainer,
};
use shared_proto::store::{EnrolmentTokenRecord, LabelPolicy, Object, Precondition, StoreCommand};
use shared_proto::wire::{self, AgentFrame, AgentHello, AgentReport, DeviceFacts, HubFrame, StreamOpen};
use shared_proto::{
    App, AppSpec, Bytes, Capacity, ContainerSpec, CpuMillis, Device, DeviceCertificate, DevicePhase,
    DeviceSpec, NetworkMode, ObjectMeta, Placement, PortSpec, Protocol, RestartPolicy, Site, SiteSpec, Taint,
    TaintEffect, Timestamp,
};

fn manifest() -> DesiredManifest {
    DesiredManifest {
        device: "pi-1".into(),
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
                limits: ContainerLimits { cpu_millis: Some(500), memory_bytes: Some(1 << 20), pids: None },
                working_dir: String::new(),
            }],
        }],
    }
}

const HELLO_V1: &str = "2600000001010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";
const HELLO_V2: &str = "2600000002010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";
const DESIRED_V1: &str = "4800000001010470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f403018080400000";
const HELLO_V3: &str = "2600000003010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";
const DESIRED_V2: &str = "4800000002010470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f403018080400000";
const DESIRED_V3: &str = "4800000003010470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f403018080400000";

fn hello() -> StreamOpen {
    StreamOpen::Sync(AgentHello {
        device: "pi-1".into(),
        facts: DeviceFacts {
            arch: "amd64".into(),
            os: "linux".into(),
            agent_version: "0.1.0".into(),
            capacity: Capacity { cpu: CpuMillis(2000), memory: Bytes(1 << 30) },
            hostname: "pi".into(),
        },
        held_revision: 7,
        boot_id: "b".into(),
    })
}

#[test]
fn golden_sync_hello_frame() {
    let open = hello();
    let frame = wire::encode_frame(&open).unwrap();
    assert_eq!(hex::encode(&frame), HELLO_V3);
    assert_eq!(wire::decode_frame::<StreamOpen>(&frame).unwrap(), open);
    // A version-2 agent's hello still decodes, and is answered at version 2.
    assert_eq!(wire::decode_frame::<StreamOpen>(&hex::decode(HELLO_V2).unwrap()).unwrap(), open);
    assert_eq!(hex::encode(wire::encode_frame_for(2, &open).unwrap()), HELLO_V2);
}

#[test]
fn golden_renewal_frames() {
    let ask = HubFrame::Renew { reason: "due".into() };
    let frame = wire::encode_frame(&ask).unwrap();
    assert_eq!(hex::encode(&frame), "0600000003 05 03647565".replace(' ', ""));
    assert_eq!(wire::decode_frame::<HubFrame>(&frame).unwrap(), ask);
    let open = StreamOpen::Renew(wire::RenewRequest { csr_der: vec![0xaa, 0xbb] });
    let frame = wire::encode_frame(&open).unwrap();
    assert_eq!(hex::encode(&frame), "0500000003 03 02aabb".replace(' ', ""));
    assert_eq!(wire::decode_frame::<StreamOpen>(&frame).unwrap(), open);
    let reply =
        wire::RenewReply::Renewed { cert_chain_der: vec![vec![1]], trusted_ca_der: vec![vec![2], vec![3]] };
    let frame = wire::encode_frame(&reply).unwrap();
    assert_eq!(hex::encode(&frame), "0a00000003 00 010101 02010201 03".replace(' ', ""));
    assert_eq!(wire::decode_frame::<wire::RenewReply>(&frame).unwrap(), reply);
    let pending = wire::RenewReply::Pending { retry_after_ms: 1000, message: "wait".into() };
    let frame = wire::encode_frame(&pending).unwrap();
    assert_eq!(hex::encode(&frame), "0900000003 01 e807 0477616974".replace(' ', ""));
}

#[test]
fn golden_frames_of_the_previous_version_still_decode_and_are_answered_in_kind() {
    let v1 = hex::decode(HELLO_V1).unwrap();
    assert_eq!(wire::decode_frame::<StreamOpen>(&v1).unwrap(), hello());
    assert_eq!(wire::decode_frame_body_versioned::<StreamOpen>(&v1[4..]).unwrap().0, 1);
    assert_eq!(hex::encode(wire::encode_frame_for(1, &hello()).unwrap()), HELLO_V1);
    let desired = HubFrame::Desired(manifest());
    assert_eq!(hex::encode(wire::encode_frame_for(1, &desired).unwrap()), DESIRED_V1);
    assert_eq!(wire::decode_frame::<HubFrame>(&hex::decode(DESIRED_V1).unwrap()).unwrap(), desired);
    // Version 4 is from the future: a clear error, not garbage.
    let mut v4 = v1.clone();
    v4[4] = 4;
    let err = wire::decode_frame::<StreamOpen>(&v4).unwrap_err().to_string();
    assert!(err.contains("unsupported format version 4"), "{err}");
}

#[test]
fn golden_retry_after_frame() {
    let f = HubFrame::RetryAfter { after_ms: 1500, message: "busy".into() };
    let frame = wire::encode_frame(&f).unwrap();
    assert_eq!(hex::encode(&frame), "0900000003 04 dc0b 0462757379".replace(' ', ""));
    assert_eq!(wire::decode_frame::<HubFrame>(&frame).unwrap(), f);
}

#[test]
fn golden_desired_manifest_frame() {
    let frame = wire::encode_frame(&HubFrame::Desired(manifest())).unwrap();
    assert_eq!(hex::encode(&frame), DESIRED_V3);
    assert_eq!(hex::encode(wire::encode_frame_for(2, &HubFrame::Desired(manifest())).unwrap()), DESIRED_V2);
}

#[test]
fn golden_store_command() {
    let site = Site::new(
        ObjectMeta::named("store-12"),
        SiteSpec { display_name: "Store 12".into(), location: String::new() },
    );
    let cmd = StoreCommand::put(Object::Site(site), Precondition::MustNotExist);
    let bytes = cmd.encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        "0400000f666c6f74696c6c612e6465762f76310453697465 0873746f72652d3132 0000 00 00 00 00 00 0853746f7265203132 00 0000 01"
            .replace(' ', "")
    );
    assert_eq!(StoreCommand::decode(&bytes).unwrap(), cmd);
    // The same command as a version-3 hub wrote it.
    let v3 = "0300000f666c6f74696c6c612e6465762f76310453697465 0873746f72652d3132 0000 00 00 00 00 00 0853746f7265203132 00 0000 01"
        .replace(' ', "");
    assert_eq!(StoreCommand::decode(&hex::decode(v3).unwrap()).unwrap(), cmd);
    // The same command as a version-2 hub wrote it.
    let v2 = "0200000f666c6f74696c6c612e6465762f76310453697465 0873746f72652d3132 0000 00 00 00 00 00 0853746f7265203132 00 0000 01"
        .replace(' ', "");
    assert_eq!(StoreCommand::decode(&hex::decode(v2).unwrap()).unwrap(), cmd);
    // The same command as a version-1 hub wrote it.
    let v1 = "0100000f666c6f74696c6c612e6465762f76310453697465 0873746f72652d3132 0000 00 00 00 00 00 0853746f7265203132 00 0000 01"
        .replace(' ', "");
    assert_eq!(StoreCommand::decode(&hex::decode(v1).unwrap()).unwrap(), cmd);
}

// Written by the first-light hub (store format 1), before taints, tolerations and
// affinity existed: an App, a Device, and a Batch of both as a Raft log entry.
const APP_V1: &str = "01020f666c6f74696c6c612e6465762f7631034170700377656200000005000000000001027331010201016305696d673a31000000000000000000000000000000000000";
const DEVICE_V1: &str = "01010f666c6f74696c6c612e6465762f763106446576696365027069000000000000000273310101000000000000000000000000";
const BATCH_V1: &str = "01020200020f666c6f74696c6c612e6465762f7631034170700377656200000005000000000001027331010201016305696d673a310000000000000000000000000000000000000100010f666c6f74696c6c612e6465762f7631064465766963650270690000000000000002733101010000000000000000000000000303";

fn v1_app() -> App {
    let mut app = App::new(
        ObjectMeta::named("web"),
        AppSpec {
            placement: Placement { sites: vec!["s1".into()], max_per_site: Some(2), ..Default::default() },
            containers: vec![ContainerSpec { name: "c".into(), image: "img:1".into(), ..Default::default() }],
            ..Default::default()
        },
    );
    app.metadata.revision = 5;
    app
}

fn v1_device() -> Device {
    let mut dev = Device::new(
        ObjectMeta::named("pi"),
        DeviceSpec { site: "s1".into(), unschedulable: true, ..Default::default() },
    );
    dev.status.phase = DevicePhase::Online;
    dev
}

#[test]
fn store_records_of_the_previous_format_still_decode() {
    let app = Object::decode(&hex::decode(APP_V1).unwrap()).unwrap();
    assert_eq!(app, Object::App(v1_app()));
    let dev = Object::decode(&hex::decode(DEVICE_V1).unwrap()).unwrap();
    assert_eq!(dev, Object::Device(v1_device()));
    let batch = StoreCommand::decode(&hex::decode(BATCH_V1).unwrap()).unwrap();
    assert_eq!(
        batch,
        StoreCommand::Batch(vec![
            StoreCommand::put(Object::App(v1_app()), Precondition::MustNotExist),
            StoreCommand::put(Object::Device(v1_device()), Precondition::RevisionIs(3)),
        ])
    );
    // Written again, they are the current format, and read back the same.
    let again = Object::App(v1_app()).encode().unwrap();
    assert_eq!(again[0], shared_proto::store::STORE_FORMAT_VERSION as u8);
    assert_eq!(Object::decode(&again).unwrap(), Object::App(v1_app()));
}

// Written by a format-2 hub: a device with a taint, before certificates were recorded.
const DEVICE_V2: &str = "02010f666c6f74696c6c612e6465762f763106446576696365027069000000000000000273310101 09646564696361746564 03706f73 01 01000000000000000000000000";

fn v2_device() -> Device {
    let mut dev = v1_device();
    dev.spec.taints =
        vec![Taint { key: "dedicated".into(), value: "pos".into(), effect: TaintEffect::NoExecute }];
    dev
}

#[test]
fn format_two_records_still_decode() {
    let bytes = hex::decode(DEVICE_V2.replace(' ', "")).unwrap();
    assert_eq!(Object::decode(&bytes).unwrap(), Object::Device(v2_device()));
}

fn v3_device() -> Device {
    let mut dev = v2_device();
    dev.status.certificates = vec![DeviceCertificate {
        serial: "1f".into(),
        key_sha256: "ab".into(),
        not_after: shared_proto::Timestamp(1000),
        issued_at: Timestamp(0),
        ca: String::new(),
    }];
    dev.status.enrolled_with = "tok".into();
    dev
}

#[test]
fn format_three_records_still_decode() {
    // Written by a format-3 hub, before certificates recorded their issuer.
    let v3 = "03010f666c6f74696c6c612e6465762f763106446576696365027069000000000000000273310101 09646564696361746564 03706f73 01 01000000000000000000000000 01 023166 026162 e807 03746f6b 00";
    assert_eq!(
        Object::decode(&hex::decode(v3.replace(' ', "")).unwrap()).unwrap(),
        Object::Device(v3_device())
    );
}

#[test]
fn golden_format_four_records() {
    let mut dev = v3_device();
    dev.status.phase = DevicePhase::Quarantined;
    dev.status.certificates[0].issued_at = Timestamp(500);
    dev.status.certificates[0].ca = "cc".into();
    dev.status.quarantine = Some(Box::new(shared_proto::Quarantine {
        since: Timestamp(2000),
        expired_serial: "1f".into(),
        key_sha256: "de".into(),
        from: "a".into(),
        approved: false,
    }));
    let bytes = Object::Device(dev.clone()).encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        "04010f666c6f74696c6c612e6465762f763106446576696365027069000000000000000273310101 09646564696361746564 03706f73 01 04000000000000000000000000 01 023166 026162 e807 f403 026363 03746f6b 00 01 d00f 023166 026465 0161 00"
            .replace(' ', "")
    );
    assert_eq!(Object::decode(&bytes).unwrap(), Object::Device(dev));
    let rotation = Object::CaRotation(shared_proto::store::CaRotationRecord {
        next: None,
        previous: vec![vec![7]],
        changed_at: Timestamp(3),
    });
    let bytes = rotation.encode().unwrap();
    assert_eq!(hex::encode(&bytes), "04090001010703");
    assert_eq!(Object::decode(&bytes).unwrap(), rotation);
    let previous = Object::PreviousImages(shared_proto::store::PreviousImagesRecord {
        device: "pi".into(),
        revision: 7,
        image_digests: vec!["sha256:ab".into()],
    });
    let bytes = previous.encode().unwrap();
    assert_eq!(hex::encode(&bytes), "040a 027069 07 01 097368613235363a6162".replace(' ', ""));
    assert_eq!(Object::decode(&bytes).unwrap(), previous);
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let frame = wire::encode_frame(&AgentFrame::Heartbeat { seq: 9 }).unwrap();
    for cut in 0..frame.len() {
        assert!(wire::decode_frame::<AgentFrame>(&frame[..cut]).is_err());
    }
    let mut oversized = frame.clone();
    oversized[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(wire::decode_frame::<AgentFrame>(&oversized), Err(wire::FrameError::TooLarge(_))));
    let mut future = frame.clone();
    future[4] = 99;
    assert!(wire::decode_frame::<AgentFrame>(&future).is_err());
}

fn arb_container() -> impl Strategy<Value = ObservedContainer> {
    (
        "[a-z]{1,8}",
        any::<u64>(),
        "[a-z]{1,8}",
        any::<Option<i32>>(),
        any::<u32>(),
        any::<Option<u64>>(),
        ".{0,20}",
    )
        .prop_map(|(app, generation, name, exit_code, restarts, started, reason)| ObservedContainer {
            id: format!("{app}_{name}"),
            app,
            generation,
            name,
            phase: ContainerPhase::Running,
            exit_code,
            restarts,
            started_at: started.map(Timestamp),
            reason,
        })
}

proptest! {
    #[test]
    fn agent_reports_round_trip(held in any::<u64>(), containers in prop::collection::vec(arb_container(), 0..8)) {
        let msg = AgentFrame::Report(AgentReport { held_revision: held, containers });
        let frame = wire::encode_frame(&msg).unwrap();
        prop_assert_eq!(wire::decode_frame::<AgentFrame>(&frame).unwrap(), msg);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = wire::decode_frame::<StreamOpen>(&bytes);
        let _ = wire::decode_frame::<HubFrame>(&bytes);
        let _ = StoreCommand::decode(&bytes);
    }
}

fn token_record(device_labels: LabelPolicy) -> EnrolmentTokenRecord {
    EnrolmentTokenRecord {
        id: "ab12".into(),
        secret_sha256: "ff".into(),
        created_at: Timestamp(1000),
        expires_at: Timestamp(2000),
        max_uses: Some(3),
        n_used: 1,
        labels: std::collections::BTreeMap::from([("role".to_string(), "pos".to_string())]),
        site: "s1".into(),
        description: "d".into(),
        device_labels,
    }
}

#[test]
fn enrolment_tokens_of_format_two_let_devices_pick_any_label() {
    // Written by a format-2 hub, before label policies.
    let v2 = hex::decode("02050461623132026666e807d00f0103010104726f6c6503706f730273310164").unwrap();
    assert_eq!(Object::decode(&v2).unwrap(), Object::EnrolmentToken(token_record(LabelPolicy::Any)));
    let v3 = hex::decode("03050461623132026666e807d00f0103010104726f6c6503706f73027331016400").unwrap();
    assert_eq!(Object::decode(&v3).unwrap(), Object::EnrolmentToken(token_record(LabelPolicy::TokenOnly)));
    let v4 = Object::EnrolmentToken(token_record(LabelPolicy::TokenOnly)).encode().unwrap();
    assert_eq!(hex::encode(&v4), "04050461623132026666e807d00f0103010104726f6c6503706f73027331016400");
}
