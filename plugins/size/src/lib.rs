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
//!    path, a property of the path's own closure). A version bump of a
//!    library renames it and everything above it; the levels below keep
//!    their layers. It also keeps a big private dependency tree from
//!    becoming one catch-all layer.
//! 4. Over budget, first the levels of a group are joined again, cheapest
//!    adjacent pair first (combined bytes, then smallest path); when every
//!    group is whole, the two smallest layers are merged, repeatedly.
//! 5. Order, base-most first: by height (longest reference chain below the
//!    layer's paths) ascending, then by smallest path. Both are properties of
//!    the layer's own paths, so the order of shared layers is the same in
//!    every image.
//!
//! Adding a top-level package changes only layers that contain paths of its
//! closure (a group can only lose such paths, never gain any), as long as
//! step 4 does not apply; `docs/layering.md` has the argument.

use serde::Deserialize;
use std::collections::BTreeMap;
use strata_plugin_sdk::graph::IndexedGraph;
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

struct Layer {
    /// Path indices, in no particular order.
    paths: Vec<usize>,
    /// The smallest index, i.e. the smallest path: the tie-breaker that
    /// makes every choice below deterministic.
    first: usize,
    size: u64,
    height: u32,
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

    // Each entry is one group's levels, lowest first, each level split
    // into classes of paths with the same references; a large path is a
    // group of one level of one class.
    let mut split_groups: Vec<Vec<Vec<Layer>>> = (0..n)
        .filter(|&v| large[v])
        .map(|v| vec![vec![Layer::of(&g, &heights, vec![v])]])
        .collect();
    // Paths with equal keys, as runs in key order: a path with an empty key
    // (no owner reaches it, impossible in a real closure) shares one group
    // rather than fail.
    let mut small: Vec<usize> = (0..n).filter(|&v| !large[v]).collect();
    small.sort_by(|&a, &b| keys.of(a).cmp(keys.of(b)).then(a.cmp(&b)));
    for run in small.chunk_by(|&a, &b| keys.of(a) == keys.of(b)) {
        split_groups.push(split(&g, &heights, run));
    }

    let budget = input.budget as usize;
    let mut count: usize = split_groups.iter().flatten().map(Vec::len).sum();
    // Over budget, first whole levels give up their reference classes,
    // smallest level first (bytes, then smallest path): what the level
    // holds is intrinsic, so the same levels rejoin in every image that is
    // over budget by as much.
    if count > budget {
        let mut split_levels: Vec<((u64, usize), usize, usize)> = split_groups
            .iter()
            .enumerate()
            .flat_map(|(gi, levels)| {
                levels
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.len() > 1)
                    .map(move |(li, c)| {
                        let size = c.iter().map(|l| l.size).sum::<u64>();
                        let first = c.iter().map(|l| l.first).min().unwrap_or(usize::MAX);
                        ((size, first), gi, li)
                    })
            })
            .collect();
        split_levels.sort_unstable();
        for (_, gi, li) in split_levels {
            if count <= budget {
                break;
            }
            count -= split_groups[gi][li].len() - 1;
            let mut classes = std::mem::take(&mut split_groups[gi][li]).into_iter();
            let mut joined = classes.next().expect("a split level has classes");
            for c in classes {
                joined.absorb(c);
            }
            split_groups[gi][li] = vec![joined];
        }
    }
    // Still over budget, every level is one layer now: undo height splits,
    // cheapest adjacent pair first: that costs reuse only when the group's
    // own paths change, whereas merging across groups ties unrelated
    // packages together.
    let groups: Vec<Vec<Layer>> = split_groups
        .into_iter()
        .map(|levels| levels.into_iter().flatten().collect())
        .collect();
    let layers = if count > budget {
        join_levels(groups, budget)
    } else {
        groups.into_iter().flatten().collect()
    };
    // Then the two smallest layers, keyed by (size, smallest path): unique,
    // since paths are.
    let mut queue: BTreeMap<(u64, usize), Layer> =
        layers.into_iter().map(|l| ((l.size, l.first), l)).collect();
    while queue.len() > budget {
        let (_, mut a) = queue.pop_first().expect("more than budget >= 1 layers");
        let (_, b) = queue.pop_first().expect("more than budget >= 1 layers");
        a.absorb(b);
        queue.insert((a.size, a.first), a);
    }
    let mut layers: Vec<Layer> = queue.into_values().collect();
    layers.sort_by_key(|l| (l.height, l.first));
    Ok(g.layers("size", layers.into_iter().map(|l| l.paths).collect()))
}

/// For each path that is not an owner, the set of owners reaching it
/// without passing through another owner, as a bit set over the owners.
/// Filled parents first (reverse postorder): a path's set is the union over
/// its referrers of the referrer itself, if an owner, or its set. Bit sets
/// keep this linear in the references; the sets themselves can hold
/// thousands of owners on big graphs.
struct OwnerKeys {
    words: usize,
    /// Row of each path in `bits` (owners that are top-level paths have
    /// one too: their key is themselves).
    row: Vec<usize>,
    bits: Vec<u64>,
}

impl OwnerKeys {
    fn of(&self, v: usize) -> &[u64] {
        let r = self.row[v];
        &self.bits[r * self.words..(r + 1) * self.words]
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
    let mut bits = vec![0u64; rows * words];
    let mut from = vec![0u64; words];
    for &v in postorder.iter().rev() {
        if owner[v] {
            from.fill(0);
            from[bit[v] / 64] |= 1 << (bit[v] % 64);
        } else {
            from.copy_from_slice(&bits[row[v] * words..(row[v] + 1) * words]);
        }
        for &w in g.refs[v].iter().filter(|&&w| !owner[w]) {
            for (k, f) in bits[row[w] * words..(row[w] + 1) * words].iter_mut().zip(&from) {
                *k |= f;
            }
        }
    }
    for &r in &g.roots {
        let start = row[r] * words;
        bits[start + bit[r] / 64] |= 1 << (bit[r] % 64);
    }
    OwnerKeys { words, row, bits }
}

/// Joins adjacent levels of a group, the pair with the fewest combined
/// bytes first (then the smallest path, then the lowest group and level),
/// until `budget` layers remain or every group is one layer. A heap of
/// pairs, stale entries skipped, instead of a scan per join: graphs of
/// thousands of groups need thousands of joins.
fn join_levels(groups: Vec<Vec<Layer>>, budget: usize) -> Vec<Layer> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    const NONE: usize = usize::MAX;
    // Layers in group order, then level order: an entry's index orders
    // pairs as (group, level) did.
    let mut slots: Vec<Option<Layer>> = Vec::new();
    let mut next = Vec::new();
    let mut prev = Vec::new();
    for levels in groups {
        let start = slots.len();
        let len = levels.len();
        for (i, l) in levels.into_iter().enumerate() {
            slots.push(Some(l));
            prev.push(if i == 0 { NONE } else { start + i - 1 });
            next.push(if i + 1 == len { NONE } else { start + i + 1 });
        }
    }
    let mut version = vec![0u32; slots.len()];
    let mut count = slots.len();
    let key = |slots: &[Option<Layer>], version: &[u32], a: usize, b: usize| {
        let (la, lb) = (slots[a].as_ref().unwrap(), slots[b].as_ref().unwrap());
        Reverse((la.size + lb.size, la.first.min(lb.first), a, b, version[a], version[b]))
    };
    let mut heap: BinaryHeap<_> = (0..slots.len())
        .filter(|&a| next[a] != NONE)
        .map(|a| key(&slots, &version, a, next[a]))
        .collect();
    while count > budget {
        let Some(Reverse((_, _, a, b, va, vb))) = heap.pop() else { break };
        if slots[a].is_none() || slots[b].is_none() || version[a] != va || version[b] != vb {
            continue;
        }
        let upper = slots[b].take().expect("checked above");
        slots[a].as_mut().expect("checked above").absorb(upper);
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
    slots.into_iter().flatten().collect()
}

impl Layer {
    fn of(g: &IndexedGraph, heights: &[u32], paths: Vec<usize>) -> Layer {
        Layer {
            first: paths.iter().copied().min().unwrap_or(usize::MAX),
            size: paths.iter().map(|&v| g.sizes[v]).sum(),
            height: paths.iter().map(|&v| heights[v]).max().unwrap_or(0),
            paths,
        }
    }

    fn absorb(&mut self, mut other: Layer) {
        self.size += other.size;
        self.height = self.height.max(other.height);
        self.first = self.first.min(other.first);
        // The smaller list moves: linear-logarithmic over all merges.
        if other.paths.len() > self.paths.len() {
            std::mem::swap(&mut self.paths, &mut other.paths);
        }
        self.paths.extend(other.paths);
    }
}

/// Splits one group by height, so that a library's version bump, which
/// renames the library and what is above it, leaves the lower levels of
/// every group alone; and each level by references: paths with the same
/// references change together (a dependency's bump renames all of them),
/// paths with different ones need not.
fn split(g: &IndexedGraph, heights: &[u32], members: &[usize]) -> Vec<Vec<Layer>> {
    let mut levels: BTreeMap<u32, BTreeMap<&[usize], Vec<usize>>> = BTreeMap::new();
    for &v in members {
        levels
            .entry(heights[v])
            .or_default()
            .entry(g.refs[v].as_slice())
            .or_default()
            .push(v);
    }
    levels
        .into_values()
        .map(|classes| {
            classes
                .into_values()
                .map(|vs| Layer::of(g, heights, vs))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests;
