//! `strata plugin check FILE.wasm`: a plugin author's quick answer to "does
//! the host accept my module, and what does it make of a typical request?",
//! without Nix, a registry or a configuration; and, given `--input`, of
//! their own request, run exactly as the server runs it.

use crate::plugins::plugin::{Plugin, PluginFailure};
use crate::plugins::runtime::CallStats;
use crate::config::PluginsConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::path::Path;
use strata_plugin_sdk::wire::WireInput;
use strata_plugin_sdk::{
    validate, ClosureGraph, ExpandInput, Expansion, GroupInput, NamedPath, SourceInput, HOOKS,
};

/// What `strata plugin check` was asked to do, from its command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckArgs<'a> {
    /// Run only this hook (by wire name); needed with `input` when the
    /// module implements more than one.
    pub hook: Option<&'a str>,
    /// The hook's input as JSON (the docs' form; `group_layers` input is
    /// encoded compactly by the host, as the server does).
    pub input: Option<&'a Path>,
    /// The plugin's configuration table (`--plugin-config`), JSON or
    /// (`.toml`) TOML; without it, the table the configuration file gives
    /// the file's stem, else `{}`. (`--config` is the configuration file,
    /// as for every command.)
    pub config: Option<&'a Path>,
}

/// The whole command: loads `file` as the server would load it, runs the
/// samples or the given input, prints the report, and fails when a hook
/// failed.
pub async fn check_command(cfg: &PluginsConfig, file: &Path, args: CheckArgs<'_>) -> anyhow::Result<()> {
    let (config, config_origin) = match args.config {
        Some(path) => (read_config(path)?, path.display().to_string()),
        None => {
            // By the file's stem, so a source plugin is checked with the
            // source it would serve.
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            match cfg.config.get(stem) {
                Some(t) => (serde_json::to_value(t)?, format!("[plugins.config.{stem}]")),
                None => (Value::Null, "none given".to_string()),
            }
        }
    };
    let plugin = crate::plugins::plugin::load_file(file, config, cfg)?;
    if let Some(hook) = args.hook {
        if !HOOKS.contains(&hook) {
            anyhow::bail!("--hook {hook}: no such hook (the hooks are {})", HOOKS.join(", "));
        }
        if !plugin.implements(hook) {
            anyhow::bail!("--hook {hook}: {} does not implement it (it implements {})", file.display(), plugin.info().hooks.join(", "));
        }
    }
    let report = match args.input {
        None => {
            let mut report = check_sample_hooks(&plugin, args.hook).await;
            report.lines.insert(3, format!("config {} ({config_origin})", plugin.config()));
            report
        }
        Some(input) => {
            let hook = match (args.hook, plugin.loaded.hooks.as_slice()) {
                (Some(hook), _) => hook,
                (None, [only]) => only,
                (None, hooks) => anyhow::bail!(
                    "--input needs --hook: {} implements {}",
                    file.display(),
                    hooks.join(", ")
                ),
            };
            let text = std::fs::read(input).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", input.display()))?;
            let mut report = header(&plugin);
            report.lines.push(format!("config {} ({config_origin})", plugin.config()));
            check_input(&plugin, hook, &input.display().to_string(), &text, &mut report).await?;
            report
        }
    };
    println!("{report}");
    if !report.ok() {
        anyhow::bail!("{} failed its checks", file.display());
    }
    Ok(())
}

/// A configuration table from a file: TOML for `.toml`, JSON otherwise.
fn read_config(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let value = if path.extension().is_some_and(|e| e == "toml") {
        serde_json::to_value(toml::from_str::<toml::Table>(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)?
    } else {
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?
    };
    Ok(value)
}

/// Runs one hook on the input in `text`: the same call, limits and output
/// checks as the server, then prints the answer whole.
async fn check_input(plugin: &Plugin, hook: &str, what: &str, text: &[u8], report: &mut CheckReport) -> anyhow::Result<()> {
    fn parse<I: DeserializeOwned>(hook: &str, what: &str, text: &[u8]) -> anyhow::Result<I> {
        serde_json::from_slice(text).map_err(|e| anyhow::anyhow!("{what}: not {hook} input: {e}"))
    }
    fn show<O: Serialize>(out: &O) -> String {
        serde_json::to_string_pretty(out).unwrap_or_default()
    }
    match hook {
        "expand_names" => {
            let input: ExpandInput = parse(hook, what, text)?;
            let result = run_as_server(plugin, "expand_names", input, |_, out| validate::expansion(out)).await;
            report.output("expand_names", what, result, show);
        }
        "group_layers" => {
            let input: GroupInput = parse(hook, what, text)?;
            let result = plugin.group_layers_measured(input).await;
            report.output("group_layers", what, result, show);
        }
        "render_source" => {
            let input: SourceInput = parse(hook, what, text)?;
            let result = run_as_server(plugin, "render_source", input, |_, out| validate::source(out)).await;
            report.output("render_source", what, result, show);
        }
        other => anyhow::bail!("no such hook {other}"),
    }
    Ok(())
}

/// A hook call with the plugin's configuration in the input, as the
/// server's `Plugin::expand_names` and `render_source` make it.
async fn run_as_server<I, O>(
    plugin: &Plugin,
    hook: &'static str,
    mut input: I,
    check: fn(&I, &O) -> Result<(), String>,
) -> Result<(O, CallStats), PluginFailure>
where
    I: WireInput + HasConfig + Send + 'static,
    O: DeserializeOwned + Send + 'static,
{
    *input.config_mut() = plugin.config().clone();
    plugin.run(hook, input, check).await
}

/// The inputs whose `config` the host fills in.
trait HasConfig {
    fn config_mut(&mut self) -> &mut Value;
}

impl HasConfig for ExpandInput {
    fn config_mut(&mut self) -> &mut Value {
        &mut self.config
    }
}

impl HasConfig for SourceInput {
    fn config_mut(&mut self) -> &mut Value {
        &mut self.config
    }
}

/// What `check_sample` found: printable with `{}`; `failures` > 0 means some
/// hook failed on the sample (a reason to exit non-zero).
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub lines: Vec<String>,
    pub failures: usize,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.failures == 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Runs every hook the plugin exports on a small built-in sample (the
/// request `shell/git/htop:latest`, a 10-path closure with a budget of 4
/// layers) through the same path the server uses, output checks included.
pub async fn check_sample(plugin: &Plugin) -> CheckReport {
    check_sample_hooks(plugin, None).await
}

fn header(plugin: &Plugin) -> CheckReport {
    let info = plugin.info();
    let mut report = CheckReport::default();
    report.lines.push(format!(
        "plugin {} (calls itself {} {}), from {}",
        plugin.name(),
        info.name,
        info.version,
        plugin.origin()
    ));
    report.lines.push(format!("sha256 {}", plugin.digest()));
    report.lines.push(format!("abi version {} ok; hooks: {}", strata_plugin_sdk::ABI_VERSION, info.hooks.join(", ")));
    report
}

/// [`check_sample`] of one hook, or of all when `only` is `None`.
async fn check_sample_hooks(plugin: &Plugin, only: Option<&str>) -> CheckReport {
    let mut report = header(plugin);
    let wanted = |hook: &str| plugin.implements(hook) && only.is_none_or(|h| h == hook);
    if wanted("expand_names") {
        let segments: Vec<String> = ["shell", "git", "htop"].map(String::from).to_vec();
        let input = ExpandInput {
            config: plugin.config().clone(),
            segments: segments.clone(),
            tag: "latest".into(),
            current: Expansion { packages: segments, arch: "amd64".into(), ..Expansion::default() },
        };
        let result = plugin
            .run("expand_names", input, |_, out| validate::expansion(out))
            .await;
        report.line("expand_names", "shell/git/htop:latest", result, |e| {
            let mut s = format!("arch {}, packages [{}]", e.arch, e.packages.join(", "));
            if let Ok(image) = serde_json::to_string(&e.image) {
                if image != "{}" {
                    s.push_str(&format!(", image {image}"));
                }
            }
            s
        });
    }
    if wanted("group_layers") {
        let graph = sample_graph();
        let n = graph.paths.len();
        let input = GroupInput { config: plugin.config().clone(), graph, budget: 4 };
        let result = plugin.group_layers_measured(input).await;
        report.line("group_layers", &format!("{n} paths, budget 4"), result, |l| {
            let sizes: Vec<String> = l.layers.iter().map(|l| l.len().to_string()).collect();
            format!("strategy `{}`, {} layers of [{}] paths", l.strategy, l.layers.len(), sizes.join(", "))
        });
    }
    if wanted("render_source") {
        for tag in ["latest", "0123456789abcdef0123456789abcdef01234567"] {
            let input = SourceInput { config: plugin.config().clone(), tag: tag.into() };
            let result = plugin
                .run("render_source", input, |_, out| validate::source(out))
                .await;
            report.line("render_source", &format!("tag {tag}"), result, |s| {
                format!(
                    "{}, identity `{}`{}",
                    serde_json::to_string(&s.source).unwrap_or_default(),
                    s.identity,
                    if s.immutable { ", immutable" } else { "" }
                )
            });
        }
    }
    report
}

impl CheckReport {
    /// A call's cost and its whole answer, for `--input`.
    fn output<T>(
        &mut self,
        hook: &str,
        what: &str,
        result: Result<(T, CallStats), PluginFailure>,
        show: impl FnOnce(&T) -> String,
    ) {
        let answer = result.as_ref().ok().map(|(value, _)| show(value));
        self.line(hook, what, result, |_| "output:".to_string());
        self.lines.extend(answer);
    }

    fn line<T>(
        &mut self,
        hook: &str,
        what: &str,
        result: Result<(T, CallStats), PluginFailure>,
        show: impl FnOnce(&T) -> String,
    ) {
        match result {
            Ok((value, stats)) => self.lines.push(format!(
                "{hook} ({what}): ok in {:.2} ms, {} fuel, {} KiB of memory: {}",
                stats.wasm_time.as_secs_f64() * 1e3,
                stats.fuel,
                stats.memory_bytes / 1024,
                show(&value)
            )),
            Err(e) => {
                self.failures += 1;
                match e.code {
                    Some(code) => self.lines.push(format!("{hook} ({what}): FAILED: refused with {code}: {}", e.reason)),
                    None => self.lines.push(format!("{hook} ({what}): FAILED: {}", e.reason)),
                }
            }
        }
    }
}

/// A small closure shaped like a real one: a libc everything depends on, a
/// shell, a few libraries shared by two programs, a self-reference, and
/// popularity counts for some names.
pub(crate) fn sample_graph() -> ClosureGraph {
    const PATHS: [(&str, u64, &[&str]); 10] = [
        ("0a-glibc-2.39", 30_000_000, &["0a-glibc-2.39"]),
        ("1b-bash-5.2", 9_000_000, &["0a-glibc-2.39"]),
        ("2c-zlib-1.3", 300_000, &["0a-glibc-2.39"]),
        ("3d-openssl-3.0", 7_000_000, &["0a-glibc-2.39"]),
        ("4e-curl-8.9", 2_000_000, &["0a-glibc-2.39", "2c-zlib-1.3", "3d-openssl-3.0"]),
        ("5f-perl-5.38", 60_000_000, &["0a-glibc-2.39"]),
        ("6g-ncurses-6.4", 3_000_000, &["0a-glibc-2.39"]),
        ("7h-git-2.46", 50_000_000, &["0a-glibc-2.39", "1b-bash-5.2", "2c-zlib-1.3", "4e-curl-8.9", "5f-perl-5.38"]),
        ("8i-htop-3.3", 400_000, &["0a-glibc-2.39", "6g-ncurses-6.4"]),
        ("9j-coreutils-9.5", 17_000_000, &["0a-glibc-2.39"]),
    ];
    let full = |p: &str| format!("/nix/store/{p}");
    let paths = PATHS
        .iter()
        .map(|(p, size, refs)| NamedPath { path: full(p), nar_size: *size, references: refs.iter().map(|r| full(r)).collect() })
        .collect();
    let roots = ["1b-bash-5.2", "9j-coreutils-9.5", "7h-git-2.46", "8i-htop-3.3"].map(full);
    let mut graph = ClosureGraph::from_named(&roots, paths).expect("the sample closure is complete");
    let popularity = [("glibc-2.39", 90_000), ("bash-5.2", 70_000), ("zlib-1.3", 60_000), ("openssl-3.0", 40_000)]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect();
    graph.set_popularity(&popularity);
    graph
}
