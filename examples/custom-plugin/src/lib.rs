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

use std::collections::BTreeMap;
use strata_plugin_sdk::{GroupInput, Layers, PluginError};

strata_plugin_sdk::export_plugin! {
    name: "one-layer-per-package",
    group_layers: group_layers,
}

/// The `group_layers` hook.
pub fn group_layers(input: GroupInput) -> Result<Layers, PluginError> {
    let graph = &input.graph;
    let index: BTreeMap<&str, usize> = graph
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.as_str(), i))
        .collect();
    if !graph.paths.is_empty() && input.budget == 0 {
        return Err(PluginError::new(
            "a layer budget of 0 cannot hold any store path",
        ));
    }

    // Roots sorted by their name without the hash, so that the layers read
    // alphabetically, whatever the request order.
    let mut roots: Vec<usize> = Vec::new();
    for r in &graph.roots {
        let i = *index
            .get(r.as_str())
            .ok_or_else(|| PluginError::new(format!("top-level path {r} is not in the closure")))?;
        if !roots.contains(&i) {
            roots.push(i);
        }
    }
    roots.sort_by_key(|&i| (name(&graph.paths[i].path), &graph.paths[i].path));

    // owner[p]: the one root whose closure holds p, or None when zero or
    // several do.
    const NOBODY: usize = usize::MAX;
    const SHARED: usize = usize::MAX - 1;
    let mut owner = vec![NOBODY; graph.paths.len()];
    for (k, &root) in roots.iter().enumerate() {
        let mut seen = vec![false; graph.paths.len()];
        let mut stack = vec![root];
        while let Some(v) = stack.pop() {
            if std::mem::replace(&mut seen[v], true) {
                continue;
            }
            owner[v] = if owner[v] == NOBODY { k } else { SHARED };
            for r in &graph.paths[v].references {
                if let Some(&w) = index.get(r.as_str()) {
                    stack.push(w);
                }
            }
        }
    }

    let mut shared: Vec<String> = Vec::new();
    let mut per_root: Vec<Vec<String>> = vec![Vec::new(); roots.len()];
    for (v, p) in graph.paths.iter().enumerate() {
        match owner[v] {
            NOBODY | SHARED => shared.push(p.path.clone()),
            k => per_root[k].push(p.path.clone()),
        }
    }

    // Over budget, the smallest package layers join the shared one.
    let size: BTreeMap<&str, u64> = graph
        .paths
        .iter()
        .map(|p| (p.path.as_str(), p.nar_size))
        .collect();
    let bytes = |l: &Vec<String>| l.iter().map(|p| size[p.as_str()]).sum::<u64>();
    let mut layers: Vec<Vec<String>> = per_root.into_iter().filter(|l| !l.is_empty()).collect();
    while layers.len() + usize::from(!shared.is_empty()) > input.budget as usize {
        let smallest = (0..layers.len())
            .min_by_key(|&i| (bytes(&layers[i]), layers[i][0].clone()))
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

/// `/nix/store/<hash>-<name>` → `<name>`.
fn name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split_once('-').map_or(base, |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use strata_plugin_sdk::{ClosureGraph, StorePath};

    fn p(name: &str) -> String {
        let hash = format!(
            "{:0>32}",
            name.len() * 31 + name.bytes().map(usize::from).sum::<usize>()
        );
        format!("/nix/store/{hash}-{name}")
    }

    fn input(nodes: &[(&str, u64, &[&str])], roots: &[&str], budget: u32) -> GroupInput {
        let mut paths: Vec<StorePath> = nodes
            .iter()
            .map(|(n, size, refs)| StorePath {
                path: p(n),
                nar_size: *size,
                references: refs.iter().map(|r| p(r)).collect(),
                nar_hash: String::new(),
            })
            .collect();
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        GroupInput {
            config: Default::default(),
            graph: ClosureGraph {
                roots: roots.iter().map(|r| p(r)).collect(),
                paths,
            },
            popularity: BTreeMap::new(),
            budget,
        }
    }

    fn names(out: &Layers) -> Vec<Vec<&str>> {
        out.layers
            .iter()
            .map(|l| {
                let mut v: Vec<&str> = l.iter().map(|x| name(x)).collect();
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
        let out = group_layers(input(GRAPH, &["jq", "git"], 10)).unwrap();
        assert_eq!(out.strategy, "one-layer-per-package");
        assert_eq!(
            names(&out),
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
        let out = group_layers(input(&GRAPH[..2], &["git", "curl"], 10)).unwrap();
        assert_eq!(names(&out), vec![vec!["curl"], vec!["git"]]);
        let mut closure = GRAPH.to_vec();
        closure.retain(|n| !["jq", "oniguruma"].contains(&n.0));
        let out = group_layers(input(&closure, &["git", "curl"], 10)).unwrap();
        assert_eq!(
            names(&out),
            vec![vec!["curl", "glibc", "zlib"], vec!["git"]]
        );
    }

    #[test]
    fn over_budget_small_packages_join_the_base() {
        let out = group_layers(input(GRAPH, &["jq", "git"], 2)).unwrap();
        assert_eq!(
            names(&out),
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
        let all: BTreeSet<String> = GRAPH.iter().map(|n| p(n.0)).collect();
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
                let got: Vec<&String> = out.layers.iter().flatten().collect();
                let unique: BTreeSet<String> = got.iter().map(|s| s.to_string()).collect();
                assert_eq!(got.len(), unique.len());
                assert_eq!(unique, all);
            }
        }
    }

    #[test]
    fn errors() {
        assert!(group_layers(input(GRAPH, &["nope"], 3)).is_err());
        assert!(group_layers(input(GRAPH, &["git"], 0)).is_err());
        let empty = group_layers(input(&[], &[], 0)).unwrap();
        assert!(empty.layers.is_empty());
    }
}
