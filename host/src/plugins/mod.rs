//! Plugins: every policy decision of Strata (which packages a name means, how
//! a closure is cut into layers, which package set is built) is made by a
//! WebAssembly module, run in a sandbox with no imports, bounded fuel,
//! bounded memory and bounded output. The host owns mechanism and checks
//! everything a plugin returns before acting on it.
//!
//! The ABI is in `strata_plugin_sdk` (and `docs/plugins.md`), and so are the
//! checks on plugin output (`strata_plugin_sdk::validate`). Here:
//! - `runtime`: engine, compilation (and its cache), one instance per call;
//! - `builtin`: the plugins embedded in the binary;
//! - `check`: `strata plugin check`.

mod builtin;
mod check;
mod runtime;

pub use builtin::NAMES as BUILTIN_NAMES;
pub use check::{check_command, check_sample, CheckArgs, CheckReport};
pub use runtime::CallStats;

use crate::config::{GroupRule, PluginsConfig};
use runtime::{Limits, Loaded};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_plugin_sdk::wire::WireInput;
use strata_plugin_sdk::{
    validate, ExpandInput, ExpandOutput, Expansion, GroupInput, Layers, PluginInfo,
    SourceInput, SourceOutput,
};

/// A plugin call that did not produce a usable answer. `reason` is one line
/// meant for the person who pulled the image (or the operator's log), e.g.
/// "ran out of fuel (limit 2000000000)", "exceeded its memory limit (64 MiB)",
/// "returned an invalid grouping: path /nix/store/… is missing",
/// "reported an error: no package named foo".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin}: {reason}")]
pub struct PluginFailure {
    pub plugin: String,
    pub hook: &'static str,
    pub reason: String,
}

/// A loaded plugin: a compiled module, its identity and its configuration.
/// Cheap to share (`Arc<Plugin>`); every call gets its own instance, so calls
/// may run concurrently and a trap in one affects no other.
pub struct Plugin {
    name: String,
    info: PluginInfo,
    digest: String,
    config: Value,
    origin: String,
    loaded: Arc<Loaded>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("digest", &self.digest)
            .field("hooks", &self.loaded.hooks)
            .finish()
    }
}

impl Plugin {
    /// Compiles and checks a module. Errors are one line without the
    /// plugin's name; callers prefix where it came from.
    fn from_wasm(
        name: &str,
        wasm: &[u8],
        config: Value,
        origin: String,
        limits: Limits,
        cache_dir: Option<&Path>,
    ) -> anyhow::Result<Plugin> {
        let digest = hex::encode(Sha256::digest(wasm));
        let loaded = Loaded::new(wasm, &digest, limits, cache_dir)?;
        let info = loaded.info().map_err(|reason| anyhow::anyhow!("strata_plugin_info {reason}"))?;
        // Shown on the web page and in logs: keep it short and on one line.
        for (field, value) in [("name", &info.name), ("version", &info.version)] {
            if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
                anyhow::bail!("strata_plugin_info returned a {field} that is empty, over 128 bytes or not one line");
            }
        }
        let mut declared: Vec<&str> = info.hooks.iter().map(String::as_str).collect();
        declared.sort_unstable();
        let mut exported = loaded.hooks.clone();
        exported.sort_unstable();
        if declared != exported {
            anyhow::bail!(
                "strata_plugin_info declares the hooks [{}] but the module exports [{}]",
                info.hooks.join(", "),
                loaded.hooks.join(", ")
            );
        }
        Ok(Plugin { name: name.to_string(), info, digest, config, origin, loaded: Arc::new(loaded) })
    }

    /// The name the configuration refers to it by (a built-in's name, a
    /// `[plugins.define]` key, or a file's stem); `info().name` is what the
    /// module calls itself.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// sha256 (hex) of the module's bytes: part of every cache key that
    /// depends on this plugin's decisions.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The configuration table passed to every call, as JSON (`{}` if none).
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// `built-in` or the path the module was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether the module exports the hook (by wire name, `group_layers`).
    pub fn implements(&self, hook: &str) -> bool {
        self.loaded.hooks.contains(&hook)
    }

    pub async fn expand_names(&self, mut input: ExpandInput) -> Result<ExpandOutput, PluginFailure> {
        input.config = self.config.clone();
        let (out, _) = self.run("expand_names", input, |_, out| validate::expansion(out)).await?;
        Ok(out)
    }

    /// Checks the answer is a partition of the closure within the budget
    /// before returning it.
    pub async fn group_layers(&self, input: GroupInput) -> Result<Layers, PluginFailure> {
        Ok(self.group_layers_measured(input).await?.0)
    }

    /// [`Plugin::group_layers`], also returning what the call cost.
    pub async fn group_layers_measured(
        &self,
        mut input: GroupInput,
    ) -> Result<(Layers, CallStats), PluginFailure> {
        input.config = self.config.clone();
        self.run("group_layers", input, |input: &GroupInput, out| {
            validate::grouping(&input.graph, input.budget, out)
        })
        .await
    }

    pub async fn render_source(&self, mut input: SourceInput) -> Result<SourceOutput, PluginFailure> {
        input.config = self.config.clone();
        let (out, _) = self.run("render_source", input, |_, out| validate::source(out)).await?;
        Ok(out)
    }

    /// An export's answer as the module wrote it, before it is decoded or
    /// checked: `strata_plugin_info` (no input) or a hook's export with
    /// input bytes (encode them with `strata_plugin_sdk::wire::WireInput`,
    /// as the server does). Calls run under the same limits as the
    /// server's. For tests that hold answers against the published schema.
    #[doc(hidden)]
    pub fn answer_bytes(&self, export: &str, input: Option<&[u8]>) -> Result<Vec<u8>, String> {
        match input {
            None => self.loaded.info_bytes(),
            Some(bytes) => Ok(self.loaded.call(export, bytes)?.0),
        }
    }

    /// Store creation and instantiation alone, as every call pays them; for
    /// the overhead benchmark.
    #[doc(hidden)]
    pub fn instantiate_only(&self) -> Result<CallStats, PluginFailure> {
        self.loaded.instantiate_only().map_err(|reason| self.failure("instantiate", reason))
    }

    fn failure(&self, hook: &'static str, reason: String) -> PluginFailure {
        PluginFailure { plugin: self.name.clone(), hook, reason }
    }

    /// Runs a hook off the async workers: JSON encoding, the wasm call,
    /// decoding and the output check are all CPU work proportional to the
    /// closure size.
    pub(crate) async fn run<I, O>(
        &self,
        hook: &'static str,
        input: I,
        check: fn(&I, &O) -> Result<(), String>,
    ) -> Result<(O, CallStats), PluginFailure>
    where
        I: WireInput + Send + 'static,
        O: DeserializeOwned + Send + 'static,
    {
        let export = match runtime::hook_export(hook) {
            Some(export) if self.implements(hook) => export,
            _ => return Err(self.failure(hook, format!("does not implement {hook}"))),
        };
        let permit = runtime::call_slots().acquire_owned().await.expect("the semaphore is never closed");
        let loaded = self.loaded.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let bytes = input.encode().map_err(|e| format!("host could not encode the input: {e}"))?;
            let (out, stats) = loaded.call(export, &bytes)?;
            let value: O = runtime::decode(&out)?;
            check(&input, &value)?;
            Ok::<_, String>((value, stats))
        })
        .await;
        match joined {
            Ok(Ok((value, stats))) => {
                tracing::debug!(plugin = %self.name, hook, fuel = stats.fuel, wasm_us = stats.wasm_time.as_micros() as u64, "plugin call");
                Ok((value, stats))
            }
            Ok(Err(reason)) => {
                tracing::debug!(plugin = %self.name, hook, %reason, "plugin call failed");
                Err(self.failure(hook, reason))
            }
            Err(e) => Err(self.failure(hook, format!("host task failed: {e}"))),
        }
    }
}

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
        let mut current = Expansion {
            packages: segments.to_vec(),
            arch: "amd64".into(),
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

/// Loads one module from a file, outside any configuration; its name is the
/// file stem. Used by `strata plugin check`.
pub fn load_file(path: &Path, config: Value, cfg: &PluginsConfig) -> anyhow::Result<Plugin> {
    let limits = Limits::from_config(cfg)?;
    let name = file_stem(path)?;
    let wasm = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let config = if config.is_null() { Value::Object(Default::default()) } else { config };
    Plugin::from_wasm(&name, &wasm, config, path.display().to_string(), limits, cfg.cache_dir.as_deref())
        .map_err(|e| anyhow::anyhow!("plugin `{name}` ({}): {e}", path.display()))
}

/// A reference is a path when it looks like one; otherwise a name.
fn is_path_ref(reference: &str) -> bool {
    reference.contains('/') || reference.ends_with(".wasm")
}

fn file_stem(path: &Path) -> anyhow::Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{}: cannot name a plugin after this path", path.display()))
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
