//! The wire types of every hook. The host sends the input type (as JSON, or
//! for `group_layers` in the compact form of [`crate::wire`]) and the guest
//! answers with the output type as JSON; both sides compile this file, so a
//! field can never mean two things.
//!
//! Only integers and strings cross the wire (no floats): serde_json's float
//! formatting has changed between versions, and a host and a plugin built a
//! year apart must still agree byte for byte.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Bumped on any incompatible change to the exports, the envelope or a type
/// below. The host refuses a module whose `strata_abi_version` differs.
/// Version 2: the closure graph and the layers refer to store paths by
/// index (references, roots, layers), and popularity is a field of each path
/// rather than a map; version 1 sent every reference as a full path, and
/// grouping a 10,000-path closure spent more time in JSON than in the
/// strategy. Version 3: `group_layers` input is the compact form of
/// [`crate::wire`] instead of JSON, for the same reason.
pub const ABI_VERSION: u32 = 3;

/// The hooks a plugin can implement, by their wire name.
pub const HOOKS: [&str; 3] = ["expand_names", "group_layers", "render_source"];

/// What `strata_plugin_info` returns: shown on the web page and by
/// `strata plugin check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// The hooks this module exports, by wire name.
    pub hooks: Vec<String>,
}

/// A failure the plugin reports on purpose (as opposed to a trap). The host
/// turns it into a request error naming the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PluginError {
    pub message: String,
}

impl PluginError {
    pub fn new(message: impl Into<String>) -> Self {
        PluginError { message: message.into() }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

/// What the guest returns from every hook: exactly one of the two fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Envelope<T> {
    Ok(T),
    Err(PluginError),
}

// ---------------------------------------------------------------- expand_names

/// Settings an expansion plugin may put on the image config. Later plugins in
/// the chain see and may override what earlier ones set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default)]
pub struct ImageSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` entries added to the image's environment (after `PATH`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A user the image gets beside root: named in `/etc/passwd` and
    /// `/etc/group`, with a home it owns. The host writes these files, so a
    /// plugin can ask for a user but never for a file. `user` is what the
    /// container runs as; set it too (the `nonroot` bundle sets
    /// `uid:gid`). Added in ABI 3 without a version change, as `optional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
}

/// A non-root user of an image (see [`ImageSettings::account`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Account {
    /// The login name: lowercase letters, digits, `_` and `-`, starting
    /// with a letter or `_`, at most 32 characters; not `root` or `nobody`.
    pub name: String,
    /// Not 0 (that is root) nor 65534 (`nobody`).
    pub uid: u32,
    pub gid: u32,
    /// An absolute path (`/home/user`), created and owned by `uid:gid`.
    pub home: String,
}

/// The state an expansion chain passes from plugin to plugin. The first plugin
/// receives the name segments as `packages` and `amd64` as `arch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Expansion {
    /// Package attribute paths (`git`, `xorg.xev`), in request order.
    pub packages: Vec<String>,
    /// Packages added when the package set has them, as Nixery adds
    /// `cacert` and `iana-etc` to every image: one the set lacks, or refuses
    /// to evaluate, is skipped rather than failing the request. A name in
    /// both lists is required. Added in ABI 3 without a version change: a
    /// plugin built with an older SDK drops the list when it passes the
    /// expansion on, so put such plugins before the one that fills it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional: Vec<String>,
    /// Target architecture in OCI terms: `amd64` or `arm64`.
    pub arch: String,
    #[serde(default)]
    pub image: ImageSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExpandInput {
    /// This plugin's configuration table from `strata.toml` (`{}` if none).
    #[serde(default)]
    pub config: Value,
    /// The image name as requested, split on `/` (`["shell", "git"]`).
    pub segments: Vec<String>,
    /// The requested tag (`latest` when a client asked for no tag).
    pub tag: String,
    /// What the previous plugins of the chain made of the request.
    pub current: Expansion,
}

pub type ExpandOutput = Expansion;

// ---------------------------------------------------------------- group_layers

/// One store path of the runtime closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StorePath {
    /// Full path, `/nix/store/<hash>-<name>`.
    pub path: String,
    pub nar_size: u64,
    /// Runtime references, as indices into [`ClosureGraph::paths`]. A path
    /// may reference itself (Nix reports that); plugins must tolerate it.
    pub references: Vec<u32>,
    /// The count of this path's name (the part after the hash, `bash-5.2`)
    /// in the popularity data, as in Nixery's; 0 when the name is not
    /// listed or no data is configured.
    #[serde(default)]
    pub popularity: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClosureGraph {
    /// The top-level store paths of the requested packages, as indices into
    /// `paths`, in request order.
    pub roots: Vec<u32>,
    /// Every path of the closure, sorted by path: index order is path order.
    pub paths: Vec<StorePath>,
}

/// A store path naming its references by path: how Nix reports a closure,
/// and the easy way to write one in a test. [`ClosureGraph::from_named`]
/// turns a list of them into the wire form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedPath {
    pub path: String,
    pub nar_size: u64,
    pub references: Vec<String>,
}

impl ClosureGraph {
    /// The wire graph of `paths` (any order, each path once) with `roots`
    /// as top-level paths. Fails, naming it, on a path listed twice, a root
    /// or reference that is not in `paths`: the closure must be complete.
    pub fn from_named<R: AsRef<str>>(roots: &[R], mut paths: Vec<NamedPath>) -> Result<ClosureGraph, String> {
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(w) = paths.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(format!("store path {} is listed twice", w[0].path));
        }
        let index = |p: &str| {
            paths
                .binary_search_by(|q| q.path.as_str().cmp(p))
                .map(|i| i as u32)
                .ok()
        };
        let roots = roots
            .iter()
            .map(|r| index(r.as_ref()).ok_or_else(|| format!("top-level path {} is not in the closure", r.as_ref())))
            .collect::<Result<Vec<u32>, String>>()?;
        let wire = paths
            .iter()
            .map(|p| {
                let references = p
                    .references
                    .iter()
                    .map(|r| index(r).ok_or_else(|| format!("{} references {r}, which is not in the closure", p.path)))
                    .collect::<Result<Vec<u32>, String>>()?;
                Ok(StorePath { path: p.path.clone(), nar_size: p.nar_size, references, popularity: 0 })
            })
            .collect::<Result<Vec<StorePath>, String>>()?;
        Ok(ClosureGraph { roots, paths: wire })
    }

    /// Sets each path's popularity from counts keyed by store path name
    /// (Nixery's popularity data); names not listed count 0.
    pub fn set_popularity(&mut self, counts: &BTreeMap<String, u64>) {
        for p in &mut self.paths {
            p.popularity = counts.get(store_name(&p.path)).copied().unwrap_or(0);
        }
    }
}

/// The name part of `/nix/store/<hash>-<name>`: what stays the same when a
/// dependency changes the hash, and the key of popularity data.
pub fn store_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    match base.split_once('-') {
        Some((_, name)) => name,
        None => base,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupInput {
    #[serde(default)]
    pub config: Value,
    pub graph: ClosureGraph,
    /// The most layers this call may return. The host adds one more layer of
    /// its own (the symlink forest) after them.
    pub budget: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Layers {
    /// The strategy's name, written into the image history.
    pub strategy: String,
    /// Ordered base-most first; each layer a list of indices into
    /// [`ClosureGraph::paths`]. Must be a partition of the closure: every
    /// index exactly once, no empty layer. A path outside the closure cannot
    /// be named at all.
    pub layers: Vec<Vec<u32>>,
}

impl Layers {
    /// The layers as store paths: what the host packs once the grouping
    /// passed `validate::grouping`, and what native tests compare. An index
    /// outside the graph is left out.
    pub fn named(&self, graph: &ClosureGraph) -> Vec<Vec<String>> {
        self.layers
            .iter()
            .map(|l| l.iter().filter_map(|&i| graph.paths.get(i as usize)).map(|p| p.path.clone()).collect())
            .collect()
    }
}

// --------------------------------------------------------------- render_source

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SourceInput {
    /// The source plugin's configuration (for `nixpkgs-source`: `channel`,
    /// `git`, `path` or `flake`).
    #[serde(default)]
    pub config: Value,
    pub tag: String,
}

/// What Nix imports. The host hands this to `nix/load-pkgs.nix` as JSON data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NixSource {
    /// A nixpkgs channel name (`nixos-unstable`) or a nixpkgs commit.
    Channel { channel: String },
    /// A git repository at a revision or ref.
    Git {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rev: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
    /// A local directory or file that evaluates to a package set (or a
    /// function of `{}` returning one).
    Path { path: String },
    /// A flake (`github:owner/repo`, `git+https://…`, `git+file://…`,
    /// `path:…`) as configured, and the revision or ref a tag selects. The
    /// host adds `rev`/`ref` to the flake reference in the form its type
    /// takes (`github:o/r/<rev>`, `git+…?rev=<rev>`); packages come from
    /// `legacyPackages.<system>`, then `packages.<system>`.
    Flake {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rev: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r#ref: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SourceOutput {
    pub source: NixSource,
    /// A stable name of exactly what is built (URL and revision), used in
    /// cache keys and shown on the web page.
    pub identity: String,
    /// True when the same identity always yields the same packages (a git
    /// commit), so that built images may be cached forever.
    pub immutable: bool,
    /// Which unfree packages the set may give: handed to nixpkgs (and any
    /// set taking a `config`) as `config.allowUnfree` (`true`) or
    /// `config.allowUnfreePredicate` (the names, by `pname`). Absent: the
    /// set's own default (nixpkgs refuses them all). Added in ABI 3 without
    /// a version change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unfree: Option<AllowUnfree>,
}

/// All unfree packages (`true`; `false` is the same as none), or those named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum AllowUnfree {
    All(bool),
    Names(Vec<String>),
}
