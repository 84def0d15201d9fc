//! The published JSON Schema of the plugin wire types (docs/plugin-schema.json)
//! is the SDK's, and what the built-in plugins answer, byte for byte as they
//! wrote it, is valid under it; so is what the host sends them.
//!
//! After a deliberate change to a wire type, rewrite the published copy with
//! `STRATA_BLESS=1 cargo test -p strata --test plugin_schema`.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use strata::config::PluginsConfig;
use strata::plugins::{load_file, Plugin, BUILTIN_NAMES};
use strata_plugin_sdk::schema::{schema_for, wire_schema};
use strata_plugin_sdk::wire::WireInput;
use strata_plugin_sdk::{ClosureGraph, ExpandInput, Expansion, GroupInput, NamedPath, SourceInput};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn published() -> PathBuf {
    repo().join("docs/plugin-schema.json")
}

#[test]
fn published_schema_is_the_sdks() {
    let generated = serde_json::to_string_pretty(&wire_schema()).unwrap() + "\n";
    if std::env::var_os("STRATA_BLESS").is_some() {
        std::fs::write(published(), &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(published()).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/plugin-schema.json differs from the SDK's types; after a deliberate change run \
         STRATA_BLESS=1 cargo test -p strata --test plugin_schema (and bump ABI_VERSION if the change is \
         incompatible)"
    );
}

/// Compiled validators for each export's input and answer, from the
/// published file (the previous test ties it to the SDK).
struct Validator {
    schemas: boon::Schemas,
    index: std::collections::BTreeMap<(String, String), boon::SchemaIndex>,
}

impl Validator {
    fn new() -> Validator {
        let document: Value = serde_json::from_slice(&std::fs::read(published()).unwrap()).unwrap();
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        let mut index = std::collections::BTreeMap::new();
        for (export, parts) in document["exports"].as_object().expect("exports") {
            for part in parts.as_object().unwrap().keys() {
                let url = format!("urn:strata:{export}:{part}");
                compiler.add_resource(&url, schema_for(&document, export, part).unwrap()).unwrap();
                let i = compiler.compile(&url, &mut schemas).unwrap_or_else(|e| panic!("{url}: {e:#}"));
                index.insert((export.clone(), part.clone()), i);
            }
        }
        assert_eq!(index.len(), 7, "three hooks' inputs and answers, and plugin info's answer");
        Validator { schemas, index }
    }

    fn check(&self, export: &str, part: &str, value: &Value) -> Result<(), String> {
        let i = self.index[&(export.to_string(), part.to_string())];
        self.schemas.validate(value, i).map_err(|e| format!("{e}"))
    }

    fn assert_valid(&self, export: &str, part: &str, value: &Value) {
        if let Err(e) = self.check(export, part, value) {
            panic!("{export} {part} is not valid under docs/plugin-schema.json: {e}\n{value:#}");
        }
    }
}

fn builtin(name: &str) -> Plugin {
    let path = repo().join(format!("plugins/dist/{name}.wasm"));
    load_file(&path, Value::Null, &PluginsConfig::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// The answer a plugin wrote for one input, as JSON, after checking the
/// input the host encodes is valid too (JSON inputs only: the compact form
/// is checked by its own vectors).
fn answer<I: WireInput + serde::Serialize>(v: &Validator, plugin: &Plugin, hook: &str, input: &I) -> Value {
    v.assert_valid(hook, "input", &serde_json::to_value(input).unwrap());
    let bytes = plugin.answer_bytes(&format!("strata_{hook}"), Some(&input.encode().unwrap())).unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{hook} answered with malformed JSON: {e}"))
}

fn graph() -> ClosureGraph {
    let p = |name: &str, size: u64, refs: &[&str]| NamedPath {
        path: format!("/nix/store/{name}"),
        nar_size: size,
        references: refs.iter().map(|r| format!("/nix/store/{r}")).collect(),
    };
    let mut graph = ClosureGraph::from_named(
        &["/nix/store/c-app-1", "/nix/store/d-tool-2"],
        vec![
            p("a-libc-2", 30_000_000, &["a-libc-2"]),
            p("b-zlib-1", 300_000, &["a-libc-2"]),
            p("c-app-1", 2_000_000, &["a-libc-2", "b-zlib-1"]),
            p("d-tool-2", 500_000, &["a-libc-2"]),
        ],
    )
    .unwrap();
    graph.set_popularity(&[("libc-2".to_string(), 90_000)].into_iter().collect());
    graph
}

#[test]
fn builtin_plugins_answer_what_the_schema_describes() {
    let v = Validator::new();
    let mut answers = 0;
    for name in BUILTIN_NAMES {
        let plugin = builtin(name);
        let info: Value = serde_json::from_slice(&plugin.answer_bytes("strata_plugin_info", None).unwrap()).unwrap();
        v.assert_valid("strata_plugin_info", "answer", &info);
        answers += 1;
        if plugin.implements("expand_names") {
            for (segments, config) in [
                (vec!["shell", "arm64", "git"], json!({})),
                (vec!["curl"], json!({"always": ["cacert"]})),
                (vec!["acme", "htop"], json!({"bundles": {"acme": {"packages": ["git"], "cmd": ["git"], "env": ["A=1"]}}})),
                // An error envelope: configuration the plugin refuses.
                (vec!["x"], json!({"bundles": 7})),
            ] {
                let segments: Vec<String> = segments.into_iter().map(String::from).collect();
                let input = ExpandInput {
                    config,
                    segments: segments.clone(),
                    tag: "latest".into(),
                    current: Expansion { packages: segments, arch: "amd64".into(), ..Expansion::default() },
                };
                v.assert_valid("expand_names", "answer", &answer(&v, &plugin, "expand_names", &input));
                answers += 1;
            }
        }
        if plugin.implements("group_layers") {
            for budget in [1, 2, 3, 10] {
                let input = GroupInput { config: json!({}), graph: graph(), budget };
                let bytes = plugin.answer_bytes("strata_group_layers", Some(&input.encode().unwrap())).unwrap();
                let out: Value = serde_json::from_slice(&bytes).unwrap();
                v.assert_valid("group_layers", "input", &serde_json::to_value(&input).unwrap());
                v.assert_valid("group_layers", "answer", &out);
                answers += 1;
            }
        }
        if plugin.implements("render_source") {
            for (config, tag) in [
                (json!({}), "latest"),
                (json!({"git": "https://example.org/pkgs.git"}), "0123456789abcdef0123456789abcdef01234567"),
                (json!({"path": "/srv/pkgs"}), "latest"),
                (json!({"channel": 12}), "latest"),
            ] {
                let input = SourceInput { config, tag: tag.into() };
                v.assert_valid("render_source", "answer", &answer(&v, &plugin, "render_source", &input));
                answers += 1;
            }
        }
    }
    assert!(answers >= 4 + 4 + 8 + 4, "{answers} answers checked");
}

/// The schema is not vacuous: answers the host refuses are invalid under it.
#[test]
fn the_schema_refuses_what_the_host_refuses() {
    let v = Validator::new();
    let good = json!({"ok": {"strategy": "size", "layers": [[1], [0]]}});
    v.assert_valid("group_layers", "answer", &good);
    for bad in [
        json!({"ok": {"strategy": "size", "layers": [["/nix/store/a-x"]]}}),
        json!({"ok": {"strategy": "size", "layers": [[-1]]}}),
        json!({"ok": {"layers": [[0]]}}),
        json!({"strategy": "size", "layers": [[0]]}),
        json!({"ok": {"strategy": "size", "layers": [[0]]}, "err": {"message": "both"}}),
        json!({"err": "a bare string"}),
    ] {
        assert!(v.check("group_layers", "answer", &bad).is_err(), "accepted {bad}");
    }
    // A bare object for plugin info, as an old version of the docs showed.
    let bare = json!({"name": "x", "version": "1", "hooks": ["group_layers"]});
    assert!(v.check("strata_plugin_info", "answer", &bare).is_err());
    v.assert_valid("strata_plugin_info", "answer", &json!({"ok": bare}));
    let source = json!({"ok": {"source": {"type": "svn", "url": "x"}, "identity": "x", "immutable": true}});
    assert!(v.check("render_source", "answer", &source).is_err());
}
