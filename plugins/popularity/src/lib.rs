//! `popularity`: Nixery's layering algorithm, kept as the baseline.
//!
//! 1. A synthetic root points at every top-level path, and at every path that
//!    is *popular* (its name's count in the popularity data is at least
//!    `popularity_threshold`) or *large* (its closure's total NAR size is over
//!    `size_threshold`). Such paths are worth a layer of their own because
//!    many images share them.
//! 2. The dominator tree of that graph is computed. Each child of the root,
//!    with everything it dominates, is a layer candidate: its paths are
//!    reachable only through it, so they change when it changes.
//! 3. While there are more candidates than the budget, they are merged as
//!    Nixery merges them: sorted once by *merge rating* (the popularity of
//!    the head path times the sum of its paths' closure sizes), the lowest
//!    count − budget + 1 become one layer. Popularity is Nixery's: the
//!    count in the data, 1 for a name it does not list, 500000 for
//!    `nss-cacert*` and `iana-etc*`. Ties are broken by smallest path.
//! 4. Layers are ordered base-most first: by height (the longest reference
//!    chain below any of its paths) ascending, then by smallest path. Here
//!    the plugin is not Nixery, which orders by rating: a height is the
//!    same in every image, so layers keep their order as packages come and
//!    go (`docs/layering.md`, "Layer order").
//!
//! `docs/layering.md` compares this with the `size` strategy.

use serde::Deserialize;
use strata_plugin_sdk::graph::{Chain, Chains, IndexedGraph, Refs};
use strata_plugin_sdk::{GroupInput, Layers, PluginError};

strata_plugin_sdk::export_plugin! {
    name: "popularity",
    group_layers: group_layers,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    popularity_threshold: u64,
    size_threshold: u64,
}

impl Default for Config {
    fn default() -> Self {
        // Nixery's values.
        Config {
            popularity_threshold: 100,
            size_threshold: 100_000_000,
        }
    }
}

/// Whether each path's closure weighs more than `threshold` bytes
/// (NAR). A path above one that does is over it too, so paths are
/// visited after their references and walk their own closure only when
/// no reference settled it, stopping once past the threshold: linear
/// work on real graphs, where the exact totals would be quadratic.
fn closure_over(g: &IndexedGraph, threshold: u64, postorder: &[usize]) -> Vec<bool> {
    let n = g.len();
    let mut over = vec![false; n];
    let mut stamp = vec![usize::MAX; n];
    let mut stack = Vec::new();
    for &start in postorder {
        if g.refs[start].iter().any(|&w| over[w]) {
            over[start] = true;
            continue;
        }
        let mut total = 0u64;
        stamp[start] = start;
        stack.clear();
        stack.push(start);
        while let Some(v) = stack.pop() {
            total = total.saturating_add(g.sizes[v]);
            if total > threshold {
                over[start] = true;
                break;
            }
            for &w in &g.refs[v] {
                if stamp[w] != start {
                    stamp[w] = start;
                    stack.push(w);
                }
            }
        }
    }
    over
}

/// Immediate dominators, by Cooper, Harvey and Kennedy's iterative
/// algorithm ("A Simple, Fast Dominance Algorithm", 2001), of the graph of
/// nodes `0..n` with successors `succ(v)` and entry `entry`. Every node must
/// be reachable from the entry. Returns `idom[v]`, with
/// `idom[entry] == entry`.
pub fn dominators<'a>(n: usize, entry: usize, succ: impl Fn(usize) -> &'a [usize]) -> Vec<usize> {
    // Reverse postorder from the entry; successors are visited in the order
    // given, so the result is deterministic.
    let mut postorder = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let mut stack = vec![(entry, 0usize)];
    seen[entry] = true;
    while let Some(&mut (v, ref mut next)) = stack.last_mut() {
        if let Some(&w) = succ(v).get(*next) {
            *next += 1;
            if !seen[w] {
                seen[w] = true;
                stack.push((w, 0));
            }
        } else {
            postorder.push(v);
            stack.pop();
        }
    }
    let mut po_index = vec![usize::MAX; n];
    for (i, &v) in postorder.iter().enumerate() {
        po_index[v] = i;
    }
    let pred = Refs::reversed(n, &succ);
    const UNDEF: usize = usize::MAX;
    let mut idom = vec![UNDEF; n];
    idom[entry] = entry;
    let intersect = |idom: &[usize], mut a: usize, mut b: usize| {
        while a != b {
            while po_index[a] < po_index[b] {
                a = idom[a];
            }
            while po_index[b] < po_index[a] {
                b = idom[b];
            }
        }
        a
    };
    let mut changed = true;
    while changed {
        changed = false;
        for &v in postorder.iter().rev().skip(1) {
            let mut new = UNDEF;
            for &p in &pred[v] {
                if idom[p] == UNDEF {
                    continue;
                }
                new = if new == UNDEF {
                    p
                } else {
                    intersect(&idom, p, new)
                };
            }
            if new != UNDEF && idom[v] != new {
                idom[v] = new;
                changed = true;
            }
        }
    }
    idom
}

/// Nixery's popularity of a path: 500000 for names starting with
/// `nss-cacert` or `iana-etc` (Nixery adds them to every image), else the
/// count in the popularity data, and 1 for a name the data does not list
/// (the host sends 0 for those; a count of 0 is never in the data, which
/// counts the images a name appears in).
fn nixery_popularity(path: &str, count: u64) -> u64 {
    let name = strata_plugin_sdk::store_name(path);
    if name.starts_with("nss-cacert") || name.starts_with("iana-etc") {
        500_000
    } else {
        count.max(1)
    }
}

/// Calls `f` with the index of each bit set in `word`, lowest first,
/// offset by `base`.
fn each_one(mut word: u64, base: usize, mut f: impl FnMut(usize)) {
    while word != 0 {
        f(base + word.trailing_zeros() as usize);
        word &= word - 1;
    }
}

/// Each path's closure size: the NAR bytes of the path and of every path it
/// references, transitively (what Nix reports as `closureSize`, and what
/// Nixery rates layers by). Exact closure sizes need the closures
/// themselves, so they are bit sets over postorder positions (a path's
/// closure holds only positions up to its own), built a block of
/// positions at a time to bound memory. A path's set starts as a copy of
/// its reference with the largest closure, and only bits its other
/// references add are summed one by one: shared base libraries are counted
/// once, not once per path above them.
///
/// Sets are kept packed: a bit per word saying which words are not zero,
/// and only those words. Closures are often sparse within a block (on
/// plugin_overhead's generated 10,000-path closure, 87 % of the words a
/// union walked were zero), and a full-width set per path was 8 MiB of
/// linear memory to grow and zero in every call: in wasm that alone took
/// 4.9 ms of 21.5. The set being built is spread out in `own`,
/// where a word is found by its index, and only its marked words are
/// cleared once it is stored.
fn closure_sizes(g: &IndexedGraph, postorder: &[usize]) -> Vec<u64> {
    // At most ~8 MiB of sets at once, were they all dense.
    closure_sizes_within(g, postorder, 1 << 20)
}

/// `closure_sizes` with blocks no wider than `max_words` words per set
/// would take, dense, for all paths (tests make it small to get many
/// blocks out of small graphs).
fn closure_sizes_within(g: &IndexedGraph, postorder: &[usize], max_words: usize) -> Vec<u64> {
    let n = g.len();
    let mut pos = vec![0usize; n];
    for (p, &v) in postorder.iter().enumerate() {
        pos[v] = p;
    }
    let size_at: Vec<u64> = postorder.iter().map(|&v| g.sizes[v]).collect();
    let words = (max_words / n.max(1)).clamp(1, n.div_ceil(64).max(1));
    let block = words * 64;
    let marks = words.div_ceil(64);
    let mut own = vec![0u64; words];
    let mut own_marks = vec![0u64; marks];
    // Set i of the block (the set at position start + i): its marks at
    // row_marks[i * marks..], its words from packed[row_start[i]..].
    let mut row_marks = vec![0u64; n * marks];
    let mut row_start = vec![0usize; n];
    let mut packed: Vec<u64> = Vec::new();
    let mut partial = vec![0u64; n];
    let mut count = vec![0u32; n];
    let mut total = vec![0u64; n];
    let mut refs: Vec<usize> = Vec::new();
    for start in (0..n).step_by(block) {
        let end = (start + block).min(n);
        packed.clear();
        for p in start..n {
            let v = postorder[p];
            // References in this block (edges closing a cycle, which Nix
            // never produces, are left out).
            refs.clear();
            refs.extend(g.refs[v].iter().map(|&w| pos[w]).filter(|&q| q >= start && q < p));
            let (mut sum, mut bits) = (0u64, 0u32);
            let best = refs.iter().copied().max_by_key(|&q| (count[q], q));
            if let Some(b) = best {
                let mut at = row_start[b - start];
                own_marks.copy_from_slice(&row_marks[(b - start) * marks..][..marks]);
                for (m, &mark) in own_marks.iter().enumerate() {
                    each_one(mark, m << 6, |k| {
                        own[k] = packed[at];
                        at += 1;
                    });
                }
                sum = partial[b];
                bits = count[b];
            }
            for &q in refs.iter().filter(|&&q| Some(q) != best) {
                let mut at = row_start[q - start];
                for (m, &mark) in row_marks[(q - start) * marks..][..marks].iter().enumerate() {
                    each_one(mark, m << 6, |k| {
                        let new = packed[at] & !own[k];
                        at += 1;
                        if new != 0 {
                            own[k] |= new;
                            own_marks[m] |= 1 << (k & 63);
                            bits += new.count_ones();
                            each_one(new, start + (k << 6), |at| sum = sum.wrapping_add(size_at[at]));
                        }
                    });
                }
            }
            if p < end {
                let k = (p - start) >> 6;
                own[k] |= 1 << ((p - start) & 63);
                own_marks[k >> 6] |= 1 << (k & 63);
                bits += 1;
                sum = sum.wrapping_add(size_at[p]);
            }
            partial[p] = sum;
            count[p] = bits;
            total[p] = total[p].wrapping_add(sum);
            row_start[p - start] = packed.len();
            row_marks[(p - start) * marks..][..marks].copy_from_slice(&own_marks);
            for (m, mark) in own_marks.iter_mut().enumerate() {
                each_one(std::mem::take(mark), m << 6, |k| packed.push(std::mem::take(&mut own[k])));
            }
        }
    }
    let mut by_path = vec![0u64; n];
    for (p, &v) in postorder.iter().enumerate() {
        by_path[v] = total[p];
    }
    by_path
}

struct Candidate {
    paths: Chain,
    /// The smallest index, i.e. the smallest path.
    first: usize,
    /// The candidate's root in the dominator tree.
    head: usize,
    height: u32,
}

impl Candidate {
    fn absorb(&mut self, chains: &mut Chains, other: Candidate) {
        chains.join(&mut self.paths, other.paths);
        self.height = self.height.max(other.height);
        self.first = self.first.min(other.first);
    }
}

/// The `group_layers` hook.
pub fn group_layers(input: GroupInput) -> Result<Layers, PluginError> {
    let config: Config = strata_plugin_sdk::config(&input.config)?;
    let g = IndexedGraph::new(&input)?;
    let n = g.len();
    if n > 0 && input.budget == 0 {
        return Err(PluginError::new(
            "a layer budget of 0 cannot hold any store path",
        ));
    }

    // Node i is path i; node n is the synthetic root.
    let (postorder, heights) = g.postorder_heights();
    let large = closure_over(&g, config.size_threshold, &postorder);
    let popularity: Vec<u64> = (0..n).map(|i| nixery_popularity(g.paths[i], g.popularity[i])).collect();
    let mut root_edges: Vec<usize> = g.roots.clone();
    root_edges.extend((0..n).filter(|&i| popularity[i] >= config.popularity_threshold || large[i]));
    root_edges.sort_unstable();
    root_edges.dedup();
    // Paths no root reaches (not a closure, strictly; tolerated) hang off
    // the root too, so that the output is still a partition.
    let mut reach = vec![false; n];
    let mut stack = root_edges.clone();
    let mut unreached = 0;
    loop {
        while let Some(v) = stack.pop() {
            if !reach[v] {
                reach[v] = true;
                stack.extend(g.refs[v].iter().filter(|&&w| !reach[w]));
            }
        }
        while unreached < n && reach[unreached] {
            unreached += 1;
        }
        if unreached == n {
            break;
        }
        root_edges.push(unreached);
        stack.push(unreached);
    }
    let idom = dominators(n + 1, n, |v| if v == n { &root_edges } else { &g.refs[v] });

    // Each path's candidate is its ancestor just below the root: the
    // candidate's head.
    let mut head = vec![usize::MAX; n];
    fn head_of(v: usize, root: usize, idom: &[usize], head: &mut [usize]) -> usize {
        let mut chain = Vec::new();
        let mut u = v;
        while head[u] == usize::MAX && idom[u] != root {
            chain.push(u);
            u = idom[u];
        }
        let h = if head[u] == usize::MAX { u } else { head[u] };
        head[u] = h;
        for c in chain {
            head[c] = h;
        }
        h
    }
    let mut chains = Chains::new(n);
    let mut candidate_of = vec![usize::MAX; n];
    let mut candidates: Vec<Candidate> = Vec::new();
    for v in 0..n {
        let h = head_of(v, n, &idom, &mut head);
        let c = Candidate {
            paths: chains.chain(&[v]),
            first: v,
            head: h,
            height: heights[v],
        };
        match candidate_of[h] {
            usize::MAX => {
                candidate_of[h] = candidates.len();
                candidates.push(c);
            }
            i => candidates[i].absorb(&mut chains, c),
        }
    }

    let budget = input.budget as usize;
    if candidates.len() > budget {
        // Nixery's merge: candidates sorted once by rating (the head's
        // popularity times the sum of its paths' closure sizes, in wrapping
        // 64-bit arithmetic as Nixery's uint64), then the lowest folded into
        // the next until the budget is met: the lowest count - budget + 1
        // become one layer. Ties (random order in Nixery) go by smallest path.
        let closure = closure_sizes(&g, &postorder);
        let mut sums = vec![0u64; candidates.len()];
        for v in 0..n {
            let c = candidate_of[head[v]];
            sums[c] = sums[c].wrapping_add(closure[v]);
        }
        let mut order: Vec<(u64, usize, usize)> = candidates
            .iter()
            .zip(&sums)
            .enumerate()
            .map(|(i, (c, &s))| (popularity[c.head].wrapping_mul(s), c.first, i))
            .collect();
        order.sort_unstable();
        let fold = candidates.len() - budget + 1;
        let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
        let mut merged = slots[order[0].2].take().expect("each candidate once");
        for &(_, _, i) in &order[1..fold] {
            merged.absorb(&mut chains, slots[i].take().expect("each candidate once"));
        }
        candidates = slots.into_iter().flatten().collect();
        candidates.push(merged);
    }
    candidates.sort_unstable_by_key(|c| (c.height, c.first));
    Ok(g.layers(
        "popularity",
        candidates.iter().map(|c| chains.paths(c.paths)).collect(),
    ))
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::BTreeSet;
    use strata_plugin_sdk::{store_name, ClosureGraph, NamedPath};

    fn sp(name: &str) -> String {
        // Hashes chosen so that path order differs from name order.
        let hash: String = format!(
            "{:x}",
            name.len() * 7919 + name.bytes().map(|b| b as usize).sum::<usize>()
        )
        .chars()
        .cycle()
        .take(32)
        .collect();
        format!("/nix/store/{hash}-{name}")
    }

    /// `(name, size, refs)`; roots by name.
    fn input(nodes: &[(&str, u64, &[&str])], roots: &[&str], budget: u32) -> GroupInput {
        let paths = nodes
            .iter()
            .map(|(n, s, r)| NamedPath {
                path: sp(n),
                nar_size: *s,
                references: r.iter().map(|x| sp(x)).collect(),
            })
            .collect();
        let roots: Vec<String> = roots.iter().map(|r| sp(r)).collect();
        GroupInput {
            config: serde_json::Value::Null,
            graph: ClosureGraph::from_named(&roots, paths).unwrap(),
            budget,
        }
    }

    fn set_popularity(i: &mut GroupInput, counts: &[(&str, u64)]) {
        i.graph
            .set_popularity(&counts.iter().map(|&(n, c)| (n.to_string(), c)).collect());
    }

    /// Each layer's store names, sorted.
    fn names(i: &GroupInput) -> Vec<Vec<String>> {
        group_layers(i.clone())
            .unwrap()
            .named(&i.graph)
            .iter()
            .map(|l| {
                let mut v: Vec<String> = l.iter().map(|p| store_name(p).to_string()).collect();
                v.sort();
                v
            })
            .collect()
    }

    #[test]
    fn dominators_of_a_diamond() {
        // 0 -> 1, 2; 1 -> 3; 2 -> 3; 3 -> 4
        let succ = vec![vec![1, 2], vec![3], vec![3], vec![4], vec![]];
        assert_eq!(dominators(succ.len(), 0, |v| &succ[v]), vec![0, 0, 0, 0, 3]);
    }

    #[test]
    fn dominators_with_loops() {
        // 0 -> 1 -> 2 -> 1, 2 -> 3
        let succ = vec![vec![1], vec![2], vec![1, 3], vec![]];
        assert_eq!(dominators(succ.len(), 0, |v| &succ[v]), vec![0, 0, 1, 2]);
    }

    #[test]
    fn empty_closure() {
        let out = group_layers(input(&[], &[], 0)).unwrap();
        assert_eq!(out.layers, Vec::<Vec<u32>>::new());
        assert_eq!(out.strategy, "popularity");
    }

    #[test]
    fn shared_dependencies_split_from_exclusive_ones() {
        let nodes: &[(&str, u64, &[&str])] = &[
            ("app-a", 10, &["liba", "glibc"]),
            ("app-b", 10, &["libb", "glibc"]),
            ("liba", 5, &["glibc"]),
            ("libb", 5, &["glibc", "libb"]),
            ("glibc", 30, &[]),
        ];
        assert_eq!(
            names(&input(nodes, &["app-a", "app-b"], 10)),
            vec![vec!["glibc"], vec!["app-a", "liba"], vec!["app-b", "libb"]]
        );
    }

    #[test]
    fn popular_and_large_paths_get_their_own_layer() {
        let nodes: &[(&str, u64, &[&str])] = &[
            ("app", 10, &["big", "pop", "small"]),
            ("big", 200_000_000, &[]),
            ("pop", 1, &[]),
            ("small", 1, &[]),
        ];
        let mut i = input(nodes, &["app"], 10);
        set_popularity(&mut i, &[("pop", 150), ("small", 99)]);
        assert_eq!(
            names(&i),
            vec![vec!["big"], vec!["pop"], vec!["app", "small"]]
        );
    }

    #[test]
    fn large_means_closure_size() {
        // `mid` is small itself but its closure is over the threshold.
        let nodes: &[(&str, u64, &[&str])] = &[
            ("app", 10, &["mid"]),
            ("mid", 10, &["x", "y"]),
            ("x", 60, &[]),
            ("y", 60, &[]),
        ];
        let mut i = input(nodes, &["app"], 10);
        i.config = json!({ "size_threshold": 100 });
        assert_eq!(names(&i), vec![vec!["mid", "x", "y"], vec!["app"]]);
    }

    /// The packed bit sets against a walk of each path's closure, on
    /// graphs that take several blocks and several words of marks: sparse
    /// closures (references biased to the base, as plugin_overhead's
    /// generated closure), references anywhere below, and dense closures
    /// (each path also references the one below it).
    #[test]
    fn closure_sizes_are_exact() {
        #[derive(Debug, Clone, Copy)]
        enum Shape {
            Base,
            Anywhere,
            Dense,
        }
        let mut rng = golden::Rng(7);
        let cases = [
            (5000, Shape::Base, 350_000),
            (5000, Shape::Anywhere, 350_000),
            (5000, Shape::Dense, 1 << 20),
            (700, Shape::Base, 700),
            (700, Shape::Anywhere, 3000),
            (130, Shape::Dense, 1),
        ];
        for (n, shape, max_words) in cases {
            let name = |i: usize| format!("/nix/store/{:032}-p{i}", i);
            let paths: Vec<NamedPath> = (0..n)
                .map(|i| {
                    let below = i as u64;
                    let mut references: Vec<String> = (0..rng.below(4))
                        .filter(|_| i > 0)
                        .map(|_| match shape {
                            Shape::Anywhere => rng.below(below),
                            Shape::Base | Shape::Dense => rng.below(below).min(rng.below(below)),
                        })
                        .map(|r| name(r as usize))
                        .collect();
                    if matches!(shape, Shape::Dense) && i > 0 {
                        references.push(name(i - 1));
                    }
                    if rng.chance(30) {
                        references.push(name(i));
                    }
                    NamedPath { path: name(i), nar_size: rng.below(1 << 62), references }
                })
                .collect();
            let input = GroupInput {
                config: serde_json::Value::Null,
                graph: ClosureGraph::from_named(&[name(n - 1)], paths).unwrap(),
                budget: 1,
            };
            let g = IndexedGraph::new(&input).unwrap();
            let expected: Vec<u64> = (0..n)
                .map(|v| {
                    let mut seen = vec![false; n];
                    let (mut stack, mut sum) = (vec![v], 0u64);
                    seen[v] = true;
                    while let Some(u) = stack.pop() {
                        sum = sum.wrapping_add(g.sizes[u]);
                        for &w in &g.refs[u] {
                            if !std::mem::replace(&mut seen[w], true) {
                                stack.push(w);
                            }
                        }
                    }
                    sum
                })
                .collect();
            let (postorder, _) = g.postorder_heights();
            assert_eq!(closure_sizes_within(&g, &postorder, max_words), expected, "{n} paths, {shape:?}, {max_words} words");
        }
    }

    #[test]
    fn merges_lowest_rating_first() {
        let nodes: &[(&str, u64, &[&str])] = &[
            ("a", 10, &[]),
            ("b", 20, &[]),
            ("c", 30, &[]),
            ("d", 1000, &[]),
        ];
        let mut i = input(nodes, &["a", "b", "c", "d"], 2);
        set_popularity(&mut i, &[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        // ratings 10, 20, 30, 1000: a+b (30) then with c (30; tie by path).
        let mut sets = names(&i);
        sets.sort();
        assert_eq!(sets, vec![vec!["a", "b", "c"], vec!["d"]]);
    }

    #[test]
    fn unpopular_paths_merge_before_popular_ones() {
        let nodes: &[(&str, u64, &[&str])] = &[("a", 10, &[]), ("b", 10, &[]), ("c", 10, &[])];
        let mut i = input(nodes, &["a", "b", "c"], 2);
        set_popularity(&mut i, &[("b", 500)]);
        let mut sets = names(&i);
        sets.sort();
        assert_eq!(sets, vec![vec!["a", "c"], vec!["b"]]);
    }

    #[test]
    fn errors() {
        let nodes: &[(&str, u64, &[&str])] = &[("a", 10, &[])];
        assert!(group_layers(input(nodes, &["a"], 0))
            .unwrap_err()
            .message
            .contains("budget"));
        let mut i = input(nodes, &["a"], 3);
        i.graph.roots = vec![7];
        assert!(group_layers(i).unwrap_err().message.contains("not in"));
        let mut i = input(nodes, &["a"], 3);
        i.config = json!({ "popularity": 3 });
        assert!(group_layers(i)
            .unwrap_err()
            .message
            .contains("invalid plugin configuration"));
    }

    #[test]
    fn unreachable_paths_still_placed() {
        let nodes: &[(&str, u64, &[&str])] = &[("a", 10, &[]), ("stray", 10, &[])];
        let out = group_layers(input(nodes, &["a"], 3)).unwrap();
        assert_eq!(out.layers.len(), 2);
    }

    // ------------------------------------------------------------ properties

    /// A random closure: node i references only nodes > i (a DAG, as Nix
    /// store graphs are), sometimes itself.
    pub(crate) fn arb_graph() -> impl Strategy<Value = (GroupInput, u32)> {
        (1usize..40).prop_flat_map(|n| {
            (
                proptest::collection::vec(
                    (
                        0u64..3_000_000,
                        proptest::collection::vec(0usize..1000, 0..5),
                        any::<bool>(),
                    ),
                    n,
                ),
                proptest::collection::vec(0usize..n, 1..5),
                1u32..12,
                proptest::collection::vec((0usize..n, 0u64..300), 0..6),
            )
                .prop_map(move |(nodes, roots, budget, pops)| {
                    let name = |i: usize| {
                        format!(
                            "/nix/store/{:032x}-p{i}",
                            (i as u128 * 0x9e37_79b9_7f4a_7c15) % (1u128 << 127)
                        )
                    };
                    let paths = strata_plugin_sdk::graph::dag_from_picks(&nodes, name);
                    let mut rs: Vec<String> = roots.iter().map(|&i| name(i)).collect();
                    rs.dedup();
                    let mut graph = ClosureGraph::from_named(&rs, paths).unwrap();
                    graph.set_popularity(&pops.iter().map(|&(i, p)| (format!("p{i}"), p)).collect());
                    let input = GroupInput {
                        config: json!({ "size_threshold": 5_000_000 }),
                        graph,
                        budget,
                    };
                    (input, budget)
                })
        })
    }

    proptest! {
        #[test]
        fn output_is_a_partition_within_budget((input, budget) in arb_graph()) {
            let all: BTreeSet<u32> = (0..input.graph.paths.len() as u32).collect();
            let out = group_layers(input.clone()).unwrap();
            prop_assert!(out.layers.len() <= budget as usize);
            prop_assert!(out.layers.iter().all(|l| !l.is_empty()));
            let mut seen = BTreeSet::new();
            for &p in out.layers.iter().flatten() {
                prop_assert!(seen.insert(p), "{} twice", p);
            }
            prop_assert_eq!(seen, all);
            prop_assert_eq!(group_layers(input).unwrap(), out);
        }

        #[test]
        fn input_order_does_not_matter((input, _b) in arb_graph()) {
            let mut shuffled = input.clone();
            shuffled.graph = strata_plugin_sdk::graph::reversed(&input.graph);
            prop_assert_eq!(
                group_layers(shuffled.clone()).unwrap().named(&shuffled.graph),
                group_layers(input.clone()).unwrap().named(&input.graph)
            );
        }
    }
}
