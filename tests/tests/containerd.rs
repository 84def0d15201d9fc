//! containerd as a client, driven with `ctr`: `ctr image pull --plain-http`
//! and `ctr run` of the image. A private containerd is started per test, on
//! its own socket, root and state directories.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use strata_e2e::*;

#[test]
fn ctr_pulls_and_runs_hello() {
    let server = Server::start();
    let containerd = Containerd::start();
    let image = format!("{}/shell/hello:latest", server.host());

    let pull = containerd.ctr(&["image", "pull", "--plain-http", &image], Duration::from_secs(300));
    assert!(pull.success(), "ctr image pull: {pull}\n--- strata log ---\n{}", server.log());

    let run = containerd.ctr_run(&image, "hello-1", &["hello"], Duration::from_secs(120)).assert_ok();
    assert_eq!(run.stdout, "Hello, world!\n", "{run}");

    // ctr sends one Accept line with the Docker manifest first, so the
    // digest it resolved the tag to is that of the Docker manifest.
    let images = containerd.ctr(&["image", "ls"], Duration::from_secs(30)).assert_ok();
    let line = images.stdout.lines().find(|l| l.starts_with(&image)).unwrap_or_else(|| panic!("{image} not listed: {images}"));
    let r = server
        .get("/v2/shell/hello/manifests/latest")
        .header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .unwrap();
    let docker_digest = r.headers()["docker-content-digest"].to_str().unwrap().to_string();
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1..3], ["application/vnd.docker.distribution.manifest.v2+json", docker_digest.as_str()], "{images}");
}

/// A tag served for amd64 and arm64 (tests/tests/platforms.rs): `ctr
/// image pull --platform linux/arm64` fetches the arm64 image's config and
/// layers (and not the amd64 config), and runs what Nix built for
/// aarch64-linux (amd64 binaries here: Nix's `extra-platforms`).
#[test]
fn ctr_pulls_the_arm64_image_of_an_index() {
    let work = tempfile::tempdir().unwrap();
    let server = two_platform_server(work.path(), &unique_suffix(), None);
    let containerd = Containerd::start();
    let image = format!("{}/whichsys:latest", server.host());
    let pull = containerd.ctr(&["image", "pull", "--plain-http", "--platform", "linux/arm64", &image], Duration::from_secs(300));
    assert!(pull.success(), "ctr image pull: {pull}\n--- strata log ---\n{}", server.log());

    // What the registry serves for each platform, through the Docker list
    // ctr asks for.
    let list: Value = server
        .get("/v2/whichsys/manifests/latest")
        .header("Accept", "application/vnd.docker.distribution.manifest.list.v2+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let config_of = |arch: &str| {
        let entry = list["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == arch).unwrap();
        let m: Value = server.get(&format!("/v2/whichsys/manifests/{}", entry["digest"].as_str().unwrap())).send().unwrap().json().unwrap();
        let layers: Vec<String> = m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
        (m["config"]["digest"].as_str().unwrap().to_string(), layers)
    };
    let (arm_config, arm_layers) = config_of("arm64");
    let (amd_config, _) = config_of("amd64");
    let content = containerd.ctr(&["content", "ls", "--quiet"], Duration::from_secs(30)).assert_ok().stdout;
    let held: Vec<&str> = content.lines().collect();
    assert!(held.contains(&arm_config.as_str()), "arm64 config {arm_config} not fetched: {content}");
    assert!(!held.contains(&amd_config.as_str()), "amd64 config {amd_config} fetched too: {content}");
    for layer in &arm_layers {
        assert!(held.contains(&layer.as_str()), "arm64 layer {layer} not fetched: {content}");
    }

    let run = containerd.ctr_run_on(&image, "whichsys-1", &["whichsys"], Some("linux/arm64"), Duration::from_secs(120)).assert_ok();
    assert_eq!(run.stdout.trim(), "aarch64-linux", "{run}");
}

/// A private containerd: its own configuration, socket, root and state
/// directories, and only the plugins `ctr pull` and `ctr run` need;
/// stopped on drop.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    ctr: PathBuf,
    runc: PathBuf,
    log: PathBuf,
    /// Directories under /run/containerd that containerd 1.6 creates
    /// whatever its configuration (the shims' sockets) and that did not
    /// exist before: removed on drop if empty.
    created: Vec<PathBuf>,
}

/// Every image and container of the test lives in this namespace.
const NAMESPACE: &str = "strata-test";

impl Containerd {
    fn start() -> Containerd {
        require_root("containerd");
        let containerd = require_tool("containerd");
        let ctr = require_tool("ctr");
        let runc = require_tool("runc");
        require_tool("containerd-shim-runc-v2");
        // Short paths: the socket's path must fit in sun_path.
        let dir = tempfile::Builder::new().prefix("ctd").tempdir_in("/tmp").expect("temp dir");
        let d = dir.path();
        let socket = d.join("c.sock");
        let log = d.join("containerd.log");
        // Only what `ctr pull` and `ctr run` use: not CRI (Kubernetes), not
        // `opt` (it creates /opt/containerd), no snapshotter but overlayfs
        // and native.
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.internal.v1.opt\", \
             \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.tracing.processor.v1.otlp\"]\n\
             [grpc]\naddress = \"{}\"\n[ttrpc]\naddress = \"{}.ttrpc\"\n",
            d.join("root").display(),
            d.join("state").display(),
            socket.display(),
            socket.display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let created = ["/run/containerd", "/run/containerd/s"].iter().map(PathBuf::from).filter(|p| !p.exists()).collect();
        let log_file = File::create(&log).unwrap();
        // The shim finds runc on PATH.
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", runc.parent().unwrap().display());
        let child = Command::new(containerd)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("start containerd");
        let mut daemon = Containerd { child, dir, socket, ctr, runc, log, created };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("containerd exited ({status}) during start-up; log:\n{}", daemon.log());
            }
            if daemon.socket.exists() && daemon.ctr(&["version"], Duration::from_secs(10)).success() {
                return daemon;
            }
            assert!(Instant::now() < deadline, "containerd not ready within 60 s; log:\n{}", daemon.log());
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE]);
        cmd
    }

    fn ctr(&self, args: &[&str], timeout: Duration) -> Output {
        run(self.command().args(args), timeout)
    }

    /// `ctr run --rm IMAGE ID COMMAND…` with runc's state and the I/O FIFOs
    /// in our directory instead of under /run/containerd, and the container
    /// in a cgroup of the test's own (ctr's default parent, the namespace's
    /// name, is never removed).
    fn ctr_run(&self, image: &str, id: &str, command: &[&str], timeout: Duration) -> Output {
        self.ctr_run_on(image, id, command, None, timeout)
    }

    /// [`Containerd::ctr_run`] of the image's `platform` (`ctr run
    /// --platform`), when not the host's.
    fn ctr_run_on(&self, image: &str, id: &str, command: &[&str], platform: Option<&str>, timeout: Duration) -> Output {
        let d = self.dir.path();
        let mut cmd = self.command();
        cmd.arg("run");
        if let Some(p) = platform {
            cmd.args(["--platform", p]);
        }
        cmd.args(["--rm", "--runc-binary"])
            .arg(&self.runc)
            .arg("--runc-root")
            .arg(d.join("runc"))
            .arg("--fifo-dir")
            .arg(d.join("fifo"))
            .arg("--cgroup")
            .arg(format!("{}/{id}", self.cgroup_parent()))
            .args([image, id])
            .args(command);
        run(&mut cmd, timeout)
    }

    fn cgroup_parent(&self) -> String {
        format!("/{}", self.dir.path().file_name().unwrap().to_string_lossy())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- containerd log ----\n{}\n---- end of containerd log ----", self.log());
        }
        // Containers a failed test left running: their shims are in process
        // groups of their own, which stopping containerd would not reach.
        let tasks = self.ctr(&["task", "ls", "--quiet"], Duration::from_secs(10));
        for id in tasks.stdout.lines().filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["task", "delete", "--force", id], Duration::from_secs(20));
        }
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        if !exits_within(&mut self.child, Duration::from_secs(20)) {
            eprintln!("containerd did not stop on SIGTERM within 20 s; killing it");
        }
        // Whatever is left that talks to our socket (a stuck shim) goes too.
        let socket = self.socket.display().to_string();
        for (pid, _) in processes_with(&socket) {
            // SAFETY: kill(2) of a process started for this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        exits_within(&mut self.child, Duration::from_secs(5));
        unmount_under(self.dir.path());
        remove_cgroup(&self.cgroup_parent());
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn exits_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            _ => return false,
        }
    }
}
