//! Synthetic closures for the plugin tests and the overhead benchmark.
//! Shaped like real ones: a DAG where a few base libraries are referenced by
//! almost everything, NAR sizes spread over five orders of magnitude, self-
//! references, and every path reachable from a handful of roots.

#![allow(dead_code)]

use std::collections::BTreeMap;
use strata_plugin_sdk::{ClosureGraph, NamedPath};

/// splitmix64: deterministic across platforms and Rust versions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const NAMES: [&str; 24] = [
    "glibc", "zlib", "openssl", "bash", "coreutils", "ncurses", "readline", "perl", "python3",
    "gcc-lib", "libffi", "sqlite", "curl", "git", "xz", "bzip2", "expat", "gettext", "icu",
    "libxml2", "pcre2", "gmp", "mpfr", "nghttp2",
];

fn store_hash(rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    (0..32).map(|_| ALPHABET[rng.below(32) as usize] as char).collect()
}

/// A closure of `n` paths with `roots` top-level paths (at most `n`), and
/// popularity data for about half of the names.
pub fn closure(n: usize, roots: usize, seed: u64) -> (ClosureGraph, BTreeMap<String, u64>) {
    let mut rng = Rng::new(seed);
    // Index order is topological: a path references only lower indices.
    let names: Vec<String> = (0..n)
        .map(|i| format!("{}-{}-{}.{}", store_hash(&mut rng), NAMES[i % NAMES.len()], i, rng.below(10)))
        .collect();
    let mut refs: Vec<Vec<usize>> = vec![Vec::new(); n];
    let roots = roots.min(n);
    for j in 0..n.saturating_sub(roots) {
        // A parent above j, so that everything is reachable from the roots.
        let parent = j + 1 + rng.below((n - j - 1) as u64) as usize;
        refs[parent].push(j);
    }
    for (i, r) in refs.iter_mut().enumerate() {
        if i == 0 {
            continue;
        }
        for _ in 0..rng.below(4) {
            // Biased low: the first few paths are the base everything uses.
            let a = rng.below(i as u64);
            let b = rng.below(i as u64);
            r.push(a.min(b) as usize);
        }
        if rng.below(3) == 0 {
            r.push(i);
        }
        r.sort_unstable();
        r.dedup();
    }
    let full = |i: usize| format!("/nix/store/{}", names[i]);
    let paths: Vec<NamedPath> = (0..n)
        .map(|i| NamedPath {
            path: full(i),
            // 1 KB .. ~100 MB, log-uniform.
            nar_size: 1000 * 10u64.pow(rng.below(5) as u32) * (1 + rng.below(9)),
            references: refs[i].iter().map(|&r| full(r)).collect(),
        })
        .collect();
    let roots: Vec<String> = (n - roots..n).rev().map(full).collect();
    let graph = ClosureGraph::from_named(&roots, paths).expect("a complete closure");
    let mut popularity = BTreeMap::new();
    for name in &names {
        if rng.below(2) == 0 {
            popularity.insert(name[33..].to_string(), rng.below(1000));
        }
    }
    (graph, popularity)
}
