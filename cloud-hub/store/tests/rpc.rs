//! The Raft RPC listener refuses malformed and misdirected requests with a 4xx for that request
//! alone; the node keeps serving.

mod common;

use common::*;
use hub_store::Store;
use shared_proto::store::Precondition as P;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rpcs_are_refused_and_the_node_keeps_serving() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let members = BTreeMap::from([(1, addr.to_string())]);
    let store =
        Store::open_with_tuning(node_config(dir.path(), 1, addr, &members), test_tuning()).await.unwrap();
    assert!(store.is_leader());
    let before = applied(store.write(put(site("a", ""), P::None)).await.unwrap());

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let post = |path: &str, node: Option<&str>, body: Vec<u8>| {
        let mut req = client.post(format!("http://{addr}{path}")).body(body);
        if let Some(node) = node {
            req = req.header("x-flotilla-raft-node", node);
        }
        req.send()
    };
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("/raft/append", Some("1"), vec![0xff; 64], 400),
        ("/raft/append", Some("1"), Vec::new(), 400),
        ("/raft/vote", Some("1"), b"not postcard".to_vec(), 400),
        ("/raft/pre-vote", Some("1"), vec![1, 0, 0], 400),
        ("/raft/snapshot", Some("1"), vec![1, 2, 3, 4, 5], 400),
        ("/raft/append", None, vec![0xff; 64], 400),
        ("/raft/append", Some("not-a-number"), vec![0xff; 64], 400),
        ("/raft/vote", Some("2"), vec![0xff; 64], 421),
        ("/raft/nope", Some("1"), Vec::new(), 404),
    ];
    for (path, node, body, want) in cases {
        let status = post(path, node, body).await.unwrap().status().as_u16();
        assert_eq!(status, want, "{path} with node header {node:?}");
    }

    // Still the leader, still writing.
    assert!(store.is_leader());
    let after = applied(store.write(put(site("b", ""), P::None)).await.unwrap());
    assert!(after > before);
    store.shutdown().await.unwrap();
}
