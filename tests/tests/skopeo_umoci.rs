//! Pulling with skopeo into an OCI layout, unpacking with umoci and running
//! the image's programs under chroot: the whole pull path with real clients.

use std::os::unix::fs::PermissionsExt;
use strata_e2e::*;

#[test]
fn skopeo_pull_umoci_unpack_and_run_hello() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");

    skopeo_copy(&server, "shell/hello", "latest", &layout, "t").assert_ok();
    let rootfs = umoci_unpack(&layout, "t", &work.path().join("bundle"));

    let hello = chroot(&rootfs, &["/bin/hello"]).assert_ok();
    assert_eq!(hello.stdout, "Hello, world!\n", "{hello}");

    let bash = chroot(&rootfs, &["/bin/bash", "-c", "echo ok"]).assert_ok();
    assert_eq!(bash.stdout.trim(), "ok", "{bash}");
    // The shell bundle's coreutils are there too, on PATH.
    let ls = chroot(&rootfs, &["/bin/bash", "-c", "ls /bin | wc -l"]).assert_ok();
    assert!(ls.stdout.trim().parse::<u32>().unwrap_or(0) > 10, "{ls}");

    let tmp = std::fs::symlink_metadata(rootfs.join("tmp")).expect("/tmp exists");
    assert!(tmp.is_dir(), "/tmp is a directory");
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "/tmp is mode 1777");

    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd exists");
    assert!(passwd.lines().any(|l| l.starts_with("root:")), "/etc/passwd has root:\n{passwd}");
    let group = std::fs::read_to_string(rootfs.join("etc/group")).expect("/etc/group exists");
    assert!(group.lines().any(|l| l.starts_with("root:")), "/etc/group has root:\n{group}");

    // Programs resolve through /bin symlinks into /nix/store.
    let link = std::fs::read_link(rootfs.join("bin/hello")).expect("/bin/hello is a symlink");
    assert!(link.starts_with("/nix/store/"), "/bin/hello -> {}", link.display());
}

#[test]
fn layers_are_store_paths_then_the_symlink_layer_and_are_reused() {
    let server = Server::start();
    let inspect = skopeo_inspect(&server, "shell/hello", "latest", &[]);
    let layers: Vec<String> = inspect["Layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no Layers in {inspect}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(layers.len() > 1, "more than one layer: {layers:?}");
    let digest = inspect["Digest"].as_str().expect("Digest").to_string();

    // The config's history names the last layer as the symlink layer.
    let config = skopeo_inspect(&server, "shell/hello", "latest", &["--config"]);
    let history = config["history"].as_array().unwrap_or_else(|| panic!("no history in {config}"));
    assert_eq!(history.len(), layers.len(), "one history entry per layer: {config}");
    let last_created = history.last().unwrap()["created_by"].as_str().unwrap_or_default();
    assert!(last_created.contains("symlink"), "last history entry: {last_created}");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["bash"]), "shell bundle sets Cmd: {config}");

    // And its content says so: symlinks into the store, /tmp and /etc; no
    // store contents. Every other layer holds only store paths.
    for (i, layer) in layers.iter().enumerate() {
        let resp = server.get(&format!("/v2/shell/hello/blobs/{layer}")).send().expect("GET blob");
        assert_eq!(resp.status().as_u16(), 200, "GET blob {layer}");
        let blob = resp.bytes().unwrap();
        assert_eq!(&sha256_digest(&blob), layer, "blob bytes match their digest");
        let entries = layer_entries(&blob);
        if i + 1 == layers.len() {
            let hello = entries.iter().find(|e| e.0 == "bin/hello").unwrap_or_else(|| panic!("bin/hello in {entries:?}"));
            assert_eq!(hello.1, tar::EntryType::Symlink, "bin/hello is a symlink");
            assert!(hello.2.as_deref().unwrap_or("").starts_with("/nix/store/"), "{hello:?}");
            assert!(entries.iter().any(|e| e.0.trim_end_matches('/') == "tmp"), "tmp in the symlink layer");
            assert!(
                !entries.iter().any(|e| e.0.starts_with("nix/store/") && e.1 == tar::EntryType::Regular),
                "no store files in the symlink layer"
            );
        } else {
            assert!(
                entries.iter().all(|e| e.0.trim_end_matches('/') == "nix"
                    || e.0.trim_end_matches('/') == "nix/store"
                    || e.0.starts_with("nix/store/")),
                "layer {i} holds only store paths: {:?}",
                entries.iter().map(|e| &e.0).take(20).collect::<Vec<_>>()
            );
        }
    }

    // The same image again: the same manifest.
    let again = skopeo_inspect(&server, "shell/hello", "latest", &[]);
    assert_eq!(again["Digest"].as_str(), Some(digest.as_str()), "same manifest digest on a second request");

    // A second copy into the same layout brings no new blob.
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    skopeo_copy(&server, "shell/hello", "latest", &layout, "one").assert_ok();
    let before = oci_blobs(&layout);
    for l in &layers {
        assert!(before.contains(l), "layer {l} is in the layout");
    }
    let second = skopeo_copy(&server, "shell/hello", "latest", &layout, "two").assert_ok();
    let after = oci_blobs(&layout);
    assert_eq!(before, after, "second copy added no blobs; skopeo said:\n{second}");
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digests: Vec<&str> = index["manifests"].as_array().unwrap().iter().filter_map(|m| m["digest"].as_str()).collect();
    assert_eq!(digests.len(), 2, "two tags in {index}");
    assert_eq!(digests[0], digests[1], "both tags name one manifest: {index}");
}

#[test]
fn same_name_same_digest_across_restarts_and_fresh_storage() {
    let docker_accept = "application/vnd.docker.distribution.manifest.v2+json";
    let digest_of = |server: &Server| -> String {
        let r = server
            .get("/v2/shell/hello/manifests/latest")
            .header("Accept", docker_accept)
            .send()
            .expect("GET manifest");
        assert_eq!(r.status().as_u16(), 200);
        r.headers()["docker-content-digest"].to_str().unwrap().to_string()
    };
    let storage = tempfile::tempdir().unwrap();
    let opts = ServerOptions { storage: Some(storage.path().to_path_buf()), ..Default::default() };
    let first = {
        let s = Server::start_with(opts.clone());
        digest_of(&s)
    };
    // A new process on the same storage serves the stored image…
    let restarted = Server::start_with(opts);
    assert_eq!(digest_of(&restarted), first, "same digest after a restart on the same storage");
    drop(restarted);
    // …and one with empty storage builds the very same bytes.
    let fresh = Server::start();
    assert_eq!(digest_of(&fresh), first, "same digest from an empty storage (deterministic build)");
}
