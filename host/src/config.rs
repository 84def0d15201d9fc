//! (being written: the plugin section below is fixed, the rest is in progress)

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `[plugins]` in strata.toml. A plugin reference is either a built-in name
/// (`bundles`, `popularity`, `size`, `nixpkgs-source`), a name declared under
/// `[plugins.define.<name>]`, or a path to a `.wasm` file (contains `/` or ends
/// in `.wasm`; its name is then the file stem).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Expansion chain, run in this order.
    pub expand: Vec<String>,
    /// Default grouping plugin.
    pub group: String,
    /// Per-image overrides of the grouping plugin; first match wins.
    pub group_rules: Vec<GroupRule>,
    /// Package-source plugin.
    pub source: String,
    /// Plugins from files, by the name the other keys use.
    pub define: BTreeMap<String, PluginDefinition>,
    /// Each plugin's configuration table, by plugin name; passed to every
    /// call as the input's `config` field.
    pub config: BTreeMap<String, toml::Value>,
    /// Wasm fuel per call (instructions, roughly).
    pub fuel: u64,
    /// Linear-memory cap per instance, MiB.
    pub memory_mib: u64,
    /// Largest output a call may return, MiB.
    pub output_mib: u64,
    /// Where compiled modules are cached between starts (None: no cache).
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    /// Image-name prefix (`big/`), matched against the requested name.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Exact tag.
    #[serde(default)]
    pub tag: Option<String>,
    pub plugin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginDefinition {
    pub path: PathBuf,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            expand: vec!["bundles".into()],
            group: "size".into(),
            group_rules: vec![],
            source: "nixpkgs-source".into(),
            define: BTreeMap::new(),
            config: BTreeMap::new(),
            fuel: 2_000_000_000,
            memory_mib: 64,
            output_mib: 16,
            cache_dir: None,
        }
    }
}
