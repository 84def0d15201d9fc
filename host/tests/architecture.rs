//! The map in docs/architecture.md, checked against the code's own imports:
//! every `crate::…` and `super::…` path of every file under host/src (code
//! only, not comments) names a module; a file may import only files of its
//! own folder below it and folders below its own in [`LAYERS`]. Files form
//! no circle of imports, and the product crate holds no benchmark code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom: a folder may import only folders after it. `config` and
/// `error` are leaves: they import nothing of the crate.
const LAYERS: &[&str] = &["preflight", "web", "registry", "build", "ops", "plugins", "image", "storage", "nix", "config", "error"];

/// Imports allowed to run upward, each with why (at most two).
const UPWARD: &[(&str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path of a file: `nix/mod.rs` → `nix`, `nix/gc.rs` → `nix::gc`.
fn module_of(rel: &Path) -> String {
    let s = rel.with_extension("").to_string_lossy().replace('/', "::");
    s.strip_suffix("::mod").map(str::to_string).unwrap_or(s)
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments (doc links are not imports).
fn code(text: &str) -> String {
    text.lines().map(|l| match l.find("//") {
        Some(i) if !l[..i].contains('"') => &l[..i],
        _ => l,
    }).collect::<Vec<_>>().join("\n")
}

/// The longest known module a path names.
fn resolve(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m))
}

/// Every module a file imports, resolved to a file's module.
fn imports(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = code(text);
    let mut found = BTreeSet::new();
    let here: Vec<String> = if module == "lib" || module == "main" { vec![] } else { module.split("::").map(String::from).collect() };
    // The module `super` names: the parent of the file's module (a
    // folder's mod.rs is the folder's module, so its `super` is the parent).
    let parent = here[..here.len().saturating_sub(1)].to_vec();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(off) = code[i..].find(|c: char| c == 'c' || c == 's') {
        let at = i + off;
        i = at + 1;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let rest = &code[at..];
        let (base, tail) = if let Some(t) = rest.strip_prefix("crate::") {
            (vec![], t)
        } else if let Some(t) = rest.strip_prefix("super::") {
            (parent.clone(), t)
        } else {
            continue;
        };
        // `use crate::{a, b::c}` groups, or one path.
        let mut paths = Vec::new();
        if let Some(group) = tail.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                paths.push(item.trim().split("::").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect::<Vec<_>>());
            }
        } else {
            let seg: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            paths.push(seg.split("::").filter(|s| !s.is_empty()).map(String::from).collect());
        }
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            if let Some(m) = resolve(&full, modules) {
                if m != module {
                    found.insert(m);
                }
            }
        }
    }
    found
}

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap();
    LAYERS.iter().position(|l| *l == top)
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn graph() -> Graph {
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let rels: Vec<PathBuf> = all.iter().map(|p| p.strip_prefix(&root).unwrap().to_path_buf()).collect();
    let modules: BTreeSet<String> = rels.iter().map(|r| module_of(r)).collect();
    let mut edges = BTreeMap::new();
    for (abs, rel) in all.iter().zip(&rels) {
        let module = module_of(rel);
        let text = std::fs::read_to_string(abs).unwrap();
        edges.insert(module.clone(), imports(&module, &text, &modules));
    }
    Graph { edges }
}

#[test]
fn imports_point_down() {
    let g = graph();
    let mut upward = Vec::new();
    for (from, tos) in &g.edges {
        let Some(lf) = layer(from) else { continue };
        for to in tos {
            let Some(lt) = layer(to) else { continue };
            let same_folder = from.split("::").next() == to.split("::").next();
            if !same_folder && lt <= lf && !UPWARD.contains(&(from.as_str(), to.as_str())) {
                upward.push(format!("{from} → {to}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports against docs/architecture.md's order {LAYERS:?}: {upward:#?}");
    assert!(UPWARD.len() <= 2);
    for leaf in ["config", "error"] {
        assert!(g.edges[leaf].is_empty(), "{leaf} must import nothing of the crate: {:?}", g.edges[leaf]);
    }
}

#[test]
fn no_circle_of_imports() {
    let g = graph();
    // Depth-first search for a back edge, reporting the circle.
    fn visit(n: &str, g: &Graph, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[start..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.edges.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &g, &mut state, &mut Vec::new()) {
                panic!("a circle of imports: {}", c.join(" → "));
            }
        }
    }
}

#[test]
fn folders_by_concern_and_no_benchmarks() {
    let root = src();
    let flat: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| !["main.rs", "lib.rs", "config.rs", "error.rs"].contains(&f.as_str()))
        .collect();
    assert!(flat.len() <= 2, "files flat in host/src: {flat:?}");
    // Folders; a single-file concern (preflight.rs) is one of the two flat files.
    for dir in LAYERS.iter().filter(|l| root.join(l).is_dir()) {
        let m = std::fs::read_to_string(root.join(dir).join("mod.rs")).unwrap_or_default();
        assert!(m.starts_with("//!"), "{dir}/mod.rs opens with a comment on what the folder owns");
    }
    let mut all = Vec::new();
    files(&root, &mut all);
    for f in all {
        let t = std::fs::read_to_string(&f).unwrap();
        assert!(!t.contains("BenchCommand") && !f.to_string_lossy().contains("bench"), "benchmark code in the product: {}", f.display());
    }
    assert!(!Path::new(env!("CARGO_MANIFEST_DIR")).join("benches").exists(), "host/benches: benchmarks live in bench/");
}

/// The checker itself finds what it must: a circle and an upward import.
#[test]
fn the_checker_sees_imports() {
    let modules: BTreeSet<String> = ["nix", "nix::gc", "build", "storage", "storage::lease"].iter().map(|s| s.to_string()).collect();
    let found = imports("nix::gc", "use crate::build::Builder;\n// crate::storage\nuse super::Resolved;\nuse crate::{storage::lease::Leases};", &modules);
    assert_eq!(found, ["build", "nix", "storage::lease"].iter().map(|s| s.to_string()).collect());
}
