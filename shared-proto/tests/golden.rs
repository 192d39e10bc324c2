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
use shared_proto::wire::{
    self, AgentFrame, AgentHello, AgentReport, DeviceFacts, HubFrame, StreamOpen, WireFrame,
};
use shared_proto::{
    App, AppSpec, Bytes, Capacity, ContainerSpec, CpuMillis, Device, DeviceCertificate, DevicePhase,
    DeviceSpec, NetworkMode, ObjectMeta, Placement, PortSpec, Protocol, RestartPolicy, Site, SiteSpec, Taint,
    TaintEffect, Timestamp,
};
use shared_proto::{PersistentVolume, Probe, TcpSocketAction, VolumeMount, VolumeSpec};

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
                limits: ContainerLimits {
                    cpu_millis: Some(500),
                    memory_bytes: Some(1 << 20),
                    pids: None,
                    cpu_shares: None,
                },
                working_dir: String::new(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        configs: vec![],
    }
}

/// A manifest using what manifest shape 2 (protocol 4) added.
fn rich_manifest() -> DesiredManifest {
    let mut m = manifest();
    let app = &mut m.apps[0];
    app.grace_period_seconds = 30;
    app.volumes =
        vec![VolumeSpec { name: "data".into(), persistent: Some(PersistentVolume {}), ..Default::default() }];
    app.init_containers = vec![DesiredContainer {
        name: "setup".into(),
        image: "demo:1".into(),
        image_digest: "sha256:ab".into(),
        ..Default::default()
    }];
    let c = &mut app.containers[0];
    c.volume_mounts = vec![VolumeMount { name: "data".into(), mount_path: "/data".into(), read_only: false }];
    c.readiness_probe = Some(Probe { tcp_socket: Some(TcpSocketAction { port: 80 }), ..Default::default() });
    c.limits.cpu_shares = Some(512);
    m.configs = vec![shared_proto::manifest::DesiredConfig {
        name: "cfg".into(),
        secret: false,
        digest: "sha256:cd".into(),
        data: vec![("k".into(), b"v".to_vec())],
    }];
    m
}

const HELLO_V1: &str = "2600000001010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";
const HELLO_V2: &str = "2600000002010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";
const DESIRED_V1: &str = "4800000001010470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f403018080400000";
const HELLO_V3: &str = "2600000003010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";
const DESIRED_V2: &str = "4800000002010470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f403018080400000";
const DESIRED_V3: &str = "4800000003010470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f403018080400000";
const HELLO_V4: &str = "2600000004010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";
const DESIRED_V4: &str = "c000000004010470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f40301808040000180040000010464617461052f646174610000000100000150000a010103000000000000000000010573657475700664656d6f3a31097368613235363a6162000000000000000000000000000000000000000000000001046461746101000000001e0000010363666700097368613235363a636401016b0176";

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

/// A frame's hex with its version byte (the fifth) replaced.
fn at_version(hex: &str, version: u8) -> String {
    format!("{}{version:02x}{}", &hex[..8], &hex[10..])
}

#[test]
fn golden_attach_frames() {
    let ask = HubFrame::Attach(wire::AttachRequest {
        id: 7,
        app: "a".into(),
        container: "c".into(),
        what: wire::AttachKind::Exec(wire::ExecRequest {
            command: vec!["ls".into()],
            tty: true,
            stdin: false,
            cols: 80,
            rows: 24,
        }),
    });
    let frame = wire::encode_frame(&ask).unwrap();
    assert_eq!(hex::encode(&frame), "1000000006 07 07 0161 0163 01 01 026c73 01 00 50 18".replace(' ', ""));
    assert_eq!(wire::decode_frame::<HubFrame>(&frame).unwrap(), ask);
    let open = StreamOpen::Attach(wire::AttachOpen { id: 7 });
    assert_eq!(hex::encode(wire::encode_frame(&open).unwrap()), "0300000006 04 07".replace(' ', ""));
    let out = wire::AttachFrame::Exit { code: -1 };
    assert_eq!(hex::encode(wire::encode_frame(&out).unwrap()), "0300000006 03 01".replace(' ', ""));
    // Bounds the agent checks before it runs anything.
    let HubFrame::Attach(mut req) = ask else { panic!() };
    assert_eq!(req.problem(), None);
    let wire::AttachKind::Exec(e) = &mut req.what else { panic!() };
    e.command = vec![];
    assert!(req.problem().is_some());
    let wire::AttachKind::Exec(e) = &mut req.what else { panic!() };
    e.command = vec!["a\0b".into()];
    assert!(req.problem().unwrap().contains("NUL"));
}

#[test]
fn golden_sync_hello_frame() {
    let open = hello();
    let frame = wire::encode_frame(&open).unwrap();
    assert_eq!(hex::encode(&frame), at_version(HELLO_V4, 6), "versions 5 and 6 only appended variants");
    assert_eq!(hex::encode(wire::encode_frame_for(5, &open).unwrap()), at_version(HELLO_V4, 5));
    assert_eq!(
        wire::decode_frame::<StreamOpen>(&hex::decode(at_version(HELLO_V4, 5)).unwrap()).unwrap(),
        open
    );
    assert_eq!(wire::decode_frame::<StreamOpen>(&frame).unwrap(), open);
    assert_eq!(wire::decode_frame::<StreamOpen>(&hex::decode(HELLO_V4).unwrap()).unwrap(), open);
    assert_eq!(hex::encode(wire::encode_frame_for(4, &open).unwrap()), HELLO_V4);
    // Older agents' hellos still decode, and are answered in their version.
    for (version, golden) in [(2, HELLO_V2), (3, HELLO_V3)] {
        assert_eq!(wire::decode_frame::<StreamOpen>(&hex::decode(golden).unwrap()).unwrap(), open);
        assert_eq!(hex::encode(wire::encode_frame_for(version, &open).unwrap()), golden);
    }
}

#[test]
fn golden_renewal_frames() {
    let ask = HubFrame::Renew { reason: "due".into() };
    let frame = wire::encode_frame(&ask).unwrap();
    assert_eq!(hex::encode(&frame), "0600000006 05 03647565".replace(' ', ""));
    assert_eq!(wire::decode_frame::<HubFrame>(&frame).unwrap(), ask);
    let open = StreamOpen::Renew(wire::RenewRequest { csr_der: vec![0xaa, 0xbb] });
    let frame = wire::encode_frame(&open).unwrap();
    assert_eq!(hex::encode(&frame), "0500000006 03 02aabb".replace(' ', ""));
    assert_eq!(wire::decode_frame::<StreamOpen>(&frame).unwrap(), open);
    let reply =
        wire::RenewReply::Renewed { cert_chain_der: vec![vec![1]], trusted_ca_der: vec![vec![2], vec![3]] };
    let frame = wire::encode_frame(&reply).unwrap();
    assert_eq!(hex::encode(&frame), "0a00000006 00 010101 02010201 03".replace(' ', ""));
    assert_eq!(wire::decode_frame::<wire::RenewReply>(&frame).unwrap(), reply);
    let pending = wire::RenewReply::Pending { retry_after_ms: 1000, message: "wait".into() };
    let frame = wire::encode_frame(&pending).unwrap();
    assert_eq!(hex::encode(&frame), "0900000006 01 e807 0477616974".replace(' ', ""));
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
    // Version 7 is from the future: a clear error, not garbage.
    let mut v7 = v1.clone();
    v7[4] = 7;
    let err = wire::decode_frame::<StreamOpen>(&v7).unwrap_err().to_string();
    assert!(err.contains("unsupported format version 7"), "{err}");
}

#[test]
fn golden_retry_after_frame() {
    let f = HubFrame::RetryAfter { after_ms: 1500, message: "busy".into() };
    let frame = wire::encode_frame(&f).unwrap();
    assert_eq!(hex::encode(&frame), "0900000006 04 dc0b 0462757379".replace(' ', ""));
    assert_eq!(wire::decode_frame::<HubFrame>(&frame).unwrap(), f);
}

#[test]
fn golden_desired_manifest_frame() {
    let rich = HubFrame::Desired(rich_manifest());
    let frame = wire::encode_frame(&rich).unwrap();
    assert_eq!(hex::encode(&frame), at_version(DESIRED_V4, 6));
    assert_eq!(wire::decode_frame::<HubFrame>(&frame).unwrap(), rich);
    assert_eq!(hex::encode(wire::encode_frame_for(4, &rich).unwrap()), DESIRED_V4);
    // An older agent gets shape 1: what it can run of the app, byte for byte what an
    // older hub sent.
    assert_eq!(hex::encode(wire::encode_frame_for(3, &rich).unwrap()), DESIRED_V3);
    assert_eq!(hex::encode(wire::encode_frame_for(2, &rich).unwrap()), DESIRED_V2);
    assert_eq!(
        wire::decode_frame::<HubFrame>(&hex::decode(DESIRED_V3).unwrap()).unwrap(),
        HubFrame::Desired(manifest())
    );
    assert_eq!(rich.for_version(3), HubFrame::Desired(manifest()));
    // An isolated app reaches an older agent as a private namespace.
    let mut isolated = manifest();
    isolated.apps[0].network = NetworkMode::Isolated;
    let HubFrame::Desired(seen) = HubFrame::Desired(isolated).for_version(3) else { panic!() };
    assert_eq!(seen.apps[0].network, NetworkMode::None);
}

#[test]
fn reports_reach_an_older_hub_in_its_shape() {
    let c = ObservedContainer {
        app: "web".into(),
        generation: 1,
        name: "a".into(),
        id: "web_a_1".into(),
        phase: ContainerPhase::Running,
        ready: true,
        ..Default::default()
    };
    let report = AgentFrame::Report(AgentReport { held_revision: 3, containers: vec![c.clone()] });
    let v3 = wire::encode_frame_for(3, &report).unwrap();
    assert_eq!(
        hex::encode(&v3),
        "1800000003 00 03 01 03776562 01 0161 07776562 5f615f31 01 00 00 00 00".replace(' ', "")
    );
    assert_eq!(wire::decode_frame::<AgentFrame>(&v3).unwrap(), report, "running reads back as ready");
    let v4 = wire::encode_frame(&report).unwrap();
    assert_eq!(wire::decode_frame::<AgentFrame>(&v4).unwrap(), report);
    assert_eq!(v4.len(), v3.len() + 2, "ready and init");
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
        "0800000f666c6f74696c6c612e6465762f76310453697465 0873746f72652d3132 00 0000 00 00 00 00 00 0853746f7265203132 00 0000 01"
            .replace(' ', "")
    );
    assert_eq!(StoreCommand::decode(&bytes).unwrap(), cmd);
    // The same command as a version-7 hub wrote it: no namespace.
    let v7 = "0700000f666c6f74696c6c612e6465762f76310453697465 0873746f72652d3132 0000 00 00 00 00 00 0853746f7265203132 00 0000 01"
        .replace(' ', "");
    assert_eq!(StoreCommand::decode(&hex::decode(v7).unwrap()).unwrap(), cmd);
    // The same command as a version-4 hub wrote it.
    let v4 = "0400000f666c6f74696c6c612e6465762f76310453697465 0873746f72652d3132 0000 00 00 00 00 00 0853746f7265203132 00 0000 01"
        .replace(' ', "");
    assert_eq!(StoreCommand::decode(&hex::decode(v4).unwrap()).unwrap(), cmd);
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
        // Apps written before namespaces read back in the default one.
        ObjectMeta::namespaced("default", "web"),
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
fn format_four_records_still_decode() {
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
    let bytes = hex::decode("04010f666c6f74696c6c612e6465762f763106446576696365027069000000000000000273310101 09646564696361746564 03706f73 01 04000000000000000000000000 01 023166 026162 e807 f403 026363 03746f6b 00 01 d00f 023166 026465 0161 00"
            .replace(' ', "")).unwrap();
    assert_eq!(Object::decode(&bytes).unwrap(), Object::Device(dev));
    let rotation = Object::CaRotation(shared_proto::store::CaRotationRecord {
        next: None,
        previous: vec![vec![7]],
        changed_at: Timestamp(3),
    });
    assert_eq!(Object::decode(&hex::decode("04090001010703").unwrap()).unwrap(), rotation);
    assert_eq!(hex::encode(rotation.encode().unwrap()), "08090001010703", "unchanged but for the version");
    let previous = Object::PreviousImages(shared_proto::store::PreviousImagesRecord {
        device: "pi".into(),
        revision: 7,
        image_digests: vec!["sha256:ab".into()],
    });
    let bytes = hex::decode("040a 027069 07 01 097368613235363a6162".replace(' ', "")).unwrap();
    assert_eq!(Object::decode(&bytes).unwrap(), previous);
}

#[test]
fn golden_format_five_records() {
    // A format-4 app and manifest read with the new fields at their defaults.
    let app4 = hex::decode(APP_V4.replace(' ', "")).unwrap();
    let mut app = v1_app();
    app.spec.containers[0].env =
        vec![shared_proto::EnvVar { name: "A".into(), value: "1".into(), value_from: None }];
    assert_eq!(Object::decode(&app4).unwrap(), Object::App(app.clone()));
    let manifest4 = hex::decode(MANIFEST_V4.replace(' ', "")).unwrap();
    assert_eq!(Object::decode(&manifest4).unwrap(), Object::Manifest(manifest()));
    // Format 5 pins the new fields.
    app.spec.termination_grace_period_seconds = Some(20);
    app.spec.containers[0].liveness_probe = Some(Probe {
        http_get: Some(shared_proto::HttpGetAction { path: "/h".into(), port: 8, headers: vec![] }),
        ..Default::default()
    });
    app.spec.containers[0].env[0].value_from = Some(shared_proto::EnvSource {
        secret: Some(shared_proto::KeyRef { name: "s".into(), key: "k".into() }),
        config: None,
    });
    let bytes = Object::App(app.clone()).encode().unwrap();
    assert_eq!(
        hex::encode(&bytes),
        format!("08{}", &APP_V5.replace(' ', "")[2..])
            .replacen("03776562", "03776562 0764656661756c74", 1)
            .replace(' ', ""),
        "formats 6 and 7 add kinds only, format 8 the namespace"
    );
    assert_eq!(Object::decode(&bytes).unwrap(), Object::App(app.clone()));
    assert_eq!(Object::decode(&hex::decode(APP_V5).unwrap()).unwrap(), Object::App(app));
    let bytes = Object::Manifest(rich_manifest()).encode().unwrap();
    assert_eq!(Object::decode(&bytes).unwrap(), Object::Manifest(rich_manifest()));
}

#[test]
fn golden_format_six_records() {
    let mut spec = shared_proto::ConfigSpec::default();
    spec.data.insert("k".into(), "v".into());
    let config =
        Object::Config(shared_proto::Config::new(shared_proto::ObjectMeta::namespaced("default", "c"), spec));
    let bytes = config.encode().unwrap();
    assert_eq!(hex::encode(&bytes), with_default_namespace(&at_version_byte(CONFIG_V6, 8), "0163"));
    assert_eq!(Object::decode(&bytes).unwrap(), config);
    assert_eq!(Object::decode(&hex::decode(CONFIG_V6).unwrap()).unwrap(), config);
    let secret = Object::Secret(shared_proto::store::SealedSecret {
        metadata: shared_proto::ObjectMeta::namespaced("default", "s"),
        keys: vec!["k".into()],
        digest: "d".into(),
        key_id: "i".into(),
        sealed: vec![1, 2],
    });
    let bytes = secret.encode().unwrap();
    assert_eq!(hex::encode(&bytes), with_default_namespace(&at_version_byte(SECRET_V6, 8), "0173"));
    assert_eq!(Object::decode(&bytes).unwrap(), secret);
    assert_eq!(Object::decode(&hex::decode(SECRET_V6).unwrap()).unwrap(), secret);
}

/// A record's hex with its format byte (the first) replaced.
fn at_version_byte(hex: &str, version: u8) -> String {
    format!("{version:02x}{}", &hex[2..])
}

/// A record's hex with the namespace `default` after its name (`name_hex`, the first
/// occurrence), as format 8 writes it.
fn with_default_namespace(hex: &str, name_hex: &str) -> String {
    hex.replacen(name_hex, &format!("{name_hex}0764656661756c74"), 1)
}

#[test]
fn golden_format_eight_records() {
    // An app in a namespace: its store name is qualified, its metadata says both.
    let app = Object::App(App::new(ObjectMeta::namespaced("pos", "web"), AppSpec::default()));
    assert_eq!(app.name(), "web.pos");
    assert_eq!(app.key(), "app/web.pos");
    let bytes = app.encode().unwrap();
    assert_eq!(&hex::encode(&bytes)[..48], "08020f666c6f74696c6c612e6465762f7631034170700377");
    assert!(
        hex::encode(&bytes).contains("03776562 03706f73".replace(' ', "").as_str()),
        "name, then namespace"
    );
    assert_eq!(Object::decode(&bytes).unwrap(), app);
    // The default namespace keeps the bare name, so keys written before namespaces stay.
    let app = Object::App(App::new(ObjectMeta::namespaced("default", "web"), AppSpec::default()));
    assert_eq!(app.key(), "app/web");
    // A format-7 API token reads back scoped to every namespace; format 8 names them.
    let token = shared_proto::store::ApiTokenRecord {
        id: "t1".into(),
        secret_sha256: "ff".into(),
        role: shared_proto::store::Role::Operator,
        created_at: Timestamp(5),
        description: String::new(),
        expires_at: None,
        sites: vec!["s1".into()],
        namespaces: vec![],
    };
    let v7 = hex::decode("0706 027431 026666 01 05 00 00 01 027331".replace(' ', "")).unwrap();
    assert_eq!(Object::decode(&v7).unwrap(), Object::ApiToken(token.clone()));
    let scoped = shared_proto::store::ApiTokenRecord { namespaces: vec!["pos".into()], ..token };
    let bytes = Object::ApiToken(scoped.clone()).encode().unwrap();
    assert_eq!(hex::encode(&bytes), "0806 027431 026666 01 05 00 00 01 027331 01 03706f73".replace(' ', ""));
    assert_eq!(Object::decode(&bytes).unwrap(), Object::ApiToken(scoped));
    // Cluster-wide kinds never carry a namespace, whatever a record says.
    let mut site = Site::new(ObjectMeta::namespaced("pos", "s1"), SiteSpec::default());
    let bytes = Object::Site(site.clone()).encode().unwrap();
    site.metadata.namespace.clear();
    assert_eq!(Object::decode(&bytes).unwrap(), Object::Site(site));
}

#[test]
fn golden_format_seven_records_and_hubs_frame() {
    let endpoint = wire::HubEndpoint { quic: "h:1".into(), tcp: "h:2".into() };
    let hub = Object::Hub(shared_proto::store::HubRecord {
        name: "hub-1".into(),
        node_id: 1,
        agents: endpoint.clone(),
        api: String::new(),
    });
    let bytes = hub.encode().unwrap();
    assert_eq!(hex::encode(&bytes), "08 0d 056875622d31 01 03683a31 03683a32 00".replace(' ', ""));
    let v7 = hex::decode("07 0d 056875622d31 01 03683a31 03683a32 00".replace(' ', "")).unwrap();
    assert_eq!(Object::decode(&v7).unwrap(), hub);
    assert_eq!(Object::decode(&bytes).unwrap(), hub);
    let hubs = HubFrame::Hubs(vec![endpoint]);
    let frame = wire::encode_frame(&hubs).unwrap();
    assert_eq!(hex::encode(&frame), "0b00000006 09 01 03683a31 03683a32".replace(' ', ""));
    assert_eq!(wire::decode_frame::<HubFrame>(&frame).unwrap(), hubs);
    assert!(wire::hubs_problem(&[wire::HubEndpoint { quic: "h".into(), tcp: "h:2".into() }]).is_some());
    assert!(wire::hubs_problem(&[wire::HubEndpoint { quic: "h:99999".into(), tcp: "h:2".into() }]).is_some());
    assert!(wire::hubs_problem(&vec![wire::HubEndpoint::default(); wire::MAX_HUBS + 1]).is_some());
}

const CONFIG_V6: &str =
    "060b0f666c6f74696c6c612e6465762f763106436f6e66696701630000000000000001016b0176000000";
const SECRET_V6: &str = "060c01730000000000000001016b01640169020102";
const APP_V4: &str = "04020f666c6f74696c6c612e6465762f7631034170700377656200000005000000000001027331010200000001016305696d673a3100000101410131000000000000000000000000000000";
const MANIFEST_V4: &str = "04040470692d312a0103776562030000010568747470640664656d6f3a31097368613235363a616201062f6874747064000104504f5254023830010050000001f403018080400000";
const APP_V5: &str = "05020f666c6f74696c6c612e6465762f7631034170700377656200000005000000000001027331010200000001016305696d673a31000001014101310100010173016b000000000000000000010001022f68080000000a010103000000000000000000000000000001140000000000000000";

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
            ready: restarts % 2 == 0,
            init: restarts % 3 == 0,
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
    let v4 = hex::decode("04050461623132026666e807d00f0103010104726f6c6503706f73027331016400").unwrap();
    assert_eq!(Object::decode(&v4).unwrap(), Object::EnrolmentToken(token_record(LabelPolicy::TokenOnly)));
    let v5 = hex::decode("05050461623132026666e807d00f0103010104726f6c6503706f73027331016400").unwrap();
    assert_eq!(Object::decode(&v5).unwrap(), Object::EnrolmentToken(token_record(LabelPolicy::TokenOnly)));
    let v6 = hex::decode("06050461623132026666e807d00f0103010104726f6c6503706f73027331016400").unwrap();
    assert_eq!(Object::decode(&v6).unwrap(), Object::EnrolmentToken(token_record(LabelPolicy::TokenOnly)));
    let v7 = hex::decode("07050461623132026666e807d00f0103010104726f6c6503706f73027331016400").unwrap();
    assert_eq!(Object::decode(&v7).unwrap(), Object::EnrolmentToken(token_record(LabelPolicy::TokenOnly)));
    let v8 = Object::EnrolmentToken(token_record(LabelPolicy::TokenOnly)).encode().unwrap();
    assert_eq!(hex::encode(&v8), "08050461623132026666e807d00f0103010104726f6c6503706f73027331016400");
}

#[test]
fn golden_usage_frame() {
    let usage = AgentFrame::Usage(wire::UsageReport {
        containers: vec![wire::ContainerUsage {
            app: "a".into(),
            name: "b".into(),
            cpu_millis: 250,
            memory_bytes: 1024,
        }],
    });
    let frame = wire::encode_frame(&usage).unwrap();
    assert_eq!(hex::encode(&frame), "0b00000006 02 01 0161 0162 fa01 8008".replace(' ', ""));
    assert_eq!(wire::decode_frame::<AgentFrame>(&frame).unwrap(), usage);
    // An older hub would read it as proof of life (the agent sends it none).
    assert_eq!(usage.for_version(3), AgentFrame::Heartbeat { seq: 0 });
}
