//! The manifest cache, single-flight builds and zstd layers, against a real
//! server, real Nix on the demo set and real clients. Not timed: what is
//! asserted is how many builds ran and which bytes came back.

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;
use strata_e2e::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Image builds so far, from the server's /metrics (every outcome).
fn builds(server: &Server) -> u64 {
    server.metric("strata_image_builds_total") as u64
}

fn manifest(server: &Server, name: &str, accept: &str) -> (Vec<u8>, String) {
    let resp = server
        .get(&format!("/v2/{name}/manifests/latest"))
        .header("accept", accept)
        .send()
        .expect("GET manifest");
    assert_eq!(resp.status(), 200, "GET {name} manifest");
    let digest = resp.headers()["docker-content-digest"].to_str().unwrap().to_string();
    (resp.bytes().unwrap().to_vec(), digest)
}

#[test]
fn fifty_concurrent_first_requests_share_one_build() {
    let server = Server::start();
    assert_eq!(builds(&server), 0);
    let start = Arc::new(Barrier::new(50));
    let answers: Vec<(Vec<u8>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let (server, start) = (&server, start.clone());
                s.spawn(move || {
                    start.wait();
                    manifest(server, "shell/git", OCI)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    assert_eq!(builds(&server), 1, "50 concurrent requests for one new image ran {} builds", builds(&server));
    assert_eq!(server.metric("strata_manifest_cache_total{result=\"built\"}") as u64, 1);
    let (first, digest) = &answers[0];
    assert_eq!(digest, &sha256_digest(first));
    for (bytes, d) in &answers {
        assert_eq!(bytes, first, "every waiter gets the same manifest bytes");
        assert_eq!(d, digest);
    }
}

#[test]
fn warm_requests_are_byte_identical_and_a_ttl_expiry_rebuilds() {
    let ttl = 3;
    let server = Server::start_with(ServerOptions {
        extra_toml: format!("[cache]\nmutable_ttl_secs = {ttl}\n"),
        ..Default::default()
    });
    // The demo set is a `path` source not declared immutable: mutable.
    let (cold, digest) = manifest(&server, "hello", OCI);
    assert_eq!(builds(&server), 1);
    let memory_hits = server.metric("strata_manifest_cache_total{result=\"memory\"}") as u64;
    for _ in 0..5 {
        let (warm, d) = manifest(&server, "hello", OCI);
        assert_eq!(warm, cold, "a warm manifest differs from the cold one");
        assert_eq!(d, digest);
    }
    assert_eq!(builds(&server), 1, "warm requests built again");
    assert_eq!(server.metric("strata_manifest_cache_total{result=\"memory\"}") as u64, memory_hits + 5);
    // By digest, too, from the cache.
    let by_digest = server.get(&format!("/v2/hello/manifests/{digest}")).send().unwrap().bytes().unwrap();
    assert_eq!(by_digest.as_ref(), cold.as_slice());

    std::thread::sleep(Duration::from_secs(ttl + 1));
    let (rebuilt, d) = manifest(&server, "hello", OCI);
    assert_eq!(builds(&server), 2, "the expired image was not rebuilt");
    // Same source, same packages: the rebuild gives the same bytes.
    assert_eq!(rebuilt, cold);
    assert_eq!(d, digest);
    let (_, _) = manifest(&server, "hello", OCI);
    assert_eq!(builds(&server), 2, "the rebuilt image is cached again");
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn blob_path(layout: &std::path::Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// skopeo pulls the OCI manifest's zstd layers; umoci 0.4.7 (Debian 12)
/// cannot read zstd, so the image is unpacked with GNU tar + zstd, then run.
/// The Docker schema 2 manifest of the same image has gzip layers of the
/// same tars (same diff_ids, same config).
#[test]
fn zstd_layers_for_oci_clients_gzip_for_docker_schema2() {
    require_root("chroot into the unpacked image");
    let zstd = require_tool("zstd");
    let tar = require_tool("tar");
    let server = Server::start_with(ServerOptions {
        extra_toml: "[layers]\ncompression = \"zstd\"\nlevel = 5\n".into(),
        ..Default::default()
    });
    let layout = server.temp_dir().join("layout");
    skopeo_copy(&server, "shell/hello", "latest", &layout, "t").assert_ok();
    let index = read_json(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let oci = read_json(&blob_path(&layout, &manifest_digest));
    assert_eq!(oci["mediaType"], OCI);
    let config = read_json(&blob_path(&layout, oci["config"]["digest"].as_str().unwrap()));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = oci["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    assert!(layers.len() >= 2, "{oci}");

    let rootfs = server.temp_dir().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd", "{layer}");
        let blob = blob_path(&layout, layer["digest"].as_str().unwrap());
        let plain = server.temp_dir().join("layer.tar");
        run(Command::new(&zstd).args(["-q", "-f", "-d", "-o"]).arg(&plain).arg(&blob), Duration::from_secs(60)).assert_ok();
        let plain = std::fs::read(&plain).unwrap();
        assert_eq!(&sha256_digest(&plain), diff_id, "a zstd layer is not the tar its diff_id names");
        run(Command::new(&tar).arg("--zstd").arg("-xf").arg(&blob).arg("-C").arg(&rootfs), Duration::from_secs(60))
            .assert_ok();
    }
    let hello = chroot(&rootfs, &["/bin/hello"]).assert_ok();
    assert_eq!(hello.stdout, "Hello, world!\n", "{hello}");

    // Docker schema 2 is not packed until a client asks for it: the record
    // names what it will need besides the layers' copies (the config and
    // the final layer's gzip form), and gc keeps that while the image lives.
    let record = || -> Value {
        let records = files_under(&server.storage.join("meta/images"));
        assert_eq!(records.len(), 1, "{records:?}");
        read_json(&records[0])
    };
    let before = record();
    assert!(before.get("docker").is_none(), "no schema 2 manifest before a client asks: {before}");
    let final_gzip = before["docker_pending"]["final_layer"]["digest"].as_str().expect("docker_pending").to_string();
    assert!(server.storage.join("blobs/sha256").join(final_gzip.trim_start_matches("sha256:")).is_file());
    let blobs = || files_under(&server.storage.join("blobs/sha256")).len();
    let blobs_before = blobs();
    // Every blob two days old, the record fresh: what no kept image names
    // would go.
    for f in files_under(&server.storage.join("blobs")) {
        run(Command::new("touch").args(["-d", "2 days ago"]).arg(&f), Duration::from_secs(10)).assert_ok();
    }
    let gc_dir = server.temp_dir().join("gc");
    std::fs::create_dir_all(&gc_dir).unwrap();
    std::fs::write(gc_dir.join("strata.toml"), format!("[storage]\nurl = \"file://{}\"\n", server.storage.display())).unwrap();
    let gc = strata_cli(&gc_dir, &["gc", "--no-nix", "--older-than", "1d", "--delete"]).assert_ok();
    assert_eq!(blobs(), blobs_before, "gc removed a blob of the kept image: {gc}");

    // Eight clients at once: one packing, the same answer for all.
    let answers: Vec<(Vec<u8>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| manifest(&server, "shell/hello", DOCKER))).collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    let (bytes, docker_digest) = answers[0].clone();
    assert!(answers.iter().all(|a| a == &answers[0]), "every schema 2 answer is the same");
    assert_eq!(sha256_digest(&bytes), docker_digest);
    assert_eq!(server.log().matches("schema 2 manifest packed").count(), 1, "{}", server.log());
    assert_eq!(builds(&server), 1, "the schema 2 manifest is no new build");
    let after = record();
    assert_eq!(after["docker"], docker_digest.as_str(), "{after}");
    assert!(after.get("docker_pending").is_none(), "{after}");
    let head = server.http().head(server.url("/v2/shell/hello/manifests/latest")).header("accept", DOCKER).send().unwrap();
    assert_eq!(head.headers()["docker-content-digest"].to_str().unwrap(), docker_digest);

    // Gzip layers, the same config, tars with the same digests.
    let docker: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(docker["config"]["digest"], oci["config"]["digest"]);
    let gz_layers = docker["layers"].as_array().unwrap();
    assert_eq!(gz_layers.len(), layers.len());
    assert_eq!(gz_layers.last().unwrap()["digest"], final_gzip.as_str());
    for (layer, diff_id) in gz_layers.iter().zip(diff_ids) {
        assert_eq!(layer["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
        let digest = layer["digest"].as_str().unwrap();
        let blob = server.get(&format!("/v2/shell/hello/blobs/{digest}")).send().unwrap().bytes().unwrap();
        assert_eq!(sha256_digest(&blob), digest);
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut plain).unwrap();
        assert_eq!(&sha256_digest(&plain), diff_id);
    }

    // Another server on the same store serves it from the record: no
    // build, no packing.
    let replica = Server::start_with(ServerOptions {
        storage: Some(server.storage.clone()),
        extra_toml: "[layers]\ncompression = \"zstd\"\nlevel = 5\n".into(),
        ..Default::default()
    });
    let (again, digest) = manifest(&replica, "shell/hello", DOCKER);
    assert_eq!((again, digest), (bytes, docker_digest));
    assert_eq!(builds(&replica), 0);
    assert!(!replica.log().contains("schema 2 manifest packed"), "{}", replica.log());
}
