//! Project chores, run as `cargo xtask <task>` (matklad's cargo-xtask convention): one
//! binary, one module per task, dispatched from here.

mod agent_static;
mod bench;
mod bench_fleet;
mod demo;
mod fuzz;
mod images;
mod test;
mod util;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Flotilla's project chores")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// To add a task: a variant here with its doc comment (the help text), a module
/// `src/<task>.rs` exposing `Args` (clap) and `run(Args) -> anyhow::Result<()>`, and
/// one line in `main`.
#[derive(Subcommand)]
enum Task {
    /// Build the demo image (images/out/demo-httpd.oci.tar) reproducibly, without Docker.
    Images(images::Args),
    /// Run the whole suite as CI does: packages, fmt, clippy, dependency guard, tests (as root).
    Test(test::Args),
    /// Build everything and run `flotilla demo` on this machine (as root).
    Demo(demo::Args),
    /// Build the agent as a small static binary and print its size.
    AgentStatic(agent_static::Args),
    /// Measure: `agent` (PSS with 10 containers, offline cold start), `fleet --agents N`
    /// (a release hub and `flotilla sim`: memory, fan-out, controller CPU, idle
    /// traffic, reconnect storm).
    Bench(bench::Args),
    /// Fuzz shared-proto's frame decoder and sync sessions (cargo-fuzz, on stable).
    Fuzz(fuzz::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Images(args) => images::run(args),
        Task::Test(args) => test::run_task(args),
        Task::Demo(args) => demo::run_task(args),
        Task::AgentStatic(args) => agent_static::run_task(args),
        Task::Bench(args) => bench::run_task(args),
        Task::Fuzz(args) => fuzz::run_task(args),
    }
}

/// The workspace root, which holds this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().expect("xtask lives inside the workspace").to_path_buf()
}
