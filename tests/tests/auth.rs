//! Access control against a running server, with skopeo as the client:
//! refused without credentials (401 with a Basic challenge, nothing built),
//! pulls with `--creds`, 403 `DENIED` outside the user's prefixes, Bearer
//! tokens for scripts, users from a separate file, and no secret in the log.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::time::Duration;
use strata_e2e::*;

const CI_SECRET: &str = "ci-8f0c1d2e-secret-token";
const OPS_SECRET: &str = "ops-77aa31-other-token";

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let users_file = dir.path().join("users.toml");
    std::fs::write(&users_file, format!("[[users]]\nname = \"ops\"\nsha256 = \"{}\"\n", sha256_hex(OPS_SECRET))).unwrap();
    let toml = format!(
        "[auth]\nrealm = \"strata-test\"\nusers_file = \"{}\"\n\n[[auth.users]]\nname = \"ci\"\nsha256 = \"{}\"\nprefixes = [\"shell\", \"hello\"]\n",
        users_file.display(),
        sha256_hex(CI_SECRET)
    );
    let server = Server::start_with(ServerOptions { extra_toml: toml, ..Default::default() });
    // The file is read at start-up only.
    drop(dir);
    server
}

fn skopeo_inspect_with(server: &Server, name: &str, creds: Option<&str>) -> Output {
    let image = server.docker_ref(name, "latest");
    let mut args = vec!["inspect", "--tls-verify=false", "--raw"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(&image);
    skopeo(&args, Duration::from_secs(300))
}

#[test]
fn skopeo_pulls_with_creds_and_is_refused_without() {
    let server = start();

    // No credentials: the ping and every registry route answer 401 with a
    // Basic challenge, in the spec's JSON, and nothing is built.
    for path in ["/v2/", "/v2/shell/hello/manifests/latest", "/v2/hello/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000", "/api/inspect/hello"] {
        let r = server.get(path).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let challenge = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(challenge.starts_with("Basic realm=\"strata-test\""), "{path}: {challenge:?}");
        assert_eq!(spec_error(&r.bytes().unwrap()).0, "UNAUTHORIZED", "{path}");
    }
    // The page and health checks stay open; /api/info shows an anonymous
    // client nothing that describes names (the source's table), and no
    // server path to anyone.
    assert_eq!(server.get("/healthz").send().unwrap().status().as_u16(), 200);
    let anonymous: Value = server.get("/api/info").send().unwrap().json().unwrap();
    assert_eq!((&anonymous["restricted"], &anonymous["source"]["config"]), (&serde_json::json!(true), &serde_json::json!({})), "{anonymous}");
    assert_eq!(anonymous["storage"], "file", "{anonymous}");
    let basic_ci = base64::engine::general_purpose::STANDARD.encode(format!("ci:{CI_SECRET}"));
    let known: Value = server.get("/api/info").header("Authorization", format!("Basic {basic_ci}")).send().unwrap().json().unwrap();
    assert_eq!((&known["restricted"], &known["source"]["config"]["path"]), (&serde_json::json!(false), &serde_json::json!("(server path)")), "{known}");
    // /api/inspect reads the name as /v2/ does, and auth checks that name:
    // an encoded slash is not a way around the prefixes.
    let r = server.get("/api/inspect/busybox%2Fhello").header("Authorization", format!("Basic {basic_ci}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 403, "outside ci's prefixes");
    let r = server.get("/api/inspect/shell%2Fhello").header("Authorization", format!("Bearer {OPS_SECRET}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 400, "an encoded slash is no name separator");
    let out = skopeo_inspect_with(&server, "shell/hello", None);
    assert!(!out.success(), "skopeo without credentials was let in: {out}");
    assert!(out.stderr.to_lowercase().contains("unauthorized") || out.stderr.contains("401"), "{out}");
    let wrong = skopeo_inspect_with(&server, "shell/hello", Some("ci:not-the-secret"));
    assert!(!wrong.success(), "a wrong secret was let in: {wrong}");
    assert!(!server.log().contains("building image"), "a refused request started a build:\n{}", server.log());

    // With credentials: a whole pull, every blob checked by skopeo.
    let layout = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:hello", layout.path().join("oci").display());
    let image = server.docker_ref("shell/hello", "latest");
    let creds = format!("ci:{CI_SECRET}");
    skopeo(&["copy", "--src-tls-verify=false", "--src-creds", &creds, &image, &dest], Duration::from_secs(300)).assert_ok();
    assert!(oci_blobs(&layout.path().join("oci")).len() >= 3);

    // Outside the user's prefixes: 403 DENIED; `shellcheck`-like names do
    // not match `shell` (whole segments only).
    let denied = skopeo_inspect_with(&server, "busybox", Some(&creds));
    assert!(!denied.success(), "{denied}");
    let basic = base64::engine::general_purpose::STANDARD.encode(&creds);
    for name in ["busybox", "shellx/hello", "coreutils/shell"] {
        let r = server.get(&format!("/v2/{name}/manifests/latest")).header("Authorization", format!("Basic {basic}")).send().unwrap();
        assert_eq!(r.status().as_u16(), 403, "{name}");
        assert_eq!(spec_error(&r.bytes().unwrap()).0, "DENIED", "{name}");
    }

    // A user from users_file, without prefixes, and the same secret as a
    // Bearer token (scripts, curl).
    skopeo_inspect_with(&server, "busybox", Some(&format!("ops:{OPS_SECRET}"))).assert_ok();
    let r = server.get("/v2/busybox/manifests/latest").header("Authorization", format!("Bearer {OPS_SECRET}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = server.get("/v2/busybox/manifests/latest").header("Authorization", "Bearer nope").send().unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Never a secret, nor the header carrying it, in the log.
    let log = server.log();
    for secret in [CI_SECRET, OPS_SECRET, basic.as_str(), "not-the-secret"] {
        assert!(!log.contains(secret), "the log shows a secret ({secret})");
    }
    assert!(log.contains("access control on") && log.contains("access denied"), "{log}");
}
