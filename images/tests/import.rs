//! Importing OCI image layouts: from directories and archives, and refusing broken or
//! hostile ones with errors that say what is wrong.

mod common;

use common::*;
use images::build::{self, ImageLayoutWriter, LayerBuilder};
use images::layout::{self, ImportLimits, LayoutError};
use images::oci::{self, ImageIndex};
use images::{BlobStore, Digest, ImportedImage};
use serde_json::Value;
use std::fs;
use std::io::Write;
use std::path::Path;

fn import_dir(dir: &Path) -> Result<ImportedImage, LayoutError> {
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    layout::import_dir(dir, &store, &ImportLimits::default())
}

fn import_bytes(bytes: &[u8]) -> Result<ImportedImage, LayoutError> {
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    layout::import_archive(bytes, &store, &ImportLimits::default())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn blob_path(dir: &Path, d: &Digest) -> std::path::PathBuf {
    dir.join("blobs/sha256").join(d.hex())
}

fn check_sample(image: &ImportedImage, sample: &Sample, store: &BlobStore) {
    assert_eq!(image.index_digest, sample.index_digest);
    assert_eq!(image.ref_name.as_deref(), Some("sample:1.0"));
    assert_eq!(image.platforms.len(), 1);
    let p = &image.platforms[0];
    assert_eq!((p.os.as_str(), p.architecture.as_str(), p.variant.as_str()), ("linux", "amd64", ""));
    assert_eq!(p.manifest_digest, sample.manifest.digest);
    let layer_digests: Vec<_> = p.layers.iter().map(|l| l.digest).collect();
    assert_eq!(layer_digests, sample.layers.iter().map(|l| l.digest).collect::<Vec<_>>());
    assert_eq!(p.diff_ids, sample.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>());
    let run = &p.run_config;
    assert_eq!(run.entrypoint, ["/bin/app"]);
    assert_eq!(run.cmd, ["--serve"]);
    assert_eq!(run.env, ["PATH=/bin", "MODE=test"]);
    assert_eq!(run.working_dir, "/srv");
    assert_eq!(run.user, "65534:65534");
    let config_size = store.size(&p.config_digest).unwrap();
    let layers_size: u64 = sample.layers.iter().map(|l| l.bytes.len() as u64).sum();
    assert_eq!(p.total_size, sample.manifest.size + config_size + layers_size);
    assert_eq!(image.blobs.len(), 5, "index, manifest, config and two layers");
    for d in &image.blobs {
        store.verify(d).unwrap();
    }
    assert!(image.unreferenced_blobs.is_empty());
    let spec = image.to_image_spec();
    assert_eq!(spec.digest, sample.index_digest.to_string());
    assert_eq!(spec.platforms[0].manifest_digest, sample.manifest.digest.to_string());
    assert_eq!(spec.platforms[0].size, p.total_size);
    assert!(image.platform("linux", "amd64", "").is_some());
    assert!(image.platform("linux", "arm64", "").is_none());
}

#[test]
fn imports_from_directory_tar_and_tar_gz_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let sample = sample_layout(&dir);
    let tar = archive_of(&dir);
    let tar_path = tmp.path().join("image.tar");
    fs::write(&tar_path, &tar).unwrap();
    let gz_path = tmp.path().join("image.tar.gz");
    fs::write(&gz_path, gzip(&tar)).unwrap();

    for source in [&dir, &tar_path, &gz_path] {
        let store_dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(store_dir.path()).unwrap();
        let image = layout::import_path(source, &store, &ImportLimits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        check_sample(&image, &sample, &store);
        // Importing again into the same store changes nothing.
        let again = layout::import_path(source, &store, &ImportLimits::default()).unwrap();
        assert_eq!(again, image);
    }
}

#[test]
fn reports_blobs_nothing_references() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    sample_layout(&dir);
    let stray = b"left over from another image";
    fs::write(blob_path(&dir, &Digest::of(stray)), stray).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let image = layout::import_archive(&archive_of(&dir)[..], &store, &ImportLimits::default()).unwrap();
    assert_eq!(image.unreferenced_blobs, vec![Digest::of(stray)]);
    // A directory import copies only what is referenced.
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let image = layout::import_dir(&dir, &store, &ImportLimits::default()).unwrap();
    assert!(image.unreferenced_blobs.is_empty());
    assert!(!store.contains(&Digest::of(stray)));
}

#[test]
fn missing_blob_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let sample = sample_layout(&dir);
    fs::remove_file(blob_path(&dir, &sample.layers[1].digest)).unwrap();
    for err in [import_dir(&dir).unwrap_err(), import_bytes(&archive_of(&dir)).unwrap_err()] {
        assert!(matches!(err, LayoutError::Missing { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("manifest {}: layers[1]", sample.manifest.digest)), "{msg}");
        assert!(msg.contains(&sample.layers[1].digest.to_string()), "{msg}");
    }
}

#[test]
fn blob_with_wrong_content_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let sample = sample_layout(&dir);
    let path = blob_path(&dir, &sample.layers[0].digest);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let err = import_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("does not match its digest"), "{err}");
    assert!(err.to_string().contains("layers[0]"), "{err}");
    let err = import_bytes(&archive_of(&dir)).unwrap_err();
    assert!(err.to_string().contains("does not match its digest"), "{err}");
    assert!(err.to_string().contains(&format!("blobs/sha256/{}", sample.layers[0].digest.hex())), "{err}");
}

#[test]
fn descriptor_with_wrong_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    sample_layout(&dir);
    edit_json(&dir.join("index.json"), |v| {
        let size = v["manifests"][0]["size"].as_u64().unwrap();
        v["manifests"][0]["size"] = (size + 1).into();
    });
    for err in [import_dir(&dir).unwrap_err(), import_bytes(&archive_of(&dir)).unwrap_err()] {
        let msg = err.to_string();
        assert!(msg.starts_with("index.json: manifests[0]"), "{msg}");
        assert!(msg.contains("bytes but its descriptor says"), "{msg}");
    }
}

#[test]
fn malformed_digest_in_index_is_named_by_its_json_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    sample_layout(&dir);
    edit_json(&dir.join("index.json"), |v| v["manifests"][0]["digest"] = "sha256:NOTHEX".into());
    let err = import_dir(&dir).unwrap_err().to_string();
    assert!(err.starts_with("index.json: manifests[0].digest: invalid digest"), "{err}");
}

#[test]
fn oversized_index_is_refused_before_parsing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    sample_layout(&dir);
    let mut index = fs::read(dir.join("index.json")).unwrap();
    index.extend(std::iter::repeat_n(b' ', 5 << 20));
    fs::write(dir.join("index.json"), &index).unwrap();
    for err in [import_dir(&dir).unwrap_err(), import_bytes(&archive_of(&dir)).unwrap_err()] {
        assert!(matches!(&err, LayoutError::TooLarge { what, .. } if what == "index.json"), "{err}");
    }
}

#[test]
fn limits_bound_layers_and_blob_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    sample_layout(&dir);
    let store_dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(store_dir.path()).unwrap();
    let limits = ImportLimits { max_layers: 1, ..Default::default() };
    let err = layout::import_dir(&dir, &store, &limits).unwrap_err().to_string();
    assert!(err.contains("2 layers, more than the limit of 1"), "{err}");
    let limits = ImportLimits { max_blob_size: 64, ..Default::default() };
    let err = layout::import_archive(&archive_of(&dir)[..], &store, &limits).unwrap_err();
    assert!(matches!(err, LayoutError::TooLarge { limit: 64, .. }), "{err}");
}

#[test]
fn hostile_archive_entries_are_refused() {
    let layout_file = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (raw_tar(&[Raw::File("../evil", b"x"), Raw::File("oci-layout", layout_file)]), "`..`"),
        (raw_tar(&[Raw::File("blobs/../../evil", b"x")]), "`..`"),
        (raw_tar(&[Raw::File("/etc/evil", b"x")]), "absolute"),
        (raw_tar(&[Raw::Symlink("index.json", "/etc/passwd")]), "symlink"),
        (raw_tar(&[Raw::Hardlink("index.json", "/etc/shadow")]), "hard link"),
        (raw_tar(&[Raw::Fifo("oci-layout")]), "unsupported entry type"),
        (raw_tar(&[Raw::File("blobs/sha256/ABC", b"x")]), "64 lowercase hex"),
        (raw_tar(&[Raw::File("blobs/sha512/abc", b"x")]), "only sha256"),
        (raw_tar(&[Raw::File("index.json", b"{}"), Raw::File("./index.json", b"{}")]), "appears twice"),
    ];
    for (tar, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().join("store")).unwrap();
        let err = layout::import_archive(&tar[..], &store, &ImportLimits::default()).unwrap_err();
        assert!(matches!(err, LayoutError::Entry { .. }), "{err}");
        assert!(err.to_string().contains(expected), "{err} (expected {expected:?})");
        // Nothing lands anywhere but the store.
        let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["store"]);
        assert!(store.list().unwrap().is_empty());
    }
}

#[test]
fn archives_that_are_not_layouts_get_a_hint() {
    // docker-archive: legacy layer links are skipped, not refused, so the hint is reached.
    let docker =
        raw_tar(&[Raw::File("manifest.json", b"[]"), Raw::Symlink("abc/layer.tar", "../def/layer.tar")]);
    let err = import_bytes(&docker).unwrap_err().to_string();
    assert!(err.contains("docker-archive"), "{err}");
    let err = import_bytes(&raw_tar(&[Raw::File("hello.txt", b"hi")])).unwrap_err().to_string();
    assert!(err.contains("has no oci-layout"), "{err}");
    let err =
        import_bytes(b"definitely not a tar archive, just some text that goes on for a while").unwrap_err();
    assert!(!err.to_string().is_empty());
    let err = import_bytes(&raw_tar(&[Raw::File("oci-layout", br#"{"imageLayoutVersion":"2.0.0"}"#)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn symlinked_blob_in_a_layout_directory_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let sample = sample_layout(&dir);
    let path = blob_path(&dir, &sample.layers[0].digest);
    let elsewhere = tmp.path().join("elsewhere");
    fs::rename(&path, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let err = import_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("symlink"), "{err}");
}

fn two_platform_layout(dir: &Path, nested: bool, second_ref: &str) -> (Digest, Digest) {
    let mut writer = ImageLayoutWriter::create(dir).unwrap();
    let mut layer = LayerBuilder::new();
    layer.file("hello", "hi", 0o644);
    let layer = layer.build().unwrap();
    let mut amd = sample_config();
    amd.architecture = "amd64".into();
    let mut arm = sample_config();
    arm.architecture = "arm".into();
    arm.variant = Some("v7".into());
    let a = writer.add_image(amd, std::slice::from_ref(&layer), None).unwrap();
    let b = writer.add_image(arm, std::slice::from_ref(&layer), None).unwrap();
    let manifests = vec![a.clone(), b.clone()];
    let top = if nested {
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(oci::MEDIA_TYPE_OCI_INDEX.into()),
            manifests,
            annotations: Default::default(),
        };
        let mut d = writer.add_blob(oci::MEDIA_TYPE_OCI_INDEX, &serde_json::to_vec(&index).unwrap()).unwrap();
        d.annotations.insert(oci::ANNOTATION_REF_NAME.into(), "multi:1".into());
        vec![d]
    } else {
        let mut a = a.clone();
        a.annotations.insert(oci::ANNOTATION_REF_NAME.into(), "multi:1".into());
        let mut b = b.clone();
        b.annotations.insert(oci::ANNOTATION_REF_NAME.into(), second_ref.into());
        vec![a, b]
    };
    // finish() would list the two manifests; write our own index.json instead.
    drop(writer);
    let index =
        ImageIndex { schema_version: 2, media_type: None, manifests: top, annotations: Default::default() };
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (a.digest, b.digest)
}

#[test]
fn resolves_multi_platform_indexes_flat_and_nested() {
    for nested in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let (amd, arm) = two_platform_layout(&dir, nested, "multi:1");
        let image = import_bytes(&archive_of(&dir)).unwrap();
        assert_eq!(image.ref_name.as_deref(), Some("multi:1"));
        let got: Vec<_> = image
            .platforms
            .iter()
            .map(|p| (p.architecture.as_str(), p.variant.as_str(), p.manifest_digest))
            .collect();
        assert_eq!(got, [("amd64", "", amd), ("arm", "v7", arm)]);
        assert_eq!(image.platform("linux", "arm", "v7").unwrap().manifest_digest, arm);
        // Shared layer and shared config count once.
        assert_eq!(image.blobs.len(), if nested { 7 } else { 6 }, "{:?}", image.blobs);
    }
}

#[test]
fn an_index_naming_two_images_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    two_platform_layout(&dir, false, "other:2");
    let err = import_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("several images (multi:1, other:2)"), "{err}");
}

#[test]
fn same_inputs_give_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = sample_layout(&tmp.path().join("a"));
    let b = sample_layout(&tmp.path().join("b"));
    assert_eq!(a.index_digest, b.index_digest);
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(archive_of(&tmp.path().join("a")), archive_of(&tmp.path().join("b")));
    // The gzip header carries no time or name: only the level byte and OS 255.
    assert_eq!(&a.layers[0].bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);

    let one = images::testing::busybox_image(&tmp.path().join("one.tar"), "bb:1", &["/bin/sh"]).unwrap();
    let two = images::testing::busybox_image(&tmp.path().join("two.tar"), "bb:1", &["/bin/sh"]).unwrap();
    assert_eq!(one.index_digest, two.index_digest);
    assert_eq!(fs::read(&one.path).unwrap(), fs::read(&two.path).unwrap());
    let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "scratch files left behind: {names:?}");
}

#[test]
fn busybox_test_image_imports_with_its_entrypoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bb.tar");
    let written = images::testing::busybox_image(&out, "bb:test", &["/bin/sh", "-c", "echo hi"]).unwrap();
    assert_eq!(written.size, fs::metadata(&out).unwrap().len());
    let store = BlobStore::open(tmp.path().join("store")).unwrap();
    let image = layout::import_path(&out, &store, &ImportLimits::default()).unwrap();
    assert_eq!(image.index_digest, written.index_digest);
    assert_eq!(image.ref_name.as_deref(), Some("bb:test"));
    let p = &image.platforms[0];
    assert_eq!(p.manifest_digest, written.manifest_digest);
    assert_eq!(p.architecture, oci::host_architecture());
    assert_eq!(p.run_config.entrypoint, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(p.run_config.env, ["PATH=/usr/bin:/bin"]);
}

#[test]
fn write_archive_lists_only_layout_files_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    sample_layout(&dir);
    fs::write(dir.join("notes.txt"), "not part of the layout").unwrap();
    let tar = build::write_archive(&dir, Vec::new(), 7).unwrap();
    let mut archive = tar::Archive::new(&tar[..]);
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.header().mtime().unwrap(), 7);
        assert_eq!(entry.header().uid().unwrap(), 0);
        names.push(String::from_utf8(entry.path_bytes().into_owned()).unwrap());
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(names[names.len() - 2..], ["index.json", "oci-layout"]);
    assert!(!names.iter().any(|n| n.contains("notes")));
}
