//! Start-up checks of `strata serve`: the setup is refused (or warned
//! about) before the first request, not discovered by it.
//!
//! - The directories Strata writes (the Nix work dir with its GC roots, and
//!   the storage directory of a `file://` store) must be writable by the
//!   server's user. Otherwise the first build fails with a bare
//!   "permission denied" from deep inside Nix or the storage layer.
//! - Nix must be able to open its store. Against a `nix-daemon` that means
//!   reaching its socket: a user outside the group that may open it gets
//!   one error naming the socket and the group, instead of a 500 on every
//!   pull.
//! - Root with a daemon at hand is told to run Strata as an unprivileged
//!   user instead: a flaw in name handling or a plugin escape then lands
//!   in an account that can do nothing but ask the daemon for builds.
//!
//! Everything here runs Nix itself (`nix store ping`) rather than reading
//! Nix's configuration: what counts is the store Nix opens with the
//! server's environment (`NIX_REMOTE`, `store =` in nix.conf).

use anyhow::{anyhow, bail, Context};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;

/// How long `nix store ping` may take: a daemon that does not answer within
/// it would not answer builds either.
const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `NIX_REMOTE=daemon` connects, unless `NIX_DAEMON_SOCKET_PATH` or
/// `NIX_STATE_DIR` says otherwise (Nix's own rule).
const DEFAULT_STATE_DIR: &str = "/nix/var/nix";

/// All checks, in the order a broken setup is best explained.
pub async fn check(cfg: &Config) -> anyhow::Result<()> {
    writable(&cfg.nix_work_dir(), "[nix] work_dir")?;
    if let Some(dir) = storage_dir(&cfg.storage_url()) {
        writable(&dir, "[storage] url")?;
    }
    nix_store().await
}

/// The directory of a `file://` storage URL.
fn storage_dir(url: &str) -> Option<PathBuf> {
    url::Url::parse(url).ok().filter(|u| u.scheme() == "file").and_then(|u| u.to_file_path().ok())
}

/// `user (uid N)` of the server process.
fn who() -> String {
    let uid = uzers::get_effective_uid();
    match uzers::get_user_by_uid(uid) {
        Some(u) => format!("user {} (uid {uid})", u.name().to_string_lossy()),
        None => format!("uid {uid}"),
    }
}

fn group_name(gid: u32) -> String {
    uzers::get_group_by_gid(gid).map(|g| g.name().to_string_lossy().into_owned()).unwrap_or_else(|| gid.to_string())
}

/// Creates `dir` if needed and writes (then removes) a file in it: the real
/// operation, so that read-only mounts (systemd's `ProtectSystem=strict`
/// without a `ReadWritePaths=`) and ACLs count, not just the mode bits.
fn writable(dir: &Path, setting: &str) -> anyhow::Result<()> {
    let probe = dir.join(format!(".strata-write-check.{}", std::process::id()));
    let result = std::fs::create_dir_all(dir).and_then(|()| {
        std::fs::OpenOptions::new().write(true).create_new(true).open(&probe)?;
        std::fs::remove_file(&probe)
    });
    result.map_err(|e| {
        let owner = std::fs::metadata(dir)
            .map(|m| format!("; it belongs to uid {} (group {})", m.uid(), group_name(m.gid())))
            .unwrap_or_default();
        anyhow!(
            "{} ({setting}) is not writable by {}: {e}{owner}. Give the server's user a directory of its own \
             (the systemd unit's StateDirectory=, or ReadWritePaths= for one elsewhere)",
            dir.display(),
            who()
        )
    })
}

/// What the server's Nix commands will open, by `nix store ping`: its
/// `Store URL:` line comes before any error.
async fn nix_store() -> anyhow::Result<()> {
    let args = ["--extra-experimental-features", "nix-command", "store", "ping"];
    crate::nix::process::started("nix", &args);
    let mut cmd = tokio::process::Command::new("nix");
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(PING_TIMEOUT, cmd.output()).await {
        Ok(out) => out.context("cannot run `nix` (is Nix installed and on PATH?)")?,
        Err(_) => bail!("`nix store ping` did not finish within {PING_TIMEOUT:?}: the Nix store (or its daemon) does not answer"),
    };
    // Nix 2.8 prints it on stderr, later versions on stdout.
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let store = said.lines().find_map(|l| l.strip_prefix("Store URL:")).map(str::trim).unwrap_or("").to_string();
    let socket = daemon_socket(&store);
    if !out.status.success() {
        let nix_says = String::from_utf8_lossy(&out.stderr).lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return Err(match socket {
            Some(socket) => unreachable_daemon(&socket, &nix_says),
            None => anyhow!("Nix cannot open its store ({}): {nix_says}", if store.is_empty() { "unknown" } else { &store }),
        });
    }
    let root = uzers::get_effective_uid() == 0;
    match socket {
        Some(socket) => {
            tracing::info!(store = %store, socket = %socket.display(), user = %who(), "nix: builds go through the nix-daemon");
            if root {
                tracing::warn!(
                    socket = %socket.display(),
                    "strata runs as root although it reaches Nix through the daemon: run it as an unprivileged user \
                     in the group {} (see examples/strata.service and docs/configuration.md)",
                    access_group(&socket).unwrap_or_else(|| "nix-users".into())
                );
            }
        }
        None => {
            tracing::info!(store = %store, user = %who(), "nix: the store is opened directly (single-user Nix)");
            let socket = socket_path();
            if root && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                tracing::warn!(
                    socket = %socket.display(),
                    "strata runs as root on a single-user Nix store while a nix-daemon listens: run it as an \
                     unprivileged user in the group {} with NIX_REMOTE=daemon (see docs/configuration.md)",
                    access_group(&socket).unwrap_or_else(|| "nix-users".into())
                );
            }
        }
    }
    Ok(())
}

/// The daemon socket a store URL connects to: `daemon`, `unix://PATH[?…]`;
/// none for a local store (`local`, a chroot store) or a remote one
/// (`ssh-ng://…`).
fn daemon_socket(store: &str) -> Option<PathBuf> {
    if store == "daemon" {
        return Some(socket_path());
    }
    let path = store.strip_prefix("unix://")?;
    Some(PathBuf::from(path.split('?').next().unwrap_or(path)))
}

/// Nix's default socket for `daemon`.
fn socket_path() -> PathBuf {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
    nonempty("NIX_DAEMON_SOCKET_PATH")
        .unwrap_or_else(|| nonempty("NIX_STATE_DIR").unwrap_or_else(|| DEFAULT_STATE_DIR.into()).join("daemon-socket/socket"))
}

/// The group whose members may open the socket: of the socket's directory
/// or the socket itself, whichever shuts others out (Debian's
/// nix-setup-systemd makes the directory `root:nix-users 0770`).
fn access_group(socket: &Path) -> Option<String> {
    [socket.parent()?, socket]
        .into_iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .find(|m| m.mode() & 0o007 != 0o007 && m.mode() & 0o070 != 0)
        .map(|m| group_name(m.gid()))
}

/// One error for a daemon Nix could not use, from what a connection to its
/// socket says.
fn unreachable_daemon(socket: &Path, nix_says: &str) -> anyhow::Error {
    let s = socket.display();
    let group = access_group(socket);
    let in_group = group.as_deref().map(|g| format!("the group {g}")).unwrap_or_else(|| "the group that owns it".into());
    match std::os::unix::net::UnixStream::connect(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => anyhow!(
            "cannot reach the Nix daemon: {} may not open its socket {s} ({e}); add it to {in_group} \
             (usermod -aG, or SupplementaryGroups= in the systemd unit)",
            who()
        ),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => anyhow!(
            "cannot reach the Nix daemon: nothing listens on {s} ({e}); start it (systemctl start nix-daemon.socket), \
             or unset NIX_REMOTE for a single-user Nix"
        ),
        Err(e) => anyhow!("cannot reach the Nix daemon at {s}: {e}"),
        // Connected, and still refused: the daemon's `allowed-users`.
        Ok(_) => anyhow!(
            "the Nix daemon at {s} refused {}: {nix_says} (allowed-users in nix.conf; members of {in_group} may open the socket)",
            who()
        ),
    }
}
