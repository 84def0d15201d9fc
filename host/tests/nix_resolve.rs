//! Runs the real Nix on examples/demo-pkgs (and a small fixture that never
//! finishes building): look-up, build, closure, missing names, timeouts and
//! cancellation. Needs `nix-build` on PATH and /usr/bin/busybox (static).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata::nix::{License, NixError, NixOptions, NixRunner};
use strata_plugin_sdk::NixSource;

const MARKER: &str = "strata-sleepy-fixture-marker";

fn offline() {
    // No binary cache is reachable from test machines; without this every
    // build waits on it first.
    std::env::set_var("STRATA_NIX_OFFLINE", "1");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

fn path_source(dir: &Path) -> NixSource {
    NixSource::Path { path: dir.to_string_lossy().into_owned() }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn runner(work: &Path, timeout: Duration) -> NixRunner {
    NixRunner::new(NixOptions { timeout, work_dir: work.to_path_buf(), negative_ttl: Duration::from_secs(60) }).unwrap()
}

/// Live processes (not zombies): (pid, process group, command line).
fn processes() -> Vec<(i32, i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Fields after the command name: state, ppid, pgrp, ...
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if fields.len() < 3 || fields[0] == "Z" {
            continue;
        }
        let pgrp = fields[2].parse().unwrap_or(0);
        found.push((pid, pgrp, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    found
}

/// Process groups of the marked builder (the shell and its `sleep`).
fn builder_groups() -> HashSet<i32> {
    processes().into_iter().filter(|(_, _, cmd)| cmd.contains(MARKER)).map(|(_, g, _)| g).collect()
}

/// Waits up to `limit` for the marked builder to appear.
async fn wait_for_builder(limit: Duration) -> HashSet<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let groups = builder_groups();
        if !groups.is_empty() {
            return groups;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    HashSet::new()
}

/// Waits up to two seconds for the builder and everything in its process
/// groups (its `sleep`) to be gone: a killed process lingers until reaped.
async fn assert_builder_gone(groups: &HashSet<i32>) {
    let left = || -> Vec<(i32, i32, String)> {
        processes().into_iter().filter(|(_, g, cmd)| groups.contains(g) || cmd.contains(MARKER)).collect()
    };
    for _ in 0..200 {
        if left().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("build still running: {:?}", left());
}

#[tokio::test]
async fn resolves_demo_packages_with_shared_dependencies() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("examples/demo-pkgs"));
    let resolved = nix
        .resolve(&source, &names(&["hello", "git", "xorg.xev", "haskellpackages.pandoc"]), &system())
        .await
        .unwrap();

    // Roots: one per name, in request order.
    assert_eq!(resolved.roots.len(), 4);
    let paths = &resolved.graph.paths;
    let root_paths: Vec<&str> = resolved.graph.roots.iter().map(|&r| paths[r as usize].path.as_str()).collect();
    assert_eq!(root_paths, resolved.roots);
    for (root, suffix) in resolved.roots.iter().zip(["-hello-2.12.1", "-git-2.42.0", "-xev-1.2.5", "-pandoc-3.1.9"]) {
        assert!(root.starts_with("/nix/store/") && root.ends_with(suffix), "{root} should end in {suffix}");
    }
    assert_eq!(nix.builds_started(), 1);

    // A closed graph, sorted by path, with sizes; references by index.
    assert!(paths.windows(2).all(|w| w[0].path < w[1].path), "paths sorted and unique");
    for p in paths {
        assert!(p.nar_size > 0, "{} has a NAR size", p.path);
        for &r in &p.references {
            assert!((r as usize) < paths.len(), "{} references {r}, outside the graph", p.path);
        }
    }

    // Shared dependencies: zlib is used by curl, git and pandoc; busybox by
    // every script.
    let mut referrers: HashMap<&str, HashSet<&str>> = HashMap::new();
    for p in paths {
        for r in p.references.iter().map(|&r| paths[r as usize].path.as_str()).filter(|&r| r != p.path) {
            referrers.entry(r).or_default().insert(p.path.as_str());
        }
    }
    let by_suffix = |s: &str| paths.iter().find(|p| p.path.ends_with(s)).map(|p| p.path.as_str()).unwrap();
    assert!(referrers[by_suffix("-zlib-1.3")].len() >= 3, "zlib shared: {:?}", referrers[by_suffix("-zlib-1.3")]);
    assert!(referrers[by_suffix("-busybox-static")].len() >= 4);
    assert!(by_suffix("-libX11-1.8.7").starts_with("/nix/store/"));

    // Really built, and kept alive by a GC root in the work dir.
    let out = std::process::Command::new(format!("{}/bin/hello", resolved.roots[0])).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, world!\n");
    // (Beside the directory of links, the build's claim file: nix/roots.rs.)
    let links: Vec<PathBuf> = std::fs::read_dir(work.path().join("gcroots"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|d| d.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(links.len(), 4, "one out link per root: {links:?}");

    // The same request again: same answer, from the store.
    let again = nix
        .resolve(&source, &names(&["hello", "git", "xorg.xev", "haskellpackages.pandoc"]), &system())
        .await
        .unwrap();
    assert_eq!(again, resolved);
}

#[tokio::test]
async fn reports_all_missing_names_at_once() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("examples/demo-pkgs"));

    let err = nix.resolve(&source, &names(&["hello", "nope1", "xorg.nope2"]), &system()).await.unwrap_err();
    match err {
        NixError::Unavailable(u) => {
            assert_eq!(u.missing, names(&["nope1", "xorg.nope2"]));
            assert!(u.refused.is_empty(), "{u:?}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // An attribute set is not a package.
    let err = nix.resolve(&source, &names(&["xorg"]), &system()).await.unwrap_err();
    assert!(matches!(&err, NixError::Unavailable(u) if u.missing == names(&["xorg"])), "{err:?}");
    assert_eq!(nix.builds_started(), 0, "nothing is built when a name is missing");
}

fn unavailable(err: NixError) -> (Vec<String>, Vec<(String, String)>) {
    match err {
        NixError::Unavailable(u) => (u.missing, u.refused.into_iter().map(|r| (r.name, r.reason)).collect()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn names_the_set_refuses_are_reported_with_its_reasons_beside_missing_ones() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("examples/demo-pkgs"));
    let request = names(&["hello", "hello-old", "nope", "ncdu", "unrar", "openssl_1_1"]);

    let (missing, refused) = unavailable(nix.resolve(&source, &request, &system()).await.unwrap_err());
    assert_eq!(missing, names(&["nope"]));
    let reasons: HashMap<String, String> = refused.iter().cloned().collect();
    assert_eq!(refused.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["hello-old", "ncdu", "unrar", "openssl_1_1"]);
    assert_eq!(reasons["hello-old"], "'hello-old' has been renamed to/replaced by 'hello'");
    assert_eq!(reasons["ncdu"], "Package ‘ncdu-2.3’ in … is marked as broken, refusing to evaluate.");
    assert_eq!(
        reasons["unrar"],
        "Package ‘unrar-6.2.12’ in … has an unfree license (‘unfreeRedistributable’), refusing to evaluate."
    );
    assert!(reasons["openssl_1_1"].contains("is marked as insecure"), "{reasons:?}");
    for reason in reasons.values() {
        assert!(!reason.contains('/') || reason.contains("to/replaced"), "a server path in {reason:?}");
        assert!(!reason.contains('\n'));
    }
    // One lookup, then one evaluation per refused name to read its reason.
    assert_eq!(nix.evaluations(), 1 + 4);
    assert_eq!(nix.builds_started(), 0);

    // Asked again soon: the refused and missing names are remembered, and
    // so is `hello`, found beside them: no evaluation at all.
    let (missing_again, refused_again) = unavailable(nix.resolve(&source, &request, &system()).await.unwrap_err());
    assert_eq!((missing_again, refused_again), (missing.clone(), refused));
    assert_eq!(nix.evaluations(), 1 + 4);
    // A name never asked about beside them is looked up (alone), so that
    // the answer names every missing one.
    let more = names(&["hello", "nope", "nope-too"]);
    let (missing_more, _) = unavailable(nix.resolve(&source, &more, &system()).await.unwrap_err());
    assert_eq!(missing_more, names(&["nope", "nope-too"]));
    assert_eq!(nix.evaluations(), 1 + 4 + 1);

    // Without the refused names the same request builds.
    let ok = nix.resolve(&source, &names(&["hello"]), &system()).await.unwrap();
    assert_eq!(ok.packages, names(&["hello"]));
}

#[tokio::test]
async fn failures_tryeval_cannot_catch_hide_no_other_name() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("host/tests/fixtures/uncaught"));
    let request = names(&["hello", "aborts", "nope", "typo", "ncdu"]);
    let (missing, refused) = unavailable(nix.resolve(&source, &request, &system()).await.unwrap_err());
    assert_eq!(missing, names(&["nope"]));
    let reasons: HashMap<String, String> = refused.iter().cloned().collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(reasons["aborts"].contains("strata-fixture: this package aborts evaluation"), "{reasons:?}");
    assert!(reasons["typo"].contains("attribute 'nosuchattr' missing"), "{reasons:?}");
    assert!(reasons["ncdu"].contains("is marked as broken"), "{reasons:?}");
    // The failed lookup, the probe of the set, one lookup per name, and the
    // explanation of ncdu (which tryEval caught in its own lookup).
    assert_eq!(nix.evaluations(), 1 + 1 + 5 + 1);
    // A set that does not load at all is the set's failure, not the names'.
    let gone = path_source(&work.path().join("no-such-set"));
    assert!(matches!(nix.resolve(&gone, &request, &system()).await, Err(NixError::Failed { .. })));
}

#[tokio::test]
async fn optional_names_join_when_the_set_has_them() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("examples/demo-pkgs"));
    let optional = names(&["cacert", "not-in-this-set", "iana-etc", "ncdu", "hello"]);
    let r = nix.resolve_with_optional(&source, &names(&["hello"]), &optional, &system()).await.unwrap();
    assert_eq!(r.packages, names(&["hello", "cacert", "iana-etc"]));
    assert_eq!(r.roots.len(), 3);
    assert!(r.roots[1].ends_with("-nss-cacert-3.95") && r.roots[2].ends_with("-iana-etc-20231227"), "{:?}", r.roots);
}

#[tokio::test]
async fn outputs_to_install_are_the_roots_of_a_multi_output_package() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("examples/demo-pkgs"));
    let r = nix.resolve(&source, &names(&["libxml2", "hello"]), &system()).await.unwrap();
    assert_eq!(r.roots.len(), 3, "{:?}", r.roots);
    assert!(r.roots[0].ends_with("-libxml2-2.11.5-bin"), "{:?}", r.roots);
    assert!(r.roots[1].ends_with("-libxml2-2.11.5-man"), "{:?}", r.roots);
    // The default output is in the closure, as a reference of `bin`.
    let paths = &r.graph.paths;
    let lib = paths.iter().position(|p| p.path.ends_with("-libxml2-2.11.5")).expect("the default output");
    let bin = paths.iter().find(|p| p.path == r.roots[0]).unwrap();
    assert!(bin.references.contains(&(lib as u32)));
    let out = std::process::Command::new(format!("{}/bin/xmllint", r.roots[0])).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "xmllint: using libxml version 21105\n");
}

/// `meta` as nixpkgs may have it: the SBOM's fields make the most of each
/// shape, a field (or one licence of a list) that throws costs only itself,
/// and no shape keeps the package out of the image.
#[tokio::test]
async fn odd_meta_shapes_give_what_they_can_and_never_fail_the_package() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("host/tests/fixtures/odd-meta"));
    let requested = ["string-licence", "named-string-licence", "one-licence-throws", "licence-throws"];
    let r = nix.resolve(&source, &names(&requested), &system()).await.unwrap();
    let meta = |name: &str| r.described.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("{name} described")).meta.clone();
    let licence = |id: Option<&str>, name: &str| License { spdx_id: id.map(str::to_string), name: Some(name.to_string()) };

    let m = meta("string-licence");
    // A bare string is offered as an SPDX id; sbom.rs keeps it only if SPDX knows it.
    assert_eq!(m.licenses, Some(vec![licence(Some("MIT"), "MIT")]));
    assert_eq!(m.homepage.as_deref(), Some("https://one.example/"), "the first of a list of homepages");
    assert_eq!((m.pname.as_deref(), m.version.as_deref()), (Some("hello"), Some("2.12.1")));

    let m = meta("named-string-licence");
    assert_eq!(m.licenses, Some(vec![licence(Some("Public Domain"), "Public Domain")]));
    assert_eq!(m.homepage, None, "an empty list of homepages");

    let m = meta("one-licence-throws");
    assert_eq!(m.licenses, Some(vec![licence(Some("Apache-2.0"), "asl20")]), "the licence that does not throw stays");
    assert_eq!(m.homepage, None);

    let m = meta("licence-throws");
    assert_eq!(m.licenses, Some(vec![]));
    assert_eq!(m.homepage.as_deref(), Some("https://ok.example/"));
}

#[tokio::test]
async fn a_failed_build_names_the_package_it_stopped() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&repo().join("examples/demo-pkgs"));
    for (request, packages) in [(&["hello", "padder"][..], &["padder"][..]), (&["leftpad"], &["leftpad"])] {
        match nix.resolve(&source, &names(request), &system()).await.unwrap_err() {
            NixError::BuildFailed(f) => {
                assert_eq!(f.packages, names(packages));
                assert_eq!(f.derivations, names(&["leftpad-1.3.0"]));
                assert!(f.log_tail.contains("C compiler cannot create executables"), "{}", f.log_tail);
                let message = f.to_string();
                assert!(message.contains(packages[0]) && !message.contains("/nix/store"), "{message}");
            }
            other => panic!("expected BuildFailed, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn resolves_from_a_git_source() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let repo_dir = work.path().join("pkgs");
    std::fs::create_dir(&repo_dir).unwrap();
    std::fs::copy(repo().join("examples/demo-pkgs/default.nix"), repo_dir.join("default.nix")).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(&repo_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "default.nix"]);
    git(&["commit", "-q", "-m", "demo"]);
    let rev = git(&["rev-parse", "HEAD"]);

    let nix = runner(&work.path().join("work"), Duration::from_secs(300));
    let url = repo_dir.to_string_lossy().into_owned();
    let by_rev = NixSource::Git { url: url.clone(), rev: Some(rev), r#ref: None };
    let by_ref = NixSource::Git { url, rev: None, r#ref: Some("main".into()) };
    let a = nix.resolve(&by_rev, &names(&["hello"]), &system()).await.unwrap();
    let b = nix.resolve(&by_ref, &names(&["hello"]), &system()).await.unwrap();
    assert_eq!(a, b);
    assert!(a.roots[0].ends_with("-hello-2.12.1"));

    // Same package set, same store paths as the path source.
    let c = nix.resolve(&path_source(&repo().join("examples/demo-pkgs")), &names(&["hello"]), &system()).await.unwrap();
    assert_eq!(a.roots, c.roots);
}

#[tokio::test]
async fn failed_evaluation_keeps_nix_message() {
    offline();
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(300));
    let source = path_source(&work.path().join("does-not-exist"));
    match nix.resolve(&source, &names(&["hello"]), &system()).await.unwrap_err() {
        NixError::Failed { log_tail, .. } => assert!(log_tail.contains("does-not-exist"), "{log_tail}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

// The two tests below share the marker, so they take turns.
static SLOW_BUILDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn timeout_kills_the_build() {
    offline();
    let _turn = SLOW_BUILDS.lock().await;
    let work = tempfile::tempdir().unwrap();
    let nix = runner(work.path(), Duration::from_secs(1));
    let source = path_source(&repo().join("host/tests/fixtures/slow"));

    let started = Instant::now();
    let (packages, system) = (names(&["sleepy"]), system());
    let resolve = nix.resolve(&source, &packages, &system);
    let (result, seen) = tokio::join!(resolve, wait_for_builder(Duration::from_secs(1)));
    match result {
        Err(NixError::Timeout(d)) => assert_eq!(d, Duration::from_secs(1)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!seen.is_empty(), "the builder never started, so the test proved nothing");
    assert_builder_gone(&seen).await;
}

#[tokio::test]
async fn dropping_the_request_kills_the_build() {
    offline();
    let _turn = SLOW_BUILDS.lock().await;
    let work = tempfile::tempdir().unwrap();
    let nix = std::sync::Arc::new(runner(work.path(), Duration::from_secs(300)));
    let source = path_source(&repo().join("host/tests/fixtures/slow"));

    let task = {
        let nix = nix.clone();
        tokio::spawn(async move { nix.resolve(&source, &names(&["sleepy"]), &system()).await })
    };
    let seen = wait_for_builder(Duration::from_secs(30)).await;
    assert!(!seen.is_empty(), "the builder never started");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_builder_gone(&seen).await;
}
