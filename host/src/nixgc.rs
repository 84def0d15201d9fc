//! The Nix part of `strata gc`: releases the GC roots (`nix-build` out
//! links under `<nix work dir>/gcroots/<key>/result*`) of images that are
//! gone, and deletes the store paths only they kept alive.
//!
//! Roots are local to a machine, so this part acts only on the directories
//! under this machine's work dir; records written by other replicas name
//! roots on their machines and only ever keep a directory here (never
//! release one).
//!
//! A root directory is released when
//! - no kept image record names it (one directory serves every image with the
//!   same top-level paths: two tags, two grouping plugins),
//! - its links are older than the window *and* than the Nix timeout plus
//!   [`IN_FLIGHT_MARGIN`]: a build writes its record only after `nix-build`,
//!   the closure query, packing and uploading, so a young directory no record
//!   names may be a build under way (an old one is a failed build, a
//!   `strata inspect`, or an image gc removed),
//! - and not every path it roots belongs to a kept image (records written
//!   before images recorded their roots name none; their layers list their
//!   paths).
//!
//! Then the store paths are deleted with `nix-store --delete`, never
//! `nix-store --gc`: the host's Nix store may hold other things (profiles,
//! other users' builds) that are not this registry's to collect. Deleted are
//! the released roots' closure minus everything still reachable from any
//! other root of the store (`nix-store --gc --print-roots`: kept images'
//! roots, profiles, and the temporary roots of running Nix processes, which
//! protect a build in flight) minus the paths of kept images. Nix 2.8
//! refuses the whole `--delete` (deleting nothing) when one path is alive, as
//! when a build started using it since: that path is dropped and the rest
//! retried.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Time a build may take between `nix-build` and writing its image record
/// (closure query, packing, uploading), beyond the Nix timeout.
pub const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(3600);
/// Store paths per `nix-store` invocation (keeps argument lists short).
const CHUNK: usize = 500;
/// `--delete` retries after Nix found a path alive.
const DELETE_ATTEMPTS: usize = 50;
/// One `nix-store` call; a whole-store query on a large store takes seconds.
const NIX_STORE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the kept images hold, from their records.
#[derive(Debug, Default, Clone)]
pub struct Kept {
    /// Root directories kept images record (any machine's).
    pub roots: HashSet<PathBuf>,
    /// Store paths of kept images' layers.
    pub paths: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The Nix work dir (as `[nix] work_dir`); its `gcroots` are acted on.
    pub work_dir: PathBuf,
    /// The gc window.
    pub older_than: Duration,
    /// The Nix timeout (`[nix] timeout_secs`).
    pub nix_timeout: Duration,
}

/// What the Nix part found, and removed unless it was a dry run.
#[derive(Debug, Default, Clone)]
pub struct NixReport {
    pub deleted: bool,
    pub gcroots: PathBuf,
    /// `false`: no gcroots directory here (nothing was ever built on this
    /// machine with this work dir).
    pub present: bool,
    /// Directories a kept image names or whose paths kept images hold.
    pub roots_kept: usize,
    /// Directories no kept image names but young: perhaps a build under way.
    pub roots_young: usize,
    pub roots_released: Vec<PathBuf>,
    /// Paths of released roots still reachable from other roots (or used by
    /// kept images): they stay.
    pub paths_shared: usize,
    /// Paths deleted (or to delete), and their NAR bytes.
    pub paths_freed: usize,
    pub bytes_freed: u64,
    /// Paths a running Nix process started using during the run (alive when
    /// deleted): they stay.
    pub paths_alive: usize,
}

struct RootDir {
    dir: PathBuf,
    /// Store paths the links point at.
    targets: Vec<String>,
    newest: SystemTime,
}

fn internal(what: &str, e: impl fmt::Display) -> Error {
    Error::Internal(format!("nix gc: {what}: {e}"))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok()
}

/// Every directory under `gcroots`, with its links' targets and the time
/// the newest of them (or the directory) was written.
fn scan(gcroots: &Path) -> Result<Vec<RootDir>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(gcroots).map_err(|e| internal(&gcroots.display().to_string(), e))? {
        let entry = entry.map_err(|e| internal("reading gcroots", e))?;
        let dir = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() {
            continue;
        }
        let mut newest = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut targets = Vec::new();
        for link in std::fs::read_dir(&dir).map_err(|e| internal(&dir.display().to_string(), e))?.flatten() {
            let link = link.path();
            newest = newest.max(mtime(&link).unwrap_or(SystemTime::UNIX_EPOCH));
            if let Ok(t) = std::fs::read_link(&link) {
                targets.push(t.to_string_lossy().into_owned());
            }
        }
        targets.sort();
        targets.dedup();
        dirs.push(RootDir { dir, targets, newest });
    }
    dirs.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(dirs)
}

/// Runs `nix-store ARGS`; (success, stdout, stderr).
async fn nix_store(args: &[OsString]) -> Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::new("nix-store");
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(NIX_STORE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| internal("nix-store", format!("no answer within {NIX_STORE_TIMEOUT:?}")))?
        .map_err(|e| internal("running nix-store", e))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `nix-store FLAGS PATH…` over `paths` in chunks, every chunk's stdout
/// lines in order; fails on the first failing chunk.
async fn query(flags: &[&str], paths: &[String]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for chunk in paths.chunks(CHUNK) {
        let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
        args.extend(chunk.iter().map(OsString::from));
        let (ok, out, err) = nix_store(&args).await?;
        if !ok {
            return Err(internal(&format!("nix-store {}", flags.join(" ")), err.trim()));
        }
        lines.extend(out.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
    }
    Ok(lines)
}

/// The paths of `paths` that are valid store paths (the others were
/// deleted, or never were).
async fn valid(paths: &[String]) -> Result<Vec<String>> {
    let invalid: HashSet<String> = query(&["--check-validity", "--print-invalid"], paths).await?.into_iter().collect();
    Ok(paths.iter().filter(|p| !invalid.contains(*p)).cloned().collect())
}

/// The closure of valid `paths`.
async fn closure(paths: &[String]) -> Result<HashSet<String>> {
    Ok(query(&["--query", "--requisites"], paths).await?.into_iter().collect())
}

/// NAR size of each path (`--query --size` answers one line a path, in
/// order).
async fn sizes(paths: &[String]) -> Result<BTreeMap<String, u64>> {
    let lines = query(&["--query", "--size"], paths).await?;
    Ok(paths.iter().cloned().zip(lines.iter().map(|l| l.parse().unwrap_or(0))).collect())
}

/// Everything reachable from the store's roots other than the links under
/// `released`: Nix's own view of what stays alive once they are gone
/// (temporary roots of running builds included).
async fn alive_without(released: &[PathBuf]) -> Result<HashSet<String>> {
    let (ok, out, err) = nix_store(&["--gc".into(), "--print-roots".into()]).await?;
    if !ok {
        return Err(internal("nix-store --gc --print-roots", err.trim()));
    }
    let released_too: Vec<PathBuf> =
        released.iter().flat_map(|d| [d.clone(), std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())]).collect();
    let mut targets = Vec::new();
    for line in out.lines() {
        let Some((link, target)) = line.rsplit_once(" -> ") else { continue };
        let link = Path::new(link.trim());
        if released_too.iter().any(|d| link.starts_with(d)) {
            continue;
        }
        targets.push(target.trim().to_string());
    }
    targets.sort();
    targets.dedup();
    let targets = valid(&targets).await?;
    closure(&targets).await
}

/// The path Nix 2.8 names in `Cannot delete path '…' since it is still alive`.
fn alive_path(stderr: &str) -> Option<String> {
    let start = stderr.find("elete path '")? + "elete path '".len();
    let rest = &stderr[start..];
    let end = rest.find('\'')?;
    rest[end..].contains("still alive").then(|| rest[..end].to_string())
}

/// One collection of this machine's roots; removes them and deletes the
/// paths only they kept alive when `delete`, else reports what it would.
pub async fn collect(opts: &Options, kept: &Kept, delete: bool) -> Result<NixReport> {
    let work_dir = std::path::absolute(&opts.work_dir).map_err(|e| internal("work dir", e))?;
    let gcroots = work_dir.join("gcroots");
    let mut report = NixReport { deleted: delete, gcroots: gcroots.clone(), ..Default::default() };
    if !gcroots.is_dir() {
        return Ok(report);
    }
    report.present = true;
    let kept_here: HashSet<&std::ffi::OsStr> =
        kept.roots.iter().filter(|r| r.parent() == Some(gcroots.as_path())).filter_map(|r| r.file_name()).collect();
    let grace = opts.older_than.max(opts.nix_timeout + IN_FLIGHT_MARGIN);
    let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);

    let dirs = scan(&gcroots)?;
    let all_targets: Vec<String> = {
        let mut t: Vec<String> = dirs.iter().flat_map(|d| d.targets.iter().cloned()).collect();
        t.sort();
        t.dedup();
        t
    };
    let valid_targets: HashSet<String> = valid(&all_targets).await?.into_iter().collect();
    let mut released = Vec::new();
    let mut released_targets = Vec::new();
    for d in dirs {
        let named = d.dir.file_name().is_some_and(|n| kept_here.contains(n));
        let held_by_images = !d.targets.is_empty() && d.targets.iter().all(|t| kept.paths.contains(t));
        if named || held_by_images {
            report.roots_kept += 1;
        } else if d.newest >= cutoff {
            report.roots_young += 1;
        } else {
            released_targets.extend(d.targets.iter().filter(|t| valid_targets.contains(*t)).cloned());
            released.push(d.dir);
        }
    }
    released_targets.sort();
    released_targets.dedup();

    let mut doomed: Vec<String> = Vec::new();
    if !released_targets.is_empty() {
        let reachable = closure(&released_targets).await?;
        let alive = alive_without(&released).await?;
        for p in reachable {
            if alive.contains(&p) || kept.paths.contains(&p) {
                report.paths_shared += 1;
            } else {
                doomed.push(p);
            }
        }
        doomed.sort();
    }
    report.roots_released = released.clone();

    if !delete {
        report.paths_freed = doomed.len();
        report.bytes_freed = if doomed.is_empty() { 0 } else { sizes(&doomed).await?.values().sum() };
        return Ok(report);
    }

    // Sizes first: a deleted path has none.
    let size_of = if doomed.is_empty() { BTreeMap::new() } else { sizes(&doomed).await? };
    for dir in &released {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(internal(&format!("removing {}", dir.display()), e));
            }
        }
        tracing::info!(root = %dir.display(), "released Nix GC root");
    }
    let mut left = doomed.clone();
    for _ in 0..DELETE_ATTEMPTS {
        if left.is_empty() {
            break;
        }
        let mut failed = None;
        for chunk in left.chunks(CHUNK) {
            let mut args: Vec<OsString> = vec!["--delete".into()];
            args.extend(chunk.iter().map(OsString::from));
            let (ok, _, err) = nix_store(&args).await?;
            if !ok {
                failed = Some(err);
                break;
            }
        }
        let Some(err) = failed else { break };
        // Nix deleted nothing of that chunk: drop what it found alive.
        let still = valid(&left).await?;
        match alive_path(&err) {
            Some(p) if still.contains(&p) => {
                tracing::info!(path = %p, "a store path gc released is in use again; it stays");
                report.paths_alive += 1;
                left = still.into_iter().filter(|s| *s != p).collect();
            }
            _ => return Err(internal("nix-store --delete", err.trim())),
        }
    }
    let still: HashSet<String> = valid(&doomed).await?.into_iter().collect();
    for (p, size) in &size_of {
        if !still.contains(p) {
            report.paths_freed += 1;
            report.bytes_freed += size;
        }
    }
    Ok(report)
}

impl fmt::Display for NixReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.present {
            return write!(f, "nix:           no GC roots here ({}): nothing was built on this machine", self.gcroots.display());
        }
        let (released, freed) = if self.deleted { ("released", "deleted") } else { ("to release", "to delete") };
        writeln!(
            f,
            "nix roots:     {} kept, {} young (perhaps a build under way), {} {released} ({})",
            self.roots_kept,
            self.roots_young,
            self.roots_released.len(),
            self.gcroots.display()
        )?;
        write!(
            f,
            "nix store:     {} paths {freed}, {} freed ({} bytes, NAR size); {} still used by other roots or kept images",
            self.paths_freed,
            indicatif::HumanBytes(self.bytes_freed),
            self.bytes_freed,
            self.paths_shared
        )?;
        if self.paths_alive > 0 {
            write!(f, "\n               {} in use again by a running Nix process, kept", self.paths_alive)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_path_nix_found_alive() {
        let err = "finding garbage collector roots...\nerror: Cannot delete path '/nix/store/79xs-a' since it is still alive. To find out why, use: nix-store --query --roots\n";
        assert_eq!(alive_path(err).as_deref(), Some("/nix/store/79xs-a"));
        assert_eq!(alive_path("error: something else"), None);
    }
}
