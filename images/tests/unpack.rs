//! Unpacking layers into a root filesystem: whiteouts, links, devices, verification,
//! and above all that no entry can write outside the root.

mod common;

use common::*;
use images::build::LayerBuilder;
use images::oci::{self, Compression, Descriptor};
use images::unpack::{self, UnpackError, UnpackOptions, UnpackReport};
use images::{BlobStore, Digest};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A temp dir laid out as `store/`, `outside/secret` and the target `rootfs`, so that a
/// test can check nothing but `rootfs` changed.
struct Sandbox {
    tmp: tempfile::TempDir,
    store: BlobStore,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().join("store")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/secret"), "untouched").unwrap();
        fs::set_permissions(tmp.path().join("outside"), fs::Permissions::from_mode(0o750)).unwrap();
        Sandbox { tmp, store }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("rootfs")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    fn layer(&self, entries: &[Raw<'_>]) -> Descriptor {
        raw_layer(&self.store, &raw_tar(entries))
    }

    fn built(&self, layer: &LayerBuilder) -> Descriptor {
        let built = layer.build().unwrap();
        self.store.put_bytes(&built.bytes).unwrap();
        built.descriptor()
    }

    fn unpack(&self, layers: &[Descriptor]) -> Result<UnpackReport, UnpackError> {
        unpack::unpack_layers(&self.store, layers, &self.root(), &UnpackOptions::default())
    }

    /// Everything outside `rootfs` and `store` is as `new` made it, and no temp dir is left.
    fn assert_outside_untouched(&self) {
        let mut names: Vec<_> = fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names.retain(|n| n != "rootfs");
        assert_eq!(names, ["outside", "store"], "stray entries next to the rootfs");
        let outside: Vec<_> = fs::read_dir(self.outside()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(outside, ["secret"]);
        assert_eq!(fs::read_to_string(self.outside().join("secret")).unwrap(), "untouched");
        let meta = fs::metadata(self.outside()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(fs::metadata(self.outside().join("secret")).unwrap().nlink(), 1);
    }

    fn assert_refused(&self, layers: &[Descriptor], expected: &str) {
        let err = self.unpack(layers).expect_err("hostile layer was unpacked");
        assert!(err.to_string().contains(expected), "{err} (expected {expected:?})");
        assert!(!self.root().exists(), "a failed unpack left the target behind");
        self.assert_outside_untouched();
    }
}

fn am_root() -> bool {
    let tmp = tempfile::tempfile().unwrap();
    tmp.metadata().unwrap().uid() == 0
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p)).unwrap()
}

#[test]
fn unpacks_files_dirs_links_modes_and_times() {
    let sb = Sandbox::new();
    let layer = sb.layer(&[
        Raw::DirMode("etc/", 0o750),
        Raw::FileMode("etc/conf", b"setting=1\n", 0o640, 1000),
        Raw::FileMode("bin/tool", b"#!/bin/sh\n", 0o4755, 0),
        Raw::Symlink("bin/alias", "tool"),
        Raw::Symlink("abs", "/etc/conf"),
        Raw::Hardlink("etc/conf.bak", "etc/conf"),
        Raw::Fifo("run/pipe"),
    ]);
    let report = sb.unpack(&[layer]).unwrap();
    let root = sb.root();
    assert_eq!(read(&root, "etc/conf"), "setting=1\n");
    assert_eq!(fs::metadata(root.join("etc")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(fs::metadata(root.join("etc/conf")).unwrap().permissions().mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(root.join("bin/tool")).unwrap().permissions().mode() & 0o7777, 0o4755);
    assert_eq!(fs::read_link(root.join("bin/alias")).unwrap(), Path::new("tool"));
    // Created as written, even though it points outside: it only resolves in the container.
    assert_eq!(fs::read_link(root.join("abs")).unwrap(), Path::new("/etc/conf"));
    let conf = fs::metadata(root.join("etc/conf")).unwrap();
    assert_eq!(conf.ino(), fs::metadata(root.join("etc/conf.bak")).unwrap().ino());
    assert_eq!(conf.mtime(), 1_000_000);
    assert_eq!(
        fs::metadata(root.join("etc")).unwrap().mtime(),
        1_000_000,
        "dir mtime set after its children"
    );
    assert!(fs::symlink_metadata(root.join("run/pipe")).unwrap().file_type().is_fifo());
    // Implicit parents are plain 0755 directories.
    assert_eq!(fs::metadata(root.join("bin")).unwrap().permissions().mode() & 0o7777, 0o755);
    if am_root() {
        assert_eq!((conf.uid(), conf.gid()), (1000, 1000));
    }
    // 10 + 10 bytes of files (the hard link once) and the two symlinks' targets.
    assert_eq!(report.size, 10 + 10 + 4 + 9);
    assert_eq!(report.n_entries, 7);
    sb.assert_outside_untouched();
}

#[test]
fn whiteouts_hide_lower_layers_only() {
    let sb = Sandbox::new();
    let lower = sb.layer(&[
        Raw::File("a/x", b"x"),
        Raw::File("a/y", b"y"),
        Raw::File("c", b"c"),
        Raw::File("d/deep/file", b"deep"),
        Raw::File("kept", b"old"),
    ]);
    let upper = sb.layer(&[
        Raw::File("a/.wh.x", b""),
        Raw::File(".wh.c", b""),
        Raw::File(".wh.d", b""),
        Raw::File(".wh.missing", b""),
        // Same layer: the entry wins over its whiteout, whichever comes first.
        Raw::File("kept", b"new"),
        Raw::File(".wh.kept", b""),
        Raw::File("a/.wh..wh.plnk", b""),
    ]);
    sb.unpack(&[lower, upper]).unwrap();
    let root = sb.root();
    assert!(!root.join("a/x").exists());
    assert_eq!(read(&root, "a/y"), "y");
    assert!(!root.join("c").exists());
    assert!(!root.join("d").exists());
    assert_eq!(read(&root, "kept"), "new");
    assert!(!root.join("a/.wh..wh.plnk").exists() && !root.join(".wh.c").exists());
    sb.assert_outside_untouched();
}

#[test]
fn opaque_directories_drop_lower_content_but_keep_their_own() {
    let sb = Sandbox::new();
    let lower = sb.layer(&[
        Raw::File("d/old", b"old"),
        Raw::File("d/sub/old2", b"old2"),
        Raw::File("d/sub/also_old", b"x"),
        Raw::File("e/untouched", b"e"),
    ]);
    // Entries before and after the marker: both are this layer's and stay.
    let upper = sb.layer(&[
        Raw::File("d/new", b"new"),
        Raw::File("d/.wh..wh..opq", b""),
        Raw::File("d/sub/keep", b"keep"),
    ]);
    sb.unpack(&[lower, upper]).unwrap();
    let root = sb.root();
    let mut names: Vec<_> = walk(&root);
    names.sort();
    assert_eq!(names, ["d", "d/new", "d/sub", "d/sub/keep", "e", "e/untouched"]);
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn go(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                go(base, &e.path(), out);
            }
        }
    }
    go(root, root, &mut out);
    out
}

#[test]
fn later_layers_replace_entries_of_another_type() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let lower = sb.layer(&[
        Raw::File("f", b"file"),
        Raw::Dir("d/"),
        Raw::File("d/child", b"c"),
        Raw::Symlink("link_to_outside", outside.to_str().unwrap()),
        Raw::Symlink("dir_link", outside.to_str().unwrap()),
    ]);
    let upper = sb.layer(&[
        Raw::Dir("f/"),
        Raw::File("d", b"now a file"),
        // Replacing a symlink writes a new file; it never writes through the link.
        Raw::File("link_to_outside", b"replaced"),
        Raw::DirMode("dir_link/", 0o700),
    ]);
    sb.unpack(&[lower, upper]).unwrap();
    let root = sb.root();
    assert!(fs::symlink_metadata(root.join("f")).unwrap().is_dir());
    assert_eq!(read(&root, "d"), "now a file");
    assert!(fs::symlink_metadata(root.join("link_to_outside")).unwrap().is_file());
    assert_eq!(read(&root, "link_to_outside"), "replaced");
    assert!(fs::symlink_metadata(root.join("dir_link")).unwrap().is_dir());
    sb.assert_outside_untouched();
}

#[test]
fn symlink_escapes_are_refused() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let outside = outside.to_str().unwrap();
    // `a -> /…/outside` then `a/secret`: the write must not follow `a`.
    sb.assert_refused(
        &[sb.layer(&[Raw::Symlink("a", outside), Raw::File("a/secret", b"pwned")])],
        "symlink \"a\"",
    );
    sb.assert_refused(
        &[sb.layer(&[Raw::Symlink("a", "../outside"), Raw::File("a/new", b"pwned")])],
        "symlink",
    );
    // The same split over two layers.
    let lower = sb.layer(&[Raw::Symlink("etc", outside)]);
    let upper = sb.layer(&[Raw::File("etc/secret", b"pwned")]);
    sb.assert_refused(&[lower.clone(), upper], "links are never followed");
    // A symlink further down the path.
    sb.assert_refused(
        &[sb.layer(&[Raw::Dir("x/"), Raw::Symlink("x/y", outside), Raw::Dir("x/y/z/")])],
        "\"x/y\"",
    );
    // Whiteouts and opaque markers must not reach through links either.
    sb.assert_refused(&[lower.clone(), sb.layer(&[Raw::File("etc/.wh.secret", b"")])], "symlink");
    sb.assert_refused(&[lower, sb.layer(&[Raw::File("etc/.wh..wh..opq", b"")])], "symlink");
}

#[test]
fn dot_dot_and_absolute_paths_are_refused() {
    let sb = Sandbox::new();
    sb.assert_refused(&[sb.layer(&[Raw::File("../x", b"pwned")])], "`..`");
    sb.assert_refused(&[sb.layer(&[Raw::File("a/../../outside/secret", b"pwned")])], "`..`");
    sb.assert_refused(&[sb.layer(&[Raw::File("/abs", b"pwned")])], "absolute");
    sb.assert_refused(&[sb.layer(&[Raw::File("../.wh.outside", b"")])], "`..`");
    sb.assert_refused(&[sb.layer(&[Raw::File(".wh...", b"")])], "whiteout names no file");
}

#[test]
fn hard_links_must_stay_inside_and_exist() {
    let sb = Sandbox::new();
    let secret = sb.outside().join("secret");
    let secret = secret.to_str().unwrap();
    sb.assert_refused(&[sb.layer(&[Raw::Hardlink("h", "../outside/secret")])], "`..`");
    sb.assert_refused(&[sb.layer(&[Raw::Hardlink("h", secret)])], "absolute");
    let outside = sb.outside();
    sb.assert_refused(
        &[sb.layer(&[Raw::Symlink("l", outside.to_str().unwrap()), Raw::Hardlink("h", "l/secret")])],
        "symlink",
    );
    sb.assert_refused(&[sb.layer(&[Raw::Hardlink("h", "not/there")])], "does not exist");
    sb.assert_refused(&[sb.layer(&[Raw::Dir("d/"), Raw::Hardlink("h", "d")])], "is a directory");
    // A hard link to a symlink links the symlink itself.
    sb.unpack(&[sb.layer(&[Raw::Symlink("l", secret), Raw::Hardlink("h", "l")])]).unwrap();
    assert_eq!(fs::read_link(sb.root().join("h")).unwrap(), Path::new(secret));
    sb.assert_outside_untouched();
}

#[test]
fn corrupt_layer_fails_verification_and_leaves_nothing() {
    let sb = Sandbox::new();
    let layer = sb.layer(&[Raw::File("a", b"hello"), Raw::File("b", b"world")]);
    let path = sb.store.path(&layer.digest);
    let mut bytes = fs::read(&path).unwrap();
    let pos = bytes.windows(5).position(|w| w == b"world").unwrap();
    bytes[pos] = b'W';
    fs::write(&path, &bytes).unwrap();
    let err = sb.unpack(&[layer]).unwrap_err();
    assert!(matches!(err, UnpackError::Verify { .. }), "{err}");
    assert!(err.to_string().contains("does not match its digest"), "{err}");
    assert!(!sb.root().exists());
    sb.assert_outside_untouched();

    // A descriptor whose size lies is caught too.
    let mut layer = sb.layer(&[Raw::File("a", b"hello")]);
    layer.size -= 512;
    let err = sb.unpack(&[layer]).unwrap_err();
    assert!(matches!(err, UnpackError::Verify { .. }), "{err}");
    sb.assert_outside_untouched();
}

#[test]
fn gzip_and_zstd_layers_unpack_the_same() {
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let sb = Sandbox::new();
        let mut layer = LayerBuilder::new().compression(compression).mtime(42);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
        layer.file("data/big", big.clone(), 0o600).symlink("data/link", "big").dir("empty", 0o755);
        let desc = sb.built(&layer);
        assert_eq!(desc.kind(), oci::MediaKind::Layer(compression));
        sb.unpack(&[desc]).unwrap();
        assert_eq!(fs::read(sb.root().join("data/big")).unwrap(), big);
        assert_eq!(fs::metadata(sb.root().join("data/big")).unwrap().mtime(), 42);
        assert!(sb.root().join("empty").is_dir());
    }
}

#[test]
fn refuses_unknown_media_types_and_missing_blobs() {
    let sb = Sandbox::new();
    let mut desc = sb.layer(&[Raw::File("a", b"x")]);
    desc.media_type = "application/vnd.example.squashfs".into();
    let err = sb.unpack(&[desc]).unwrap_err();
    assert!(matches!(err, UnpackError::UnsupportedMediaType { .. }), "{err}");
    let missing = Descriptor::new(oci::MEDIA_TYPE_OCI_LAYER, Digest::of(b"never stored"), 12);
    let err = sb.unpack(&[missing]).unwrap_err();
    assert!(err.to_string().contains("is not in the store"), "{err}");
    sb.assert_outside_untouched();
}

#[test]
fn size_limit_stops_decompression_bombs() {
    let sb = Sandbox::new();
    let mut layer = LayerBuilder::new();
    layer.file("zeros", vec![0u8; 1 << 20], 0o644);
    let desc = sb.built(&layer);
    assert!(desc.size < 10_000, "the layer compresses well");
    let opts = UnpackOptions { max_unpacked_size: 512 << 10, ..Default::default() };
    let err = unpack::unpack_layers(&sb.store, &[desc], &sb.root(), &opts).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    sb.assert_outside_untouched();
}

#[test]
fn existing_target_is_refused_and_stale_partial_is_replaced() {
    let sb = Sandbox::new();
    let layer = sb.layer(&[Raw::File("a", b"x")]);
    // What an unpack killed midway leaves behind.
    fs::create_dir_all(sb.tmp.path().join(".rootfs.partial/half")).unwrap();
    sb.unpack(std::slice::from_ref(&layer)).unwrap();
    assert!(!sb.tmp.path().join(".rootfs.partial").exists());
    assert!(!sb.root().join("half").exists());
    let err = sb.unpack(&[layer]).unwrap_err();
    assert!(matches!(err, UnpackError::Exists(_)), "{err}");
    assert_eq!(read(&sb.root(), "a"), "x");
}

#[test]
fn remove_rootfs_does_not_follow_links() {
    let sb = Sandbox::new();
    let outside = sb.outside();
    let layer = sb.layer(&[
        Raw::Symlink("to_outside", outside.to_str().unwrap()),
        Raw::Hardlink("x", "to_outside"),
        Raw::DirMode("locked/", 0o000),
        Raw::File("locked/file", b"x"),
    ]);
    sb.unpack(&[layer]).unwrap();
    unpack::remove_rootfs(&sb.root()).unwrap();
    assert!(!sb.root().exists());
    sb.assert_outside_untouched();
    // Removing what is not there is fine; removing a file is not.
    unpack::remove_rootfs(&sb.root()).unwrap();
    fs::write(sb.root(), "file").unwrap();
    assert!(unpack::remove_rootfs(&sb.root()).is_err());
}

#[test]
fn device_nodes_are_made_as_root_and_skipped_otherwise() {
    let sb = Sandbox::new();
    let report = sb.unpack(&[sb.layer(&[Raw::CharDevice("dev/null", 1, 3)])]).unwrap();
    let path = sb.root().join("dev/null");
    if am_root() {
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_char_device());
        assert_eq!(meta.rdev(), (1 << 8) | 3);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    } else {
        assert!(!path.exists());
        assert!(report.warnings[0].contains("not permitted"), "{:?}", report.warnings);
    }
}

#[test]
fn imported_busybox_image_unpacks_to_a_usable_rootfs() {
    let sb = Sandbox::new();
    let archive = sb.tmp.path().join("store/bb.tar");
    images::testing::busybox_image(&archive, "bb:1", &["/bin/sh"]).unwrap();
    let image = images::import_path(&archive, &sb.store, &Default::default()).unwrap();
    let report = sb.unpack(&image.platforms[0].layers).unwrap();
    let root = sb.root();
    assert_eq!(fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(fs::read(root.join("bin/busybox")).unwrap(), fs::read(images::testing::BUSYBOX).unwrap());
    assert!(read(&root, "etc/passwd").starts_with("root:x:0:0:"));
    assert_eq!(fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    assert!(report.size > fs::metadata(images::testing::BUSYBOX).unwrap().len());
    let modes: BTreeMap<_, _> = ["proc", "sys", "dev", "run", "var"]
        .iter()
        .map(|d| (*d, fs::metadata(root.join(d)).unwrap().is_dir()))
        .collect();
    assert!(modes.values().all(|&is_dir| is_dir), "{modes:?}");
}

mod never_escapes {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Kind {
        File,
        Dir,
        Symlink(String),
        Hardlink(String),
        Whiteout,
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        // Mostly names that resolve, so that cases get far enough to try something.
        prop_oneof![
            8 => Just("a"),
            4 => Just("b"),
            1 => Just(".."),
            1 => Just("."),
            1 => Just(""),
            1 => Just("outside"),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (proptest::bool::weighted(0.1), proptest::collection::vec(segment(), 1..4), any::<bool>()).prop_map(
            |(absolute, parts, trailing)| {
                let mut p = parts.join("/");
                if absolute {
                    p.insert(0, '/');
                }
                if trailing {
                    p.push('/');
                }
                p
            },
        )
    }

    fn kind(outside: String) -> impl Strategy<Value = Kind> {
        let link_target = prop_oneof![
            3 => Just(outside.clone()),
            2 => Just(format!("{outside}/secret")),
            1 => Just("..".to_string()),
            2 => Just("../outside".to_string()),
            1 => Just("../../outside".to_string()),
            1 => Just("a".to_string()),
            1 => path(),
        ];
        prop_oneof![
            3 => Just(Kind::File),
            2 => Just(Kind::Dir),
            3 => link_target.clone().prop_map(Kind::Symlink),
            1 => link_target.prop_map(Kind::Hardlink),
            1 => Just(Kind::Whiteout),
        ]
    }

    fn layers(outside: String) -> impl Strategy<Value = Vec<Vec<(String, Kind)>>> {
        proptest::collection::vec(proptest::collection::vec((path(), kind(outside)), 1..10), 1..3)
    }

    fn to_tar(entries: &[(String, Kind)]) -> Vec<u8> {
        let names: Vec<String> = entries
            .iter()
            .map(|(p, k)| match k {
                Kind::Whiteout => match p.trim_end_matches('/').rsplit_once('/') {
                    Some((dir, name)) => format!("{dir}/.wh.{name}"),
                    None => format!(".wh.{}", p.trim_end_matches('/')),
                },
                _ => p.clone(),
            })
            .collect();
        let raws: Vec<Raw<'_>> = entries
            .iter()
            .zip(&names)
            .map(|((_, k), name)| match k {
                Kind::File | Kind::Whiteout => Raw::File(name, b"pwned"),
                Kind::Dir => Raw::DirMode(name, 0o777),
                Kind::Symlink(t) => Raw::Symlink(name, t),
                Kind::Hardlink(t) => Raw::Hardlink(name, t),
            })
            .collect();
        raw_tar(&raws)
    }

    /// One sandbox for the whole run, so that the strategies can aim links at its
    /// `outside` directory by absolute path; each case starts it afresh.
    fn sandbox() -> &'static Path {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn unpack_never_writes_outside_the_root(
            layers in layers(sandbox().join("outside").to_str().unwrap().to_string())
        ) {
            let base = sandbox();
            for name in ["rootfs", "store", "outside"] {
                unpack::remove_rootfs(&base.join(name)).unwrap();
            }
            fs::create_dir(base.join("outside")).unwrap();
            fs::write(base.join("outside/secret"), "untouched").unwrap();
            fs::set_permissions(base.join("outside"), fs::Permissions::from_mode(0o750)).unwrap();
            let store = BlobStore::open(base.join("store")).unwrap();
            let descs: Vec<Descriptor> = layers.iter().map(|l| raw_layer(&store, &to_tar(l))).collect();
            let result = unpack::unpack_layers(&store, &descs, &base.join("rootfs"), &UnpackOptions::default());

            let mut names: Vec<_> =
                fs::read_dir(base).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            names.sort();
            names.retain(|n| n != "rootfs");
            prop_assert_eq!(names, ["outside", "store"], "stray entries next to the rootfs");
            let outside: Vec<_> =
                fs::read_dir(base.join("outside")).unwrap().map(|e| e.unwrap().file_name()).collect();
            prop_assert_eq!(outside, ["secret"]);
            prop_assert_eq!(fs::read_to_string(base.join("outside/secret")).unwrap(), "untouched");
            prop_assert_eq!(fs::metadata(base.join("outside")).unwrap().permissions().mode() & 0o7777, 0o750);
            prop_assert_eq!(fs::metadata(base.join("outside/secret")).unwrap().nlink(), 1);
            prop_assert_eq!(result.is_ok(), base.join("rootfs").exists());
        }
    }
}

#[test]
fn an_image_that_would_eat_the_disk_reserve_is_refused_and_leaves_nothing() {
    const BIG: usize = 64 << 20;
    let sb = Sandbox::new();
    // 64 MiB of zeros, a few dozen KiB compressed.
    let mut builder = LayerBuilder::new().compression(Compression::Gzip);
    builder.file("small", &b"hello"[..], 0o644).file("big", vec![0u8; BIG], 0o644);
    let layer = sb.built(&builder);
    let free = || {
        let st = rustix::fs::statvfs(sb.tmp.path()).unwrap();
        st.f_bavail * st.f_frsize
    };
    // Checked before the first layer, against the compressed size.
    let before = UnpackOptions { reserve_free: u64::MAX / 4, ..UnpackOptions::default() };
    let err =
        unpack::unpack_layers(&sb.store, std::slice::from_ref(&layer), &sb.root(), &before).unwrap_err();
    match &err {
        UnpackError::DiskFull { needed, .. } => assert_eq!(*needed, layer.size, "{err}"),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("not enough free disk"), "{err}");
    assert!(!sb.root().exists());
    sb.assert_outside_untouched();
    // Checked during: the compressed layer fits the reserve, its 64 MiB file does not
    // (half of it is the margin for whatever else writes to this disk meanwhile).
    let during = UnpackOptions { reserve_free: free() - (BIG as u64) / 2, ..UnpackOptions::default() };
    let err = unpack::unpack_layers(&sb.store, &[layer], &sb.root(), &during).unwrap_err();
    match &err {
        UnpackError::DiskFull { needed, .. } => assert_eq!(*needed, BIG as u64, "{err}"),
        other => panic!("{other}"),
    }
    assert!(!sb.root().exists());
    sb.assert_outside_untouched();
}
