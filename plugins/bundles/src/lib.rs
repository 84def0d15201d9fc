//! `bundles`: Nixery's convenience names, as configuration instead of code.
//!
//! A request segment that names a bundle is replaced, in place, by the
//! bundle's packages. Nixery only looked at the first segment; here a bundle
//! may appear at any position (`git/shell` works like `shell/git`), because
//! nothing is gained by rejecting the other order and the host sorts the
//! package list for cache keys anyway.
//!
//! The words `amd64` and `arm64` are not packages: they select the target
//! architecture and are dropped from the list.
//!
//! The word `nonroot` is a built-in bundle of no packages: the image gets a
//! user (`user`, 1000:1000, home `/home/user`, which it owns) and runs as
//! `1000:1000` (Nixery's #136: GitLab CI and many clusters refuse root).
//!
//! Every image also gets the packages of `always` where the package set has
//! them (an `optional` expansion: one the set lacks is skipped, never a
//! 404). The default is Nixery's: `cacert` and `iana-etc`, so that TLS and
//! `/etc/services` work in `docker run HOST/curl`.
//!
//! Configuration (`[plugins.config.bundles]` in strata.toml):
//! ```toml
//! [plugins.config.bundles]
//! always = ["cacert", "iana-etc"]                  # the default; [] for none
//!
//! [plugins.config.bundles.bundles]
//! acme-base = ["coreutils", "git"]                 # list form
//! acme-dev = { packages = ["acme-base", "gdb"], cmd = ["bash"], env = ["EDITOR=nano"] }
//! ```
//! The `nonroot` user, and name prefixes whose images are all non-root:
//! ```toml
//! [plugins.config.bundles.nonroot]
//! name = "ci"                # default "user"
//! uid = 1001                 # default 1000
//! gid = 1001                 # default 1000
//! home = "/builds"           # default /home/<name>
//! prefixes = ["shell"]       # shell/git is shell/nonroot/git
//! ```
//! A prefix is one or more leading segments of the image name; its words
//! still mean what they mean (`shell` stays the bundle). To make a word of
//! your own the switch, name `nonroot` in a bundle: `ci = ["nonroot"]`.
//!
//! A configured bundle replaces a built-in one of the same name. The list
//! form only replaces the packages and keeps the built-in's image settings
//! (so a custom `shell` still starts `bash`); the table form replaces the
//! whole entry. Bundles may name other bundles; a bundle that names itself
//! (or one of the bundles it is being expanded from) means the package of
//! that name, which lets `git = ["git", "git-lfs"]` work.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use strata_plugin_sdk::{Account, ExpandInput, ExpandOutput, ImageSettings, PluginError};

strata_plugin_sdk::export_plugin! {
    name: "bundles",
    expand_names: expand_names,
}

/// The architectures a request may select by naming them as a segment.
const ARCHES: [&str; 2] = ["amd64", "arm64"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    bundles: BTreeMap<String, BundleSpec>,
    #[serde(default = "nixery_defaults")]
    always: Vec<String>,
    #[serde(default)]
    nonroot: NonRoot,
}

impl Default for Config {
    fn default() -> Self {
        Config { bundles: BTreeMap::new(), always: nixery_defaults(), nonroot: NonRoot::default() }
    }
}

/// The user of the `nonroot` bundle, and where it is the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NonRoot {
    name: String,
    uid: u32,
    gid: u32,
    home: Option<String>,
    prefixes: Vec<String>,
}

impl Default for NonRoot {
    fn default() -> Self {
        NonRoot { name: "user".into(), uid: 1000, gid: 1000, home: None, prefixes: Vec::new() }
    }
}

impl NonRoot {
    fn bundle(&self) -> Bundle {
        Bundle {
            packages: Vec::new(),
            user: Some(format!("{}:{}", self.uid, self.gid)),
            account: Some(Account {
                name: self.name.clone(),
                uid: self.uid,
                gid: self.gid,
                home: self.home.clone().unwrap_or_else(|| format!("/home/{}", self.name)),
            }),
            ..Bundle::default()
        }
    }

    /// Whether the image name starts with one of the prefixes, segment by
    /// segment (`shell` matches `shell/git`, not `shellcheck`).
    fn is_default_for(&self, segments: &[String]) -> bool {
        self.prefixes.iter().any(|prefix| {
            let words: Vec<&str> = prefix.trim_matches('/').split('/').collect();
            segments.len() >= words.len() && segments.iter().zip(&words).all(|(s, w)| s == w)
        })
    }
}

/// What Nixery adds to every image (its `ImageFromName`).
fn nixery_defaults() -> Vec<String> {
    vec!["cacert".into(), "iana-etc".into()]
}

/// Both spellings an operator may use in strata.toml.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BundleSpec {
    List(Vec<String>),
    Table(Bundle),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    packages: Vec<String>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    account: Option<Account>,
}

/// Nixery's one bundle. `cmd = ["bash"]` makes `docker run -ti HOST/shell/git`
/// open a shell instead of failing for want of a command.
fn builtin_bundles(nonroot: &NonRoot) -> BTreeMap<String, Bundle> {
    let shell = Bundle {
        packages: [
            "bashInteractive",
            "cacert",
            "coreutils",
            "iana-etc",
            "moreutils",
            "nano",
        ]
        .map(String::from)
        .to_vec(),
        cmd: Some(vec!["bash".into()]),
        ..Bundle::default()
    };
    BTreeMap::from([("shell".to_string(), shell), (NONROOT.to_string(), nonroot.bundle())])
}

/// The built-in bundle that makes an image run as a user of its own.
const NONROOT: &str = "nonroot";

fn bundles(config: Config) -> Result<BTreeMap<String, Bundle>, PluginError> {
    let mut table = builtin_bundles(&config.nonroot);
    for (name, spec) in config.bundles {
        if ARCHES.contains(&name.as_str()) {
            return Err(PluginError::new(format!(
                "bundle name `{name}` is reserved: it selects the architecture"
            )));
        }
        if name.is_empty() || name.contains('/') {
            return Err(PluginError::new(format!(
                "bundle name `{name}` cannot be a segment of an image name"
            )));
        }
        let bundle = match spec {
            BundleSpec::List(packages) => Bundle {
                packages,
                ..table.remove(&name).unwrap_or_default()
            },
            BundleSpec::Table(bundle) => bundle,
        };
        table.insert(name, bundle);
    }
    Ok(table)
}

/// The `expand_names` hook.
pub fn expand_names(input: ExpandInput) -> Result<ExpandOutput, PluginError> {
    let config: Config = strata_plugin_sdk::config(&input.config)?;
    let always = config.always.clone();
    let nonroot_default = config.nonroot.is_default_for(&input.segments);
    let table = bundles(config)?;
    let mut out = input.current;

    let mut words = Vec::new();
    let mut used = Vec::new();
    let mut stack = Vec::new();
    for name in &out.packages {
        expand(name, &table, &mut stack, &mut words, &mut used);
    }

    let mut arch: Option<&str> = None;
    let mut seen = BTreeSet::new();
    let mut packages = Vec::new();
    for word in &words {
        if let Some(a) = ARCHES.iter().find(|a| **a == word.as_str()) {
            if arch.is_some_and(|prev| prev != *a) {
                return Err(PluginError::new(
                    "the image name selects both amd64 and arm64; name at most one",
                ));
            }
            arch = Some(a);
        } else if seen.insert(word.as_str()) {
            packages.push(word.clone());
        }
    }
    out.packages = packages;
    for name in always {
        if !out.packages.contains(&name) && !out.optional.contains(&name) {
            out.optional.push(name);
        }
    }
    if let Some(a) = arch {
        out.arch = a.to_string();
    }
    // The prefix's default comes last: a bundle the request names keeps
    // its say over the user.
    if nonroot_default && !used.contains(&NONROOT) {
        used.push(NONROOT);
    }
    for bundle in used {
        apply(&mut out.image, &table[bundle]);
    }
    Ok(out)
}

/// Depth-first, in place, so that the request order survives expansion.
/// `stack` holds the bundles being expanded: a name on it is a package.
fn expand<'a>(
    name: &str,
    table: &'a BTreeMap<String, Bundle>,
    stack: &mut Vec<&'a str>,
    words: &mut Vec<String>,
    used: &mut Vec<&'a str>,
) {
    match table.get_key_value(name) {
        Some((key, bundle)) if !stack.contains(&key.as_str()) => {
            if !used.contains(&key.as_str()) {
                used.push(key);
            }
            stack.push(key);
            for member in &bundle.packages {
                expand(member, table, stack, words, used);
            }
            stack.pop();
        }
        _ => words.push(name.to_string()),
    }
}

/// Fills only what is still unset: an earlier plugin of the chain, or a
/// bundle named earlier in the request, keeps its say.
fn apply(image: &mut ImageSettings, bundle: &Bundle) {
    fn fill<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
        if slot.is_none() {
            slot.clone_from(value);
        }
    }
    fill(&mut image.cmd, &bundle.cmd);
    fill(&mut image.entrypoint, &bundle.entrypoint);
    fill(&mut image.user, &bundle.user);
    fill(&mut image.working_dir, &bundle.working_dir);
    fill(&mut image.account, &bundle.account);
    for entry in &bundle.env {
        let key = entry.split('=').next().unwrap_or_default();
        let taken = image
            .env
            .iter()
            .any(|e| e.split('=').next().unwrap_or_default() == key);
        if !taken {
            image.env.push(entry.clone());
        }
    }
    for (k, v) in &bundle.labels {
        image.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use strata_plugin_sdk::Expansion;

    fn run(config: serde_json::Value, segments: &[&str]) -> Result<Expansion, PluginError> {
        let segments: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
        expand_names(ExpandInput {
            config,
            segments: segments.clone(),
            tag: "latest".into(),
            current: Expansion {
                packages: segments,
                arch: "amd64".into(),
                ..Expansion::default()
            },
        })
    }

    fn optional(e: &Expansion) -> Vec<&str> {
        e.optional.iter().map(String::as_str).collect()
    }

    #[test]
    fn nixery_s_defaults_are_added_to_every_image_as_optional() {
        let e = run(serde_json::Value::Null, &["curl"]).unwrap();
        assert_eq!((pkgs(&e), optional(&e)), (vec!["curl"], vec!["cacert", "iana-etc"]));
        let e = run(json!({}), &["hello", "arm64"]).unwrap();
        assert_eq!(optional(&e), ["cacert", "iana-etc"]);
        // Named in the request (or by a bundle): required, not optional.
        let e = run(json!({}), &["cacert", "curl"]).unwrap();
        assert_eq!((pkgs(&e), optional(&e)), (vec!["cacert", "curl"], vec!["iana-etc"]));
        let e = run(json!({}), &["shell"]).unwrap();
        assert!(e.optional.is_empty(), "{e:?}");
    }

    #[test]
    fn always_is_the_operator_s_to_set() {
        let e = run(json!({ "always": [] }), &["curl"]).unwrap();
        assert!(e.optional.is_empty());
        let e = run(json!({ "always": ["tzdata"], "bundles": { "base": ["coreutils"] } }), &["base"]).unwrap();
        assert_eq!((pkgs(&e), optional(&e)), (vec!["coreutils"], vec!["tzdata"]));
        assert!(run(json!({ "always": "cacert" }), &["curl"]).is_err());
    }

    fn pkgs(e: &Expansion) -> Vec<&str> {
        e.packages.iter().map(String::as_str).collect()
    }

    #[test]
    fn plain_names_pass_through_in_order() {
        let e = run(json!({}), &["git", "curl", "xorg.xev"]).unwrap();
        assert_eq!(pkgs(&e), ["git", "curl", "xorg.xev"]);
        assert_eq!(e.arch, "amd64");
        assert_eq!(e.image, ImageSettings::default());
    }

    #[test]
    fn shell_expands_in_place_and_sets_bash() {
        let e = run(serde_json::Value::Null, &["shell", "git"]).unwrap();
        assert_eq!(
            pkgs(&e),
            [
                "bashInteractive",
                "cacert",
                "coreutils",
                "iana-etc",
                "moreutils",
                "nano",
                "git"
            ]
        );
        assert_eq!(e.image.cmd, Some(vec!["bash".to_string()]));
    }

    #[test]
    fn bundle_at_any_position() {
        let e = run(json!({}), &["git", "shell"]).unwrap();
        assert_eq!(pkgs(&e)[0], "git");
        assert_eq!(pkgs(&e).len(), 7);
    }

    #[test]
    fn existing_cmd_is_kept() {
        let mut input = ExpandInput {
            config: json!({}),
            segments: vec!["shell".into()],
            tag: "latest".into(),
            current: Expansion {
                packages: vec!["shell".into()],
                arch: "amd64".into(),
                image: ImageSettings {
                    cmd: Some(vec!["sh".into()]),
                    ..Default::default()
                },
                ..Expansion::default()
            },
        };
        input.current.image.env.push("A=1".into());
        let e = expand_names(input).unwrap();
        assert_eq!(e.image.cmd, Some(vec!["sh".to_string()]));
    }

    #[test]
    fn arch_words_select_and_vanish() {
        let e = run(json!({}), &["arm64", "shell", "git"]).unwrap();
        assert_eq!(e.arch, "arm64");
        assert!(!e.packages.iter().any(|p| p == "arm64"));
        let e = run(json!({}), &["git", "amd64"]).unwrap();
        assert_eq!(e.arch, "amd64");
        assert_eq!(pkgs(&e), ["git"]);
        let e = run(json!({}), &["arm64", "git", "arm64"]).unwrap();
        assert_eq!(e.arch, "arm64");
        let err = run(json!({}), &["arm64", "amd64"]).unwrap_err();
        assert!(err.message.contains("both"));
    }

    #[test]
    fn duplicates_keep_first_occurrence() {
        let e = run(json!({}), &["nano", "shell", "git", "nano", "git"]).unwrap();
        assert_eq!(
            pkgs(&e),
            [
                "nano",
                "bashInteractive",
                "cacert",
                "coreutils",
                "iana-etc",
                "moreutils",
                "git"
            ]
        );
    }

    #[test]
    fn configured_list_bundle() {
        let config = json!({ "bundles": { "acme-base": ["coreutils", "git"] } });
        let e = run(config, &["acme-base", "curl"]).unwrap();
        assert_eq!(pkgs(&e), ["coreutils", "git", "curl"]);
        assert_eq!(e.image, ImageSettings::default());
    }

    #[test]
    fn configured_table_bundle_carries_image_settings() {
        let config = json!({ "bundles": { "acme-base": {
            "packages": ["coreutils", "git"],
            "cmd": ["git", "--version"],
            "env": ["GIT_PAGER=cat"],
            "labels": { "org": "acme" },
            "working_dir": "/src"
        } } });
        let e = run(config, &["acme-base"]).unwrap();
        assert_eq!(pkgs(&e), ["coreutils", "git"]);
        assert_eq!(e.image.cmd, Some(vec!["git".into(), "--version".into()]));
        assert_eq!(e.image.env, ["GIT_PAGER=cat"]);
        assert_eq!(e.image.labels["org"], "acme");
        assert_eq!(e.image.working_dir.as_deref(), Some("/src"));
    }

    #[test]
    fn first_bundle_in_request_wins_settings() {
        let config = json!({ "bundles": {
            "a": { "packages": ["x"], "cmd": ["a"], "env": ["K=a"] },
            "b": { "packages": ["y"], "cmd": ["b"], "env": ["K=b", "L=b"] }
        } });
        let e = run(config, &["b", "a"]).unwrap();
        assert_eq!(e.image.cmd, Some(vec!["b".to_string()]));
        assert_eq!(e.image.env, ["K=b", "L=b"]);
    }

    #[test]
    fn list_override_of_shell_keeps_bash() {
        let config = json!({ "bundles": { "shell": ["bashInteractive", "coreutils"] } });
        let e = run(config, &["shell"]).unwrap();
        assert_eq!(pkgs(&e), ["bashInteractive", "coreutils"]);
        assert_eq!(e.image.cmd, Some(vec!["bash".to_string()]));
    }

    #[test]
    fn table_override_replaces_everything() {
        let config = json!({ "bundles": { "shell": { "packages": ["busybox"] } } });
        let e = run(config, &["shell"]).unwrap();
        assert_eq!(pkgs(&e), ["busybox"]);
        assert_eq!(e.image.cmd, None);
    }

    #[test]
    fn nested_and_self_referencing_bundles() {
        let config = json!({ "bundles": {
            "dev": ["shell", "git", "gdb"],
            "git": ["git", "git-lfs"],
            "loop-a": ["loop-b", "a"],
            "loop-b": ["loop-a", "b"]
        } });
        let e = run(config.clone(), &["dev"]).unwrap();
        assert_eq!(
            pkgs(&e),
            [
                "bashInteractive",
                "cacert",
                "coreutils",
                "iana-etc",
                "moreutils",
                "nano",
                "git",
                "git-lfs",
                "gdb"
            ]
        );
        assert_eq!(e.image.cmd, Some(vec!["bash".to_string()]));
        let e = run(config, &["loop-a"]).unwrap();
        assert_eq!(pkgs(&e), ["loop-a", "b", "a"]);
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let err = run(json!({ "bundles": { "arm64": ["x"] } }), &["x"]).unwrap_err();
        assert!(err.message.contains("reserved"), "{}", err.message);
        let err = run(json!({ "bundle": {} }), &["x"]).unwrap_err();
        assert!(
            err.message.contains("invalid plugin configuration"),
            "{}",
            err.message
        );
        let err = run(json!({ "bundles": { "x": 3 } }), &["x"]).unwrap_err();
        assert!(
            err.message.contains("invalid plugin configuration"),
            "{}",
            err.message
        );
    }

    #[test]
    fn nonroot_adds_a_user_and_runs_as_it() {
        let e = run(json!({}), &["shell", "nonroot", "git"]).unwrap();
        assert!(!e.packages.iter().any(|p| p == "nonroot"), "{e:?}");
        assert_eq!(e.image.user.as_deref(), Some("1000:1000"));
        assert_eq!(e.image.cmd, Some(vec!["bash".to_string()]));
        assert_eq!(
            e.image.account,
            Some(Account { name: "user".into(), uid: 1000, gid: 1000, home: "/home/user".into() })
        );
        assert_eq!(strata_plugin_sdk::validate::expansion(&e), Ok(()));
        let plain = run(json!({}), &["shell", "git"]).unwrap();
        assert_eq!((plain.image.user, plain.image.account), (None, None));
    }

    #[test]
    fn nonroot_user_is_configurable_and_a_prefix_default() {
        let config = json!({ "nonroot": { "name": "ci", "uid": 1001, "gid": 1002, "prefixes": ["shell", "tools/ci"] } });
        let e = run(config.clone(), &["nonroot", "git"]).unwrap();
        assert_eq!(e.image.user.as_deref(), Some("1001:1002"));
        assert_eq!(e.image.account.as_ref().map(|a| a.home.as_str()), Some("/home/ci"));
        for name in [&["shell", "git"][..], &["tools", "ci", "git"]] {
            let e = run(config.clone(), name).unwrap();
            assert_eq!(e.image.user.as_deref(), Some("1001:1002"), "{name:?}");
        }
        for name in [&["git", "shell"][..], &["tools", "git"], &["shellcheck"]] {
            let e = run(config.clone(), name).unwrap();
            assert_eq!(e.image.account, None, "{name:?}");
        }
        // A bundle the request names keeps its user over the prefix's.
        let config = json!({ "nonroot": { "prefixes": ["shell"] },
                             "bundles": { "svc": { "packages": ["x"], "user": "svc" } } });
        let e = run(config, &["shell", "svc"]).unwrap();
        assert_eq!(e.image.user.as_deref(), Some("svc"));
        // A word of the operator's as the switch.
        let e = run(json!({ "bundles": { "ci": ["nonroot"] } }), &["ci", "git"]).unwrap();
        assert_eq!((pkgs(&e), e.image.user.as_deref()), (vec!["git"], Some("1000:1000")));
        let home = run(json!({ "nonroot": { "home": "/builds" } }), &["nonroot", "git"]).unwrap();
        assert_eq!(home.image.account.unwrap().home, "/builds");
        assert!(run(json!({ "nonroot": { "uid": "x" } }), &["git"]).is_err());
    }

    #[test]
    fn works_on_current_not_segments() {
        // An earlier plugin of the chain may already have rewritten the list.
        let e = expand_names(ExpandInput {
            config: json!({}),
            segments: vec!["something".into()],
            tag: "latest".into(),
            current: Expansion {
                packages: vec!["shell".into()],
                arch: "amd64".into(),
                ..Expansion::default()
            },
        })
        .unwrap();
        assert_eq!(e.packages.len(), 6);
    }
}
