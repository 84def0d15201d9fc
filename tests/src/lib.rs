//! The end-to-end harness: a real `strata serve` process on 127.0.0.1 with
//! the offline demo package set, and the real clients that talk to it
//! (skopeo, umoci, chroot, a private dockerd, raw HTTP).
//!
//! Every wait is bounded, every process started here is stopped when its
//! handle drops (its whole process group), and all network traffic stays on
//! 127.0.0.1. A missing tool is a failure that says to run
//! `scripts/install-deps.sh`, never a skip.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use serde_json::Value;

pub mod nixdaemon;
pub mod stores;

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        None => repo_root().join("target"),
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

// ------------------------------------------------------------------ commands

/// What a finished (or timed-out) command left behind.
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub command: String,
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// Panics with everything known about the command unless it succeeded.
    pub fn assert_ok(self) -> Output {
        assert!(self.success(), "command failed: {self}");
        self
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.timed_out {
            format!("timed out after {:?}", self.elapsed)
        } else {
            format!("{:?} after {:?}", self.status, self.elapsed)
        };
        write!(f, "`{}` {how}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.command, tail(&self.stdout, 60), tail(&self.stderr, 60))
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[… {start} lines left out]\n"));
    }
    out.push_str(&all[start..].join("\n"));
    out
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Sends a signal to a whole process group (the leader's pid).
fn kill_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory
    // is involved.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// Waits for a child at most `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Runs a command in its own process group with `stdin` fed in, output
/// captured, and at most `timeout` of time; past it the whole group is
/// killed.
pub fn run_with_input(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    let command = describe(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot start `{command}`: {e} (run scripts/install-deps.sh?)"),
    };
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_bounded(&mut child, timeout);
    let timed_out = status.is_none();
    if timed_out {
        kill_group(child.id(), libc::SIGKILL);
        let _ = child.wait();
    } else {
        // Anything the command left running in its group would hold the
        // pipes open forever.
        kill_group(child.id(), libc::SIGKILL);
    }
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
        elapsed: started.elapsed(),
        command,
    }
}

pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// The path of a tool the tests need; fails (never skips) when it is absent.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [PathBuf::from("/usr/sbin"), PathBuf::from("/sbin"), PathBuf::from("/usr/bin")];
    for dir in std::env::split_paths(&path).chain(extra) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed (not found in PATH): run scripts/install-deps.sh");
}

/// Unpacking images and chroot need root; say so instead of failing obscurely.
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "{why} needs root (the tests run as root in CI)");
}

// ------------------------------------------------------------------ binary

/// `target/release/strata`, built (once per test process, serialized across
/// processes by a file lock) unless `STRATA_BIN` names a binary or
/// `STRATA_E2E_NO_BUILD=1` says it was just built (scripts/test.sh).
pub fn strata_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("STRATA_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "STRATA_BIN={} is not a file", p.display());
            return p;
        }
        let bin = target_dir().join("release").join("strata");
        let skip = std::env::var("STRATA_E2E_NO_BUILD").as_deref() == Ok("1");
        if skip && bin.is_file() {
            return bin;
        }
        std::fs::create_dir_all(target_dir()).expect("create target dir");
        let lock = File::create(target_dir().join(".strata-e2e-build.lock")).expect("create build lock");
        // SAFETY: flock on a file descriptor we own; released when `lock`
        // is closed at the end of this block.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = run(
            Command::new(cargo)
                .args(["build", "--release", "-p", "strata", "--bin", "strata"])
                .current_dir(repo_root()),
            Duration::from_secs(40 * 60),
        );
        assert!(out.success(), "building strata failed: {out}");
        assert!(bin.is_file(), "cargo build succeeded but {} is missing", bin.display());
        drop(lock);
        bin
    })
    .clone()
}

// ------------------------------------------------------------------ state

/// Every file (and symlink) under `dir`, sorted; symlinked directories are
/// not followed. Empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Writes a package set of a test's own to `dir/pkgs/default.nix`:
/// busybox under a store name carrying `nonce` (`bb`, the scripts'
/// interpreter), and `mk name script extra`, a derivation `<nonce>-<name>`
/// built by `/bin/sh`, for `bindings` (more `let` bindings, Nix text) to
/// build the set's `attrs` (the attribute set's body) with. Every name
/// carries the nonce, so test binaries running side by side share no
/// derivation and no Nix lock.
pub fn write_busybox_set(dir: &Path, nonce: &str, bindings: &str, attrs: &str) -> PathBuf {
    let nix = format!(
        r#"{{ system ? builtins.currentSystem }}:
let
  bbDir = builtins.path {{
    name = "{nonce}-busybox";
    path = /usr/bin;
    filter = path: type: baseNameOf path == "busybox";
  }};
  bb = "${{bbDir}}/busybox";
  mk = name: script: extra: derivation ({{
    name = "{nonce}-${{name}}";
    inherit system;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ("set -eu; " + script) ];
  }} // extra);
{bindings}in {{
{attrs}}}
"#
    );
    let pkgs = dir.join("pkgs");
    std::fs::create_dir_all(&pkgs).unwrap();
    std::fs::write(pkgs.join("default.nix"), nix).unwrap();
    pkgs
}

/// Builds a one-file C plugin with Debian's clang and the SDK's header
/// (plugin-sdk/c/strata_plugin.h), as examples/c-plugin/build.sh does.
pub fn build_c_plugin(source: &Path, wasm: &Path) {
    require_tool("clang");
    require_tool("wasm-ld");
    let sdk = repo_root().join("plugin-sdk/c");
    run(
        Command::new("clang")
            .args(["--target=wasm32", "-O2", "-mbulk-memory", "-nostdlib", "-Wall", "-Werror", "-Wl,--no-entry", "-I"])
            .arg(&sdk)
            .arg("-o")
            .arg(wasm)
            .arg(source),
        Duration::from_secs(120),
    )
    .assert_ok();
}

/// `[builds] platforms` of a two-platform server (amd64 and arm64), with
/// two build slots (the default is one per core) so that both platforms
/// build at once on any machine.
pub const TWO_PLATFORMS: &str = "[builds]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\nmax_concurrent = 2\n";

/// Nix here builds aarch64-linux derivations through `extra-platforms`: the
/// busybox builder runs as is, so an arm64 image of a test holds amd64
/// binaries, whose output names the system they were built *for*.
pub const ARM64_NIX_CONFIG: &str = "substituters =\nextra-platforms = aarch64-linux";

/// A package set whose outputs record the system they were built for:
/// `whichsys` prints it; `armfails` builds on x86_64-linux only; `meet`'s
/// builder for each system waits (up to two minutes, then fails) until the
/// other system's has started, in `dir/meet`: it builds only when both
/// platforms build at once. Under `dir`, every name carrying `nonce`.
pub fn platform_set(dir: &Path, nonce: &str) -> PathBuf {
    // Nix's builders run as its build users: they may pass through `dir`
    // and write in `meet`.
    let meet = dir.join("meet");
    std::fs::create_dir_all(&meet).unwrap();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&meet, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let attrs = r#"  whichsys = mk "whichsys" ''
    mkdir -p $out/bin
    printf '#!%s sh\necho %s\n' ${bb} ${system} > $out/bin/whichsys
    chmod 755 $out/bin/whichsys
  '' {};
  armfails = mk "armfails" (if system == "aarch64-linux"
    then "echo this package does not build for aarch64 >&2; exit 1"
    else "mkdir -p $out/share; echo ${system} > $out/share/armfails") {};
  meet = mk "meet" ''
    touch MEET/${system}
    other=${if system == "aarch64-linux" then "x86_64-linux" else "aarch64-linux"}
    i=0
    while [ ! -e MEET/$other ]; do
      i=$((i + 1)); [ $i -lt 1200 ] || { echo "the $other build never started" >&2; exit 1; }
      sleep 0.1
    done
    mkdir -p $out/share; echo ${system} > $out/share/meet
  '' {};
"#;
    write_busybox_set(dir, nonce, "", &attrs.replace("MEET", &meet.display().to_string()))
}

/// A server of [`platform_set`] for amd64 and arm64, on `storage` (a new
/// directory when `None`); the set is written under `dir`.
pub fn two_platform_server(dir: &Path, nonce: &str, storage: Option<PathBuf>) -> Server {
    let pkgs = platform_set(dir, nonce);
    Server::start_with(ServerOptions {
        storage,
        extra_toml: TWO_PLATFORMS.into(),
        env: vec![
            ("NIXERY_PKGS_PATH".into(), pkgs.display().to_string()),
            ("NIX_CONFIG".into(), ARM64_NIX_CONFIG.into()),
        ],
        ..Default::default()
    })
}

/// A value no other call makes, in this process, another one running beside
/// it (scripts/test-binaries.sh) or an earlier run: for names that must be
/// new to the Nix store, and for STRATA_FAULT_NONCE, which makes
/// tests/fixtures/faulty-pkgs' `slow` and `sleepy` derivations of the
/// calling test alone (no other test shares their build, their Nix lock or
/// their builder's marker). Letters, digits and `-` only.
pub fn unique_suffix() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{now:x}-{:x}-{n}", std::process::id())
}

/// The marker (`$0`) of faulty-pkgs' `package` builder under `nonce`.
pub fn fault_marker(package: &str, nonce: &str) -> String {
    format!("strata-e2e-{package}-marker-{nonce}")
}

/// Live processes (not zombies) whose command line contains `marker`:
/// (pid, command line). Fixture builders carry a marker as their `$0`.
pub fn processes_with(marker: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let state = stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("");
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if state != "Z" && cmd.contains(marker) {
            found.push((pid, cmd));
        }
    }
    found
}

/// Polls `done` until it holds; fails the test naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------ server

/// How to start a server beyond the defaults.
#[derive(Debug, Default, Clone)]
pub struct ServerOptions {
    /// Storage directory to use (shared between servers); default: a new
    /// one inside the server's temporary directory.
    pub storage: Option<PathBuf>,
    /// Extra TOML appended to the generated configuration.
    pub extra_toml: String,
    /// Environment variables set last (they may replace the defaults, e.g.
    /// `NIXERY_PKGS_PATH` or `NIX_TIMEOUT`).
    pub env: Vec<(String, String)>,
    /// A storage URL (`s3://…`, `az://…`) used instead of `storage`.
    pub storage_url: Option<String>,
    /// More keys of the `[storage]` table (`serve = "redirect"`).
    pub storage_toml: String,
    /// Run the server as this user instead of root (tests/src/nixdaemon.rs):
    /// its temporary directory and storage are made its own.
    pub user: Option<RunAs>,
}

/// A user, its primary group and its supplementary groups (no others).
#[derive(Debug, Clone)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl RunAs {
    /// Makes `cmd` drop root for this user, its groups first.
    pub fn apply(&self, cmd: &mut Command) {
        let me = self.clone();
        // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid),
        // and no allocation, between fork and exec. std's own `uid()` drops the supplementary
        // groups, and `pre_exec` runs after it, too late for setgroups.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(me.groups.len(), me.groups.as_ptr()) != 0
                    || libc::setgid(me.gid) != 0
                    || libc::setuid(me.uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// A running `strata serve`; stopped (its whole process group) on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub storage: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

/// Environment variables that would change what the server does, cleared so
/// that the caller's environment cannot leak into a test.
const CLEARED_ENV: &[&str] = &[
    "PORT",
    "NIXERY_CHANNEL",
    "NIXERY_PKGS_REPO",
    "NIXERY_PKGS_PATH",
    "NIXERY_STORAGE_BACKEND",
    "STORAGE_PATH",
    "GCS_BUCKET",
    "S3_BUCKET",
    "S3_PREFIX",
    "NIX_TIMEOUT",
    "NIX_POPULARITY_URL",
    "WEB_DIR",
    "STRATA_CONFIG",
    "RUST_LOG",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// GET of an image's OCI manifest by the tag `latest`: (status, body).
pub fn get_manifest(server: &Server, name: &str) -> (u16, Vec<u8>) {
    let r = server
        .get(&format!("/v2/{name}/manifests/latest"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .expect("GET manifest");
    (r.status().as_u16(), r.bytes().expect("body").to_vec())
}

/// A client for raw requests: loopback only, bounded in time.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(300))
        .no_proxy()
        .build()
        .expect("http client")
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    pub fn start_with(opts: ServerOptions) -> Server {
        let bin = strata_bin();
        let dir = tempfile::Builder::new().prefix("strata-e2e-").tempdir().expect("temp dir");
        let storage = opts.storage.clone().unwrap_or_else(|| dir.path().join("storage"));
        std::fs::create_dir_all(&storage).expect("storage dir");
        let storage = storage.canonicalize().expect("storage dir");
        if let Some(user) = &opts.user {
            for d in [dir.path(), storage.as_path()] {
                std::os::unix::fs::chown(d, Some(user.uid), Some(user.gid)).expect("chown to the server's user");
            }
        }
        let nix_work = dir.path().join("nix");
        let log = dir.path().join("strata.log");
        let http = http_client();
        // A port picked free can be taken before the server binds it: retry.
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let config = dir.path().join("strata.toml");
            let url = opts.storage_url.clone().unwrap_or_else(|| format!("file://{}", storage.display()));
            let toml = format!(
                "listen = \"{addr}\"\n{}\n\n[storage]\nurl = \"{url}\"\n{}\n\n[nix]\nwork_dir = \"{}\"\n",
                opts.extra_toml,
                opts.storage_toml,
                nix_work.display()
            );
            std::fs::write(&config, toml).expect("write config");
            let log_file = File::create(&log).expect("create log");
            let mut cmd = Command::new(&bin);
            for var in CLEARED_ENV {
                cmd.env_remove(var);
            }
            // Cloud credentials and endpoints come only from `opts.env`.
            for (var, _) in std::env::vars_os() {
                let v = var.to_string_lossy();
                if ["AWS_", "AZURE_", "AZURITE_", "GOOGLE_"].iter().any(|p| v.starts_with(p)) || v == "SERVICE_ACCOUNT" {
                    cmd.env_remove(&var);
                }
            }
            cmd.arg("--config")
                .arg(&config)
                .arg("serve")
                .env("NIXERY_PKGS_PATH", repo_root().join("examples/demo-pkgs"))
                .env("STRATA_NIX_OFFLINE", "1")
                .env("NIX_CONFIG", "substituters =")
                .env("RUST_LOG", "info")
                .envs(opts.env.iter().map(|(k, v)| (k, v)))
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log fd"))
                .stderr(log_file)
                .process_group(0);
            if let Some(user) = &opts.user {
                user.apply(&mut cmd);
            }
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            match wait_ready(&mut child, &http, addr, Duration::from_secs(60)) {
                Ok(()) => return Server { child, addr, storage, log, dir, http },
                Err(exited) => {
                    stop_group(&mut child);
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    let port_taken = last_log.contains("listen on") || last_log.contains("in use");
                    if !(exited && port_taken) {
                        let why = if exited { "exited during start-up" } else { "did not answer GET /v2/ within 60 s" };
                        panic!("strata {why} ({addr}); log:\n{}", tail(&last_log, 80));
                    }
                }
            }
        }
        panic!("strata could not bind a free port in 5 attempts; last log:\n{}", tail(&last_log, 80));
    }

    /// `127.0.0.1:PORT`, as registry clients want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `docker://127.0.0.1:PORT/<name>:<tag>` for skopeo.
    pub fn docker_ref(&self, name: &str, tag: &str) -> String {
        format!("docker://{}/{name}:{tag}", self.addr)
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http.get(self.url(path))
    }

    /// The sum of the samples on `/metrics` of `series`: a family name
    /// (`strata_image_builds_total`, every label set) or a name with its
    /// whole label set (`strata_image_builds_total{outcome="ok"}`).
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").send().expect("GET /metrics").text().expect("metrics text");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the server keeps its Nix expressions and GC roots.
    pub fn nix_work_dir(&self) -> PathBuf {
        self.dir.path().join("nix")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the server process only (not its group).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits at most `limit` for the server to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_bounded(&mut self.child, limit)
    }

}

/// `Err(true)`: the process exited; `Err(false)`: it did not answer in time.
/// Waits until the child answers `GET /v2/` on `addr`, and is the one
/// listening there: another test's server may hold a port picked free (in
/// another test binary running beside this one) and answer while this
/// child is still starting, before it fails to bind. `Err(true)`: the
/// child exited.
fn wait_ready(child: &mut Child, http: &reqwest::blocking::Client, addr: SocketAddr, limit: Duration) -> Result<(), bool> {
    let deadline = Instant::now() + limit;
    let url = format!("http://{addr}/v2/");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(true);
        }
        if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send() {
            // 401: access control is on, and the server is answering.
            let answering = r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED;
            if answering && listens_on(child.id(), addr.port()) {
                return Ok(());
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(false)
}

/// Whether process `pid` holds the socket listening on TCP `port`
/// (/proc/net/tcp{,6} name the socket's inode, /proc/PID/fd its holder).
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!(":{port:04X}");
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    // local_address, state 0A = LISTEN, inode
                    (cols.len() > 9 && cols[1].ends_with(&local) && cols[3] == "0A").then(|| cols[9].to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| inodes.iter().any(|i| target.to_string_lossy() == format!("socket:[{i}]")))
}

/// SIGTERM to a process group leader, bounded wait, then SIGKILL to the
/// whole group (a Nix build in flight goes too).
pub(crate) fn stop_group(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        kill_group(child.id(), libc::SIGKILL);
        return;
    }
    kill_group(child.id(), libc::SIGTERM);
    if wait_bounded(child, Duration::from_secs(10)).is_none() {
        eprintln!("process {} did not stop on SIGTERM within 10 s; killing it", child.id());
    }
    kill_group(child.id(), libc::SIGKILL);
    let _ = wait_bounded(child, Duration::from_secs(5));
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_group(&mut self.child);
        if thread::panicking() {
            eprintln!("---- strata log ({}) ----\n{}\n---- end of strata log ----", self.addr, tail(&self.log(), 80));
        }
    }
}

// ------------------------------------------------------------------ clients

/// `skopeo` with a policy that accepts anything (the images are unsigned).
pub fn skopeo(args: &[&str], timeout: Duration) -> Output {
    let skopeo = require_tool("skopeo");
    run(Command::new(skopeo).arg("--insecure-policy").args(args), timeout)
}

/// `skopeo copy docker://…/<name>:<tag> oci:<layout>:<oci_tag>`.
pub fn skopeo_copy(server: &Server, name: &str, tag: &str, layout: &Path, oci_tag: &str) -> Output {
    let dest = format!("oci:{}:{oci_tag}", layout.display());
    skopeo(
        &["copy", "--src-tls-verify=false", &server.docker_ref(name, tag), &dest],
        Duration::from_secs(300),
    )
}

/// `skopeo inspect [--raw|--config] …` parsed as JSON.
pub fn skopeo_inspect(server: &Server, name: &str, tag: &str, extra: &[&str]) -> Value {
    let image = server.docker_ref(name, tag);
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&image);
    let out = skopeo(&args, Duration::from_secs(300)).assert_ok();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("skopeo inspect printed no JSON ({e}):\n{}", out.stdout))
}

/// `umoci unpack --image <layout>:<tag> <bundle>`; the rootfs is
/// `<bundle>/rootfs`.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    require_root("umoci unpack");
    let umoci = require_tool("umoci");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new(umoci).args(["unpack", "--image", &image]).arg(bundle), Duration::from_secs(300)).assert_ok();
    bundle.join("rootfs")
}

/// Runs a program inside an unpacked root file system.
pub fn chroot(rootfs: &Path, args: &[&str]) -> Output {
    require_root("chroot");
    let chroot = require_tool("chroot");
    run(
        Command::new(chroot).arg(rootfs).args(args).env_clear().env("PATH", "/bin:/usr/bin").env("HOME", "/"),
        Duration::from_secs(60),
    )
}

/// Pulls `name:latest` with skopeo, unpacks it with umoci and runs
/// `/bin/<program>` (a script of a test's package set) under chroot, in
/// new directories under `work`; its output.
pub fn pull_and_run(server: &Server, name: &str, program: &str, work: &Path) -> String {
    let n = unique_suffix();
    let layout = work.join(format!("oci-{program}-{n}"));
    skopeo_copy(server, name, "latest", &layout, "t").assert_ok();
    let rootfs = umoci_unpack(&layout, "t", &work.join(format!("bundle-{program}-{n}")));
    chroot(&rootfs, &[&format!("/bin/{program}")]).assert_ok().stdout
}

/// Whether the Nix store holds `path` (`nix-store --check-validity`).
pub fn is_valid(path: &str) -> bool {
    let out = run(Command::new("nix-store").args(["--check-validity", "--print-invalid", path]), Duration::from_secs(60)).assert_ok();
    out.stdout.trim().is_empty()
}

/// The closure of a store path (`nix-store --query --requisites`).
pub fn requisites(path: &str) -> Vec<String> {
    let out = run(Command::new("nix-store").args(["--query", "--requisites", path]), Duration::from_secs(60)).assert_ok();
    out.stdout.lines().map(str::to_string).collect()
}

/// The digests of the blobs an OCI layout holds.
pub fn oci_blobs(layout: &Path) -> BTreeSet<String> {
    let dir = layout.join("blobs").join("sha256");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| format!("sha256:{}", e.expect("dir entry").file_name().to_string_lossy()))
        .collect()
}

/// Entries of a gzip-compressed layer: (path without a leading `./` or `/`,
/// entry type, link target if any, mode).
pub fn layer_entries(blob: &[u8]) -> Vec<(String, tar::EntryType, Option<String>, u32)> {
    let gz = flate2::read::GzDecoder::new(blob);
    let mut archive = tar::Archive::new(gz);
    archive
        .entries()
        .expect("layer is a tar.gz")
        .map(|e| {
            let e = e.expect("tar entry");
            let path = e.path().expect("entry path").to_string_lossy().into_owned();
            let path = path.trim_start_matches("./").trim_start_matches('/').to_string();
            let link = e.link_name().ok().flatten().map(|l| l.to_string_lossy().into_owned());
            let mode = e.header().mode().unwrap_or(0);
            (path, e.header().entry_type(), link, mode)
        })
        .collect()
}

// ------------------------------------------------------------------ raw HTTP

/// A response read off a plain socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD target` exactly as written (no client normalizes the path:
/// `%2e%2e` and `..` reach the server as is).
pub fn raw_request(addr: SocketAddr, method: &str, target: &str) -> RawResponse {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read response");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawResponse { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

/// The first error of a distribution-spec error body: (code, message, detail).
pub fn spec_error(body: &[u8]) -> (String, String, Value) {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let first = &v["errors"][0];
    let code = first["code"].as_str().unwrap_or_else(|| panic!("no errors[0].code in {v}")).to_string();
    let message = first["message"].as_str().unwrap_or_default().to_string();
    (code, message, first["detail"].clone())
}

// ------------------------------------------------------------------ docker

/// Tests that use a Docker engine run one at a time.
pub fn docker_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A private Docker engine: its own data root, exec root, socket and
/// configuration, no bridge and no iptables; stopped on drop.
pub struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    docker: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        require_root("dockerd");
        let dockerd = require_tool("dockerd");
        // Docker's own client, matching the engine, if both are installed.
        let docker = if Path::new("/usr/bin/docker").is_file() { PathBuf::from("/usr/bin/docker") } else { require_tool("docker") };
        // Short paths: the socket's path must fit in sun_path.
        let dir = tempfile::Builder::new().prefix("dkr").tempdir_in("/tmp").expect("temp dir");
        let d = dir.path();
        let socket = d.join("docker.sock");
        let log = d.join("dockerd.log");
        std::fs::write(d.join("daemon.json"), "{}\n").unwrap();
        std::fs::create_dir_all(d.join("config")).unwrap();
        let log_file = File::create(&log).unwrap();
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("start dockerd");
        let mut engine = Dockerd { child, dir, socket, docker, log };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = engine.child.try_wait() {
                panic!("dockerd exited ({status}) during start-up; log:\n{}", tail(&engine.log(), 60));
            }
            if engine.socket.exists() && engine.docker(&["version"], Duration::from_secs(10)).success() {
                return engine;
            }
            assert!(Instant::now() < deadline, "dockerd not ready within 90 s; log:\n{}", tail(&engine.log(), 60));
            thread::sleep(Duration::from_millis(200));
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.path().join("config"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        cmd
    }

    pub fn docker(&self, args: &[&str], timeout: Duration) -> Output {
        run(self.command().args(args), timeout)
    }

    pub fn docker_with_input(&self, args: &[&str], stdin: &[u8], timeout: Duration) -> Output {
        run_with_input(self.command().args(args), Some(stdin), timeout)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- dockerd log ----\n{}\n---- end of dockerd log ----", tail(&self.log(), 40));
        }
        kill_group(self.child.id(), libc::SIGTERM);
        if wait_bounded(&mut self.child, Duration::from_secs(20)).is_none() {
            eprintln!("dockerd did not stop on SIGTERM within 20 s; killing it");
        }
        kill_group(self.child.id(), libc::SIGKILL);
        let _ = wait_bounded(&mut self.child, Duration::from_secs(5));
        // Mounts a killed engine left behind would keep the directory.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = run(Command::new("umount").args(["-l", m]), Duration::from_secs(10));
        }
    }
}

/// `strata --config <dir>/strata.toml ARGS` on the demo set, storage and
/// Nix work files under `dir` (the config is written on first use).
pub fn strata_cli(dir: &Path, args: &[&str]) -> Output {
    let config = dir.join("strata.toml");
    if !config.exists() {
        let toml = format!(
            "[storage]\nurl = \"file://{}\"\n\n[nix]\nwork_dir = \"{}\"\n",
            dir.join("storage").display(),
            dir.join("nix").display()
        );
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        std::fs::write(&config, toml).unwrap();
    }
    let mut cmd = Command::new(strata_bin());
    for var in ["PORT", "NIXERY_CHANNEL", "NIXERY_PKGS_REPO", "NIXERY_STORAGE_BACKEND", "STORAGE_PATH", "STRATA_CONFIG"] {
        cmd.env_remove(var);
    }
    cmd.arg("--config")
        .arg(&config)
        .args(args)
        .env("NIXERY_PKGS_PATH", repo_root().join("examples/demo-pkgs"))
        .env("STRATA_NIX_OFFLINE", "1")
        .env("NIX_CONFIG", "substituters =")
        .env("RUST_LOG", "warn")
        .current_dir(dir);
    run(&mut cmd, Duration::from_secs(300))
}

/// Removes a cgroup and the (empty) ones under it, in every hierarchy:
/// container runtimes leave `conmon` and the container's parent behind.
pub fn remove_cgroup(name: &str) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let hierarchies = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
        .map(|f| Path::new(f[1]).join(name.trim_start_matches('/')));
    for dir in hierarchies {
        let Ok(children) = std::fs::read_dir(&dir) else { continue };
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            let _ = std::fs::remove_dir(child.path());
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            eprintln!("cannot remove cgroup {}: {e}", dir.display());
        }
    }
}

/// Lazily unmounts whatever is still mounted under `dir` (deepest first), so
/// that the directory can be removed.
pub fn unmount_under(dir: &Path) {
    let root = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut under: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)).collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        let _ = run(Command::new("umount").args(["-l", m]), Duration::from_secs(10));
    }
}
