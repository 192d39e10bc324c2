//! Archives whose headers claim huge sizes, against both archive parsers: image import
//! (the hub) and layer unpack (the agent). Each is refused with a clear error and the
//! process's peak memory grows by less than 64 MiB, although without the guard the
//! `tar` crate would read each claimed extension header whole into memory.
//!
//! One test in its own binary: peak RSS (`VmHWM`) is the process's, so nothing else
//! may run beside it.

use flate2::Compression as Level;
use flate2::write::GzEncoder;
use images::BlobStore;
use images::oci::{self, Descriptor};
use std::io::{self, Read, Write};

/// What the crafted headers claim, and what actually follows them (compressed, it is
/// a few hundred KiB).
const CLAIMED: u64 = 1 << 40;
const FOLLOWING: u64 = 256 << 20;
const GROWTH_LIMIT: u64 = 64 << 20;

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A gzip-compressed tar stream: an extension header of `typeflag` claiming
/// `CLAIMED` bytes, then `FOLLOWING` zero bytes.
fn bomb(typeflag: u8, name: &str) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name).unwrap();
    header.set_size(CLAIMED);
    header.set_entry_type(tar::EntryType::new(typeflag));
    header.set_mode(0o644);
    header.set_cksum();
    let mut gz = GzEncoder::new(Vec::new(), Level::fast());
    gz.write_all(header.as_bytes()).unwrap();
    io::copy(&mut io::repeat(0).take(FOLLOWING), &mut gz).unwrap();
    gz.finish().unwrap()
}

#[test]
fn headers_claiming_huge_sizes_are_refused_without_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs")).unwrap();
    let bombs: Vec<(u8, Vec<u8>)> =
        [b'x', b'g', b'L', b'K'].into_iter().map(|t| (t, bomb(t, "././@LongLink"))).collect();
    let before = peak_rss();

    // The hub: importing an image archive.
    for (typeflag, archive) in &bombs {
        let err = images::layout::import_archive(&archive[..], &store, &Default::default())
            .expect_err("a crafted archive must be refused");
        let text = format!("{err:#}");
        assert!(text.contains("claims") && text.contains("more than"), "type {}: {text}", *typeflag as char);
    }

    // The agent: unpacking a layer (gzip), fetched and verified like any other.
    for (typeflag, layer) in &bombs {
        let digest = store.put_bytes(layer).unwrap();
        let desc = Descriptor::new(oci::MEDIA_TYPE_OCI_LAYER_GZIP, digest, layer.len() as u64);
        let root = dir.path().join(format!("rootfs-{}", *typeflag as char));
        let err = images::unpack_layers(&store, &[desc], &root, &Default::default())
            .expect_err("a crafted layer must be refused");
        let text = format!("{err:#}");
        assert!(text.contains("claims") && text.contains("more than"), "type {}: {text}", *typeflag as char);
        assert!(!root.exists(), "a refused layer leaves nothing behind");
    }

    let growth = peak_rss().saturating_sub(before);
    assert!(growth < GROWTH_LIMIT, "peak memory grew by {} MiB", growth >> 20);
}
