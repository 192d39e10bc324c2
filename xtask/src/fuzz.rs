//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs shared-proto's fuzz targets (the
//! frame decoder and the two sync sessions, `shared-proto/fuzz/`) with cargo-fuzz, each
//! for N seconds, installing cargo-fuzz first when it is missing.
//!
//! cargo-fuzz passes nightly-only flags to rustc (`-Zsanitizer=address`, the coverage
//! passes); `RUSTC_BOOTSTRAP=1` lets the pinned stable toolchain accept them, so no
//! nightly toolchain is needed. New inputs go to a scratch corpus under the fuzz
//! crate's `target/`, while the committed seeds are only read, so a run leaves the
//! repository as it was; a crash is saved under `shared-proto/fuzz/artifacts/`.

use crate::util::{cargo, run};
use anyhow::{Context, bail};
use clap::Parser;
use std::path::Path;
use std::process::Stdio;

#[derive(Parser)]
pub struct Args {
    /// One target (`frames`, `hub_session`, `agent_session`); every target when omitted.
    target: Option<String>,
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Sanitizer to build with (`address`, `none`, ...). `none` runs several times
    /// faster; AddressSanitizer only adds checks on memory errors, which only `unsafe`
    /// code (none in shared-proto, some in its dependencies) can make.
    #[arg(long, default_value = "address")]
    sanitizer: String,
}

/// The targets, one per `fuzz_targets/*.rs`.
fn targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    Ok(names)
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = cargo().args(["fuzz", "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if installed.is_ok_and(|s| s.success()) {
        return Ok(());
    }
    // --locked builds what cargo-fuzz was released with; without it only if that
    // set no longer builds on this toolchain.
    if run(cargo().args(["install", "cargo-fuzz", "--locked"])).is_err() {
        run(cargo().args(["install", "cargo-fuzz"]))?;
    }
    Ok(())
}

pub fn run_task(args: Args) -> anyhow::Result<()> {
    let proto_dir = crate::workspace_root().join("shared-proto");
    let fuzz_dir = proto_dir.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let chosen = match args.target {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}: choose one of {}", all.join(", ")),
        None => all,
    };
    ensure_cargo_fuzz()?;
    for target in &chosen {
        let scratch = fuzz_dir.join("target/working-corpus").join(target);
        std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        // libFuzzer writes new inputs to the first corpus directory only.
        run(cargo()
            .current_dir(&proto_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", &args.sanitizer, target])
            .arg(&scratch)
            .arg(fuzz_dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-print_final_stats=1"))
        .with_context(|| {
            format!(
                "fuzz target {target} failed: the input is in shared-proto/fuzz/artifacts/{target}/; \
                 minimise it with `cargo fuzz tmin {target} <file>` and keep it in the corpus once fixed"
            )
        })?;
    }
    eprintln!("fuzzed {} for {} s each: no invariant broke", chosen.join(", "), args.seconds);
    Ok(())
}
