//! The store queries `strata gc` asks of Nix: validity, closures,
//! registrations (`--dump-db`), derivations' outputs, the roots and the GC
//! settings, each a `nix-store` run bounded in time and argument length.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Store paths per `nix-store` invocation (keeps argument lists short).
pub(crate) const CHUNK: usize = 500;
/// One `nix-store` call; a whole-store query on a large store takes seconds.
const NIX_STORE_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) fn internal(what: &str, e: impl fmt::Display) -> Error {
    Error::Internal(format!("nix gc: {what}: {e}"))
}

/// Runs `nix-store ARGS`; (success, stdout, stderr).
pub(crate) async fn nix_store(args: &[OsString]) -> Result<(bool, String, String)> {
    run_nix("nix-store", args).await
}

pub(crate) async fn run_nix(program: &str, args: &[OsString]) -> Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    crate::nix::process::started(program, args);
    let out = tokio::time::timeout(NIX_STORE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| internal(program, format!("no answer within {NIX_STORE_TIMEOUT:?}")))?
        .map_err(|e| internal(&format!("running {program}"), e))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `nix-store FLAGS PATH…` over `paths` in chunks: every chunk's stdout, in
/// order; fails on the first failing chunk.
pub(crate) async fn query_raw(flags: &[&str], paths: &[String]) -> Result<Vec<String>> {
    let mut outs = Vec::new();
    for chunk in paths.chunks(CHUNK) {
        let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
        args.extend(chunk.iter().map(OsString::from));
        let (ok, out, err) = nix_store(&args).await?;
        if !ok {
            return Err(internal(&format!("nix-store {}", flags.join(" ")), err.trim()));
        }
        outs.push(out);
    }
    Ok(outs)
}

/// [`query_raw`]'s non-empty lines.
pub(crate) async fn query(flags: &[&str], paths: &[String]) -> Result<Vec<String>> {
    let outs = query_raw(flags, paths).await?;
    Ok(outs.iter().flat_map(|o| o.lines()).map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// The paths of `paths` that are valid store paths (the others were
/// deleted, or never were).
pub(crate) async fn valid(paths: &[String]) -> Result<Vec<String>> {
    let invalid: HashSet<String> = query(&["--check-validity", "--print-invalid"], paths).await?.into_iter().collect();
    Ok(paths.iter().filter(|p| !invalid.contains(*p)).cloned().collect())
}

/// The closure of valid `paths`.
pub(crate) async fn closure(paths: &[String]) -> Result<HashSet<String>> {
    Ok(query(&["--query", "--requisites"], paths).await?.into_iter().collect())
}

/// What Nix's database says of a valid store path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PathInfo {
    pub(crate) nar_size: u64,
    /// The derivation registered as having built it.
    pub(crate) deriver: Option<String>,
    pub(crate) references: Vec<String>,
}

/// Each of the valid `paths`' NAR size, deriver and references: one
/// `nix-store --dump-db` answers all three for many paths at once, the
/// format every Nix since 1.x writes (and `--load-db` reads).
pub(crate) async fn path_infos(paths: &[String]) -> Result<HashMap<String, PathInfo>> {
    let mut infos = HashMap::new();
    for out in query_raw(&["--dump-db"], paths).await? {
        infos.extend(parse_dump_db(&out).map_err(|e| internal("nix-store --dump-db", e))?);
    }
    Ok(infos)
}

/// Nix's registration format: per path, its line, the NAR hash, the NAR
/// size, the deriver (an empty line when none), the number of references
/// and one line each.
pub(crate) fn parse_dump_db(text: &str) -> std::result::Result<Vec<(String, PathInfo)>, String> {
    let mut lines = text.lines();
    let mut infos = Vec::new();
    while let Some(path) = lines.next() {
        if path.is_empty() {
            continue;
        }
        let mut next = |what: &str| lines.next().ok_or_else(|| format!("{path}: no {what}"));
        let _hash = next("hash")?;
        let nar_size = next("size")?.trim().parse().map_err(|e| format!("{path}: size: {e}"))?;
        let deriver = Some(next("deriver")?.trim()).filter(|d| !d.is_empty()).map(str::to_string);
        let count: usize = next("reference count")?.trim().parse().map_err(|e| format!("{path}: reference count: {e}"))?;
        let references = (0..count).map(|_| next("reference").map(|r| r.trim().to_string())).collect::<std::result::Result<_, _>>()?;
        infos.push((path.trim().to_string(), PathInfo { nar_size, deriver, references }));
    }
    Ok(infos)
}

/// The output paths a `.drv` file declares (`Derive([("out","/nix/store/…",…),…],…`);
/// `None` when it does not read as one.
pub(crate) fn drv_outputs(aterm: &str) -> Option<Vec<String>> {
    let mut rest = aterm.strip_prefix("Derive([")?;
    let mut outputs = Vec::new();
    // A quoted ATerm string, with its escapes undone.
    fn string(s: &str) -> Option<(String, &str)> {
        let mut chars = s.strip_prefix('"')?.char_indices();
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((out, &s[i + 2..])),
                '\\' => out.push(chars.next()?.1),
                c => out.push(c),
            }
        }
        None
    }
    loop {
        if rest.starts_with(']') {
            return Some(outputs);
        }
        rest = rest.strip_prefix('(')?;
        let mut fields = Vec::new();
        for i in 0..4 {
            let (field, r) = string(rest)?;
            fields.push(field);
            rest = if i < 3 { r.strip_prefix(',')? } else { r.strip_prefix(')')? };
        }
        if !fields[1].is_empty() {
            outputs.push(fields[1].clone());
        }
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The settings of Nix's collector that decide what `--delete` finds alive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GcSettings {
    /// A derivation stays while an output it built does.
    pub(crate) keep_derivations: bool,
    /// An output stays while a derivation of it does.
    pub(crate) keep_outputs: bool,
}

impl Default for GcSettings {
    /// Nix's defaults.
    fn default() -> Self {
        GcSettings { keep_derivations: true, keep_outputs: false }
    }
}

/// This machine's `keep-derivations` and `keep-outputs`; Nix's defaults
/// when they cannot be read (a wrong guess only makes Nix refuse a path,
/// which [`collect`] handles, never delete one it keeps).
pub(crate) async fn gc_settings() -> GcSettings {
    let args: Vec<OsString> =
        ["--extra-experimental-features", "nix-command", "show-config", "--json"].iter().map(OsString::from).collect();
    let read = match run_nix("nix", &args).await {
        Ok((true, out, _)) => serde_json::from_str::<serde_json::Value>(&out).ok(),
        _ => None,
    };
    let Some(config) = read else {
        tracing::warn!("could not read Nix's settings (nix show-config); assuming keep-derivations = true, keep-outputs = false");
        return GcSettings::default();
    };
    let flag = |name: &str, default: bool| config[name]["value"].as_bool().unwrap_or(default);
    let d = GcSettings::default();
    GcSettings { keep_derivations: flag("keep-derivations", d.keep_derivations), keep_outputs: flag("keep-outputs", d.keep_outputs) }
}

/// The targets of every root of the store other than the links under
/// `released`: gc roots, profiles, and the temporary and runtime roots of
/// running Nix processes.
pub(crate) async fn root_targets_without(released: &[PathBuf]) -> Result<HashSet<String>> {
    let (ok, out, err) = nix_store(&["--gc".into(), "--print-roots".into()]).await?;
    if !ok {
        return Err(internal("nix-store --gc --print-roots", err.trim()));
    }
    let released_too: Vec<PathBuf> =
        released.iter().flat_map(|d| [d.clone(), std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())]).collect();
    let mut targets = HashSet::new();
    for line in out.lines() {
        let Some((link, target)) = line.rsplit_once(" -> ") else { continue };
        let link = Path::new(link.trim());
        if released_too.iter().any(|d| link.starts_with(d)) {
            continue;
        }
        targets.insert(target.trim().to_string());
    }
    Ok(targets)
}

/// What the released roots held and what built it (see the module
/// documentation), with each path's [`PathInfo`].
pub(crate) async fn candidates(targets: &[String]) -> Result<HashMap<String, PathInfo>> {
    let outputs: Vec<String> = closure(targets).await?.into_iter().collect();
    let mut infos = path_infos(&outputs).await?;
    let mut derivers: Vec<String> =
        infos.values().filter_map(|i| i.deriver.clone()).filter(|d| !infos.contains_key(d)).collect();
    derivers.sort();
    derivers.dedup();
    let derivers = valid(&derivers).await?;
    if !derivers.is_empty() {
        let built_by: Vec<String> = closure(&derivers).await?.into_iter().filter(|p| !infos.contains_key(p)).collect();
        infos.extend(path_infos(&built_by).await?);
    }
    Ok(infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As Nix 2.8 prints it: the second path has no deriver (an empty line).
    #[test]
    fn reads_nix_registrations() {
        let dump = "/nix/store/f840-gca\n6147ba\n525424\n/nix/store/12ch-gca.drv\n2\n/nix/store/mxss-busybox\n/nix/store/zf27-shared\n\
                    /nix/store/mxss-busybox\n2f3ec9\n1168\n\n0\n";
        let infos: HashMap<String, PathInfo> = parse_dump_db(dump).unwrap().into_iter().collect();
        assert_eq!(
            infos["/nix/store/f840-gca"],
            PathInfo {
                nar_size: 525424,
                deriver: Some("/nix/store/12ch-gca.drv".into()),
                references: vec!["/nix/store/mxss-busybox".into(), "/nix/store/zf27-shared".into()],
            }
        );
        assert_eq!(infos["/nix/store/mxss-busybox"], PathInfo { nar_size: 1168, deriver: None, references: vec![] });
        assert!(parse_dump_db("/nix/store/x\nhash\n12\n\n3\n/nix/store/y\n").is_err(), "a cut-off answer is an error");
    }

    #[test]
    fn reads_the_outputs_of_a_derivation() {
        let drv = r#"Derive([("dev","/nix/store/aa-x-dev","",""),("out","/nix/store/bb-x","","")],[("/nix/store/cc-y.drv",["out"])],["/nix/store/dd-src"],"x86_64-linux","/bin/sh",["-c","echo \"a\\b\""],[("out","/nix/store/bb-x")])"#;
        assert_eq!(drv_outputs(drv).unwrap(), ["/nix/store/aa-x-dev", "/nix/store/bb-x"]);
        let fixed = r#"Derive([("out","/nix/store/ee-src.tar.gz","sha256","0abc")],[],[],"builtin","builtin:fetchurl",[],[])"#;
        assert_eq!(drv_outputs(fixed).unwrap(), ["/nix/store/ee-src.tar.gz"]);
        assert_eq!(drv_outputs("not a derivation"), None);
        assert_eq!(drv_outputs(r#"Derive([("out","/nix/store/"#), None);
    }
}
