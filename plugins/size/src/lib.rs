//! `size`: Strata's default layering, designed for layer reuse.
//!
//! A client downloads a layer again whenever any path in it changed or the
//! layer's set of paths changed. So a layer should hold paths that change
//! together, and what a layer holds must depend only on those paths, never
//! on what else the image contains. The algorithm:
//!
//! 1. **Owners** are the top-level paths and every *large* path
//!    (`nar_size >= large_threshold`, 5 MB by default). A large path is
//!    always a layer on its own: it dominates the bytes, and alone it is
//!    reused by every image that contains it.
//! 2. Every other path is keyed by the set of owners that reach it without
//!    passing through another owner. Paths with the same key form a group:
//!    an owner's private dependencies, or the dependencies shared by exactly
//!    that set of owners. A top-level path joins the group of its own key
//!    (`{itself}`), with its private dependencies.
//! 3. Each group is split by height (the longest reference chain below a
//!    path, a property of the path's own closure) into levels, and each
//!    level into classes of paths with the same references (they change
//!    together) and the same referrers (a later package needing only some
//!    of them splits nothing).
//! 4. Below the budget every path is a layer of its own: a one-path layer is
//!    the same blob in every image that holds the path, so a client never
//!    downloads again a path it has. Over the budget, paths join along the
//!    hierarchy above, each step smallest first (bytes, then smallest path):
//!    whole classes, then whole levels, then adjacent levels of a group
//!    (cheapest pair first); when every group is whole, the two smallest
//!    layers merge, repeatedly. A version bump of a library renames it and
//!    everything above it, so levels keep what is below it apart.
//! 5. Order, base-most first: by height (longest reference chain below the
//!    layer's paths) ascending, then by smallest path. Both are properties of
//!    the layer's own paths, so the order of shared layers is the same in
//!    every image.
//!
//! So below the budget adding a package changes no layer but those of its
//! own new paths. Over it the joins depend on the whole image; the
//! hierarchy makes the joined layers ones that change together
//! (`docs/layering.md`).

use serde::Deserialize;
use rustc_hash::FxHashMap;
use strata_plugin_sdk::graph::{merge_lowest, Chain, Chains, IndexedGraph};
use strata_plugin_sdk::{GroupInput, Layers, PluginError};

strata_plugin_sdk::export_plugin! {
    name: "size",
    group_layers: group_layers,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    large_threshold: u64,
}

impl Default for Config {
    fn default() -> Self {
        // A layer of its own costs a request; a path above 5 MB costs more
        // to download again with its neighbours than that. On the reuse
        // benchmark in the tests, 20 MB pulled 5% more bytes.
        Config {
            large_threshold: 5_000_000,
        }
    }
}

/// The `group_layers` hook.
pub fn group_layers(input: GroupInput) -> Result<Layers, PluginError> {
    let config: Config = strata_plugin_sdk::config(&input.config)?;
    let mut g = IndexedGraph::new(&input)?;
    // Owners are looked up by binary search, and a root named twice is one
    // owner.
    g.roots.sort_unstable();
    g.roots.dedup();
    let n = g.len();
    if n > 0 && input.budget == 0 {
        return Err(PluginError::new(
            "a layer budget of 0 cannot hold any store path",
        ));
    }
    let (postorder, heights) = g.postorder_heights();

    let large: Vec<bool> = g
        .sizes
        .iter()
        .map(|&s| s >= config.large_threshold)
        .collect();
    let mut owner = large.clone();
    for &r in &g.roots {
        owner[r] = true;
    }
    let keys = owner_keys(&g, &owner, &postorder);

    // Paths with equal keys form a group, groups in order of their smallest
    // path. Group order breaks no tie below (a layer's smallest path is
    // unique), so any fixed order gives the same layers; this one needs a
    // hash of each key, not a sort comparing keys thousands of bits long.
    // A path with an empty key (no owner reaches it, impossible in a real
    // closure) shares one group rather than fail. A large path is a group
    // of its own.
    let mut group = vec![usize::MAX; n];
    let mut groups = 0;
    let mut group_of: FxHashMap<(usize, &[u64]), usize> = FxHashMap::default();
    for v in 0..n {
        group[v] = if large[v] {
            groups += 1;
            groups - 1
        } else {
            *group_of.entry(keys.of(v)).or_insert_with(|| {
                groups += 1;
                groups - 1
            })
        };
    }
    // Each group split by height into levels, so that a library's version
    // bump, which renames the library and what is above it, leaves the lower
    // levels alone; each level into classes of paths with the same
    // references, which change together (a dependency's bump renames all of
    // them) while paths with different ones need not, and the same
    // referrers: a later package that needs one of several libraries would
    // otherwise split their layer and have it downloaded again in parts.
    // Class order within a level breaks no tie either; levels must follow
    // height order.
    let referrers = g.referrers();
    let mut class = vec![0usize; n];
    let mut class_of: FxHashMap<(usize, u32, &[usize], &[usize]), usize> = FxHashMap::default();
    for v in 0..n {
        let next = class_of.len();
        class[v] = *class_of.entry((group[v], heights[v], &g.refs[v], &referrers[v])).or_insert(next);
    }
    drop(class_of);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by_key(|&v| (group[v], heights[v], class[v]));
    // Below the budget every path is a layer of its own: a one-path layer
    // is the same blob in every image holding the path, so nothing a client
    // holds is ever downloaded again. Over the budget, paths join in the
    // order of that hierarchy: a class's paths (same references and
    // referrers), then a level's classes, then a group's levels, then
    // unrelated layers.
    let mut chains = Chains::new(n);
    let mut units: Vec<Layer> = Vec::with_capacity(n);
    // Where each class's paths and each level's classes lie in `units`.
    let mut class_ranges: Vec<(usize, usize)> = Vec::new();
    let mut level_ranges: Vec<(usize, usize)> = Vec::new();
    for members_of_level in order.chunk_by(|&a, &b| group[a] == group[b] && heights[a] == heights[b]) {
        let level_start = units.len();
        for members in members_of_level.chunk_by(|&a, &b| class[a] == class[b]) {
            let start = units.len();
            units.extend(members.iter().map(|&v| Layer::of(&mut chains, &g, &heights, &[v])));
            class_ranges.push((start, units.len()));
        }
        level_ranges.push((level_start, units.len()));
    }

    let budget = input.budget as usize;
    let mut count = units.len();
    let mut alive = vec![true; units.len()];
    // Over budget, first whole classes, then whole levels, join, smallest
    // first (bytes, then smallest path): what a class or a level holds is
    // intrinsic, so the same ones join in every image that is over budget
    // by as much.
    for ranges in [&class_ranges, &level_ranges] {
        join_ranges(&mut chains, &mut units, &mut alive, ranges, &mut count, budget);
    }
    // Still over budget, every level is one layer now: undo height splits,
    // cheapest adjacent pair first: that costs reuse only when the group's
    // own paths change, whereas merging across groups ties unrelated
    // packages together.
    let mut layers: Vec<(Layer, usize)> = Vec::with_capacity(count);
    for &(start, end) in &level_ranges {
        layers.extend((start..end).filter(|&u| alive[u]).map(|u| (units[u], group[units[u].first])));
    }
    let layers = if count > budget {
        join_levels(&mut chains, layers, budget)
    } else {
        layers.into_iter().map(|(l, _)| l).collect()
    };
    // Then the two smallest layers, keyed by (size, smallest path): unique,
    // since paths are.
    let mut layers = merge_lowest(layers, budget, |l| (l.size, l.first), |a, b| a.absorb(&mut chains, b));
    layers.sort_unstable_by_key(|l| (l.height, l.first));
    Ok(g.layers("size", layers.iter().map(|l| chains.paths(l.paths)).collect()))
}

/// For each path that is not an owner, the set of owners reaching it
/// without passing through another owner, as a bit set over the owners.
/// Filled parents first (reverse postorder): a path's set is the union over
/// its referrers of the referrer itself, if an owner, or its set. Bit sets
/// keep this linear in the references; the sets themselves can hold
/// thousands of owners on big graphs, but most hold a few, so each row
/// keeps the span of its non-zero words and only that is read or hashed.
struct OwnerKeys {
    words: usize,
    /// Row of each path in `bits` (owners that are top-level paths have
    /// one too: their key is themselves).
    row: Vec<usize>,
    bits: Vec<u64>,
    /// Each row's first and one-past-last non-zero word; (0, 0) if none.
    span: Vec<(usize, usize)>,
}

impl OwnerKeys {
    /// The key of `v`: where its non-zero words start, and those words.
    fn of(&self, v: usize) -> (usize, &[u64]) {
        let r = self.row[v];
        let (lo, hi) = self.span[r];
        (lo, &self.bits[r * self.words + lo..r * self.words + hi])
    }

    /// ORs `words`, the row's words from `lo` on, into row `r`.
    fn add(&mut self, r: usize, lo: usize, words: &[u64]) {
        if words.is_empty() {
            return;
        }
        let start = r * self.words + lo;
        for (k, f) in self.bits[start..start + words.len()].iter_mut().zip(words) {
            *k |= f;
        }
        let span = &mut self.span[r];
        *span = if span.0 == span.1 {
            (lo, lo + words.len())
        } else {
            (span.0.min(lo), span.1.max(lo + words.len()))
        };
    }
}

fn owner_keys(g: &IndexedGraph, owner: &[bool], postorder: &[usize]) -> OwnerKeys {
    let n = g.len();
    let mut bit = vec![usize::MAX; n];
    let mut owners = 0;
    for v in (0..n).filter(|&v| owner[v]) {
        bit[v] = owners;
        owners += 1;
    }
    let words = owners.div_ceil(64).max(1);
    let mut row = vec![usize::MAX; n];
    let mut rows = 0;
    for (v, r) in row.iter_mut().enumerate() {
        // Large paths are layers of their own and need no key.
        if !owner[v] || g.roots.binary_search(&v).is_ok() {
            *r = rows;
            rows += 1;
        }
    }
    let mut keys = OwnerKeys { words, row, bits: vec![0u64; rows * words], span: vec![(0, 0); rows] };
    let mut from = vec![0u64; words];
    for &v in postorder.iter().rev() {
        let (lo, len) = if owner[v] {
            from[0] = 1 << (bit[v] % 64);
            (bit[v] / 64, 1)
        } else {
            let (lo, key) = keys.of(v);
            from[..key.len()].copy_from_slice(key);
            (lo, key.len())
        };
        for &w in g.refs[v].iter().filter(|&&w| !owner[w]) {
            keys.add(keys.row[w], lo, &from[..len]);
        }
    }
    for &r in &g.roots {
        keys.add(keys.row[r], bit[r] / 64, &[1 << (bit[r] % 64)]);
    }
    keys
}

/// The units of `range` still alive.
fn live(alive: &[bool], range: std::ops::Range<usize>) -> impl Iterator<Item = usize> + '_ {
    range.filter(move |&u| alive[u])
}

/// Joins each of `ranges` of `units` (its live units) into one, the range
/// with the fewest bytes first, then the smallest path, while `count`
/// (live units) is over `budget`.
fn join_ranges(
    chains: &mut Chains,
    units: &mut [Layer],
    alive: &mut [bool],
    ranges: &[(usize, usize)],
    count: &mut usize,
    budget: usize,
) {
    if *count <= budget {
        return;
    }
    // Each range with two live units or more: (bytes, smallest path, range).
    let mut joinable: Vec<(u64, usize, usize, usize)> = ranges
        .iter()
        .filter(|&&(start, end)| live(alive, start..end).nth(1).is_some())
        .map(|&(start, end)| {
            let size = live(alive, start..end).map(|u| units[u].size).sum::<u64>();
            let first = live(alive, start..end).map(|u| units[u].first).min().unwrap_or(usize::MAX);
            (size, first, start, end)
        })
        .collect();
    joinable.sort_unstable();
    for (_, _, start, end) in joinable {
        if *count <= budget {
            break;
        }
        let Some(head) = live(alive, start..end).next() else { continue };
        for u in head + 1..end {
            if alive[u] {
                let other = units[u];
                units[head].absorb(chains, other);
                alive[u] = false;
                *count -= 1;
            }
        }
    }
}

/// Joins adjacent levels of a group (`layers` are `(layer, group)` in group
/// order, then level order), the pair with the fewest combined bytes first
/// (then the smallest path, then the lowest group and level), until
/// `budget` layers remain or every group is one layer. A heap of pairs,
/// stale entries skipped, instead of a scan per join: graphs of thousands
/// of groups need thousands of joins.
fn join_levels(chains: &mut Chains, layers: Vec<(Layer, usize)>, budget: usize) -> Vec<Layer> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    const NONE: usize = usize::MAX;
    let len = layers.len();
    let same = |a: usize, b: usize| a < len && b < len && layers[a].1 == layers[b].1;
    let mut next: Vec<usize> = (0..len).map(|a| if same(a, a + 1) { a + 1 } else { NONE }).collect();
    let mut prev: Vec<usize> = (0..len).map(|a| if a > 0 && same(a - 1, a) { a - 1 } else { NONE }).collect();
    let mut slots: Vec<Layer> = layers.into_iter().map(|(l, _)| l).collect();
    let mut alive = vec![true; len];
    let mut version = vec![0u32; len];
    let mut count = len;
    let key = |slots: &[Layer], version: &[u32], a: usize, b: usize| {
        let (la, lb) = (&slots[a], &slots[b]);
        Reverse((la.size + lb.size, la.first.min(lb.first), a, b, version[a], version[b]))
    };
    let mut heap: BinaryHeap<_> = (0..len)
        .filter(|&a| next[a] != NONE)
        .map(|a| key(&slots, &version, a, next[a]))
        .collect();
    while count > budget {
        let Some(Reverse((_, _, a, b, va, vb))) = heap.pop() else { break };
        if !alive[a] || !alive[b] || version[a] != va || version[b] != vb {
            continue;
        }
        let upper = slots[b];
        slots[a].absorb(chains, upper);
        alive[b] = false;
        version[a] += 1;
        next[a] = next[b];
        if next[a] != NONE {
            prev[next[a]] = a;
            heap.push(key(&slots, &version, a, next[a]));
        }
        if prev[a] != NONE {
            heap.push(key(&slots, &version, prev[a], a));
        }
        count -= 1;
    }
    slots.into_iter().zip(alive).filter_map(|(l, alive)| alive.then_some(l)).collect()
}

#[derive(Debug, Clone, Copy)]
struct Layer {
    paths: Chain,
    /// The smallest index, i.e. the smallest path: the tie-breaker that
    /// makes every choice above deterministic.
    first: usize,
    size: u64,
    height: u32,
}

impl Layer {
    /// A layer of `paths` (at least one).
    fn of(chains: &mut Chains, g: &IndexedGraph, heights: &[u32], paths: &[usize]) -> Layer {
        Layer {
            paths: chains.chain(paths),
            first: paths.iter().copied().min().unwrap_or(usize::MAX),
            size: paths.iter().map(|&v| g.sizes[v]).sum(),
            height: paths.iter().map(|&v| heights[v]).max().unwrap_or(0),
        }
    }

    fn absorb(&mut self, chains: &mut Chains, other: Layer) {
        chains.join(&mut self.paths, other.paths);
        self.size += other.size;
        self.height = self.height.max(other.height);
        self.first = self.first.min(other.first);
    }
}

#[cfg(test)]
mod tests;
