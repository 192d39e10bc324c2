//! A device's identity is its device object, not its name: a deleted device's live
//! connection is closed at once and its certificate opens nothing afterwards, not
//! even once a new device holds the name; and an enrolment whose reply was lost is
//! asked again with the same key and counted once. Certificates over time, with a
//! hub whose device certificates live two minutes: an online agent renews with a new
//! key before expiry, without a restart, and the hub drops the old certificate once
//! the new one is in use; an agent kept offline past expiry keeps its containers
//! running, comes back `Quarantined`, and runs normally again once approved.

use firmware_tests::link::{LinkConfig, LinkEmulator};
use firmware_tests::{
    Agent, Hub, HubOptions, assert_during, busybox_image, pid_alive, require_root, wait_until,
};
use provisioning::device_key::DeviceKey;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use shared_proto::wire::{
    self, AgentHello, BlobReply, BlobRequest, EnrolReply, EnrolRequest, HubFrame, StreamOpen, close_code,
};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const LONG: Duration = Duration::from_secs(60);
const TEN: Duration = Duration::from_secs(10);

struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: DeviceKey,
}

fn fleet_ca(hub: &Hub) -> CertificateDer<'static> {
    let ctx: shared_proto::config::CliContext =
        serde_json::from_slice(&std::fs::read(&hub.context).unwrap()).unwrap();
    provisioning::pem::decode_cert(&ctx.ca_cert_pem).unwrap()
}

fn credentials_of(agent: &Agent) -> Credentials {
    let key =
        DeviceKey::from_pem(&std::fs::read_to_string(agent.state_dir.join("device.key")).unwrap()).unwrap();
    let chain = provisioning::pem::decode_certs(
        &std::fs::read_to_string(agent.state_dir.join("device.crt")).unwrap(),
    )
    .unwrap();
    Credentials { chain, key }
}

async fn endpoint(tls: Arc<rustls::ClientConfig>) -> quinn::Endpoint {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

async fn connect(hub: &Hub, creds: &Credentials, ca: &CertificateDer<'static>) -> quinn::Connection {
    let tls =
        provisioning::tls::device_quic_client_config(creds.chain.clone(), creds.key.private_key_der(), ca)
            .unwrap();
    let endpoint = endpoint(tls).await;
    tokio::time::timeout(TEN, endpoint.connect(hub.quic_addr(), "127.0.0.1").unwrap()).await.unwrap().unwrap()
}

fn facts() -> wire::DeviceFacts {
    wire::DeviceFacts {
        arch: images::oci::host_architecture().into(),
        os: "linux".into(),
        capacity: shared_proto::Capacity {
            cpu: shared_proto::CpuMillis(1000),
            memory: shared_proto::Bytes(1 << 30),
        },
        ..Default::default()
    }
}

/// A sync stream from a machine with boot id `boot`, kept open: the hub's first frame
/// and the stream's two halves.
async fn sync_from(
    conn: &quinn::Connection,
    device: &str,
    boot: &str,
) -> anyhow::Result<(HubFrame, quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = AgentHello { device: device.into(), facts: facts(), held_revision: 0, boot_id: boot.into() };
    wire::write_frame(&mut send, &StreamOpen::Sync(hello)).await?;
    let frame = tokio::time::timeout(TEN, wire::read_frame::<HubFrame, _>(&mut recv)).await??;
    Ok((frame.ok_or_else(|| anyhow::anyhow!("stream closed"))?, send, recv))
}

/// Opens a sync stream and returns the hub's first frame, or why there was none.
async fn sync(conn: &quinn::Connection, device: &str) -> anyhow::Result<HubFrame> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = AgentHello { device: device.into(), facts: facts(), held_revision: 0, boot_id: "b".into() };
    wire::write_frame(&mut send, &StreamOpen::Sync(hello)).await?;
    let frame = tokio::time::timeout(TEN, wire::read_frame::<HubFrame, _>(&mut recv)).await??;
    frame.ok_or_else(|| anyhow::anyhow!("stream closed"))
}

/// The application close code the hub ended `conn` with.
async fn close_code_of(conn: &quinn::Connection, within: Duration) -> u32 {
    match tokio::time::timeout(within, conn.closed()).await.expect("the hub closes the connection in time") {
        quinn::ConnectionError::ApplicationClosed(c) => u32::try_from(c.error_code.into_inner()).unwrap(),
        other => panic!("expected the hub to close the connection, got {other:?}"),
    }
}

/// A real agent enrols `name`, is stopped, and leaves its key and certificate.
fn enrolled(hub: &Hub, dir: &std::path::Path, name: &str) -> Credentials {
    let token = hub.enrolment_token(&[]);
    let mut agent = Agent::configure(dir, name, &hub.quic, &token, &[]);
    agent.start();
    wait_until("the device to enrol", LONG, || hub.get("devices", Some(name)));
    wait_until("the agent to store its certificate", LONG, || {
        agent.state_dir.join("device.crt").exists().then_some(())
    });
    agent.kill();
    credentials_of(&agent)
}

/// Asks for one blob on `conn`.
async fn blob(conn: &quinn::Connection, digest: &str) -> anyhow::Result<BlobReply> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let req = BlobRequest { digest: digest.into(), offset: 0 };
    wire::write_frame(&mut send, &StreamOpen::Blob(req)).await?;
    let reply = tokio::time::timeout(TEN, wire::read_frame::<BlobReply, _>(&mut recv)).await??;
    reply.ok_or_else(|| anyhow::anyhow!("stream closed"))
}

/// A certificate the hub no longer accepts: the connection is closed as revoked, and
/// neither a sync session nor a blob comes out of it.
async fn assert_refused(hub: &Hub, creds: &Credentials, ca: &CertificateDer<'static>, device: &str) {
    let conn = connect(hub, creds, ca).await;
    let digest = format!("sha256:{}", "0".repeat(64));
    assert!(blob(&conn, &digest).await.is_err(), "no blob answer for a revoked certificate");
    assert!(sync(&conn, device).await.is_err(), "no session for a revoked certificate");
    assert_eq!(close_code_of(&conn, TEN).await, close_code::REVOKED);
}

#[test]
fn a_deleted_device_is_cut_off_and_its_old_certificate_never_comes_back() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let ca = fleet_ca(&hub);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let old = enrolled(&hub, dir.path(), "pi-1");
    let device = hub.get("devices", Some("pi-1")).unwrap();
    let serial = provisioning::identity::device_cert(&old.chain[0]).unwrap().serial;
    assert_eq!(
        device["status"]["certificates"][0]["serial"],
        serial.as_str(),
        "the device records its certificate"
    );

    // A live session, then the device is deleted: the connection closes at once.
    let conn = rt.block_on(connect(&hub, &old, &ca));
    let frame = rt.block_on(sync(&conn, "pi-1")).unwrap();
    assert!(matches!(frame, HubFrame::Welcome(_)), "{frame:?}");

    // Blobs: only those of the images in the device's own desired manifest.
    let image = busybox_image(dir.path(), "busybox-test:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let imported = hub.get("images", Some("busybox-test:1")).unwrap();
    let digest = imported["spec"]["platforms"][0]["manifestDigest"].as_str().unwrap().to_string();
    let reply = rt.block_on(blob(&conn, &digest)).unwrap();
    assert!(matches!(reply, BlobReply::NotFound { .. }), "an image no app gives pi-1: {reply:?}");
    let app = "apiVersion: flotilla.dev/v1\nkind: App\nmetadata:\n  name: box\nspec:\n  containers:\n    - name: box\n      image: busybox-test:1\n";
    let out = hub.apply(dir.path(), app);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("pi-1's manifest to name the image, and its blob to be served", LONG, || {
        matches!(rt.block_on(blob(&conn, &digest)), Ok(BlobReply::Found { .. })).then_some(())
    });
    // The app moves on to a second image and then a third: the images of the manifest
    // before the current one stay fetchable (to roll back), older ones do not.
    let mut digests = vec![digest.clone()];
    for (version, seconds) in [("2", "7200"), ("3", "10800")] {
        let reference = format!("busybox-test:{version}");
        let path = dir.path().join(format!("busybox-{version}.oci.tar"));
        images::testing::busybox_image(&path, &reference, &["/bin/sleep", seconds]).unwrap();
        hub.cli_ok(&["image", "import", path.to_str().unwrap()]);
        let imported = hub.get("images", Some(&reference)).unwrap();
        digests.push(imported["spec"]["platforms"][0]["manifestDigest"].as_str().unwrap().to_string());
        let out = hub.apply(dir.path(), &app.replace("busybox-test:1", &reference));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let newest = digests.last().unwrap().clone();
        wait_until("the new image's blob to be served", LONG, || {
            matches!(rt.block_on(blob(&conn, &newest)), Ok(BlobReply::Found { .. })).then_some(())
        });
    }
    let found = |d: &str| matches!(rt.block_on(blob(&conn, d)), Ok(BlobReply::Found { .. }));
    assert!(found(&digests[1]), "the previous manifest's image stays fetchable");
    assert!(!found(&digests[0]), "the one before that does not");

    hub.cli_ok(&["delete", "device", "pi-1"]);
    let deleted = Instant::now();
    assert_eq!(rt.block_on(close_code_of(&conn, Duration::from_secs(1))), close_code::REVOKED);
    eprintln!("live connection closed {:?} after the delete returned", deleted.elapsed());

    // Its certificate is still signed by the fleet CA and unexpired, but opens nothing.
    rt.block_on(assert_refused(&hub, &old, &ca, "pi-1"));

    // A new device under the same name enrols (new key, new token) and works ...
    let other = tempfile::tempdir().unwrap();
    let token2 = hub.enrolment_token(&[]);
    let mut again = Agent::configure(other.path(), "pi-1", &hub.quic, &token2, &[]);
    again.start();
    wait_until("the new pi-1 to be Online", LONG, || {
        (hub.get("devices", Some("pi-1"))?["status"]["phase"] == "Online").then_some(())
    });
    // ... and the old certificate, naming the same device, is still refused.
    rt.block_on(assert_refused(&hub, &old, &ca, "pi-1"));
    let new = credentials_of(&again);
    again.kill();
    let conn = rt.block_on(connect(&hub, &new, &ca));
    assert!(matches!(rt.block_on(sync(&conn, "pi-1")).unwrap(), HubFrame::Welcome(_)));
}

async fn enrol(hub_quic: std::net::SocketAddr, token: &str, name: &str, key: &DeviceKey) -> EnrolReply {
    let parsed = provisioning::token::EnrolmentToken::parse(token).unwrap();
    let tls = provisioning::tls::enrolment_client_config(parsed.ca_fingerprint()).unwrap();
    let endpoint = endpoint(tls).await;
    let conn =
        tokio::time::timeout(TEN, endpoint.connect(hub_quic, "127.0.0.1").unwrap()).await.unwrap().unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let req = EnrolRequest {
        token: token.into(),
        device_name: name.into(),
        csr_der: key.csr_der(name).unwrap(),
        facts: Default::default(),
        labels: Default::default(),
    };
    wire::write_frame(&mut send, &StreamOpen::Enrol(req)).await.unwrap();
    tokio::time::timeout(TEN, wire::read_frame::<EnrolReply, _>(&mut recv)).await.unwrap().unwrap().unwrap()
}

fn token_uses(hub: &Hub, token: &str) -> u64 {
    let id = provisioning::token::EnrolmentToken::parse(token).unwrap().id().to_string();
    let list = hub.cli_ok(&["token", "list"]);
    let row =
        list.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("token {id} not listed:\n{list}"));
    let used = row.split_whitespace().nth(1).and_then(|u| u.split('/').next()).expect("a USED column");
    used.parse().unwrap()
}

#[test]
fn an_enrolment_asked_again_with_the_same_key_gets_its_certificate_and_counts_once() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let ca = fleet_ca(&hub);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let token = hub.enrolment_token(&["--max-uses", "1"]);

    // Protocol level: the first reply is "lost", the same request comes again.
    let key = DeviceKey::generate().unwrap();
    let first = rt.block_on(enrol(hub.quic_addr(), &token, "pi-2", &key));
    let second = rt.block_on(enrol(hub.quic_addr(), &token, "pi-2", &key));
    let chain = |r: EnrolReply| match r {
        EnrolReply::Accepted { cert_chain_der, .. } => {
            cert_chain_der.into_iter().map(CertificateDer::from).collect()
        }
        EnrolReply::Refused { reason, message } => panic!("refused: {reason:?} {message}"),
    };
    let (first, second) = (chain(first), chain(second));
    assert_eq!(token_uses(&hub, &token), 1, "a single-use token, used once");
    // Another key under the same name and token is another device: refused.
    let thief = DeviceKey::generate().unwrap();
    match rt.block_on(enrol(hub.quic_addr(), &token, "pi-2", &thief)) {
        EnrolReply::Refused { reason, .. } => assert_eq!(reason, wire::EnrolRefusal::NameTaken),
        other => panic!("another key must not get pi-2's certificate: {other:?}"),
    }
    // The certificate handed out last is the device's; the undelivered one opens nothing.
    let key_again = DeviceKey::from_pem(&key.to_pkcs8_pem()).unwrap();
    rt.block_on(assert_refused(&hub, &Credentials { chain: first, key }, &ca, "pi-2"));
    let creds = Credentials { chain: second, key: key_again };
    let conn = rt.block_on(connect(&hub, &creds, &ca));
    assert!(matches!(rt.block_on(sync(&conn, "pi-2")).unwrap(), HubFrame::Welcome(_)));

    // Decommissioned: the live connection closes at once, the record stays, and its
    // certificate opens nothing more.
    hub.cli_ok(&["device", "decommission", "pi-2"]);
    assert_eq!(rt.block_on(close_code_of(&conn, Duration::from_secs(1))), close_code::REVOKED);
    let device = hub.get("devices", Some("pi-2")).expect("a decommissioned device stays listed");
    assert_eq!(device["status"]["phase"], "Decommissioned");
    rt.block_on(assert_refused(&hub, &creds, &ca, "pi-2"));

    // A real agent killed after the hub accepted, before the reply arrived: replies
    // take two seconds through the emulator, and the agent dies as soon as the hub
    // has the device. Restarted, it asks again with the key it kept.
    let token = hub.enrolment_token(&["--max-uses", "1"]);
    let link = LinkEmulator::start(LinkConfig::new(Ipv4Addr::LOCALHOST, hub.quic_addr()).seed(3));
    link.update(|i| i.down.delay = Duration::from_secs(2));
    let mut agent = Agent::configure(dir.path(), "pi-3", &link.addr().to_string(), &token, &[]);
    agent.start();
    wait_until("the hub to accept pi-3", LONG, || hub.get("devices", Some("pi-3")));
    agent.kill();
    assert!(!agent.state_dir.join("device.crt").exists(), "the reply must not have arrived: {}", agent.log());
    link.heal();
    agent.start();
    wait_until("pi-3 to be Online", LONG, || {
        (hub.get("devices", Some("pi-3"))?["status"]["phase"] == "Online").then_some(())
    });
    assert!(agent.log().contains("enrolling with the key an earlier attempt generated"), "{}", agent.log());
    assert_eq!(token_uses(&hub, &token), 1);
}

#[test]
fn a_cloned_certificate_is_flagged_and_the_clone_refused_without_flapping() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let ca = fleet_ca(&hub);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let creds = enrolled(&hub, dir.path(), "pi-4");

    rt.block_on(async {
        // The original, then its clone (from the hub's side, a reboot so far).
        let a = connect(&hub, &creds, &ca).await;
        let (first, ..) = sync_from(&a, "pi-4", "boot-a").await.unwrap();
        assert!(matches!(first, HubFrame::Welcome(_)), "{first:?}");
        let b = connect(&hub, &creds, &ca).await;
        let (frame, _b_send, mut b_recv) = sync_from(&b, "pi-4", "boot-b").await.unwrap();
        assert!(matches!(frame, HubFrame::Welcome(_)), "{frame:?}");
        // The original comes back while the clone holds the device: refused, on every
        // try, and the clone keeps its session.
        for _ in 0..3 {
            let a2 = connect(&hub, &creds, &ca).await;
            match sync_from(&a2, "pi-4", "boot-a").await.unwrap().0 {
                HubFrame::Refused { message } => assert!(message.contains("cloned SD card"), "{message}"),
                other => panic!("the returning machine must be refused: {other:?}"),
            }
        }
        // The session in place goes on (it may be sent its manifest; it is not ended).
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            match tokio::time::timeout_at(until, wire::read_frame::<HubFrame, _>(&mut b_recv)).await {
                Err(_) => break,
                Ok(Ok(Some(HubFrame::Desired(_) | HubFrame::UpToDate { .. } | HubFrame::Trust { .. }))) => {
                    continue;
                }
                other => panic!("the session in place must be left alone: {other:?}"),
            }
        }
    });
    let device = hub.get("devices", Some("pi-4")).unwrap();
    let conflict = &device["status"]["identityConflict"];
    assert_eq!(conflict["bootIds"], serde_json::json!(["boot-b", "boot-a"]), "{device}");
    assert!(conflict["refusedFrom"].as_str().unwrap().starts_with("127.0.0.1:"), "{device}");
}

/// Renewal comes at two thirds of a two-minute lifetime (80 s); allow for slow machines.
const RENEWAL: Duration = Duration::from_secs(150);

const TILL_APP: &str = r#"apiVersion: flotilla.dev/v1
kind: App
metadata:
  name: till
spec:
  selector:
    matchLabels: {role: till}
  containers:
    - name: till
      image: busybox-test:1
      command: ["/bin/busybox", "sleep", "100000"]
"#;

fn serials(device: &Value) -> Vec<String> {
    device["status"]["certificates"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["serial"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn phase(hub: &Hub, name: &str) -> Option<String> {
    hub.get("devices", Some(name))?["status"]["phase"].as_str().map(str::to_string)
}

/// When the agent's stored certificate expires.
fn not_after(agent: &Agent) -> SystemTime {
    let pem = std::fs::read_to_string(agent.state_dir.join("device.crt")).unwrap();
    let chain = provisioning::pem::decode_certs(&pem).unwrap();
    provisioning::identity::device_cert(&chain[0]).unwrap().not_after.to_system_time()
}

#[test]
fn certificates_renew_online_and_one_that_expired_offline_waits_for_approval() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(dir.path(), HubOptions::default().arg("--device-cert-lifetime").arg("2m"));
    let image = busybox_image(dir.path(), "busybox-test:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let out = hub.apply(dir.path(), TILL_APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = hub.enrolment_token(&["--allow-label", "role"]);

    // One agent straight to the hub, one through a link that will be cut.
    let mut online = Agent::configure(dir.path(), "pi-online", &hub.quic, &token, &[]);
    online.start();
    let link = LinkEmulator::start(LinkConfig::new(Ipv4Addr::LOCALHOST, hub.quic_addr()).seed(11));
    link.set_cut_tcp_on_partition(true);
    let mut away =
        Agent::configure(dir.path(), "pi-away", &link.addr().to_string(), &token, &[("role", "till")]);
    away.start();

    // The offline one runs its till, then loses the hub well before renewal is due.
    let id = wait_until("the till to run on pi-away", LONG, || away.runtime_containers().into_iter().next());
    let pid = wait_until("the till's pid", LONG, || away.container_pid(&id));
    let first_away = serials(&hub.get("devices", Some("pi-away")).unwrap());
    link.set_partition(true);
    let expires = not_after(&away);

    // Meanwhile the online one renews, without a restart.
    let first = wait_until("pi-online to be Online", LONG, || {
        let d = hub.get("devices", Some("pi-online"))?;
        (d["status"]["phase"] == "Online").then(|| serials(&d))
    });
    assert_eq!(first.len(), 1, "{first:?}");
    wait_until("pi-online to renew and drop its old certificate", RENEWAL, || {
        let d = hub.get("devices", Some("pi-online"))?;
        let now = serials(&d);
        (now.len() == 1 && now != first && d["status"]["phase"] == "Online").then_some(())
    });
    assert!(online.is_running(), "the agent renewed without a restart");
    let log = online.log();
    assert!(log.contains("certificate renewed with a new key"), "{log}");
    assert_eq!(log.matches("starting from the stored desired state").count(), 1, "one start only:\n{log}");
    assert!(
        not_after(&online) > SystemTime::now() + Duration::from_secs(60),
        "the stored certificate is the new one"
    );

    // The offline one's certificate expires; its till keeps running.
    wait_until("pi-away's certificate to expire", RENEWAL, || {
        (SystemTime::now() > expires + Duration::from_secs(2)).then_some(())
    });
    assert!(pid_alive(pid), "the till kept running while the hub was out of reach");
    link.set_partition(false);
    wait_until("pi-away to come back Quarantined", LONG, || {
        (phase(&hub, "pi-away")? == "Quarantined").then_some(())
    });
    let device = hub.get("devices", Some("pi-away")).unwrap();
    assert_eq!(device["status"]["quarantine"]["approved"], false, "{device}");
    assert_eq!(serials(&device), first_away, "nothing issued while quarantined");
    assert!(pid_alive(pid), "quarantined, the till keeps running");
    // Asking again and again (every 10 s) changes nothing: only an operator lets it in.
    assert_during("pi-away to stay Quarantined", Duration::from_secs(12), || {
        match phase(&hub, "pi-away").as_deref() {
            Some("Quarantined") => Ok(()),
            other => Err(format!("pi-away is {other:?}")),
        }
    });

    hub.cli_ok(&["device", "approve", "pi-away"]);
    wait_until("pi-away to be Online with a new certificate", LONG, || {
        let d = hub.get("devices", Some("pi-away"))?;
        let now = serials(&d);
        (d["status"]["phase"] == "Online" && now.len() == 1 && now != first_away).then_some(())
    });
    assert!(not_after(&away) > SystemTime::now() + Duration::from_secs(60), "{}", away.log());
    assert!(pid_alive(pid), "the same till runs on after approval");
    assert!(away.runtime_containers().contains(&id));
    let log = away.log();
    assert!(log.contains("quarantined"), "{log}");
    assert!(log.contains("approved"), "{log}");
}

/// The hub's view of the fleet CA (`flotilla ca status` as JSON, through the API).
fn ca_fingerprints(hub: &Hub) -> (String, Option<String>, Vec<String>) {
    let out = hub.cli_ok(&["ca", "status"]);
    let field = |name: &str| {
        out.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).filter(|v| v != "-")
    };
    let fleet = field("fleet CA").expect("fleet CA line");
    let next = field("staged").map(|v| v.split_whitespace().next().unwrap_or_default().to_string());
    let previous = field("previous").map(|v| v.split(", ").map(str::to_string).collect()).unwrap_or_default();
    (fleet, next, previous)
}

fn trusted_by(agent: &Agent) -> Vec<String> {
    let pem = std::fs::read_to_string(agent.state_dir.join("ca.crt")).unwrap_or_default();
    provisioning::pem::decode_certs(&pem)
        .unwrap_or_default()
        .iter()
        .map(|c| hex::encode(provisioning::sha256_fingerprint(c)))
        .collect()
}

#[test]
fn the_fleet_ca_rotates_without_touching_a_device() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Five-minute certificates: after activation devices renew within half a minute.
    let hub = Hub::start_with(dir.path(), HubOptions::default().arg("--device-cert-lifetime").arg("5m"));
    let image = busybox_image(dir.path(), "busybox-test:1");
    hub.cli_ok(&["image", "import", image.to_str().unwrap()]);
    let out = hub.apply(dir.path(), TILL_APP);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = hub.enrolment_token(&["--allow-label", "role"]);
    let mut agent = Agent::configure(dir.path(), "pi-rot", &hub.quic, &token, &[("role", "till")]);
    agent.start();
    let id = wait_until("the till to run", LONG, || agent.runtime_containers().into_iter().next());
    let pid = wait_until("the till's pid", LONG, || agent.container_pid(&id));
    wait_until("pi-rot to be Online", LONG, || (phase(&hub, "pi-rot")? == "Online").then_some(()));
    let old_creds = credentials_of(&agent);
    let (old, next, _) = ca_fingerprints(&hub);
    assert_eq!(next, None);
    assert_eq!(trusted_by(&agent), vec![old.clone()]);

    // Staged: the connected agent learns to trust both at once.
    hub.cli_ok(&["ca", "rotate"]);
    let (fleet, next, _) = ca_fingerprints(&hub);
    let new = next.expect("a CA is staged");
    assert_eq!(fleet, old);
    wait_until("the agent to trust both CAs", LONG, || {
        (trusted_by(&agent) == vec![old.clone(), new.clone()]).then_some(())
    });

    // Activated: the hub presents the new CA's certificate, the agent renews onto it,
    // the CLI (whose context the hub keeps) still trusts the hub.
    hub.cli_ok(&["ca", "activate"]);
    let (fleet, next, previous) = ca_fingerprints(&hub);
    assert_eq!((fleet.as_str(), next, previous), (new.as_str(), None, vec![old.clone()]));
    wait_until("pi-rot to hold a certificate of the new CA only", Duration::from_secs(120), || {
        let d = hub.get("devices", Some("pi-rot"))?;
        let cas: Vec<&str> =
            d["status"]["certificates"].as_array()?.iter().filter_map(|c| c["ca"].as_str()).collect();
        (cas == [new.as_str()] && d["status"]["phase"] == "Online").then_some(())
    });
    // A new device enrols with a token made now.
    let fresh = hub.enrolment_token(&[]);
    let mut second = Agent::configure(dir.path(), "pi-new", &hub.quic, &fresh, &[]);
    second.start();
    wait_until("pi-new to be Online", LONG, || (phase(&hub, "pi-new")? == "Online").then_some(()));

    // Retired: the old CA is trusted nowhere, and its certificates open nothing.
    hub.cli_ok(&["ca", "retire"]);
    wait_until("the agent to trust the new CA only", LONG, || {
        (trusted_by(&agent) == vec![new.clone()]).then_some(())
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let both: Vec<CertificateDer<'static>> =
        provisioning::pem::decode_certs(&std::fs::read_to_string(agent.state_dir.join("ca.crt")).unwrap())
            .unwrap();
    let refused = rt.block_on(async {
        let tls = provisioning::tls::device_quic_client_config_trusting(
            old_creds.chain.clone(),
            old_creds.key.private_key_der(),
            &both,
        )
        .unwrap();
        let conn =
            tokio::time::timeout(TEN, endpoint(tls).await.connect(hub.quic_addr(), "127.0.0.1").unwrap())
                .await
                .unwrap();
        match conn {
            Err(e) => Some(e.to_string()),
            Ok(c) => sync(&c, "pi-rot").await.err().map(|e| e.to_string()),
        }
    });
    assert!(refused.is_some(), "a certificate of the retired CA must open nothing");

    // Through all of it the till ran on, and a restarted agent comes back on what it stored.
    assert!(pid_alive(pid), "the till kept running");
    let connects = |agent: &Agent| agent.log().matches("connected to the hub").count();
    let before = connects(&agent);
    agent.kill();
    agent.start();
    wait_until("the restarted agent to connect with what it stored", LONG, || {
        (connects(&agent) > before).then_some(())
    });
    assert_during("pi-rot to stay connected", Duration::from_secs(3), || {
        match phase(&hub, "pi-rot").as_deref() {
            Some("Online") => Ok(()),
            other => Err(format!("pi-rot is {other:?}: {}", agent.log())),
        }
    });
}
