//! A real three-hub cluster on loopback with mutual TLS: election, replication to followers,
//! followers forwarding writes and linearizable reads to the leader, failover without losing
//! acknowledged writes, a restarted hub catching up from its own data directory, and peers
//! without a hub certificate refused, over HTTP and over Raft frames.

mod common;

use common::*;
use hub_store::{NodeId, Store};
use shared_proto::store::{Object, Precondition as P, StoreKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;

async fn open_node(
    dir: &std::path::Path,
    id: NodeId,
    addr: SocketAddr,
    members: &BTreeMap<NodeId, String>,
    ca: &TestCa,
) -> Store {
    Store::open_with_tuning(tls_node_config(dir, id, addr, members, ca), test_tuning()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_replicate_fail_over_and_catch_up() {
    init_logging();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let members: BTreeMap<NodeId, String> = (1..=3).zip(addrs.iter().map(|a| a.to_string())).collect();
    let ca = TestCa::new();
    let (s1, s2, s3) = tokio::join!(
        open_node(dirs[0].path(), 1, addrs[0], &members, &ca),
        open_node(dirs[1].path(), 2, addrs[1], &members, &ca),
        open_node(dirs[2].path(), 3, addrs[2], &members, &ca),
    );
    let mut stores: BTreeMap<NodeId, Store> = BTreeMap::from([(1, s1), (2, s2), (3, s3)]);

    let leader_id = agreed_leader(&stores.values().collect::<Vec<_>>()).await;
    let leader = stores[&leader_id].clone();
    assert_eq!(leader.status().voters, members);

    // Writes through the leader reach every follower.
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    for i in 0..10 {
        let name = format!("site-{i}");
        let r = applied(leader.write(put(site(&name, "first term"), P::MustNotExist)).await.unwrap());
        acknowledged.push((name, r));
    }
    let last = acknowledged.last().unwrap().1;
    let want = leader.list(StoreKind::Site).await.unwrap();
    for store in stores.values() {
        eventually("followers to apply the writes", || store.revision() >= last).await;
        assert_eq!(store.list_local(StoreKind::Site).unwrap(), want);
    }

    // A follower forwards writes and linearizable reads to the leader, and answers a write
    // once it has applied it itself.
    let (follower_id, follower) = stores.iter().find(|(id, _)| **id != leader_id).unwrap();
    assert!(!follower.is_leader());
    let r = applied(follower.write(put(site("from-follower", "forwarded"), P::MustNotExist)).await.unwrap());
    assert!(r > last, "node {follower_id}: forwarded write at {r}");
    assert!(follower.revision() >= r, "the follower has applied its own write when it returns");
    acknowledged.push(("from-follower".into(), r));
    let on_leader = applied(leader.write(put(site("site-0", "updated"), P::None)).await.unwrap());
    let read = follower.get_revisioned(StoreKind::Site, "site-0").await.unwrap().unwrap();
    assert_eq!(read.revision, on_leader, "a linearizable read on a follower sees the leader's last write");
    acknowledged[0].1 = on_leader;
    let conflict = follower.write(put(site("from-follower", ""), P::MustNotExist)).await.unwrap();
    assert!(matches!(conflict, shared_proto::store::StoreOutcome::Conflict { .. }), "{conflict:?}");
    let last = on_leader;

    // A client with a certificate from the same CA but no raft name (a device's) is refused
    // after the handshake; one from another CA fails the handshake.
    let (device_cert, device_key) = ca.issue(&["device-1.example".to_string()]);
    for tls in [ca.tls_with(device_cert, device_key), TestCa::new().hub_tls(9)] {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls.client))
            .resolve(&hub_store::peer_name(*follower_id), addrs[usize::try_from(*follower_id - 1).unwrap()])
            .build()
            .unwrap();
        let url = format!(
            "https://{}:{}/raft/vote",
            hub_store::peer_name(*follower_id),
            addrs[usize::try_from(*follower_id - 1).unwrap()].port()
        );
        let res = client.post(url).body(vec![1, 2, 3]).send().await;
        assert!(res.is_err(), "a non-hub peer got an answer: {res:?}");
    }

    // Raft frames (append and votes, chosen by ALPN) ask for the same certificates: a hub's
    // gets frames, and a frame that does not decode closes that one connection (the cluster
    // goes on below); a device's is dropped before any frame is read.
    let follower_addr = addrs[usize::try_from(*follower_id - 1).unwrap()];
    let mut hub =
        frame_connection(&ca.hub_tls(9), *follower_id, follower_addr).await.expect("a hub connects");
    assert_eq!(hub.get_ref().1.alpn_protocol(), Some(&b"flotilla-raft/1"[..]), "frames are offered");
    hub.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).await.unwrap();
    assert_closed(&mut hub).await;
    let (device_cert, device_key) = ca.issue(&["device-2.example".to_string()]);
    if let Some(mut device) =
        frame_connection(&ca.tls_with(device_cert, device_key), *follower_id, follower_addr).await
    {
        let _ = device.write_all(&[3, 0, 0, 0, 1, 2, 3]).await;
        assert_closed(&mut device).await;
    }

    // Kill the leader: the two others elect a new one, and nothing acknowledged is lost.
    leader.shutdown().await.unwrap();
    let old = stores.remove(&leader_id).unwrap();
    drop((leader, old));
    let new_leader_id = agreed_leader(&stores.values().collect::<Vec<_>>()).await;
    assert_ne!(new_leader_id, leader_id);
    let new_leader = stores[&new_leader_id].clone();
    for (name, revision) in &acknowledged {
        let object =
            new_leader.get(StoreKind::Site, name).await.unwrap().expect("acknowledged write survives");
        assert_eq!(object.metadata().unwrap().revision, *revision);
    }
    for i in 10..15 {
        let name = format!("site-{i}");
        let r = applied(new_leader.write(put(site(&name, "second term"), P::MustNotExist)).await.unwrap());
        assert!(r > last);
        acknowledged.push((name, r));
    }

    // Restart the old leader from its data dir: it rejoins as a follower and catches up.
    let idx = usize::try_from(leader_id - 1).unwrap();
    let restarted = open_node(dirs[idx].path(), leader_id, addrs[idx], &members, &ca).await;
    let target = new_leader.revision();
    eventually("the restarted hub to catch up", || restarted.revision() >= target).await;
    let want: Vec<Object> = new_leader.list(StoreKind::Site).await.unwrap();
    assert_eq!(want.len(), 16);
    assert_eq!(restarted.list_local(StoreKind::Site).unwrap(), want);
    eventually("the restarted hub to learn the leader", || {
        *restarted.leader().borrow() == Some(new_leader_id)
    })
    .await;
    stores.insert(leader_id, restarted);

    for store in stores.values() {
        store.shutdown().await.unwrap();
    }
}

/// A TLS connection to node `id` at `addr` offering only Raft frames, or `None` when the
/// handshake fails.
async fn frame_connection(
    tls: &hub_store::PeerTls,
    id: NodeId,
    addr: std::net::SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = rustls::ClientConfig::clone(&tls.client);
    config.alpn_protocols = vec![b"flotilla-raft/1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(hub_store::peer_name(id)).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.ok()
}

/// The server closes the connection: no byte of an answer, ever.
async fn assert_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the server answered {n} bytes"),
        Err(_) => panic!("the server kept the connection open"),
    }
}
