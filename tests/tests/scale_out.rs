//! `strata serve` on cloud object stores (stand-ins on 127.0.0.1, see
//! tests/src/stores.rs) and on the file system, pulled with skopeo: blobs
//! streamed through the host, or redirected to presigned URLs that the
//! store checks; two replicas on one bucket (in turn, and racing for the
//! same new image); a replica killed mid-build; `strata gc`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use strata::storage::{Storage, BLOB_PREFIX, LEASE_PREFIX};
use strata_e2e::stores::{Kind, Store};
use strata_e2e::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn server(store: &Store, prefix: &str, storage_toml: &str, env: &[(&str, String)]) -> Server {
    let mut all = store.env();
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Server::start_with(ServerOptions {
        storage_url: Some(store.url(prefix)),
        storage_toml: storage_toml.to_string(),
        env: all,
        ..Default::default()
    })
}

/// [`server`] marking image accesses every second, so that `strata gc`
/// accepts windows of seconds (it refuses one below two intervals).
fn server_marking_every_second(store: &Store, prefix: &str) -> Server {
    Server::start_with(ServerOptions {
        storage_url: Some(store.url(prefix)),
        extra_toml: "[cache]\naccess_mark_secs = 1\n".into(),
        env: store.env(),
        ..Default::default()
    })
}

/// The same store, opened in this process, to look at what the server left.
fn inspect_store(store: &Store, prefix: &str) -> (tokio::runtime::Runtime, Storage) {
    let options = store.options();
    let pairs: Vec<(&str, &str)> = options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let storage = Storage::open_with(&store.url(prefix), &pairs).expect("open store");
    (tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"), storage)
}

/// A counter of the server's /metrics (summed over its labels that match).
fn builds(server: &Server) -> u64 {
    server.metric("strata_image_builds_total{outcome=\"ok\"}") as u64
}

/// GET a manifest: (status, Docker-Content-Digest, body).
fn manifest(server: &Server, name: &str, accept: &str) -> (u16, String, Vec<u8>) {
    let r = server.get(&format!("/v2/{name}/manifests/latest")).header("Accept", accept).send().expect("GET manifest");
    let status = r.status().as_u16();
    let digest = r.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (status, digest, r.bytes().expect("body").to_vec())
}

/// Every blob an image's two manifests name, the manifests included.
fn image_blobs(server: &Server, name: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let named = |m: &Value, all: &mut BTreeSet<String>| {
        all.insert(m["config"]["digest"].as_str().expect("config digest").to_string());
        for l in m["layers"].as_array().expect("layers") {
            all.insert(l["digest"].as_str().expect("layer digest").to_string());
        }
    };
    for accept in [OCI, DOCKER] {
        let (status, digest, body) = manifest(server, name, accept);
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        named(&serde_json::from_slice(&body).expect("manifest JSON"), &mut all);
        // The SBOM's artifact manifest and blobs belong to the image too.
        let index: Value = server.get(&format!("/v2/{name}/referrers/{digest}")).send().unwrap().json().unwrap();
        for r in index["manifests"].as_array().expect("referrers index") {
            let d = r["digest"].as_str().expect("referrer digest");
            let m: Value = server.get(&format!("/v2/{name}/manifests/{d}")).send().unwrap().json().unwrap();
            named(&m, &mut all);
            all.insert(d.to_string());
        }
        all.insert(digest);
    }
    all
}

/// Pulls with skopeo into a fresh layout; returns its blob digests.
fn pull(server: &Server, name: &str, dir: &Path) -> BTreeSet<String> {
    let layout = dir.join(format!("oci-{}", unique_suffix()));
    skopeo_copy(server, name, "latest", &layout, "t").assert_ok();
    oci_blobs(&layout)
}

/// Names of every blob in the store, each checked to hash to its key: no
/// partial or foreign bytes under a final key.
fn verified_blobs(store: &Store, prefix: &str) -> BTreeSet<String> {
    let (rt, storage) = inspect_store(store, prefix);
    rt.block_on(async {
        let mut all = BTreeSet::new();
        for meta in storage.list(BLOB_PREFIX).await.expect("list blobs") {
            let digest = format!("sha256:{}", meta.location.filename().expect("name"));
            let bytes = storage.get_blob_bytes(&digest).await.expect("get").expect("listed blob");
            assert_eq!(sha256_digest(&bytes), digest, "{}: blob bytes differ from their key", store.kind.name());
            all.insert(digest);
        }
        all
    })
}

// ------------------------------------------------------------------ pulls

/// A skopeo pull with blobs streamed through the host; the store really
/// holds them (and ranges are served from it).
fn pull_through_host(kind: Kind) {
    let store = Store::start(kind);
    let server = server(&store, "reg", "", &[]);
    let work = tempfile::tempdir().unwrap();
    let pulled = pull(&server, "shell/hello", work.path());
    let named = image_blobs(&server, "shell/hello");
    let stored = verified_blobs(&store, "reg");
    let (_, oci_digest, body) = manifest(&server, "shell/hello", OCI);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let mut oci_named: BTreeSet<String> =
        m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    oci_named.insert(m["config"]["digest"].as_str().unwrap().to_string());
    oci_named.insert(oci_digest);
    assert!(oci_named.is_subset(&pulled), "{}: skopeo got {pulled:?}, manifest names {oci_named:?}", kind.name());
    assert!(
        named.is_subset(&stored),
        "{}: the store lacks {:?}",
        kind.name(),
        named.difference(&stored).collect::<Vec<_>>()
    );
    assert!(server.metric("strata_blob_bytes_served_total") as u64 > 0, "{}: blobs not served by the host", kind.name());

    // A range of a layer, from the store through the host.
    let whole = server.get(&format!("/v2/shell/hello/blobs/{layer}")).send().unwrap().bytes().unwrap();
    let r = server.get(&format!("/v2/shell/hello/blobs/{layer}")).header("Range", "bytes=3-9").send().unwrap();
    assert_eq!(r.status().as_u16(), 206, "{}", kind.name());
    assert_eq!(&r.bytes().unwrap()[..], &whole[3..10], "{}: range bytes", kind.name());
}

#[test]
fn pull_file_store() {
    pull_through_host(Kind::File);
}

#[test]
fn pull_s3_moto() {
    pull_through_host(Kind::Moto);
}

#[test]
fn pull_azure_azurite() {
    pull_through_host(Kind::Azurite);
}

/// `serve = "redirect"` on s3s-fs, which checks signatures: skopeo follows
/// the 307s to presigned URLs; the same URL tampered with, or expired, is
/// refused by the store itself.
#[test]
fn pull_s3_redirect_to_presigned_urls() {
    let store = Store::start(Kind::S3sFs);
    let lifetime = 4;
    let server = server(&store, "reg", &format!("serve = \"redirect\"\npresign_secs = {lifetime}\n"), &[]);
    let work = tempfile::tempdir().unwrap();
    let pulled = pull(&server, "shell/hello", work.path());
    assert!(pulled.len() >= 3, "{pulled:?}");
    assert!(
        server.metric("strata_http_requests_total{route=\"blob\",status=\"307\"}") as u64 >= 2,
        "blob GETs were redirected"
    );
    assert_eq!(server.metric("strata_blob_bytes_served_total") as u64, 0, "no blob bytes went through the host");

    let (_, _, body) = manifest(&server, "shell/hello", OCI);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let no_follow = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let r = no_follow.get(server.url(&format!("/v2/shell/hello/blobs/{layer}"))).send().unwrap();
    assert_eq!(r.status().as_u16(), 307);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let issued = Instant::now();
    assert!(location.starts_with(&store.endpoint), "redirect to the store: {location}");
    assert!(
        location.contains("X-Amz-Signature=") && location.contains(&format!("X-Amz-Expires={lifetime}")),
        "{location}"
    );

    let ok = no_follow.get(&location).send().unwrap();
    assert_eq!(ok.status().as_u16(), 200, "the presigned URL works");
    assert_eq!(sha256_digest(&ok.bytes().unwrap()), layer, "and gives the layer");

    // One character of the signature changed.
    let at = location.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &location[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &location[..at], &location[at + 1..]);
    let r = no_follow.get(&tampered).send().unwrap();
    assert_eq!(r.status().as_u16(), 403, "tampered URL: {}", r.text().unwrap_or_default());
    // Another object under the same signature.
    let other = location.replacen(layer.trim_start_matches("sha256:"), &"0".repeat(64), 1);
    assert_eq!(no_follow.get(&other).send().unwrap().status().as_u16(), 403, "signature bound to its key");

    // Past its lifetime.
    thread::sleep((issued + Duration::from_secs(lifetime + 1)).saturating_duration_since(Instant::now()));
    let r = no_follow.get(&location).send().unwrap();
    assert_eq!(r.status().as_u16(), 403, "expired URL: {}", r.text().unwrap_or_default());
    // The registry hands out a fresh one.
    let again = no_follow.get(server.url(&format!("/v2/shell/hello/blobs/{layer}"))).send().unwrap();
    let fresh = again.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(no_follow.get(&fresh).send().unwrap().status().as_u16(), 200);
}

// ------------------------------------------------------------------ replicas

/// Two replicas on one bucket: both receive the first request for an image
/// at once (one Nix build between them), then serve further images in turn
/// with identical manifests.
fn two_replicas(kind: Kind) {
    let store = Store::start(kind);
    let a = server(&store, "shared", "", &[]);
    // On S3, B is configured as a Nixery operator would: its config file
    // names no bucket, Nixery's variables (and the AWS ones) do.
    let b = if kind == Kind::Moto {
        let mut env = store.env();
        for (k, v) in [("NIXERY_STORAGE_BACKEND", "s3"), ("S3_BUCKET", strata_e2e::stores::BUCKET), ("S3_PREFIX", "shared")] {
            env.push((k.to_string(), v.to_string()));
        }
        Server::start_with(ServerOptions { env, ..Default::default() })
    } else {
        server(&store, "shared", "", &[])
    };
    let what = kind.name();

    let barrier = Arc::new(Barrier::new(2));
    let (ra, rb) = thread::scope(|s| {
        let ga = s.spawn(|| {
            barrier.wait();
            manifest(&a, "shell/hello", OCI)
        });
        let gb = s.spawn(|| {
            barrier.wait();
            manifest(&b, "shell/hello", OCI)
        });
        (ga.join().unwrap(), gb.join().unwrap())
    });
    assert_eq!(
        (ra.0, rb.0),
        (200, 200),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&ra.2),
        String::from_utf8_lossy(&rb.2)
    );
    assert_eq!(ra.1, rb.1, "{what}: the replicas serve different manifests");
    assert_eq!(ra.2, rb.2, "{what}");
    assert_eq!(builds(&a) + builds(&b), 1, "{what}: one Nix build for both replicas");
    let waited = if builds(&a) == 1 { &b } else { &a };
    assert!(
        waited.log().contains("another replica is building this image"),
        "{what}: the other replica waited on the lease"
    );

    // In turn: a new image first from B, then A finds it in the store.
    let work = tempfile::tempdir().unwrap();
    let from_b = pull(&b, "git/hello", work.path());
    let before = builds(&a) + builds(&b);
    let from_a = pull(&a, "git/hello", work.path());
    assert_eq!(from_a, from_b, "{what}: the same blobs from both replicas");
    assert_eq!(builds(&a) + builds(&b), before, "{what}: A built what B had built");
    assert_eq!(manifest(&a, "git/hello", DOCKER).1, manifest(&b, "git/hello", DOCKER).1, "{what}");
    verified_blobs(&store, "shared");
    if kind == Kind::Moto {
        assert!(b.log().contains("s3://strata/shared"), "B's storage from Nixery's variables:\n{}", b.log());
    }
}

#[test]
fn two_replicas_s3_moto() {
    two_replicas(Kind::Moto);
}

#[test]
fn two_replicas_file_store() {
    two_replicas(Kind::File);
}

/// A package set that is the demo set plus `slowpoke`, whose build takes
/// `secs` seconds and is new to the Nix store (a nonce in its name).
fn slow_pkgs(dir: &Path, secs: u32) -> (PathBuf, String) {
    let nonce = format!("strata-slowpoke-{}", unique_suffix());
    let demo = repo_root().join("examples/demo-pkgs");
    let nix = format!(
        r#"{{ system ? builtins.currentSystem }}:
import {demo} {{ inherit system; }} // {{
  slowpoke = derivation {{
    name = "{nonce}";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "/bin/sleep {secs}; /bin/mkdir -p $out/bin; echo {nonce} > $out/nonce" ];
  }};
}}
"#,
        demo = demo.display()
    );
    let pkgs = dir.join("pkgs");
    std::fs::create_dir_all(&pkgs).unwrap();
    std::fs::write(pkgs.join("default.nix"), nix).unwrap();
    (pkgs, nonce)
}

/// Processes (ours: their command line holds our nonce) still running.
fn kill_marked(marker: &str) {
    for (pid, _) in processes_with(marker) {
        // SAFETY: kill(2) on a process this test started (unique marker).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Replica A takes the lease and dies (SIGKILL to its process group) while
/// Nix builds; B, asked for the same image, waits for the lease to expire,
/// takes over and builds it.
#[test]
fn lease_takeover_after_replica_killed() {
    let store = Store::start(Kind::Moto);
    let work = tempfile::tempdir().unwrap();
    let (pkgs, nonce) = slow_pkgs(work.path(), 6);
    let lease_secs = 3;
    let toml = format!("lease_secs = {lease_secs}\n");
    let env = [("NIXERY_PKGS_PATH", pkgs.display().to_string())];
    let mut a = server(&store, "takeover", &toml, &env);
    let b = server(&store, "takeover", &toml, &env);

    let a_url = a.url("/v2/slowpoke/manifests/latest");
    let first =
        thread::spawn(move || http_client().get(a_url).header("Accept", OCI).send().map(|r| r.status().as_u16()));
    // Wait for A's lease object, then kill A and its Nix.
    let (rt, storage) = inspect_store(&store, "takeover");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A's lease on the image, not the object it writes for a moment
        // under `leases/.probe/` to test conditional creates first (seen
        // here, A was killed before it held any lease, and B built alone).
        let leases = rt.block_on(storage.list(LEASE_PREFIX)).expect("list leases");
        if leases.iter().any(|o| !o.location.as_ref().contains("/.probe/")) {
            break;
        }
        assert!(Instant::now() < deadline, "A never took a lease; log:\n{}", a.log());
        thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the process group of the server this test started.
    unsafe {
        libc::kill(-(a.pid() as i32), libc::SIGKILL);
    }
    let killed = Instant::now();
    assert!(a.wait_exit(Duration::from_secs(10)).is_some(), "A did not die");
    kill_marked(&nonce); // Nix builders run in sessions of their own
    assert!(first.join().unwrap().is_err(), "A's client saw its connection drop");
    assert!(rt.block_on(storage.list("meta/images/")).unwrap().is_empty(), "A died before recording the image");

    let (status, digest, body) = manifest(&b, "slowpoke", OCI);
    let waited = killed.elapsed();
    assert_eq!(status, 200, "B: {}\n{}", String::from_utf8_lossy(&body), b.log());
    assert!(digest.starts_with("sha256:"));
    let log = b.log();
    assert!(log.contains("another replica is building this image"), "B waited for A's lease:\n{log}");
    assert!(log.contains("taking over"), "B took the lease over:\n{log}");
    assert_eq!(builds(&b), 1, "B built the image itself");
    // B built for `sleep 6` after the lease (≤ 3 s left) expired.
    assert!(waited >= Duration::from_secs(6), "B answered after {waited:?}");
    kill_marked(&nonce);
    verified_blobs(&store, "takeover");
}

// ------------------------------------------------------------------ gc

fn gc(server: &Server, store: &Store, args: &[&str]) -> Output {
    let mut cmd = Command::new(strata_bin());
    cmd.arg("--config").arg(server.temp_dir().join("strata.toml")).arg("gc").args(args);
    for (k, v) in store.env() {
        cmd.env(k, v);
    }
    run(&mut cmd, Duration::from_secs(120)).assert_ok()
}

/// Image X is requested, then, past the window, image Y that shares layers
/// with it; `strata gc --older-than` reports (dry run: nothing changes), then
/// with `--delete` removes X and what only X used, keeps every blob Y names,
/// and X is rebuilt on its next request.
#[test]
fn gc_keeps_what_remaining_manifests_name() {
    let store = Store::start(Kind::Moto);
    let s = server_marking_every_second(&store, "gc");
    let x = image_blobs(&s, "git");
    thread::sleep(Duration::from_secs(5));
    let y = image_blobs(&s, "git/hello");
    let shared: BTreeSet<&String> = x.intersection(&y).collect();
    assert!(!shared.is_empty(), "X and Y share layers");
    let only_x: BTreeSet<&String> = x.difference(&y).collect();
    assert!(!only_x.is_empty());

    let before = verified_blobs(&store, "gc");
    let dry = gc(&s, &store, &["--older-than", "4s"]);
    assert!(dry.stdout.contains("dry run: nothing was removed"), "{dry}");
    assert!(dry.stdout.contains("images:        1 kept, 1 to remove"), "{dry}");
    assert!(dry.stdout.contains("  - git cacert iana-etc (last requested"), "{dry}");
    assert!(dry.stdout.contains(&format!("{} to remove", only_x.len())), "{dry}");
    assert_eq!(verified_blobs(&store, "gc"), before, "a dry run removes nothing");

    let done = gc(&s, &store, &["--older-than", "4s", "--delete"]);
    assert!(done.stdout.contains("1 kept, 1 removed"), "{done}");
    let after = verified_blobs(&store, "gc");
    assert!(y.is_subset(&after), "gc removed blobs Y names: {:?}", y.difference(&after).collect::<Vec<_>>());
    for d in &only_x {
        assert!(!after.contains(*d), "{d} (only X's) is still stored");
    }
    drop(s);

    // A fresh replica serves Y from the store as it is, and rebuilds X.
    let fresh = server_marking_every_second(&store, "gc");
    let work = tempfile::tempdir().unwrap();
    pull(&fresh, "git/hello", work.path());
    assert_eq!(builds(&fresh), 0, "Y was served from the store");
    assert_eq!(image_blobs(&fresh, "git"), x, "X rebuilt byte for byte");
    assert_eq!(builds(&fresh), 1);
    let (rt, storage) = inspect_store(&store, "gc");
    for d in &x {
        assert!(rt.block_on(storage.blob_size(d)).unwrap().is_some(), "{d}");
    }
}
