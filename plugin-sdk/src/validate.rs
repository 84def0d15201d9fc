//! Checks on what plugins return. The host never trusts a plugin's output:
//! a grouping decides which files go into which tarball, so a path outside
//! the closure, or a closure path left out, would make a wrong image.
//!
//! Here rather than in the host because they are about these wire types
//! only: a plugin author can run the host's verdict in a native test, and
//! fuzz/ builds them without the host's dependencies.

use crate::{ClosureGraph, Expansion, Layers, SourceOutput};
use std::collections::HashMap;

/// Longest plugin-supplied text put into a reason or an image history entry.
const MAX_TEXT: usize = 1000;

/// Makes plugin-supplied text safe to put into a log line or an HTTP error:
/// one line, bounded length.
pub fn clean_message(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(MAX_TEXT).is_some() {
        out.push('…');
    }
    out
}

/// Checks that `layers` is a partition of `graph` within `budget`; returns
/// the reason it is not, starting with "returned an invalid grouping".
pub fn grouping(graph: &ClosureGraph, budget: u32, layers: &Layers) -> Result<(), String> {
    grouping_problem(graph, budget, layers).map_err(|p| format!("returned an invalid grouping: {p}"))
}

fn grouping_problem(graph: &ClosureGraph, budget: u32, out: &Layers) -> Result<(), String> {
    if out.strategy.len() > 200 || out.strategy.chars().any(char::is_control) {
        return Err("the strategy name must be at most 200 characters on one line".into());
    }
    if out.layers.len() > budget as usize {
        return Err(format!("{} layers, over the budget of {budget}", out.layers.len()));
    }
    let index: HashMap<&str, usize> =
        graph.paths.iter().enumerate().map(|(i, p)| (p.path.as_str(), i)).collect();
    let mut placed: Vec<Option<usize>> = vec![None; graph.paths.len()];
    for (n, layer) in out.layers.iter().enumerate() {
        if layer.is_empty() {
            return Err(format!("layer {n} is empty"));
        }
        for path in layer {
            if !is_store_path(path) {
                return Err(format!("path {} is not a /nix/store path", clean_message(path)));
            }
            let Some(&i) = index.get(path.as_str()) else {
                return Err(format!("path {path} is not in the closure"));
            };
            if let Some(first) = placed[i] {
                return Err(if first == n {
                    format!("path {path} appears twice in layer {n}")
                } else {
                    format!("path {path} is in both layer {first} and layer {n}")
                });
            }
            placed[i] = Some(n);
        }
    }
    if let Some(i) = placed.iter().position(Option::is_none) {
        let missing = placed.iter().filter(|p| p.is_none()).count();
        let more = if missing > 1 { format!(" (and {} more)", missing - 1) } else { String::new() };
        return Err(format!("path {} is missing{more}", graph.paths[i].path));
    }
    Ok(())
}

/// `/nix/store/<name>` with a plain name: no further `/`, no `.`/`..`
/// component, nothing that would let a layer writer leave the store.
fn is_store_path(path: &str) -> bool {
    match path.strip_prefix("/nix/store/") {
        Some(name) => {
            !name.is_empty()
                && name != "."
                && !name.contains("..")
                && !name.contains('/')
                && !name.chars().any(|c| c.is_control() || c == '\\')
        }
        None => false,
    }
}

/// Checks what an expansion plugin handed on; the next plugin and the build
/// rely on it.
pub fn expansion(e: &Expansion) -> Result<(), String> {
    expansion_problem(e).map_err(|p| format!("returned an invalid expansion: {p}"))
}

fn expansion_problem(e: &Expansion) -> Result<(), String> {
    if e.arch != "amd64" && e.arch != "arm64" {
        return Err(format!("arch `{}` is neither amd64 nor arm64", clean_message(&e.arch)));
    }
    for p in &e.packages {
        if p.is_empty() || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("package name {:?} is empty or contains whitespace", clean_message(p)));
        }
    }
    for var in &e.image.env {
        match var.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => return Err(format!("environment entry {:?} is not KEY=value", clean_message(var))),
        }
    }
    Ok(())
}

/// The identity names what was built in cache keys and on the web page.
pub fn source(out: &SourceOutput) -> Result<(), String> {
    let id = &out.identity;
    if id.is_empty() || id.len() > MAX_TEXT || id.chars().any(char::is_control) {
        return Err("returned an invalid source: the identity must be one non-empty line of at most 1000 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StorePath;

    fn graph(names: &[&str]) -> ClosureGraph {
        ClosureGraph {
            roots: vec![format!("/nix/store/{}", names[0])],
            paths: names
                .iter()
                .map(|n| StorePath {
                    path: format!("/nix/store/{n}"),
                    nar_size: 1,
                    references: vec![],
                    nar_hash: String::new(),
                })
                .collect(),
        }
    }

    fn layers(l: &[&[&str]]) -> Layers {
        Layers {
            strategy: "t".into(),
            layers: l.iter().map(|l| l.iter().map(|p| format!("/nix/store/{p}")).collect()).collect(),
        }
    }

    #[test]
    fn partitions() {
        let g = graph(&["a", "b", "c"]);
        assert_eq!(grouping(&g, 2, &layers(&[&["a"], &["b", "c"]])), Ok(()));
        let err = |l: &[&[&str]], budget| grouping(&g, budget, &layers(l)).unwrap_err();
        assert!(err(&[&["a"], &["b"]], 3).ends_with("path /nix/store/c is missing"));
        assert!(err(&[&["a"], &["b", "c", "a"]], 3).contains("in both layer 0 and layer 1"));
        assert!(err(&[&["a", "a", "b", "c"]], 3).contains("appears twice in layer 0"));
        assert!(err(&[&["a", "b", "c", "d"]], 3).contains("/nix/store/d is not in the closure"));
        assert!(err(&[&["a"], &["b"], &["c"]], 2).contains("3 layers, over the budget of 2"));
        assert!(err(&[&["a", "b", "c"], &[]], 2).contains("layer 1 is empty"));
        assert!(err(&[&["a", "b", "c", "../etc"]], 2).contains("not a /nix/store path"));
        assert!(err(&[&["a", "b", "c", "x/../../etc"]], 2).contains("not a /nix/store path"));
        let outside = Layers { strategy: "t".into(), layers: vec![vec!["/etc/passwd".into()]] };
        assert!(grouping(&g, 2, &outside).unwrap_err().contains("/etc/passwd is not a /nix/store path"));
        assert_eq!(grouping(&graph(&["a"]), 0, &layers(&[&["a"]])).unwrap_err(),
            "returned an invalid grouping: 1 layers, over the budget of 0");
    }

    #[test]
    fn empty_closure_needs_no_layer() {
        let g = ClosureGraph::default();
        assert_eq!(grouping(&g, 0, &Layers::default()), Ok(()));
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let m = clean_message(&format!("a\nb{}", "x".repeat(5000)));
        assert!(!m.contains('\n'));
        assert!(m.chars().count() <= MAX_TEXT + 1);
    }

    #[test]
    fn expansions() {
        let mut e = Expansion { packages: vec!["git".into(), "xorg.xev".into()], arch: "arm64".into(), ..Default::default() };
        assert_eq!(expansion(&e), Ok(()));
        e.arch = "x86".into();
        assert!(expansion(&e).unwrap_err().contains("arch `x86`"));
        e.arch = "amd64".into();
        e.packages.push("a b".into());
        assert!(expansion(&e).is_err());
        e.packages.pop();
        e.image.env.push("NOEQUALS".into());
        assert!(expansion(&e).is_err());
    }
}
