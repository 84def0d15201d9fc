//! Hostile plugins: each fixture in tests/fixtures/plugins/ misbehaves in one
//! way. Every misbehaviour must end as a `PluginFailure` (or a load error)
//! with the right reason, and must leave the engine and the plugin set able
//! to serve the next call to a well-behaved plugin.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strata::config::{GroupRule, PluginDefinition, PluginsConfig};
use strata::plugins::{load_file, PluginSet};
use strata_plugin_sdk::{ClosureGraph, GroupInput, StorePath};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/plugins");

/// Fixtures that load fine and misbehave when called, with a piece of the
/// reason the call must fail with.
const RUNTIME_HOSTILE: &[(&str, &str)] = &[
    ("infinite_loop", "ran out of fuel"),
    ("memory_bomb", "exceeded its memory limit (64 MiB)"),
    ("huge_output", "returned 1073741824 bytes, over its output limit (16 MiB)"),
    ("out_of_bounds", "returned a buffer outside its memory"),
    ("null_alloc", "returned 0 (null); a plugin that cannot allocate must trap"),
    ("panic", "trapped: wasm `unreachable` instruction executed"),
    ("stack_overflow", "trapped: call stack exhausted"),
    ("malformed_json", "returned malformed JSON: EOF"),
    ("wrong_shape", "returned malformed JSON: invalid type"),
    ("error_envelope", "reported an error: cannot group on Tuesdays"),
    ("missing_path", "returned an invalid grouping: path 3 (/nix/store/dddd-data-4.0) is missing"),
    ("duplicate_path", "returned an invalid grouping: path 1 (/nix/store/bbbb-lib-2.0) is in both layer 0 and layer 1"),
    ("unknown_path", "returned an invalid grouping: layer 1 names path 6, but the closure has 4 paths"),
    ("dotdot_path", "returned malformed JSON: invalid type: string \"/nix/store/../../etc/shadow\", expected u32"),
    ("outside_store", "returned malformed JSON: invalid type: string \"/etc/passwd\", expected u32"),
    ("over_budget", "returned an invalid grouping: 4 layers, over the budget of 3"),
    ("empty_layer", "returned an invalid grouping: layer 1 is empty"),
];

/// Fixtures the host must refuse to load, with a piece of the message.
const LOAD_HOSTILE: &[(&str, &str)] = &[
    ("wasi_import", "imports `wasi_snapshot_preview1::fd_write`; a plugin may import nothing"),
    ("missing_export", "does not export `strata_plugin_info`"),
    ("wrong_abi", "built for plugin ABI version 2, but this Strata speaks version 3"),
    ("start_loop", "strata_abi_version ran out of fuel"),
    ("big_memory", "strata_abi_version exceeded its memory limit (64 MiB)"),
    ("lying_info", "declares the hooks [expand_names] but the module exports [group_layers]"),
    // A wait on shared memory would block its thread past any fuel limit;
    // wasmtime is built without its `threads` feature (host/Cargo.toml), so
    // such a module does not compile.
    ("atomic_wait", "threads must be enabled for shared memories"),
];

/// Less than the default 2e9 (which an empty loop takes ~2 s to burn) to keep
/// the suite quick; `limits_come_from_the_configuration` covers other values.
const TEST_FUEL: u64 = 200_000_000;

fn test_limits() -> PluginsConfig {
    PluginsConfig { fuel: TEST_FUEL, ..PluginsConfig::default() }
}

/// Compiles every fixture once into a temporary directory.
struct Fixtures {
    dir: tempfile::TempDir,
}

impl Fixtures {
    fn new() -> Fixtures {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(FIXTURES).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wat") {
                let wasm = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let out = dir.path().join(path.file_stem().unwrap()).with_extension("wasm");
                std::fs::write(out, wasm).unwrap();
            }
        }
        Fixtures { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.wasm"));
        assert!(path.exists(), "no fixture {name}");
        path
    }
}

fn store(name: &str) -> String {
    format!("/nix/store/{name}")
}

/// The closure the fixtures' fixed answers are about: paths 0-3 in this
/// order (sorted), each referencing those before it.
fn input() -> GroupInput {
    let names = ["aaaa-base-1.0", "bbbb-lib-2.0", "cccc-app-3.0", "dddd-data-4.0"];
    let paths = names
        .iter()
        .enumerate()
        .map(|(i, n)| StorePath {
            path: store(n),
            nar_size: 1000 * (i as u64 + 1),
            references: (0..i as u32).collect(),
            popularity: 0,
        })
        .collect();
    GroupInput { config: serde_json::Value::Null, graph: ClosureGraph { roots: vec![2, 3], paths }, budget: 3 }
}

/// A configuration with the well-behaved fixture everywhere and one group
/// rule per runtime-hostile fixture (`<name>/…` images use it).
fn config(fx: &Fixtures) -> PluginsConfig {
    let mut cfg = PluginsConfig {
        expand: vec!["good".into()],
        group: "good".into(),
        source: "good".into(),
        fuel: TEST_FUEL,
        // Cranelift in a debug build takes seconds for the built-in `size`:
        // compile it once for all tests and runs.
        cache_dir: Some(concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-cache").into()),
        ..PluginsConfig::default()
    };
    cfg.define.insert("good".into(), PluginDefinition { path: fx.path("good") });
    // The embedded `size` plugin serves `size/…` images.
    cfg.group_rules.push(GroupRule { prefix: Some("size/".into()), tag: None, plugin: "size".into() });
    for (name, _) in RUNTIME_HOSTILE {
        cfg.define.insert(name.to_string(), PluginDefinition { path: fx.path(name) });
        cfg.group_rules.push(GroupRule { prefix: Some(format!("{name}/")), tag: None, plugin: name.to_string() });
    }
    cfg
}

async fn good_call_succeeds(set: &PluginSet) {
    let layers = set.grouper_for("plain/image", "latest").group_layers(input()).await.expect("the good plugin still works");
    assert_eq!(layers.layers.len(), 2);
    let expansion = set.expand(&["x".to_string()], "latest").await.expect("expansion still works");
    assert_eq!(expansion.packages, ["hello"]);
    let size = set.grouper_for("size/image", "latest");
    assert_eq!(size.name(), "size");
    let layers = size.group_layers(input()).await.expect("the built-in size plugin still works");
    assert_eq!(layers.layers.concat().len(), 4);
}

#[tokio::test]
async fn every_runtime_misbehaviour_is_a_plugin_failure_and_harms_no_later_call() {
    let fx = Fixtures::new();
    let set = PluginSet::load(&config(&fx)).expect("the set loads");
    good_call_succeeds(&set).await;
    for (name, expected) in RUNTIME_HOSTILE {
        let plugin = set.grouper_for(&format!("{name}/x"), "latest");
        assert_eq!(plugin.name(), *name);
        let start = Instant::now();
        let failure = plugin.group_layers(input()).await.expect_err(name);
        assert_eq!(failure.plugin, *name);
        assert_eq!(failure.hook, "group_layers");
        assert!(
            failure.reason.contains(expected),
            "{name}: reason {:?} does not contain {expected:?}",
            failure.reason
        );
        assert!(!failure.reason.contains('\n'), "{name}: reason is not one line");
        // TEST_FUEL is burnt in well under ten seconds even in a slow CI.
        assert!(start.elapsed() < Duration::from_secs(10), "{name} took {:?}", start.elapsed());
        assert_eq!(failure.to_string(), format!("plugin {name}: {}", failure.reason));
        good_call_succeeds(&set).await;
    }
}

#[tokio::test]
async fn hostile_and_good_calls_run_concurrently() {
    let fx = Fixtures::new();
    let set = PluginSet::load(&config(&fx)).unwrap();
    let mut calls = Vec::new();
    for round in 0..4 {
        for (name, _) in RUNTIME_HOSTILE {
            let set = set.clone();
            let image = match round {
                0 => "plain/image".to_string(),
                1 => "size/image".to_string(),
                _ => format!("{name}/x"),
            };
            calls.push(tokio::spawn(async move {
                let plugin = set.grouper_for(&image, "latest").clone();
                (plugin.name().to_string(), plugin.group_layers(input()).await)
            }));
        }
    }
    for call in calls {
        let (name, result) = call.await.unwrap();
        assert_eq!(result.is_ok(), name == "good" || name == "size", "{name}: {result:?}");
    }
}

#[tokio::test]
async fn a_plugin_that_stopped_once_answers_the_next_call() {
    // The instance is per call: the same plugin, after running out of fuel
    // with one input, must not be stuck in any state for the next.
    let fx = Fixtures::new();
    let cfg = test_limits();
    let looping = load_file(&fx.path("infinite_loop"), serde_json::Value::Null, &cfg).unwrap();
    for _ in 0..2 {
        let failure = looping.group_layers(input()).await.unwrap_err();
        assert!(failure.reason.starts_with("ran out of fuel"), "{}", failure.reason);
    }
    let bomb = load_file(&fx.path("memory_bomb"), serde_json::Value::Null, &cfg).unwrap();
    for _ in 0..2 {
        let failure = bomb.group_layers(input()).await.unwrap_err();
        assert_eq!(failure.reason, "exceeded its memory limit (64 MiB)");
    }
}

#[tokio::test]
async fn limits_come_from_the_configuration() {
    let fx = Fixtures::new();
    let cfg = PluginsConfig { memory_mib: 8, fuel: 1_000_000, ..PluginsConfig::default() };
    let bomb = load_file(&fx.path("memory_bomb"), serde_json::Value::Null, &cfg).unwrap();
    assert_eq!(bomb.group_layers(input()).await.unwrap_err().reason, "exceeded its memory limit (8 MiB)");
    let looping = load_file(&fx.path("infinite_loop"), serde_json::Value::Null, &cfg).unwrap();
    let start = Instant::now();
    assert_eq!(looping.group_layers(input()).await.unwrap_err().reason, "ran out of fuel (limit 1000000)");
    assert!(start.elapsed() < Duration::from_secs(2));
    // A tiny output cap refuses even an honest answer.
    let cfg = PluginsConfig { output_mib: 1, ..PluginsConfig::default() };
    let out = load_file(&fx.path("out_of_bounds"), serde_json::Value::Null, &cfg).unwrap();
    assert!(out.group_layers(input()).await.unwrap_err().reason.contains("outside its memory"));
    for bad in [
        PluginsConfig { fuel: 0, ..PluginsConfig::default() },
        PluginsConfig { memory_mib: 0, ..PluginsConfig::default() },
        PluginsConfig { output_mib: 0, ..PluginsConfig::default() },
    ] {
        let err = load_file(&fx.path("good"), serde_json::Value::Null, &bad).unwrap_err().to_string();
        assert!(err.starts_with("plugins."), "{err}");
    }
}

#[tokio::test]
async fn malformed_modules_are_refused_at_load() {
    let fx = Fixtures::new();
    let cfg = test_limits();
    for (name, expected) in LOAD_HOSTILE {
        let err = load_file(&fx.path(name), serde_json::Value::Null, &cfg).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err:?} does not contain {expected:?}");
        assert!(err.starts_with(&format!("plugin `{name}` (")), "{name}: {err}");
        assert!(!err.contains('\n'), "{name}: not one line: {err}");
    }
    // Not WebAssembly at all.
    let junk = fx.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm but not really").unwrap();
    let err = load_file(&junk, serde_json::Value::Null, &cfg).unwrap_err().to_string();
    assert!(err.contains("is not a valid WebAssembly module"), "{err}");
    let err = load_file(Path::new("/nonexistent/x.wasm"), serde_json::Value::Null, &cfg).unwrap_err().to_string();
    assert!(err.contains("cannot read /nonexistent/x.wasm"), "{err}");

    // Through a configuration, the error names the key; the engine then
    // still serves a good plugin.
    for (name, expected) in LOAD_HOSTILE {
        let mut cfg = config(&fx);
        cfg.define.insert(name.to_string(), PluginDefinition { path: fx.path(name) });
        cfg.group_rules.insert(0, GroupRule { prefix: None, tag: Some("x".into()), plugin: name.to_string() });
        let err = PluginSet::load(&cfg).unwrap_err().to_string();
        assert!(err.starts_with(&format!("plugins.group_rules[0].plugin: plugin `{name}`")), "{err}");
        assert!(err.contains(expected), "{err}");
    }
    good_call_succeeds(&PluginSet::load(&config(&fx)).unwrap()).await;
}

#[tokio::test]
async fn configuration_mistakes_are_one_line_naming_the_key() {
    let fx = Fixtures::new();
    let base = config(&fx);
    let cases: Vec<(PluginsConfig, &str)> = vec![
        (PluginsConfig { group: "nosuch".into(), ..base.clone() }, "plugins.group: no plugin named `nosuch`"),
        (PluginsConfig { expand: vec!["good".into(), "infinite_loop".into()], ..base.clone() },
            "plugins.expand[1]: plugin `infinite_loop` does not implement expand_names (it implements group_layers)"),
        (PluginsConfig { source: "panic".into(), ..base.clone() }, "plugins.source: plugin `panic` does not implement render_source"),
        (PluginsConfig { group: "/nonexistent/other.wasm".into(), ..base.clone() },
            "plugins.group: plugin `other`: cannot read /nonexistent/other.wasm"),
    ];
    for (cfg, expected) in cases {
        let err = PluginSet::load(&cfg).unwrap_err().to_string();
        assert!(err.starts_with(expected), "{err:?} does not start with {expected:?}");
        assert!(!err.contains('\n'));
    }
    // A file and a definition of another file that would share a name.
    let elsewhere = fx.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(fx.path("panic"), elsewhere.join("panic.wasm")).unwrap();
    let mut cfg = base.clone();
    cfg.group = elsewhere.join("panic.wasm").display().to_string();
    let err = PluginSet::load(&cfg).unwrap_err().to_string();
    assert!(err.contains("would be named `panic`, like the plugin from"), "{err}");
    let mut cfg = base.clone();
    cfg.define.insert("size".into(), PluginDefinition { path: fx.path("good") });
    assert!(PluginSet::load(&cfg).unwrap_err().to_string().starts_with("plugins.define.size: `size` is a built-in"));
}

#[tokio::test]
async fn a_plugin_used_under_several_keys_is_loaded_once() {
    let fx = Fixtures::new();
    let mut cfg = config(&fx);
    // By definition name and by the same file's path: one plugin.
    cfg.group_rules.push(GroupRule { prefix: None, tag: Some("big".into()), plugin: fx.path("good").display().to_string() });
    cfg.group_rules.push(GroupRule { prefix: None, tag: Some("big".into()), plugin: "good".into() });
    let set = PluginSet::load(&cfg).unwrap();
    let all = set.all();
    assert_eq!(all.len(), 2 + RUNTIME_HOSTILE.len());
    assert!(std::sync::Arc::ptr_eq(&set.group, &set.source));
    assert!(std::sync::Arc::ptr_eq(set.grouper_for("any", "big"), &set.group));
    assert_eq!(set.grouper_for("panic/x", "big").name(), "panic", "first match wins");
    let good = &set.group;
    assert_eq!(good.digest().len(), 64);
    assert_eq!(good.info().hooks, ["expand_names", "group_layers", "render_source"]);
    assert_eq!(good.config(), &serde_json::json!({}));
}

/// `good` with a custom section naming `tag`: the same plugin under a digest
/// no other test (and no earlier load in this process) has used.
fn fresh_copy(fx: &Fixtures, tag: &str) -> PathBuf {
    let mut wasm = std::fs::read(fx.path("good")).unwrap();
    let name = b"strata-test";
    let payload = format!("{tag} {:?}", Instant::now());
    let size = 1 + name.len() + payload.len();
    assert!(size < 128, "one-byte LEB128 size");
    wasm.extend([0, size as u8, name.len() as u8]);
    wasm.extend(name);
    wasm.extend(payload.as_bytes());
    let path = fx.dir.path().join(format!("fresh-{tag}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    path
}

#[tokio::test]
async fn compiled_modules_are_cached_and_a_bad_cache_entry_is_not_fatal() {
    let fx = Fixtures::new();
    let wasm = fresh_copy(&fx, "cache");
    let cache = tempfile::tempdir().unwrap();
    let with_cache = |dir: &str| PluginsConfig { cache_dir: Some(cache.path().join(dir)), ..test_limits() };
    let first = load_file(&wasm, serde_json::Value::Null, &with_cache("a")).unwrap();
    let entries: Vec<PathBuf> =
        std::fs::read_dir(cache.path().join("a")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let name = entry.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with(first.digest()) && name.ends_with(".cwasm"), "{name}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(entry).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // From a cache another process wrote (same file, another directory).
    std::fs::create_dir(cache.path().join("b")).unwrap();
    std::fs::copy(entry, cache.path().join("b").join(&name)).unwrap();
    let second = load_file(&wasm, serde_json::Value::Null, &with_cache("b")).unwrap();
    assert!(second.group_layers(input()).await.is_ok());
    // A corrupted entry: compiled again, and the entry rewritten.
    std::fs::create_dir(cache.path().join("c")).unwrap();
    std::fs::write(cache.path().join("c").join(&name), b"not machine code").unwrap();
    let third = load_file(&wasm, serde_json::Value::Null, &with_cache("c")).unwrap();
    assert!(third.group_layers(input()).await.is_ok());
    assert_eq!(std::fs::read(cache.path().join("c").join(&name)).unwrap(), std::fs::read(entry).unwrap());
}

#[tokio::test]
async fn check_sample_reports_each_hook() {
    let fx = Fixtures::new();
    let cfg = test_limits();
    let good = load_file(&fx.path("good"), serde_json::Value::Null, &cfg).unwrap();
    let report = strata::plugins::check_sample(&good).await;
    let text = report.to_string();
    // The sample closure is not the one `good` answers about: its fixed
    // grouping is refused, which is what a check is for.
    assert_eq!(report.failures, 1, "{text}");
    assert!(text.contains("expand_names (shell/git/htop:latest): ok"), "{text}");
    assert!(text.contains("group_layers (10 paths, budget 4): FAILED: returned an invalid grouping"), "{text}");
    assert!(text.contains("render_source (tag latest): ok"), "{text}");
    let looping = load_file(&fx.path("infinite_loop"), serde_json::Value::Null, &cfg).unwrap();
    let report = strata::plugins::check_sample(&looping).await;
    assert!(!report.ok());
    assert!(report.to_string().contains("FAILED: ran out of fuel"), "{report}");
}
