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

/// The closure with the SDK's dense indices, and this strategy's walks
/// over it.
struct Graph(IndexedGraph);

impl std::ops::Deref for Graph {
    type Target = IndexedGraph;

    fn deref(&self) -> &IndexedGraph {
        &self.0
    }
}

impl Graph {
    fn new(input: &GroupInput) -> Result<Graph, PluginError> {
        let mut g = IndexedGraph::new(input)?;
        g.roots.sort_unstable();
        g.roots.dedup();
        Ok(Graph(g))
    }

    /// Longest reference chain below each path (0 for a leaf): intrinsic to
    /// the path's closure. Edges closing a cycle (which Nix never produces
    /// apart from self-references) are ignored.
    fn heights(&self) -> Vec<u32> {
        let n = self.len();
        let mut height = vec![0u32; n];
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; n];
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            let mut stack = vec![(start, 0usize)];
            state[start] = 1;
            while let Some(&mut (v, ref mut next)) = stack.last_mut() {
                if let Some(&w) = self.refs[v].get(*next) {
                    *next += 1;
                    if state[w] == 0 {
                        state[w] = 1;
                        stack.push((w, 0));
                    }
                } else {
                    height[v] = self.refs[v]
                        .iter()
                        .filter(|&&w| state[w] == 2)
                        .map(|&w| height[w] + 1)
                        .max()
                        .unwrap_or(0);
                    state[v] = 2;
                    stack.pop();
                }
            }
        }
        height
    }
}

/// The name part of `/nix/store/<hash>-<name>`: what stays the same when a
/// dependency changes the hash.
pub fn store_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    match base.split_once('-') {
        Some((_, name)) => name,
        None => base,
    }
}

struct Layer {
    /// Sorted store paths.
    paths: Vec<String>,
    size: u64,
    height: u32,
}

/// The `group_layers` hook.
pub fn group_layers(input: GroupInput) -> Result<Layers, PluginError> {
    let config: Config = strata_plugin_sdk::config(&input.config)?;
    let g = Graph::new(&input)?;
    let n = g.len();
    if n > 0 && input.budget == 0 {
        return Err(PluginError::new(
            "a layer budget of 0 cannot hold any store path",
        ));
    }
    let heights = g.heights();

    let large: Vec<bool> = g
        .sizes
        .iter()
        .map(|&s| s >= config.large_threshold)
        .collect();
    let mut owner = large.clone();
    for &r in &g.roots {
        owner[r] = true;
    }

    // keys[p]: owners reaching p without passing through another owner,
    // ascending because owners are visited in index order.
    let mut keys: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut stamp = vec![usize::MAX; n];
    let mut stack = Vec::new();
    for o in (0..n).filter(|&o| owner[o]) {
        stack.extend(g.refs[o].iter().copied().filter(|&w| !owner[w]));
        while let Some(v) = stack.pop() {
            if stamp[v] == o {
                continue;
            }
            stamp[v] = o;
            keys[v].push(o);
            stack.extend(
                g.refs[v]
                    .iter()
                    .copied()
                    .filter(|&w| !owner[w] && stamp[w] != o),
            );
        }
    }

    // Each entry is one group's levels, lowest first, each level split
    // into classes of paths with the same references; a large path is a
    // group of one level of one class.
    let mut split_groups: Vec<Vec<Vec<Layer>>> = Vec::new();
    let mut groups: BTreeMap<Vec<usize>, Vec<usize>> = BTreeMap::new();
    for v in 0..n {
        if large[v] {
            split_groups.push(vec![vec![Layer::of(&g, &heights, &[v])]]);
        } else if owner[v] {
            groups.entry(vec![v]).or_default().push(v);
        } else {
            // An empty key (a path no owner reaches) cannot occur in a real
            // closure; such paths share one group rather than fail.
            groups
                .entry(std::mem::take(&mut keys[v]))
                .or_default()
                .push(v);
        }
    }
    split_groups.extend(
        groups
            .into_values()
            .map(|members| split(&g, &heights, members)),
    );

    let budget = input.budget as usize;
    let mut count: usize = split_groups.iter().flatten().map(Vec::len).sum();
    // Over budget, first whole levels give up their reference classes,
    // smallest level first (bytes, then smallest path): what the level
    // holds is intrinsic, so the same levels rejoin in every image that is
    // over budget by as much.
    if count > budget {
        let mut split_levels: Vec<((u64, &str), usize, usize)> = split_groups
            .iter()
            .enumerate()
            .flat_map(|(gi, levels)| {
                levels
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.len() > 1)
                    .map(move |(li, c)| {
                        let size = c.iter().map(|l| l.size).sum::<u64>();
                        let first = c.iter().map(|l| l.paths[0].as_str()).min().unwrap_or("");
                        ((size, first), gi, li)
                    })
            })
            .collect();
        split_levels.sort();
        let joins: Vec<(usize, usize)> = split_levels
            .into_iter()
            .map(|(_, gi, li)| (gi, li))
            .take_while(|&(gi, li)| {
                let over = count > budget;
                if over {
                    count -= split_groups[gi][li].len() - 1;
                }
                over
            })
            .collect();
        for (gi, li) in joins {
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
    let mut split_groups: Vec<Vec<Layer>> = split_groups
        .into_iter()
        .map(|levels| levels.into_iter().flatten().collect())
        .collect();
    while count > budget {
        let best = split_groups
            .iter()
            .enumerate()
            .flat_map(|(gi, levels)| {
                levels.windows(2).enumerate().map(move |(li, w)| {
                    (
                        (
                            w[0].size + w[1].size,
                            std::cmp::min(&w[0].paths[0], &w[1].paths[0]),
                        ),
                        gi,
                        li,
                    )
                })
            })
            .min();
        let Some((_, gi, li)) = best else { break };
        let upper = split_groups[gi].remove(li + 1);
        split_groups[gi][li].absorb(upper);
        count -= 1;
    }
    // Then the two smallest layers, keyed by (size, smallest path): unique,
    // since paths are.
    let mut queue: BTreeMap<(u64, String), Layer> = split_groups
        .into_iter()
        .flatten()
        .map(|l| ((l.size, l.paths[0].clone()), l))
        .collect();
    while queue.len() > budget {
        let (_, mut a) = queue.pop_first().expect("more than budget >= 1 layers");
        let (_, b) = queue.pop_first().expect("more than budget >= 1 layers");
        a.absorb(b);
        queue.insert((a.size, a.paths[0].clone()), a);
    }
    let mut layers: Vec<Layer> = queue.into_values().collect();
    layers.sort_by(|a, b| (a.height, &a.paths[0]).cmp(&(b.height, &b.paths[0])));
    Ok(Layers {
        strategy: "size".into(),
        layers: layers.into_iter().map(|l| l.paths).collect(),
    })
}

impl Layer {
    fn of(g: &Graph, heights: &[u32], vs: &[usize]) -> Layer {
        let mut paths: Vec<String> = vs.iter().map(|&v| g.paths[v].clone()).collect();
        paths.sort();
        Layer {
            paths,
            size: vs.iter().map(|&v| g.sizes[v]).sum(),
            height: vs.iter().map(|&v| heights[v]).max().unwrap_or(0),
        }
    }

    fn absorb(&mut self, other: Layer) {
        self.size += other.size;
        self.height = self.height.max(other.height);
        self.paths.extend(other.paths);
        self.paths.sort();
    }
}

/// Splits one group by height, so that a library's version bump, which
/// renames the library and what is above it, leaves the lower levels of
/// every group alone; and each level by references: paths with the same
/// references change together (a dependency's bump renames all of them),
/// paths with different ones need not.
fn split(g: &Graph, heights: &[u32], members: Vec<usize>) -> Vec<Vec<Layer>> {
    let mut levels: BTreeMap<u32, BTreeMap<&[usize], Vec<usize>>> = BTreeMap::new();
    for v in members {
        levels
            .entry(heights[v])
            .or_default()
            .entry(g.refs[v].as_slice())
            .or_default()
            .push(v);
    }
    levels
        .values()
        .map(|classes| {
            classes
                .values()
                .map(|vs| Layer::of(g, heights, vs))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests;
