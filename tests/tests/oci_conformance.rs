//! The OCI distribution-spec conformance suite (pull, tag listing and
//! referrers; push, delete and mount off: Strata builds its images) against
//! a real `strata serve` on the demo package set: 0 failures, on an image
//! with an SBOM referrer and a multi-segment name, and on a one-segment
//! name. The suite and its runner live beside the checkout
//! (`../shared/oci-conformance`, its README); `scripts/conformance.sh`
//! builds it once per change, cached like the fuzz build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

fn suite_dir() -> PathBuf {
    std::env::var_os("STRATA_OCI_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/oci-conformance"))
}

/// The suite's binary, built (or found built) by scripts/conformance.sh.
fn built_suite() -> PathBuf {
    let out = run(Command::new("bash").arg(repo_root().join("scripts/conformance.sh")), Duration::from_secs(1200)).assert_ok();
    let bin = PathBuf::from(out.stdout.lines().last().unwrap_or_default().trim());
    assert!(bin.is_file(), "scripts/conformance.sh named no binary:\n{out}");
    bin
}

/// (passed, failed) of one run of the suite's run.sh.
fn conformance(server: &Server, bin: &Path, name: &str, results: &Path) -> (u32, u32, String) {
    require_tool("curl");
    require_tool("jq");
    let out = run(
        Command::new("bash")
            .arg(suite_dir().join("run.sh"))
            .args([server.host().as_str(), name, "latest"])
            .arg(results)
            .env("OCI_CONFORMANCE_BIN", bin),
        Duration::from_secs(900),
    );
    let last = out.stdout.lines().rfind(|l| l.starts_with("conformance: ")).unwrap_or_else(|| panic!("no summary line:\n{out}"));
    let numbers: Vec<u32> = last.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    let [passed, failed] = numbers[..] else { panic!("{last}") };
    (passed, failed, format!("{out}"))
}

#[test]
fn the_oci_conformance_suite_passes() {
    let bin = built_suite();
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    for name in ["shell/hello", "hello"] {
        let (status, body) = get_manifest(&server, name);
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        let digest = sha256_digest(&body);
        // The image has its SBOM as a referrer, which the suite reads.
        let index: Value = server.get(&format!("/v2/{name}/referrers/{digest}")).send().unwrap().json().unwrap();
        assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "{name}: {index}");

        let results = work.path().join(name.replace('/', "-"));
        let (passed, failed, out) = conformance(&server, &bin, name, &results);
        eprintln!("{name}: conformance: {passed} passed, {failed} failed");
        assert_eq!(failed, 0, "{name}: the suite failed:\n{out}");
        assert!(passed >= 20, "{name}: only {passed} passed: is the suite running at all?\n{out}");
    }
    // What the v1.1.1 suite asks of an invalid tag, beyond the newest one.
    for method in ["GET", "HEAD"] {
        let r = raw_request(server.addr, method, "/v2/shell/hello/manifests/.INVALID_MANIFEST_NAME");
        assert_eq!(r.status, 404, "{method} of an invalid tag");
    }
}
