//! Helpers shared by the integration tests: raw tars that skip the tar crate's path
//! checks (to play an attacker), and a small sample image.
#![allow(dead_code)]

use images::build::{self, ImageLayoutWriter, LayerBuilder};
use images::oci::{self, ContainerConfig, Descriptor, ImageConfig};
use images::{BlobStore, Digest};
use std::path::Path;

/// One raw tar entry; names are written into the header verbatim.
pub enum Raw<'a> {
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32, u64),
    Dir(&'a str),
    DirMode(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    CharDevice(&'a str, u32, u32),
}

pub fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        let (name, data, link): (&str, &[u8], Option<&str>) = match entry {
            Raw::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, d, None)
            }
            Raw::FileMode(n, d, mode, uid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*uid);
                (n, d, None)
            }
            Raw::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, &[], None)
            }
            Raw::DirMode(n, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                (n, &[], None)
            }
            Raw::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                (n, &[], Some(t))
            }
            Raw::Hardlink(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                (n, &[], Some(t))
            }
            Raw::Fifo(n) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o600);
                (n, &[], None)
            }
            Raw::CharDevice(n, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (n, &[], None)
            }
        };
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        assert!(name.len() <= 100, "raw names must fit the header");
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            old.linkname = [0; 100];
            old.linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_cksum();
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Stores `bytes` as an uncompressed layer and describes it.
pub fn raw_layer(store: &BlobStore, bytes: &[u8]) -> Descriptor {
    let digest = store.put_bytes(bytes).unwrap();
    Descriptor::new(oci::MEDIA_TYPE_OCI_LAYER, digest, bytes.len() as u64)
}

pub struct Sample {
    pub index_digest: Digest,
    pub manifest: Descriptor,
    pub layers: Vec<build::BuiltLayer>,
}

pub fn sample_config() -> ImageConfig {
    ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: Some(ContainerConfig {
            entrypoint: Some(vec!["/bin/app".into()]),
            cmd: Some(vec!["--serve".into()]),
            env: Some(vec!["PATH=/bin".into(), "MODE=test".into()]),
            working_dir: Some("/srv".into()),
            user: Some("65534:65534".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn sample_layers() -> Vec<build::BuiltLayer> {
    let mut base = LayerBuilder::new().mtime(1_700_000_000);
    base.file("bin/app", "#!/bin/sh\necho hi\n", 0o755).dir("srv", 0o755).file("etc/motd", "hello\n", 0o644);
    let mut top = LayerBuilder::new().mtime(1_700_000_000);
    top.file("srv/index.html", "<h1>hi</h1>", 0o644).whiteout("etc/motd");
    vec![base.build().unwrap(), top.build().unwrap()]
}

/// Writes the sample image as a layout directory at `dir`.
pub fn sample_layout(dir: &Path) -> Sample {
    let layers = sample_layers();
    let mut writer = ImageLayoutWriter::create(dir).unwrap();
    let manifest = writer.add_image(sample_config(), &layers, Some("sample:1.0")).unwrap();
    let index_digest = writer.finish().unwrap();
    Sample { index_digest, manifest, layers }
}

pub fn archive_of(dir: &Path) -> Vec<u8> {
    build::write_archive(dir, Vec::new(), 0).unwrap()
}
