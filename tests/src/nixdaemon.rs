//! Multi-user Nix for the tests: a `nix-daemon` of a test's own on the
//! machine's store, and the unprivileged user Strata runs as against it
//! (tests/tests/multi_user.rs).
//!
//! Other test binaries use the same /nix store at the same time, as root
//! and single-user (their Nix opens the store directly). The daemon here is
//! one more process on that store, as a single-user `nix-build` is: the
//! database, path locks, the GC lock and temporary roots are made for
//! several processes at once. What keeps it from disturbing them:
//! - its socket is private (`NIX_DAEMON_SOCKET_PATH` in a directory of the
//!   test's own), so no other process reaches it, and root's Nix, which
//!   opens the store directly whenever it can write it, never uses it;
//! - it never collects on its own (`min-free = 0`): it deletes only the
//!   paths a client names with `nix-store --delete`, which Nix refuses for
//!   any path that something, including another test's build, roots;
//! - stopping it ends only its own connections (the test's server is
//!   stopped first), as stopping a single-user `nix-build` would.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{require_root, require_tool, run, stop_group, tail, RunAs};

/// The group whose members may use the daemon, as Debian's
/// nix-setup-systemd (and Nix's installer) name it.
pub const NIX_USERS: &str = "nix-users";

/// The system user the tests run Strata as.
pub const USER: &str = "strata-e2e";

/// A running `nix-daemon` with a socket of its own; stopped on drop.
pub struct NixDaemon {
    child: Child,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    log: PathBuf,
}

impl NixDaemon {
    /// Starts the daemon and waits (bounded) until it answers
    /// `nix store ping` on its socket. The socket's directory is
    /// `root:nix-users 0750`: members may connect, nobody else may, and
    /// members cannot replace the socket.
    pub fn start() -> NixDaemon {
        require_root("nix-daemon");
        let daemon = require_tool("nix-daemon");
        let group = group_id(NIX_USERS);
        // Short: the socket's path must fit in sun_path.
        let dir = tempfile::Builder::new().prefix("nixd").tempdir_in("/tmp").expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock_dir = dir.path().join("sock");
        std::fs::create_dir(&sock_dir).unwrap();
        std::os::unix::fs::chown(&sock_dir, Some(0), Some(group)).unwrap();
        std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let socket = sock_dir.join("socket");
        let log = dir.path().join("nix-daemon.log");
        let log_file = File::create(&log).unwrap();
        let child = Command::new(daemon)
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            // No binary cache here; no collection but the one a client asks for.
            .env("NIX_CONFIG", "substituters =\nmin-free = 0\n")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("start nix-daemon");
        let mut d = NixDaemon { child, dir, socket, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("nix-daemon exited ({status}) during start-up; log:\n{}", tail(&d.log(), 40));
            }
            let ping = run(
                Command::new("nix")
                    .args(["--extra-experimental-features", "nix-command", "store", "ping"])
                    .envs(d.env()),
                Duration::from_secs(10),
            );
            if ping.success() {
                return d;
            }
            assert!(Instant::now() < deadline, "nix-daemon not answering within 30 s: {ping}\nlog:\n{}", tail(&d.log(), 40));
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What makes a Nix client (and Strata's Nix commands) use this daemon.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NIX_REMOTE".into(), "daemon".into()),
            ("NIX_DAEMON_SOCKET_PATH".into(), self.socket.display().to_string()),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NixDaemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- nix-daemon log ----\n{}\n---- end of nix-daemon log ----", tail(&self.log(), 40));
        }
        stop_group(&mut self.child);
    }
}

fn group_id(name: &str) -> u32 {
    let out = run(Command::new("getent").args(["group", name]), Duration::from_secs(10));
    assert!(out.success(), "no group {name} (nix-setup-systemd makes it): run scripts/install-deps.sh\n{out}");
    out.stdout.split(':').nth(2).and_then(|g| g.trim().parse().ok()).unwrap_or_else(|| panic!("getent group {name}: {out}"))
}

/// The system user `strata-e2e` (its own primary group, no home, no
/// shell), made once per machine as an operator makes `strata`; the
/// returned identity has `nix-users` as its one supplementary group when
/// `in_nix_users`, none otherwise.
pub fn strata_user(in_nix_users: bool) -> RunAs {
    require_root("creating the user strata-e2e");
    let id = |flag: &str| {
        let out = run(Command::new("id").args([flag, USER]), Duration::from_secs(10));
        out.success().then(|| out.stdout.trim().parse::<u32>().expect("a numeric id"))
    };
    if id("-u").is_none() {
        let out = run(
            Command::new(require_tool("useradd"))
                .args(["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin", USER]),
            Duration::from_secs(30),
        );
        // Another test binary may have made it just now.
        assert!(out.success() || id("-u").is_some(), "useradd {USER}: {out}");
    }
    let (uid, gid) = (id("-u").unwrap(), id("-g").unwrap());
    let groups = if in_nix_users { vec![group_id(NIX_USERS)] } else { vec![] };
    RunAs { uid, gid, groups }
}

/// The identity a running process has: real uid and gid (the effective
/// ones must equal them) and its supplementary groups, from
/// /proc/PID/status; and its effective and permitted capabilities.
pub fn identity_of(pid: u32) -> (RunAs, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |name: &str| -> Vec<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let ids = |name: &str| -> Vec<u32> { field(name).iter().map(|v| v.parse().unwrap()).collect() };
    let (uids, gids) = (ids("Uid:"), ids("Gid:"));
    assert!(uids.iter().all(|u| *u == uids[0]), "real, effective, saved and fs uid differ: {uids:?}");
    assert!(gids.iter().all(|g| *g == gids[0]), "real, effective, saved and fs gid differ: {gids:?}");
    let cap = |name: &str| u64::from_str_radix(&field(name)[0], 16).unwrap();
    (RunAs { uid: uids[0], gid: gids[0], groups: ids("Groups:") }, cap("CapEff:"), cap("CapPrm:"))
}
