//! The closure graph with dense indices, for grouping plugins.
//!
//! Every grouping strategy starts the same way: store paths as strings are
//! slow to compare and awkward to index, so they become `0..n` in path
//! order (the order is then independent of the order the host sent), with
//! references as sorted index lists. One copy here, not one per plugin.

use crate::{GroupInput, Layers, PluginError};
use std::collections::BTreeMap;

/// The closure, indexed; index order is path order.
#[derive(Debug, Clone)]
pub struct IndexedGraph {
    pub paths: Vec<String>,
    /// NAR size of each path.
    pub sizes: Vec<u64>,
    /// Each path's references: sorted, deduplicated, without
    /// self-references, and without paths outside the closure (the host
    /// checks that a closure is complete; a plugin only must not crash).
    pub refs: Vec<Vec<usize>>,
    /// The requested top-level paths, in the order the host sent them.
    pub roots: Vec<usize>,
}

impl IndexedGraph {
    /// Fails on a path listed twice or a root outside the closure.
    pub fn new(input: &GroupInput) -> Result<IndexedGraph, PluginError> {
        let given = &input.graph.paths;
        let mut order: Vec<usize> = (0..given.len()).collect();
        order.sort_by(|&a, &b| given[a].path.cmp(&given[b].path));
        let mut index = BTreeMap::new();
        for (i, &o) in order.iter().enumerate() {
            let p = &given[o].path;
            if index.insert(p.as_str(), i).is_some() {
                return Err(PluginError::new(format!("store path {p} is listed twice")));
            }
        }
        let refs = order
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                let mut r: Vec<usize> = given[o]
                    .references
                    .iter()
                    .filter_map(|p| index.get(p.as_str()).copied())
                    .filter(|&j| j != i)
                    .collect();
                r.sort_unstable();
                r.dedup();
                r
            })
            .collect();
        let roots = input
            .graph
            .roots
            .iter()
            .map(|r| {
                index.get(r.as_str()).copied().ok_or_else(|| {
                    PluginError::new(format!("top-level path {r} is not in the closure"))
                })
            })
            .collect::<Result<Vec<usize>, PluginError>>()?;
        Ok(IndexedGraph {
            paths: order.iter().map(|&o| given[o].path.clone()).collect(),
            sizes: order.iter().map(|&o| given[o].nar_size).collect(),
            refs,
            roots,
        })
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

    /// The wire form of a grouping: each layer's paths in path order.
    pub fn layers(&self, strategy: &str, layers: Vec<Vec<usize>>) -> Layers {
        Layers {
            strategy: strategy.to_string(),
            layers: layers
                .into_iter()
                .map(|mut l| {
                    l.sort_unstable();
                    l.into_iter().map(|i| self.paths[i].clone()).collect()
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

/// A random-looking DAG for grouping plugins' property tests: node `i`
/// (`(nar size, reference picks, references itself)`) may reference only
/// nodes after it, as Nix store graphs never cycle, each pick wrapped into
/// that range; `name(i)` is node `i`'s store path.
#[doc(hidden)]
pub fn dag_from_picks(
    nodes: &[(u64, Vec<usize>, bool)],
    name: impl Fn(usize) -> String,
) -> Vec<crate::StorePath> {
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
            crate::StorePath {
                path: name(i),
                nar_size: *size,
                references,
                nar_hash: String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClosureGraph, StorePath};

    fn input(paths: &[(&str, &[&str])], roots: &[&str]) -> GroupInput {
        let paths = paths
            .iter()
            .map(|(p, refs)| StorePath {
                path: p.to_string(),
                nar_size: p.len() as u64,
                references: refs.iter().map(|r| r.to_string()).collect(),
                nar_hash: String::new(),
            })
            .collect();
        let graph = ClosureGraph {
            roots: roots.iter().map(|r| r.to_string()).collect(),
            paths,
        };
        serde_json::from_value(serde_json::json!({ "graph": graph, "budget": 10 })).unwrap()
    }

    #[test]
    fn indices_follow_path_order_and_references_are_clean() {
        let g = IndexedGraph::new(&input(
            &[("/s/b", &["/s/a", "/s/b", "/s/a", "/s/x"]), ("/s/a", &[])],
            &["/s/b"],
        ))
        .unwrap();
        assert_eq!(g.paths, ["/s/a", "/s/b"]);
        assert_eq!(g.refs, vec![vec![], vec![0]]);
        assert_eq!(g.roots, [1]);
        assert_eq!(g.sizes, [4, 4]);
    }

    #[test]
    fn duplicates_and_foreign_roots_are_errors() {
        let e = IndexedGraph::new(&input(&[("/s/a", &[]), ("/s/a", &[])], &[])).unwrap_err();
        assert!(e.message.contains("listed twice"), "{}", e.message);
        let e = IndexedGraph::new(&input(&[("/s/a", &[])], &["/s/z"])).unwrap_err();
        assert!(e.message.contains("not in the closure"), "{}", e.message);
    }
}
