//! Writes the fuzz seed corpus, `fuzz/corpus/<target>/<name>`, from
//! `shared_proto::fuzzing::seed_corpus()`. Run it after changing a seed or an encoding:
//! `cargo run -p shared-proto --example fuzz_seeds`; `tests/fuzz_corpus.rs` fails until
//! the committed files match. Files the fuzzer added are left alone.

use shared_proto::fuzzing::seed_corpus;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let seeds = seed_corpus();
    for seed in &seeds {
        let dir = corpus.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(seed.name), &seed.bytes)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), corpus.display());
    Ok(())
}
