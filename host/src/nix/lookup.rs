//! Step 1 of a build: looking the requested names up in the package set,
//! so that *all* missing names are reported at once, before anything is
//! built, each refused one with the set's own reason.
//!
//! Names reach Nix only as `--argstr` data, read by `nix/build-image.nix`
//! with `builtins.fromJSON`: a request can name a package, never inject an
//! expression.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{Refused, Unavailable};
use crate::nix::process::{self, NixError};

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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Negative {
    Missing,
    Refused(String),
}

/// What `build-image.nix -A lookup` prints.
#[derive(Debug, Deserialize)]
pub(crate) struct Lookup {
    pub packages: Vec<Status>,
    #[serde(default)]
    pub optional: Vec<Status>,
    /// The commit the source was fetched at, where Nix tells it (a git
    /// or flake source, a channel pinned to a commit).
    #[serde(default)]
    pub revision: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Status {
    pub name: String,
    pub status: StatusKind,
    #[serde(default)]
    pub drv: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub meta: Option<PackageMeta>,
    /// Not from Nix: the reason, when already known without `explain`.
    #[serde(skip)]
    reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StatusKind {
    Found,
    Missing,
    Unavailable,
}

/// Unavailable names explained at once (each is an evaluation of the
/// package set of its own).
const EXPLAIN_AT_ONCE: usize = 4;
/// Longest reason a client is told, in characters.
const REASON_MAX_CHARS: usize = 200;

/// Evaluations of the package set: which names it has, and why it refuses
/// the ones it refuses. Remembers missing and refused names for
/// `negative_ttl`, so a name asked about again costs no evaluation.
pub(crate) struct Evaluator {
    build_image_nix: PathBuf,
    timeout: Duration,
    negative_ttl: Duration,
    evaluations: AtomicU64,
    /// (system, source, name) → why it cannot be had, for `negative_ttl`.
    negative: moka::sync::Cache<(String, String, String), Negative>,
    /// (system, source, name) of names found, for `negative_ttl`: with a
    /// remembered missing one beside them, a request is answered without
    /// asking Nix again (`hello/nope`, five times, is one evaluation).
    found: moka::sync::Cache<(String, String, String), ()>,
}

impl Evaluator {
    pub(crate) fn new(build_image_nix: PathBuf, timeout: Duration, negative_ttl: Duration) -> Evaluator {
        fn remembered<V: Clone + Send + Sync + 'static>(ttl: Duration) -> moka::sync::Cache<(String, String, String), V> {
            moka::sync::Cache::builder().max_capacity(10_000).time_to_live(ttl.max(Duration::from_millis(1))).build()
        }
        Evaluator {
            build_image_nix,
            timeout,
            negative_ttl,
            evaluations: AtomicU64::new(0),
            negative: remembered(negative_ttl),
            found: remembered(negative_ttl),
        }
    }

    /// How many `nix-instantiate` evaluations have been started.
    pub(crate) fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::SeqCst)
    }

    /// The arguments asking `build-image.nix` for `attr`, for `nix-build`
    /// or (with [`Evaluator::instantiate`]'s flags) `nix-instantiate`.
    pub(crate) fn expr_args(
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

    /// Step 1: the found packages, required ones first, and the source's
    /// revision, or every name the set cannot give with its reason. Remembered answers are used for
    /// names asked about within `negative_ttl`; the others are evaluated in
    /// one `nix-instantiate`, and each unavailable one once more to read
    /// why ([`Evaluator::explain`]).
    pub(crate) async fn look_up(
        &self,
        source_json: &str,
        packages: &[String],
        optional: &[String],
        system: &str,
        deadline: Instant,
    ) -> Result<(Vec<Status>, Option<String>), NixError> {
        let key = |name: &str| (system.to_string(), source_json.to_string(), name.to_string());
        let known = |name: &String| self.negative.get(&key(name));
        let mut remembered: HashMap<String, Negative> = HashMap::new();
        for name in packages {
            if let Some(n) = known(name) {
                remembered.insert(name.clone(), n);
            }
        }
        // A remembered missing or refused name fails the request whatever
        // the other names are: the ones found before are not asked about
        // again, and neither are the optional names (Nixery's `cacert` and
        // `iana-etc` would otherwise cost an evaluation of the whole set on
        // every repeat of a missing name). Only names never asked about
        // are, so that the answer still names every missing one.
        let failed_before = !remembered.is_empty();
        let ask_packages: Vec<String> = packages
            .iter()
            .filter(|n| !remembered.contains_key(*n) && !(failed_before && self.found.contains_key(&key(n))))
            .cloned()
            .collect();
        let ask_optional: Vec<String> = match failed_before {
            false => optional.iter().filter(|n| known(n).is_none()).cloned().collect(),
            true => Vec::new(),
        };

        let lookup = if ask_packages.is_empty() && ask_optional.is_empty() {
            Lookup { packages: Vec::new(), optional: Vec::new(), revision: None }
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

        let ttl = !self.negative_ttl.is_zero();
        let mut unavailable = Unavailable::default();
        let mut found = Vec::new();
        let mut fresh: HashMap<&str, &Status> = lookup.packages.iter().map(|s| (s.name.as_str(), s)).collect();
        for name in packages {
            let negative = match (remembered.get(name), fresh.remove(name.as_str())) {
                (Some(n), _) => Some(n.clone()),
                (None, Some(s)) => match s.status {
                    StatusKind::Found => {
                        if ttl {
                            self.found.insert(key(name), ());
                        }
                        found.push(s.clone());
                        None
                    }
                    StatusKind::Missing => Some(Negative::Missing),
                    StatusKind::Unavailable => Some(Negative::Refused(
                        s.reason.clone().or_else(|| reasons.get(name).cloned()).unwrap_or_else(|| "evaluation failed".into()),
                    )),
                },
                // Found before, not asked again: the request fails anyway.
                (None, None) if failed_before => None,
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
        Ok((found, lookup.revision))
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
        let mut all = Lookup { packages: Vec::new(), optional: Vec::new(), revision: None };
        for l in each {
            all.packages.extend(l.packages);
            all.optional.extend(l.optional);
            all.revision = all.revision.or(l.revision);
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

    /// Whether the source itself can be fetched, and if not Nix's reason:
    /// after a failed lookup of a source at a revision, tells an unknown
    /// revision from a package set that fails to evaluate.
    pub(crate) async fn fetch_failure(&self, source_json: &str, system: &str, deadline: Instant) -> Result<Option<String>, NixError> {
        let args = self.expr_args("revision", source_json, &[], &[], system)?;
        match self.instantiate(&args, deadline).await {
            Ok(_) => Ok(None),
            Err(NixError::Failed { log_tail, .. }) => Ok(Some(public_reason(&log_tail))),
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
        let mut all: Vec<OsString> = process::FEATURES.iter().map(OsString::from).collect();
        all.extend(["--eval".into(), "--strict".into(), "--json".into()]);
        all.extend(args.iter().cloned());
        process::run("nix-instantiate", &all, deadline, self.timeout).await
    }
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
    Lookup { packages: packages.iter().map(status).collect(), optional: optional.iter().map(status).collect(), revision: None }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
