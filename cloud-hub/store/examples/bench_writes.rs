//! Measures single-node write latency and throughput of the store on this machine: sequential
//! `write()`s of a ~256-byte Site, then the same with 16 concurrent writers.
//!
//! `cargo run -p hub-store --release --example bench_writes [n_writes] [data_dir]`
//! (the data dir defaults to a fresh temp dir; pass one on the disk you want to measure).
//! After each phase it prints the store file's size beside the live objects' encoded
//! size: the first phase writes `n_writes` distinct objects, the second updates each once.

use hub_store::{Store, StoreConfig};
use shared_proto::store::{Object, Precondition, StoreCommand};
use shared_proto::{ObjectMeta, Site, SiteSpec};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const N_WRITERS: usize = 16;

fn site(i: usize) -> Object {
    let mut meta = ObjectMeta::named(format!("site-{i:06}"));
    meta.labels.insert("region".into(), "eu-west".into());
    meta.labels.insert("tier".into(), "retail".into());
    let spec = SiteSpec {
        display_name: format!("Store number {i:06} on the high street"),
        location: "Unit 4, 221 High Street, Market Harborough, Leicestershire LE16 7AB, UK".repeat(2),
    };
    Object::Site(Site::new(meta, spec))
}

fn summary(label: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "{label}: {} writes in {:.2?}: {:.0} writes/s, latency median {:.2?}, p99 {:.2?}, max {:.2?}",
        latencies.len(),
        elapsed,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        latencies[latencies.len() - 1],
    );
}

/// The store file's, the raft log's and the snapshot's sizes beside the live objects' encoded
/// size.
fn sizes(store: &Store, file: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let objects = store.list_local(shared_proto::store::StoreKind::Site)?;
    let mut live = 0usize;
    for o in &objects {
        live += o.encode()?.len();
    }
    let on_disk = std::fs::metadata(file)?.len();
    let dir_bytes = |name: &str| -> std::io::Result<u64> {
        let mut n = 0;
        if let Some(dir) = file.parent() {
            for item in std::fs::read_dir(dir.join(name))? {
                n += item?.metadata()?.len();
            }
        }
        Ok(n)
    };
    let (log, snapshot) = (dir_bytes("raft-log")?, dir_bytes("snapshots")?);
    println!(
        "  store file {:.1} MB, raft log {:.1} MB, snapshot {:.1} MB for {} objects of {:.1} MB live ({:.1}x)",
        on_disk as f64 / 1e6,
        log as f64 / 1e6,
        snapshot as f64 / 1e6,
        objects.len(),
        live as f64 / 1e6,
        (on_disk + log + snapshot) as f64 / live.max(1) as f64
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n_writes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2000);
    let tmp = tempfile::tempdir()?;
    let data_dir: std::path::PathBuf =
        args.next().map(Into::into).unwrap_or_else(|| tmp.path().to_path_buf());
    let file = data_dir.join(hub_store::DB_FILE_NAME);
    println!("object size: {} bytes encoded", site(0).encode()?.len());

    let store = Store::open(StoreConfig {
        data_dir,
        node_id: 1,
        raft_addr: None,
        initial_members: BTreeMap::new(),
        peer_tls: None,
    })
    .await?;

    // Warm up: the first writes also create the tables' pages.
    for i in 0..50 {
        store.write(StoreCommand::put(site(1_000_000 + i), Precondition::None)).await?;
    }

    let mut latencies = Vec::with_capacity(n_writes);
    let started = Instant::now();
    for i in 0..n_writes {
        let t = Instant::now();
        store.write(StoreCommand::put(site(i), Precondition::None)).await?;
        latencies.push(t.elapsed());
    }
    summary("sequential", latencies, started.elapsed());
    sizes(&store, &file)?;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..N_WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (w..n_writes).step_by(N_WRITERS) {
                let t = Instant::now();
                store.write(StoreCommand::put(site(i), Precondition::None)).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, hub_store::StoreError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(n_writes);
    for task in tasks {
        latencies.extend(task.await??);
    }
    summary(&format!("{N_WRITERS} concurrent writers"), latencies, started.elapsed());
    sizes(&store, &file)?;
    store.shutdown().await?;
    Ok(())
}
