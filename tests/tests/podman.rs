//! podman as a client: `podman pull` over plain HTTP, `podman run` of the
//! image, and the pulled digest is one the registry serves.
//!
//! podman here is cut off from the machine's own: its storage, run state,
//! locks, temporary files and every configuration file it reads (containers,
//! storage, registries, signature policy, credentials) live in one temporary
//! directory that is removed afterwards.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

#[test]
fn podman_pulls_and_runs_hello() {
    let server = Server::start();
    let podman = Podman::new();
    let image = format!("{}/shell/hello", server.host());

    let policy = podman.policy();
    let pull = podman.run(&["pull", "--tls-verify=false", "--signature-policy", &policy, &image], Duration::from_secs(300));
    assert!(pull.success(), "podman pull: {pull}\n--- strata log ---\n{}", server.log());

    // Podman raises the container's RLIMIT_NOFILE and RLIMIT_NPROC above
    // this machine's hard limits, which root without CAP_SYS_RESOURCE may
    // not do (runc: "error setting rlimit type 7: operation not
    // permitted"): the limits are given. runc is named so that a machine
    // with crun installed runs the runtime tested here.
    let cgroup = podman.cgroup_parent();
    let limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
    let args =
        [&["run", "--rm", "--runtime", "runc", "--network", "none", "--cgroup-parent", &cgroup][..], &limits, &[&image, "hello"]];
    let run = podman.run(&args.concat(), Duration::from_secs(120)).assert_ok();
    assert_eq!(run.stdout, "Hello, world!\n", "{run}");

    // podman (containers/image) lists the OCI manifest first of its six
    // Accept lines, so the digest it records is that of the OCI manifest.
    let inspect = podman.run(&["image", "inspect", &image], Duration::from_secs(30)).assert_ok();
    let info: Value = serde_json::from_str(&inspect.stdout).unwrap();
    let r = server
        .get("/v2/shell/hello/manifests/latest")
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    let oci_digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    assert_eq!(info[0]["RepoDigests"], serde_json::json!([format!("{image}@{oci_digest}")]), "{}", inspect.stdout);
    assert_eq!(info[0]["Digest"], serde_json::json!(oci_digest));
    assert_eq!(info[0]["Config"]["Cmd"], serde_json::json!(["bash"]), "{}", info[0]["Config"]);
}

/// A tag served for amd64 and arm64 (tests/tests/platforms.rs): `podman
/// pull --arch arm64` gets the arm64 image, whose `whichsys` says it was
/// built for aarch64-linux (with amd64 binaries here: Nix's
/// `extra-platforms`); a plain pull gets the amd64 one.
#[test]
fn podman_pulls_each_platform_of_an_index() {
    let work = tempfile::tempdir().unwrap();
    let server = two_platform_server(work.path(), &unique_suffix(), None);
    let podman = Podman::new();
    let image = format!("{}/whichsys", server.host());
    let policy = podman.policy();
    let cgroup = podman.cgroup_parent();
    for (arch, system) in [("arm64", "aarch64-linux"), ("", "x86_64-linux")] {
        let mut pull = vec!["pull", "--quiet", "--tls-verify=false", "--signature-policy", &policy];
        if !arch.is_empty() {
            pull.extend(["--arch", arch]);
        }
        pull.push(&image);
        let out = podman.run(&pull, Duration::from_secs(300));
        assert!(out.success(), "podman {pull:?}: {out}\n--- strata log ---\n{}", server.log());
        // By the id it printed: the name alone would make podman look for
        // the host's platform among local images.
        let id = out.stdout.trim().to_string();
        let inspect = podman.run(&["image", "inspect", &id], Duration::from_secs(30)).assert_ok();
        let info: Value = serde_json::from_str(&inspect.stdout).unwrap();
        assert_eq!(info[0]["Architecture"], if arch.is_empty() { "amd64" } else { arch }, "{}", inspect.stdout);
        let limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
        let args = [&["run", "--rm", "--runtime", "runc", "--network", "none", "--cgroup-parent", &cgroup][..], &limits, &[&id, "whichsys"]];
        let run = podman.run(&args.concat(), Duration::from_secs(120)).assert_ok();
        assert_eq!(run.stdout.trim(), system, "{run}");
    }
}

/// A podman with everything it keeps or reads in one temporary directory.
struct Podman {
    podman: PathBuf,
    dir: tempfile::TempDir,
    /// Directories podman 4.3 creates as root whatever its configuration
    /// (netavark's run directory) and that did not exist before: removed on
    /// drop if empty.
    created: Vec<PathBuf>,
}

impl Podman {
    fn new() -> Podman {
        require_root("podman with its own storage");
        let podman = require_tool("podman");
        require_tool("runc");
        require_tool("conmon");
        // Short paths: conmon's sockets live under the run root.
        let dir = tempfile::Builder::new().prefix("pdm").tempdir_in("/tmp").expect("temp dir");
        let d = dir.path();
        // File locks in our own tmp dir instead of /dev/shm/libpod_lock;
        // pulled blobs spool here instead of /var/tmp.
        let containers_conf = format!(
            "[engine]\nlock_type = \"file\"\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\n\
             tmp_dir = \"{}\"\nvolume_path = \"{}\"\nimage_copy_tmp_dir = \"{}\"\n\
             [network]\nnetwork_config_dir = \"{}\"\n",
            d.join("t").display(),
            d.join("v").display(),
            d.join("c").display(),
            d.join("n").display(),
        );
        std::fs::write(d.join("containers.conf"), containers_conf).unwrap();
        // Storage of its own; podman refuses a storage.conf without both
        // roots.
        let storage_conf = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d.join("g").display(),
            d.join("r").display()
        );
        std::fs::write(d.join("storage.conf"), storage_conf).unwrap();
        // No search registries, no mirrors: only the fully qualified names
        // the test gives.
        std::fs::write(d.join("registries.conf"), "unqualified-search-registries = []\n").unwrap();
        std::fs::write(d.join("policy.json"), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
        // No credentials (podman wants the file to exist).
        std::fs::write(d.join("auth.json"), "{}\n").unwrap();
        for sub in ["t", "v", "c", "n", "h"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let created = ["/run/containers", "/run/containers/networks"].iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
        Podman { podman, dir, created }
    }

    /// A cgroup of the test's own (podman's default, `libpod_parent`, is
    /// never removed).
    fn cgroup_parent(&self) -> String {
        format!("/{}", self.dir.path().file_name().unwrap().to_string_lossy())
    }

    fn policy(&self) -> String {
        self.dir.path().join("policy.json").display().to_string()
    }

    fn command(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.podman);
        cmd.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("HOME", d.join("h"))
            .env("TMPDIR", d.join("c"))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION");
        cmd
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run(self.command().args(args), timeout)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let rm = self.run(&["rm", "--all", "--force"], Duration::from_secs(60));
        let rmi = self.run(&["rmi", "--all", "--force"], Duration::from_secs(60));
        for out in [rm, rmi] {
            if !out.success() {
                eprintln!("podman clean-up: {out}");
            }
        }
        unmount_under(self.dir.path());
        remove_cgroup(&self.cgroup_parent());
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
