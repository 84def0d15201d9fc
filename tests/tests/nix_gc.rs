//! `strata gc` frees the Nix store: the GC roots of removed images are
//! released and the store paths only they held are deleted, while kept
//! images, images sharing a root directory with a kept one, young roots (a
//! build may be under way) and a build in flight keep theirs.
//!
//! The Nix store is shared by every test on the machine, so the paths that
//! are to go belong to a package set of this test's own (derivations with a
//! nonce in their names, built by the host's /bin/sh, referencing nothing
//! else in the store): nothing else roots them, and nothing another test
//! uses is deleted.
//!
//! Most servers here mark accesses every second (`[cache] access_mark_secs
//! = 1`), so that a server serves an image from memory only until its mark
//! is due (a second later) and gc's refusal of a window shorter than two
//! intervals can be seen. What is to be stale is made so by dating it back
//! two days (the store's objects and the root directories), and gc's
//! window is an hour: what the test writes afterwards is younger than that
//! on any machine, however busy, so no test here depends on how fast the
//! clock runs past what it does (docs/testing.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;
use strata_e2e::*;

fn nonce() -> String {
    format!("strata-gc-{}", unique_suffix())
}

/// This test's package set, nothing in it shared with other tests: a copy
/// of the static busybox under a store name of its own (the scripts'
/// interpreter), `shared` (used by every package), and one package per name
/// with a blob of its own; `slow` sleeps `slow_secs` before writing its
/// output (`|| true`: the test may stop the `sleep` early, see
/// [`stop_sleeping`]). No `cacert` or `iana-etc`, so that images get no
/// optional demo packages (which other tests use) either.
fn pkgs(dir: &Path, nonce: &str, slow_secs: u32) -> PathBuf {
    let bindings = format!(
        r#"  shared = mk "shared" "mkdir -p $out; head -c 65536 /dev/urandom > $out/blob; echo {nonce}-shared > $out/id" {{ }};
  own = name: kib: pre: mk name ''
    ${{pre}}
    mkdir -p $out/bin $out/share
    head -c ${{toString (kib * 1024)}} /dev/urandom > $out/share/blob
    printf '#!%s sh\necho %s {nonce}\n%s cat %s/id\n' "${{bb}}" "${{name}}" "${{bb}}" "$shared" > $out/bin/${{name}}
    chmod 755 $out/bin/${{name}}
  '' {{ inherit shared; }};
"#
    );
    let attrs = format!(
        r#"  gca = own "gca" 512 "";
  gcb = own "gcb" 64 "";
  gcz = own "gcz" 32 "";
  gcd = own "gcd" 256 "";
  gce = own "gce" 16 "";
  gcw = own "gcw" 128 "";
  slow = own "slow" 8 "sleep {slow_secs} || true # {nonce}-sleeping";
"#
    );
    write_busybox_set(dir, nonce, &bindings, &attrs)
}

fn server(pkgs: &Path, extra_toml: &str) -> Server {
    server_marking(pkgs, 1, extra_toml)
}

/// A server writing access marks every `mark_secs`.
/// (`any_tag`: the tag `pop` picks a grouping rule; the path source
/// resolves only `latest`, and so builds `latest` for it.)
fn server_marking(pkgs: &Path, mark_secs: u64, extra_toml: &str) -> Server {
    Server::start_with(ServerOptions {
        extra_toml: format!(
            "[cache]\naccess_mark_secs = {mark_secs}\n\n[plugins.config.nixpkgs-source]\nany_tag = true\n\n[[plugins.group_rules]]\ntag = \"pop\"\nplugin = \"popularity\"\n\n{extra_toml}"
        ),
        env: vec![("NIXERY_PKGS_PATH".into(), pkgs.display().to_string())],
        ..Default::default()
    })
}

/// `strata ARGS` with the server's config (its storage and Nix work dir).
fn strata(server: &Server, pkgs: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(strata_bin());
    for var in ["PORT", "NIXERY_CHANNEL", "NIXERY_PKGS_REPO", "NIXERY_STORAGE_BACKEND", "STORAGE_PATH", "STRATA_CONFIG"] {
        cmd.env_remove(var);
    }
    cmd.arg("--config")
        .arg(server.temp_dir().join("strata.toml"))
        .args(args)
        .env("NIXERY_PKGS_PATH", pkgs)
        .env("STRATA_NIX_OFFLINE", "1")
        .env("NIX_CONFIG", "substituters =")
        .env("RUST_LOG", "warn");
    run(&mut cmd, Duration::from_secs(300))
}

fn request(server: &Server, name: &str, tag: &str) {
    let r = server
        .get(&format!("/v2/{name}/manifests/{tag}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .expect("GET manifest");
    assert_eq!(r.status().as_u16(), 200, "{name}:{tag}: {}", r.text().unwrap_or_default());
}

/// Root directories under the server's work dir: (dir, link targets).
fn root_dirs(server: &Server) -> Vec<(PathBuf, Vec<String>)> {
    let gcroots = server.nix_work_dir().join("gcroots");
    let mut out = Vec::new();
    // (Beside each directory, its builds' claim file `<key>.lock`.)
    for d in std::fs::read_dir(&gcroots).unwrap().flatten().filter(|d| d.path().is_dir()) {
        let targets = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter_map(|l| std::fs::read_link(l.path()).ok())
            .map(|t| t.to_string_lossy().into_owned())
            .collect();
        out.push((d.path(), targets));
    }
    out.sort();
    out
}

/// The store path of this test's package `name`.
fn own_path(server: &Server, nonce: &str, name: &str) -> String {
    let suffix = format!("-{nonce}-{name}");
    root_dirs(server)
        .into_iter()
        .flat_map(|(_, t)| t)
        .find(|t| t.ends_with(&suffix))
        .unwrap_or_else(|| panic!("no root points at *{suffix}: {:?}", root_dirs(server)))
}

/// The root directory pointing at `path`.
fn dir_of(server: &Server, path: &str) -> PathBuf {
    root_dirs(server).into_iter().find(|(_, t)| t.iter().any(|t| t == path)).map(|(d, _)| d).expect("a root dir")
}

fn nar_size(path: &str) -> u64 {
    let out = run(Command::new("nix-store").args(["--query", "--size", path]), Duration::from_secs(60)).assert_ok();
    out.stdout.trim().parse().unwrap_or_else(|_| panic!("size of {path}: {out}"))
}

/// The derivation Nix recorded as having built `path` (a valid one: the
/// server's `nix-build` wrote it).
fn deriver(path: &str) -> String {
    let out = run(Command::new("nix-store").args(["--query", "--deriver", path]), Duration::from_secs(60)).assert_ok();
    let drv = out.stdout.trim().to_string();
    assert!(drv.ends_with(".drv") && is_valid(&drv), "deriver of {path}: {out}");
    drv
}

/// Sets the times of a root directory and its links (not their targets) to
/// two days ago: as if it had been built then.
fn backdate(dir: &Path) {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()));
    for p in paths {
        run(Command::new("touch").args(["-h", "-d", "2 days ago"]).arg(&p), Duration::from_secs(10)).assert_ok();
    }
}

/// Sets the times of every file under `dir` to two days ago.
fn backdate_files(dir: &Path) {
    for f in files_under(dir) {
        run(Command::new("touch").args(["-d", "2 days ago"]).arg(&f), Duration::from_secs(10)).assert_ok();
    }
}

/// Dates back everything the server has stored and rooted so far: from
/// gc's point of view, all of it was last used two days ago.
fn backdate_everything(server: &Server) {
    // Access marks are written after the answer, by a task of their own:
    // one per image record, before anything is dated back.
    let count = |sub: &str| files_under(&server.storage.join(sub)).len();
    wait_until(Duration::from_secs(300), "every image's access mark is written", || {
        count("meta/access") >= count("meta/images")
    });
    backdate_files(&server.storage);
    for (dir, _) in root_dirs(server) {
        backdate(&dir);
    }
}

/// Ends the `sleep` of `slow`'s builder (the one process under the
/// builder's shell, which carries the marker); the builder goes on.
fn stop_sleeping(marker: &str) {
    for (pid, _) in processes_with(marker) {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            // SAFETY: a plain kill(2) of a process this test's build started.
            unsafe { libc::kill(child, libc::SIGTERM) };
        }
    }
}

/// `… (N bytes, NAR size)` from gc's Nix store line.
fn bytes_reported(out: &Output) -> u64 {
    let line = out.stdout.lines().find(|l| l.starts_with("nix store:")).unwrap_or_else(|| panic!("no nix store line: {out}"));
    let (before, _) = line.split_once(" bytes, NAR size").unwrap_or_else(|| panic!("{line}"));
    before.rsplit('(').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
}

/// X (stale) and Y (kept) share a package; Z is one root directory for two
/// images (two grouping plugins), one stale and one kept; D and E are roots
/// `strata inspect` left (no image records them), D old and E young. A
/// window shorter than two access-mark intervals is refused. A dry run
/// changes nothing; `--delete` releases X's and D's roots and deletes
/// exactly the paths only they held and the derivations that built them,
/// reporting their bytes; Y still pulls and runs, and X, which the server
/// still holds in memory, is rebuilt when asked for again.
#[test]
fn gc_deletes_the_store_paths_of_removed_images_only() {
    require_tool("nix-store");
    let work = tempfile::tempdir().unwrap();
    let nonce = nonce();
    let pkgs = pkgs(work.path(), &nonce, 0);
    let s = server(&pkgs, "");

    request(&s, "gca", "latest");
    request(&s, "gcz", "latest");
    strata(&s, &pkgs, &["inspect", "gcd"]).assert_ok();
    // The first group is two days old; what follows is younger than gc's
    // window of an hour. (A window of seconds, parting two groups by real
    // time, broke on a machine busy with other test binaries.)
    backdate_everything(&s);
    request(&s, "gcb", "latest");
    request(&s, "gcz", "pop");
    strata(&s, &pkgs, &["inspect", "gce"]).assert_ok();

    let [a, b, z, d, e] = ["gca", "gcb", "gcz", "gcd", "gce"].map(|n| own_path(&s, &nonce, n));
    let shared = requisites(&a).into_iter().find(|p| p.ends_with(&format!("-{nonce}-shared"))).expect("shared in X's closure");
    let busybox = requisites(&b).into_iter().find(|p| p.ends_with(&format!("-{nonce}-busybox"))).expect("busybox in Y's closure");
    assert_eq!(root_dirs(&s).len(), 5, "{:?}", root_dirs(&s));
    // A directory no build claims any more is released once it is older
    // than the window (X's and D's); E's, written within it, stays, and
    // records keep Y's and Z's.
    let (dir_a, dir_d) = (dir_of(&s, &a), dir_of(&s, &d));
    // X's and D's derivations go with their outputs; the ones of the kept
    // images and of `shared` (whose output Y keeps) stay, and so does the
    // interpreter, which Y's script and derivation use.
    let [drv_a, drv_b, drv_d, drv_shared] = [&a, &b, &d, &shared].map(|p| deriver(p));
    let expected_bytes = [&a, &d, &drv_a, &drv_d].map(|p| nar_size(p)).iter().sum::<u64>();

    let refused = strata(&s, &pkgs, &["gc", "--older-than", "1s", "--delete"]);
    assert!(!refused.success(), "a window below two access-mark intervals is refused: {refused}");
    assert!(refused.stderr.contains("shorter than 2s") && refused.stderr.contains("cache.access_mark_secs"), "{refused}");
    assert_eq!(refused.stderr.trim().lines().count(), 1, "one line: {refused}");

    let dry = strata(&s, &pkgs, &["gc", "--older-than", "1h"]).assert_ok();
    assert!(dry.stdout.contains("images:        2 kept, 2 to remove"), "{dry}");
    assert!(dry.stdout.contains("nix roots:     2 kept, 1 young (perhaps a build under way), 2 to release"), "{dry}");
    assert!(dry.stdout.contains("nix store:     4 paths to delete (2 derivations)"), "{dry}");
    assert_eq!(bytes_reported(&dry), expected_bytes, "{dry}");
    assert!(dry.stdout.contains("dry run: nothing was removed"), "{dry}");
    for p in [&a, &b, &z, &d, &e, &shared, &drv_a, &drv_d] {
        assert!(is_valid(p), "a dry run deletes nothing: {p}");
    }
    assert_eq!(root_dirs(&s).len(), 5);

    let done = strata(&s, &pkgs, &["gc", "--older-than", "1h", "--delete"]).assert_ok();
    assert!(done.stdout.contains("images:        2 kept, 2 removed"), "{done}");
    assert!(done.stdout.contains("nix roots:     2 kept, 1 young (perhaps a build under way), 2 released"), "{done}");
    assert!(done.stdout.contains("nix store:     4 paths deleted (2 derivations)"), "{done}");
    assert_eq!(bytes_reported(&done), expected_bytes, "{done}");
    eprintln!("gc --delete freed {expected_bytes} bytes (NAR):\n{}", done.stdout);
    assert!(!is_valid(&a), "X's own path is gone");
    assert!(!is_valid(&d), "the old inspected root's path is gone");
    assert!(!is_valid(&drv_a) && !is_valid(&drv_d), "their derivations are gone");
    for p in [&b, &z, &e, &shared, &busybox, &drv_b, &drv_shared] {
        assert!(is_valid(p), "{p} is kept");
    }
    assert!(!dir_a.exists() && !dir_d.exists(), "released root dirs removed");
    assert_eq!(root_dirs(&s).len(), 3, "{:?}", root_dirs(&s));
    let roots = run(Command::new("nix-store").args(["--query", "--roots", &b]), Duration::from_secs(60)).assert_ok();
    assert!(roots.stdout.contains(&*dir_of(&s, &b).to_string_lossy()), "Y's path is rooted by Y's root dir: {roots}");

    // A second run finds nothing more to do.
    let again = strata(&s, &pkgs, &["gc", "--older-than", "1h", "--delete"]).assert_ok();
    assert!(again.stdout.contains("nix store:     0 paths deleted"), "{again}");

    // Y pulls and runs; X is rebuilt (Nix builds gca again) and runs.
    let out = pull_and_run(&s, "gcb", "gcb", work.path());
    assert_eq!(out, format!("gcb {nonce}\n{nonce}-shared\n"));
    let builds_before = s.metric("strata_image_builds_total");
    let out = pull_and_run(&s, "gca", "gca", work.path());
    assert_eq!(out, format!("gca {nonce}\n{nonce}-shared\n"));
    assert_eq!(s.metric("strata_image_builds_total"), builds_before + 1.0, "X was rebuilt");
    assert!(is_valid(&a), "X's path is back");
}

/// gc runs while an image's package builds (its builder sleeps), with a
/// stale image released whose closure shares a path with the build: the
/// running build's paths are Nix's temporary roots, so they stay, and the
/// new image pulls and runs afterwards.
#[test]
fn gc_during_a_build_keeps_what_the_build_uses() {
    require_tool("nix-store");
    let work = tempfile::tempdir().unwrap();
    let nonce = nonce();
    // The builder sleeps until the test stops it, after gc: however slow
    // the machine, gc runs while the build does.
    let pkgs = pkgs(work.path(), &nonce, 600);
    let s = server(&pkgs, "");
    request(&s, "gcw", "latest");
    let w = own_path(&s, &nonce, "gcw");
    let shared = requisites(&w).into_iter().find(|p| p.ends_with(&format!("-{nonce}-shared"))).unwrap();
    let busybox = requisites(&w).into_iter().find(|p| p.ends_with(&format!("-{nonce}-busybox"))).unwrap();
    // Older than the window: its build let go of its claim.
    backdate_everything(&s);

    let layout = work.path().join("oci");
    let pull = {
        let (addr, layout) = (s.docker_ref("slow", "latest"), layout.clone());
        thread::spawn(move || {
            skopeo(&["copy", "--src-tls-verify=false", &addr, &format!("oci:{}:t", layout.display())], Duration::from_secs(300))
        })
    };
    let marker = format!("{nonce}-sleeping");
    wait_until(Duration::from_secs(120), "the slow builder runs", || !processes_with(&marker).is_empty());
    let done = strata(&s, &pkgs, &["gc", "--older-than", "1h", "--delete"]).assert_ok();
    assert!(!processes_with(&marker).is_empty(), "gc ran while the build did");
    stop_sleeping(&marker);
    assert!(done.stdout.contains("images:        0 kept, 1 removed"), "{done}");
    assert!(done.stdout.contains("1 released"), "{done}");
    assert!(!is_valid(&w), "the stale image's own path is gone:\n{}", done.stdout);
    assert!(is_valid(&shared) && is_valid(&busybox), "the paths the running build uses stay:\n{}", done.stdout);

    pull.join().unwrap().assert_ok();
    let rootfs = umoci_unpack(&layout, "t", &work.path().join("bundle"));
    let out = chroot(&rootfs, &["/bin/slow"]).assert_ok();
    assert_eq!(out.stdout, format!("slow {nonce}\n{nonce}-shared\n"));
    assert!(is_valid(&own_path(&s, &nonce, "slow")));
}

/// `[gc] enabled` in `strata serve`: the scheduled run removes a stale
/// image's root, its paths and the derivations that built them, in one
/// run, and counts the bytes on /metrics. The server marks accesses hourly
/// (the default) and so would serve the image from memory for the rest of
/// the hour: its own gc drops it from memory at once, and the next request
/// rebuilds it. Staleness is made by dating the stored objects back, past
/// a window of two hours.
#[test]
fn scheduled_gc_frees_the_nix_store_and_counts_it() {
    require_tool("nix-store");
    let work = tempfile::tempdir().unwrap();
    let nonce = nonce();
    let pkgs = pkgs(work.path(), &nonce, 0);
    let s = server_marking(&pkgs, 3600, "[gc]\nenabled = true\nolder_than = \"2h\"\ninterval = \"2s\"\n");
    assert!(s.log().contains("scheduled gc on"), "{}", s.log());
    request(&s, "gca", "latest");
    let a = own_path(&s, &nonce, "gca");
    // Its closure is gca, shared and busybox; the closure of its derivation
    // is gca.drv, shared.drv and busybox again (gca.drv names busybox, the
    // script's interpreter, as an input source). Nothing else roots or
    // refers to any of them, so all five go, in the first run that releases
    // the root: Nix deletes a path only with every path referring to it, so
    // the runtime closure alone could not take busybox while gca.drv stays.
    let closure = requisites(&a);
    assert_eq!(closure.len(), 3, "{closure:?}");
    let mut all = closure.clone();
    all.extend(requisites(&deriver(&a)));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5, "{all:?}");
    let size: u64 = all.iter().map(|p| nar_size(p)).sum();
    let dir = dir_of(&s, &a);
    let marks = s.storage.join("meta/access");
    wait_until(Duration::from_secs(300), "the access mark is written", || marks.is_dir() && !files_under(&marks).is_empty());
    // Blobs and the root first, the image record last: the run that finds
    // the image stale finds everything else old.
    for sub in ["blobs", "meta/layers", "meta/access"] {
        backdate_files(&s.storage.join(sub));
    }
    backdate(&dir);
    backdate_files(&s.storage.join("meta/images"));
    wait_until(Duration::from_secs(300), "a scheduled gc frees gca", || s.metric("strata_gc_bytes_freed_total{part=\"nix\"}") > 0.0);
    assert_eq!(s.metric("strata_gc_bytes_freed_total{part=\"nix\"}"), size as f64, "{}", s.log());
    assert!(s.metric("strata_gc_runs_total{outcome=\"ok\"}") >= 1.0);
    assert!(s.metric("strata_gc_bytes_freed_total{part=\"storage\"}") > 0.0, "the image's blobs went too");
    for p in &all {
        assert!(!is_valid(p), "{p} is gone:\n{}", s.log());
    }
    assert!(!dir.exists());
    assert!(s.log().contains("scheduled gc done"), "{}", s.log());
    assert!(s.log().contains("5 paths deleted (2 derivations)"), "{}", s.log());

    // Not from memory: rebuilt, and it pulls and runs.
    let builds_before = s.metric("strata_image_builds_total");
    let out = pull_and_run(&s, "gca", "gca", work.path());
    assert_eq!(out, format!("gca {nonce}\n{nonce}-shared\n"));
    assert_eq!(s.metric("strata_image_builds_total"), builds_before + 1.0, "gca was rebuilt:\n{}", s.log());
}
