//! JSON Schema of every JSON wire type, generated from the types
//! themselves so that the published copy (`docs/plugin-schema.json`, which
//! the host's tests compare with this) cannot drift from what either side
//! compiles. It describes what the SDK's types accept: for inputs, what a
//! Rust plugin reads (the host always sends every field); for answers, what
//! the host reads, before its checks of [`crate::validate`].
//!
//! `group_layers` input crosses in the compact form of [`crate::wire`]; its
//! schema here is the JSON form with the same fields, which
//! `strata plugin check --input` reads and docs/plugins.md shows.

use crate::{
    Envelope, ExpandInput, Expansion, GroupInput, Layers, PluginInfo, SourceInput, SourceOutput,
    ABI_VERSION,
};
use schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// The whole document: each hook's input and answer (the envelope around
/// its output) by reference into `$defs`, and `strata_plugin_info`'s answer.
pub fn wire_schema() -> Value {
    let mut gen = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let mut exports = Map::new();
    exports.insert("strata_plugin_info".into(), json!({ "answer": sub::<Envelope<PluginInfo>>(&mut gen) }));
    exports.insert(
        "expand_names".into(),
        json!({ "input": sub::<ExpandInput>(&mut gen), "answer": sub::<Envelope<Expansion>>(&mut gen) }),
    );
    exports.insert(
        "group_layers".into(),
        json!({ "input": sub::<GroupInput>(&mut gen), "answer": sub::<Envelope<Layers>>(&mut gen) }),
    );
    exports.insert(
        "render_source".into(),
        json!({ "input": sub::<SourceInput>(&mut gen), "answer": sub::<Envelope<SourceOutput>>(&mut gen) }),
    );
    let defs: Map<String, Value> = gen.take_definitions(true).into_iter().collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("Strata plugin wire types, ABI version {ABI_VERSION}"),
        "description": "Generated from strata-plugin-sdk's types (plugin-sdk/src/schema.rs); docs/plugins.md is the contract. `exports` names, for each export, the schema of its input and of its answer.",
        "abi_version": ABI_VERSION,
        "exports": exports,
        "$defs": defs,
    })
}

fn sub<T: JsonSchema>(gen: &mut SchemaGenerator) -> Value {
    gen.subschema_for::<T>().to_value()
}

/// A schema validating one entry of [`wire_schema`]'s `exports`: `export`
/// is `strata_plugin_info` or a hook's wire name, `part` is `input` or
/// `answer`. It is the document itself with that entry as its root.
pub fn schema_for(document: &Value, export: &str, part: &str) -> Option<Value> {
    let target = document.get("exports")?.get(export)?.get(part)?.clone();
    let mut schema = document.as_object()?.clone();
    schema.remove("exports");
    schema.insert("allOf".into(), json!([target]));
    Some(Value::Object(schema))
}
