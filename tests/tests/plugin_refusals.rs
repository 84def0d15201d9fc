//! A plugin that refuses a request on purpose names the registry code the
//! client gets (docs/plugins.md, "Refusing with a registry code"): a real
//! WebAssembly plugin, built from C with the SDK's header and its
//! `strata_refuse`, refuses by the image name's first segment; skopeo and
//! a plain HTTP client see the status, the spec's code and the plugin's
//! own message. An unknown code, or none, stays a 500.

use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_e2e::*;

/// Refuses `<first segment>/…` by the code the segment names; any other
/// name expands to itself on amd64.
const PLUGIN: &str = r#"
#define STRATA_PLUGIN_NAME "refuser"
#define STRATA_EXPAND_NAMES expand
#include "strata_plugin.h"

static int starts(const char *json, uint32_t len, const char *needle) {
    uint32_t n = strata_strlen(needle);
    for (uint32_t i = 0; i + n <= len; i++) {
        uint32_t k = 0;
        while (k < n && json[i + k] == needle[k]) k++;
        if (k == n) return 1;
    }
    return 0;
}

const char *expand(const char *json, uint32_t len, strata_json *out) {
    if (starts(json, len, "\"segments\":[\"denied\""))
        return strata_refuse(STRATA_DENIED, "the acme policy keeps denied images to the infra team");
    if (starts(json, len, "\"segments\":[\"nobundle\""))
        return strata_refuse(STRATA_NAME_UNKNOWN, "no bundle is called nobundle");
    if (starts(json, len, "\"segments\":[\"quota\""))
        return strata_refuse(STRATA_TOOMANYREQUESTS, "the quota of 3 new images an hour is used up");
    if (starts(json, len, "\"segments\":[\"riscv\""))
        return strata_refuse(STRATA_UNSUPPORTED, "riscv64 images are not offered here");
    if (starts(json, len, "\"segments\":[\"odd\""))
        return strata_refuse("NOT_A_CODE", "a code the host does not know");
    if (starts(json, len, "\"segments\":[\"plain\""))
        return "a plain failure";
    strata_json_raw(out, "{\"packages\":[\"hello\"],\"arch\":\"amd64\"}");
    return 0;
}
"#;

fn build(dir: &Path) -> PathBuf {
    let src = dir.join("refuser.c");
    std::fs::write(&src, PLUGIN).unwrap();
    let wasm = dir.join("refuser.wasm");
    build_c_plugin(&src, &wasm);
    wasm
}

#[test]
fn plugin_codes_reach_the_client() {
    let work = tempfile::tempdir().unwrap();
    let wasm = build(work.path());
    let server = Server::start_with(ServerOptions {
        extra_toml: format!("[plugins]\nexpand = [\"{}\"]\n", wasm.display()),
        ..Default::default()
    });
    let nix_at_start = server.metric("strata_nix_invocations_total");
    for (name, status, code, message, allow) in [
        ("denied/x", 403, "DENIED", "the acme policy keeps denied images to the infra team", None),
        ("nobundle", 404, "NAME_UNKNOWN", "no bundle is called nobundle", None),
        ("quota/x", 429, "TOOMANYREQUESTS", "the quota of 3 new images an hour is used up", None),
        ("riscv/x", 405, "UNSUPPORTED", "riscv64 images are not offered here", Some("")),
    ] {
        let r = raw_request(server.addr, "GET", &format!("/v2/{name}/manifests/latest"));
        let (got_code, got_message, detail) = spec_error(&r.body);
        assert_eq!((r.status, got_code.as_str(), got_message.as_str()), (status, code, message), "{name}");
        assert_eq!(detail["plugin"], "refuser", "{name}: {detail}");
        assert_eq!(r.header("allow"), allow, "{name}");
    }
    // No code the host knows: a plugin failure, 500, the reason in detail.
    for (name, reason) in [
        ("odd/x", "reported an error with an unknown code \"NOT_A_CODE\": a code the host does not know"),
        ("plain/x", "reported an error: a plain failure"),
    ] {
        let r = raw_request(server.addr, "GET", &format!("/v2/{name}/manifests/latest"));
        let (code, message, detail) = spec_error(&r.body);
        assert_eq!((r.status, code.as_str()), (500, "UNKNOWN"), "{name}: {message}");
        assert_eq!(detail["reason"], reason, "{name}");
    }

    // A registry client shows the plugin's own words, not "unexpected
    // HTTP status: 500".
    let denied = skopeo(&["inspect", "--tls-verify=false", &server.docker_ref("denied/x", "latest")], Duration::from_secs(120));
    assert!(!denied.success(), "{denied}");
    assert!(denied.stderr.contains("the acme policy keeps denied images to the infra team"), "{denied}");
    let quota = skopeo(&["inspect", "--tls-verify=false", "--retry-times=0", &server.docker_ref("quota/x", "latest")], Duration::from_secs(120));
    assert!(!quota.success(), "{quota}");
    assert!(quota.stderr.contains("the quota of 3 new images an hour is used up"), "{quota}");
    // The plugin's refusals ran no Nix.
    assert_eq!(server.metric("strata_nix_invocations_total"), nix_at_start, "{}", server.log());
}
