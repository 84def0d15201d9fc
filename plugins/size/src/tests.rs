use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use strata_plugin_sdk::{store_name, ClosureGraph, NamedPath};

/// The hook, its layers as store paths (the wire names them by index): what
/// these tests compare.
fn group_layers(input: GroupInput) -> Result<Named, PluginError> {
    let graph = input.graph.clone();
    super::group_layers(input).map(|out| Named {
        layers: out.named(&graph),
        strategy: out.strategy,
    })
}

#[derive(Debug, PartialEq, Eq)]
struct Named {
    strategy: String,
    layers: Vec<Vec<String>>,
}

const MB: u64 = 1_000_000;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A package universe whose store paths are derived like Nix's: the hash
/// covers the name and the paths of the references, so bumping a library
/// renames everything that depends on it.
#[derive(Clone, Default)]
struct Universe {
    /// name → (nar size, references by name)
    pkgs: BTreeMap<String, (u64, Vec<String>)>,
}

impl Universe {
    fn add(&mut self, name: &str, size: u64, refs: &[&str]) -> &mut Self {
        self.pkgs.insert(
            name.into(),
            (size, refs.iter().map(|s| s.to_string()).collect()),
        );
        self
    }

    fn path(&self, name: &str) -> String {
        let (_, refs) = &self.pkgs[name];
        let mut key = name.to_string();
        for r in refs {
            key.push('|');
            key.push_str(&self.path(r));
        }
        let h = fnv1a(key.as_bytes());
        format!(
            "/nix/store/{:016x}{:016x}-{name}",
            h,
            h.rotate_left(17) ^ 0x5555
        )
    }

    fn closure(&self, roots: &[&str]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = roots.iter().map(|s| s.to_string()).collect();
        while let Some(n) = stack.pop() {
            if seen.insert(n.clone()) {
                stack.extend(self.pkgs[&n].1.iter().cloned());
            }
        }
        seen
    }

    fn input(&self, roots: &[&str], budget: u32, config: serde_json::Value) -> GroupInput {
        let paths = self
            .closure(roots)
            .iter()
            .map(|n| NamedPath {
                path: self.path(n),
                nar_size: self.pkgs[n].0,
                references: self.pkgs[n].1.iter().map(|r| self.path(r)).collect(),
            })
            .collect();
        let roots: Vec<String> = roots.iter().map(|r| self.path(r)).collect();
        GroupInput {
            config,
            graph: ClosureGraph::from_named(&roots, paths).unwrap(),
            budget,
        }
    }
}

fn names(out: &Named) -> Vec<Vec<&str>> {
    out.layers
        .iter()
        .map(|l| {
            let mut v: Vec<&str> = l.iter().map(|p| store_name(p)).collect();
            v.sort();
            v
        })
        .collect()
}

fn sorted(mut v: Vec<Vec<&str>>) -> Vec<Vec<&str>> {
    v.sort();
    v
}

#[test]
fn empty_closure() {
    let out = group_layers(Universe::default().input(&[], 0, json!(null))).unwrap();
    assert_eq!(
        out,
        Named {
            strategy: "size".into(),
            layers: vec![]
        }
    );
}

#[test]
fn large_paths_alone_private_deps_with_their_owner() {
    let mut u = Universe::default();
    u.add("glibc", 30 * MB, &["libidn2"])
        .add("libidn2", MB, &[])
        .add("app", MB, &["glibc", "libapp"])
        .add("libapp", MB, &["glibc"]);
    let out = group_layers(u.input(&["app"], 90, json!(null))).unwrap();
    // Ordered by height: libidn2 0, glibc 1, libapp 2, app 3.
    assert_eq!(
        names(&out),
        vec![vec!["libidn2"], vec!["glibc"], vec!["libapp"], vec!["app"]]
    );
    u.add("tool", MB, &["libapp", "glibc"]);
    let out = group_layers(u.input(&["app", "tool"], 90, json!(null))).unwrap();
    assert_eq!(
        names(&out),
        vec![
            vec!["libidn2"],
            vec!["glibc"],
            vec!["libapp"],
            vec!["app"],
            vec!["tool"]
        ]
    );
}

#[test]
fn shared_paths_keyed_by_owner_set() {
    // All libraries are leaves (height 0): the layers are the owner sets.
    let mut u = Universe::default();
    u.add("a", MB, &["a1", "a2", "ab1", "ab2", "abc"])
        .add("b", MB, &["b1", "ab1", "ab2", "abc"])
        .add("c", MB, &["abc"]);
    for leaf in ["a1", "a2", "b1", "ab1", "ab2", "abc"] {
        u.add(leaf, MB, &[]);
    }
    // Below the budget every path is a layer.
    let out = group_layers(u.input(&["a", "b", "c"], 90, json!(null))).unwrap();
    assert!(out.layers.iter().all(|l| l.len() == 1) && out.layers.len() == 9);
    // Two layers over: the two classes of two paths join.
    let out = group_layers(u.input(&["a", "b", "c"], 7, json!(null))).unwrap();
    let layers = names(&out);
    assert_eq!(
        sorted(layers[..4].to_vec()),
        vec![
            vec!["a1", "a2"],
            vec!["ab1", "ab2"],
            vec!["abc"],
            vec!["b1"]
        ]
    );
    assert_eq!(
        sorted(layers[4..].to_vec()),
        vec![vec!["a"], vec!["b"], vec!["c"]]
    );
}

#[test]
fn owners_stop_the_walk() {
    // `lib` is reached from `tool` only through the root `dep`: it is
    // dep's private dependency, so asking for `tool` too changes nothing
    // in dep's layer.
    let mut u = Universe::default();
    u.add("tool", MB, &["dep"])
        .add("dep", MB, &["lib"])
        .add("lib", MB, &[]);
    let both = group_layers(u.input(&["tool", "dep"], 90, json!(null))).unwrap();
    let alone = group_layers(u.input(&["dep"], 90, json!(null))).unwrap();
    assert_eq!(names(&both), vec![vec!["lib"], vec!["dep"], vec!["tool"]]);
    assert_eq!(alone.layers, both.layers[..2]);
}

#[test]
fn groups_split_by_height_references_and_referrers() {
    // One private group of three levels: a bump of `mid1` leaves the
    // lowest level alone. Each level splits into paths with the same
    // references and referrers: `mid2` does not depend on `low1`, so a bump
    // of `low1` leaves it alone; `low3`, needed only by `mid2`, stays apart
    // from `mid1`'s libraries, so that a package needing only one of them
    // later splits no layer.
    let mut u = Universe::default();
    u.add("app", MB, &["mid1", "mid2"])
        .add("mid1", MB, &["low1", "low2"])
        .add("mid2", MB, &["low3"])
        .add("low1", MB, &[])
        .add("low2", MB, &[])
        .add("low3", MB, &[]);
    // Six paths in five layers: the class of two joins.
    let out = group_layers(u.input(&["app"], 5, json!(null))).unwrap();
    let layers = names(&out);
    assert_eq!(sorted(layers[0..2].to_vec()), vec![vec!["low1", "low2"], vec!["low3"]]);
    assert_eq!(sorted(layers[2..4].to_vec()), vec![vec!["mid1"], vec!["mid2"]]);
    assert_eq!(layers[4], vec!["app"]);
    u.add("mid1", MB, &["low1", "low2", "new"]).add("new", MB, &[]);
    let bumped = group_layers(u.input(&["app"], 5, json!(null))).unwrap();
    assert!(names(&bumped).contains(&vec!["low1", "low2", "new"]));
    assert!(bumped.layers.contains(&vec![u.path("mid2")]));
    assert!(bumped.layers.contains(&vec![u.path("low3")]));
    u.add("mid1", 2 * MB, &["low1", "low2"]);
    let bumped = group_layers(u.input(&["app"], 5, json!(null))).unwrap();
    assert_eq!(bumped.layers[..2], out.layers[..2]);

    // Over budget, whole levels give up their classes first.
    let out = group_layers(u.input(&["app"], 3, json!(null))).unwrap();
    assert_eq!(
        names(&out),
        vec![vec!["low1", "low2", "low3"], vec!["mid1", "mid2"], vec!["app"]]
    );
}

#[test]
fn a_package_needing_one_shared_library_splits_no_layer() {
    // `xz` and `bzip2` have the same key ({app}), height and references,
    // but different referrers. A later package that needs only `bzip2`
    // moves it to another group; had the two shared a layer, the client
    // would download both again in two new layers.
    let mut u = Universe::default();
    u.add("app", MB, &["libxml2", "freetype"])
        .add("libxml2", MB, &["xz"])
        .add("freetype", MB, &["bzip2"])
        .add("xz", MB, &[])
        .add("bzip2", MB, &[])
        .add("bimoko", MB, &["bzip2"]);
    let before = group_layers(u.input(&["app"], 90, json!(null))).unwrap();
    let after = group_layers(u.input(&["app", "bimoko"], 90, json!(null))).unwrap();
    for layer in &before.layers {
        assert!(after.layers.contains(layer), "layer {layer:?} is gone");
    }
    assert_eq!(after.layers.len(), before.layers.len() + 1);
}

#[test]
fn paths_needed_by_the_same_paths_stay_apart_below_the_budget() {
    // `xz` and `bzip2` are one class (same key, height, references and
    // referrers). Below the budget they are still two layers, so a later
    // package that needs only `bzip2` leaves every layer alone; over the
    // budget the class is the first thing to join.
    let mut u = Universe::default();
    u.add("app", MB, &["libarchive"])
        .add("libarchive", MB, &["xz", "bzip2"])
        .add("xz", MB, &[])
        .add("bzip2", MB, &[])
        .add("bimoko", MB, &["bzip2"]);
    let before = group_layers(u.input(&["app"], 90, json!(null))).unwrap();
    assert_eq!(before.layers.len(), 4);
    let after = group_layers(u.input(&["app", "bimoko"], 90, json!(null))).unwrap();
    for layer in &before.layers {
        assert!(after.layers.contains(layer), "layer {layer:?} is gone");
    }
    let over = group_layers(u.input(&["app"], 3, json!(null))).unwrap();
    assert!(names(&over).contains(&vec!["bzip2", "xz"]));
}

#[test]
fn budget_merges_smallest_first() {
    let mut u = Universe::default();
    u.add("a", 10, &[])
        .add("b", 20, &[])
        .add("c", 30, &[])
        .add("d", 1000, &[]);
    let out = group_layers(u.input(&["a", "b", "c", "d"], 2, json!(null))).unwrap();
    // a+b (30), then the two of size 30.
    assert_eq!(sorted(names(&out)), vec![vec!["a", "b", "c"], vec!["d"]]);
    let out = group_layers(u.input(&["a", "b", "c", "d"], 1, json!(null))).unwrap();
    assert_eq!(out.layers.len(), 1);
}

#[test]
fn config_and_errors() {
    let mut u = Universe::default();
    u.add("a", 10, &["b"]).add("b", 500, &[]);
    let out = group_layers(u.input(&["a"], 5, json!({ "large_threshold": 100 }))).unwrap();
    assert_eq!(names(&out), vec![vec!["b"], vec!["a"]]);
    let err = group_layers(u.input(&["a"], 5, json!({ "large": 1 }))).unwrap_err();
    assert!(
        err.message.contains("invalid plugin configuration"),
        "{err}"
    );
    let err = group_layers(u.input(&["a"], 0, json!(null))).unwrap_err();
    assert!(err.message.contains("budget"), "{err}");
    let mut i = u.input(&["a"], 5, json!(null));
    i.graph.roots.push(40);
    assert!(group_layers(i)
        .unwrap_err()
        .message
        .contains("not in the closure"));
}

#[test]
fn self_references_and_strays_tolerated() {
    let mut u = Universe::default();
    u.add("a", 10, &["b"]).add("b", 10, &[]);
    let mut i = u.input(&["a"], 5, json!(null));
    for (n, p) in i.graph.paths.iter_mut().enumerate() {
        p.references.push(n as u32);
    }
    // A path nothing reaches, and references out of range.
    i.graph.paths.push(strata_plugin_sdk::StorePath {
        path: "/nix/store/zzzz-stray".into(),
        nar_size: 1,
        references: vec![99, u32::MAX],
        popularity: 0,
    });
    let out = group_layers(i).unwrap();
    assert_eq!(out.layers.iter().flatten().count(), 3);
}

// ------------------------------------------------------------- benchmark

/// Paths of an image as its layers (each a set of store paths, standing for
/// the blob it becomes).
type Image = Vec<Vec<String>>;

fn nixpkgs_like() -> Universe {
    let mut u = Universe::default();
    u.add("glibc-2.39", 30 * MB, &["libidn2-2.3", "xgcc-13-libgcc"])
        .add("libidn2-2.3", 400_000, &["libunistring-1.2"])
        .add("libunistring-1.2", 1_800_000, &[])
        .add("xgcc-13-libgcc", 150_000, &[])
        .add("gcc-13-lib", 8 * MB, &["glibc-2.39"])
        .add(
            "bash-interactive-5.2",
            8 * MB,
            &["glibc-2.39", "readline-8.2", "ncurses-6.4"],
        )
        .add("readline-8.2", 600_000, &["glibc-2.39", "ncurses-6.4"])
        .add("ncurses-6.4", 3_500_000, &["glibc-2.39"])
        .add(
            "coreutils-9.5",
            7 * MB,
            &[
                "glibc-2.39",
                "acl-2.3",
                "attr-2.5",
                "gmp-6.3",
                "openssl-3.0",
            ],
        )
        .add("acl-2.3", 300_000, &["glibc-2.39", "attr-2.5"])
        .add("attr-2.5", 100_000, &["glibc-2.39"])
        .add("gmp-6.3", 800_000, &["glibc-2.39", "gcc-13-lib"])
        .add("openssl-3.0", 6 * MB, &["glibc-2.39"])
        .add("nss-cacert-3.98", 500_000, &[])
        .add("iana-etc-2024", 600_000, &[])
        .add(
            "moreutils-0.69",
            300_000,
            &[
                "glibc-2.39",
                "perl-5.38",
                "perl-IPC-Run",
                "perl-TimeDate",
                "perl-TimeDuration",
            ],
        )
        .add("perl-5.38", 60 * MB, &["glibc-2.39", "libxcrypt-4.4"])
        .add("libxcrypt-4.4", 300_000, &["glibc-2.39"])
        .add("perl-IPC-Run", 300_000, &["perl-5.38", "perl-IO-Tty"])
        .add("perl-IO-Tty", 100_000, &["perl-5.38", "glibc-2.39"])
        .add("perl-TimeDate", 200_000, &["perl-5.38"])
        .add("perl-TimeDuration", 100_000, &["perl-5.38"])
        .add(
            "nano-8.0",
            3 * MB,
            &["glibc-2.39", "ncurses-6.4", "file-5.45"],
        )
        .add("file-5.45", 8 * MB, &["glibc-2.39", "zlib-1.3"])
        .add("zlib-1.3", 150_000, &["glibc-2.39"])
        .add(
            "git-2.45",
            55 * MB,
            &[
                "glibc-2.39",
                "zlib-1.3",
                "curl-8.7",
                "openssl-3.0",
                "pcre2-10.43",
                "expat-2.6",
                "perl-5.38",
                "bash-interactive-5.2",
                "coreutils-9.5",
            ],
        )
        .add(
            "curl-8.7",
            1_500_000,
            &[
                "glibc-2.39",
                "zlib-1.3",
                "openssl-3.0",
                "nghttp2-1.61",
                "libssh2-1.11",
                "brotli-1.1",
                "zstd-1.5",
                "libidn2-2.3",
                "libpsl-0.21",
                "krb5-1.21",
            ],
        )
        .add("curl-8.7-bin", 300_000, &["curl-8.7", "glibc-2.39"])
        .add("nghttp2-1.61", 500_000, &["glibc-2.39"])
        .add(
            "libssh2-1.11",
            400_000,
            &["glibc-2.39", "openssl-3.0", "zlib-1.3"],
        )
        .add("brotli-1.1", MB, &["glibc-2.39"])
        .add("zstd-1.5", 1_200_000, &["glibc-2.39"])
        .add(
            "libpsl-0.21",
            200_000,
            &["glibc-2.39", "libidn2-2.3", "libunistring-1.2"],
        )
        .add(
            "krb5-1.21",
            3 * MB,
            &["glibc-2.39", "openssl-3.0", "keyutils-1.6"],
        )
        .add("keyutils-1.6", 100_000, &["glibc-2.39"])
        .add("pcre2-10.43", 1_600_000, &["glibc-2.39"])
        .add("expat-2.6", 300_000, &["glibc-2.39"])
        .add("jq-1.7", 600_000, &["glibc-2.39", "oniguruma-6.9"])
        .add("oniguruma-6.9", 800_000, &["glibc-2.39"]);
    u
}

const SHELL: [&str; 6] = [
    "bash-interactive-5.2",
    "nss-cacert-3.98",
    "coreutils-9.5",
    "iana-etc-2024",
    "moreutils-0.69",
    "nano-8.0",
];

/// Bytes a client pulls for each image in turn, with every blob it pulled
/// before still cached.
fn pulls(images: &[(Universe, Vec<&str>)], strategy: &dyn Fn(GroupInput) -> Image) -> Vec<u64> {
    let mut cache: BTreeSet<Vec<String>> = BTreeSet::new();
    images
        .iter()
        .map(|(u, roots)| {
            let input = u.input(roots, 94, json!(null));
            let size: BTreeMap<String, u64> = input
                .graph
                .paths
                .iter()
                .map(|p| (p.path.clone(), p.nar_size))
                .collect();
            strategy(input)
                .into_iter()
                .filter(|l| cache.insert(l.clone()))
                .map(|l| l.iter().map(|p| size[p]).sum::<u64>())
                .sum()
        })
        .collect()
}

/// The sequence of the plugin's design goal: a base tool set, one package
/// more, another app sharing most dependencies, then a low-level library's
/// version bump under the second image.
#[test]
fn reuse_beats_single_layer_and_popularity() {
    let u = nixpkgs_like();
    let mut bumped = u.clone();
    bumped.pkgs.remove("zlib-1.3");
    bumped.add("zlib-1.3.1", 150_000, &["glibc-2.39"]);
    for (_, refs) in bumped.pkgs.values_mut() {
        for r in refs.iter_mut().filter(|r| *r == "zlib-1.3") {
            *r = "zlib-1.3.1".into();
        }
    }
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        SHELL.iter().copied().chain(extra.iter().copied()).collect()
    };
    let images = vec![
        (u.clone(), with(&[])),
        (u.clone(), with(&["git-2.45"])),
        (u.clone(), with(&["curl-8.7-bin", "jq-1.7"])),
        (bumped, with(&["git-2.45"])),
    ];
    let single = pulls(&images, &|i| {
        vec![i.graph.paths.iter().map(|p| p.path.clone()).collect()]
    });
    let popularity = pulls(&images, &|i| {
        let graph = i.graph.clone();
        strata_plugin_popularity::group_layers(i).unwrap().named(&graph)
    });
    let size = pulls(&images, &|i| group_layers(i).unwrap().layers);
    let total = |v: &[u64]| v.iter().sum::<u64>();
    println!("bytes pulled per step (base, +git, other app, zlib bump):");
    println!("  single-layer {single:?} total {}", total(&single));
    println!("  popularity   {popularity:?} total {}", total(&popularity));
    println!("  size         {size:?} total {}", total(&size));
    assert!(
        total(&size) < total(&popularity),
        "size {size:?} popularity {popularity:?}"
    );
    assert!(total(&popularity) < total(&single));
    // After the first pull, size never pulls more than popularity.
    for step in 1..4 {
        assert!(
            size[step] <= popularity[step],
            "step {step}: {size:?} vs {popularity:?}"
        );
    }
}

#[test]
fn no_catch_all_layer() {
    let u = nixpkgs_like();
    let roots: Vec<&str> = SHELL
        .iter()
        .copied()
        .chain(["git-2.45", "jq-1.7"])
        .collect();
    let input = u.input(&roots, 94, json!(null));
    let size: BTreeMap<String, u64> = input
        .graph
        .paths
        .iter()
        .map(|p| (p.path.clone(), p.nar_size))
        .collect();
    let total: u64 = size.values().sum();
    let out = group_layers(input).unwrap();
    let biggest = out
        .layers
        .iter()
        .map(|l| l.iter().map(|p| size[p]).sum::<u64>())
        .max()
        .unwrap();
    assert!(biggest * 3 < total, "biggest layer {biggest} of {total}");
}

// ------------------------------------------------------------ properties

/// A random universe: node i references only nodes > i (a DAG, as Nix store
/// graphs are), sometimes itself.
fn arb_universe() -> impl Strategy<Value = (Vec<NamedPath>, usize)> {
    (2usize..45).prop_flat_map(|n| {
        proptest::collection::vec(
            (
                0u64..1500,
                proptest::collection::vec(0usize..1000, 0..5),
                any::<bool>(),
            ),
            n,
        )
        .prop_map(move |nodes| {
            let name = |i: usize| {
                format!(
                    "/nix/store/{:032x}-p{}",
                    (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c),
                    i % 7
                )
            };
            let paths = strata_plugin_sdk::graph::dag_from_picks(&nodes, name);
            (paths, n)
        })
    })
}

/// The closure of `roots` (indices into the universe) as a hook input.
fn image(universe: &[NamedPath], roots: &[usize], budget: u32) -> GroupInput {
    let index: BTreeMap<&str, usize> = universe
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.as_str(), i))
        .collect();
    let mut seen = BTreeSet::new();
    let mut stack = roots.to_vec();
    while let Some(v) = stack.pop() {
        if seen.insert(v) {
            stack.extend(universe[v].references.iter().map(|r| index[r.as_str()]));
        }
    }
    let paths: Vec<NamedPath> = seen.iter().map(|&i| universe[i].clone()).collect();
    let roots: Vec<&str> = roots.iter().map(|&r| universe[r].path.as_str()).collect();
    GroupInput {
        config: json!({ "large_threshold": 1000 }),
        graph: ClosureGraph::from_named(&roots, paths).unwrap(),
        budget,
    }
}

proptest! {
    #[test]
    fn output_is_a_partition_within_budget(
        (universe, n) in arb_universe(),
        roots in proptest::collection::vec(0usize..1000, 1..5),
        budget in 1u32..15,
    ) {
        let roots: Vec<usize> = roots.iter().map(|r| r % n).collect();
        let input = image(&universe, &roots, budget);
        let all: BTreeSet<String> = input.graph.paths.iter().map(|p| p.path.clone()).collect();
        let out = group_layers(input.clone()).unwrap();
        prop_assert!(out.layers.len() <= budget as usize);
        prop_assert!(out.layers.iter().all(|l| !l.is_empty()));
        let mut seen = BTreeSet::new();
        for p in out.layers.iter().flatten() {
            prop_assert!(seen.insert(p.clone()), "{} twice", p);
        }
        prop_assert_eq!(&seen, &all);
        prop_assert_eq!(&group_layers(input.clone()).unwrap(), &out);

        // Neither the order of paths, references nor roots matters.
        let mut shuffled = input;
        shuffled.graph = strata_plugin_sdk::graph::reversed(&shuffled.graph);
        prop_assert_eq!(group_layers(shuffled).unwrap(), out);
    }

    #[test]
    fn adding_a_package_keeps_untouched_layers(
        (universe, n) in arb_universe(),
        roots in proptest::collection::vec(0usize..1000, 1..5),
        extra in 0usize..1000,
    ) {
        let roots: Vec<usize> = roots.iter().map(|r| r % n).collect();
        let extra = extra % n;
        let before = group_layers(image(&universe, &roots, 1000)).unwrap();
        let mut more = roots.clone();
        more.push(extra);
        let after = group_layers(image(&universe, &more, 1000)).unwrap();
        let touched: BTreeSet<String> =
            image(&universe, &[extra], 1000).graph.paths.into_iter().map(|p| p.path).collect();
        let after_set: BTreeSet<&Vec<String>> = after.layers.iter().collect();
        let mut untouched_before = Vec::new();
        for layer in &before.layers {
            if layer.iter().all(|p| !touched.contains(p)) {
                prop_assert!(after_set.contains(layer), "layer {:?} changed", layer);
                untouched_before.push(layer);
            }
        }
        // ... and keep their relative order.
        let untouched_after: Vec<&Vec<String>> =
            after.layers.iter().filter(|l| untouched_before.contains(l)).collect();
        prop_assert_eq!(untouched_after, untouched_before);
    }
}

#[test]
fn over_budget_groups_rejoin_before_mixing() {
    let mut u = Universe::default();
    u.add("a", 10, &["a-mid"])
        .add("a-mid", 10, &["a-low"])
        .add("a-low", 10, &[]);
    u.add("b", 1000, &["b-low"]).add("b-low", 1000, &[]);
    // Five levels; three layers fit: a's levels rejoin (smallest pairs),
    // b keeps its split.
    let out = group_layers(u.input(&["a", "b"], 3, json!(null))).unwrap();
    assert_eq!(
        sorted(names(&out)),
        vec![vec!["a", "a-low", "a-mid"], vec!["b"], vec!["b-low"]]
    );
    let out = group_layers(u.input(&["a", "b"], 4, json!(null))).unwrap();
    assert_eq!(
        sorted(names(&out)),
        vec![vec!["a"], vec!["a-low", "a-mid"], vec!["b"], vec!["b-low"]]
    );
}
