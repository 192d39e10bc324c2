//! The hub's real QUIC endpoint: it refuses a device whose certificate another CA
//! signed (even one naming a device the hub knows), and a malformed frame closes
//! that one connection while the hub goes on serving everyone else.

use firmware_tests::{Agent, Hub, require_root, wait_until};
use provisioning::ca::FleetCa;
use provisioning::device_key::DeviceKey;
use rustls_pki_types::CertificateDer;
use shared_proto::wire::{self, AgentHello, HubFrame, StreamOpen};
use std::sync::Arc;
use std::time::Duration;

async fn connect(
    hub_quic: &str,
    chain: Vec<CertificateDer<'static>>,
    key: &DeviceKey,
    trust: &CertificateDer<'static>,
) -> anyhow::Result<quinn::Connection> {
    let tls = provisioning::tls::device_quic_client_config(chain, key.private_key_der(), trust)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(tokio::time::timeout(Duration::from_secs(10), endpoint.connect(hub_quic.parse()?, "127.0.0.1")?)
        .await??)
}

async fn try_sync(
    hub_quic: &str,
    device: &str,
    chain: Vec<CertificateDer<'static>>,
    key: &DeviceKey,
    trust: &CertificateDer<'static>,
) -> anyhow::Result<HubFrame> {
    let conn = connect(hub_quic, chain, key, trust).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = AgentHello {
        device: device.into(),
        facts: Default::default(),
        held_revision: 0,
        boot_id: "b".into(),
    };
    wire::write_frame(&mut send, &StreamOpen::Sync(hello)).await?;
    let frame =
        tokio::time::timeout(Duration::from_secs(10), wire::read_frame::<HubFrame, _>(&mut recv)).await??;
    frame.ok_or_else(|| anyhow::anyhow!("stream closed"))
}

#[test]
fn foreign_certificates_and_malformed_frames_are_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let ctx: shared_proto::config::CliContext =
        serde_json::from_slice(&std::fs::read(&hub.context).unwrap()).unwrap();
    let fleet_ca = provisioning::pem::decode_cert(&ctx.ca_cert_pem).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // Control: the same client code with a certificate the hub issued gets a session.
    let token = hub.enrolment_token(&[]);
    let mut agent = Agent::configure(dir.path(), "pi-1", &hub.quic, &token, &[]);
    agent.start();
    wait_until("the device to enrol", Duration::from_secs(60), || hub.get("devices", Some("pi-1")));
    agent.kill();
    let legit_key =
        DeviceKey::from_pem(&std::fs::read_to_string(agent.state_dir.join("device.key")).unwrap()).unwrap();
    let legit_chain = provisioning::pem::decode_certs(
        &std::fs::read_to_string(agent.state_dir.join("device.crt")).unwrap(),
    )
    .unwrap();
    let frame = rt.block_on(try_sync(&hub.quic, "pi-1", legit_chain.clone(), &legit_key, &fleet_ca)).unwrap();
    assert!(matches!(frame, HubFrame::Welcome(_)), "{frame:?}");

    // A malformed frame (an absurd length) closes that connection with the protocol
    // error code, and only that one: a new connection is served.
    rt.block_on(async {
        let conn = connect(&hub.quic, legit_chain.clone(), &legit_key, &fleet_ca).await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3]).await.unwrap();
        let reason =
            tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("the hub closes it");
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(1))
            }
            other => panic!("expected an application close, got {other:?}"),
        }
    });
    let frame = rt.block_on(try_sync(&hub.quic, "pi-1", legit_chain, &legit_key, &fleet_ca)).unwrap();
    assert!(matches!(frame, HubFrame::Welcome(_)), "the hub still serves: {frame:?}");

    let key = DeviceKey::generate().unwrap();
    let rogue = FleetCa::generate("rogue CA").unwrap();
    let cert =
        rogue.sign_device_csr(&key.csr_der("pi-1").unwrap(), "pi-1", Duration::from_secs(3600)).unwrap();
    // The rogue device trusts the real hub (it knows the fleet CA); the hub must refuse it.
    let result = rt.block_on(try_sync(&hub.quic, "pi-1", vec![CertificateDer::from(cert)], &key, &fleet_ca));
    let err = result.expect_err("a certificate from another CA must not get a session");
    let text = format!("{err:#}");
    assert!(
        text.contains("aborted by peer") && text.contains("UnknownIssuer"),
        "the hub must abort the handshake: {text}"
    );
}
