//! Which WebAssembly features a plugin may use: the list docs/plugins.md
//! gives, held against the host. Each case is the well-behaved fixture
//! (good.wat) with one use of a feature added; an accepted one must load and
//! answer, a refused one must be refused at load with a message naming it.

use strata::config::PluginsConfig;
use strata::plugins::load_file;
use strata_plugin_sdk::{ClosureGraph, GroupInput, StorePath};

const GOOD: &str = include_str!("fixtures/plugins/good.wat");

/// Accepted: (feature as docs/plugins.md names it, module fields using it).
/// Each snippet is called from `strata_group_layers`'s sibling `$uses`,
/// which `strata_abi_version` runs, so the code is executed, not only
/// validated.
const ACCEPTED: &[(&str, &str)] = &[
    ("sign-extension", "(func $uses (drop (i32.extend8_s (i32.const 255))))"),
    ("non-trapping float-to-int", "(func $uses (drop (i32.trunc_sat_f32_s (f32.const 1e30))))"),
    ("mutable globals", "(global $g (export \"counter\") (mut i32) (i32.const 0)) (func $uses (global.set $g (i32.const 1)))"),
    ("multi-value", "(func $pair (result i32 i32) (i32.const 1) (i32.const 2)) (func $uses (drop (i32.add (call $pair))))"),
    ("bulk memory", "(func $uses (memory.fill (i32.const 4096) (i32.const 7) (i32.const 64)) (memory.copy (i32.const 8192) (i32.const 4096) (i32.const 64)))"),
    ("reference types (funcref)", "(table $t 1 funcref) (table $u 2 funcref) (elem declare func $uses) (func $uses (drop (ref.is_null (ref.null func))) (drop (table.size $u)) (table.set $u (i32.const 1) (ref.func $uses)))"),
    ("typed function references", "(type $f (func)) (elem declare func $uses) (func $uses (drop (ref.as_non_null (ref.func $uses))))"),
    ("SIMD", "(func $uses (drop (i32x4.extract_lane 1 (i32x4.add (v128.const i32x4 1 2 3 4) (v128.const i32x4 4 3 2 1)))))"),
    ("relaxed SIMD", "(func $uses (drop (i8x16.relaxed_swizzle (v128.const i64x2 0 0) (v128.const i64x2 0 0))))"),
    ("tail calls", "(func $seven (result i32) (i32.const 7)) (func $tail (result i32) (return_call $seven)) (func $uses (drop (call $tail)))"),
    ("extended constant expressions", "(global $e i32 (i32.add (i32.const 1) (i32.mul (i32.const 2) (i32.const 3)))) (func $uses (drop (global.get $e)))"),
];

/// Refused: (feature, module fields using it, what the refusal says).
const REFUSED: &[(&str, &str, &str)] = &[
    ("threads", "(memory $shared 1 1 shared) (func $uses (drop (memory.atomic.notify $shared (i32.const 0) (i32.const 1))))", "threads"),
    ("multi-memory", "(memory $second 1) (func $uses (drop (memory.size $second)))", "multi-memory"),
    ("exceptions", "(tag $oops) (func $uses (try_table (catch_all 0) (throw $oops)))", "exceptions"),
    ("garbage collection", "(type $pair (struct (field i32) (field i32))) (func $uses (drop (struct.new $pair (i32.const 1) (i32.const 2))))", "gc"),
    ("externref", "(table $u 1 externref) (func $uses (drop (table.size $u)))", "requires gc"),
    ("memory64", MEMORY64, "memory64"),
    ("component model", "(component)", "component"),
    ("wide arithmetic", "(func $uses (drop (drop (i64.add128 (i64.const 1) (i64.const 0) (i64.const 2) (i64.const 0)))))", "wide arithmetic"),
    ("custom page sizes", "(memory $tiny 1 (pagesize 1)) (func $uses)", "custom page sizes"),
    ("stack switching", "(type $f (func)) (type $k (cont $f)) (func $uses)", "stack switching"),
];

/// A module of its own: the fixture's memory is 32-bit throughout.
const MEMORY64: &str = r#"(module
  (memory (export "memory") i64 1)
  (func (export "strata_abi_version") (result i32) (i32.const 3))
  (func (export "strata_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "strata_dealloc") (param i32 i32))
  (func (export "strata_plugin_info") (result i64) (i64.const 0))
  (func (export "strata_group_layers") (param i32 i32) (result i64) (i64.const 0)))"#;

/// The fixture with `fields` added and `$uses` run by `strata_abi_version`;
/// a whole module or component (`fields` starting with its keyword) as is.
fn module(fields: &str) -> Vec<u8> {
    if fields.starts_with("(module") || fields.starts_with("(component") {
        return wat::parse_str(fields).unwrap_or_else(|e| panic!("{e}\n{fields}"));
    }
    let abi = r#"(func (export "strata_abi_version") (result i32) (i32.const 3))"#;
    assert!(GOOD.contains(abi));
    let wat = GOOD
        .replace(abi, r#"(func (export "strata_abi_version") (result i32) (call $uses) (i32.const 3))"#)
        .trim_end()
        .strip_suffix(')')
        .expect("the fixture ends its module")
        .to_string()
        + fields
        + "\n)\n";
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}\n{wat}"))
}

fn input() -> GroupInput {
    let paths = ["aaaa-base-1.0", "bbbb-lib-2.0", "cccc-app-3.0", "dddd-data-4.0"]
        .iter()
        .map(|n| StorePath { path: format!("/nix/store/{n}"), nar_size: 1, references: vec![], popularity: 0 })
        .collect();
    GroupInput { config: serde_json::Value::Null, graph: ClosureGraph { roots: vec![0], paths }, budget: 3 }
}

#[tokio::test]
async fn accepted_features_load_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PluginsConfig::default();
    for (feature, fields) in ACCEPTED {
        let path = dir.path().join(format!("{}.wasm", feature.replace(' ', "_")));
        std::fs::write(&path, module(fields)).unwrap();
        let plugin = load_file(&path, serde_json::Value::Null, &cfg).unwrap_or_else(|e| panic!("{feature}: {e}"));
        let layers = plugin.group_layers(input()).await.unwrap_or_else(|e| panic!("{feature}: {e}"));
        assert_eq!(layers.layers, [vec![0], vec![1, 2, 3]], "{feature}");
    }
}

#[test]
fn refused_features_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PluginsConfig::default();
    for (feature, fields, named) in REFUSED {
        let path = dir.path().join(format!("{}.wasm", feature.replace(' ', "_")));
        std::fs::write(&path, module(fields)).unwrap();
        let err = load_file(&path, serde_json::Value::Null, &cfg).expect_err(feature).to_string();
        assert!(err.contains(named), "{feature}: {err:?} does not name {named:?}");
        assert!(!err.contains('\n'), "{feature}: not one line: {err}");
    }
}

