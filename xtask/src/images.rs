//! `cargo xtask images`: builds the demo image, a static `demo-httpd` on a static
//! busybox, as an OCI layout archive, reproducibly (same toolchain, same busybox
//! package and same `SOURCE_DATE_EPOCH` give the same digest) and without Docker.

use anyhow::{Context, bail, ensure};
use clap::Parser;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const REF_NAME: &str = "demo-httpd:latest";
const ARCHIVE_NAME: &str = "demo-httpd.oci.tar";
const PORT: u16 = 8080;

#[derive(Parser)]
pub struct Args {
    /// Where to write the archive [default: images/out in the workspace]
    #[arg(long)]
    out: Option<PathBuf>,
    /// The mtime of every file and the image's `created` time.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
    /// Print the result as JSON on stdout (for scripts) instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let out_dir = args.out.unwrap_or_else(|| root.join("images/out"));
    let busybox = ensure_busybox()?;
    let binary = build_demo_httpd(&root)?;

    let mut layer = ::images::build::LayerBuilder::new().mtime(args.source_date_epoch);
    ::images::testing::add_busybox_base(&mut layer, &busybox)?;
    layer.file_from_disk("usr/bin/demo-httpd", &binary, 0o755);
    let layer = layer.build().context("building the image layer")?;

    let config = image_config(args.source_date_epoch);
    let out = out_dir.join(ARCHIVE_NAME);
    let written =
        ::images::build::write_image_archive(&out, REF_NAME, config, &[layer], args.source_date_epoch)
            .with_context(|| format!("writing {}", out.display()))?;
    verify(&written, &out_dir)?;

    let shown = written.path.strip_prefix(&root).unwrap_or(&written.path).display().to_string();
    if args.json {
        let json = serde_json::json!({
            "path": written.path,
            "ref": REF_NAME,
            "digest": written.index_digest.to_string(),
            "manifestDigest": written.manifest_digest.to_string(),
            "size": written.size,
        });
        println!("{json}");
    } else {
        println!("{shown}");
        println!("  ref       {REF_NAME}");
        println!("  digest    {}  (index.json)", written.index_digest);
        println!("  manifest  {}  (linux/amd64)", written.manifest_digest);
        println!("  size      {} bytes", written.size);
    }
    Ok(())
}

/// The busybox from Debian's `busybox-static`, installed with apt if missing.
fn ensure_busybox() -> anyhow::Result<PathBuf> {
    let busybox = PathBuf::from(::images::testing::BUSYBOX);
    if !busybox.exists() {
        eprintln!("xtask: {} is missing; installing busybox-static with apt-get", busybox.display());
        let status = Command::new("apt-get")
            .args(["install", "-y", "busybox-static"])
            .status()
            .context("running apt-get (install busybox-static by hand if this is not Debian)")?;
        ensure!(status.success(), "apt-get install -y busybox-static failed; run `apt-get update` and retry");
    }
    Ok(busybox)
}

/// Builds demo-httpd statically in its own target directory, so the flags it needs do
/// not invalidate the main build's cache. Paths are remapped so the binary does not
/// depend on where the checkout or the cargo home lives.
fn build_demo_httpd(root: &Path) -> anyhow::Result<PathBuf> {
    let target_dir = root.join("target/images");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut rustflags =
        format!("-C target-feature=+crt-static --remap-path-prefix={}=/flotilla", root.display());
    if let Some(home) = cargo_home {
        rustflags.push_str(&format!(" --remap-path-prefix={}=/cargo", home.display()));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "demo-httpd", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", rustflags)
        // Would take precedence over RUSTFLAGS if the caller set it.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .status()
        .context("running cargo build for demo-httpd")?;
    ensure!(status.success(), "cargo build of demo-httpd failed");
    let binary = target_dir.join(TARGET).join("release/demo-httpd");
    match ::images::testing::is_static_elf(&binary) {
        Ok(true) => Ok(binary),
        Ok(false) => bail!(
            "{} is dynamically linked; a static build needs glibc's libc.a (apt-get install -y libc6-dev)",
            binary.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading {}", binary.display())),
    }
}

fn image_config(created: u64) -> ::images::oci::ImageConfig {
    let mut config =
        ::images::testing::image_config(&["/usr/bin/demo-httpd"], &[], &[&format!("PORT={PORT}")], created);
    config.architecture = "amd64".into();
    let container = config.config.get_or_insert_with(Default::default);
    container.exposed_ports = Some(BTreeMap::from([(format!("{PORT}/tcp"), Default::default())]));
    container.labels = Some(BTreeMap::from([
        ("org.opencontainers.image.title".to_string(), "demo-httpd".to_string()),
        ("org.opencontainers.image.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ]));
    config.history = vec![::images::oci::History {
        created: config.created.clone(),
        created_by: Some("cargo xtask images".into()),
        ..Default::default()
    }];
    config
}

/// Imports the archive back, as `flotilla image import` will, to catch a broken image
/// here rather than on a device.
fn verify(written: &::images::build::WrittenImage, out_dir: &Path) -> anyhow::Result<()> {
    let scratch = out_dir.join(".verify-store");
    let _ = std::fs::remove_dir_all(&scratch);
    let result = (|| {
        let store = ::images::BlobStore::open(&scratch)?;
        let image = ::images::import_path(&written.path, &store, &Default::default())?;
        ensure!(image.index_digest == written.index_digest, "re-imported image has another digest");
        ensure!(image.ref_name.as_deref() == Some(REF_NAME), "re-imported image lost its name");
        let platform =
            image.platform("linux", "amd64", "").context("re-imported image has no linux/amd64")?;
        ensure!(platform.run_config.entrypoint == ["/usr/bin/demo-httpd"], "entrypoint was lost");
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result.context("verifying the written image")
}
