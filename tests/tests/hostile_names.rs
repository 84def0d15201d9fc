//! Hostile names, references and digests against a running server: every
//! one must be refused with the distribution spec's 400 code before any
//! plugin, Nix or the store sees it, and the server must still serve a
//! normal pull afterwards.
//!
//! Requests go over a raw socket so that nothing normalizes them on the way
//! (`..`, `%2e%2e` and `%2f` reach the server exactly as written).

use strata_e2e::*;

/// Sum of every sample of a metric family in the server's `/metrics` (0 when
/// the family has no sample yet).
/// The corpus: (request target, expected spec code). Each is sent as a GET
/// and, for manifests and blobs, as a HEAD too.
fn corpus() -> Vec<(String, &'static str)> {
    let long = "a".repeat(300);
    let many = vec!["a"; 100].join("/");
    let at_limit_plus_one = vec!["hello"; 65].join("/");
    let long_tag = "t".repeat(129);
    let hex = "0123456789abcdef".repeat(4);
    let mut c: Vec<(String, &'static str)> = Vec::new();
    let mut name = |n: &str| c.push((format!("/v2/{n}/manifests/latest"), "NAME_INVALID"));
    // Path traversal, plain and encoded, in every position.
    for n in [
        "..",
        "../hello",
        "hello/..",
        "hello/../../../etc",
        "../../../../etc/passwd",
        ".",
        "./hello",
        "%2e%2e",
        "%2e%2e/%2e%2e/etc",
        "%2E%2E",
        "hello/%2e%2e",
        "..%2fhello",
        "hello%2f..%2f..%2fetc",
        "hello%2fshell",
        "hello%2Fshell",
        "%252e%252e",
        "hello%00",
        "hello%0a",
        "hello%0d%0aX-Injected:%201",
    ] {
        name(n);
    }
    // Nix syntax: names only ever reach Nix as JSON data, but they must not
    // even get there.
    for n in [
        "hello\"",
        "a${b}",
        "${builtins.abort}",
        "%24%7Bbuiltins.abort%20%22x%22%7D",
        "hello;rm",
        "hello%3brm",
        "a\\b",
        "hello%5c",
        "hello'",
        "(import",
        "hello|id",
        "hello&id",
        "hello$(id)",
        "builtins.fetchurl%20%22http://x%22",
    ] {
        name(n);
    }
    // Absolute paths, empty segments, case, separators out of place.
    for n in [
        "/hello",
        "/nix/store/hello",
        "%2fnix%2fstore",
        "hello//shell",
        "hello/",
        "Hello",
        "HELLO/shell",
        "-hello",
        "hello-",
        "_hello",
        "hello_",
        "a___b",
        "a_-b",
        ".hello",
        "hello.",
        "hello..shell",
    ] {
        name(n);
    }
    // Sizes: a 300-character segment, 100 segments, one segment more than
    // max_packages allows.
    name(&long);
    name(&many);
    name(&at_limit_plus_one);
    // Unicode, raw (UTF-8 bytes) and encoded; a homoglyph; a full-width dot.
    for n in ["é", "hellö", "%C3%A9", "%E2%80%AE", "hеllo", "hello%EF%BC%8Eshell", "%F0%9F%92%A9"] {
        name(n);
    }
    drop(name);
    // The other routes take names too.
    c.push(("/v2/..%2f..%2fetc/tags/list".into(), "NAME_INVALID"));
    c.push(("/v2/../tags/list".into(), "NAME_INVALID"));
    c.push((format!("/v2/../blobs/sha256:{hex}"), "NAME_INVALID"));
    c.push((format!("/v2/%2e%2e/blobs/sha256:{hex}"), "NAME_INVALID"));
    c.push(("/api/inspect/..%2f..%2fetc".into(), "NAME_INVALID"));
    c.push(("/api/inspect/a%24%7Bb%7D?tag=latest".into(), "NAME_INVALID"));
    // A tag outside the grammar names no manifest: the spec has no code
    // for it, and its conformance suite wants 404 MANIFEST_UNKNOWN.
    c.push(("/api/inspect/hello?tag=..%2f..".into(), "MANIFEST_UNKNOWN"));

    // Tags.
    for t in [
        "..",
        ".hidden",
        "-x",
        "%2e%2e",
        "a%2fb",
        "a${b}",
        "a\"b",
        "a;b",
        "a\\b",
        "é",
        "%00",
        long_tag.as_str(),
    ] {
        c.push((format!("/v2/hello/manifests/{t}"), "MANIFEST_UNKNOWN"));
    }
    // Digests, as manifest references and as blobs.
    for d in [
        "sha256:".to_string(),
        "sha256:abc".to_string(),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha512:{hex}{hex}"),
        format!("md5:{}", &hex[..32]),
        format!("sha256:../../{}", &hex[..58]),
        "sha256:..%2f..%2fmeta".to_string(),
        format!("sha256:{}%00", &hex[..63]),
        ":".to_string(),
        format!("sha256::{hex}"),
    ] {
        c.push((format!("/v2/hello/manifests/{d}"), "DIGEST_INVALID"));
        c.push((format!("/v2/hello/blobs/{d}"), "DIGEST_INVALID"));
    }
    for d in ["latest", "..", "../../meta/images/x", "%2e%2e%2fmeta", hex.as_str()] {
        c.push((format!("/v2/hello/blobs/{d}"), "DIGEST_INVALID"));
    }
    c
}

/// Targets that are not valid HTTP at all (raw spaces, control bytes, `<`):
/// the HTTP parser refuses them with 400 before any route is chosen.
const NOT_HTTP: &[&[u8]] = &[
    b"/v2/a b/manifests/latest",
    b"/v2/a\x01b/manifests/latest",
    b"/v2/a`id`/manifests/latest",
    b"/v2/<script>/manifests/latest",
    b"/v2/hello/manifests/a b",
];

#[test]
fn hostile_references_are_refused_before_plugins_nix_or_storage() {
    let server = Server::start();
    let builds = server.metric("strata_image_builds_total");
    let plugin_calls = server.metric("strata_plugin_call_seconds_count");
    let cache = server.metric("strata_manifest_cache_total");

    let corpus = corpus();
    assert!(corpus.len() > 100, "corpus has {} entries", corpus.len());
    let mut wrong = Vec::new();
    for (target, want) in &corpus {
        let mut methods = vec!["GET"];
        if target.starts_with("/v2/") && !target.ends_with("/tags/list") {
            methods.push("HEAD");
        }
        for method in methods {
            let r = raw_request(server.addr, method, target);
            let status = if *want == "MANIFEST_UNKNOWN" { 404 } else { 400 };
            if r.status != status {
                wrong.push(format!("{method} {target}: status {} (want {status} {want})", r.status));
                continue;
            }
            if method == "HEAD" {
                continue; // no body to carry the code
            }
            let (code, message, _) = spec_error(&r.body);
            if code != *want {
                wrong.push(format!("{method} {target}: {code} (want {want}): {message}"));
            }
            // Whatever is echoed back is one line of escaped text.
            if message.contains('\n') || message.contains('\r') || message.chars().any(char::is_control) {
                wrong.push(format!("{method} {target}: raw control characters echoed: {message:?}"));
            }
        }
    }
    for target in NOT_HTTP {
        let r = raw_bytes_request(server.addr, target);
        if r != 400 {
            wrong.push(format!("{}: status {r} (want 400)", String::from_utf8_lossy(target)));
        }
    }
    assert!(wrong.is_empty(), "{} of {} requests answered wrongly:\n{}", wrong.len(), corpus.len(), wrong.join("\n"));

    // Nothing got past the grammar: no build, no plugin call, no cache
    // look-up, no GC root, no Nix in the log, nothing in the store.
    assert_eq!(server.metric("strata_image_builds_total"), builds, "an image build was started");
    assert_eq!(server.metric("strata_plugin_call_seconds_count"), plugin_calls, "a plugin was called");
    assert_eq!(server.metric("strata_manifest_cache_total"), cache, "the image cache was consulted");
    let roots = files_under(&server.nix_work_dir().join("gcroots"));
    assert!(roots.is_empty(), "GC roots were made: {roots:?}");
    let log = server.log();
    assert!(!log.contains("building image"), "a build was logged:\n{log}");
    let stored = files_under(&server.storage);
    assert!(stored.is_empty(), "the store was written: {stored:?}");

    // And the server still serves a normal pull, which does go through Nix.
    let layout = tempfile::tempdir().unwrap();
    skopeo_copy(&server, "shell/hello", "latest", &layout.path().join("oci"), "t").assert_ok();
    assert_eq!(server.metric("strata_image_builds_total"), builds + 1.0, "the normal pull built once");
    assert!(!files_under(&server.nix_work_dir().join("gcroots")).is_empty(), "the normal pull made a GC root");
}

/// Status of `GET <target>` sent as raw bytes.
fn raw_bytes_request(addr: std::net::SocketAddr, target: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(&req).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
