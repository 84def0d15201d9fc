//! A tag served for two platforms (`[builds] platforms`): an OCI image index
//! or a Docker manifest list, each platform's image built by Nix for its
//! own system, and skopeo pulling either one. The package set's `whichsys`
//! prints the system it was built for; here arm64 builds run through Nix's
//! `extra-platforms`, so the arm64 image's binaries are amd64 ones that say
//! `aarch64-linux` (tests/src/lib.rs, `ARM64_NIX_CONFIG`).
//!
//! docker, podman and ctr pull the same kind of server in docker.rs,
//! podman.rs and containerd.rs.

use std::time::Duration;
use strata_e2e::*;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// GET (or HEAD) of `name:latest` with these Accept lines: (content type,
/// digest header, body).
fn manifest(server: &Server, method: &str, name: &str, accept: &[&str]) -> (String, String, Vec<u8>) {
    let url = server.url(&format!("/v2/{name}/manifests/latest"));
    let mut req = server.http().request(method.parse().unwrap(), url);
    for a in accept {
        req = req.header("Accept", *a);
    }
    let r = req.send().expect("manifest request");
    assert_eq!(r.status().as_u16(), 200, "{method} {name} with {accept:?}\n--- strata log ---\n{}", server.log());
    let header = |h: &str| r.headers()[h].to_str().unwrap().to_string();
    let (ct, digest) = (header("content-type"), header("docker-content-digest"));
    (ct, digest, r.bytes().unwrap().to_vec())
}

fn blob_json(server: &Server, name: &str, digest: &str) -> Value {
    let r = server.get(&format!("/v2/{name}/blobs/{digest}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "blob {digest}");
    serde_json::from_slice(&r.bytes().unwrap()).unwrap()
}

fn by_digest(server: &Server, name: &str, digest: &str) -> Value {
    let r = server.get(&format!("/v2/{name}/manifests/{digest}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "manifest {digest}");
    serde_json::from_slice(&r.bytes().unwrap()).unwrap()
}

/// Pulls `name` with skopeo (`extra` before the source, e.g.
/// `--override-arch arm64`), unpacks it and runs `whichsys`: what it prints
/// and the config's architecture.
fn skopeo_run_whichsys(server: &Server, name: &str, extra: &[&str], work: &std::path::Path) -> (String, String) {
    let n = unique_suffix();
    let layout = work.join(format!("oci-{n}"));
    let dest = format!("oci:{}:t", layout.display());
    let mut args = vec!["copy"];
    args.extend_from_slice(extra);
    let src = server.docker_ref(name, "latest");
    args.extend(["--src-tls-verify=false", &src, &dest]);
    let copy = skopeo(&args, Duration::from_secs(300));
    assert!(copy.success(), "skopeo {args:?}: {copy}\n--- strata log ---\n{}", server.log());
    let rootfs = umoci_unpack(&layout, "t", &work.join(format!("bundle-{n}")));
    let printed = chroot(&rootfs, &["/bin/whichsys"]).assert_ok().stdout.trim().to_string();
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: Value = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let config: Value = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(config_digest)).unwrap()).unwrap();
    (printed, config["architecture"].as_str().unwrap().to_string())
}

#[test]
fn a_tag_is_an_index_of_one_image_per_platform_each_built_for_its_system() {
    let work = tempfile::tempdir().unwrap();
    let nonce = unique_suffix();
    let server = two_platform_server(work.path(), &nonce, None);

    // An index in the family the client names first; HEAD agrees with GET.
    let (ct, index_digest, body) = manifest(&server, "GET", "whichsys", &[OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX]);
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(sha256_digest(&body), index_digest);
    let (head_ct, head_digest, _) = manifest(&server, "HEAD", "whichsys", &[OCI_MANIFEST, OCI_INDEX]);
    assert_eq!((head_ct.as_str(), head_digest.as_str()), (OCI_INDEX, index_digest.as_str()));
    let index: Value = serde_json::from_slice(&body).unwrap();
    let platforms: Vec<(String, String, Option<String>)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["mediaType"], OCI_MANIFEST, "{index}");
            let p = &m["platform"];
            (p["os"].as_str().unwrap().into(), p["architecture"].as_str().unwrap().into(), p["variant"].as_str().map(Into::into))
        })
        .collect();
    assert_eq!(
        platforms,
        [("linux".into(), "amd64".into(), None), ("linux".into(), "arm64".into(), Some("v8".into()))],
        "{index}"
    );
    // Each platform's manifest: its own config architecture and closure,
    // and the store paths both share (busybox) are one blob.
    let mut layer_sets = Vec::new();
    for (entry, arch) in index["manifests"].as_array().unwrap().iter().zip(["amd64", "arm64"]) {
        let m = by_digest(&server, "whichsys", entry["digest"].as_str().unwrap());
        let config = blob_json(&server, "whichsys", m["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch, "{config}");
        let layers: std::collections::BTreeSet<String> =
            m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
        layer_sets.push(layers);
    }
    assert_ne!(layer_sets[0], layer_sets[1], "each platform has its own build");
    assert!(
        layer_sets[0].intersection(&layer_sets[1]).count() >= 1,
        "the busybox both platforms' scripts use is one blob: {layer_sets:?}"
    );

    // Docker's types alone: a manifest list over schema 2 manifests.
    let (ct, list_digest, body) = manifest(&server, "GET", "whichsys", &[DOCKER_MANIFEST, DOCKER_LIST]);
    assert_eq!(ct, DOCKER_LIST);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["manifests"][1]["mediaType"], DOCKER_MANIFEST, "{list}");
    assert_eq!(list["manifests"][1]["platform"]["architecture"], "arm64", "{list}");
    let (_, head_list, _) = manifest(&server, "HEAD", "whichsys", &[DOCKER_MANIFEST, DOCKER_LIST]);
    assert_eq!(head_list, list_digest);
    // No index type accepted: the host platform's manifest.
    let (ct, plain, _) = manifest(&server, "GET", "whichsys", &[OCI_MANIFEST]);
    assert_eq!(ct, OCI_MANIFEST);
    assert_eq!(plain, index["manifests"][0]["digest"].as_str().unwrap());

    // skopeo pulls either platform and runs what Nix built for it.
    let (printed, arch) = skopeo_run_whichsys(&server, "whichsys", &["--override-arch", "arm64"], work.path());
    assert_eq!((printed.as_str(), arch.as_str()), ("aarch64-linux", "arm64"));
    let (printed, arch) = skopeo_run_whichsys(&server, "whichsys", &[], work.path());
    assert_eq!((printed.as_str(), arch.as_str()), ("x86_64-linux", "amd64"));

    // Each platform manifest has its own SBOM referrer; the index has none.
    for entry in index["manifests"].as_array().unwrap() {
        let r = server.get(&format!("/v2/whichsys/referrers/{}", entry["digest"].as_str().unwrap())).send().unwrap();
        let referrers: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
        assert_eq!(referrers["manifests"].as_array().unwrap().len(), 1, "{referrers}");
    }
    let r = server.get(&format!("/v2/whichsys/referrers/{index_digest}")).send().unwrap();
    let referrers: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert_eq!(referrers["manifests"], serde_json::json!([]), "{referrers}");

    // Nixery's `arm64` segment: one arm64 image, no index, even to a
    // client that takes one.
    let (ct, _, body) = manifest(&server, "GET", "arm64/whichsys", &[OCI_MANIFEST, OCI_INDEX]);
    assert_eq!(ct, OCI_MANIFEST);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let config = blob_json(&server, "arm64/whichsys", m["config"]["digest"].as_str().unwrap());
    assert_eq!(config["architecture"], "arm64");
    let (printed, _) = skopeo_run_whichsys(&server, "arm64/whichsys", &[], work.path());
    assert_eq!(printed, "aarch64-linux");

    // /api/inspect lists both platforms, built.
    let inspection: Value = server.get("/api/inspect/whichsys").send().unwrap().json().unwrap();
    let listed: Vec<(&str, bool)> = inspection["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["platform"].as_str().unwrap(), p["built"]["manifest"].is_string()))
        .collect();
    assert_eq!(listed, [("linux/amd64", true), ("linux/arm64/v8", true)], "{inspection}");

    // Another store, another server: the same index, byte for byte.
    let other = two_platform_server(work.path(), &nonce, None);
    let (_, other_digest, _) = manifest(&other, "GET", "whichsys", &[OCI_INDEX]);
    assert_eq!(other_digest, index_digest);
}

/// The platforms of one index build at once: `meet`'s builder for each
/// system finishes only once the other's has started.
#[test]
fn the_platforms_of_an_index_build_at_once() {
    let work = tempfile::tempdir().unwrap();
    let server = two_platform_server(work.path(), &unique_suffix(), None);
    let (ct, _, body) = manifest(&server, "GET", "meet", &[OCI_INDEX]);
    assert_eq!(ct, OCI_INDEX);
    let index: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
}

#[test]
fn a_platform_that_fails_names_itself_and_the_others_are_kept() {
    let work = tempfile::tempdir().unwrap();
    let server = two_platform_server(work.path(), &unique_suffix(), None);
    let images = server.storage.join("meta/images");
    let count = || std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);

    let r = server.get("/v2/armfails/manifests/latest").header("Accept", OCI_INDEX).send().unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let (code, message, detail) = spec_error(&r.bytes().unwrap());
    assert_eq!(code, "UNKNOWN");
    assert!(message.contains("linux/arm64") && message.contains("armfails"), "{message}");
    assert_eq!(detail["platform"], "linux/arm64/v8", "{detail}");
    // The amd64 image was built and recorded: a retry does not build it again.
    assert_eq!(count(), 1, "the amd64 image is recorded");
    let built = server.metric("strata_manifest_cache_total{result=\"built\"}");
    let r = server.get("/v2/armfails/manifests/latest").header("Accept", OCI_INDEX).send().unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(server.metric("strata_manifest_cache_total{result=\"built\"}") - built, 1.0, "only arm64 is built again");
    assert_eq!(server.metric("strata_manifest_cache_total{result=\"store\"}"), 1.0, "amd64 comes from the store");
}

/// gc keeps an index while it keeps every image it lists, and removes it
/// (record and blobs) with the first of them to go. The arm64 image of
/// `whichsys` is also `arm64/whichsys`: requesting that alone keeps it
/// fresh while the amd64 image goes stale. Access marks every second, so
/// that a window of seconds works (tests/tests/nix_gc.rs).
#[test]
fn gc_removes_an_index_with_its_first_image_and_keeps_it_with_all() {
    let work = tempfile::tempdir().unwrap();
    let pkgs = platform_set(work.path(), &unique_suffix());
    let server = Server::start_with(ServerOptions {
        extra_toml: format!("{TWO_PLATFORMS}\n[cache]\naccess_mark_secs = 1\n"),
        env: vec![
            ("NIXERY_PKGS_PATH".into(), pkgs.display().to_string()),
            ("NIX_CONFIG".into(), ARM64_NIX_CONFIG.into()),
        ],
        ..Default::default()
    });
    let gc = |args: &[&str]| {
        let mut cmd = std::process::Command::new(strata_bin());
        cmd.arg("--config").arg(server.temp_dir().join("strata.toml")).args(["gc", "--no-nix", "--older-than", "10s"]).args(args);
        cmd.env("NIXERY_PKGS_PATH", &pkgs).env("STRATA_NIX_OFFLINE", "1").env("RUST_LOG", "warn");
        run(&mut cmd, Duration::from_secs(120)).assert_ok().stdout
    };
    let index_blob = |digest: &str| server.storage.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let index_records = || std::fs::read_dir(server.storage.join("meta/indexes")).map(|d| d.count()).unwrap_or(0);

    let (_, index, _) = manifest(&server, "GET", "whichsys", &[OCI_INDEX]);
    let (_, list, _) = manifest(&server, "GET", "whichsys", &[DOCKER_LIST]);
    assert_eq!(index_records(), 1);
    std::thread::sleep(Duration::from_secs(12));
    manifest(&server, "GET", "arm64/whichsys", &[OCI_MANIFEST]);

    let dry = gc(&[]);
    assert!(dry.contains("images:        1 kept, 1 to remove"), "{dry}");
    assert!(dry.contains(" 1 index records,"), "{dry}");
    let done = gc(&["--delete"]);
    assert!(done.contains("images:        1 kept, 1 removed"), "{done}");
    assert!(!index_blob(&index).exists() && !index_blob(&list).exists(), "the index's blobs go with it: {done}");
    assert_eq!(index_records(), 0);

    // Asked for again: the amd64 image is rebuilt, and the index is the
    // same, byte for byte.
    let (_, again, _) = manifest(&server, "GET", "whichsys", &[OCI_INDEX]);
    assert_eq!(again, index);
    assert!(index_blob(&index).exists());
    // Both images fresh: the index stays.
    let kept = gc(&["--delete"]);
    assert!(kept.contains("images:        2 kept, 0 removed") && kept.contains(" 0 index records,"), "{kept}");
    assert!(index_blob(&index).exists() && index_records() == 1, "{kept}");
    let r = server.get(&format!("/v2/whichsys/manifests/{index}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// With zstd layers the Docker list, and the schema 2 manifests under it,
/// are made when a client first asks for the list; the OCI index is served
/// before, and stays the same. A client taking no index gets the host's
/// schema 2 manifest alone.
#[test]
fn a_docker_list_over_zstd_images_is_made_when_first_asked_for() {
    let work = tempfile::tempdir().unwrap();
    let pkgs = platform_set(work.path(), &unique_suffix());
    let server = Server::start_with(ServerOptions {
        extra_toml: format!("{TWO_PLATFORMS}\n[layers]\ncompression = \"zstd\"\n"),
        env: vec![
            ("NIXERY_PKGS_PATH".into(), pkgs.display().to_string()),
            ("NIX_CONFIG".into(), ARM64_NIX_CONFIG.into()),
        ],
        ..Default::default()
    });
    let index_record = || -> Value {
        let records = files_under(&server.storage.join("meta/indexes"));
        assert_eq!(records.len(), 1, "{records:?}");
        serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap()
    };
    let packed = || server.log().matches("schema 2 manifest packed").count();

    let (_, index_digest, _) = manifest(&server, "GET", "whichsys", &[OCI_INDEX]);
    let record = index_record();
    assert!(record.get("docker").is_none(), "{record}");
    assert_eq!(record["manifests"].as_array().unwrap().len(), 2, "{record}");
    assert_eq!(packed(), 0);

    // No index taken: the host platform's schema 2 manifest only.
    let (ct, host_digest, _) = manifest(&server, "GET", "whichsys", &[DOCKER_MANIFEST]);
    assert_eq!(ct, DOCKER_MANIFEST);
    assert_eq!(packed(), 1, "{}", server.log());

    let (ct, list_digest, body) = manifest(&server, "GET", "whichsys", &[DOCKER_MANIFEST, DOCKER_LIST]);
    assert_eq!(ct, DOCKER_LIST);
    assert_eq!(sha256_digest(&body), list_digest);
    assert_eq!(packed(), 2, "the arm64 image's copy, once: {}", server.log());
    let list: Value = serde_json::from_slice(&body).unwrap();
    for (entry, arch) in list["manifests"].as_array().unwrap().iter().zip(["amd64", "arm64"]) {
        assert_eq!(entry["mediaType"], DOCKER_MANIFEST, "{list}");
        assert_eq!(entry["platform"]["architecture"], arch, "{list}");
        let m = by_digest(&server, "whichsys", entry["digest"].as_str().unwrap());
        assert!(!m["layers"].as_array().unwrap().is_empty());
        for layer in m["layers"].as_array().unwrap() {
            assert_eq!(layer["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip", "{m}");
        }
        let config = blob_json(&server, "whichsys", m["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], arch, "{config}");
    }
    assert_eq!(list["manifests"][0]["digest"], host_digest.as_str(), "the list names the manifest served alone");
    let record = index_record();
    assert_eq!(record["docker"], list_digest.as_str(), "{record}");
    assert_eq!(record["manifests"].as_array().unwrap().len(), 4, "{record}");
    let (_, again, _) = manifest(&server, "GET", "whichsys", &[OCI_INDEX]);
    assert_eq!(again, index_digest);
    let (_, list_again, _) = manifest(&server, "HEAD", "whichsys", &[DOCKER_LIST]);
    assert_eq!(list_again, list_digest);
}

/// `strata build --platform`: one platform gives its image; two give an
/// OCI layout whose entry is the index, from which skopeo takes either.
#[test]
fn strata_build_writes_one_platform_or_the_index() {
    let work = tempfile::tempdir().unwrap();
    let pkgs = platform_set(work.path(), &unique_suffix());
    let config = work.path().join("strata.toml");
    let toml = format!(
        "[storage]\nurl = \"file://{}\"\n\n[nix]\nwork_dir = \"{}\"\n",
        work.path().join("storage").display(),
        work.path().join("nix").display()
    );
    std::fs::create_dir_all(work.path().join("storage")).unwrap();
    std::fs::write(&config, toml).unwrap();
    let strata = |args: &[&str]| {
        let mut cmd = std::process::Command::new(strata_bin());
        cmd.arg("--config").arg(&config).args(args).current_dir(work.path());
        cmd.env("NIXERY_PKGS_PATH", &pkgs).env("STRATA_NIX_OFFLINE", "1").env("NIX_CONFIG", ARM64_NIX_CONFIG).env("RUST_LOG", "warn");
        run(&mut cmd, Duration::from_secs(300))
    };
    let entry = |layout: &std::path::Path| -> Value {
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        index["manifests"][0].clone()
    };

    let one = work.path().join("arm");
    strata(&["build", "whichsys", "--quiet", "--platform", "linux/arm64", "--output", &format!("oci:{}:t", one.display())]).assert_ok();
    assert_eq!(entry(&one)["mediaType"], OCI_MANIFEST);
    let rootfs = umoci_unpack(&one, "t", &work.path().join("bundle-arm"));
    assert_eq!(chroot(&rootfs, &["/bin/whichsys"]).assert_ok().stdout.trim(), "aarch64-linux");

    let both = work.path().join("both");
    let out = strata(&[
        "build", "whichsys", "--quiet", "--platform", "linux/amd64", "--platform", "linux/arm64",
        "--output", &format!("oci:{}:t", both.display()),
    ])
    .assert_ok();
    assert!(out.stdout.contains("index sha256:") && out.stdout.contains("linux/amd64, linux/arm64/v8"), "{out}");
    let e = entry(&both);
    assert_eq!(e["mediaType"], OCI_INDEX, "{e}");
    let index: Value = serde_json::from_slice(
        &std::fs::read(both.join("blobs/sha256").join(e["digest"].as_str().unwrap().trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    let arches: Vec<&str> = index["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    for (arch, system) in [("arm64", "aarch64-linux"), ("amd64", "x86_64-linux")] {
        let picked = work.path().join(format!("picked-{arch}"));
        let (src, dest) = (format!("oci:{}:t", both.display()), format!("oci:{}:t", picked.display()));
        skopeo(&["copy", "--override-arch", arch, &src, &dest], Duration::from_secs(120)).assert_ok();
        let rootfs = umoci_unpack(&picked, "t", &work.path().join(format!("bundle-{arch}")));
        assert_eq!(chroot(&rootfs, &["/bin/whichsys"]).assert_ok().stdout.trim(), system);
    }
    // A docker archive holds one platform.
    let refused = strata(&["build", "whichsys", "--quiet", "--platform", "linux/amd64", "--platform", "linux/arm64", "--output", "docker-archive:x.tar"]);
    assert!(!refused.success() && refused.stderr.contains("--platform"), "{refused}");
}
