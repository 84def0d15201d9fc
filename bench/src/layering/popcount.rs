//! Popularity data for a package set, computed the way Nixery's data is
//! meant: for each store path name, how many of the set's top-level
//! packages have it in their runtime closure. Without such data the
//! `popularity` strategy counts every name as 1, as Nixery does; the
//! benchmark runs it both ways, so that Nixery's algorithm is judged at its
//! best.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use strata_plugin_sdk::{store_name, ClosureGraph, NixSource};

use strata::nix::NixRunner;

/// The top-level derivation attributes of the package set at `path` (nested
/// sets such as `xorg` are left out, as a channel's popularity count
/// would leave out what is not built by default).
pub async fn top_level_packages(path: &Path) -> anyhow::Result<Vec<String>> {
    let expr = "{ path }: let s = import path { }; in builtins.filter \
                (n: (builtins.tryEval ((s.${n}.type or null) == \"derivation\")).value) \
                (builtins.attrNames s)";
    let out = tokio::process::Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", expr, "--argstr", "path"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        anyhow::bail!("nix-instantiate listing {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Builds every top-level package of the set and counts, per store path
/// name, the packages whose closure holds it.
pub async fn popularity_of_set(nix: &NixRunner, path: &Path, system: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut packages = top_level_packages(path).await?;
    let source = NixSource::Path { path: path.to_string_lossy().into_owned() };
    // As a channel's count would, leave out what the set refuses to
    // evaluate and what fails to build (the demo set has both, on purpose).
    for _ in 0..8 {
        let drop: Vec<String> = match nix.resolve(&source, &packages, system).await {
            Ok(resolved) => return Ok(count_closures(&resolved.graph)),
            Err(strata::nix::NixError::Unavailable(u)) => {
                u.missing.into_iter().chain(u.refused.into_iter().map(|r| r.name)).collect()
            }
            Err(strata::nix::NixError::BuildFailed(f)) if !f.packages.is_empty() => f.packages,
            Err(e) => return Err(e.into()),
        };
        packages.retain(|p| !drop.contains(p));
    }
    anyhow::bail!("the package set at {} kept failing to build", path.display())
}

/// For each path name, the number of roots whose closure contains a path
/// of that name.
pub fn count_closures(graph: &ClosureGraph) -> BTreeMap<String, u64> {
    let roots: BTreeSet<u32> = graph.roots.iter().copied().collect();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for root in roots {
        let mut seen: BTreeSet<u32> = BTreeSet::new();
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            if seen.insert(p) {
                stack.extend(&graph.paths[p as usize].references);
            }
        }
        let names: BTreeSet<&str> = seen.into_iter().map(|i| store_name(&graph.paths[i as usize].path)).collect();
        for name in names {
            *counts.entry(name.to_string()).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_plugin_sdk::NamedPath;

    fn p(name: &str, refs: &[&str]) -> NamedPath {
        NamedPath {
            path: format!("/nix/store/h{name}-{name}"),
            nar_size: 1,
            references: refs
                .iter()
                .map(|r| format!("/nix/store/h{r}-{r}"))
                .chain([format!("/nix/store/h{name}-{name}")])
                .collect(),
        }
    }

    #[test]
    fn counts_closures_not_references() {
        let graph = ClosureGraph::from_named(
            &["/nix/store/happ-app", "/nix/store/hcurl-curl"],
            vec![p("app", &["curl"]), p("curl", &["zlib", "glibc"]), p("zlib", &["glibc"]), p("glibc", &[])],
        )
        .unwrap();
        let counts = count_closures(&graph);
        assert_eq!(counts["app"], 1);
        assert_eq!(counts["curl"], 2);
        assert_eq!(counts["glibc"], 2);
        assert_eq!(counts["zlib"], 2);
    }
}
