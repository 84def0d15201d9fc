//! A plugin in C: build examples/c-plugin with Debian's clang and the SDK's
//! single header, check it with `strata plugin check` (its samples, then
//! our own input and config), swap it in by config and pull. The image's
//! layers must be what the C strategy says: one store path each, largest
//! first by the NAR size Nix reports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

const IMAGE: &str = "shell/git/hello";

/// Built as the example's README says, into a temporary directory.
fn build(dir: &Path) -> PathBuf {
    require_tool("clang");
    require_tool("wasm-ld");
    let wasm = dir.join("largest_alone.wasm");
    let script = repo_root().join("examples/c-plugin/build.sh");
    let built = run(Command::new("sh").arg(script).arg(&wasm), Duration::from_secs(120)).assert_ok();
    assert!(wasm.is_file(), "{} was not written:\n{built}", wasm.display());
    wasm
}

fn check(args: &[&std::ffi::OsStr]) -> Output {
    run(Command::new(strata_bin()).args(["plugin", "check"]).args(args), Duration::from_secs(120))
}

#[test]
fn c_plugin_built_checked_and_pulled() {
    let work = tempfile::tempdir().unwrap();
    let wasm = build(work.path());

    // The built-in sample: 10 paths, budget 4.
    let sample = check(&[wasm.as_os_str()]).assert_ok();
    assert!(sample.stdout.contains("calls itself largest-alone-c 0.1.0"), "{sample}");
    assert!(
        sample.stdout.contains("strategy `largest-alone-c`, 4 layers of [1, 1, 1, 7] paths"),
        "{sample}"
    );

    // Our own input, in the JSON form docs/plugins.md shows, and a config
    // file: the whole answer is printed, with fuel and memory.
    let input = work.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"graph": {"roots": [0], "paths": [
            {"path": "/nix/store/a-hello", "nar_size": 53240, "references": [1, 0]},
            {"path": "/nix/store/b-glibc", "nar_size": 31002112, "references": [1], "popularity": 23000},
            {"path": "/nix/store/c-tiny", "nar_size": 10, "references": []}
        ]}, "budget": 2}"#,
    )
    .unwrap();
    let config = work.path().join("config.json");
    std::fs::write(&config, r#"{"ignored": "by this plugin", "n": 3}"#).unwrap();
    let own = check(&[
        wasm.as_os_str(),
        "--hook".as_ref(),
        "group_layers".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--plugin-config".as_ref(),
        config.as_os_str(),
    ])
    .assert_ok();
    assert!(own.stdout.contains(r#"config {"ignored":"by this plugin","n":3} ("#), "{own}");
    assert!(own.stdout.contains(" fuel, ") && own.stdout.contains(" KiB of memory"), "{own}");
    let answer: String = own.stdout.lines().skip_while(|l| !l.ends_with("output:")).skip(1).collect();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {own}"));
    // glibc alone, then hello and the tiny path merged at the budget.
    assert_eq!(answer, serde_json::json!({"strategy": "largest-alone-c", "layers": [[1], [0, 2]]}), "{own}");

    // The plugin's own error, and the host's verdict on input it cannot
    // serve, fail the command with the reason.
    std::fs::write(&input, r#"{"graph": {"roots": [], "paths": []}, "budget": 0}"#).unwrap();
    let refused = check(&[wasm.as_os_str(), "--input".as_ref(), input.as_os_str()]);
    assert!(!refused.success(), "{refused}");
    assert!(refused.stdout.contains("FAILED: reported an error: no layer budget"), "{refused}");

    // The header's reader against the published test vectors of the
    // compact form: bytes the SDK refuses, it refuses; bytes the SDK reads,
    // it reads (the plugin may still have its own say, as on budget 0).
    let vectors: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("docs/plugin-compact-vectors.json")).unwrap()).unwrap();
    let plugin = strata::plugins::load_file(&wasm, serde_json::Value::Null, &Default::default()).unwrap();
    for v in vectors["vectors"].as_array().unwrap() {
        let bytes: Vec<u8> = v["hex"]
            .as_str()
            .unwrap()
            .split(' ')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        let answer = plugin.answer_bytes("strata_group_layers", Some(&bytes)).unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        let refused = answer["err"]["message"].as_str().is_some_and(|m| m.starts_with("compact input:"));
        assert_eq!(refused, v["verdict"] == "refused", "vector {}: {answer}", v["name"]);
    }

    // Swapped in by path, and pulled.
    let server = Server::start_with(ServerOptions {
        extra_toml: format!("[plugins]\ngroup = \"{}\"\n", wasm.display()),
        ..Default::default()
    });
    let layout = work.path().join("oci");
    skopeo_copy(&server, IMAGE, "latest", &layout, "t").assert_ok();
    let config = skopeo_inspect(&server, IMAGE, "latest", &["--config"]);
    let history: Vec<String> = config["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["created_by"].as_str().unwrap_or_default().to_string())
        .collect();
    let (grouped, symlinks) = history.split_at(history.len() - 1);
    assert!(symlinks[0].starts_with("strata: symlinks to"), "{history:?}");
    assert!(grouped.len() > 5 && grouped.iter().all(|h| h.starts_with("strata largest-alone-c: ")), "{history:?}");

    // Each layer holds the one store path its history names; their NAR
    // sizes, as Nix reports them, never grow from one layer to the next.
    let manifest = skopeo_inspect(&server, IMAGE, "latest", &["--raw"]);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), history.len());
    let mut sizes = Vec::new();
    for (layer, created_by) in layers.iter().zip(grouped) {
        let digest = layer["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let blob = std::fs::read(layout.join("blobs/sha256").join(digest)).unwrap();
        let mut paths: Vec<String> = layer_entries(&blob)
            .into_iter()
            .filter_map(|(p, ..)| p.strip_prefix("nix/store/").and_then(|rest| rest.split('/').next()).map(str::to_string))
            .filter(|p| !p.is_empty())
            .collect();
        paths.dedup();
        assert_eq!(paths.len(), 1, "one store path per layer: {paths:?} ({created_by})");
        let name = paths[0].split_once('-').unwrap().1;
        assert!(created_by.ends_with(name), "{created_by} holds {}", paths[0]);
        let size = run(
            Command::new(require_tool("nix-store")).args(["--query", "--size"]).arg(format!("/nix/store/{}", paths[0])),
            Duration::from_secs(60),
        )
        .assert_ok();
        sizes.push((size.stdout.trim().parse::<u64>().unwrap(), paths[0].clone()));
    }
    assert!(sizes.windows(2).all(|w| w[0].0 >= w[1].0), "largest first: {sizes:?}");

    // And the image runs.
    let rootfs = umoci_unpack(&layout, "t", &work.path().join("bundle"));
    let hello = chroot(&rootfs, &["/bin/hello"]).assert_ok();
    assert_eq!(hello.stdout, "Hello, world!\n", "{hello}");
}

/// The kit's other half: hooks whose input is JSON text, answered through
/// its JSON writer (escaping, integers) inside the envelope, and its error
/// path; checked by the host as the server checks them.
#[test]
fn c_kit_json_hooks() {
    require_tool("clang");
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("json_hooks.c");
    std::fs::write(
        &source,
        r#"#define STRATA_PLUGIN_NAME "c-json-hooks"
#define STRATA_EXPAND_NAMES expand
#define STRATA_RENDER_SOURCE render
#include "strata_plugin.h"

const char *expand(const char *json, uint32_t len, strata_json *out) {
    (void)json;
    strata_json_raw(out, "{\"packages\":[\"hello\"],\"arch\":\"amd64\",\"image\":{\"env\":[\"INPUT_BYTES=");
    strata_json_u64(out, len);
    strata_json_raw(out, "\"],\"labels\":{\"quote\":");
    strata_json_str(out, "say \"hi\"\\\n");
    strata_json_raw(out, "}}}");
    return 0;
}

const char *render(const char *json, uint32_t len, strata_json *out) {
    (void)json; (void)len; (void)out;
    return "no source \"here\"";
}
"#,
    )
    .unwrap();
    let wasm = work.path().join("json_hooks.wasm");
    build_c_plugin(&source, &wasm);
    let out = check(&[wasm.as_os_str()]);
    assert!(!out.success(), "render_source fails on purpose:\n{out}");
    assert!(out.stdout.contains("hooks: expand_names, render_source"), "{out}");
    assert!(out.stdout.contains(r#""env":["INPUT_BYTES="#), "{out}");
    assert!(out.stdout.contains(r#""labels":{"quote":"say \"hi\"\\\n"}"#), "{out}");
    assert!(out.stdout.contains(r#"render_source (tag latest): FAILED: reported an error: no source "here""#), "{out}");
}
