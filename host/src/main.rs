//! `strata`: the server and its command-line tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

use strata::build::Builder;
use strata::config::{self, Config};

#[derive(Parser)]
#[command(name = "strata", version, about = "A container registry that builds images from Nix packages on demand")]
struct Cli {
    /// Configuration file (TOML). Nixery's environment variables apply on top.
    #[arg(long, short, global = true, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of human-readable text (as
    /// `log_format = "json"` in the config).
    #[arg(long, global = true, env = "STRATA_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry API: `docker pull HOST/shell/git` builds and serves
    /// an image with bash, coreutils and git.
    Serve,
    /// Build an image offline, with the server's plugins and config, and write
    /// it as an OCI layout or a `docker load` archive.
    ///
    /// Example: `strata build shell/git --output oci:./out:latest`
    Build {
        /// Image name: packages separated by `/` (`shell/git`).
        name: String,
        /// Tag, passed to the source plugin (selects a revision for git sources).
        #[arg(long, default_value = "latest")]
        tag: String,
        /// `oci:DIR[:tag]` or `docker-archive:FILE[:name:tag]`.
        #[arg(long, short)]
        output: strata::build::export::Output,
        /// Also write the image's SPDX document (the SBOM the registry
        /// serves as a referrer) to this file.
        #[arg(long, value_name = "FILE")]
        sbom: Option<PathBuf>,
        /// Build for this platform (`linux/amd64`, `linux/arm64`) instead of
        /// `[builds] platforms`; more than one: `oci:` gets an image index.
        #[arg(long, value_name = "OS/ARCH")]
        platform: Vec<strata::config::Platform>,
        /// No progress bars (they are off anyway when stderr is not a terminal).
        #[arg(long)]
        quiet: bool,
    },
    /// Show what an image would hold: the expanded packages, the runtime
    /// closure and the planned layers, without packing anything.
    Inspect {
        /// Image name: packages separated by `/`.
        name: String,
        #[arg(long, default_value = "latest")]
        tag: String,
        /// Print the inspection as JSON (as `/api/inspect` serves it).
        #[arg(long)]
        json: bool,
    },
    /// Remove images not requested within a window, the blobs no remaining
    /// image names, and (on this machine) their Nix GC roots and the store
    /// paths only those held. Dry run unless `--delete`.
    ///
    /// Example: `strata gc --older-than 30d --delete`
    Gc {
        /// Images not requested for this long go (`30d`, `12h`, `90m`).
        #[arg(long, value_parser = strata::config::parse_age)]
        older_than: std::time::Duration,
        /// Remove what is found; without it only report.
        #[arg(long)]
        delete: bool,
        /// Only the object store: leave this machine's Nix roots alone.
        #[arg(long, conflicts_with = "no_storage")]
        no_nix: bool,
        /// Only this machine's Nix roots and store paths: the object store is
        /// read (to know which images stay), not collected (another replica
        /// does that).
        #[arg(long)]
        no_storage: bool,
    },
    /// Benchmarks: a thin alias that runs `strata-bench` (built beside this
    /// binary, the `bench/` crate) with the same arguments.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a plugin, check its ABI version and exports, and run each hook it
    /// exports on a sample input, or one hook on your own input, exactly as
    /// the server runs it (limits and output checks included).
    Check {
        /// The plugin's `.wasm` file.
        file: PathBuf,
        /// Run only this hook: expand_names, group_layers or render_source.
        #[arg(long)]
        hook: Option<String>,
        /// The hook's input as JSON (as docs/plugins.md shows it); prints the
        /// whole answer. Its `config` is replaced by the plugin's configuration.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The plugin's configuration table: JSON, or TOML for a `.toml`
        /// file (default: [plugins.config.<file stem>] of --config's file).
        #[arg(long)]
        plugin_config: Option<PathBuf>,
    },
}

mod progress {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use strata::build::Progress;
    use strata::image::layers::LayerBlob;

    /// One bar per layer being packed, measured in store bytes read.
    pub struct Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<usize, ProgressBar>>,
        stage: ProgressBar,
    }

    impl Bars {
        pub fn new() -> Bars {
            let multi = MultiProgress::new();
            let stage = multi.add(ProgressBar::new_spinner());
            stage.enable_steady_tick(std::time::Duration::from_millis(120));
            Bars { multi, bars: Mutex::default(), stage }
        }
    }

    impl Progress for Bars {
        fn stage(&self, what: &str) {
            self.stage.set_message(what.to_string());
        }
        fn layer_start(&self, index: usize, nar_size: u64) {
            let bar = self.multi.add(ProgressBar::new(nar_size));
            bar.set_style(
                ProgressStyle::with_template("layer {prefix:>3} [{bar:30}] {bytes:>10}/{total_bytes:<10} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_prefix((index + 1).to_string());
            self.bars.lock().unwrap().insert(index, bar);
        }
        fn layer_advance(&self, index: usize, bytes: u64) {
            if let Some(b) = self.bars.lock().unwrap().get(&index) {
                b.inc(bytes);
            }
        }
        fn layer_done(&self, index: usize, blob: &LayerBlob, reused: bool) {
            let short = &blob.digest[..19.min(blob.digest.len())];
            match self.bars.lock().unwrap().remove(&index) {
                Some(b) => b.finish_with_message(format!("{short} {}", indicatif::HumanBytes(blob.size))),
                None if reused => {
                    self.multi.println(format!("layer {:>3} reused {short}", index + 1)).ok();
                }
                None => {}
            }
        }
    }

    impl Drop for Bars {
        fn drop(&mut self) {
            self.stage.finish_and_clear();
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a journal or a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

fn main() {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("strata: {e:#}");
        std::process::exit(1);
    }
}

/// glibc gives a thread that allocates its own arena, up to eight per
/// core, and each arena keeps what was freed in it. Packing runs on
/// short-lived blocking threads beside zstd's workers, so with the default
/// a zstd cold build's peak RSS swung between 140 and 190 MiB, and with two
/// arenas it stays near 100 MiB, warm GETs no slower (docs/performance.md).
/// An operator's own `MALLOC_ARENA_MAX` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first in main, before any other thread exists;
        // mallopt only sets one of the allocator's parameters.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref(), &config::process_env())?;
    init_logging(cli.log_json || cfg.log_format == config::LogFormat::Json);
    match cli.command {
        Command::Serve => serve(cfg).await,
        Command::Build { name, tag, output, sbom, platform, quiet } => {
            let mut cfg = cfg;
            if !platform.is_empty() {
                cfg.builds.platforms = platform;
                cfg.validate()?;
            }
            build(cfg, &name, &tag, &output, sbom.as_deref(), quiet).await
        }
        Command::Inspect { name, tag, json } => inspect(cfg, &name, &tag, json).await,
        Command::Gc { older_than, delete, no_nix, no_storage } => {
            let storage = strata::storage::Storage::from_config(&cfg)?;
            println!("gc: {}", storage.description());
            let parts = strata::ops::gc::Parts { storage: !no_storage, nix: !no_nix };
            println!("{}", strata::ops::gc::run(&cfg, &storage, older_than, delete, parts).await?);
            Ok(())
        }
        Command::Bench { args } => bench_alias(&args),
        Command::Plugin { command: PluginCommand::Check { file, hook, input, plugin_config } } => {
            let args = strata::plugins::CheckArgs { hook: hook.as_deref(), input: input.as_deref(), config: plugin_config.as_deref() };
            strata::plugins::check_command(&cfg.plugins, &file, args).await
        }
    }
}

fn check_name(cfg: &Config, name: &str, tag: &str) -> anyhow::Result<()> {
    strata::registry::reference::parse_name(name, cfg.max_packages).map_err(strata::error::Error::from)?;
    strata::registry::reference::parse_tag(tag).map_err(strata::error::Error::from)?;
    Ok(())
}

/// `strata bench …` → `strata-bench …`: the benchmarks are a crate of
/// their own, so the product carries no benchmark code.
fn bench_alias(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let bench = me.with_file_name("strata-bench");
    let status = std::process::Command::new(&bench)
        .args(args)
        .status()
        .with_context(|| format!("running {} (build it with `cargo build --release -p strata-bench`)", bench.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

async fn build(
    cfg: Config,
    name: &str,
    tag: &str,
    output: &strata::build::export::Output,
    sbom: Option<&std::path::Path>,
    quiet: bool,
) -> anyhow::Result<()> {
    check_name(&cfg, name, tag)?;
    if sbom.is_some() && !cfg.sbom.enabled {
        anyhow::bail!("--sbom: SBOMs are off in this configuration ([sbom] enabled = false)");
    }
    let builder = Builder::new(Arc::new(cfg)).await?;
    if !quiet {
        builder.set_progress(Arc::new(progress::Bars::new()));
    }
    let tagged = builder.tagged(name, tag).await?;
    if matches!(output, strata::build::export::Output::DockerArchive { .. }) && tagged.index.is_none() {
        // `docker load` of Docker 20.10 reads gzip layers only: the schema 2
        // manifest's, made now if the image's layers are zstd.
        let docker = strata::image::manifest::Accepted::read(std::iter::once(strata::image::manifest::DOCKER_MANIFEST));
        builder.manifest(name, tag, docker).await?;
    }
    strata::build::export::write(&builder.storage, &tagged, output, name).await?;
    if let Some(index) = &tagged.index {
        let platforms: Vec<String> = tagged.images.iter().map(|(p, _)| p.to_string()).collect();
        println!("{name}:{tag}  index {} over {}", index.oci.digest, platforms.join(", "));
    }
    for (platform, image) in &tagged.images {
        summarise(name, tag, platform, image, sbom.filter(|_| tagged.images.len() == 1), &builder).await?;
    }
    if sbom.is_some() && tagged.images.len() > 1 {
        eprintln!("strata: --sbom writes one platform's SBOM: name it with --platform");
    }
    println!("written to {output:?}");
    Ok(())
}

/// One built image, as `strata build` prints it (and its SBOM, if asked).
async fn summarise(
    name: &str,
    tag: &str,
    platform: &strata::config::Platform,
    image: &strata::build::Image,
    sbom: Option<&std::path::Path>,
    builder: &Builder,
) -> anyhow::Result<()> {
    if let Some(file) = sbom {
        let doc = image.sbom.as_ref().context("the image was recorded without an SBOM")?;
        let bytes = builder.storage.get_blob_bytes(&doc.digest).await?.context("the SBOM blob is missing from the store")?;
        std::fs::write(file, &bytes).with_context(|| format!("writing {}", file.display()))?;
        println!("SBOM {} ({}) written to {}", doc.digest, human(doc.size), file.display());
    }
    let s = &image.summary;
    println!("{name}:{tag} ({platform})  {} packages, {} layers, strategy {} (plugin {})", s.packages.len(), s.layers.len(), s.strategy, s.grouping_plugin);
    println!("{:>3}  {:>10}  {:>10}  {:<71}  first path", "#", "size", "nar size", "digest");
    for (i, l) in s.layers.iter().enumerate() {
        let first = l.paths.first().map(String::as_str).unwrap_or("(symlink forest, /etc, /tmp)");
        let more = if l.paths.len() > 1 { format!(" +{}", l.paths.len() - 1) } else { String::new() };
        println!("{:>3}  {:>10}  {:>10}  {:<71}  {first}{more}", i + 1, human(l.size), human(l.nar_size), l.digest);
    }
    println!("total {} compressed", human(s.layers.iter().map(|l| l.size).sum()));
    Ok(())
}

async fn inspect(cfg: Config, name: &str, tag: &str, json: bool) -> anyhow::Result<()> {
    check_name(&cfg, name, tag)?;
    let builder = Builder::new(Arc::new(cfg)).await?;
    let i = match builder.inspect(name, tag).await {
        Ok(i) => i,
        Err(strata::error::Error::PackagesUnavailable(u)) => {
            // One line a name, as the web inspector lists them.
            eprintln!("strata: {name}:{tag} cannot be built; these packages are not available:");
            for r in &u.refused {
                eprintln!("  {}: {}", r.name, r.reason);
            }
            for m in &u.missing {
                eprintln!("  {m}: not in the package set");
            }
            std::process::exit(1);
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    println!("image     {}:{}", i.name, i.tag);
    println!("packages  {}", i.packages.join(" "));
    println!("arch      {}", i.arch);
    if i.platforms.len() > 1 {
        // An index: the lines below are the host platform's.
        for p in &i.platforms {
            println!("platform  {}: {} paths, {}, {} layers", p.platform, p.closure_paths, human(p.closure_nar_size), p.layers);
        }
    }
    println!("source    {}{}", i.source, if i.immutable { " (immutable)" } else { "" });
    let total: u64 = i.closure.iter().map(|p| p.nar_size).sum();
    println!("closure   {} paths, {}", i.closure.len(), human(total));
    println!("layers    {} + 1 symlink layer, strategy {} (plugin {})", i.layers.len(), i.strategy, i.grouping_plugin);
    for (n, l) in i.layers.iter().enumerate() {
        println!("  {:>3}  {:>10}  {}", n + 1, human(l.nar_size), l.paths.join(" "));
    }
    Ok(())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let listen = cfg.listen;
    strata::preflight::check(&cfg).await?;
    let auth = strata::registry::auth::Auth::from_config(&cfg.auth)?;
    let builder = Builder::new(Arc::new(cfg)).await?;
    let app = strata::registry::router(builder.clone())
        .merge(strata::web::router(builder.clone()))
        .merge(strata::ops::metrics::router());
    // Inside the request log, so that refusals are logged and counted.
    let app = match auth {
        Some(auth) => {
            tracing::info!("access control on");
            app.layer(axum::middleware::from_fn_with_state(auth, strata::registry::auth::guard))
        }
        None => app,
    };
    let app = app.layer(axum::middleware::from_fn(strata::ops::metrics::observe));
    let _gc = {
        let b = builder.clone();
        strata::ops::gc::spawn_schedule(builder.config_arc(), builder.storage.clone(), move |removed| b.forget_removed(removed))
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
    let plugins: Vec<String> = builder.plugins.all().iter().map(|p| p.name().to_string()).collect();
    tracing::info!(
        address = %listener.local_addr()?,
        storage = builder.storage.description(),
        plugins = plugins.join(", "),
        "strata serving"
    );
    strata::registry::limits::serve(listener, app, &builder.config().limits, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or Ctrl-C: stop accepting, finish the responses under way.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
