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
//! The folder owns every Nix process Strata starts. It offers the build
//! [`NixRunner`] (names → a built, rooted closure) and `strata gc` the
//! release of roots and store paths ([`gc`]). Here (`mod.rs` on top,
//! imports pointing down):
//! - `lookup`: which names the set has, and why it refuses the others;
//! - `closure`: reading `nix path-info`;
//! - `flake`: a flake source's reference at the revision a tag selected;
//! - `gc`: what `strata gc` deletes from the store;
//! - `roots`: the GC roots of builds and the claims that keep gc off them;
//! - `process`: running one Nix command under a deadline, and stopping it.

pub mod closure;
mod flake;
pub mod gc;
pub mod lookup;
pub mod process;
pub mod roots;
mod store;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use strata_plugin_sdk::{store_name, AllowUnfree, ClosureGraph, NixSource};
use tokio::time::Instant;

pub use crate::error::{BuildFailure, Refused, Unavailable};
pub use closure::{nar_hash_hex, parse_path_info};
pub use lookup::{public_reason, Described, License, PackageMeta};
pub use process::NixError;
use lookup::Evaluator;
use roots::{roots_key, RootsClaim};

/// Embedded so that the binary needs no files installed next to it; written
/// out by [`NixRunner::new`] because Nix can only import files.
const BUILD_IMAGE_NIX: &str = include_str!("../../../nix/build-image.nix");
const LOAD_PKGS_NIX: &str = include_str!("../../../nix/load-pkgs.nix");

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
    /// The commit the source was fetched at, where Nix tells it (a git or
    /// flake source; a channel pinned to a commit); never for a path.
    pub revision: Option<String>,
    /// This build's claim on `gc_root`: keep it until the image record
    /// naming the directory is written, so that `strata gc` leaves the
    /// directory alone meanwhile.
    pub claim: Option<RootsClaim>,
}

/// What a client is told of a Nix failure: the error keeps the data it
/// prints, so `error` needs nothing of `nix`.
impl From<NixError> for crate::error::Error {
    fn from(e: NixError) -> Self {
        use crate::error::Error;
        match e {
            NixError::Unavailable(u) => Error::PackagesUnavailable(u),
            NixError::BuildFailed(b) => Error::BuildFailed(b),
            NixError::Timeout(d) => Error::Nix { timeout_secs: Some(d.as_secs()), message: format!("timed out after {d:?}") },
            NixError::UnknownRevision { revision, reason } => {
                Error::ManifestUnknown(format!("revision {revision} is not in the package source ({reason})"))
            }
            other => Error::Nix { timeout_secs: None, message: other.to_string() },
        }
    }
}

pub struct NixRunner {
    opts: NixOptions,
    evaluator: Evaluator,
    gc_roots: PathBuf,
    builds_started: AtomicU64,
}

impl std::fmt::Debug for NixRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NixRunner").field("opts", &self.opts).finish_non_exhaustive()
    }
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
            evaluator: Evaluator::new(nix_dir.join("build-image.nix"), opts.timeout, opts.negative_ttl),
            opts: NixOptions { work_dir, ..opts },
            gc_roots,
            builds_started: AtomicU64::new(0),
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
        self.evaluator.evaluations()
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
        self.resolve_allowing(source, None, packages, optional, system).await
    }

    /// [`NixRunner::resolve_with_optional`] with the unfree packages the
    /// source plugin allows handed to the package set's `config`.
    pub async fn resolve_allowing(
        &self,
        source: &NixSource,
        allow_unfree: Option<&AllowUnfree>,
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
                revision: None,
                claim: None,
            });
        }
        let source = absolute_source(source)?;
        // `allowUnfree` rides along in the source's JSON (load-pkgs.nix).
        let to_json = |s: &NixSource| {
            let mut value = serde_json::to_value(s).map_err(|e| NixError::Parse(format!("serialising the source: {e}")))?;
            if let (Some(allow), Some(object)) = (allow_unfree, value.as_object_mut()) {
                object.insert("allowUnfree".into(), serde_json::to_value(allow).unwrap_or_default());
            }
            Ok::<String, NixError>(value.to_string())
        };
        let source_json = to_json(&flake::for_nix(&source, deadline).await?)?;
        let optional: Vec<String> = optional.iter().filter(|o| !packages.contains(o)).cloned().collect();

        // 1. Which names the set has, each tried on its own.
        let looked_up = self.evaluator.look_up(&source_json, packages, &optional, system, deadline).await;
        let (found, revision) = match looked_up {
            // A revision that is not there fails the whole lookup: a 404
            // naming it, not a failed build.
            Err(NixError::Failed { status, log_tail }) => match selected_revision(&source) {
                Some(selected) => match self.evaluator.fetch_failure(&source_json, system, deadline).await? {
                    Some(reason) => return Err(NixError::UnknownRevision { revision: selected, reason }),
                    None => return Err(NixError::Failed { status, log_tail }),
                },
                None => return Err(NixError::Failed { status, log_tail }),
            },
            other => other?,
        };
        // The build evaluates the commit the lookup saw, even if the
        // branch moved since.
        let build_json = match flake::pinned(&source, revision.as_deref()) {
            same if same == source => source_json.clone(),
            pinned => to_json(&flake::for_nix(&pinned, deadline).await?)?,
        };
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
        let claim = RootsClaim::take(&gc_root).await?;
        let link = gc_root.join("result");
        let mut args: Vec<OsString> = process::FEATURES.iter().map(OsString::from).collect();
        args.extend(self.evaluator.expr_args("contents", &build_json, &names, &[], system)?);
        args.extend(["--out-link".into(), link.into()]);
        self.builds_started.fetch_add(1, Ordering::SeqCst);
        let out = match process::run("nix-build", &args, deadline, self.opts.timeout).await {
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
        let out = process::run("nix", &args, deadline, self.opts.timeout).await?;
        let store_dir = Path::new(&roots[0]).parent().and_then(Path::to_str).unwrap_or("/nix/store");
        let (paths, nar_hashes) = parse_path_info(&out, store_dir)?;
        // Plugins are promised a closed graph containing the roots; a Nix
        // that printed less is caught here rather than as a broken image.
        let graph = ClosureGraph::from_named(&roots, paths).map_err(NixError::Parse)?;
        Ok(Resolved {
            packages: names,
            roots,
            graph,
            gc_root: Some(gc_root),
            described,
            nar_hashes,
            revision,
            claim: Some(claim),
        })
    }
}

/// The revision or ref a tag selected of a source, if it selected one.
fn selected_revision(source: &NixSource) -> Option<String> {
    match source {
        NixSource::Flake { rev, r#ref, .. } | NixSource::Git { rev, r#ref, .. } => rev.clone().or(r#ref.clone()),
        _ => None,
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
    BuildFailure { packages, derivations, log_tail, platform: None }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
