//! `nixpkgs-source`: which package set an image tag builds from.
//!
//! The configuration keys are Nixery's environment variables
//! (`NIXERY_CHANNEL`, `NIXERY_PKGS_REPO`, `NIXERY_PKGS_PATH`), exactly one of:
//! ```toml
//! [plugins.config.nixpkgs-source]
//! channel = "nixos-unstable"            # or
//! git = "https://github.com/NixOS/nixpkgs.git"   # or
//! path = "/srv/nixpkgs"                 # with optional: immutable = true, or
//! flake = "github:NixOS/nixpkgs/nixos-unstable"  # github:, git+https://, git+file://, path:
//! ```
//! The tag is the version selector. `immutable` in the output is a promise
//! the host builds a forever-cache on, so it is only given when the tag is a
//! full commit hash (or the operator declares a path immutable).

use serde::Deserialize;
use strata_plugin_sdk::{AllowUnfree, NixSource, PluginError, SourceInput, SourceOutput};

strata_plugin_sdk::export_plugin! {
    name: "nixpkgs-source",
    render_source: render_source,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    channel: Option<String>,
    git: Option<String>,
    path: Option<String>,
    flake: Option<String>,
    immutable: Option<bool>,
    /// `true`, or the unfree packages (by name) the set may give.
    allow_unfree: Option<AllowUnfree>,
}

/// The kinds of flake reference a tag can select a revision of, by prefix.
/// `github:`-like ones take the revision or ref as a path segment, git
/// ones as a query parameter; `path:` flakes have no revisions.
const FORGE_FLAKES: [&str; 3] = ["github:", "gitlab:", "sourcehut:"];
const GIT_FLAKES: [&str; 4] = ["git+https://", "git+http://", "git+ssh://", "git+file://"];
const PATH_FLAKE: &str = "path:";

/// A Docker client asks for `latest` when the user names no tag; Nixery
/// treated an empty tag the same way.
fn is_latest(tag: &str) -> bool {
    tag.is_empty() || tag == "latest"
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A full SHA-1 commit hash, the only revision that cannot move.
fn is_full_commit(s: &str) -> bool {
    s.len() == 40 && is_hex(s)
}

/// The `render_source` hook.
pub fn render_source(input: SourceInput) -> Result<SourceOutput, PluginError> {
    let mut config: Config = strata_plugin_sdk::config(&input.config)?;
    // `false` and `[]` allow nothing, as no setting does: one cache key.
    let allow_unfree = match config.allow_unfree.take() {
        Some(AllowUnfree::All(false)) => None,
        Some(AllowUnfree::Names(names)) if names.is_empty() => None,
        Some(AllowUnfree::Names(mut names)) => {
            names.sort();
            names.dedup();
            Some(AllowUnfree::Names(names))
        }
        other => other,
    };
    let mut out = render(config, &input.tag)?;
    out.allow_unfree = allow_unfree;
    Ok(out)
}

fn render(config: Config, tag: &str) -> Result<SourceOutput, PluginError> {
    let given = [&config.channel, &config.git, &config.path, &config.flake]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given != 1 {
        return Err(PluginError::new(format!(
            "nixpkgs-source needs exactly one of `channel`, `git`, `path` or `flake` in its \
             configuration ([plugins.config.nixpkgs-source]); {given} given"
        )));
    }
    if config.immutable.is_some() && config.path.is_none() {
        return Err(PluginError::new(
            "`immutable` applies only to a `path` source: channels and git \
             repositories are immutable exactly when the tag is a full commit hash",
        ));
    }

    if let Some(channel) = config.channel {
        let channel = channel.trim();
        if channel.is_empty() {
            return Err(PluginError::new("`channel` is empty"));
        }
        // Nixery ignored the tag for channels. A commit hash is the one tag
        // worth honouring: it pins nixpkgs, which a channel name never does.
        if is_full_commit(tag) {
            let commit = tag.to_ascii_lowercase();
            return Ok(SourceOutput {
                allow_unfree: None,
                identity: format!("channel:{commit}"),
                source: NixSource::Channel { channel: commit },
                immutable: true,
            });
        }
        return Ok(SourceOutput {
                allow_unfree: None,
            identity: format!("channel:{channel}"),
            source: NixSource::Channel {
                channel: channel.to_string(),
            },
            immutable: false,
        });
    }

    if let Some(url) = config.git {
        let url = url.trim();
        if url.is_empty() {
            return Err(PluginError::new("`git` is empty"));
        }
        if is_latest(tag) {
            return Ok(SourceOutput {
                allow_unfree: None,
                identity: format!("git:{url}@HEAD"),
                source: NixSource::Git {
                    url: url.to_string(),
                    rev: None,
                    r#ref: None,
                },
                immutable: false,
            });
        }
        if !(7..=40).contains(&tag.len()) || !is_hex(tag) {
            return Err(PluginError::new(format!(
                "tag `{tag}` is not a git revision: with a git package source, a tag \
                 is `latest` (the default branch) or a commit hash of 7 to 40 hex digits"
            )));
        }
        let rev = tag.to_ascii_lowercase();
        return Ok(SourceOutput {
                allow_unfree: None,
            identity: format!("git:{url}@{rev}"),
            immutable: is_full_commit(&rev),
            source: NixSource::Git {
                url: url.to_string(),
                rev: Some(rev),
                r#ref: None,
            },
        });
    }

    if let Some(flake) = config.flake {
        return flake_source(flake.trim(), tag);
    }

    let path = config.path.unwrap_or_default();
    if !path.starts_with('/') {
        return Err(PluginError::new(format!(
            "`path` must be absolute (the Nix evaluator does not run where strata.toml \
             is); got `{path}`"
        )));
    }
    Ok(SourceOutput {
                allow_unfree: None,
        identity: format!("path:{path}"),
        source: NixSource::Path { path },
        immutable: config.immutable.unwrap_or(false),
    })
}

/// `latest` is the flake as configured (its default branch, or the ref it
/// names); a full commit hash is that commit, for ever; any other tag is a
/// short commit or a ref name, which can move. Whether the revision exists
/// only Nix can tell: an unknown one is the host's 404.
fn flake_source(url: &str, tag: &str) -> Result<SourceOutput, PluginError> {
    let forge = FORGE_FLAKES.iter().any(|p| url.starts_with(p));
    let git = GIT_FLAKES.iter().any(|p| url.starts_with(p));
    if !forge && !git && !url.starts_with(PATH_FLAKE) {
        return Err(PluginError::new(format!(
            "`flake` must be a github:, gitlab:, sourcehut:, git+https://, git+http://, \
             git+ssh://, git+file:// or path: flake reference; got `{url}`"
        )));
    }
    if url.starts_with(PATH_FLAKE) && !url[PATH_FLAKE.len()..].starts_with('/') {
        return Err(PluginError::new(format!(
            "a path: flake must be absolute (the Nix evaluator does not run where strata.toml is); got `{url}`"
        )));
    }
    let source = |rev: Option<String>, r#ref: Option<String>| NixSource::Flake { url: url.to_string(), rev, r#ref };
    if is_latest(tag) {
        return Ok(SourceOutput { allow_unfree: None, identity: format!("flake:{url}"), source: source(None, None), immutable: false });
    }
    if !forge && !git {
        return Err(PluginError::new(format!(
            "tag `{tag}` names a revision, and a path: flake has none: its only tag is `latest`"
        )));
    }
    if is_full_commit(tag) {
        let rev = tag.to_ascii_lowercase();
        return Ok(SourceOutput { allow_unfree: None, identity: format!("flake:{url}@{rev}"), source: source(Some(rev), None), immutable: true });
    }
    // A short hash is a ref to the forges (their API resolves it), and the
    // host resolves it in a local repository; a git remote fetches commits
    // by full hash only.
    if (7..40).contains(&tag.len()) && is_hex(tag) && git {
        let rev = tag.to_ascii_lowercase();
        return Ok(SourceOutput { allow_unfree: None, identity: format!("flake:{url}@{rev}"), source: source(Some(rev), None), immutable: false });
    }
    Ok(SourceOutput { allow_unfree: None, identity: format!("flake:{url}@{tag}"), source: source(None, Some(tag.to_string())), immutable: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn run(config: Value, tag: &str) -> Result<SourceOutput, PluginError> {
        render_source(SourceInput {
            config,
            tag: tag.into(),
        })
    }

    #[test]
    fn channel_ignores_ordinary_tags() {
        for tag in ["latest", "v1", "", "abc1234"] {
            let out = run(json!({ "channel": "nixos-unstable" }), tag).unwrap();
            assert_eq!(
                out.source,
                NixSource::Channel {
                    channel: "nixos-unstable".into()
                }
            );
            assert_eq!(out.identity, "channel:nixos-unstable");
            assert!(!out.immutable);
        }
    }

    #[test]
    fn channel_with_commit_tag_pins_nixpkgs() {
        let out = run(json!({ "channel": "nixos-24.05" }), &COMMIT.to_uppercase()).unwrap();
        assert_eq!(
            out.source,
            NixSource::Channel {
                channel: COMMIT.into()
            }
        );
        assert_eq!(out.identity, format!("channel:{COMMIT}"));
        assert!(out.immutable);
    }

    #[test]
    fn git_latest_is_default_branch() {
        let url = "https://example.org/nixpkgs.git";
        let out = run(json!({ "git": url }), "latest").unwrap();
        assert_eq!(
            out.source,
            NixSource::Git {
                url: url.into(),
                rev: None,
                r#ref: None
            }
        );
        assert_eq!(out.identity, format!("git:{url}@HEAD"));
        assert!(!out.immutable);
        assert_eq!(run(json!({ "git": url }), "").unwrap(), out);
    }

    #[test]
    fn git_revisions() {
        let url = "https://example.org/nixpkgs.git";
        let out = run(json!({ "git": url }), COMMIT).unwrap();
        assert_eq!(
            out.source,
            NixSource::Git {
                url: url.into(),
                rev: Some(COMMIT.into()),
                r#ref: None
            }
        );
        assert_eq!(out.identity, format!("git:{url}@{COMMIT}"));
        assert!(out.immutable);

        let out = run(json!({ "git": url }), "ABC1234").unwrap();
        assert_eq!(
            out.source,
            NixSource::Git {
                url: url.into(),
                rev: Some("abc1234".into()),
                r#ref: None
            }
        );
        assert!(!out.immutable, "a short hash may become ambiguous");
    }

    #[test]
    fn git_rejects_non_revisions() {
        let url = "https://example.org/nixpkgs.git";
        for tag in [
            "v1.0",
            "abc123",
            "master",
            "g123456789",
            &format!("{COMMIT}0"),
        ] {
            let err = run(json!({ "git": url }), tag).unwrap_err();
            assert!(
                err.message
                    .contains(&format!("tag `{tag}` is not a git revision")),
                "{err}"
            );
        }
    }

    #[test]
    fn path_source() {
        let out = run(json!({ "path": "/srv/nixpkgs" }), "anything").unwrap();
        assert_eq!(
            out.source,
            NixSource::Path {
                path: "/srv/nixpkgs".into()
            }
        );
        assert_eq!(out.identity, "path:/srv/nixpkgs");
        assert!(!out.immutable);
        let out = run(
            json!({ "path": "/srv/nixpkgs", "immutable": true }),
            "latest",
        )
        .unwrap();
        assert!(out.immutable);
        let err = run(json!({ "path": "nixpkgs" }), "latest").unwrap_err();
        assert!(err.message.contains("absolute"), "{err}");
    }

    #[test]
    fn exactly_one_source() {
        for config in [
            Value::Null,
            json!({}),
            json!({ "channel": "x", "git": "y" }),
            json!({ "channel": "x", "path": "/y", "git": "z" }),
        ] {
            let err = run(config, "latest").unwrap_err();
            assert!(err.message.contains("exactly one of"), "{err}");
        }
        let err = run(json!({ "chanel": "x" }), "latest").unwrap_err();
        assert!(err.message.contains("unknown field"), "{err}");
        let err = run(json!({ "channel": "x", "immutable": true }), "latest").unwrap_err();
        assert!(err.message.contains("only to a `path`"), "{err}");
    }

    #[test]
    fn flake_tags_select_revisions() {
        let url = "git+file:///srv/flake";
        let out = run(json!({ "flake": url }), "latest").unwrap();
        assert_eq!(out.source, NixSource::Flake { url: url.into(), rev: None, r#ref: None });
        assert_eq!((out.identity.as_str(), out.immutable), ("flake:git+file:///srv/flake", false));
        let out = run(json!({ "flake": url }), &COMMIT.to_uppercase()).unwrap();
        assert_eq!(out.source, NixSource::Flake { url: url.into(), rev: Some(COMMIT.into()), r#ref: None });
        assert_eq!(out.identity, format!("flake:{url}@{COMMIT}"));
        assert!(out.immutable);
        let out = run(json!({ "flake": url }), "abc1234").unwrap();
        assert_eq!(out.source, NixSource::Flake { url: url.into(), rev: Some("abc1234".into()), r#ref: None });
        assert!(!out.immutable);
        let out = run(json!({ "flake": url }), "release-1.0").unwrap();
        assert_eq!(out.source, NixSource::Flake { url: url.into(), rev: None, r#ref: Some("release-1.0".into()) });
        assert!(!out.immutable);

        let gh = "github:NixOS/nixpkgs/nixos-unstable";
        let out = run(json!({ "flake": gh }), "abc1234").unwrap();
        assert_eq!(out.source, NixSource::Flake { url: gh.into(), rev: None, r#ref: Some("abc1234".into()) });
        let out = run(json!({ "flake": gh }), COMMIT).unwrap();
        assert!(out.immutable);

        let path = "path:/srv/flake";
        assert!(!run(json!({ "flake": path }), "latest").unwrap().immutable);
        let err = run(json!({ "flake": path }), COMMIT).unwrap_err();
        assert!(err.message.contains("only tag is `latest`"), "{err}");
        for bad in ["nixpkgs", "https://example.org/x.tar.gz", "path:relative", "flake:nixpkgs"] {
            let err = run(json!({ "flake": bad }), "latest").unwrap_err();
            assert!(err.message.contains("flake"), "{bad}: {err}");
        }
        let err = run(json!({ "flake": url, "path": "/x" }), "latest").unwrap_err();
        assert!(err.message.contains("exactly one of"), "{err}");
    }

    #[test]
    fn unfree_allow_list_is_passed_on_sorted() {
        let out = run(json!({ "path": "/p", "allow_unfree": ["vault", "terraform", "vault"] }), "latest").unwrap();
        assert_eq!(out.allow_unfree, Some(AllowUnfree::Names(vec!["terraform".into(), "vault".into()])));
        let out = run(json!({ "channel": "nixos-unstable", "allow_unfree": true }), "latest").unwrap();
        assert_eq!(out.allow_unfree, Some(AllowUnfree::All(true)));
        for none in [json!(false), json!([])] {
            assert_eq!(run(json!({ "flake": "path:/f", "allow_unfree": none }), "latest").unwrap().allow_unfree, None);
        }
        assert!(run(json!({ "path": "/p", "allow_unfree": "terraform" }), "latest").is_err());
        let out = run(json!({ "git": "u", "allow_unfree": true }), "latest").unwrap();
        assert_eq!(serde_json::to_value(&out).unwrap()["allow_unfree"], json!(true));
    }

    #[test]
    fn wire_shape() {
        let out = run(json!({ "git": "u" }), "latest").unwrap();
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({ "source": { "type": "git", "url": "u" }, "identity": "git:u@HEAD",
                    "immutable": false })
        );
    }
}
