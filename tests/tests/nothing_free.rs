//! Nothing to spend for free: a question Strata has answered before runs no
//! Nix again, and what a client can make it do is bounded and measurable
//! (`strata_nix_invocations_total`, every Nix process the server starts).

use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

const NIX: &str = "strata_nix_invocations_total";

fn status_of(server: &Server, path: &str) -> (u16, String) {
    let r = raw_request(server.addr, "GET", path);
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[test]
fn repeated_questions_run_no_nix() {
    let server = Server::start();
    // (Start-up asked Nix whether its store answers: `store-ping`.)

    // A missing name, in an image whose optional names (cacert, iana-etc:
    // the demo set has both) are found: one evaluation, then none.
    for (i, path) in ["/v2/nopenope/manifests/latest", "/v2/hello/nopenope2/manifests/latest"].iter().enumerate() {
        let before = server.metric(NIX);
        for _ in 0..5 {
            let (status, body) = status_of(&server, path);
            assert_eq!(status, 404, "{path}: {body}");
            assert!(body.contains("MANIFEST_UNKNOWN"), "{body}");
        }
        let spent = server.metric(NIX) - before;
        assert!(spent <= 1.0, "case {i}: five requests for {path} started {spent} Nix processes");
    }

    // An inspection: Nix the first time, none the next four.
    let (status, body) = status_of(&server, "/api/inspect/shell/hello");
    assert_eq!(status, 200, "{body}");
    let after_first = server.metric(NIX);
    for _ in 0..4 {
        assert_eq!(status_of(&server, "/api/inspect/shell/hello").0, 200);
    }
    assert_eq!(server.metric(NIX), after_first, "repeated inspections ran Nix");
    // The name as /v2/ reads it: an encoded slash is refused, not decoded.
    let (status, body) = status_of(&server, "/api/inspect/shell%2Fhello");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("NAME_INVALID"), "{body}");

    // A pull of the inspected image builds it (Nix again), once.
    let (status, _) = get_manifest(&server, "shell/hello");
    assert_eq!(status, 200);
    let built = server.metric(NIX);
    for _ in 0..3 {
        assert_eq!(get_manifest(&server, "shell/hello").0, 200);
    }
    assert_eq!(server.metric(NIX), built, "a remembered image ran Nix");

    // No lease directory is left behind by any of it (built or refused).
    // (A lease is released by a task of its own, after the answer.)
    let leases = server.storage.join("leases");
    let left = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&leases).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    wait_until(Duration::from_secs(60), "the leases to be released", || left().is_empty());

    // Refusals are not errors in the log.
    assert!(!server.log().lines().any(|l| l.contains("ERROR")), "{}", server.log());

    // Empty lease directories an older Strata left (one per image key ever
    // asked for) go with `strata gc` once a day old; a young one, and one
    // holding a lease, stay.
    for (key, old, lease) in [("old-empty", true, false), ("young-empty", false, false), ("old-held", true, true)] {
        let dir = leases.join(key);
        std::fs::create_dir_all(&dir).unwrap();
        if lease {
            std::fs::write(dir.join("00000000000000000000"), "{}").unwrap();
        }
        if old {
            run(Command::new("touch").args(["-d", "2 days ago"]).arg(&dir), Duration::from_secs(10)).assert_ok();
        }
    }
    let mut gc = Command::new(strata_bin());
    gc.arg("--config")
        .arg(server.temp_dir().join("strata.toml"))
        .args(["gc", "--older-than", "30d", "--delete"])
        .env("NIXERY_PKGS_PATH", repo_root().join("examples/demo-pkgs"))
        .env("STRATA_NIX_OFFLINE", "1")
        .env("NIX_CONFIG", "substituters =")
        .env("RUST_LOG", "warn");
    let out = run(&mut gc, Duration::from_secs(300)).assert_ok();
    assert!(out.stdout.contains("1 empty lease directories older than a day removed"), "{out}");
    assert!(!leases.join("old-empty").exists(), "{out}");
    assert!(leases.join("young-empty").is_dir() && leases.join("old-held").is_dir(), "{out}");
}
