//! Running Nix: from package names to a built runtime closure.
//!
//! Three child processes per image, each a question Nix answers best:
//! `nix-instantiate` looks the names up (so that *all* missing names are
//! reported at once, before anything is built), `nix-build` realises the
//! packages (its out links become GC roots, so the paths stay while layers
//! are cut from them), and `nix path-info` reports the runtime closure with
//! NAR sizes and hashes, which is what layer grouping needs.
//!
//! Package names and the source only ever reach Nix as `--argstr` data,
//! read by `nix/build-image.nix` with `builtins.fromJSON`: a request can name
//! a package, never inject an expression.
//!
//! Nix builders run in sessions of their own (Nix calls `setsid`), so killing
//! the process group of the Nix client is not enough to stop a build: see
//! [`RunningNix`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use strata_plugin_sdk::{ClosureGraph, NamedPath, NixSource};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Embedded so that the binary needs no files installed next to it; written
/// out by [`NixRunner::new`] because Nix can only import files.
const BUILD_IMAGE_NIX: &str = include_str!("../../nix/build-image.nix");
const LOAD_PKGS_NIX: &str = include_str!("../../nix/load-pkgs.nix");

/// Enough of Nix's stderr to show why a build failed (the builder's last
/// lines and Nix's error), without keeping a whole build log per request.
const LOG_TAIL_LINES: usize = 40;

#[derive(Debug, Clone)]
pub struct NixOptions {
    /// For a whole `resolve` (look-up, build and closure together): that is
    /// the time a waiting client experiences.
    pub timeout: Duration,
    /// Where the expressions are written and the GC roots (out links) kept.
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Top-level out paths, in request order, each once.
    pub roots: Vec<String>,
    pub graph: ClosureGraph,
    /// The directory holding this build's out links (Nix GC roots), under
    /// `work_dir/gcroots`; images record it so that `strata gc` can release
    /// exactly the roots of the images it removes. `None` for no packages.
    pub gc_root: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error("packages not found: {}", .0.join(", "))]
    Missing(Vec<String>),
    #[error("nix timed out after {0:?}")]
    Timeout(Duration),
    #[error("nix failed ({status}): {log_tail}")]
    Failed { status: String, log_tail: String },
    #[error("running nix: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected output from nix: {0}")]
    Parse(String),
}

#[derive(Debug)]
pub struct NixRunner {
    opts: NixOptions,
    build_image_nix: PathBuf,
    gc_roots: PathBuf,
    builds_started: AtomicU64,
}

/// What `build-image.nix -A lookup` prints.
#[derive(Debug, Deserialize)]
struct Lookup {
    missing: Vec<String>,
    found: Vec<Found>,
}

/// One found package; its `name` (as requested) is not needed here.
#[derive(Debug, Deserialize)]
struct Found {
    path: String,
}

impl NixRunner {
    pub fn new(opts: NixOptions) -> std::io::Result<Self> {
        // Absolute, so that a later change of the working directory cannot
        // make Nix read other files or put roots elsewhere.
        let work_dir = std::path::absolute(&opts.work_dir)?;
        let nix_dir = work_dir.join("nix");
        let gc_roots = work_dir.join("gcroots");
        std::fs::create_dir_all(&nix_dir)?;
        std::fs::create_dir_all(&gc_roots)?;
        write_if_changed(&nix_dir.join("build-image.nix"), BUILD_IMAGE_NIX)?;
        write_if_changed(&nix_dir.join("load-pkgs.nix"), LOAD_PKGS_NIX)?;
        Ok(NixRunner {
            opts: NixOptions { work_dir, ..opts },
            build_image_nix: nix_dir.join("build-image.nix"),
            gc_roots,
            builds_started: AtomicU64::new(0),
        })
    }

    /// How many `nix-build`s this runner has started: lets tests check that
    /// concurrent requests for one image build it once.
    pub fn builds_started(&self) -> u64 {
        self.builds_started.load(Ordering::SeqCst)
    }

    pub async fn resolve(
        &self,
        source: &NixSource,
        packages: &[String],
        system: &str,
    ) -> Result<Resolved, NixError> {
        let deadline = Instant::now() + self.opts.timeout;
        if packages.is_empty() {
            return Ok(Resolved { roots: Vec::new(), graph: ClosureGraph::default(), gc_root: None });
        }
        let source_json = serde_json::to_string(&absolute_source(source)?)
            .map_err(|e| NixError::Parse(format!("serialising the source: {e}")))?;
        let packages_json = serde_json::to_string(packages)
            .map_err(|e| NixError::Parse(format!("serialising package names: {e}")))?;
        let expr_args: Vec<OsString> = vec![
            "--argstr".into(),
            "source".into(),
            source_json.into(),
            "--argstr".into(),
            "packages".into(),
            packages_json.into(),
            "--argstr".into(),
            "system".into(),
            system.into(),
        ];

        // 1. Which names exist. Evaluation only: builds nothing.
        let mut args: Vec<OsString> = vec![
            "--eval".into(),
            "--strict".into(),
            "--json".into(),
            self.build_image_nix.clone().into(),
            "-A".into(),
            "lookup".into(),
        ];
        args.extend(expr_args.iter().cloned());
        let out = self.run("nix-instantiate", &args, deadline).await?;
        let lookup: Lookup = serde_json::from_slice(&out)
            .map_err(|e| NixError::Parse(format!("lookup result: {e}")))?;
        if !lookup.missing.is_empty() {
            return Err(NixError::Missing(lookup.missing));
        }
        let mut seen = HashSet::new();
        let roots: Vec<String> =
            lookup.found.into_iter().map(|f| f.path).filter(|p| seen.insert(p.clone())).collect();

        // 2. Build. The out links are GC roots named after the set of roots,
        //    so the same image reuses (rather than piles up) its roots, and
        //    two concurrent builds of it write the same links.
        let gc_root = self.gc_roots.join(roots_key(&roots));
        let link = gc_root.join("result");
        let mut args: Vec<OsString> =
            vec![self.build_image_nix.clone().into(), "-A".into(), "contents".into()];
        args.extend(expr_args.iter().cloned());
        args.extend(["--out-link".into(), link.into()]);
        self.builds_started.fetch_add(1, Ordering::SeqCst);
        let out = self.run("nix-build", &args, deadline).await?;
        let built: HashSet<&str> =
            std::str::from_utf8(&out).unwrap_or_default().lines().map(str::trim).collect();
        if let Some(r) = roots.iter().find(|r| !built.contains(r.as_str())) {
            return Err(NixError::Parse(format!("nix-build did not report building {r}")));
        }

        // 3. The runtime closure.
        let mut args: Vec<OsString> = vec![
            "--extra-experimental-features".into(),
            "nix-command".into(),
            "path-info".into(),
            "--json".into(),
            "--recursive".into(),
        ];
        args.extend(roots.iter().map(OsString::from));
        let out = self.run("nix", &args, deadline).await?;
        let store_dir = Path::new(&roots[0]).parent().and_then(Path::to_str).unwrap_or("/nix/store");
        let paths = parse_path_info(&out, store_dir)?;
        // Plugins are promised a closed graph containing the roots; a Nix
        // that printed less is caught here rather than as a broken image.
        let graph = ClosureGraph::from_named(&roots, paths).map_err(NixError::Parse)?;
        Ok(Resolved { roots, graph, gc_root: Some(gc_root) })
    }

    /// Runs one Nix command to completion or to the deadline; returns its
    /// stdout. On a timeout, or when the caller drops this future (a client
    /// went away), every process it started is killed.
    async fn run(&self, program: &str, args: &[OsString], deadline: Instant) -> Result<Vec<u8>, NixError> {
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
                tracing::warn!(program, timeout = ?self.opts.timeout, "nix timed out, stopping it and its builders");
                nix.stop().await;
                Err(NixError::Timeout(self.opts.timeout))
            }
        }
    }
}

/// Nix's `import` needs an absolute path; a relative one in a config file
/// means relative to the server's working directory, as everywhere else.
fn absolute_source(source: &NixSource) -> std::io::Result<NixSource> {
    Ok(match source {
        NixSource::Path { path } if !Path::new(path).is_absolute() => NixSource::Path {
            path: std::path::absolute(path)?.to_string_lossy().into_owned(),
        },
        other => other.clone(),
    })
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

/// Another server process may share the work dir and be reading the file
/// right now: replace it atomically, and only when it differs.
fn write_if_changed(path: &Path, contents: &str) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(contents.as_bytes()) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// A stable name for a set of roots (FNV-1a, 64 bits): stable across
/// restarts and Rust versions, unlike `DefaultHasher`, so that a restarted
/// server overwrites its old links instead of adding new ones.
fn roots_key(roots: &[String]) -> String {
    let mut sorted: Vec<&str> = roots.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sorted.join("\n").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
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

/// One entry of `nix path-info --json`, any version.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathInfoJson {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(default)]
    store_dir: Option<String>,
}

/// Parses `nix path-info --json` into graph entries (references by path).
///
/// Nix has printed three shapes: an array of objects with a `path` (up to
/// 2.18), an object keyed by full path (2.19 on), and an object keyed by
/// base name, with base-name references and structured hashes (the "v2"
/// format of later versions). Base names are completed with `store_dir`
/// (the entry's own `storeDir` when it has one).
pub(crate) fn parse_path_info(json: &[u8], store_dir: &str) -> Result<Vec<NamedPath>, NixError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| NixError::Parse(format!("path-info output: {e}")))?;
    let entries: Vec<(Option<String>, Value)> = match value {
        Value::Array(items) => items.into_iter().map(|v| (None, v)).collect(),
        Value::Object(map) => map.into_iter().map(|(k, v)| (Some(k), v)).collect(),
        other => return Err(NixError::Parse(format!("path-info output is neither list nor map: {other}"))),
    };
    let mut paths = BTreeMap::new();
    for (key, value) in entries {
        if value.is_null() {
            let key = key.unwrap_or_default();
            return Err(NixError::Parse(format!("{key} is not a valid store path")));
        }
        let info: PathInfoJson =
            serde_json::from_value(value).map_err(|e| NixError::Parse(format!("path-info entry: {e}")))?;
        let dir = info.store_dir.as_deref().unwrap_or(store_dir);
        let path = key
            .or(info.path)
            .map(|p| full_path(dir, &p))
            .ok_or_else(|| NixError::Parse("path-info entry without a path".into()))?;
        if info.valid == Some(false) {
            return Err(NixError::Parse(format!("{path} is not a valid store path")));
        }
        let nar_size = info
            .nar_size
            .ok_or_else(|| NixError::Parse(format!("path-info gives no narSize for {path}")))?;
        let references = info.references.iter().map(|r| full_path(dir, r)).collect();
        paths.insert(path.clone(), NamedPath { path, nar_size, references });
    }
    Ok(paths.into_values().collect())
}

fn full_path(store_dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", store_dir.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "/nix/store/5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1";
    const BUSYBOX: &str = "/nix/store/r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static";

    fn expected() -> Vec<NamedPath> {
        vec![
            NamedPath { path: HELLO.into(), nar_size: 1280, references: vec![BUSYBOX.into()] },
            NamedPath { path: BUSYBOX.into(), nar_size: 1982512, references: vec![] },
        ]
    }

    #[test]
    fn parses_nix_2_8_array() {
        // As printed by Nix 2.8 (this machine), busybox first to check sorting.
        let json = format!(
            r#"[{{"path":"{BUSYBOX}","narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[],"registrationTime":1795434700,"ultimate":true}},
               {{"path":"{HELLO}","narHash":"sha256-2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o=","narSize":1280,"references":["{BUSYBOX}"],"deriver":"/nix/store/g37rz126y6rx634b05cdas0i879nnzhq-hello-2.12.1.drv","registrationTime":1795434718,"ultimate":true}}]"#
        );
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap(), expected());
    }

    #[test]
    fn parses_nix_2_19_object() {
        let json = format!(
            r#"{{"{HELLO}":{{"ca":null,"deriver":"/nix/store/g37rz126y6rx634b05cdas0i879nnzhq-hello-2.12.1.drv","narHash":"sha256-2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o=","narSize":1280,"references":["{BUSYBOX}"],"registrationTime":1795434718,"signatures":[],"ultimate":true}},
                "{BUSYBOX}":{{"ca":"fixed:r:sha256:1aaa","deriver":null,"narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[],"registrationTime":1795434700,"signatures":[],"ultimate":false}}}}"#
        );
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap(), expected());
    }

    #[test]
    fn parses_base_names_of_the_v2_format() {
        let json = r#"{"5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1":{"version":2,"storeDir":"/nix/store","narHash":{"algorithm":"sha256","format":"base64","hash":"2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o="},"narSize":1280,"references":["r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static"]},
                       "r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static":{"version":2,"narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[]}}"#;
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap(), expected());
    }

    #[test]
    fn rejects_invalid_paths() {
        let old = format!(r#"[{{"path":"{HELLO}","valid":false}}]"#);
        assert!(matches!(parse_path_info(old.as_bytes(), "/nix/store"), Err(NixError::Parse(_))));
        let new = format!(r#"{{"{HELLO}":null}}"#);
        assert!(matches!(parse_path_info(new.as_bytes(), "/nix/store"), Err(NixError::Parse(_))));
        assert!(matches!(parse_path_info(b"42", "/nix/store"), Err(NixError::Parse(_))));
    }

    #[test]
    fn closure_check_catches_dangling_references() {
        let graph = |roots: &[&str], paths| ClosureGraph::from_named(roots, paths);
        let g = graph(&[HELLO], expected()).unwrap();
        assert_eq!((g.roots, g.paths[0].references.clone()), (vec![0], vec![1]));
        let mut paths = expected();
        paths.pop();
        assert!(graph(&[HELLO], paths).is_err());
        assert!(graph(&["/nix/store/x-other"], expected()).is_err());
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "4242 (sh) -c (x)) S 4000 4100 4100 0 -1 4194560 1 0 0 0";
        assert_eq!(parse_stat(stat), Some((4000, 4100)));
    }

    #[test]
    fn roots_key_ignores_order() {
        let a = roots_key(&[HELLO.into(), BUSYBOX.into()]);
        assert_eq!(a, roots_key(&[BUSYBOX.into(), HELLO.into()]));
        assert_ne!(a, roots_key(&[HELLO.into()]));
    }
}
