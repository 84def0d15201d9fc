//! The closure graph as grouping strategies want it.
//!
//! The wire already names paths by index; this adds what every strategy
//! needs first: `usize` indices in path order (the host sends paths sorted;
//! if another caller did not, they are sorted here, so that ties broken by
//! index are broken by path), references without self-references,
//! duplicates or indices out of range, and the walks every strategy starts
//! with. One copy here, not one per plugin.

use crate::{GroupInput, Layers, PluginError};

/// The closure, indexed; index order is path order. Borrows the input's
/// path names: no strategy needs copies of thousands of strings.
#[derive(Debug, Clone)]
pub struct IndexedGraph<'a> {
    pub paths: Vec<&'a str>,
    /// NAR size of each path.
    pub sizes: Vec<u64>,
    /// Popularity count of each path's name (0 without data).
    pub popularity: Vec<u64>,
    /// Each path's references: sorted, deduplicated, without
    /// self-references, and without indices outside the closure (the host
    /// checks that a closure is complete; a plugin only must not crash).
    /// `refs[v]` is a slice.
    pub refs: Refs,
    /// The requested top-level paths, in the order the host sent them.
    pub roots: Vec<usize>,
    /// The wire index of each index, when the input was not in path order.
    wire: Option<Vec<u32>>,
}

/// Every path's references in one flat list: one allocation instead of one
/// per path, which on a 10,000-path closure was a tenth of a grouping call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// `flat[start[v]..start[v + 1]]` are the references of `v`.
    start: Vec<usize>,
    flat: Vec<usize>,
}

impl Refs {
    /// The number of paths.
    pub fn len(&self) -> usize {
        self.start.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each path's references, in index order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[usize]> + '_ {
        (0..self.len()).map(|v| &self[v])
    }
}

impl Refs {
    /// The edges of the graph of nodes `0..n` with successors `succ(v)`,
    /// turned around: each node's predecessors, ascending.
    pub fn reversed<'a>(n: usize, succ: impl Fn(usize) -> &'a [usize]) -> Refs {
        let mut start = vec![0usize; n + 1];
        for v in 0..n {
            for &w in succ(v) {
                start[w + 1] += 1;
            }
        }
        for w in 0..n {
            start[w + 1] += start[w];
        }
        let mut fill = start.clone();
        let mut flat = vec![0usize; start[n]];
        for v in 0..n {
            for &w in succ(v) {
                flat[fill[w]] = v;
                fill[w] += 1;
            }
        }
        Refs { start, flat }
    }
}

impl std::ops::Index<usize> for Refs {
    type Output = [usize];

    fn index(&self, v: usize) -> &[usize] {
        &self.flat[self.start[v]..self.start[v + 1]]
    }
}

impl<'a> IndexedGraph<'a> {
    /// Fails on a path listed twice or a root outside the closure.
    pub fn new(input: &'a GroupInput) -> Result<IndexedGraph<'a>, PluginError> {
        let given = &input.graph.paths;
        let n = given.len();
        if u32::try_from(n).is_err() {
            return Err(PluginError::new(format!("{n} store paths are more than indices can name")));
        }
        let sorted = given.windows(2).all(|w| w[0].path < w[1].path);
        // position[wire index] = index; wire[index] = wire index.
        let (position, wire): (Vec<usize>, Option<Vec<u32>>) = if sorted {
            ((0..n).collect(), None)
        } else {
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_by(|&a, &b| given[a as usize].path.cmp(&given[b as usize].path));
            if let Some(w) = order.windows(2).find(|w| given[w[0] as usize].path == given[w[1] as usize].path) {
                return Err(PluginError::new(format!(
                    "store path {} is listed twice",
                    given[w[0] as usize].path
                )));
            }
            let mut position = vec![0; n];
            for (i, &o) in order.iter().enumerate() {
                position[o as usize] = i;
            }
            (position, Some(order))
        };
        let at = |i: usize| wire.as_ref().map_or(i, |w| w[i] as usize);
        let mut refs = Refs {
            start: Vec::with_capacity(n + 1),
            flat: Vec::with_capacity(given.iter().map(|p| p.references.len()).sum()),
        };
        refs.start.push(0);
        for i in 0..n {
            let from = refs.flat.len();
            refs.flat.extend(
                given[at(i)]
                    .references
                    .iter()
                    .filter(|&&j| (j as usize) < n)
                    .map(|&j| position[j as usize])
                    .filter(|&j| j != i),
            );
            let own = &mut refs.flat[from..];
            own.sort_unstable();
            let mut kept = 0;
            for k in 0..own.len() {
                if k == 0 || own[k] != own[kept - 1] {
                    own[kept] = own[k];
                    kept += 1;
                }
            }
            refs.flat.truncate(from + kept);
            refs.start.push(refs.flat.len());
        }
        let roots = input
            .graph
            .roots
            .iter()
            .map(|&r| {
                position.get(r as usize).copied().ok_or_else(|| {
                    PluginError::new(format!("top-level path index {r} is not in the closure"))
                })
            })
            .collect::<Result<Vec<usize>, PluginError>>()?;
        Ok(IndexedGraph {
            paths: (0..n).map(|i| given[at(i)].path.as_str()).collect(),
            sizes: (0..n).map(|i| given[at(i)].nar_size).collect(),
            popularity: (0..n).map(|i| given[at(i)].popularity).collect(),
            refs,
            roots,
            wire,
        })
    }

    /// Each path's referrers in the closure, ascending.
    pub fn referrers(&self) -> Refs {
        Refs::reversed(self.len(), |v| &self.refs[v])
    }

    /// Every path after the paths it references (a postorder of the
    /// references, starting from paths in index order), and each path's
    /// height: the longest reference chain below it, 0 for a leaf. Height is
    /// intrinsic to a path's closure, so strategies order layers by it
    /// without depending on what else an image holds. Edges closing a cycle
    /// (Nix produces none besides self-references, already removed) are
    /// ignored rather than followed forever.
    pub fn postorder_heights(&self) -> (Vec<usize>, Vec<u32>) {
        let n = self.len();
        let mut order = Vec::with_capacity(n);
        let mut height = vec![0u32; n];
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; n];
        let mut stack = Vec::new();
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            stack.push((start, 0usize));
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
                    order.push(v);
                    stack.pop();
                }
            }
        }
        (order, height)
    }

    /// The wire form of a grouping: each layer's paths in path order, as
    /// the input's indices.
    pub fn layers(&self, strategy: &str, layers: Vec<Vec<usize>>) -> Layers {
        Layers {
            strategy: strategy.to_string(),
            layers: layers
                .into_iter()
                .map(|mut l| {
                    l.sort_unstable();
                    l.into_iter()
                        .map(|i| self.wire.as_ref().map_or(i as u32, |w| w[i]))
                        .collect()
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// Sets of paths that a strategy merges many times (thousands of merges on
/// a 10,000-path closure): each set is a chain through one array of
/// successors, so that a merge is two writes instead of a copy.
#[derive(Debug, Clone)]
pub struct Chains {
    next: Vec<usize>,
}

/// One set of paths in [`Chains`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    head: usize,
    tail: usize,
}

impl Chains {
    /// Room for paths `0..n`, each in at most one chain.
    pub fn new(n: usize) -> Chains {
        Chains { next: vec![usize::MAX; n] }
    }

    /// A chain of `paths`, which must not be empty.
    pub fn chain(&mut self, paths: &[usize]) -> Chain {
        for w in paths.windows(2) {
            self.next[w[0]] = w[1];
        }
        Chain {
            head: paths[0],
            tail: paths[paths.len() - 1],
        }
    }

    /// Appends `other` to `into`; `other` must not be used again.
    pub fn join(&mut self, into: &mut Chain, other: Chain) {
        self.next[into.tail] = other.head;
        into.tail = other.tail;
    }

    /// The paths of a chain, in the order they were joined.
    pub fn paths(&self, chain: Chain) -> Vec<usize> {
        let mut paths = vec![chain.head];
        let mut v = chain.head;
        while v != chain.tail {
            v = self.next[v];
            paths.push(v);
        }
        paths
    }
}

/// Merges the two items with the lowest keys, again and again, until at
/// most `budget` remain (Nixery's way to meet a layer budget, and the last
/// resort of every strategy here). Keys should be unique (include the
/// smallest path) so that the result does not depend on item order; equal
/// keys are taken in item order. Returns the survivors in item order.
pub fn merge_lowest<T, K: Ord>(
    items: Vec<T>,
    budget: usize,
    key: impl Fn(&T) -> K,
    mut merge: impl FnMut(&mut T, T),
) -> Vec<T> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if items.len() <= budget {
        return items;
    }
    let mut heap: BinaryHeap<_> = items.iter().enumerate().map(|(i, t)| Reverse((key(t), i))).collect();
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    while heap.len() > budget.max(1) {
        let (Some(Reverse((_, a))), Some(Reverse((_, b)))) = (heap.pop(), heap.pop()) else {
            unreachable!("the heap holds more than one item")
        };
        let other = slots[b].take().expect("each item is in the heap once");
        let into = slots[a].as_mut().expect("each item is in the heap once");
        merge(into, other);
        heap.push(Reverse((key(into), a)));
    }
    slots.into_iter().flatten().collect()
}

/// A random-looking DAG for grouping plugins' property tests: node `i`
/// (`(nar size, reference picks, references itself)`) may reference only
/// nodes after it, as Nix store graphs never cycle, each pick wrapped into
/// that range; `name(i)` is node `i`'s store path.
#[doc(hidden)]
pub fn dag_from_picks(
    nodes: &[(u64, Vec<usize>, bool)],
    name: impl Fn(usize) -> String,
) -> Vec<crate::NamedPath> {
    let n = nodes.len();
    nodes
        .iter()
        .enumerate()
        .map(|(i, (size, picks, selfref))| {
            let mut references: Vec<String> = picks
                .iter()
                .filter(|_| i + 1 < n)
                .map(|&x| name(i + 1 + x % (n - i - 1)))
                .collect();
            if *selfref {
                references.push(name(i));
            }
            crate::NamedPath {
                path: name(i),
                nar_size: *size,
                references,
            }
        })
        .collect()
}

/// The same graph with its paths in reverse order (indices remapped), and
/// references and roots reversed: for property tests that the wire order
/// does not change a grouping.
#[doc(hidden)]
pub fn reversed(graph: &crate::ClosureGraph) -> crate::ClosureGraph {
    let last = graph.paths.len() as u32 - 1;
    crate::ClosureGraph {
        roots: graph.roots.iter().rev().map(|&r| last - r).collect(),
        paths: graph
            .paths
            .iter()
            .rev()
            .map(|p| crate::StorePath {
                references: p.references.iter().rev().map(|&r| last - r).collect(),
                ..p.clone()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClosureGraph, StorePath};

    fn input(paths: &[(&str, &[u32])], roots: &[u32]) -> GroupInput {
        let paths = paths
            .iter()
            .map(|(p, refs)| StorePath {
                path: p.to_string(),
                nar_size: p.len() as u64,
                references: refs.to_vec(),
                popularity: 0,
            })
            .collect();
        let graph = ClosureGraph {
            roots: roots.to_vec(),
            paths,
        };
        serde_json::from_value(serde_json::json!({ "graph": graph, "budget": 10 })).unwrap()
    }

    #[test]
    fn indices_follow_path_order_and_references_are_clean() {
        // Not in path order on the wire: /s/b is wire index 0.
        let unsorted = input(&[("/s/b", &[1, 0, 1, 7]), ("/s/a", &[])], &[0]);
        let g = IndexedGraph::new(&unsorted).unwrap();
        assert_eq!(g.paths, ["/s/a", "/s/b"]);
        assert_eq!(g.refs.iter().collect::<Vec<_>>(), [&[][..], &[0][..]]);
        assert_eq!(g.referrers().iter().collect::<Vec<_>>(), [&[1][..], &[][..]]);
        assert_eq!(g.roots, [1]);
        assert_eq!(g.sizes, [4, 4]);
        // Output goes back to wire indices.
        assert_eq!(g.layers("t", vec![vec![1], vec![0]]).layers, vec![vec![0], vec![1]]);
        let sorted = input(&[("/s/a", &[]), ("/s/b", &[0])], &[1]);
        let g = IndexedGraph::new(&sorted).unwrap();
        assert_eq!(g.layers("t", vec![vec![1, 0]]).layers, vec![vec![0, 1]]);
    }

    #[test]
    fn chains_join_and_merges_take_the_lowest_keys() {
        let mut chains = Chains::new(6);
        let mut a = chains.chain(&[4, 0]);
        let b = chains.chain(&[2]);
        let c = chains.chain(&[5, 1, 3]);
        chains.join(&mut a, b);
        chains.join(&mut a, c);
        assert_eq!(chains.paths(a), [4, 0, 2, 5, 1, 3]);
        assert_eq!(chains.paths(b), [2]);
        // (weight, name): a + b first, then the merged a + c, leaving two.
        let items = vec![(5, "e"), (1, "a"), (3, "c"), (2, "b")];
        let merged = merge_lowest(items, 2, |&(w, n)| (w, n), |x, y| *x = (x.0 + y.0, x.1));
        assert_eq!(merged, [(5, "e"), (6, "a")]);
        assert_eq!(merge_lowest(vec![(1, "a")], 0, |&x| x, |_, _| ()), [(1, "a")]);
    }

    #[test]
    fn duplicates_and_foreign_roots_are_errors() {
        let e = IndexedGraph::new(&input(&[("/s/b", &[]), ("/s/a", &[]), ("/s/b", &[])], &[])).unwrap_err();
        assert!(e.message.contains("listed twice"), "{}", e.message);
        let e = IndexedGraph::new(&input(&[("/s/a", &[])], &[3])).unwrap_err();
        assert!(e.message.contains("not in the closure"), "{}", e.message);
    }

    #[test]
    fn named_paths_become_indices() {
        let named = |p: &str, refs: &[&str]| crate::NamedPath {
            path: p.into(),
            nar_size: 1,
            references: refs.iter().map(|r| r.to_string()).collect(),
        };
        let g = ClosureGraph::from_named(&["/s/b"], vec![named("/s/b", &["/s/a", "/s/b"]), named("/s/a", &[])]).unwrap();
        assert_eq!(g.roots, [1]);
        assert_eq!(g.paths[1].references, [0, 1]);
        let e = ClosureGraph::from_named(&["/s/b"], vec![named("/s/b", &["/s/x"])]).unwrap_err();
        assert!(e.contains("/s/x, which is not in the closure"), "{e}");
        let e = ClosureGraph::from_named(&["/s/z"], vec![named("/s/b", &[])]).unwrap_err();
        assert!(e.contains("top-level path /s/z"), "{e}");
        let e = ClosureGraph::from_named(&["/s/b"], vec![named("/s/b", &[]), named("/s/b", &[])]).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let mut g = ClosureGraph::from_named(&["/s/h-bash-5.2"], vec![named("/s/h-bash-5.2", &[])]).unwrap();
        g.set_popularity(&[("bash-5.2".to_string(), 7)].into());
        assert_eq!(g.paths[0].popularity, 7);
    }
}
