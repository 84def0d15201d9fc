//! Strata as operators deploy it: an unprivileged user (`strata-e2e`, in
//! `nix-users`) against a running `nix-daemon` with `NIX_REMOTE=daemon`.
//! Lookups, builds, closures and NAR hashes, GC roots and `strata gc
//! --delete` all go through the daemon; the server cannot write outside its
//! own directories; and `strata serve` refuses a setup that cannot work
//! before the first request.
//!
//! The daemon (tests/src/nixdaemon.rs) has a socket of its own on the
//! machine's store, which other test binaries use at the same time as root:
//! the paths that are to go belong to a package set of this test's own
//! (a nonce in every name), as in nix_gc.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;
use strata_e2e::nixdaemon::{identity_of, strata_user, NixDaemon, NIX_USERS, USER};
use strata_e2e::*;

/// This test's package set: busybox under a store name of its own (the
/// scripts' interpreter), `shared`, and `mua` and `muo`, each a script
/// printing its name and `shared`'s id.
fn pkgs(dir: &Path, nonce: &str) -> PathBuf {
    let bindings = format!(
        r#"  shared = mk "shared" "mkdir -p $out; echo {nonce}-shared > $out/id" {{ }};
  own = name: mk name ''
    mkdir -p $out/bin
    head -c 65536 /dev/urandom > $out/blob
    printf '#!%s sh\necho %s {nonce}\n%s cat %s/id\n' "${{bb}}" "${{name}}" "${{bb}}" "$shared" > $out/bin/${{name}}
    chmod 755 $out/bin/${{name}}
  '' {{ inherit shared; }};
"#
    );
    let attrs = format!(
        r#"  mua = own "mua";
  muo = own "muo";
"#
    );
    write_busybox_set(dir, nonce, &bindings, &attrs)
}

/// A directory root owns and others may read (the package set lives there):
/// tempfile makes its directories 0700.
fn readable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The environment of the server's user: its home is `/nonexistent` (as
/// in its passwd entry), so anything that wanted one would fail here.
fn user_env(daemon: &NixDaemon, pkgs: &Path) -> Vec<(String, String)> {
    let mut env = daemon.env();
    env.push(("HOME".into(), "/nonexistent".into()));
    env.push(("USER".into(), USER.into()));
    env.push(("NIXERY_PKGS_PATH".into(), pkgs.display().to_string()));
    env
}

/// `strata ARGS` with the server's config, as `user` with `env`.
fn strata_as(user: &RunAs, env: &[(String, String)], config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(strata_bin());
    for var in ["PORT", "NIXERY_CHANNEL", "NIXERY_PKGS_REPO", "NIXERY_STORAGE_BACKEND", "STORAGE_PATH", "STRATA_CONFIG"] {
        cmd.env_remove(var);
    }
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("STRATA_NIX_OFFLINE", "1")
        .env("NIX_CONFIG", "substituters =")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/");
    user.apply(&mut cmd);
    run(&mut cmd, Duration::from_secs(300))
}

/// The out links of the server's root directories: (link, target).
fn out_links(server: &Server) -> Vec<(PathBuf, String)> {
    files_under(&server.nix_work_dir().join("gcroots"))
        .into_iter()
        .filter_map(|l| Some((l.clone(), std::fs::read_link(&l).ok()?.to_string_lossy().into_owned())))
        .collect()
}

/// Links in Nix's `gcroots/auto` (indirect roots, made by the daemon)
/// pointing at `link`.
fn indirect_roots_to(link: &Path) -> Vec<PathBuf> {
    files_under(Path::new("/nix/var/nix/gcroots/auto"))
        .into_iter()
        .filter(|a| std::fs::read_link(a).is_ok_and(|t| t == link))
        .collect()
}

/// Runs `sh -c SCRIPT sh PATH` with exactly `who`'s identity; whether it
/// succeeded, and what the shell said.
fn as_identity(who: &RunAs, script: &str, path: &Path) -> (bool, String) {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script, "sh"]).arg(path).env_clear().env("PATH", "/usr/bin:/bin");
    who.apply(&mut cmd);
    let out = run(&mut cmd, Duration::from_secs(30));
    (out.success(), out.stderr.trim().to_string())
}

/// A real write: a new file in a directory (removed again), or an existing
/// file opened for appending with nothing appended.
fn can_write(who: &RunAs, path: &Path) -> (bool, String) {
    if path.is_dir() {
        as_identity(who, r#"f="$1/.strata-e2e-probe-$$"; : > "$f" && rm -f "$f""#, path)
    } else {
        as_identity(who, r#": >> "$1""#, path)
    }
}

/// Everything under the file systems of `/` and `/nix` (not following
/// links, not sockets: to "write" one is to connect to it) that `who` may
/// write, by `find -writable` run as `who`.
fn writable_by(who: &RunAs) -> Vec<PathBuf> {
    let mut cmd = Command::new("find");
    cmd.args(["/", "/nix", "-xdev", "!", "-type", "l", "!", "-type", "s", "-writable", "-print"]);
    who.apply(&mut cmd);
    // find exits 1 over directories it may not read: expected.
    let out = run(&mut cmd, Duration::from_secs(300));
    assert!(!out.timed_out, "{out}");
    let mut found: Vec<PathBuf> = out.stdout.lines().map(PathBuf::from).collect();
    found.sort();
    found.dedup();
    found
}

/// A directory every user may write, shared by all (the sticky bit): /tmp,
/// /var/tmp, /run/lock. The unit's `PrivateTmp=` and `ProtectSystem=strict`
/// take them from the service.
fn in_shared_temp(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().any(|a| std::fs::metadata(a).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o1002 == 0o1002))
}

/// The whole life of an image with Strata unprivileged: the server (uid of
/// `strata-e2e`, group `nix-users`, no capabilities) looks up, builds,
/// reads the closure and NAR hashes through the daemon; its out links are
/// the daemon's indirect roots; the image pulls and runs. Then `strata gc
/// --delete`, as that user, frees the image's own store path through the
/// daemon and keeps what something else roots (a root of root's on `muo`,
/// and through it `shared` and busybox), which `nix-store
/// --check-validity` confirms; the image is rebuilt on the next pull.
/// Throughout, the server's identity can write its directories and nothing
/// that matters outside them.
#[test]
fn unprivileged_strata_builds_serves_and_collects_through_the_daemon() {
    require_tool("nix-store");
    let daemon = NixDaemon::start();
    let user = strata_user(true);
    let work = readable_tempdir();
    let nonce = format!("strata-mu-{}", unique_suffix());
    let pkgs = pkgs(work.path(), &nonce);
    let env = user_env(&daemon, &pkgs);
    let s = Server::start_with(ServerOptions {
        extra_toml: "[cache]\naccess_mark_secs = 1\n".into(),
        env: env.clone(),
        user: Some(user.clone()),
        ..Default::default()
    });
    let log = s.log();
    assert!(log.contains("builds go through the nix-daemon") && log.contains(USER), "{log}");
    assert!(!log.contains("runs as root"), "{log}");

    // The server's identity, as the kernel has it.
    let (who, cap_eff, cap_prm) = identity_of(s.pid());
    assert_eq!((who.uid, who.gid), (user.uid, user.gid), "the server runs as {USER}");
    assert_eq!(who.groups, user.groups, "its one supplementary group is {NIX_USERS}");
    assert_eq!((cap_eff, cap_prm), (0, 0), "no capabilities");

    // Lookup, build, closure, NAR hashes: the image pulls and runs.
    let out = pull_and_run(&s, "mua/muo", "mua", work.path());
    assert_eq!(out, format!("mua {nonce}\n{nonce}-shared\n"));
    let links = out_links(&s);
    let find = |name: &str| {
        links.iter().find(|(_, t)| t.ends_with(&format!("-{nonce}-{name}"))).cloned().unwrap_or_else(|| panic!("no out link to {name}: {links:?}"))
    };
    let ((link_a, a), (_, o)) = (find("mua"), find("muo"));
    let closure = requisites(&a);
    let shared = closure.iter().find(|p| p.ends_with(&format!("-{nonce}-shared"))).cloned().expect("shared in mua's closure");
    let busybox = closure.iter().find(|p| p.ends_with(&format!("-{nonce}-busybox"))).cloned().expect("busybox in mua's closure");
    // The out links are the user's; the daemon registered them.
    let meta = std::fs::symlink_metadata(&link_a).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), user.uid, "{} is {USER}'s", link_a.display());
    let auto = indirect_roots_to(&link_a);
    assert_eq!(auto.len(), 1, "one indirect root in gcroots/auto points at {}", link_a.display());
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(&auto[0]).unwrap()), 0, "made by the daemon (root)");
    // The NAR hashes Strata read through the daemon are Nix's: `strata
    // build --sbom`, as the user, lists mua's among the SBOM's checksums.
    let sbom = s.temp_dir().join("mua.spdx.json");
    let out_dir = format!("oci:{}:t", s.temp_dir().join("built").display());
    let sbom_arg = sbom.display().to_string();
    strata_as(&user, &env, &s.temp_dir().join("strata.toml"), &["build", "mua/muo", "--quiet", "--output", &out_dir, "--sbom", &sbom_arg])
        .assert_ok();
    let nar = run(Command::new("nix-store").args(["--query", "--hash", &a]), Duration::from_secs(60)).assert_ok();
    let hex = run(
        Command::new("nix").args(["--extra-experimental-features", "nix-command", "hash", "to-base16", nar.stdout.trim()]),
        Duration::from_secs(60),
    )
    .assert_ok();
    let sbom_text = std::fs::read_to_string(&sbom).unwrap();
    assert!(sbom_text.contains(hex.stdout.trim()), "the SBOM has mua's NAR hash {}: {sbom_text}", hex.stdout.trim());

    // Someone else on the machine roots muo (root, directly on the store).
    let outside = work.path().join("outside-root");
    run(Command::new("nix-store").args(["--realise", &o, "--add-root"]).arg(&outside).arg("--indirect"), Duration::from_secs(60))
        .assert_ok();

    // What the server's identity can write.
    let mine = [s.temp_dir().to_path_buf(), s.storage.clone(), s.nix_work_dir()];
    for dir in &mine {
        let (ok, why) = can_write(&who, dir);
        assert!(ok, "{USER} writes its own {}: {why}", dir.display());
    }
    let store_file = PathBuf::from(&a).join("bin/mua");
    let must_not: Vec<PathBuf> = [
        "/nix/store",
        "/nix/var/nix/db",
        "/nix/var/nix/db/db.sqlite",
        "/nix/var/nix/gcroots",
        "/nix/var/nix/gcroots/auto",
        "/nix/var/nix/temproots",
        "/nix/var/nix/profiles",
        "/etc",
        "/etc/nix/nix.conf",
        "/usr/local/bin",
        "/var/lib",
        "/root",
    ]
    .into_iter()
    .map(PathBuf::from)
    .chain([
        store_file,
        daemon.socket.parent().unwrap().to_path_buf(),
        strata_bin(),
        strata_bin().parent().unwrap().to_path_buf(),
        repo_root(),
        s.temp_dir().join("strata.toml"),
        pkgs.join("default.nix"),
        outside.clone(),
        work.path().to_path_buf(),
    ])
    .collect();
    for p in &must_not {
        let (ok, why) = can_write(&who, p);
        assert!(!ok, "{USER} must not write {}", p.display());
        assert!(why.contains("Permission denied") || why.contains("Read-only"), "{}: {why}", p.display());
    }
    // And the full inventory: whatever else it may write is shared temp
    // space (the unit gives it private /tmp and /var/tmp, and a read-only
    // system), or the per-user directories Nix's daemon made for it.
    let per_user = [format!("/nix/var/nix/profiles/per-user/{USER}"), format!("/nix/var/nix/gcroots/per-user/{USER}")];
    let elsewhere: Vec<PathBuf> = writable_by(&who)
        .into_iter()
        .filter(|p| !mine.iter().any(|d| p.starts_with(d)))
        .filter(|p| !per_user.iter().any(|d| p.starts_with(d)))
        .filter(|p| !in_shared_temp(p))
        // Debian's tmpfiles.d makes the machine's socket directory 0770
        // root:nix-users; docs/configuration.md says to make it 0750 (the
        // unit's ProtectSystem=strict already makes /nix read-only to it).
        .filter(|p| p != Path::new("/nix/var/nix/daemon-socket"))
        .collect();
    assert!(elsewhere.is_empty(), "{USER} (as the server) may write outside its directories: {elsewhere:#?}");

    // gc as the same user, once the image is older than the window (two
    // access-mark intervals; a longer wait only makes it older).
    thread::sleep(Duration::from_secs(4));
    let config = s.temp_dir().join("strata.toml");
    let done = strata_as(&user, &env, &config, &["gc", "--older-than", "2s", "--delete"]).assert_ok();
    assert!(done.stdout.contains("images:        0 kept, 1 removed"), "{done}");
    assert!(done.stdout.contains("1 released"), "{done}");
    eprintln!("gc as {USER} through the daemon:\n{}", done.stdout);
    assert!(!is_valid(&a), "mua's path is freed:\n{}", done.stdout);
    for p in [&o, &shared, &busybox] {
        assert!(is_valid(p), "{p} stays: rooted elsewhere\n{}", done.stdout);
    }
    assert!(!link_a.exists(), "the released out link is gone");
    assert!(indirect_roots_to(&link_a).is_empty(), "and with it its indirect root (the daemon removes stale ones)");
    let second = strata_as(&user, &env, &config, &["gc", "--older-than", "2s", "--delete"]).assert_ok();
    assert!(second.stdout.contains("nix store:     0 paths deleted"), "{second}");

    // Rebuilt through the daemon on the next pull.
    let out = pull_and_run(&s, "mua/muo", "mua", work.path());
    assert_eq!(out, format!("mua {nonce}\n{nonce}-shared\n"));
    assert!(is_valid(&a), "mua is back");

    // Files the user owns anywhere: only in its directories (and Nix's
    // per-user ones). Its home was /nonexistent throughout.
    let owned = run(Command::new("find").args(["/", "/nix", "-xdev", "-user", &user.uid.to_string(), "-print"]), Duration::from_secs(300));
    let stray: Vec<&str> = owned
        .stdout
        .lines()
        .filter(|p| !mine.iter().any(|d| Path::new(p).starts_with(d)))
        .filter(|p| !per_user.iter().any(|d| Path::new(p).starts_with(d)))
        .collect();
    assert!(stray.is_empty(), "{USER} left files outside its directories: {stray:#?}");
    assert!(!daemon.log().is_empty(), "the daemon served the connections");
}

/// A config for `strata serve` whose directories are `work`'s.
fn serve_config(work: &Path, storage: &Path, nix: &Path) -> PathBuf {
    let config = work.join("strata.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\n\n[storage]\nurl = \"file://{}\"\n\n[nix]\nwork_dir = \"{}\"\n", storage.display(), nix.display()),
    )
    .unwrap();
    config
}

/// `strata serve` that must exit at start-up: its stderr.
fn refused(user: &RunAs, env: &[(String, String)], config: &Path) -> String {
    let out = strata_as(user, env, config, &["serve"]);
    assert!(!out.success() && !out.timed_out, "strata serve must refuse to start: {out}");
    let line = out.stderr.lines().find(|l| l.starts_with("strata: ")).unwrap_or_else(|| panic!("no error line: {out}"));
    line.to_string()
}

/// Start-up refuses what cannot work, in one line each, before any
/// request: a user outside `nix-users` (the error names the socket and the
/// group), no daemon on the socket, a work dir and a storage dir the user
/// may not write. Root against the daemon serves, with a warning that
/// recommends the unprivileged setup.
#[test]
fn serve_refuses_a_setup_that_cannot_work_at_start_up() {
    let daemon = NixDaemon::start();
    let work = readable_tempdir();
    let pkgs = pkgs(work.path(), &format!("strata-mu-{}", unique_suffix()));
    let env = user_env(&daemon, &pkgs);
    let member = strata_user(true);
    let outsider = strata_user(false);
    // Directories the user owns, in a directory it may enter.
    let own = |name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::chown(&d, Some(member.uid), Some(member.gid)).unwrap();
        d
    };
    let (storage, nix) = (own("storage"), own("nix"));
    let config = serve_config(work.path(), &storage, &nix);

    let line = refused(&outsider, &env, &config);
    let socket = daemon.socket.display().to_string();
    assert!(line.contains(&socket) && line.contains(NIX_USERS) && line.contains(USER), "names the socket, the group and the user: {line}");
    assert!(line.contains("Permission denied"), "{line}");

    let elsewhere = vec![("NIX_DAEMON_SOCKET_PATH".to_string(), daemon.dir().join("sock/none").display().to_string())];
    let env_nothing: Vec<_> = env.iter().filter(|(k, _)| k != "NIX_DAEMON_SOCKET_PATH").cloned().chain(elsewhere).collect();
    let line = refused(&member, &env_nothing, &config);
    assert!(line.contains("nothing listens on") && line.contains("sock/none"), "{line}");

    let root_owned = work.path().join("root-owned");
    std::fs::create_dir_all(&root_owned).unwrap();
    let line = refused(&member, &env, &serve_config(work.path(), &storage, &root_owned));
    assert!(line.contains(&root_owned.display().to_string()) && line.contains("[nix] work_dir") && line.contains(USER), "{line}");
    assert!(line.contains("Permission denied"), "{line}");
    let line = refused(&member, &env, &serve_config(work.path(), &root_owned, &nix));
    assert!(line.contains(&root_owned.display().to_string()) && line.contains("[storage] url"), "{line}");

    // The member gets past the checks (and serves: the harness waits for /v2/).
    let s = Server::start_with(ServerOptions { env: env.clone(), user: Some(member.clone()), ..Default::default() });
    assert!(!s.log().contains("WARN"), "{}", s.log());
    drop(s);
    // Root against the daemon: served, and warned.
    let s = Server::start_with(ServerOptions { env, ..Default::default() });
    let log = s.log();
    assert!(log.contains("strata runs as root") && log.contains("unprivileged user") && log.contains(NIX_USERS), "{log}");
}
