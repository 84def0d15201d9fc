//! Faults against a running server: Nix failing, Nix hanging past
//! NIX_TIMEOUT, the server killed with SIGKILL in the middle of a build, and
//! the store's file system running full. Each must end in a clear error for
//! the request it hit, a store with no blob whose bytes do not match its
//! digest, and a server (or its successor) that serves the next request.
//!
//! The package set is tests/fixtures/faulty-pkgs: the demo set plus
//! `broken`, `sleepy`, `slow` and `big`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use strata_e2e::*;

fn fixture_pkgs() -> PathBuf {
    repo_root().join("tests/fixtures/faulty-pkgs")
}

fn options(storage: Option<&Path>, env: &[(&str, &str)]) -> ServerOptions {
    let mut all = vec![("NIXERY_PKGS_PATH".to_string(), fixture_pkgs().display().to_string())];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ServerOptions { storage: storage.map(Path::to_path_buf), env: all, ..Default::default() }
}

/// What a crash may leave and what it may not: every blob under its final
/// key holds exactly the bytes its digest names, every layer record and
/// image record points at blobs that are there, and every blob an image's
/// manifests name is there. Returns the number of blobs checked.
fn assert_store_consistent(storage: &Path) -> usize {
    let blobs = storage.join("blobs/sha256");
    let mut checked = 0;
    for file in files_under(&blobs) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains('#') {
            // object_store's own temporary file of a put that never
            // finished: not under any key a client can ask for.
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(sha256_digest(&bytes), format!("sha256:{name}"), "{} does not hold its digest's bytes", file.display());
        checked += 1;
    }
    let blob = |digest: &str| blobs.join(digest.trim_start_matches("sha256:"));
    for record in files_under(&storage.join("meta/layers")) {
        let v: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        let digest = v["digest"].as_str().expect("layer record has a digest");
        let size = v["size"].as_u64().expect("layer record has a size");
        let meta = std::fs::metadata(blob(digest)).unwrap_or_else(|_| panic!("{} names missing {digest}", record.display()));
        assert_eq!(meta.len(), size, "{} size", record.display());
    }
    for record in files_under(&storage.join("meta/images")) {
        let v: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        for key in ["docker", "oci"] {
            let digest = v[key].as_str().expect("image record names its manifests");
            let bytes = std::fs::read(blob(digest)).unwrap_or_else(|_| panic!("{} names missing {digest}", record.display()));
            let m: Value = serde_json::from_slice(&bytes).unwrap();
            let mut parts = vec![m["config"]["digest"].as_str().unwrap().to_string()];
            parts.extend(m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
            for d in parts {
                assert!(blob(&d).is_file(), "{} needs {d}, which is missing", record.display());
            }
        }
    }
    checked
}

#[test]
fn nix_failing_is_a_clean_500_with_nix_s_words_in_the_log_only() {
    let server = Server::start_with(options(None, &[]));
    let (status, body) = get_manifest(&server, "broken");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 500, "{text}");
    let (code, message, _) = spec_error(&body);
    assert_eq!(code, "UNKNOWN");
    // The package is named, with the request id to find the log by.
    assert!(message.contains("building broken failed") && message.contains("server log"), "{message}");
    assert!(message.contains("request id "), "{message}");
    for private in ["frobnicator", "/nix/store", "exit code"] {
        assert!(!text.contains(private), "the response shows Nix's output ({private}): {text}");
    }
    let log = server.log();
    assert!(log.contains("strata-fixture-error: frobnicator.h: No such file or directory"), "Nix's last lines are not in the log:\n{log}");

    // Only that request failed.
    let (status, body) = get_manifest(&server, "hello");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn nix_past_its_timeout_is_killed_and_answered_504() {
    let nonce = unique_suffix();
    let marker = fault_marker("sleepy", &nonce);
    let server = Server::start_with(options(None, &[("NIX_TIMEOUT", "3"), ("STRATA_FAULT_NONCE", &nonce)]));
    let started = Instant::now();
    let (status, body) = get_manifest(&server, "sleepy");
    let took = started.elapsed();
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    let (code, message, _) = spec_error(&body);
    assert_eq!(code, "UNKNOWN");
    assert!(message.contains("timed out after 3 s"), "{message}");
    // The timeout, plus at most the grace Nix gets to stop its builders.
    assert!(took < Duration::from_secs(3 + 5 + 5), "answered after {took:?}");
    // The builder (and its `sleep`) is gone, not orphaned.
    wait_until(Duration::from_secs(10), "the sleeping builder to be killed", || processes_with(&marker).is_empty());
    assert!(server.log().contains("nix timed out"), "no timeout in the log:\n{}", server.log());

    let (status, body) = get_manifest(&server, "hello");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn kill_9_mid_build_leaves_a_consistent_store_and_a_restart_builds_the_image() {
    let storage = tempfile::tempdir().unwrap();
    let nonce = unique_suffix();
    let marker = fault_marker("slow", &nonce);
    let opts = options(Some(storage.path()), &[("STRATA_FAULT_NONCE", &nonce)]);

    // 1. Killed while Nix builds.
    let mut first = Server::start_with(opts.clone());
    let layout = tempfile::tempdir().unwrap();
    skopeo_copy(&first, "shell/hello", "latest", &layout.path().join("oci"), "warm").assert_ok();
    let url = first.url("/v2/slow/manifests/latest");
    let pending = thread::spawn(move || http_client().get(url).send().map(|r| r.status().as_u16()));
    wait_until(Duration::from_secs(120), "the slow build to start", || !processes_with(&marker).is_empty());
    first.signal(libc::SIGKILL);
    assert!(first.wait_exit(Duration::from_secs(10)).is_some(), "the server survived SIGKILL");
    assert!(pending.join().unwrap().is_err(), "the killed server answered");
    let blobs = assert_store_consistent(storage.path());
    assert!(blobs >= 3, "the warm image's blobs are stored ({blobs})");
    drop(first);

    // 2. Killed while a layer is half-written.
    let mut second = Server::start_with(opts.clone());
    let staging = storage.path().join("staging");
    let url = second.url("/v2/slow/manifests/latest");
    let pending = thread::spawn(move || http_client().get(url).send().map(|r| r.status().as_u16()));
    wait_until(Duration::from_secs(180), "a layer to be staged", || {
        files_under(&staging).iter().any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
    });
    second.signal(libc::SIGKILL);
    assert!(second.wait_exit(Duration::from_secs(10)).is_some(), "the server survived SIGKILL");
    let _ = pending.join();
    assert_store_consistent(storage.path());
    drop(second);

    // 3. A new server on the same store builds the image whole; skopeo
    //    checks every blob against its digest.
    let third = Server::start_with(opts);
    skopeo_copy(&third, "slow", "latest", &layout.path().join("oci"), "slow").assert_ok();
    skopeo_copy(&third, "shell/hello", "latest", &layout.path().join("oci"), "hello").assert_ok();
    assert_store_consistent(storage.path());
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run(Command::new(require_tool("mount")).args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path), Duration::from_secs(10))
            .assert_ok();
        Tmpfs { path: path.to_path_buf() }
    }

    fn resize(&self, size: &str) {
        run(Command::new(require_tool("mount")).args(["-o", &format!("remount,size={size}")]).arg(&self.path), Duration::from_secs(10))
            .assert_ok();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.path), Duration::from_secs(10));
    }
}

#[test]
fn a_full_disk_is_a_clear_error_that_changes_nothing() {
    require_root("mounting a small tmpfs");
    let dir = tempfile::tempdir().unwrap();
    // Room for the small images, not for `big`'s 32 MiB layer.
    let fs = Tmpfs::mount(&dir.path().join("storage"), "8m");
    let server = Server::start_with(options(Some(&fs.path), &[]));
    let (status, body) = get_manifest(&server, "hello");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let before = assert_store_consistent(&fs.path);

    let (status, body) = get_manifest(&server, "big");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 507, "{text}");
    let (code, message, _) = spec_error(&body);
    assert_eq!(code, "UNKNOWN");
    assert!(message.contains("storage is full"), "{message}");
    assert!(server.log().contains("No space left on device"), "the log does not say why:\n{}", server.log());
    // Nothing half-written anywhere: not under a final key, not in staging.
    assert_eq!(assert_store_consistent(&fs.path), before, "blobs were added");
    let staged = files_under(&fs.path.join("staging"));
    assert!(staged.is_empty(), "staging holds {staged:?}");
    assert!(files_under(&fs.path.join("meta/images")).len() == 1, "only hello's image record");

    // Space again: the same request builds.
    fs.resize("256m");
    let layout = tempfile::tempdir().unwrap();
    skopeo_copy(&server, "big", "latest", &layout.path().join("oci"), "big").assert_ok();
    assert_store_consistent(&fs.path);
    drop(server);
}
