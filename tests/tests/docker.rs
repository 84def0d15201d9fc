//! The Docker engine as a client: it HEADs the manifest by tag, fetches it by
//! digest, pulls the layers and runs the image. A private dockerd is started
//! per test; the tests take turns.

use std::time::Duration;
use strata_e2e::*;

#[test]
fn docker_pulls_and_runs_hello() {
    let _turn = docker_lock();
    let server = Server::start();
    let engine = Dockerd::start();
    let image = format!("{}/shell/hello", server.host());

    let pull = engine.docker(&["pull", &image], Duration::from_secs(300));
    assert!(pull.success(), "docker pull: {pull}\n--- strata log ---\n{}", server.log());

    let run = engine.docker(&["run", "--rm", "--network", "none", &image, "hello"], Duration::from_secs(120)).assert_ok();
    assert_eq!(run.stdout, "Hello, world!\n", "{run}");

    // Docker's digest is one the registry serves. Which of the two formats
    // Docker gets depends on the order of its Accept headers, which Docker
    // 20.10 takes from a Go map: either is right.
    let inspect = engine.docker(&["image", "inspect", &image], Duration::from_secs(30)).assert_ok();
    let info: Value = serde_json::from_str(&inspect.stdout).unwrap();
    let repo_digest = info[0]["RepoDigests"][0].as_str().unwrap_or_default().to_string();
    let served: Vec<String> = [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
    .iter()
    .map(|accept| {
        let r = server.get("/v2/shell/hello/manifests/latest").header("Accept", *accept).send().unwrap();
        r.headers()["docker-content-digest"].to_str().unwrap().to_string()
    })
    .collect();
    assert!(served.iter().any(|d| repo_digest.ends_with(d.as_str())), "RepoDigests {repo_digest} vs served {served:?}");
    assert_eq!(info[0]["Config"]["Cmd"], serde_json::json!(["bash"]), "{}", info[0]["Config"]);
}

#[test]
fn docker_run_without_a_command_opens_bash() {
    let _turn = docker_lock();
    let server = Server::start();
    let engine = Dockerd::start();
    let image = format!("{}/shell/hello", server.host());
    // `docker run` pulls by itself.
    let run = engine.docker_with_input(
        &["run", "--rm", "-i", "--network", "none", &image],
        b"echo from-bash\nhello\nexit\n",
        Duration::from_secs(300),
    );
    assert!(run.success(), "docker run: {run}\n--- strata log ---\n{}", server.log());
    assert_eq!(run.stdout, "from-bash\nHello, world!\n", "{run}");
}

/// A tag served for amd64 and arm64 (tests/tests/platforms.rs): `docker
/// pull --platform linux/arm64` gets the arm64 image, a plain pull the
/// host's, and each runs what Nix built for its system (the arm64 one holds
/// amd64 binaries here: Nix's `extra-platforms`).
#[test]
fn docker_pulls_each_platform_of_an_index() {
    let _turn = docker_lock();
    let work = tempfile::tempdir().unwrap();
    let server = two_platform_server(work.path(), &unique_suffix(), None);
    let engine = Dockerd::start();
    let image = format!("{}/whichsys", server.host());
    for (platform, arch, system) in [("linux/arm64", "arm64", "aarch64-linux"), ("", "amd64", "x86_64-linux")] {
        let mut pull = vec!["pull"];
        let mut run = vec!["run", "--rm", "--network", "none"];
        if !platform.is_empty() {
            pull.extend(["--platform", platform]);
            run.extend(["--platform", platform]);
        }
        pull.push(&image);
        run.extend([image.as_str(), "whichsys"]);
        let out = engine.docker(&pull, Duration::from_secs(300));
        assert!(out.success(), "docker {pull:?}: {out}\n--- strata log ---\n{}", server.log());
        let inspect = engine.docker(&["image", "inspect", &image], Duration::from_secs(30)).assert_ok();
        let info: Value = serde_json::from_str(&inspect.stdout).unwrap();
        assert_eq!(info[0]["Architecture"], arch, "{}", inspect.stdout);
        let out = engine.docker(&run, Duration::from_secs(120)).assert_ok();
        assert_eq!(out.stdout.trim(), system, "{out}");
    }
}
