//! `cargo xtask agent-static`: the agent as a small, static binary for devices, with
//! the `agent` profile (size-optimised, LTO, panic=abort, stripped). Prints its size.

use crate::util::{cargo, run};
use anyhow::{Context, bail};
use clap::Parser;
use std::path::PathBuf;

/// What the project promises for the agent binary.
pub const SIZE_BUDGET: u64 = 10 << 20;

#[derive(Parser)]
pub struct Args {
    /// Rust target triple (others need a cross toolchain; see FEASIBILITY notes in ARCHITECTURE.md).
    #[arg(long, default_value = "x86_64-unknown-linux-gnu")]
    target: String,
}

/// Builds the static agent and returns its path.
pub fn build(target: &str) -> anyhow::Result<PathBuf> {
    let root = crate::workspace_root();
    let target_dir = root.join("target/static");
    run(cargo()
        .current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // libcontainer's seccomp support links libseccomp (Debian's `libseccomp-dev`
        // ships the archive); a static agent must carry it rather than look for the .so.
        .env("LIBSECCOMP_LINK_TYPE", "static")
        .env("LIBSECCOMP_LIB_PATH", libseccomp_dir(target))
        .args(["build", "--locked", "--profile", "agent", "-p", "edge-agent", "--bin", "flotilla-agent"])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(&target_dir))?;
    let bin = target_dir.join(target).join("agent").join("flotilla-agent");
    if !bin.exists() {
        bail!("{} was not produced", bin.display());
    }
    Ok(bin)
}

/// Where the target's `libseccomp.a` lives: `$LIBSECCOMP_LIB_PATH` when set, else
/// Debian's multiarch directory for the target.
fn libseccomp_dir(target: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("LIBSECCOMP_LIB_PATH") {
        return dir.into();
    }
    let multiarch = match target.split('-').next() {
        Some("aarch64") => "aarch64-linux-gnu",
        Some(arch) if arch.starts_with("armv7") => "arm-linux-gnueabihf",
        _ => "x86_64-linux-gnu",
    };
    PathBuf::from("/usr/lib").join(multiarch)
}

pub fn run_task(args: Args) -> anyhow::Result<()> {
    let bin = build(&args.target)?;
    let size = std::fs::metadata(&bin).with_context(|| format!("reading {}", bin.display()))?.len();
    let is_static = images::testing::is_static_elf(&bin).unwrap_or(false);
    println!("{}", bin.display());
    println!(
        "  size     {size} bytes ({:.2} MiB; budget {} MiB)",
        size as f64 / (1 << 20) as f64,
        SIZE_BUDGET >> 20
    );
    println!("  static   {}", if is_static { "yes (no program interpreter)" } else { "NO" });
    if !is_static {
        bail!("the agent binary is not static");
    }
    Ok(())
}
