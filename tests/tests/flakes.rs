//! A flake as the package source, with the tag as its revision; the
//! revision on the image; non-root images; `/usr/bin/env` and `/bin/sh`.
//!
//! The flake is a `git+file://` repository made here with two commits of
//! the demo set (the newer one changes what `hello` prints), pulled with
//! skopeo, unpacked with umoci and run under chroot.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

/// What the newer commit's `hello` prints; the older one's is the demo's.
const NEWER_HELLO: &str = "Hello from the newer commit!";

/// The test's flake: the demo set as `legacyPackages`, and in `packages` a
/// script that names coreutils and bash only in its closure (not as
/// requested packages) and runs through `#!/usr/bin/env sh`.
const FLAKE_NIX: &str = r#"{
  outputs = { self }:
    let
      system = "x86_64-linux";
      pkgs = import ./default.nix { inherit system; };
      bb = "${pkgs.busybox}/bin/busybox";
    in {
      legacyPackages.${system} = pkgs;
      packages.${system}.greeter = derivation {
        name = "greeter-1.0";
        inherit system;
        builder = bb;
        args = [ "sh" "-c" ''
          ${bb} mkdir -p $out/bin
          ${bb} printf '#!/usr/bin/env sh\n# needs ${pkgs.coreutils} ${pkgs.bashInteractive}\necho greetings\n' > $out/bin/greeter
          ${bb} chmod 555 $out/bin/greeter
        '' ];
      };
    };
}
"#;

fn git(repo: &Path, args: &[&str]) -> String {
    let out = run(
        Command::new(require_tool("git"))
            .arg("-C")
            .arg(repo)
            .args(["-c", "user.name=strata", "-c", "user.email=strata@127.0.0.1", "-c", "commit.gpgsign=false"])
            .args(args),
        Duration::from_secs(60),
    )
    .assert_ok();
    out.stdout.trim().to_string()
}

/// A git repository holding the flake: (its path, older commit, newer commit).
fn two_commit_flake(dir: &Path) -> (PathBuf, String, String) {
    let repo = dir.join("flake-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let demo = std::fs::read_to_string(repo_root().join("examples/demo-pkgs/default.nix")).unwrap();
    assert!(demo.contains("echo 'Hello, world!'"), "the demo's hello prints Hello, world!");
    std::fs::write(repo.join("default.nix"), &demo).unwrap();
    std::fs::write(repo.join("flake.nix"), FLAKE_NIX).unwrap();
    std::fs::copy(repo_root().join("examples/demo-pkgs/flake.lock"), repo.join("flake.lock")).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "demo set"]);
    let older = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("default.nix"), demo.replace("echo 'Hello, world!'", &format!("echo '{NEWER_HELLO}'"))).unwrap();
    git(&repo, &["commit", "-q", "-a", "-m", "hello says something else"]);
    let newer = git(&repo, &["rev-parse", "HEAD"]);
    (repo, older, newer)
}

fn flake_server(url: &str) -> Server {
    Server::start_with(ServerOptions {
        extra_toml: format!("[plugins.config.nixpkgs-source]\nflake = \"{url}\"\n"),
        // The harness points NIXERY_PKGS_PATH at the demo set; empty is unset.
        env: vec![("NIXERY_PKGS_PATH".into(), String::new())],
        ..ServerOptions::default()
    })
}

/// Pulls `name:tag`, unpacks it: the rootfs.
fn unpack(server: &Server, name: &str, tag: &str, work: &Path) -> PathBuf {
    let n = unique_suffix();
    let layout = work.join(format!("oci-{n}"));
    skopeo_copy(server, name, tag, &layout, "t").assert_ok();
    umoci_unpack(&layout, "t", &work.join(format!("bundle-{n}")))
}

#[test]
fn flake_tags_are_revisions_and_images_name_them() {
    let work = tempfile::tempdir().unwrap();
    let (repo, older, newer) = two_commit_flake(work.path());
    let url = format!("git+file://{}", repo.display());
    let server = flake_server(&url);

    // `latest` is the branch's head, a commit tag that commit: different
    // programs, each image labelled with its own revision.
    for (tag, rev, says) in [("latest", &newer, NEWER_HELLO), (older.as_str(), &older, "Hello, world!")] {
        let rootfs = unpack(&server, "shell/hello", tag, work.path());
        let hello = chroot(&rootfs, &["/bin/hello"]).assert_ok();
        assert_eq!(hello.stdout.trim(), says, "{tag}: {hello}");
        let config = skopeo_inspect(&server, "shell/hello", tag, &["--config"]);
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.revision"], rev.as_str(), "{tag}: {config}");
        assert_eq!(labels["org.opencontainers.image.source"], url.as_str(), "{tag}: {config}");
        let manifest = skopeo_inspect(&server, "shell/hello", tag, &["--raw"]);
        assert_eq!(manifest["annotations"]["org.opencontainers.image.revision"], rev.as_str(), "{manifest}");
    }

    // A short commit is the same commit, resolved in the repository.
    let short = &older[..7];
    let config = skopeo_inspect(&server, "hello", short, &["--config"]);
    assert_eq!(config["config"]["Labels"]["org.opencontainers.image.revision"], older.as_str(), "{config}");

    // /api/inspect and the SBOM tell the revision too.
    let inspect: Value = server.get(&format!("/api/inspect/shell/hello?tag={older}")).send().unwrap().json().unwrap();
    assert_eq!(inspect["revision"], older.as_str(), "{inspect}");
    assert_eq!(inspect["immutable"], true, "a full commit is immutable: {inspect}");
    let sbom = &inspect["built"]["sbom"]["blob_url"];
    let sbom: Value = server.get(sbom.as_str().unwrap_or_else(|| panic!("built with an SBOM: {inspect}"))).send().unwrap().json().unwrap();
    let comment = sbom["creationInfo"]["comment"].as_str().unwrap_or_default();
    assert!(comment.contains(&format!("at revision {older}")), "{comment}");

    // Revisions the repository does not have: 404 naming them.
    for tag in ["0123456789abcdef0123456789abcdef01234567", "abcdef0", "no-such-branch"] {
        let r = server
            .get(&format!("/v2/hello/manifests/{tag}"))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let (code, message, _) = spec_error(&r.bytes().unwrap());
        assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"), "{tag}: {message}");
        assert!(message.contains(tag), "{tag}: {message}");
    }
}

#[test]
fn nonroot_images_and_shebang_basics() {
    let work = tempfile::tempdir().unwrap();
    let (repo, _, newer) = two_commit_flake(work.path());
    let server = flake_server(&format!("git+file://{}", repo.display()));

    // shell/nonroot/<name>: runs as 1000:1000, a user named in passwd and
    // group, with a home it owns; /tmp stays open to all.
    let config = skopeo_inspect(&server, "shell/nonroot/hello", &newer, &["--config"]);
    assert_eq!(config["config"]["User"], "1000:1000", "{config}");
    let rootfs = unpack(&server, "shell/nonroot/hello", &newer, work.path());
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("user:x:1000:1000:") && l.contains(":/home/user:")), "{passwd}");
    assert!(passwd.lines().any(|l| l.starts_with("root:x:0:0:")), "{passwd}");
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "user:x:1000:"), "{group}");
    let home = std::fs::metadata(rootfs.join("home/user")).unwrap();
    assert!(home.is_dir() && home.uid() == 1000 && home.gid() == 1000, "home/user: {}:{}", home.uid(), home.gid());
    assert_eq!(std::fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    // The user can write its home, and not root's files.
    let as_user = run(
        Command::new(require_tool("chroot"))
            .args(["--userspec=1000:1000"])
            .arg(&rootfs)
            .args(["/bin/sh", "-c", "echo x > /home/user/f && cat /home/user/f && id -u && ! touch /etc/passwd 2>/dev/null"])
            .env_clear()
            .env("PATH", "/bin:/usr/bin"),
        Duration::from_secs(60),
    )
    .assert_ok();
    assert_eq!(as_user.stdout.split_whitespace().collect::<Vec<_>>(), ["x", "1000"], "{as_user}");
    // Without the word, root as before.
    let config = skopeo_inspect(&server, "shell/hello", &newer, &["--config"]);
    assert!(config["config"]["User"].as_str().unwrap_or_default().is_empty(), "{config}");

    // /usr/bin/env and /bin/sh from the requested packages...
    let rootfs = unpack(&server, "shell/hello", "latest", work.path());
    let env = chroot(&rootfs, &["/usr/bin/env", "sh", "-c", "echo env works"]).assert_ok();
    assert_eq!(env.stdout.trim(), "env works", "{env}");
    let sh = chroot(&rootfs, &["/bin/sh", "-c", "echo sh works"]).assert_ok();
    assert_eq!(sh.stdout.trim(), "sh works", "{sh}");
    // ... and from the closure when no requested package brings them: the
    // greeter's `#!/usr/bin/env sh` runs. (`packages.<system>` resolves too.)
    let rootfs = unpack(&server, "greeter", "latest", work.path());
    for link in ["usr/bin/env", "bin/sh"] {
        let target = std::fs::read_link(rootfs.join(link)).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert!(target.starts_with("/nix/store/"), "{link} -> {}", target.display());
    }
    let greeter = chroot(&rootfs, &["/bin/greeter"]).assert_ok();
    assert_eq!(greeter.stdout.trim(), "greetings", "{greeter}");
    // Never over a package's own file: busybox's /bin/sh stays its own.
    let rootfs = unpack(&server, "busybox", "latest", work.path());
    let sh = std::fs::read_link(rootfs.join("bin/sh")).unwrap();
    assert!(sh.to_string_lossy().contains("-busybox-"), "bin/sh -> {}", sh.display());
}

#[test]
fn unfree_packages_by_allow_list() {
    // The demo set refuses `unrar` (unfree) as nixpkgs does; `allow_unfree`
    // reaches its `config` as nixpkgs' allowUnfreePredicate.
    let path = repo_root().join("examples/demo-pkgs");
    let server_allowing = |list: &str| {
        Server::start_with(ServerOptions {
            extra_toml: format!("[plugins.config.nixpkgs-source]\npath = \"{}\"\nallow_unfree = {list}\n", path.display()),
            env: vec![("NIXERY_PKGS_PATH".into(), String::new())],
            ..ServerOptions::default()
        })
    };
    let server = server_allowing(r#"["hello"]"#);
    let (status, body) = get_manifest(&server, "unrar");
    let (code, message, detail) = spec_error(&body);
    assert_eq!((status, code.as_str()), (404, "MANIFEST_UNKNOWN"), "{message}");
    let reason = detail["unavailable"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("unfree license"), "the set's own reason: {detail}");
    drop(server);

    let server = server_allowing(r#"["unrar"]"#);
    let (status, body) = get_manifest(&server, "unrar");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _) = get_manifest(&server, "hello");
    assert_eq!(status, 200);
    drop(server);

    let server = server_allowing("true");
    let (status, body) = get_manifest(&server, "unrar");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}
