//! The fuzz targets' checks (fuzz/src/lib.rs), run in every `cargo test`
//! for a bounded time on random inputs and on mutations of hostile seeds.
//! Not coverage-guided — that is `cargo fuzz run` (docs/reliability.md),
//! which needs nightly flags and a sanitizer build too long for CI — but
//! the same checks on the same validators, so a regression that breaks a
//! rule fails here first.
//!
//! `STRATA_FUZZ_SECS` (default 10) bounds each target; `STRATA_FUZZ_SEED`
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
    let secs: u64 = std::env::var("STRATA_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
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

fn with_limit(limit: u8, text: &str) -> Vec<u8> {
    let mut v = vec![limit];
    v.extend_from_slice(text.as_bytes());
    v
}

#[test]
fn names_references_and_digests_keep_to_the_grammar() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let seeds: Vec<Vec<u8>> = [
        "shell/git",
        "haskellpackages.pandoc",
        "xorg.xev/a__b/c-d--e",
        "latest",
        "v1.2_rc-3",
        &digest,
        "../../etc/passwd",
        "%2e%2e/x",
        "a%2fb",
        "pkgs\"; rm -rf /",
        "${builtins.readFile /etc/shadow}",
        "/abs/path",
        "a//b",
        "ünïcode",
        "a/b/c/d/e/f/g/h",
    ]
    .iter()
    .flat_map(|s| [with_limit(63, s), with_limit(2, s)])
    .collect();
    drive("reference", &seeds, checks::check_reference);
}

#[test]
fn plugin_outputs_are_checked_whatever_a_plugin_returns() {
    let mut seeds: Vec<Vec<u8>> = (0..32u8).map(|i| vec![i * 2; 64]).collect();
    for (kind, json) in [
        (0u8, r#"{"packages":["git","xorg.xev"],"arch":"amd64","image":{"env":["A=b"]}}"#),
        (1, r#"{"source":{"type":"path","path":"/src"},"identity":"path:/src","immutable":false}"#),
        (2, r#"{"strategy":"size","layers":[["/nix/store/aaaa-hello-2.12"]]}"#),
        (2, r#"{"strategy":"size","layers":[["/nix/store/../etc/passwd"]]}"#),
    ] {
        let mut v = vec![kind * 2 + 1];
        v.extend_from_slice(json.as_bytes());
        seeds.push(v);
    }
    drive("plugin_output", &seeds, checks::check_plugin_output);
}
