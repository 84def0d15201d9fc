//! The registry API over raw HTTP: errors as the distribution spec words
//! them, content negotiation, digests, HEAD and ranges.

use reqwest::blocking::Response;
use reqwest::Method;
use strata_e2e::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn header(r: &Response, name: &str) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Status and first error code of a response; the body must be the spec's.
fn error_of(r: Response) -> (u16, String, String, Value) {
    let status = r.status().as_u16();
    let ctype = header(&r, "content-type");
    let body = r.bytes().unwrap();
    assert!(ctype.starts_with("application/json"), "error Content-Type {ctype:?}: {}", String::from_utf8_lossy(&body));
    let (code, message, detail) = spec_error(&body);
    (status, code, message, detail)
}

#[test]
fn version_check() {
    let server = Server::start();
    let r = server.get("/v2/").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "docker-distribution-api-version"), "registry/2.0");
}

#[test]
fn errors_follow_the_distribution_spec() {
    let server = Server::start();

    // Missing packages: all of them named at once.
    let r = server.get("/v2/hello/nope1/nope2/manifests/latest").header("Accept", DOCKER).send().unwrap();
    let (status, code, message, detail) = error_of(r);
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"), "{message}");
    assert!(message.contains("nope1") && message.contains("nope2"), "message names both: {message}");
    if let Some(missing) = detail.get("missing").and_then(|m| m.as_array()) {
        let missing: Vec<&str> = missing.iter().filter_map(|m| m.as_str()).collect();
        assert_eq!(missing, ["nope1", "nope2"], "detail.missing: {detail}");
    }

    // Names outside the grammar never reach Nix.
    for path in ["/v2/Hello/manifests/latest", "/v2/a%2e%2e/manifests/latest", "/v2/hello/Shell/manifests/latest"] {
        let (status, code, message, _) = error_of(server.get(path).send().unwrap());
        assert_eq!((status, code.as_str()), (400, "NAME_INVALID"), "{path}: {message}");
    }
    // The same, written as no HTTP client library would send them.
    for path in [
        "/v2/%2e%2e/hello/manifests/latest",
        "/v2/../hello/manifests/latest",
        "/v2/hello%2fshell/manifests/latest",
        "/v2/hello//shell/manifests/latest",
    ] {
        let r = raw_request(server.addr, "GET", path);
        let (code, message, _) = spec_error(&r.body);
        assert_eq!((r.status, code.as_str()), (400, "NAME_INVALID"), "{path}: {message}");
    }

    // A read-only registry: writes are refused, whatever their path, with
    // what the route does allow (RFC 9110: none for uploads), in a sentence.
    for (method, path, allow) in [
        (Method::PUT, "/v2/hello/manifests/latest", "GET, HEAD"),
        (Method::DELETE, "/v2/hello/manifests/latest", "GET, HEAD"),
        (Method::POST, "/v2/hello/blobs/uploads/", ""),
        (Method::PATCH, "/v2/hello/blobs/uploads/0a1b2c", ""),
        (Method::PUT, "/v2/hello/blobs/uploads/0a1b2c?digest=sha256:00", ""),
        (Method::DELETE, "/v2/hello/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", "GET, HEAD"),
        (Method::POST, "/v2/", "GET, HEAD"),
    ] {
        let r = server.http().request(method.clone(), server.url(path)).body("{}").send().unwrap();
        assert_eq!(header(&r, "allow"), allow, "{method} {path}: Allow");
        assert!(r.headers().contains_key("allow"), "{method} {path}: no Allow");
        let (status, code, message, _) = error_of(r);
        assert_eq!((status, code.as_str()), (405, "UNSUPPORTED"), "{method} {path}: {message}");
        assert!(message.contains(" is not allowed") || message.contains("accepts no uploads"), "{message}");
    }

    // Tags: a path source resolves `latest` only (docs/configuration.md,
    // Tags); any other tag, and one outside the grammar (the v1.1.1
    // conformance suite's), is 404 MANIFEST_UNKNOWN, for GET and HEAD. No
    // other tag's image is handed out.
    for tag in ["v1", "abc1234", ".INVALID_MANIFEST_NAME", "-x"] {
        let path = format!("/v2/shell/hello/manifests/{tag}");
        let (status, code, message, _) = error_of(server.get(&path).send().unwrap());
        assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"), "{tag}: {message}");
        let r = server.http().head(server.url(&path)).send().unwrap();
        assert_eq!(r.status().as_u16(), 404, "HEAD {tag}");
    }
    let (_, _, message, detail) = error_of(server.get("/v2/shell/hello/manifests/v1").send().unwrap());
    assert!(message.contains("tag `v1` does not resolve"), "{message}");
    assert_eq!(detail["plugin"], "nixpkgs-source", "{detail}");
    let tags: Value = server.get("/v2/shell/hello/tags/list").send().unwrap().json().unwrap();
    assert_eq!(tags, serde_json::json!({ "name": "shell/hello", "tags": ["latest"] }));

    // An unknown blob.
    let zero = format!("sha256:{}", "0".repeat(64));
    let r = server.get(&format!("/v2/hello/blobs/{zero}")).send().unwrap();
    let (status, code, message, _) = error_of(r);
    assert_eq!((status, code.as_str()), (404, "BLOB_UNKNOWN"), "{message}");
    let r = server.http().head(server.url(&format!("/v2/hello/blobs/{zero}"))).send().unwrap();
    assert_eq!(r.status().as_u16(), 404, "HEAD of an unknown blob");

    // Every answer, errors included, names the API version.
    let r = server.get("/v2/Hello/manifests/latest").send().unwrap();
    assert_eq!(header(&r, "docker-distribution-api-version"), "registry/2.0");
}

#[test]
fn accept_selects_the_manifest_format_and_digests_are_of_the_bytes() {
    let server = Server::start();
    let name = "shell/hello";
    let mut seen = Vec::new();
    for (accept, want) in [(OCI, OCI), (DOCKER, DOCKER)] {
        let r = server.get(&format!("/v2/{name}/manifests/latest")).header("Accept", accept).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header(&r, "content-type"), want);
        let digest = header(&r, "docker-content-digest");
        let body = r.bytes().unwrap();
        assert_eq!(digest, sha256_digest(&body), "Docker-Content-Digest is the sha256 of the body");
        let json: Value = serde_json::from_slice(&body).expect("manifest is JSON");
        assert_eq!(json["schemaVersion"], 2);
        if let Some(mt) = json.get("mediaType") {
            assert_eq!(mt, want);
        }

        // Fetchable by digest: the same bytes, the same type.
        let r = server.get(&format!("/v2/{name}/manifests/{digest}")).header("Accept", accept).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET by digest {digest}");
        assert_eq!(header(&r, "content-type"), want);
        assert_eq!(header(&r, "docker-content-digest"), digest);
        assert_eq!(r.bytes().unwrap(), body, "same bytes by digest");

        // HEAD by tag carries the digest (Docker relies on it) and no body.
        let r = server.http().head(server.url(&format!("/v2/{name}/manifests/latest"))).header("Accept", accept).send().unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header(&r, "docker-content-digest"), digest, "HEAD's digest");
        assert_eq!(header(&r, "content-length"), body.len().to_string());
        assert_eq!(header(&r, "content-type"), want);
        assert!(r.bytes().unwrap().is_empty());
        seen.push((digest, json));
    }
    assert_ne!(seen[0].0, seen[1].0, "two formats, two digests");
    // Both formats describe the same config and layers.
    let layers = |m: &Value| -> Vec<String> {
        m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(layers(&seen[0].1), layers(&seen[1].1));
    assert_eq!(seen[0].1["config"]["digest"], seen[1].1["config"]["digest"]);

    // skopeo's way: one Accept line per type, OCI first.
    let r = server
        .get(&format!("/v2/{name}/manifests/latest"))
        .header("Accept", OCI)
        .header("Accept", DOCKER)
        .header("Accept", "application/vnd.docker.distribution.manifest.list.v2+json")
        .send()
        .unwrap();
    assert_eq!(header(&r, "content-type"), OCI, "several Accept lines are merged");

    // The config blob is there and matches its digest.
    let config = seen[0].1["config"]["digest"].as_str().unwrap();
    let r = server.get(&format!("/v2/{name}/blobs/{config}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let bytes = r.bytes().unwrap();
    assert_eq!(sha256_digest(&bytes), config);
    let config: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(config["os"], "linux");
}

#[test]
fn range_requests_on_blobs() {
    let server = Server::start();
    let r = server.get("/v2/shell/hello/manifests/latest").header("Accept", OCI).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let manifest: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["size"].as_u64().unwrap_or(0) > 200)
        .unwrap_or_else(|| panic!("a layer over 200 bytes in {manifest}"));
    let digest = layer["digest"].as_str().unwrap();
    let size = layer["size"].as_u64().unwrap();
    let path = format!("/v2/shell/hello/blobs/{digest}");

    let full = server.get(&path).send().unwrap();
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(header(&full, "docker-content-digest"), digest);
    let full = full.bytes().unwrap();
    assert_eq!(full.len() as u64, size, "blob size as the manifest says");
    assert_eq!(sha256_digest(&full), digest);

    let part = server.get(&path).header("Range", "bytes=10-99").send().unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(header(&part, "content-range"), format!("bytes 10-99/{size}"));
    assert_eq!(header(&part, "content-length"), "90");
    let part = part.bytes().unwrap();
    assert_eq!(part.len(), 90);
    assert_eq!(&part[..], &full[10..100], "exactly bytes 10 to 99");

    // Open-ended and suffix ranges, and one past the end.
    let tail = server.get(&path).header("Range", format!("bytes={}-", size - 7)).send().unwrap();
    assert_eq!(tail.status().as_u16(), 206);
    assert_eq!(&tail.bytes().unwrap()[..], &full[full.len() - 7..]);
    let suffix = server.get(&path).header("Range", "bytes=-5").send().unwrap();
    assert_eq!(suffix.status().as_u16(), 206);
    assert_eq!(&suffix.bytes().unwrap()[..], &full[full.len() - 5..]);
    let beyond = server.get(&path).header("Range", format!("bytes={size}-")).send().unwrap();
    assert_eq!(beyond.status().as_u16(), 416);
    assert_eq!(header(&beyond, "content-range"), format!("bytes */{size}"));
    let (_, code, message, _) = error_of(beyond);
    assert_ne!(code, "BLOB_UNKNOWN", "the blob exists: {message}");

    // RFC 9110 §14: a malformed range is ignored, and so is a range whose
    // If-Range names another representation: the whole blob, 200.
    for (range, if_range) in [
        ("bytes=5-2", None),
        ("bytes=x-9", None),
        ("lines=0-9", None),
        ("bytes=0-9", Some("\"sha256:0000\"")),
        ("bytes=0-9", Some("Sun, 06 Nov 1994 08:49:37 GMT")),
    ] {
        let mut req = server.get(&path).header("Range", range);
        if let Some(v) = if_range {
            req = req.header("If-Range", v);
        }
        let r = req.send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{range} {if_range:?}");
        assert_eq!(r.bytes().unwrap().len() as u64, size, "{range} {if_range:?}");
    }
    let matching = server.get(&path).header("Range", "bytes=0-9").header("If-Range", format!("\"{digest}\"")).send().unwrap();
    assert_eq!(matching.status().as_u16(), 206, "If-Range naming the blob's ETag");

    // HEAD: the size, no body.
    let head = server.http().head(server.url(&path)).send().unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(header(&head, "content-length"), size.to_string());
    assert_eq!(header(&head, "docker-content-digest"), digest);
}
