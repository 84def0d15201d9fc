//! A flake source as Nix fetches it: the revision or ref a tag selected,
//! written into the flake reference in the form its type takes, and a
//! short commit of a local repository made a full one (Nix fetches git
//! commits by full hash only).

use std::time::Duration;

use strata_plugin_sdk::NixSource;
use tokio::time::Instant;

use crate::nix::process::NixError;

/// `github:owner/repo[/ref]`-like references: the revision or ref is the
/// third path segment.
const FORGES: [&str; 3] = ["github:", "gitlab:", "sourcehut:"];

/// The flake reference Nix is handed for `url` at `rev` (a full commit) or
/// `ref` (a branch or tag); `rev` wins when both are given, and either
/// replaces the one `url` names.
pub(crate) fn flake_ref(url: &str, rev: Option<&str>, r#ref: Option<&str>) -> Result<String, String> {
    let Some(pick) = rev.or(r#ref) else { return Ok(url.to_string()) };
    if let Some(forge) = FORGES.iter().find(|f| url.starts_with(*f)) {
        let (path, query) = match url[forge.len()..].split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (&url[forge.len()..], None),
        };
        let mut segments: Vec<&str> = path.split('/').collect();
        if segments.len() < 2 {
            return Err(format!("`{url}` names no owner/repository"));
        }
        segments.truncate(2);
        segments.push(pick);
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        return Ok(format!("{forge}{}{query}", segments.join("/")));
    }
    let mut parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a flake URL: {e}"))?;
    if !parsed.scheme().starts_with("git+") {
        return Err(format!("a {} flake has no revisions", parsed.scheme()));
    }
    let key = if rev.is_some() { "rev" } else { "ref" };
    let kept: Vec<(String, String)> =
        parsed.query_pairs().filter(|(k, _)| k != key && (rev.is_some() || k != "rev")).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    {
        let mut pairs = parsed.query_pairs_mut();
        pairs.clear();
        for (k, v) in &kept {
            pairs.append_pair(k, v);
        }
        pairs.append_pair(key, pick);
    }
    Ok(parsed.to_string())
}

/// The source with its flake reference complete (what `load-pkgs.nix`
/// fetches), a short commit of a `git+file://` flake resolved to the full
/// one first. Other sources are returned as they are.
pub(crate) async fn for_nix(source: &NixSource, deadline: Instant) -> Result<NixSource, NixError> {
    let NixSource::Flake { url, rev, r#ref } = source else { return Ok(source.clone()) };
    let rev = match rev {
        Some(short) if short.len() < 40 => Some(full_commit(url, short, deadline).await?),
        other => other.clone(),
    };
    let composed = flake_ref(url, rev.as_deref(), r#ref.as_deref()).map_err(|reason| NixError::UnknownRevision {
        revision: rev.clone().or(r#ref.clone()).unwrap_or_default(),
        reason,
    })?;
    Ok(NixSource::Flake { url: composed, rev: None, r#ref: None })
}

/// The source pinned to the commit its lookup evaluated, so that the build
/// evaluates the same one even if the branch moves in between.
pub(crate) fn pinned(source: &NixSource, revision: Option<&str>) -> NixSource {
    let Some(revision) = revision.filter(|r| r.len() == 40) else { return source.clone() };
    match source {
        NixSource::Flake { url, rev: None, r#ref } => {
            NixSource::Flake { url: url.clone(), rev: Some(revision.to_string()), r#ref: r#ref.clone() }
        }
        other => other.clone(),
    }
}

/// How long `git rev-parse` may take on a local repository.
const REV_PARSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The full commit a short one names in a local repository; a remote one
/// would have to be fetched whole to tell, so there the tag must be the
/// full hash.
async fn full_commit(url: &str, short: &str, deadline: Instant) -> Result<String, NixError> {
    let unknown = |reason: String| NixError::UnknownRevision { revision: short.to_string(), reason };
    let parsed = url::Url::parse(url).map_err(|e| unknown(e.to_string()))?;
    if parsed.scheme() != "git+file" {
        return Err(unknown("a short commit is resolved in local (git+file) repositories only: use the full hash".into()));
    }
    let repo = url::Url::parse(&url["git+".len()..])
        .ok()
        .and_then(|file| file.to_file_path().ok())
        .ok_or_else(|| unknown(format!("`{url}` names no local directory")))?;
    let run = tokio::process::Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options", &format!("{short}^{{commit}}")])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout_at(deadline.min(Instant::now() + REV_PARSE_TIMEOUT), run)
        .await
        .map_err(|_| NixError::Timeout(REV_PARSE_TIMEOUT))??;
    let full = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || full.len() != 40 {
        return Err(unknown("no such commit in the repository".into()));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn revisions_go_where_each_flake_type_takes_them() {
        assert_eq!(flake_ref("github:o/r", None, None).unwrap(), "github:o/r");
        assert_eq!(flake_ref("github:o/r", Some(REV), None).unwrap(), format!("github:o/r/{REV}"));
        assert_eq!(flake_ref("github:o/r/main?dir=x", Some(REV), None).unwrap(), format!("github:o/r/{REV}?dir=x"));
        assert_eq!(flake_ref("gitlab:o/r/main", None, Some("v1")).unwrap(), "gitlab:o/r/v1");
        assert_eq!(flake_ref("git+file:///srv/f", Some(REV), None).unwrap(), format!("git+file:///srv/f?rev={REV}"));
        assert_eq!(
            flake_ref("git+https://example.org/f.git?ref=main&dir=sub", Some(REV), None).unwrap(),
            format!("git+https://example.org/f.git?ref=main&dir=sub&rev={REV}")
        );
        assert_eq!(
            flake_ref("git+https://example.org/f.git?ref=main&rev=abc", None, Some("v2")).unwrap(),
            "git+https://example.org/f.git?ref=v2"
        );
        assert!(flake_ref("path:/srv/f", Some(REV), None).is_err());
        assert!(flake_ref("github:o", Some(REV), None).is_err());
    }

    #[test]
    fn pinning_fixes_only_a_moving_source() {
        let latest = NixSource::Flake { url: "git+file:///f".into(), rev: None, r#ref: None };
        let pinned_to = NixSource::Flake { url: "git+file:///f".into(), rev: Some(REV.into()), r#ref: None };
        assert_eq!(pinned(&latest, Some(REV)), pinned_to);
        assert_eq!(pinned(&latest, None), latest);
        assert_eq!(pinned(&latest, Some("dirty")), latest);
        let path = NixSource::Path { path: "/p".into() };
        assert_eq!(pinned(&path, Some(REV)), path);
    }
}
