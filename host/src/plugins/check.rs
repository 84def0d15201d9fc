//! `strata plugin check FILE.wasm`: a plugin author's quick answer to "does
//! the host accept my module, and what does it make of a typical request?",
//! without Nix, a registry or a configuration.

use crate::plugins::plugin::{Plugin, PluginFailure};
use crate::plugins::runtime::CallStats;
use strata_plugin_sdk::validate;
use std::fmt;
use strata_plugin_sdk::{
    ClosureGraph, ExpandInput, Expansion, GroupInput, NamedPath, SourceInput,
};

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
    if plugin.implements("expand_names") {
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
    if plugin.implements("group_layers") {
        let graph = sample_graph();
        let n = graph.paths.len();
        let input = GroupInput { config: plugin.config().clone(), graph, budget: 4 };
        let result = plugin.group_layers_measured(input).await;
        report.line("group_layers", &format!("{n} paths, budget 4"), result, |l| {
            let sizes: Vec<String> = l.layers.iter().map(|l| l.len().to_string()).collect();
            format!("strategy `{}`, {} layers of [{}] paths", l.strategy, l.layers.len(), sizes.join(", "))
        });
    }
    if plugin.implements("render_source") {
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
                self.lines.push(format!("{hook} ({what}): FAILED: {}", e.reason));
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
