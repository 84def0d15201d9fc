//! Plugins: every policy decision of Strata (which packages a name means, how
//! a closure is cut into layers, which package set is built) is made by a
//! WebAssembly module, run in a sandbox with no imports, bounded fuel,
//! bounded memory and bounded output. The host owns mechanism and checks
//! everything a plugin returns before acting on it.
//!
//! The ABI is in `strata_plugin_sdk` (and `docs/plugins.md`), and so are the
//! checks on plugin output (`strata_plugin_sdk::validate`).
//!
//! The folder owns loading and calling plugins; it offers the rest of the
//! host [`PluginSet`] (what a configuration loads, which plugin serves which
//! image), [`Plugin`] (one module and its typed hooks) and
//! [`PluginFailure`] (a call that gave no usable answer, mapped to the
//! registry's error). Here (`mod.rs` on top, imports pointing down):
//! - `check`: `strata plugin check`;
//! - `plugin`: one loaded plugin and its calls;
//! - `runtime`: engine, compilation (and its cache), one instance per call;
//! - `builtin`: the plugins embedded in the binary.

mod builtin;
mod check;
mod plugin;
mod runtime;

pub use builtin::NAMES as BUILTIN_NAMES;
pub use check::{check_command, check_sample, CheckArgs, CheckReport};
use plugin::file_stem;
pub use plugin::{load_file, Plugin, PluginFailure};
pub use runtime::CallStats;

use crate::config::{GroupRule, PluginsConfig};
use runtime::Limits;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use strata_plugin_sdk::{
    ExpandInput, Expansion,
};

/// The plugins a configuration uses, loaded once at start.
#[derive(Debug, Clone)]
pub struct PluginSet {
    /// The expansion chain, in order.
    pub expand: Vec<Arc<Plugin>>,
    /// The default grouping plugin.
    pub group: Arc<Plugin>,
    /// Per-image overrides; first match wins.
    pub group_rules: Vec<(GroupRule, Arc<Plugin>)>,
    pub source: Arc<Plugin>,
}

impl PluginSet {
    /// Loads and checks every plugin the configuration names. A plugin used
    /// under several keys is loaded once. Errors are one line naming the
    /// config key and the plugin.
    pub fn load(cfg: &PluginsConfig) -> anyhow::Result<PluginSet> {
        let limits = Limits::from_config(cfg)?;
        for name in cfg.define.keys() {
            if builtin::NAMES.contains(&name.as_str()) {
                anyhow::bail!("plugins.define.{name}: `{name}` is a built-in plugin's name; choose another");
            }
            if is_path_ref(name) {
                anyhow::bail!("plugins.define.{name}: a plugin name may not contain `/` or end in .wasm");
            }
        }
        let mut loader = Loader { cfg, limits, loaded: BTreeMap::new() };
        let expand = cfg
            .expand
            .iter()
            .enumerate()
            .map(|(i, r)| loader.get(&format!("plugins.expand[{i}]"), r, "expand_names"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let group = loader.get("plugins.group", &cfg.group, "group_layers")?;
        let group_rules = cfg
            .group_rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let key = format!("plugins.group_rules[{i}].plugin");
                Ok((rule.clone(), loader.get(&key, &rule.plugin, "group_layers")?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let source = loader.get("plugins.source", &cfg.source, "render_source")?;
        for key in cfg.config.keys() {
            if !loader.loaded.contains_key(key) {
                tracing::warn!("plugins.config.{key}: no plugin of that name is used; the table is ignored");
            }
        }
        Ok(PluginSet { expand, group, group_rules, source })
    }

    /// The grouping plugin for an image: the first rule whose prefix and tag
    /// (each optional) both match, else the default.
    pub fn grouper_for(&self, name: &str, tag: &str) -> &Arc<Plugin> {
        self.group_rules
            .iter()
            .find(|(rule, _)| {
                rule.prefix.as_deref().is_none_or(|p| name.starts_with(p))
                    && rule.tag.as_deref().is_none_or(|t| t == tag)
            })
            .map(|(_, plugin)| plugin)
            .unwrap_or(&self.group)
    }

    /// Runs the expansion chain. An empty chain means the segments are the
    /// package names.
    pub async fn expand(&self, segments: &[String], tag: &str) -> Result<Expansion, PluginFailure> {
        self.expand_for(segments, tag, &crate::config::Platform::host().arch).await
    }

    /// [`PluginSet::expand`] starting from architecture `arch`: a tag built
    /// for several platforms is expanded once for each. A chain that ends on
    /// another architecture chose it (Nixery's `arm64` segment).
    pub async fn expand_for(&self, segments: &[String], tag: &str, arch: &str) -> Result<Expansion, PluginFailure> {
        let mut current = Expansion {
            packages: segments.to_vec(),
            arch: arch.into(),
            ..Expansion::default()
        };
        for plugin in &self.expand {
            let input = ExpandInput {
                config: Value::Null,
                segments: segments.to_vec(),
                tag: tag.to_string(),
                current,
            };
            current = plugin.expand_names(input).await?;
        }
        Ok(current)
    }

    /// Every distinct plugin, in configuration order.
    pub fn all(&self) -> Vec<Arc<Plugin>> {
        let mut all: Vec<Arc<Plugin>> = Vec::new();
        let candidates = self
            .expand
            .iter()
            .chain(std::iter::once(&self.group))
            .chain(self.group_rules.iter().map(|(_, p)| p))
            .chain(std::iter::once(&self.source));
        for p in candidates {
            if !all.iter().any(|q| Arc::ptr_eq(p, q)) {
                all.push(p.clone());
            }
        }
        all
    }
}

/// A reference is a path when it looks like one; otherwise a name.
fn is_path_ref(reference: &str) -> bool {
    reference.contains('/') || reference.ends_with(".wasm")
}

enum Origin {
    Builtin(&'static str),
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin(_) => f.write_str("built-in"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

struct Loader<'a> {
    cfg: &'a PluginsConfig,
    limits: Limits,
    /// By plugin name: where it came from, and the plugin.
    loaded: BTreeMap<String, Arc<Plugin>>,
}

impl Loader<'_> {
    fn resolve(&self, key: &str, reference: &str) -> anyhow::Result<(String, Origin)> {
        if is_path_ref(reference) {
            let path = PathBuf::from(reference);
            let name = file_stem(&path).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
            return Ok((name, Origin::File(path)));
        }
        if let Some(def) = self.cfg.define.get(reference) {
            return Ok((reference.to_string(), Origin::File(def.path.clone())));
        }
        if let Some(name) = builtin::NAMES.iter().find(|n| **n == reference) {
            return Ok((name.to_string(), Origin::Builtin(name)));
        }
        anyhow::bail!(
            "{key}: no plugin named `{reference}`: not a built-in ({}), not under [plugins.define], \
             and not a path to a .wasm file",
            builtin::NAMES.join(", ")
        )
    }

    fn get(&mut self, key: &str, reference: &str, hook: &str) -> anyhow::Result<Arc<Plugin>> {
        let (name, origin) = self.resolve(key, reference)?;
        let plugin = match self.loaded.get(&name) {
            Some(plugin) if plugin.origin == origin.to_string() => plugin.clone(),
            Some(plugin) => anyhow::bail!(
                "{key}: `{reference}` would be named `{name}`, like the plugin from {}; \
                 give one of them another name under [plugins.define]",
                plugin.origin
            ),
            None => {
                let wasm: Cow<'static, [u8]> = match &origin {
                    Origin::Builtin(n) => Cow::Borrowed(builtin::wasm(n).ok_or_else(|| {
                        anyhow::anyhow!("{key}: built-in plugin `{n}` is not embedded in this build")
                    })?),
                    Origin::File(path) => Cow::Owned(std::fs::read(path).map_err(|e| {
                        anyhow::anyhow!("{key}: plugin `{name}`: cannot read {}: {e}", path.display())
                    })?),
                };
                let config = match self.cfg.config.get(&name) {
                    Some(table) => serde_json::to_value(table).map_err(|e| {
                        anyhow::anyhow!("plugins.config.{name}: cannot be passed to a plugin: {e}")
                    })?,
                    None => Value::Object(Default::default()),
                };
                let plugin = Plugin::from_wasm(
                    &name,
                    &wasm,
                    config,
                    origin.to_string(),
                    self.limits,
                    self.cfg.cache_dir.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("{key}: plugin `{name}` ({origin}): {e}"))?;
                let plugin = Arc::new(plugin);
                self.loaded.insert(name.clone(), plugin.clone());
                plugin
            }
        };
        if !plugin.implements(hook) {
            anyhow::bail!(
                "{key}: plugin `{name}` does not implement {hook} (it implements {})",
                plugin.loaded.hooks.join(", ")
            );
        }
        Ok(plugin)
    }
}
