//! Conformance of the embedded built-in plugins: the same inputs go through
//! each plugin crate's native functions and through the `.wasm` embedded in
//! the host (plugins/dist/), and the answers must be identical. A failure
//! here means plugins/dist/ is stale: run scripts/build-plugins.sh.

mod plugin_support;

use std::collections::BTreeMap;
use std::path::Path;
use strata::config::{GroupRule, PluginsConfig};
use strata::plugins::{check_sample, PluginSet, BUILTIN_NAMES};
use strata_plugin_sdk::{
    ExpandInput, Expansion, GroupInput, Layers, PluginError, SourceInput,
};

/// What the host reports for a plugin's own error, to compare like with like.
fn as_reason(e: PluginError) -> String {
    let one_line: String =
        e.message.chars().take(1000).map(|c| if c.is_control() { ' ' } else { c }).collect();
    // A refusal with a registry code the host knows reaches the client as
    // the plugin's own words.
    match e.code.as_deref() {
        Some(code) if PluginError::CODES.contains(&code) => one_line,
        _ => format!("reported an error: {one_line}"),
    }
}

/// All four built-ins, each with `config` (a TOML document of
/// `[plugin-name]` tables), through the public loading path.
fn builtins(config: &str, cache: &Path) -> PluginSet {
    let tables: BTreeMap<String, toml::Value> = toml::from_str(config).expect("test config is TOML");
    let cfg = PluginsConfig {
        expand: vec!["bundles".into()],
        group: "size".into(),
        group_rules: vec![GroupRule { prefix: Some("pop/".into()), tag: None, plugin: "popularity".into() }],
        source: "nixpkgs-source".into(),
        config: tables,
        // Compile each module once for the whole file.
        cache_dir: Some(cache.to_path_buf()),
        ..PluginsConfig::default()
    };
    PluginSet::load(&cfg).unwrap_or_else(|e| panic!("built-ins load with {config:?}: {e}"))
}

fn json_config(config: &str, plugin: &str) -> serde_json::Value {
    let tables: BTreeMap<String, toml::Value> = toml::from_str(config).unwrap();
    tables.get(plugin).map(|t| serde_json::to_value(t).unwrap()).unwrap_or_else(|| serde_json::json!({}))
}

/// Shared by the tests of this file and kept between runs: entries are keyed
/// by module digest and engine settings, so a stale one is never used.
fn cache() -> &'static Path {
    Path::new(concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-cache"))
}

#[tokio::test]
async fn every_builtin_is_embedded_and_loads() {
    let set = builtins("", cache());
    let all = set.all();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["bundles", "size", "popularity", "nixpkgs-source"]);
    for name in BUILTIN_NAMES {
        let plugin = all.iter().find(|p| p.name() == name).unwrap();
        assert_eq!(plugin.info().name, name);
        assert_eq!(plugin.origin(), "built-in");
        assert_eq!(plugin.digest().len(), 64);
    }
}

#[tokio::test]
async fn builtins_pass_their_own_check() {
    let set = builtins("[nixpkgs-source]\nchannel = \"nixos-unstable\"\n", cache());
    for plugin in set.all() {
        let report = check_sample(&plugin).await;
        assert!(report.ok(), "{report}");
    }
}

const GROUP_CONFIGS: &[&str] = &[
    "",
    "[size]\nlarge_threshold = 1000000\n[popularity]\npopularity_threshold = 10\nsize_threshold = 5000000\n",
    "[size]\nlarge_threshold = 0\n[popularity]\npopularity_threshold = 0\nsize_threshold = 0\n",
];

#[tokio::test]
async fn groupings_match_the_native_plugins() {
    type Native = fn(GroupInput) -> Result<Layers, PluginError>;
    let natives: [(&str, &str, Native); 2] = [
        ("size", "img", strata_plugin_size::group_layers),
        ("popularity", "pop/img", strata_plugin_popularity::group_layers),
    ];
    let mut compared = 0;
    for config in GROUP_CONFIGS {
        let set = builtins(config, cache());
        for (seed, (n, roots)) in [(0, 0), (1, 1), (10, 2), (300, 3), (3000, 5)].into_iter().enumerate() {
            let (graph, popularity) = plugin_support::closure(n, roots, seed as u64);
            // The big closure only at realistic budgets: this is a debug
            // build, and the native side is not optimised either.
            let budgets: &[u32] = if n > 1000 { &[20, 100] } else { &[0, 1, 2, 5, 20, 100, 1000] };
            for &budget in budgets {
                for with_popularity in [false, true] {
                    for (name, image, native) in natives {
                        let mut graph = graph.clone();
                        if with_popularity {
                            graph.set_popularity(&popularity);
                        }
                        let input = GroupInput { config: json_config(config, name), graph, budget };
                        let expected = native(input.clone()).map_err(as_reason);
                        let plugin = set.grouper_for(image, "latest");
                        assert_eq!(plugin.name(), name);
                        let got = plugin.group_layers(input).await.map_err(|f| f.reason);
                        assert!(
                            got == expected,
                            "{name} differs from its native build (n={n}, budget={budget}, \
                             popularity={with_popularity}, config={config:?}):\n wasm:   {}\n native: {}",
                            summary(&got),
                            summary(&expected)
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(compared, GROUP_CONFIGS.len() * (4 * 7 + 2) * 2 * 2);
}

fn summary(r: &Result<Layers, String>) -> String {
    match r {
        Ok(l) => format!("{} layers, sizes {:?}, strategy {}", l.layers.len(), l.layers.iter().map(Vec::len).collect::<Vec<_>>(), l.strategy),
        Err(e) => e.clone(),
    }
}

#[tokio::test]
async fn bad_configurations_fail_the_same_way() {
    for (plugin, config) in [
        ("size", "[size]\nlarge_treshold = 5\n"),
        ("popularity", "[popularity]\nsize_threshold = \"big\"\n"),
    ] {
        let set = builtins(config, cache());
        let (mut graph, popularity) = plugin_support::closure(20, 2, 7);
        graph.set_popularity(&popularity);
        let input = GroupInput { config: json_config(config, plugin), graph, budget: 5 };
        let native = match plugin {
            "size" => strata_plugin_size::group_layers(input.clone()),
            _ => strata_plugin_popularity::group_layers(input.clone()),
        };
        let expected = native.map_err(as_reason).expect_err("a bad configuration is refused");
        let image = if plugin == "size" { "img" } else { "pop/img" };
        let got = set.grouper_for(image, "latest").group_layers(input).await.unwrap_err();
        assert_eq!(got.reason, expected);
    }
}

const BUNDLE_CONFIGS: &[&str] = &[
    "",
    r#"
[bundles.bundles]
acme-base = ["coreutils", "git"]
acme-dev = { packages = ["acme-base", "gdb"], cmd = ["bash"], env = ["EDITOR=nano"], user = "1000", working_dir = "/src", labels = { team = "infra" } }
git = ["git", "git-lfs"]
shell = ["bashInteractive", "coreutils"]
loop-a = ["loop-b"]
loop-b = ["loop-a", "jq"]
"#,
    "[bundles.bundles]\narm64 = [\"x\"]\n",
    "[bundles]\nbundels = {}\n",
];

#[tokio::test]
async fn expansions_match_the_native_plugin() {
    let requests: &[&[&str]] = &[
        &[],
        &["git"],
        &["shell"],
        &["shell", "git"],
        &["git", "shell"],
        &["arm64", "shell", "htop"],
        &["amd64"],
        &["arm64"],
        &["xorg.xev", "python3Packages.numpy"],
        &["git", "git"],
        &["acme-dev", "curl"],
        &["loop-a"],
        &["shell", "arm64", "amd64"],
    ];
    for config in BUNDLE_CONFIGS {
        let set = builtins(config, cache());
        for segments in requests {
            for tag in ["latest", "v1"] {
                let segments: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
                let input = ExpandInput {
                    config: json_config(config, "bundles"),
                    segments: segments.clone(),
                    tag: tag.into(),
                    current: Expansion { packages: segments.clone(), arch: "amd64".into(), ..Expansion::default() },
                };
                let expected = strata_plugin_bundles::expand_names(input).map_err(as_reason);
                let got = set.expand(&segments, tag).await.map_err(|f| f.reason);
                assert_eq!(got, expected, "bundles, segments {segments:?}, config {config:?}");
            }
        }
    }
}

#[tokio::test]
async fn sources_match_the_native_plugin() {
    let configs = [
        "",
        "[nixpkgs-source]\nchannel = \"nixos-unstable\"\n",
        "[nixpkgs-source]\nchannel = \"  nixos-24.05 \"\n",
        "[nixpkgs-source]\nchannel = \"\"\n",
        "[nixpkgs-source]\ngit = \"https://github.com/NixOS/nixpkgs.git\"\n",
        "[nixpkgs-source]\npath = \"/srv/nixpkgs\"\n",
        "[nixpkgs-source]\npath = \"/srv/nixpkgs\"\nimmutable = true\n",
        "[nixpkgs-source]\nchannel = \"nixos-unstable\"\nimmutable = true\n",
        "[nixpkgs-source]\nchannel = \"a\"\ngit = \"b\"\n",
        "[nixpkgs-source]\nchanel = \"a\"\n",
    ];
    let tags = [
        "latest",
        "",
        "0123456789abcdef0123456789abcdef01234567",
        "0123456789ABCDEF0123456789ABCDEF01234567",
        "abc1234",
        "abc12",
        "nixos-24.05",
        "v1.0",
    ];
    for config in configs {
        let set = builtins(config, cache());
        for tag in tags {
            let input = SourceInput { config: json_config(config, "nixpkgs-source"), tag: tag.into() };
            let expected = strata_plugin_nixpkgs_source::render_source(input.clone()).map_err(as_reason);
            let native_code = strata_plugin_nixpkgs_source::render_source(input.clone()).err().and_then(|e| e.code);
            let got = set.source.render_source(input).await.map_err(|f| {
                assert_eq!(f.code.map(|c| c.to_string()), native_code, "the code, tag {tag:?}, config {config:?}");
                f.reason
            });
            assert_eq!(got, expected, "nixpkgs-source, tag {tag:?}, config {config:?}");
        }
    }
}
