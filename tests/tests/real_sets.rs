//! What real package sets do to a registry, on the demo set which imitates
//! them: attributes that throw (a removed alias, packages nixpkgs refuses as
//! broken, unfree or insecure), a package whose build fails, programs only
//! in `meta.outputsToInstall`, and Nixery's `cacert` and `iana-etc` in every
//! image. Pulled through skopeo and run with umoci + chroot.

use strata_e2e::*;

#[test]
fn refused_and_missing_names_are_all_reported_with_the_set_s_reasons() {
    let server = Server::start();
    let (status, body) = get_manifest(&server, "hello/hello-old/nope/ncdu/unrar/padder/openssl_1_1");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 404, "{text}");
    let (code, message, detail) = spec_error(&body);
    assert_eq!(code, "MANIFEST_UNKNOWN");
    for expected in [
        "packages not found: nope",
        "hello-old: 'hello-old' has been renamed to/replaced by 'hello'",
        "ncdu: Package ‘ncdu-2.3’ in … is marked as broken, refusing to evaluate.",
        "unrar: Package ‘unrar-6.2.12’ in … has an unfree license (‘unfreeRedistributable’), refusing to evaluate.",
        "openssl_1_1: Package ‘openssl-1.1.1w’ in … is marked as insecure",
    ] {
        assert!(message.contains(expected), "{expected:?} not in {message:?}");
    }
    assert_eq!(detail["missing"], serde_json::json!(["nope"]), "{detail}");
    let names: Vec<&str> = detail["unavailable"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    // Sorted as the image's package list is (the host sorts names).
    assert_eq!(names, ["hello-old", "ncdu", "openssl_1_1", "unrar"], "{detail}");
    for private in ["/nix/store", "/work", "demo-pkgs", "default.nix"] {
        assert!(!text.contains(private), "a server path ({private}) in {text}");
    }

    // The inspector API gives the same answer.
    let r = server.get("/api/inspect/hello/ncdu/nope").send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let (_, message, _) = spec_error(&r.bytes().unwrap());
    assert!(message.contains("packages not found: nope") && message.contains("ncdu: Package ‘ncdu-2.3’"), "{message}");

    // Nothing was built; a good name still is.
    let (status, body) = get_manifest(&server, "hello");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn a_failed_build_names_the_package_and_the_request_id() {
    let server = Server::start();
    let r = server
        .get("/v2/hello/padder/manifests/latest")
        .header("x-request-id", "e2e-padder-1")
        .send()
        .expect("GET manifest");
    let status = r.status().as_u16();
    let body = r.bytes().unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!((500..600).contains(&status) && status != 504, "{status} {text}");
    let (code, message, detail) = spec_error(&body);
    assert_eq!(code, "UNKNOWN");
    assert!(message.contains("building padder failed"), "{message}");
    assert!(message.contains("leftpad-1.3.0"), "the failing derivation is named: {message}");
    assert!(message.contains("request id e2e-padder-1"), "{message}");
    assert_eq!(detail["packages"], serde_json::json!(["padder"]));
    for private in ["/nix/store", "C compiler"] {
        assert!(!text.contains(private), "the build log ({private}) in {text}");
    }
    // The server log has the derivation and the builder's last lines.
    wait_until(std::time::Duration::from_secs(10), "the failure logged", || {
        server.log().contains("C compiler cannot create executables")
    });
    let log = server.log();
    assert!(log.contains("e2e-padder-1") && log.contains("leftpad-1.3.0.drv"), "{log}");
}

#[test]
fn every_image_gets_nixery_s_ca_bundle_and_services_file() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    skopeo_copy(&server, "curl", "latest", &layout, "curl").assert_ok();
    let rootfs = umoci_unpack(&layout, "curl", &work.path().join("bundle"));
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-bundle.crt")).expect("a CA bundle");
    assert!(bundle.contains("BEGIN CERTIFICATE"), "{bundle}");
    let services = std::fs::read_to_string(rootfs.join("etc/services")).expect("/etc/services");
    assert!(services.contains("https           443/tcp"), "{services}");
    let config = skopeo_inspect(&server, "curl", "latest", &["--config"]);
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(env.iter().any(|e| e.as_str().unwrap().starts_with("SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt")), "{config}");
    let curl = chroot(&rootfs, &["/bin/curl", "--version"]).assert_ok();
    assert!(curl.stdout.starts_with("curl 8.4.0"), "{curl}");

    // A set without them: skipped, never a 404 (the uncaught fixture is the
    // demo set plus two broken names; this one lacks both defaults).
    let bare = work.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(
        bare.join("default.nix"),
        format!(
            "{{ system ? builtins.currentSystem, ... }}:\nbuiltins.removeAttrs (import {} {{ inherit system; }}) [ \"cacert\" \"iana-etc\" ]\n",
            repo_root().join("examples/demo-pkgs").display()
        ),
    )
    .unwrap();
    let lean = Server::start_with(ServerOptions {
        env: vec![("NIXERY_PKGS_PATH".into(), bare.display().to_string())],
        ..Default::default()
    });
    let (status, body) = get_manifest(&lean, "hello");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn an_operator_can_turn_the_defaults_off() {
    let server = Server::start_with(ServerOptions {
        extra_toml: "[plugins.config.bundles]\nalways = []\n".into(),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    skopeo_copy(&server, "hello", "latest", &layout, "t").assert_ok();
    let rootfs = umoci_unpack(&layout, "t", &work.path().join("bundle"));
    assert!(!rootfs.join("etc/ssl/certs/ca-bundle.crt").exists());
    assert!(!rootfs.join("etc/services").exists());
    let config = skopeo_inspect(&server, "hello", "latest", &["--config"]);
    assert!(!config["config"]["Env"].to_string().contains("SSL_CERT_FILE"), "{config}");
    assert_eq!(chroot(&rootfs, &["/bin/hello"]).assert_ok().stdout, "Hello, world!\n");
}

#[test]
fn programs_in_outputs_to_install_are_in_the_image() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    skopeo_copy(&server, "libxml2", "latest", &layout, "t").assert_ok();
    let rootfs = umoci_unpack(&layout, "t", &work.path().join("bundle"));
    let xmllint = chroot(&rootfs, &["/bin/xmllint"]).assert_ok();
    assert_eq!(xmllint.stdout, "xmllint: using libxml version 21105\n", "{xmllint}");
    assert!(rootfs.join("share/man/man1/xmllint.1").exists(), "the man output is installed too");
    // The default output is there as the programs' dependency, not linked.
    let store: Vec<String> = std::fs::read_dir(rootfs.join("nix/store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(store.iter().any(|n| n.ends_with("-libxml2-2.11.5")), "{store:?}");
    assert!(!rootfs.join("lib/libxml2.so.2").exists(), "only outputs to install are linked");

    // The inspector shows both outputs as roots.
    let r = server.get("/api/inspect/libxml2").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let inspection: serde_json::Value = r.json().unwrap();
    let roots: Vec<&str> = inspection["roots"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(roots.iter().any(|r| r.ends_with("-libxml2-2.11.5-bin")) && roots.iter().any(|r| r.ends_with("-man")), "{roots:?}");
}
