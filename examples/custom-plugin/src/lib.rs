//! `one-layer-per-package`: an example grouping strategy.
//!
//! Every requested package gets one layer with the part of its closure no
//! other requested package needs; everything needed by two or more of them
//! goes into one shared base layer. Easy to read in `docker history`, and a
//! template for writing your own strategy: a plain function from
//! [`GroupInput`] to [`Layers`], tested natively, exported with one macro.
//!
//! A requested package that another requested package depends on is needed
//! by both, so it lands in the shared layer.

use strata_plugin_sdk::{store_name, GroupInput, Layers, PluginError};

strata_plugin_sdk::export_plugin! {
    name: "one-layer-per-package",
    group_layers: group_layers,
}

/// The `group_layers` hook. Store paths are named by their index in
/// `input.graph.paths` (references, roots and the layers returned).
pub fn group_layers(input: GroupInput) -> Result<Layers, PluginError> {
    let paths = &input.graph.paths;
    let n = paths.len();
    if n > 0 && input.budget == 0 {
        return Err(PluginError::new(
            "a layer budget of 0 cannot hold any store path",
        ));
    }

    // Roots sorted by their name without the hash, so that the layers read
    // alphabetically, whatever the request order.
    let mut roots: Vec<usize> = Vec::new();
    for &r in &input.graph.roots {
        let r = r as usize;
        if r >= n {
            return Err(PluginError::new(format!("top-level path {r} is not in the closure")));
        }
        if !roots.contains(&r) {
            roots.push(r);
        }
    }
    roots.sort_by_key(|&i| (store_name(&paths[i].path), &paths[i].path));

    // owner[p]: the one root whose closure holds p, or None when zero or
    // several do.
    const NOBODY: usize = usize::MAX;
    const SHARED: usize = usize::MAX - 1;
    let mut owner = vec![NOBODY; n];
    for (k, &root) in roots.iter().enumerate() {
        let mut seen = vec![false; n];
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            if std::mem::replace(&mut seen[v], true) {
                continue;
            }
            owner[v] = if owner[v] == NOBODY { k } else { SHARED };
            // (An index out of range would be the host's bug; skip it.)
            stack.extend(paths[v].references.iter().map(|&w| w as usize).filter(|&w| w < n));
        }
    }

    let mut shared: Vec<u32> = Vec::new();
    let mut per_root: Vec<Vec<u32>> = vec![Vec::new(); roots.len()];
    for v in 0..n {
        match owner[v] {
            NOBODY | SHARED => shared.push(v as u32),
            k => per_root[k].push(v as u32),
        }
    }

    // Over budget, the smallest package layers join the shared one (ties:
    // the smallest path; indices follow path order).
    let bytes = |l: &Vec<u32>| l.iter().map(|&p| paths[p as usize].nar_size).sum::<u64>();
    let mut layers: Vec<Vec<u32>> = per_root.into_iter().filter(|l| !l.is_empty()).collect();
    while layers.len() + usize::from(!shared.is_empty()) > input.budget as usize {
        let smallest = (0..layers.len())
            .min_by_key(|&i| (bytes(&layers[i]), layers[i][0]))
            .expect("over budget means at least two layers");
        shared.extend(layers.remove(smallest));
    }

    let mut out = Vec::new();
    if !shared.is_empty() {
        out.push(shared);
    }
    out.extend(layers);
    for layer in &mut out {
        layer.sort();
    }
    Ok(Layers {
        strategy: "one-layer-per-package".into(),
        layers: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use strata_plugin_sdk::{ClosureGraph, NamedPath};

    fn p(name: &str) -> String {
        let hash = format!(
            "{:0>32}",
            name.len() * 31 + name.bytes().map(usize::from).sum::<usize>()
        );
        format!("/nix/store/{hash}-{name}")
    }

    /// Builds the wire graph from paths that name their references, as a
    /// test would write them (`ClosureGraph::from_named` does the indexing).
    fn input(nodes: &[(&str, u64, &[&str])], roots: &[&str], budget: u32) -> GroupInput {
        let paths = nodes
            .iter()
            .map(|(n, size, refs)| NamedPath {
                path: p(n),
                nar_size: *size,
                references: refs.iter().map(|r| p(r)).collect(),
            })
            .collect();
        let roots: Vec<String> = roots.iter().map(|r| p(r)).collect();
        GroupInput {
            config: Default::default(),
            graph: ClosureGraph::from_named(&roots, paths).unwrap(),
            budget,
        }
    }

    /// The layers as sorted package names.
    fn names(i: &GroupInput) -> Vec<Vec<String>> {
        let out = group_layers(i.clone()).unwrap();
        out.named(&i.graph)
            .iter()
            .map(|l| {
                let mut v: Vec<String> = l.iter().map(|x| store_name(x).to_string()).collect();
                v.sort();
                v
            })
            .collect()
    }

    const GRAPH: &[(&str, u64, &[&str])] = &[
        ("git", 50, &["curl", "glibc", "git"]),
        ("curl", 2, &["glibc", "zlib"]),
        ("jq", 1, &["glibc", "oniguruma"]),
        ("oniguruma", 1, &["glibc"]),
        ("zlib", 1, &["glibc"]),
        ("glibc", 30, &[]),
    ];

    #[test]
    fn exclusive_closures_and_a_shared_base() {
        let i = input(GRAPH, &["jq", "git"], 10);
        assert_eq!(group_layers(i.clone()).unwrap().strategy, "one-layer-per-package");
        assert_eq!(
            names(&i),
            vec![
                vec!["glibc"],
                vec!["curl", "git", "zlib"],
                vec!["jq", "oniguruma"]
            ]
        );
    }

    #[test]
    fn request_order_does_not_matter() {
        let a = group_layers(input(GRAPH, &["jq", "git"], 10)).unwrap();
        let b = group_layers(input(GRAPH, &["git", "jq", "git"], 10)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_package_needed_by_another_is_shared() {
        let closure: Vec<_> = GRAPH.iter().filter(|n| !["jq", "oniguruma"].contains(&n.0)).copied().collect();
        assert_eq!(
            names(&input(&closure, &["git", "curl"], 10)),
            vec![vec!["curl", "glibc", "zlib"], vec!["git"]]
        );
    }

    #[test]
    fn over_budget_small_packages_join_the_base() {
        assert_eq!(
            names(&input(GRAPH, &["jq", "git"], 2)),
            vec![
                vec!["glibc", "jq", "oniguruma"],
                vec!["curl", "git", "zlib"]
            ]
        );
        let out = group_layers(input(GRAPH, &["jq", "git"], 1)).unwrap();
        assert_eq!(out.layers.len(), 1);
    }

    #[test]
    fn always_a_partition() {
        let all: BTreeSet<u32> = (0..GRAPH.len() as u32).collect();
        for roots in [
            &["git"][..],
            &["jq"],
            &["git", "jq"],
            &["zlib", "jq", "curl"],
        ] {
            for budget in 1..5 {
                // Every path is given, even those no root needs: they go
                // to the shared layer.
                let out = group_layers(input(GRAPH, roots, budget)).unwrap();
                assert!(out.layers.len() <= budget as usize);
                assert!(out.layers.iter().all(|l| !l.is_empty()));
                let got: Vec<u32> = out.layers.iter().flatten().copied().collect();
                let unique: BTreeSet<u32> = got.iter().copied().collect();
                assert_eq!(got.len(), unique.len());
                assert_eq!(unique, all);
            }
        }
    }

    #[test]
    fn errors() {
        let mut i = input(GRAPH, &["git"], 3);
        i.graph.roots.push(99);
        assert!(group_layers(i).is_err());
        assert!(group_layers(input(GRAPH, &["git"], 0)).is_err());
        let empty = group_layers(input(&[], &[], 0)).unwrap();
        assert!(empty.layers.is_empty());
    }
}
