//! Test vectors of the compact form of `group_layers` input, published in
//! docs/plugin-compact-vectors.json for authors of decoders in other
//! languages: bytes, and whether the SDK's decoder accepts them (with what
//! it decodes) or refuses them (with why). The published file must be what
//! the SDK decides today; rewrite it after a deliberate change with
//! `STRATA_BLESS=1 cargo test -p strata-plugin-sdk --test compact_vectors`.

use serde_json::{json, Value};
use strata_plugin_sdk::wire::WireInput;
use strata_plugin_sdk::{ClosureGraph, GroupInput, StorePath};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// The example of docs/plugins.md, spelt out byte by byte by hand: the
/// layout, independent of the encoder.
fn docs_example_bytes() -> Vec<u8> {
    let mut b = vec![0x02, b'{', b'}', 0x5d, 0x01, 0x00, 0x02];
    b.push(18);
    b.extend_from_slice(b"/nix/store/a-hello");
    b.extend_from_slice(&[0xf8, 0x9f, 0x03, 0x02, 0x01, 0x00, 0x00]);
    b.push(18);
    b.extend_from_slice(b"/nix/store/b-glibc");
    b.extend_from_slice(&[0x80, 0x9c, 0xe4, 0x0e, 0x01, 0x01, 0xd8, 0xb3, 0x01]);
    b
}

fn docs_example() -> GroupInput {
    GroupInput {
        config: json!({}),
        budget: 93,
        graph: ClosureGraph {
            roots: vec![0],
            paths: vec![
                StorePath { path: "/nix/store/a-hello".into(), nar_size: 53240, references: vec![1, 0], popularity: 0 },
                StorePath { path: "/nix/store/b-glibc".into(), nar_size: 31002112, references: vec![1], popularity: 23000 },
            ],
        },
    }
}

/// (name, what it shows, bytes).
fn vectors() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let example = docs_example_bytes();
    let mut truncated = example.clone();
    truncated.pop();
    let mut trailing = example.clone();
    trailing.push(0x00);
    let max = GroupInput {
        config: json!({"é": "\"quoted\""}),
        budget: u32::MAX,
        graph: ClosureGraph {
            roots: vec![0],
            paths: vec![StorePath { path: "/nix/store/x-big".into(), nar_size: u64::MAX, references: vec![0], popularity: u64::MAX }],
        },
    }
    .encode()
    .unwrap();
    vec![
        ("docs-example", "the example of docs/plugins.md: 61 bytes", example),
        ("empty", "an empty closure with budget 0: config, budget, no roots, no paths", vec![0x02, b'{', b'}', 0x00, 0x00, 0x00]),
        ("largest-values", "u32::MAX (5 bytes, last 0x0f) and u64::MAX (10 bytes, last 0x01); a config with UTF-8 and escapes", max),
        (
            "overlong-varint",
            "a varint longer than needed (budget 0 as 80 00) is accepted; the host always writes the shortest form",
            vec![0x02, b'{', b'}', 0x80, 0x00, 0x00, 0x00],
        ),
        (
            "u32-too-wide",
            "a u32's fifth byte may carry only 4 bits (at most 0x0f)",
            vec![0x02, b'{', b'}', 0xff, 0xff, 0xff, 0xff, 0x1f, 0x00, 0x00],
        ),
        (
            "u32-too-long",
            "a u32 takes at most 5 bytes",
            vec![0x02, b'{', b'}', 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00, 0x00],
        ),
        (
            "u64-too-wide",
            "a u64's tenth byte may carry only 1 bit (at most 0x01)",
            {
                let mut b = vec![0x02, b'{', b'}', 0x01, 0x00, 0x01, 0x01, b'/'];
                b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00]);
                b
            },
        ),
        ("truncated", "the example without its last byte", truncated),
        ("trailing-byte", "the example with one byte more: nothing may follow the last path", trailing),
        (
            "string-past-the-end",
            "a config string whose length runs past the input",
            vec![0x05, b'{', b'}'],
        ),
        (
            "count-past-the-end",
            "a sequence of 100 roots in a 10-byte input",
            vec![0x02, b'{', b'}', 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00],
        ),
    ]
}

fn published() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/plugin-compact-vectors.json")
}

#[test]
fn the_docs_example_is_what_the_host_encodes() {
    assert_eq!(docs_example().encode().unwrap(), docs_example_bytes());
    assert_eq!(docs_example_bytes().len(), 61);
    assert_eq!(GroupInput::decode(&docs_example_bytes()).unwrap(), docs_example());
}

#[test]
fn published_vectors_are_the_sdks_verdicts() {
    let entries: Vec<Value> = vectors()
        .into_iter()
        .map(|(name, about, bytes)| {
            let mut entry = json!({"name": name, "about": about, "hex": hex(&bytes)});
            match GroupInput::decode(&bytes) {
                Ok(input) => {
                    entry["verdict"] = json!("ok");
                    entry["decoded"] = serde_json::to_value(&input).unwrap();
                }
                Err(reason) => {
                    entry["verdict"] = json!("refused");
                    entry["reason"] = json!(reason);
                }
            }
            entry
        })
        .collect();
    let verdicts: Vec<&str> = entries.iter().map(|e| e["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts[..4], ["ok"; 4], "{entries:#?}");
    assert!(verdicts[4..].iter().all(|v| *v == "refused"), "{entries:#?}");
    let document = json!({
        "about": "Test vectors of the compact form of group_layers input (docs/plugins.md): hex bytes, and the verdict of strata-plugin-sdk's decoder. Generated by plugin-sdk/tests/compact_vectors.rs.",
        "vectors": entries,
    });
    let text = serde_json::to_string_pretty(&document).unwrap() + "\n";
    if std::env::var_os("STRATA_BLESS").is_some() {
        std::fs::write(published(), &text).unwrap();
    }
    let on_disk = std::fs::read_to_string(published()).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/plugin-compact-vectors.json differs from the SDK's verdicts; after a deliberate change run \
         STRATA_BLESS=1 cargo test -p strata-plugin-sdk --test compact_vectors"
    );
}
