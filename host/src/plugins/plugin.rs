//! One loaded plugin and its calls: each hook runs off the async workers,
//! in a fresh instance, and its answer is checked before anyone acts on it.

use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

use crate::config::PluginsConfig;
use crate::error::PluginCode;
use std::sync::Arc;
use strata_plugin_sdk::wire::WireInput;
use strata_plugin_sdk::{
    validate, ExpandInput, ExpandOutput, GroupInput, Layers, PluginInfo, SourceInput, SourceOutput,
};

use crate::plugins::runtime::{self, CallStats, Limits, Loaded};

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
    /// The registry code the plugin refused with (its `err` envelope's
    /// `code`, one the host knows); `reason` is then its message alone.
    pub code: Option<PluginCode>,
}

impl From<PluginFailure> for crate::error::Error {
    fn from(f: PluginFailure) -> Self {
        crate::error::Error::Plugin { plugin: f.plugin, hook: f.hook.to_string(), reason: f.reason, code: f.code }
    }
}

/// A loaded plugin: a compiled module, its identity and its configuration.
/// Cheap to share (`Arc<Plugin>`); every call gets its own instance, so calls
/// may run concurrently and a trap in one affects no other.
pub struct Plugin {
    name: String,
    info: PluginInfo,
    digest: String,
    config: Value,
    pub(crate) origin: String,
    pub(crate) loaded: Arc<Loaded>,
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
    pub(crate) fn from_wasm(
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
        PluginFailure { plugin: self.name.clone(), hook, reason, code: None }
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
            let bytes = input.encode().map_err(|e| (format!("host could not encode the input: {e}"), None))?;
            let (out, stats) = loaded.call(export, &bytes).map_err(|reason| (reason, None))?;
            let value: O = runtime::decode_refusal(&out)?;
            check(&input, &value).map_err(|reason| (reason, None))?;
            Ok::<_, (String, Option<PluginCode>)>((value, stats))
        })
        .await;
        match joined {
            Ok(Ok((value, stats))) => {
                tracing::debug!(plugin = %self.name, hook, fuel = stats.fuel, wasm_us = stats.wasm_time.as_micros() as u64, "plugin call");
                Ok((value, stats))
            }
            Ok(Err((reason, code))) => {
                tracing::debug!(plugin = %self.name, hook, %reason, ?code, "plugin call failed");
                Err(PluginFailure { code, ..self.failure(hook, reason) })
            }
            Err(e) => Err(self.failure(hook, format!("host task failed: {e}"))),
        }
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

pub(crate) fn file_stem(path: &Path) -> anyhow::Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{}: cannot name a plugin after this path", path.display()))
}
