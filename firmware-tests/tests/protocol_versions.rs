//! An agent of the previous protocol version against today's hub: the device opens
//! its sync stream with the version-1 hello exactly as a first-light agent wrote it
//! (the golden bytes pinned in `shared-proto/tests/golden.rs`), reads every answer as
//! version 1, reports in version 1, and the hub serves it a change and records it.

use firmware_tests::{Agent, Hub, busybox_image, require_root, wait_until};
use provisioning::device_key::DeviceKey;
use rustls_pki_types::CertificateDer;
use shared_proto::wire::{self, AgentFrame, AgentReport, FrameDecoder, HubFrame};
use std::sync::Arc;
use std::time::Duration;

/// `StreamOpen::Sync(AgentHello { device: "pi-1", held_revision: 7, .. })`, as a
/// version-1 agent wrote it.
const HELLO_V1: &str = "2600000001010470692d3105616d643634056c696e757805302e312e30d00f8080808004027069070162";

/// Reads the next whole frame: its version and what it says.
async fn next_frame(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> (u32, HubFrame) {
    loop {
        if let Some(body) = decoder.next_body().expect("well-framed") {
            return wire::decode_frame_body_versioned::<HubFrame>(&body)
                .expect("a frame a version-1 agent reads");
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), recv.read(&mut buf))
            .await
            .expect("the hub answers")
            .expect("the stream stays open")
            .expect("the hub ended the stream");
        decoder.push(&buf[..n]);
    }
}

#[test]
fn a_version_one_agent_syncs_with_this_hub() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let image = busybox_image(dir.path(), "busybox-test:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    // A real agent enrols "pi-1"; the old agent then speaks with its credentials.
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-1", &hub.quic, &token, &[("role", "old")]);
    agent.start();
    wait_until("the device to enrol", Duration::from_secs(60), || hub.get("devices", Some("pi-1")));
    agent.kill();
    let key =
        DeviceKey::from_pem(&std::fs::read_to_string(agent.state_dir.join("device.key")).unwrap()).unwrap();
    let chain: Vec<CertificateDer<'static>> = provisioning::pem::decode_certs(
        &std::fs::read_to_string(agent.state_dir.join("device.crt")).unwrap(),
    )
    .unwrap();
    let ctx: shared_proto::config::CliContext =
        serde_json::from_slice(&std::fs::read(&hub.context).unwrap()).unwrap();
    let fleet_ca = provisioning::pem::decode_cert(&ctx.ca_cert_pem).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tls =
            provisioning::tls::device_quic_client_config(chain, key.private_key_der(), &fleet_ca).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint.connect(hub.quic.parse().unwrap(), "127.0.0.1").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&hex::decode(HELLO_V1).unwrap()).await.unwrap();
        let mut decoder = FrameDecoder::new();

        let (v, welcome) = next_frame(&mut recv, &mut decoder).await;
        assert_eq!(v, 1, "answered in version 1");
        assert!(matches!(welcome, HubFrame::Welcome(_)), "{welcome:?}");
        // It says it holds revision 7: it is told what the hub holds for it.
        let (v, first) = next_frame(&mut recv, &mut decoder).await;
        assert_eq!(v, 1);
        let held = match first {
            HubFrame::Desired(m) => {
                assert_eq!(m.device, "pi-1");
                m.revision
            }
            HubFrame::UpToDate { revision } => revision,
            other => panic!("expected the device's manifest, got {other:?}"),
        };
        let report =
            |revision| AgentFrame::Report(AgentReport { held_revision: revision, containers: vec![] });
        send.write_all(&wire::encode_frame_for(1, &report(held)).unwrap()).await.unwrap();

        // A change: the old agent gets it in version 1 and reports it applied.
        let yaml = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: legacy
spec:
  selector:
    matchLabels: {role: old}
  containers:
    - name: c
      image: busybox-test:1
"#;
        let out = hub.apply(dir.path(), yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let m = loop {
            let (v, frame) = next_frame(&mut recv, &mut decoder).await;
            assert_eq!(v, 1, "every frame in version 1");
            if let HubFrame::Desired(m) = frame
                && !m.apps.is_empty()
            {
                break m;
            }
        };
        assert_eq!(m.apps[0].name, "legacy");
        send.write_all(&wire::encode_frame_for(1, &report(m.revision)).unwrap()).await.unwrap();
        send.write_all(&wire::encode_frame_for(1, &AgentFrame::Heartbeat { seq: 1 }).unwrap()).await.unwrap();
        let want = m.revision;
        let synced = tokio::task::spawn_blocking(move || {
            wait_until("the hub to record the old agent's report", Duration::from_secs(30), || {
                let d = hub.get("devices", Some("pi-1"))?;
                let s = &d["status"];
                (s["phase"] == "Online"
                    && s["desiredRevision"].as_u64() == Some(want)
                    && s["appliedRevision"].as_u64() == Some(want))
                .then_some(())
            });
            hub
        });
        let _hub = synced.await.unwrap();
        conn.close(0u32.into(), b"done");
    });
}
