//! Golden test: the plugin against a slow reference written from Nixery's
//! `layers.go` as `docs/layering.md` describes it, step by step, with no
//! shared code (no `IndexedGraph`, no dominator algorithm: dominance by its
//! definition), on a few thousand random closures.

use super::group_layers;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use strata_plugin_sdk::{ClosureGraph, GroupInput, NamedPath};

/// splitmix64, so that a failure is the same on every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One generated case.
struct Case {
    paths: Vec<NamedPath>,
    roots: Vec<String>,
    popularity: BTreeMap<String, u64>,
    popularity_threshold: u64,
    size_threshold: u64,
    budget: u32,
}

fn generate(rng: &mut Rng) -> Case {
    let n = match rng.below(10) {
        0 => 1 + rng.below(4) as usize,
        1..=6 => 2 + rng.below(30) as usize,
        _ => 30 + rng.below(90) as usize,
    };
    let shape = rng.below(4);
    let huge = rng.chance(10);
    let pins = rng.chance(50);
    let names: Vec<String> = (0..n)
        .map(|_| {
            let hash: String = (0..32)
                .map(|_| b"0123456789abcdfghijklmnpqrsvwxyz"[rng.below(32) as usize] as char)
                .collect();
            let name = match rng.below(if pins { 14 } else { 100 }) {
                0 if pins => format!("nss-cacert-3.{}", rng.below(5)),
                1 if pins => format!("iana-etc-2024{}", rng.below(5)),
                // Only a prefix pins: these are ordinary names.
                2 | 3 => format!("my-nss-cacert-{}", rng.below(5)),
                _ => format!("p{}-{}", rng.below(n as u64 + 5), rng.below(3)),
            };
            format!("/nix/store/{hash}-{name}")
        })
        .collect();
    // Path i references only paths after it (a DAG, as Nix's are).
    let mut refs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, r) in refs.iter_mut().enumerate() {
        let later = (n - i - 1) as u64;
        if later > 0 {
            let k = match shape {
                0 => rng.below(4),     // random
                1 => 1 + rng.below(2), // deep: mostly the next path
                2 => rng.below(6),     // many, biased to the base
                _ => rng.below(2),     // sparse, wide
            };
            for _ in 0..k {
                let j = match shape {
                    1 if rng.chance(70) => i + 1,
                    2 => n - 1 - rng.below(later).min(rng.below(later)) as usize,
                    _ => i + 1 + rng.below(later) as usize,
                };
                r.push(j);
            }
        }
        if rng.chance(30) {
            r.push(i); // Nix's self-reference
        }
    }
    let sizes: Vec<u64> = (0..n)
        .map(|_| {
            if huge {
                // Ratings past 2^64: Nixery's uint64 wraps.
                rng.below(1 << 44)
            } else {
                match rng.below(4) {
                    0 => rng.below(100),
                    1 => rng.below(10_000),
                    2 => rng.below(1_000_000),
                    _ => rng.below(60_000_000),
                }
            }
        })
        .collect();
    // Every path is reached: roots are the paths nothing references, and
    // some more.
    let referenced: BTreeSet<usize> = refs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.iter().copied().filter(move |&j| j != i))
        .collect();
    let mut roots: Vec<String> = (0..n)
        .filter(|i| !referenced.contains(i) || rng.chance(8))
        .map(|i| names[i].clone())
        .collect();
    if rng.chance(50) {
        roots.reverse();
    }
    let mut popularity = BTreeMap::new();
    if rng.chance(60) {
        for name in &names {
            if rng.chance(60) {
                let name = name.split_once('-').unwrap().1.to_string();
                // Counts are at least 1: the data counts images a name is in.
                let count = match rng.below(3) {
                    0 => 1 + rng.below(10),
                    1 => 1 + rng.below(200),
                    _ => 1 + rng.below(400_000),
                };
                popularity.insert(name, count);
            }
        }
    }
    let popularity_threshold = [100, 100, 1, 2, 50, 1000, 0][rng.below(7) as usize];
    let size_threshold = if huge {
        [100_000_000, 1 << 46][rng.below(2) as usize]
    } else {
        [100_000_000, 100_000_000, 1_000_000, 50_000_000, 5_000, 0][rng.below(6) as usize]
    };
    let budget = match rng.below(4) {
        0 => 1 + rng.below(3),
        _ => 1 + rng.below(n as u64 + 2),
    } as u32;
    let paths = (0..n)
        .map(|i| NamedPath {
            path: names[i].clone(),
            nar_size: sizes[i],
            references: refs[i].iter().map(|&j| names[j].clone()).collect(),
        })
        .collect();
    Case { paths, roots, popularity, popularity_threshold, size_threshold, budget }
}

/// Nixery's `Group`, written out the slow way. Returns the layers (paths
/// sorted) ordered as the plugin orders them, base-most first by height
/// (Nixery orders by merge rating; docs/layering.md says why Strata does
/// not), and whether the budget made it merge.
fn reference(c: &Case) -> (Vec<Vec<String>>, bool) {
    let n = c.paths.len();
    let index: BTreeMap<&str, usize> = c.paths.iter().enumerate().map(|(i, p)| (p.path.as_str(), i)).collect();
    // References, without Nix's self-references.
    let refs: Vec<BTreeSet<usize>> = c
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| p.references.iter().map(|r| index[r.as_str()]).filter(|&j| j != i).collect())
        .collect();
    // closureSize, as Nix's exportReferencesGraph reports it.
    let closure = |v: usize| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![v];
        while let Some(x) = todo.pop() {
            if seen.insert(x) {
                todo.extend(refs[x].iter().copied());
            }
        }
        seen
    };
    let closure_size: Vec<u64> = (0..n)
        .map(|v| closure(v).iter().fold(0u64, |s, &x| s.wrapping_add(c.paths[x].nar_size)))
        .collect();
    // Popularity: pinned names, then the data, then 1.
    let popularity: Vec<u64> = c
        .paths
        .iter()
        .map(|p| {
            let name = p.path.strip_prefix("/nix/store/").unwrap().split_once('-').unwrap().1;
            if name.starts_with("nss-cacert") || name.starts_with("iana-etc") {
                500_000
            } else {
                c.popularity.get(name).copied().unwrap_or(1)
            }
        })
        .collect();
    // The graph: node n is the root, with edges to the top-level paths and
    // to every big or popular one.
    let root = n;
    let mut succ: Vec<BTreeSet<usize>> = refs.clone();
    let mut from_root: BTreeSet<usize> = c.roots.iter().map(|r| index[r.as_str()]).collect();
    for v in 0..n {
        if closure_size[v] > c.size_threshold || popularity[v] >= c.popularity_threshold {
            from_root.insert(v);
        }
    }
    succ.push(from_root);
    // d dominates v when v cannot be reached from the root without d.
    let reached_without = |d: usize| {
        let mut seen = vec![false; n + 1];
        let mut todo = vec![root];
        while let Some(x) = todo.pop() {
            if x != d && !seen[x] {
                seen[x] = true;
                todo.extend(succ[x].iter().copied());
            }
        }
        seen
    };
    let mut dominators: Vec<BTreeSet<usize>> = (0..n).map(|v| BTreeSet::from([v])).collect();
    for d in 0..n {
        let seen = reached_without(d);
        for v in 0..n {
            if !seen[v] {
                dominators[v].insert(d);
            }
        }
    }
    // The root's children in the dominator tree are the paths dominated by
    // no other path; each, with everything it dominates, is a layer.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for v in 0..n {
        let head = *dominators[v].iter().find(|&&d| dominators[d].len() == 1).expect("a head");
        groups.entry(head).or_default().push(v);
    }
    // (merge rating, contents): popularity of the head times the summed
    // closure sizes, in uint64.
    let mut layers: Vec<(u64, Vec<usize>)> = groups
        .into_iter()
        .map(|(head, members)| {
            let size = members.iter().fold(0u64, |s, &m| s.wrapping_add(closure_size[m]));
            (popularity[head].wrapping_mul(size), members)
        })
        .collect();
    let smallest = |members: &[usize]| members.iter().map(|&m| c.paths[m].path.clone()).min().unwrap();
    // One sort by rating (ties by smallest path, as the plugin breaks them),
    // then the first layer is folded into the second until the budget fits.
    layers.sort_by_key(|(rating, members)| (*rating, smallest(members)));
    let merged = layers.len() > c.budget as usize;
    while layers.len() > c.budget as usize {
        let (rating, members) = layers.remove(0);
        layers[0].0 = layers[0].0.wrapping_add(rating);
        layers[0].1.extend(members);
    }
    // The plugin's order: by height (longest reference chain below), then
    // smallest path.
    fn height(v: usize, refs: &[BTreeSet<usize>], memo: &mut BTreeMap<usize, u32>) -> u32 {
        if let Some(&h) = memo.get(&v) {
            return h;
        }
        let h = refs[v].iter().map(|&w| height(w, refs, memo) + 1).max().unwrap_or(0);
        memo.insert(v, h);
        h
    }
    let mut memo = BTreeMap::new();
    let mut out: Vec<(u32, String, Vec<String>)> = layers
        .into_iter()
        .map(|(_, members)| {
            let h = members.iter().map(|&m| height(m, &refs, &mut memo)).max().unwrap();
            let mut paths: Vec<String> = members.iter().map(|&m| c.paths[m].path.clone()).collect();
            paths.sort();
            (h, paths[0].clone(), paths)
        })
        .collect();
    out.sort();
    (out.into_iter().map(|(_, _, p)| p).collect(), merged)
}

fn plugin(c: &Case) -> Vec<Vec<String>> {
    let mut graph = ClosureGraph::from_named(&c.roots, c.paths.clone()).unwrap();
    graph.set_popularity(&c.popularity);
    let input = GroupInput {
        config: json!({
            "popularity_threshold": c.popularity_threshold,
            "size_threshold": c.size_threshold,
        }),
        graph,
        budget: c.budget,
    };
    let graph = input.graph.clone();
    group_layers(input)
        .unwrap()
        .named(&graph)
        .into_iter()
        .map(|mut l| {
            l.sort();
            l
        })
        .collect()
}

#[test]
fn same_layers_as_nixery() {
    const CASES: usize = 4000;
    let mut rng = Rng(0x5eed);
    let (mut merged, mut with_data, mut pinned) = (0, 0, 0);
    for case in 0..CASES {
        let c = generate(&mut rng);
        let (expected, did_merge) = reference(&c);
        merged += did_merge as usize;
        with_data += !c.popularity.is_empty() as usize;
        pinned += c.paths.iter().any(|p| {
            let name = p.path.split_once('-').unwrap().1;
            name.starts_with("nss-cacert") || name.starts_with("iana-etc")
        }) as usize;
        let got = plugin(&c);
        assert_eq!(
            got,
            expected,
            "case {case}: {} paths, budget {}, thresholds {}/{}, {} popularity entries",
            c.paths.len(),
            c.budget,
            c.popularity_threshold,
            c.size_threshold,
            c.popularity.len()
        );
    }
    println!("{CASES} closures: {merged} over the budget, {with_data} with popularity data, {pinned} with pinned names");
    assert!(merged > CASES / 3 && with_data > CASES / 3 && pinned > CASES / 4 && pinned < CASES * 3 / 4);
}
