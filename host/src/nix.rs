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

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_plugin_sdk::{store_name, ClosureGraph, NamedPath, NixSource};
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
    /// How long a missing or unavailable name is remembered (zero: not).
    pub negative_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The names that went into the image: every requested one, and the
    /// optional ones the package set has, in that order.
    pub packages: Vec<String>,
    /// Top-level out paths (each package's outputs to install), in request
    /// order, each once.
    pub roots: Vec<String>,
    pub graph: ClosureGraph,
    /// The directory holding this build's out links (Nix GC roots), under
    /// `work_dir/gcroots`; images record it so that `strata gc` can release
    /// exactly the roots of the images it removes. `None` for no packages.
    pub gc_root: Option<PathBuf>,
    /// Each package that went into the image, with what its package set
    /// says of it: the SBOM's described packages.
    pub described: Vec<Described>,
    /// Store path → its NAR hash (SHA-256, hex), as Nix recorded it.
    pub nar_hashes: BTreeMap<String, String>,
    /// This build's claim on `gc_root`: keep it until the image record
    /// naming the directory is written, so that `strata gc` leaves the
    /// directory alone meanwhile.
    pub claim: Option<crate::nixgc::RootsClaim>,
}

/// A package that went into an image: its name in the request, the paths
/// it installed and its `meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Described {
    pub name: String,
    pub paths: Vec<String>,
    pub meta: PackageMeta,
}

/// The part of a package's `meta` an SBOM uses; each field is absent when
/// the set does not have it as text (see `sbomMeta` in build-image.nix).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageMeta {
    #[serde(default)]
    pub pname: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub homepage: Option<String>,
    /// `None`: unreadable; empty: the set names none.
    #[serde(default)]
    pub licenses: Option<Vec<License>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    /// nixpkgs' `spdxId`, where SPDX has an identifier for the licence.
    #[serde(rename = "spdxId", default)]
    pub spdx_id: Option<String>,
    /// nixpkgs' `shortName` (or `fullName`, or the bare string).
    #[serde(default)]
    pub name: Option<String>,
}

/// Requested names the package set cannot give: all of them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// Names the set does not have (or that are not packages, as `xorg`).
    pub missing: Vec<String>,
    /// Names whose evaluation threw or failed an assertion, with the set's
    /// own reason (see [`public_reason`]).
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.missing.is_empty() {
            write!(f, "packages not found: {}", self.missing.join(", "))?;
        }
        if !self.refused.is_empty() {
            if !self.missing.is_empty() {
                f.write_str("; ")?;
            }
            f.write_str("packages unavailable: ")?;
            for (i, r) in self.refused.iter().enumerate() {
                let sep = if i == 0 { "" } else { "; " };
                write!(f, "{sep}{}: {}", r.name, r.reason)?;
            }
        }
        Ok(())
    }
}

/// A derivation that failed to build, and the requested packages it kept
/// from being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    /// Requested names whose build failed, directly or through a dependency.
    pub packages: Vec<String>,
    /// Names (without hash) of the derivations whose builders failed.
    pub derivations: Vec<String>,
    /// Nix's last lines: the failing builder's log; for the server log only.
    pub log_tail: String,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.packages.is_empty() { "the image".to_string() } else { self.packages.join(", ") };
        write!(f, "building {what} failed")?;
        if !self.derivations.is_empty() {
            write!(f, " (derivation {} failed)", self.derivations.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error("{0}")]
    Unavailable(Unavailable),
    #[error("{0}")]
    BuildFailed(BuildFailure),
    #[error("nix timed out after {0:?}")]
    Timeout(Duration),
    #[error("nix failed ({status}): {log_tail}")]
    Failed { status: String, log_tail: String },
    #[error("running nix: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected output from nix: {0}")]
    Parse(String),
}

pub struct NixRunner {
    opts: NixOptions,
    build_image_nix: PathBuf,
    gc_roots: PathBuf,
    builds_started: AtomicU64,
    evaluations: AtomicU64,
    /// (system, source, name) → why it cannot be had, for `negative_ttl`.
    negative: moka::sync::Cache<(String, String, String), Negative>,
}

impl std::fmt::Debug for NixRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NixRunner").field("opts", &self.opts).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Negative {
    Missing,
    Refused(String),
}

/// What `build-image.nix -A lookup` prints.
#[derive(Debug, Deserialize)]
struct Lookup {
    packages: Vec<Status>,
    #[serde(default)]
    optional: Vec<Status>,
}

#[derive(Debug, Clone, Deserialize)]
struct Status {
    name: String,
    status: StatusKind,
    #[serde(default)]
    drv: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    meta: Option<PackageMeta>,
    /// Not from Nix: the reason, when already known without `explain`.
    #[serde(skip)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StatusKind {
    Found,
    Missing,
    Unavailable,
}

/// Unavailable names explained at once (each is an evaluation of the
/// package set of its own).
const EXPLAIN_AT_ONCE: usize = 4;
/// Longest reason a client is told, in characters.
const REASON_MAX_CHARS: usize = 200;

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
        let negative = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(opts.negative_ttl.max(Duration::from_millis(1)))
            .build();
        Ok(NixRunner {
            opts: NixOptions { work_dir, ..opts },
            build_image_nix: nix_dir.join("build-image.nix"),
            gc_roots,
            builds_started: AtomicU64::new(0),
            evaluations: AtomicU64::new(0),
            negative,
        })
    }

    /// How many `nix-build`s this runner has started: lets tests check that
    /// concurrent requests for one image build it once.
    pub fn builds_started(&self) -> u64 {
        self.builds_started.load(Ordering::SeqCst)
    }

    /// How many `nix-instantiate` evaluations this runner has started: lets
    /// tests check that unavailable names cost a bounded number of them.
    pub fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::SeqCst)
    }

    pub async fn resolve(
        &self,
        source: &NixSource,
        packages: &[String],
        system: &str,
    ) -> Result<Resolved, NixError> {
        self.resolve_with_optional(source, packages, &[], system).await
    }

    /// Looks up, builds and reads the closure of `packages`, plus those of
    /// `optional` the package set has (a missing or unavailable optional
    /// name is skipped).
    pub async fn resolve_with_optional(
        &self,
        source: &NixSource,
        packages: &[String],
        optional: &[String],
        system: &str,
    ) -> Result<Resolved, NixError> {
        let deadline = Instant::now() + self.opts.timeout;
        if packages.is_empty() {
            return Ok(Resolved {
                packages: Vec::new(),
                roots: Vec::new(),
                graph: ClosureGraph::default(),
                gc_root: None,
                described: Vec::new(),
                nar_hashes: BTreeMap::new(),
                claim: None,
            });
        }
        let source_json = serde_json::to_string(&absolute_source(source)?)
            .map_err(|e| NixError::Parse(format!("serialising the source: {e}")))?;
        let optional: Vec<String> = optional.iter().filter(|o| !packages.contains(o)).cloned().collect();

        // 1. Which names the set has, each tried on its own.
        let found = self.look_up(&source_json, packages, &optional, system, deadline).await?;
        let mut names = Vec::new();
        let mut roots = Vec::new();
        let mut drvs = Vec::new();
        let mut described = Vec::new();
        for status in found {
            for path in &status.paths {
                if !roots.contains(path) {
                    roots.push(path.clone());
                }
            }
            if let Some(drv) = status.drv {
                drvs.push((drv, status.name.clone()));
            }
            described.push(Described {
                name: status.name.clone(),
                paths: status.paths.clone(),
                meta: status.meta.unwrap_or_default(),
            });
            names.push(status.name);
        }
        if roots.is_empty() {
            return Err(NixError::Parse("the lookup found packages without paths".into()));
        }

        // 2. Build. The out links are GC roots named after the set of roots,
        //    so the same image reuses (rather than piles up) its roots, and
        //    two concurrent builds of it write the same links.
        let gc_root = self.gc_roots.join(roots_key(&roots));
        let claim = crate::nixgc::RootsClaim::take(&gc_root).await?;
        let link = gc_root.join("result");
        let mut args = self.expr_args("contents", &source_json, &names, &[], system)?;
        args.extend(["--out-link".into(), link.into()]);
        self.builds_started.fetch_add(1, Ordering::SeqCst);
        let out = match self.run("nix-build", &args, deadline).await {
            Err(NixError::Failed { log_tail, .. }) => return Err(NixError::BuildFailed(build_failure(&drvs, log_tail))),
            other => other?,
        };
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
        let (paths, nar_hashes) = parse_path_info(&out, store_dir)?;
        // Plugins are promised a closed graph containing the roots; a Nix
        // that printed less is caught here rather than as a broken image.
        let graph = ClosureGraph::from_named(&roots, paths).map_err(NixError::Parse)?;
        Ok(Resolved { packages: names, roots, graph, gc_root: Some(gc_root), described, nar_hashes, claim: Some(claim) })
    }

    /// The arguments asking `build-image.nix` for `attr`, for `nix-build`
    /// or (with [`NixRunner::instantiate`]'s flags) `nix-instantiate`.
    fn expr_args(
        &self,
        attr: &str,
        source_json: &str,
        packages: &[String],
        optional: &[String],
        system: &str,
    ) -> Result<Vec<OsString>, NixError> {
        let json = |names: &[String]| {
            serde_json::to_string(names).map_err(|e| NixError::Parse(format!("serialising package names: {e}")))
        };
        let mut args: Vec<OsString> = vec![self.build_image_nix.clone().into(), "-A".into(), attr.into()];
        for (key, value) in [
            ("source", source_json.to_string()),
            ("packages", json(packages)?),
            ("optional", json(optional)?),
            ("system", system.to_string()),
        ] {
            args.extend(["--argstr".into(), key.into(), value.into()]);
        }
        Ok(args)
    }

    /// Step 1: the found packages, required ones first, or every name the
    /// set cannot give with its reason. Remembered answers are used for
    /// names asked about within `negative_ttl`; the others are evaluated in
    /// one `nix-instantiate`, and each unavailable one once more to read
    /// why ([`NixRunner::explain`]).
    async fn look_up(
        &self,
        source_json: &str,
        packages: &[String],
        optional: &[String],
        system: &str,
        deadline: Instant,
    ) -> Result<Vec<Status>, NixError> {
        let key = |name: &str| (system.to_string(), source_json.to_string(), name.to_string());
        let known = |name: &String| self.negative.get(&key(name));
        let mut remembered: HashMap<String, Negative> = HashMap::new();
        for name in packages {
            if let Some(n) = known(name) {
                remembered.insert(name.clone(), n);
            }
        }
        let ask_packages: Vec<String> = packages.iter().filter(|n| !remembered.contains_key(*n)).cloned().collect();
        let ask_optional: Vec<String> = optional.iter().filter(|n| known(n).is_none()).cloned().collect();

        let lookup = if ask_packages.is_empty() && ask_optional.is_empty() {
            Lookup { packages: Vec::new(), optional: Vec::new() }
        } else {
            self.evaluate_lookup(source_json, &ask_packages, &ask_optional, system, deadline).await?
        };

        // The set's reasons for the newly unavailable names (optional ones
        // are skipped without one: nobody asked for them).
        let to_explain: Vec<String> = lookup
            .packages
            .iter()
            .filter(|s| s.status == StatusKind::Unavailable && s.reason.is_none())
            .map(|s| s.name.clone())
            .collect();
        let explained = to_explain.into_iter().map(|name| self.explain(source_json, name, system, deadline));
        let reasons: HashMap<String, String> =
            futures::stream::iter(explained).buffer_unordered(EXPLAIN_AT_ONCE).try_collect().await?;

        let ttl = !self.opts.negative_ttl.is_zero();
        let mut unavailable = Unavailable::default();
        let mut found = Vec::new();
        let mut fresh: HashMap<&str, &Status> = lookup.packages.iter().map(|s| (s.name.as_str(), s)).collect();
        for name in packages {
            let negative = match (remembered.get(name), fresh.remove(name.as_str())) {
                (Some(n), _) => Some(n.clone()),
                (None, Some(s)) => match s.status {
                    StatusKind::Found => {
                        found.push(s.clone());
                        None
                    }
                    StatusKind::Missing => Some(Negative::Missing),
                    StatusKind::Unavailable => Some(Negative::Refused(
                        s.reason.clone().or_else(|| reasons.get(name).cloned()).unwrap_or_else(|| "evaluation failed".into()),
                    )),
                },
                (None, None) => return Err(NixError::Parse(format!("the lookup did not report {name}"))),
            };
            match negative {
                None => {}
                Some(n) => {
                    if ttl {
                        self.negative.insert(key(name), n.clone());
                    }
                    match n {
                        Negative::Missing => unavailable.missing.push(name.clone()),
                        Negative::Refused(reason) => unavailable.refused.push(Refused { name: name.clone(), reason }),
                    }
                }
            }
        }
        for s in &lookup.optional {
            match s.status {
                StatusKind::Found => found.push(s.clone()),
                StatusKind::Missing if ttl => self.negative.insert(key(&s.name), Negative::Missing),
                StatusKind::Unavailable if ttl => {
                    self.negative.insert(key(&s.name), Negative::Refused("evaluation failed".into()))
                }
                _ => {}
            }
        }
        if !unavailable.missing.is_empty() || !unavailable.refused.is_empty() {
            return Err(NixError::Unavailable(unavailable));
        }
        Ok(found)
    }

    /// One evaluation of `-A lookup`. A package set can fail in ways
    /// `tryEval` does not catch (`abort`, a missing attribute inside a
    /// package); then, if the set itself loads, each name is looked up on
    /// its own so that one such name cannot hide the others.
    async fn evaluate_lookup(
        &self,
        source_json: &str,
        packages: &[String],
        optional: &[String],
        system: &str,
        deadline: Instant,
    ) -> Result<Lookup, NixError> {
        let (status, log_tail) = match self.try_lookup(source_json, packages, optional, system, deadline).await? {
            Ok(lookup) => return Ok(lookup),
            Err(failed) => failed,
        };
        let probe = self.expr_args("loads", source_json, &[], &[], system)?;
        if self.instantiate(&probe, deadline).await.is_err() {
            return Err(NixError::Failed { status, log_tail });
        }
        if packages.len() + optional.len() == 1 {
            // The set loads, so the one name is the failure: Nix said why.
            return Ok(single_failure(packages, optional, &log_tail));
        }
        tracing::warn!("a package failed its lookup outside tryEval; looking each name up on its own");
        // Owned first: a stream of futures borrowing through closures trips
        // the compiler's Send check of the spawned build future.
        let mut names: Vec<(String, bool)> = packages.iter().map(|n| (n.clone(), false)).collect();
        names.extend(optional.iter().map(|n| (n.clone(), true)));
        let each = names.into_iter().map(|(name, o)| self.look_up_one(source_json, name, o, system, deadline));
        let each: Vec<Lookup> = futures::stream::iter(each).buffered(EXPLAIN_AT_ONCE).try_collect().await?;
        let mut all = Lookup { packages: Vec::new(), optional: Vec::new() };
        for l in each {
            all.packages.extend(l.packages);
            all.optional.extend(l.optional);
        }
        Ok(all)
    }

    /// `-A lookup` of one name, a required or an optional one.
    async fn look_up_one(
        &self,
        source_json: &str,
        name: String,
        is_optional: bool,
        system: &str,
        deadline: Instant,
    ) -> Result<Lookup, NixError> {
        let (p, o) = if is_optional { (vec![], vec![name]) } else { (vec![name], vec![]) };
        Ok(match self.try_lookup(source_json, &p, &o, system, deadline).await? {
            Ok(lookup) => lookup,
            Err((_, log_tail)) => single_failure(&p, &o, &log_tail),
        })
    }

    /// One `-A lookup`: its answer, or (exit status, Nix's last lines) when
    /// the evaluation failed outside `tryEval`; other failures (a timeout)
    /// are errors.
    async fn try_lookup(
        &self,
        source_json: &str,
        packages: &[String],
        optional: &[String],
        system: &str,
        deadline: Instant,
    ) -> Result<Result<Lookup, (String, String)>, NixError> {
        let args = self.expr_args("lookup", source_json, packages, optional, system)?;
        match self.instantiate(&args, deadline).await {
            Ok(out) => serde_json::from_slice(&out).map(Ok).map_err(|e| NixError::Parse(format!("lookup result: {e}"))),
            Err(NixError::Failed { status, log_tail }) => Ok(Err((status, log_tail))),
            Err(other) => Err(other),
        }
    }

    /// Why `name` is unavailable, in the package set's words: evaluates it
    /// without `tryEval` and reads the error Nix prints.
    async fn explain(
        &self,
        source_json: &str,
        name: String,
        system: &str,
        deadline: Instant,
    ) -> Result<(String, String), NixError> {
        let args = self.expr_args("explain", source_json, std::slice::from_ref(&name), &[], system)?;
        let reason = match self.instantiate(&args, deadline).await {
            Err(NixError::Failed { log_tail, .. }) => public_reason(&log_tail),
            Err(other) => return Err(other),
            // It evaluated this time (a set that is not deterministic).
            Ok(_) => "evaluation failed".into(),
        };
        Ok((name, reason))
    }

    /// Evaluates only: builds nothing (and, read-only, writes no `.drv`).
    async fn instantiate(&self, args: &[OsString], deadline: Instant) -> Result<Vec<u8>, NixError> {
        self.evaluations.fetch_add(1, Ordering::SeqCst);
        let mut all: Vec<OsString> = vec!["--eval".into(), "--strict".into(), "--json".into()];
        all.extend(args.iter().cloned());
        self.run("nix-instantiate", &all, deadline).await
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

/// A lookup answer for the one name whose evaluation failed outside
/// `tryEval`: unavailable, with the reason Nix printed.
fn single_failure(packages: &[String], optional: &[String], log_tail: &str) -> Lookup {
    let status = |name: &String| Status {
        name: name.clone(),
        status: StatusKind::Unavailable,
        drv: None,
        paths: vec![],
        meta: None,
        reason: Some(public_reason(log_tail)),
    };
    Lookup { packages: packages.iter().map(status).collect(), optional: optional.iter().map(status).collect() }
}

/// The package set's reason, fit for a client: the last error Nix printed,
/// its first line only, without colours, store paths or other absolute
/// paths of the server (`Package ‘foo-1.0’ in /srv/pkgs/foo.nix:12 is marked
/// as broken` → `… in … is marked as broken`), at most
/// [`REASON_MAX_CHARS`] characters.
pub fn public_reason(nix_stderr: &str) -> String {
    static ANSI: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").expect("a valid regex"));
    static PATH: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(^|[\s'"‘`(\[=:,])/[^\s'"’`)\]]*"#).expect("a valid regex")
    });
    let text = ANSI.replace_all(nix_stderr, "");
    let lines: Vec<&str> = text.lines().collect();
    // Newer Nix prints `error:` alone, a trace, then the message on a line
    // of its own that starts with `error:` again; 2.8 puts it on the first.
    let mut message = None;
    for (i, line) in lines.iter().enumerate().rev() {
        if let Some(rest) = line.trim_start().strip_prefix("error:") {
            let rest = rest.trim();
            if !rest.is_empty() {
                message = Some(rest.to_string());
                break;
            }
            if let Some(next) = lines[i + 1..].iter().map(|l| l.trim()).find(|l| !l.is_empty() && !l.starts_with('…')) {
                message = Some(next.to_string());
                break;
            }
        }
    }
    let message = message.unwrap_or_else(|| "evaluation failed".into());
    let cleaned = PATH.replace_all(&message, "$1…");
    let cleaned = cleaned.trim().trim_end_matches(':').trim();
    let mut out: String = cleaned.chars().take(REASON_MAX_CHARS).collect();
    if cleaned.chars().count() > REASON_MAX_CHARS {
        out.push('…');
    }
    if out.is_empty() {
        "evaluation failed".into()
    } else {
        out
    }
}

/// Which requested packages a failed `nix-build` could not build, from the
/// lines Nix prints: `builder for '…-leftpad-1.3.0.drv' failed` for the
/// derivation that failed, `dependencies of derivation '…-padder-0.4.drv'
/// failed to build` for each one it held up.
fn build_failure(requested: &[(String, String)], log_tail: String) -> BuildFailure {
    static DRV: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(builder for|dependencies of derivation) '(/[^']+\.drv)'").expect("a valid regex")
    });
    let mut packages = Vec::new();
    let mut derivations = Vec::new();
    for cap in DRV.captures_iter(&log_tail) {
        let drv = &cap[2];
        if &cap[1] == "builder for" {
            let name = store_name(drv).trim_end_matches(".drv").to_string();
            if !derivations.contains(&name) {
                derivations.push(name);
            }
        }
        for (_, name) in requested.iter().filter(|(d, _)| d == drv) {
            if !packages.contains(name) {
                packages.push(name.clone());
            }
        }
    }
    BuildFailure { packages, derivations, log_tail }
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
    #[serde(default)]
    nar_hash: Option<Value>,
}

/// Parses `nix path-info --json` into graph entries (references by path).
///
/// Nix has printed three shapes: an array of objects with a `path` (up to
/// 2.18), an object keyed by full path (2.19 on), and an object keyed by
/// base name, with base-name references and structured hashes (the "v2"
/// format of later versions). Base names are completed with `store_dir`
/// (the entry's own `storeDir` when it has one). Also returns each path's
/// NAR hash as hex (see [`nar_hash_hex`]).
pub(crate) fn parse_path_info(
    json: &[u8],
    store_dir: &str,
) -> Result<(Vec<NamedPath>, BTreeMap<String, String>), NixError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| NixError::Parse(format!("path-info output: {e}")))?;
    let entries: Vec<(Option<String>, Value)> = match value {
        Value::Array(items) => items.into_iter().map(|v| (None, v)).collect(),
        Value::Object(map) => map.into_iter().map(|(k, v)| (Some(k), v)).collect(),
        other => return Err(NixError::Parse(format!("path-info output is neither list nor map: {other}"))),
    };
    let mut paths = BTreeMap::new();
    let mut hashes = BTreeMap::new();
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
        let hash = info
            .nar_hash
            .as_ref()
            .and_then(nar_hash_hex)
            .ok_or_else(|| NixError::Parse(format!("path-info gives no SHA-256 narHash for {path}")))?;
        hashes.insert(path.clone(), hash);
        paths.insert(path.clone(), NamedPath { path, nar_size, references });
    }
    Ok((paths.into_values().collect(), hashes))
}

/// A NAR hash as Nix prints it, any version, as hex SHA-256: SRI
/// (`sha256-<base64>`, 2.4 on), `sha256:<nix32>` (older), `sha256:<hex>`,
/// or the v2 object `{"algorithm","format","hash"}`. `None` for another
/// algorithm or a malformed hash.
pub(crate) fn nar_hash_hex(value: &Value) -> Option<String> {
    use base64::Engine as _;
    let (algorithm, format, hash) = match value {
        Value::String(s) => match (s.split_once('-'), s.split_once(':')) {
            (_, Some((a, h))) => (a, if h.len() == 64 { "base16" } else { "nix32" }, h),
            (Some((a, h)), None) => (a, "base64", h),
            _ => return None,
        },
        Value::Object(o) => (o.get("algorithm")?.as_str()?, o.get("format")?.as_str()?, o.get("hash")?.as_str()?),
        _ => return None,
    };
    if algorithm != "sha256" {
        return None;
    }
    let bytes = match format {
        "base64" => base64::engine::general_purpose::STANDARD.decode(hash).ok()?,
        "nix32" => nix_base32::from_nix_base32(hash)?,
        "base16" => hex::decode(hash).ok()?,
        _ => return None,
    };
    (bytes.len() == 32).then(|| hex::encode(bytes))
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
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap().0, expected());
    }

    #[test]
    fn parses_nix_2_19_object() {
        let json = format!(
            r#"{{"{HELLO}":{{"ca":null,"deriver":"/nix/store/g37rz126y6rx634b05cdas0i879nnzhq-hello-2.12.1.drv","narHash":"sha256-2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o=","narSize":1280,"references":["{BUSYBOX}"],"registrationTime":1795434718,"signatures":[],"ultimate":true}},
                "{BUSYBOX}":{{"ca":"fixed:r:sha256:1aaa","deriver":null,"narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[],"registrationTime":1795434700,"signatures":[],"ultimate":false}}}}"#
        );
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap().0, expected());
    }

    #[test]
    fn parses_base_names_of_the_v2_format() {
        let json = r#"{"5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1":{"version":2,"storeDir":"/nix/store","narHash":{"algorithm":"sha256","format":"base64","hash":"2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o="},"narSize":1280,"references":["r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static"]},
                       "r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static":{"version":2,"narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[]}}"#;
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap().0, expected());
    }

    #[test]
    fn nar_hashes_in_every_format_give_the_same_hex() {
        // busybox's hash as this machine's Nix prints it, and converted with
        // `nix-hash --type sha256 --to-base32 / --to-base16`.
        let hex = "77765f0711a75598809a749ef304f48139f6750c66fcc9750af7d4d05a2a5e81";
        let sri = Value::from("sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=");
        assert_eq!(nar_hash_hex(&sri).as_deref(), Some(hex));
        let nix32 = nix_base32::to_nix_base32(&::hex::decode(hex).unwrap());
        assert_eq!(nar_hash_hex(&Value::from(format!("sha256:{nix32}"))).as_deref(), Some(hex));
        assert_eq!(nar_hash_hex(&Value::from(format!("sha256:{hex}"))).as_deref(), Some(hex));
        let v2 = serde_json::json!({"algorithm": "sha256", "format": "base64", "hash": "d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE="});
        assert_eq!(nar_hash_hex(&v2).as_deref(), Some(hex));
        assert_eq!(nar_hash_hex(&Value::from("sha512-AAAA")), None);
        assert_eq!(nar_hash_hex(&Value::from("sha256-AAAA")), None);
        let json = format!(r#"[{{"path":"{BUSYBOX}","narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[]}}]"#);
        let (_, hashes) = parse_path_info(json.as_bytes(), "/nix/store").unwrap();
        assert_eq!(hashes.get(BUSYBOX).map(String::as_str), Some(hex));
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
    fn reasons_are_one_line_without_paths() {
        // Nix 2.8: the message on the `error:` line, advice after it.
        let nix28 = "error: Package ‘unrar-6.2.12’ in /srv/pkgs/default.nix:381 has an unfree license (‘unfree’), refusing to evaluate.\n\n       a) To temporarily allow unfree packages\n(use '--show-trace' to show detailed location information)\n";
        assert_eq!(public_reason(nix28), "Package ‘unrar-6.2.12’ in … has an unfree license (‘unfree’), refusing to evaluate.");
        // Later Nix: `error:` alone, a trace, then the message, coloured.
        let later = "trace: warning: an alias\nerror:\n       … while evaluating the attribute 'explain'\n         at /var/lib/strata/nix/build-image.nix:120:3:\n\n       \x1b[31;1merror:\x1b[0m 'oldpkg' has been removed; use 'newpkg' (see /nix/store/0123456789abcdfghijklmnpqrsvwxyz-source/pkgs/top-level/aliases.nix)\n";
        assert_eq!(public_reason(later), "'oldpkg' has been removed; use 'newpkg' (see …)");
        let split = "error:\n       … from call site\n\n       error:\n       assertion '(stdenv.isDarwin)' failed\n";
        assert_eq!(public_reason(split), "assertion '(stdenv.isDarwin)' failed");
        let long = format!("error: {}", "x".repeat(1000));
        assert_eq!(public_reason(&long).chars().count(), REASON_MAX_CHARS + 1);
        assert_eq!(public_reason("garbage"), "evaluation failed");
        assert_eq!(public_reason("error: cannot open '/etc/secret'"), "cannot open '…'");
    }

    #[test]
    fn build_failures_map_derivations_to_requested_names() {
        let requested = vec![
            ("/nix/store/55ha09a8pqrfpni0h5rskpfza6g7zacc-padder-0.4.drv".to_string(), "padder".to_string()),
            ("/nix/store/g37rz126y6rx634b05cdas0i879nnzhq-hello-2.12.1.drv".to_string(), "hello".to_string()),
        ];
        let log = "building '/nix/store/2ama4a9d55jii32qmgh4anb6wx6rszbz-leftpad-1.3.0.drv'...\n\
            error: builder for '/nix/store/2ama4a9d55jii32qmgh4anb6wx6rszbz-leftpad-1.3.0.drv' failed with exit code 1\n\
            error: 1 dependencies of derivation '/nix/store/55ha09a8pqrfpni0h5rskpfza6g7zacc-padder-0.4.drv' failed to build";
        let f = build_failure(&requested, log.to_string());
        assert_eq!((f.packages.as_slice(), f.derivations.as_slice()), (&["padder".to_string()][..], &["leftpad-1.3.0".to_string()][..]));
        assert_eq!(f.to_string(), "building padder failed (derivation leftpad-1.3.0 failed)");
        let unknown = build_failure(&requested, "error: something else".into());
        assert_eq!(unknown.to_string(), "building the image failed");
    }

    #[test]
    fn roots_key_ignores_order() {
        let a = roots_key(&[HELLO.into(), BUSYBOX.into()]);
        assert_eq!(a, roots_key(&[BUSYBOX.into(), HELLO.into()]));
        assert_ne!(a, roots_key(&[HELLO.into()]));
    }
}
