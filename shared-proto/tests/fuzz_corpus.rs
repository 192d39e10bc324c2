//! The fuzz targets without cargo-fuzz: every file of the committed corpus goes through
//! its harness on every test run, the committed seeds must be the generated ones, and
//! proptest throws random and mutated inputs at each harness, so an invariant broken by
//! a change shows up in CI and not only when someone runs the fuzzer.

use proptest::prelude::*;
use shared_proto::fuzzing::{self, Seed, TARGETS};
use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_holds_its_harness_invariants() {
    for target in TARGETS {
        let harness = fuzzing::harness(target).expect("every target has a harness");
        let files = corpus_files(target);
        assert!(files.len() >= 5, "{target}: only {} corpus files", files.len());
        for path in files {
            let bytes = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| harness(&bytes)).is_err() {
                panic!(
                    "{} breaks an invariant (message above); to debug it under the fuzzer: \
                     `RUSTC_BOOTSTRAP=1 cargo fuzz run {target} <that file>` from shared-proto/",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_committed_seeds_are_the_generated_ones() {
    let seeds = fuzzing::seed_corpus();
    for target in TARGETS {
        assert!(seeds.iter().filter(|s| s.target == target).count() >= 5, "{target} has too few seeds");
    }
    for Seed { target, name, bytes } in seeds {
        let path = corpus_dir(target).join(name);
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} is missing or stale: run `cargo run -p shared-proto --example fuzz_seeds`",
            path.display()
        );
    }
}

#[test]
fn the_corpus_stays_small() {
    let files: Vec<PathBuf> = TARGETS.iter().flat_map(|t| corpus_files(t)).collect();
    let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert!(
        files.len() <= 60 && bytes <= 100 << 10,
        "{} files, {bytes} bytes: run `cargo fuzz cmin`",
        files.len()
    );
}

/// A seed of `target` with a few bytes overwritten, some cut off and some appended:
/// random bytes rarely get past a frame header, mutated seeds do.
fn mutated_seed(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> =
        fuzzing::seed_corpus().into_iter().filter(|s| s.target == target).map(|s| s.bytes).collect();
    let n_seeds = seeds.len();
    (
        0..n_seeds,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(seed_idx, writes, cut, tail)| {
            let mut bytes = seeds[seed_idx].clone();
            for (at, value) in writes {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            // Mostly keep the whole seed; sometimes cut it short.
            let keep = if cut.index(4) == 0 { cut.index(bytes.len() + 1) } else { bytes.len() };
            bytes.truncate(keep);
            bytes.extend(tail);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn frames_hold_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::frames(&bytes);
    }

    #[test]
    fn hub_sessions_hold_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::hub_session(&bytes);
    }

    #[test]
    fn agent_sessions_hold_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::agent_session(&bytes);
    }

    #[test]
    fn frames_hold_on_mutated_seeds(bytes in mutated_seed("frames")) {
        fuzzing::frames(&bytes);
    }

    #[test]
    fn hub_sessions_hold_on_mutated_seeds(bytes in mutated_seed("hub_session")) {
        fuzzing::hub_session(&bytes);
    }

    #[test]
    fn agent_sessions_hold_on_mutated_seeds(bytes in mutated_seed("agent_session")) {
        fuzzing::agent_session(&bytes);
    }
}
