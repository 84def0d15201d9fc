//! What the sandbox costs: a `group_layers` call through the embedded wasm
//! (spawn_blocking, the compact input encoded and decoded, a JSON answer,
//! a fresh instance, fuel metering, the partition check) next to the same
//! plugin crate called natively, on a generated 10,000-path closure. Also
//! the fixed per-call cost (store and instance from the `InstancePre`) and
//! the start-up cost (compile, or load from the cache).
//!
//! `cargo bench -p strata-bench --bench plugin_overhead` (optimised build). Goals:
//! a call ≤ 20 ms, instantiation ≤ 1 ms. Not a test: it prints a table.
//! Set STRATA_BENCH_PATHS to change the closure size.

#[path = "../../host/tests/plugin_support/mod.rs"]
mod plugin_support;

use std::time::{Duration, Instant};
use strata::config::{GroupRule, PluginsConfig};
use strata::plugins::PluginSet;
use strata_plugin_sdk::wire::WireInput;
use strata_plugin_sdk::{GroupInput, Layers, PluginError};

const BUDGET: u32 = 93; // the default layers.budget (94) minus the host's own layer

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn config(cache: Option<&std::path::Path>) -> PluginsConfig {
    PluginsConfig {
        group: "size".into(),
        group_rules: vec![GroupRule { prefix: Some("pop/".into()), tag: None, plugin: "popularity".into() }],
        cache_dir: cache.map(|p| p.to_path_buf()),
        // Measuring, not limiting: popularity's fuel on this input is one of
        // the numbers reported.
        fuel: u64::MAX / 2,
        ..PluginsConfig::default()
    }
}

fn main() {
    let n: usize = std::env::var("STRATA_BENCH_PATHS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (mut graph, popularity) = plugin_support::closure(n, 8, 42);
    graph.set_popularity(&popularity);
    let input = GroupInput { config: serde_json::json!({}), graph, budget: BUDGET };
    let wire_bytes = input.encode().unwrap().len();
    let json_bytes = serde_json::to_vec(&input).unwrap().len();
    println!("closure: {n} paths, {} references, {:.1} MB of input ({:.1} MB as JSON), budget {BUDGET}",
        input.graph.paths.iter().map(|p| p.references.len()).sum::<usize>(), wire_bytes as f64 / 1e6, json_bytes as f64 / 1e6);

    // Start-up: compile all four built-ins, then again from the cache dir
    // (another cache dir key, so the in-process memo does not hide it).
    let cache = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let _cold = PluginSet::load(&config(Some(&cache.path().join("x")))).unwrap();
    let compile = t.elapsed();
    std::fs::create_dir(cache.path().join("y")).unwrap();
    for entry in std::fs::read_dir(cache.path().join("x")).unwrap() {
        let entry = entry.unwrap().path();
        std::fs::copy(&entry, cache.path().join("y").join(entry.file_name().unwrap())).unwrap();
    }
    let t = Instant::now();
    let set = PluginSet::load(&config(Some(&cache.path().join("y")))).unwrap();
    let warm = t.elapsed();
    println!("start-up, 4 built-ins: compile {} ms, from cache {} ms", ms(compile), ms(warm));
    println!();

    // The same plugins refusing their configuration: the guest parses the
    // whole input, then fails at once. What is left is marshalling.
    let mut refusing = config(Some(&cache.path().join("y")));
    for name in ["size", "popularity"] {
        refusing.config.insert(name.into(), toml::from_str("bogus = 1").unwrap());
    }
    let refusing = PluginSet::load(&refusing).unwrap();

    type Native = fn(GroupInput) -> Result<Layers, PluginError>;
    let rows: [(&str, &str, Native); 2] = [
        ("size", "img", strata_plugin_size::group_layers),
        ("popularity", "pop/img", strata_plugin_popularity::group_layers),
    ];
    println!("| plugin | native | wasm call (whole) | of which in wasm | marshalling only | overhead | fuel | memory | instantiate | layers |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, image, native) in rows {
        let plugin = set.grouper_for(image, "latest").clone();
        assert_eq!(plugin.name(), name);
        let iterations = 15;
        let mut native_times = Vec::new();
        let mut native_out = None;
        for _ in 0..iterations {
            let i = input.clone();
            let t = Instant::now();
            let out = native(i).expect("native grouping");
            native_times.push(t.elapsed());
            native_out = Some(out);
        }
        let mut call_times = Vec::new();
        let mut wasm_times = Vec::new();
        let mut fuel = 0;
        let mut memory = 0;
        let mut wasm_out = None;
        for _ in 0..iterations {
            let i = input.clone();
            let t = Instant::now();
            let (out, stats) = runtime.block_on(plugin.group_layers_measured(i)).expect("wasm grouping");
            call_times.push(t.elapsed());
            wasm_times.push(stats.wasm_time);
            fuel = stats.fuel;
            memory = stats.memory_bytes;
            wasm_out = Some(out);
        }
        assert_eq!(native_out, wasm_out, "{name}: wasm and native disagree");
        let refuser = refusing.grouper_for(image, "latest").clone();
        let marshal: Vec<Duration> = (0..iterations)
            .map(|_| {
                let i = input.clone();
                let t = Instant::now();
                let failure = runtime.block_on(refuser.group_layers(i)).expect_err("bad config");
                assert!(failure.reason.contains("invalid plugin configuration"), "{}", failure.reason);
                t.elapsed()
            })
            .collect();
        let inst: Vec<Duration> =
            (0..2000).map(|_| plugin.instantiate_only().expect("instantiate").wasm_time).collect();
        let (native_t, call_t) = (median(native_times), median(call_times));
        println!(
            "| {name} | {} ms | {} ms | {} ms | {} ms | {} ms | {:.2e} | {} MiB | {} ms | {} |",
            ms(native_t),
            ms(call_t),
            ms(median(wasm_times)),
            ms(median(marshal)),
            ms(call_t.saturating_sub(native_t)),
            fuel as f64,
            memory >> 20,
            ms(median(inst)),
            wasm_out.unwrap().layers.len(),
        );
    }
    println!();
    println!("native: the plugin crate called directly (input already built).");
    println!("wasm call: Plugin::group_layers as the host makes it, median of 15; 'of which in wasm' is");
    println!("store + instantiate + input copy + the guest's work (input decode, algorithm, JSON answer).");
    println!("marshalling only: the same call where the plugin refuses its configuration right after");
    println!("parsing the input (host encode, instantiate, copy, guest decode, error back).");
    println!("overhead: wasm call - native.");
    println!("instantiate: Store + instance from the InstancePre, median of 2000 (goal <= 1 ms).");
}
