//! The fuzz targets' checks (fuzz/src/lib.rs) on the stable toolchain, in
//! every `cargo test`: the tracked seeds (fuzz/seeds/<target>/), their
//! random mutations and random bytes, for a bounded time. Not
//! coverage-guided — CI runs libFuzzer on the same checks too
//! (`cargo fuzz run`, scripts/test.sh; docs/reliability.md) — but it needs
//! no cargo-fuzz or nightly flags, and it keeps fuzz/src/lib.rs, which is
//! outside the workspace, compiled and run against the validators by any
//! `cargo test`.
//!
//! `STRATA_FUZZ_SECS` (default 5) bounds each target; `STRATA_FUZZ_SEED`
//! replays a run.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use rand::{Rng, RngCore, SeedableRng};
use std::time::{Duration, Instant};

const TOKENS: &[&[u8]] = &[
    b"..", b"%2e%2e", b"%2f", b"/", b"//", b"\"", b"${", b";", b"\\", b"\0", b"\n", b"sha256:", b":", b"-", b"__", b".",
    "é".as_bytes(), b"A", b"0123456789abcdef", b"/nix/store/", b"{\"layers\":[[", b"]]}", b"\"strategy\":\"x\"",
];

fn mutate(rng: &mut rand::rngs::StdRng, input: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=input.len());
        match rng.random_range(0..5) {
            0 if !input.is_empty() => {
                let i = rng.random_range(0..input.len());
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 => input.insert(at, rng.random()),
            2 if at < input.len() => {
                input.remove(at);
            }
            3 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                input.splice(at..at, t.iter().copied());
            }
            _ if !input.is_empty() => {
                let (a, b) = (rng.random_range(0..input.len()), rng.random_range(0..input.len()));
                let chunk = input[a.min(b)..a.max(b)].to_vec();
                input.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    input.truncate(4096);
}

/// Runs `check` on seeds, their mutations and random bytes until the time
/// is up; a panic names the input (hex) and the seed to replay it.
fn drive(target: &str, seeds: &[Vec<u8>], check: fn(&[u8])) {
    let secs: u64 = std::env::var("STRATA_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let seed: u64 = std::env::var("STRATA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut input = if rng.random_ratio(1, 8) {
                let mut b = vec![0u8; rng.random_range(0..512)];
                rng.fill_bytes(&mut b);
                b
            } else {
                seeds[rng.random_range(0..seeds.len())].clone()
            };
            mutate(&mut rng, &mut input);
            let shown = input.clone();
            if let Err(panic) = std::panic::catch_unwind(|| check(&input)) {
                eprintln!("{target}: failing input (hex) {}; STRATA_FUZZ_SEED={seed}", hex::encode(&shown));
                std::panic::resume_unwind(panic);
            }
            runs += 1;
        }
    }
    eprintln!("{target}: {runs} inputs in {secs} s, STRATA_FUZZ_SEED={seed}");
    assert!(runs > 1000, "{target}: only {runs} inputs ran");
}

/// A target's seeds: the inputs libFuzzer starts from too.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| std::fs::read(f.expect("seed entry").path()).expect("seed file"))
        .collect();
    assert!(seeds.len() >= 8, "{}: only {} seeds", dir.display(), seeds.len());
    seeds
}

#[test]
fn names_references_and_digests_keep_to_the_grammar() {
    drive("reference", &seeds("reference"), checks::check_reference);
}

#[test]
fn plugin_outputs_are_checked_whatever_a_plugin_returns() {
    drive("plugin_output", &seeds("plugin_output"), checks::check_plugin_output);
}
