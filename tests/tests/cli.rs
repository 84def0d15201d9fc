//! The command line as a user meets it: `strata build` to an OCI layout and
//! to a docker archive (read back by skopeo and umoci, run under chroot),
//! `strata inspect`, `--help`, and the exit codes of mistakes. The image
//! built offline is the image the server serves, digest for digest.

use std::path::Path;
use std::time::Duration;
use strata_e2e::*;


fn index_manifest_digest(layout: &Path) -> String {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).unwrap();
    index["manifests"][0]["digest"].as_str().expect("a manifest in index.json").to_string()
}

#[test]
fn build_to_an_oci_layout_runs_and_matches_the_served_image() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("out");
    let out = strata_cli(work.path(), &["build", "shell/hello", "--output", &format!("oci:{}:v1", layout.display())]).assert_ok();
    // The summary table: one row per layer, with digests and the strategy.
    assert!(out.stdout.contains("strategy size"), "{out}");
    let rows = out.stdout.lines().filter(|l| l.contains("sha256:")).count();
    let layers = skopeo(&["inspect", &format!("oci:{}:v1", layout.display())], Duration::from_secs(60)).assert_ok();
    let inspect: Value = serde_json::from_str(&layers.stdout).unwrap();
    let n = inspect["Layers"].as_array().expect("Layers").len();
    assert!(n >= 2, "{inspect}");
    assert_eq!(rows, n, "one summary row per layer:\n{}", out.stdout);

    let rootfs = umoci_unpack(&layout, "v1", &work.path().join("bundle"));
    let hello = chroot(&rootfs, &["/bin/hello"]).assert_ok();
    assert_eq!(hello.stdout, "Hello, world!\n", "{hello}");

    // Same plugins, same config, same Nix: the server serves the same
    // manifest (its OCI form, as the layout holds).
    let server = Server::start();
    let served = server
        .get("/v2/shell/hello/manifests/latest")
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(served.status().as_u16(), 200);
    let served = served.headers()["docker-content-digest"].to_str().unwrap().to_string();
    assert_eq!(index_manifest_digest(&layout), served, "offline build and server agree");
}

#[test]
fn build_to_a_docker_archive_loads_with_skopeo() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("hello.tar");
    strata_cli(
        work.path(),
        &["build", "shell/hello", "--quiet", "--output", &format!("docker-archive:{}:shell/hello:latest", archive.display())],
    )
    .assert_ok();
    let src = format!("docker-archive:{}", archive.display());
    let inspect = skopeo(&["inspect", &src], Duration::from_secs(60)).assert_ok();
    let v: Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert!(v["Layers"].as_array().is_some_and(|l| l.len() >= 2), "{v}");
    // `docker load` names the image from manifest.json's RepoTags.
    let mut tar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let manifest = tar
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("manifest.json"))
        .map(|e| serde_json::from_reader::<_, Value>(e).unwrap())
        .expect("manifest.json in the archive");
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["shell/hello:latest"]), "{manifest}");
    let layout = work.path().join("copy");
    skopeo(&["copy", &src, &format!("oci:{}:t", layout.display())], Duration::from_secs(120)).assert_ok();
    let rootfs = umoci_unpack(&layout, "t", &work.path().join("bundle"));
    let bash = chroot(&rootfs, &["/bin/bash", "-c", "hello && echo ok"]).assert_ok();
    assert_eq!(bash.stdout, "Hello, world!\nok\n", "{bash}");
}

/// With `compression = "zstd"` the archive still holds gzip layers (the
/// schema 2 manifest's, made for it), which umoci 0.4 and Docker 20.10 read.
#[test]
fn a_zstd_build_writes_gzip_layers_to_a_docker_archive() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("storage")).unwrap();
    std::fs::write(
        work.path().join("strata.toml"),
        format!(
            "[storage]\nurl = \"file://{}\"\n\n[nix]\nwork_dir = \"{}\"\n\n[layers]\ncompression = \"zstd\"\n",
            work.path().join("storage").display(),
            work.path().join("nix").display()
        ),
    )
    .unwrap();
    let archive = work.path().join("hello.tar");
    strata_cli(work.path(), &["build", "hello", "--quiet", "--output", &format!("docker-archive:{}:hello:latest", archive.display())])
        .assert_ok();
    let mut tar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    let mut layers = 0;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy().ends_with(".tar.gz") {
            let mut magic = [0u8; 2];
            std::io::Read::read_exact(&mut entry, &mut magic).unwrap();
            assert_eq!(magic, [0x1f, 0x8b], "a gzip layer");
            layers += 1;
        }
    }
    assert!(layers >= 2, "{layers} layers");
    let layout = work.path().join("copy");
    let src = format!("docker-archive:{}", archive.display());
    skopeo(&["copy", &src, &format!("oci:{}:t", layout.display())], Duration::from_secs(120)).assert_ok();
    let rootfs = umoci_unpack(&layout, "t", &work.path().join("bundle"));
    assert_eq!(chroot(&rootfs, &["/bin/hello"]).assert_ok().stdout, "Hello, world!\n");
}

#[test]
fn inspect_shows_packages_closure_and_layers_without_packing() {
    let work = tempfile::tempdir().unwrap();
    let out = strata_cli(work.path(), &["inspect", "shell/git", "--json"]).assert_ok();
    let i: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    let packages: Vec<&str> = i["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for p in ["bashInteractive", "coreutils", "git"] {
        assert!(packages.contains(&p), "{p} in {packages:?}");
    }
    let closure = i["closure"].as_array().unwrap();
    let layered: usize = i["layers"].as_array().unwrap().iter().map(|l| l["paths"].as_array().unwrap().len()).sum();
    assert_eq!(layered, closure.len(), "every closure path in exactly one planned layer: {i}");
    assert_eq!(i["grouping_plugin"], "size");
    // Nothing was packed: no blob in the store.
    let blobs = walk_files(&work.path().join("storage"));
    assert!(blobs.iter().all(|p| !p.contains("blobs/sha256")), "inspect stored blobs: {blobs:?}");

    let human = strata_cli(work.path(), &["inspect", "shell/git"]).assert_ok();
    assert!(human.stdout.contains("closure") && human.stdout.contains("layers"), "{human}");

    // Names the set refuses or lacks: one line each, with the set's reason.
    let refused = strata_cli(work.path(), &["inspect", "hello/unrar/nope"]);
    assert!(!refused.success(), "{refused}");
    assert!(refused.stderr.contains("  unrar: Package ‘unrar-6.2.12’ in … has an unfree license"), "{refused}");
    assert!(refused.stderr.contains("  nope: not in the package set"), "{refused}");
}

fn walk_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn help_and_exit_codes() {
    let work = tempfile::tempdir().unwrap();
    let help = strata_cli(work.path(), &["--help"]).assert_ok();
    for cmd in ["serve", "build", "inspect", "plugin", "gc", "bench"] {
        assert!(help.stdout.contains(cmd), "--help lists {cmd}:\n{help}");
    }
    let build_help = strata_cli(work.path(), &["build", "--help"]).assert_ok();
    assert!(build_help.stdout.contains("docker-archive"), "{build_help}");

    // A usage mistake: clap's exit code 2 and a message on stderr.
    let usage = strata_cli(work.path(), &["build"]);
    assert_eq!(usage.status.and_then(|s| s.code()), Some(2), "{usage}");
    // A bad name: exit 1, one clear line, nothing built.
    let bad = strata_cli(work.path(), &["build", "Shell/../x", "--output", "oci:out"]);
    assert_eq!(bad.status.and_then(|s| s.code()), Some(1), "{bad}");
    assert!(bad.stderr.starts_with("strata: ") && bad.stderr.trim().lines().count() == 1, "{bad}");
    // A missing package names itself.
    let missing = strata_cli(work.path(), &["inspect", "hello/no-such-package"]);
    assert_eq!(missing.status.and_then(|s| s.code()), Some(1), "{missing}");
    assert!(missing.stderr.contains("no-such-package"), "{missing}");
}

#[test]
fn json_logs_by_config_with_request_ids() {
    let server = Server::start_with(ServerOptions { extra_toml: "log_format = \"json\"".into(), ..Default::default() });
    let r = server.get("/v2/").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // A refusal that needs no Nix: a blob no image has.
    let missing = format!("/v2/hello/blobs/sha256:{}", "0".repeat(64));
    let r = server.get(&missing).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let echoed = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "strata serving"), "{log}");
    // Answered requests are logged at DEBUG only (docs/configuration.md);
    // refusals at INFO, with the id the client was given.
    assert!(!lines.iter().any(|l| l["fields"]["path"] == "/v2/"), "an answered request at INFO:\n{log}");
    let request = lines
        .iter()
        .find(|l| l["fields"]["path"] == missing.as_str())
        .unwrap_or_else(|| panic!("no line for GET {missing} in:\n{log}"));
    assert_eq!(request["fields"]["status"], 404, "{request}");
    let id = request["fields"]["id"].as_str().unwrap_or_default();
    assert_eq!(id.len(), 16, "a request id: {request}");
    assert_eq!(id, echoed, "the logged id is the one the client got: {request}");
}
