//! `cargo xtask test`: the whole suite, as CI runs it. Installs the Debian packages
//! the tests need when they are missing, checks formatting, lints and the agent's
//! dependency guard, builds the binaries and the demo image, then runs every test.
//! schemathesis (PyPI), which the API acceptance test runs, goes into a venv of its own.
//! Tests that need root run for real: this task refuses to start without it.

use crate::util::{cargo, ensure_packages, ensure_schemathesis, is_root, run};
use anyhow::{Context, bail};
use clap::Parser;

/// What the suite needs from Debian. QEMU and a Debian kernel boot the cgroup v2
/// guest of `firmware-tests/tests/cgroup_v2.rs`.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "crun",
    "iproute2",
    "nftables",
    "util-linux",
    "python3",
    // A venv for schemathesis, the API acceptance test's fuzzer (from PyPI).
    "python3-venv",
    "libseccomp-dev",
    "pkg-config",
    "qemu-system-x86",
    "linux-image-amd64",
];

/// Crates the agent must never link (STYLE.md: keep the agent lean).
const AGENT_FORBIDDEN: &[&str] =
    &["openraft", "axum", "hyper", "reqwest", "prometheus-client", "openssl", "aws-lc-rs", "utoipa"];

#[derive(Parser)]
pub struct Args {
    /// Skip fmt, clippy and the dependency guard.
    #[arg(long)]
    no_lint: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// Whether the agent's normal dependency graph contains `krate`, by `cargo tree -i`.
fn agent_links(krate: &str) -> anyhow::Result<bool> {
    let out = cargo()
        .args(["tree", "-p", "edge-agent", "-e", "normal", "-i", krate])
        .output()
        .context("running cargo tree")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Ok(!stdout.trim().is_empty());
    }
    if stderr.contains("did not match any packages") {
        return Ok(false);
    }
    bail!("cargo tree -p edge-agent -i {krate} failed: {stderr}")
}

/// Fails if the agent links a crate it must not. A crate it must link (quinn) is the
/// control that shows the check itself works.
fn guard_agent_dependencies() -> anyhow::Result<()> {
    if !agent_links("quinn")? {
        bail!("dependency guard is broken: cargo tree does not see quinn in the agent");
    }
    for krate in AGENT_FORBIDDEN {
        if agent_links(krate)? {
            bail!(
                "the agent links {krate}, which it must not (see `cargo tree -p edge-agent -e normal -i {krate}`)"
            );
        }
    }
    eprintln!("agent dependency guard: none of {} linked", AGENT_FORBIDDEN.join(", "));
    Ok(())
}

pub fn run_task(args: Args) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the suite runs real containers, cgroups and network namespaces: run it as root (sudo -E cargo xtask test)"
        );
    }
    ensure_packages(PACKAGES)?;
    let schemathesis = ensure_schemathesis()?;
    let root = crate::workspace_root();
    std::env::set_current_dir(&root)?;
    if !args.no_lint {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo().args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]))?;
        guard_agent_dependencies()?;
    }
    crate::images::run(crate::images::Args::parse_from(["images"]))?;
    run(cargo().args(["build", "--locked", "-p", "cloud-hub", "-p", "edge-agent"]))?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--locked"])
        .env("FLOTILLA_DEMO_IMAGE", root.join("images/out/demo-httpd.oci.tar"))
        .env("FLOTILLA_SCHEMATHESIS", &schemathesis);
    if !args.test_args.is_empty() {
        test.arg("--").args(&args.test_args);
    }
    run(&mut test)?;
    eprintln!("all tests passed");
    Ok(())
}
