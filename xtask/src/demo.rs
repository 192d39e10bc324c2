//! `cargo xtask demo`: builds the binaries and the demo image, then runs
//! `flotilla demo` (as root) until Ctrl-C.

use crate::util::{cargo, ensure_packages, is_root, run};
use anyhow::bail;
use clap::Parser;
use std::process::Command;

#[derive(Parser)]
pub struct Args {
    /// Build optimised binaries (slower to build).
    #[arg(long)]
    release: bool,
    /// Arguments passed on to `flotilla demo`.
    #[arg(last = true)]
    demo_args: Vec<String>,
}

pub fn run_task(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo runs real containers: run it as root (sudo -E cargo xtask demo)");
    }
    ensure_packages(&["busybox-static"])?;
    let root = crate::workspace_root();
    crate::images::run(crate::images::Args::parse_from(["images"]))?;
    let mut build = cargo();
    build.current_dir(&root).args(["build", "-p", "cloud-hub", "-p", "edge-agent"]);
    if args.release {
        build.arg("--release");
    }
    run(&mut build)?;
    let profile = if args.release { "release" } else { "debug" };
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let flotilla = target.join(profile).join("flotilla");
    let mut demo = Command::new(flotilla);
    demo.current_dir(&root)
        .arg("demo")
        .arg("--image")
        .arg(root.join("images/out/demo-httpd.oci.tar"))
        .args(&args.demo_args);
    // Become the demo: Ctrl-C then reaches it alone, and it cleans up before exiting.
    eprintln!("$ {}", crate::util::display(&demo));
    let err = std::os::unix::process::CommandExt::exec(&mut demo);
    Err(anyhow::anyhow!("starting the demo: {err}"))
}
