//! Running one Nix command to completion or to a deadline, and stopping it
//! and every builder it started when the deadline passes or the caller
//! gives up.
//!
//! Nix builders run in sessions of their own (Nix calls `setsid`), so killing
//! the process group of the Nix client is not enough to stop a build: see
//! [`RunningNix`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::error::{BuildFailure, Unavailable};

/// Strata's own Nix calls use the `nix` command and flakes (a flake source
/// is fetched with `builtins.getFlake`), whatever the machine's nix.conf
/// enables; nothing else on the machine is affected.
pub(crate) const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// Enough of Nix's stderr to show why a build failed (the builder's last
/// lines and Nix's error), without keeping a whole build log per request.
const LOG_TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error("{0}")]
    Unavailable(Unavailable),
    #[error("{0}")]
    BuildFailed(BuildFailure),
    #[error("nix timed out after {0:?}")]
    Timeout(Duration),
    /// The revision or ref a tag selected is not in the source.
    #[error("revision {revision} is unknown: {reason}")]
    UnknownRevision { revision: String, reason: String },
    #[error("nix failed ({status}): {log_tail}")]
    Failed { status: String, log_tail: String },
    #[error("running nix: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected output from nix: {0}")]
    Parse(String),
}

/// Runs one Nix command to completion or to the deadline; returns its
/// stdout. On a timeout (reported as `timeout`, the whole budget), or when
/// the caller drops this future (a client went away), every process it
/// started is killed.
pub(crate) async fn run(program: &str, args: &[OsString], deadline: Instant, timeout: Duration) -> Result<Vec<u8>, NixError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(config) = offline_nix_config() {
        cmd.env("NIX_CONFIG", config);
    }
    tracing::debug!(program, ?args, "running nix");
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut nix = RunningNix::new(child);

    let finished = tokio::time::timeout_at(deadline, async {
        tokio::join!(nix.wait(), read_all(stdout), log_tail(stderr, program))
    })
    .await;

    match finished {
        Ok((status, stdout, tail)) => {
            let status = status?;
            if status.success() {
                Ok(stdout?)
            } else {
                Err(NixError::Failed { status: status.to_string(), log_tail: tail })
            }
        }
        Err(_elapsed) => {
            tracing::warn!(program, timeout = ?timeout, "nix timed out, stopping it and its builders");
            nix.stop().await;
            Err(NixError::Timeout(timeout))
        }
    }
}

/// Set `STRATA_NIX_OFFLINE=1` where no binary cache is reachable (tests, the
/// demo): Nix otherwise waits on the unreachable cache before every build.
/// Without it Nix's own configuration is left alone.
fn offline_nix_config() -> Option<String> {
    if std::env::var("STRATA_NIX_OFFLINE").as_deref() != Ok("1") {
        return None;
    }
    let mut config = std::env::var("NIX_CONFIG").unwrap_or_default();
    if !config.is_empty() && !config.ends_with('\n') {
        config.push('\n');
    }
    config.push_str("substituters =\n");
    Some(config)
}

async fn read_all(mut out: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    out.read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Logs every stderr line and keeps the last few for the error message.
async fn log_tail(err: impl AsyncRead + Unpin, program: &str) -> String {
    let mut reader = BufReader::new(err);
    let mut tail = VecDeque::with_capacity(LOG_TAIL_LINES);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                tracing::debug!(program, "{text}");
                if tail.len() == LOG_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(text);
            }
        }
    }
    Vec::from(tail).join("\n")
}

/// How long Nix gets, once asked to stop, to stop its builders and remove
/// their build directories itself. A killed Nix leaves a build's whole
/// temporary tree behind in /tmp, which for a large package is gigabytes.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running Nix client, stopped together with its builders on a timeout
/// or when dropped before it finished (the request was cancelled).
///
/// The client runs in a process group of its own, but its builders do not
/// stay there: Nix puts each in a new session. Killing only the client's
/// group would leave a build running, orphaned. So stopping is: SIGTERM to
/// the client's group (Nix then kills its builders and cleans up), and if
/// it has not exited after [`STOP_GRACE`], SIGSTOP so that it can start no
/// more builders, a walk of /proc for its descendants, and SIGKILL to its
/// group and to theirs. Groups of builders seen before the SIGTERM are
/// killed too if anything in them is still alive.
struct RunningNix {
    /// `None` once reaped: from then on the pid (and so the group id) may
    /// name an unrelated process, so nothing may be signalled any more.
    child: Option<Child>,
    pid: libc::pid_t,
}

impl RunningNix {
    fn new(child: Child) -> Self {
        let pid = child.id().expect("a child just spawned has a pid") as libc::pid_t;
        RunningNix { child: Some(child), pid }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("waited for once");
        let status = child.wait().await;
        if status.is_ok() {
            self.child = None;
        }
        status
    }

    async fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            let builders = ask_to_stop(self.pid);
            stop_or_kill(child, self.pid, builders).await;
        }
    }
}

impl Drop for RunningNix {
    fn drop(&mut self) {
        let Some(child) = self.child.take() else { return };
        tracing::debug!(pid = self.pid, "nix request cancelled, stopping nix");
        let builders = ask_to_stop(self.pid);
        match tokio::runtime::Handle::try_current() {
            // Waiting out the grace period cannot happen here, in drop.
            Ok(runtime) => {
                runtime.spawn(stop_or_kill(child, self.pid, builders));
            }
            Err(_) => {
                kill_tree(self.pid, &builders);
                drop(child); // kill_on_drop, and reaped by tokio
            }
        }
    }
}

/// SIGTERM to the client's group; returns the groups of its descendants as
/// they were just before.
fn ask_to_stop(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let builders = descendant_groups(pid);
    // SAFETY: a plain syscall; `pid` is an unreaped child's group.
    unsafe { libc::killpg(pid, libc::SIGTERM) };
    builders
}

async fn stop_or_kill(mut child: Child, pid: libc::pid_t, builders: Vec<libc::pid_t>) {
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        tracing::warn!(pid, "nix did not stop within {STOP_GRACE:?}, killing it and its builders");
        kill_tree(pid, &builders);
        let _ = child.wait().await;
    }
    kill_live_groups(&builders);
}

/// SIGKILL to the (unreaped) client's group, to its descendants' groups and
/// to `builders`.
fn kill_tree(pid: libc::pid_t, builders: &[libc::pid_t]) {
    // SAFETY: plain syscalls; `pid` is an unreaped child's group.
    unsafe { libc::killpg(pid, libc::SIGSTOP) };
    let groups = descendant_groups(pid);
    unsafe { libc::killpg(pid, libc::SIGKILL) };
    kill_live_groups(&groups);
    kill_live_groups(builders);
}

/// Kills those of `groups` that still have a process in them. A group id is
/// not reused while a member lives, so checking first keeps a stale id from
/// hitting an unrelated process.
fn kill_live_groups(groups: &[libc::pid_t]) {
    let live: HashSet<libc::pid_t> = processes().into_iter().map(|(_, _, pgrp)| pgrp).collect();
    for group in groups.iter().filter(|g| live.contains(g)) {
        // SAFETY: a plain syscall on a group with a live member.
        unsafe { libc::killpg(*group, libc::SIGKILL) };
    }
}

/// Process groups of the processes below `root`, other than `root`'s own
/// and this server's.
fn descendant_groups(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<(libc::pid_t, libc::pid_t)>> = HashMap::new();
    for (pid, ppid, pgrp) in processes() {
        children.entry(ppid).or_default().push((pid, pgrp));
    }
    // SAFETY: getpgrp cannot fail.
    let own = unsafe { libc::getpgrp() };
    let mut groups = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for &(pid, pgrp) in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if pgrp > 1 && pgrp != own && pgrp != root {
                groups.push(pgrp);
            }
            queue.push(pid);
        }
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Every (pid, ppid, process group) in /proc. Empty where there is no
/// /proc: then only the client's own group is signalled.
fn processes() -> Vec<(libc::pid_t, libc::pid_t, libc::pid_t)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((ppid, pgrp)) = parse_stat(&stat) {
            found.push((pid, ppid, pgrp));
        }
    }
    found
}

/// (ppid, pgrp) from /proc/PID/stat. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(libc::pid_t, libc::pid_t)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "4242 (sh) -c (x)) S 4000 4100 4100 0 -1 4194560 1 0 0 0";
        assert_eq!(parse_stat(stat), Some((4000, 4100)));
    }
}
