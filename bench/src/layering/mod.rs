//! `strata-bench layering`: how many bytes a client downloads, pull after
//! pull, under each layering strategy (issue 5's "layer-reuse" benchmark).
//!
//! A team pulls a series of images in order (see [`series`]); a client
//! keeps every blob it pulled, so a pull costs the bytes of the blobs it
//! has not seen ([`pulls`]). Each strategy gets a blob store of its own and
//! builds the series with the real pull path ([`Builder::image`]: Nix,
//! grouping plugin, packing), so the numbers are those of real gzip
//! layers. Unless told not to, every image is then pulled with skopeo
//! through the registry API into one OCI layout per strategy, and the blobs
//! each pull adds must be exactly the ones counted ([`skopeo`]).
//!
//! The strategies are real groupings, not models: "single layer" is any
//! grouping plugin given one layer (a host budget of 2: the closure, then
//! the symlink layer), "one path per layer" is `size` with every path
//! large, and the budget lifted past Docker's limit (a reference point, not
//! a servable image).

pub mod popcount;
pub mod pulls;
pub mod series;
pub mod skopeo;
mod table;

use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::build::Builder;
use strata::config::Config;
use pulls::{manifest_blobs, Blob, ClientCache, Pulled};
use series::{PackageSets, Release, Step};

/// Docker refuses images of more layers (the reference row ignores it).
const DOCKER_LAYER_LIMIT: u32 = 125;

/// A row of the table: which grouping plugin, with which budget and table.
#[derive(Debug, Clone)]
pub struct Strategy {
    pub label: String,
    /// A plugin reference, as `[plugins] group` takes it.
    pub group: String,
    /// The host's layer budget, the symlink layer included.
    pub budget: u32,
    /// The plugin's `[plugins.config.<name>]` table, if any.
    pub config: Option<toml::Table>,
    /// Whether the popularity counts of the set are passed on.
    pub popularity_data: bool,
}

impl Strategy {
    fn new(label: &str, group: &str, budget: u32, config: Option<toml::Table>) -> Strategy {
        Strategy { label: label.into(), group: group.into(), budget, config, popularity_data: true }
    }
}

/// The plugins' size thresholds scaled with the package set, so that a
/// scaled-down set is cut as the full one would be (at scale 1 the plugins'
/// own defaults apply: 5 MB for `size`, 100 MB for `popularity`).
fn scaled(key: &str, full: f64, scale: f64) -> Option<toml::Table> {
    if scale == 1.0 {
        return None;
    }
    let mut t = toml::Table::new();
    t.insert(key.into(), toml::Value::Integer((full * scale).round() as i64));
    Some(t)
}

/// The rows of the benchmark: two references (one layer, one path per
/// layer), Nixery's `popularity` with and without popularity data, `size`,
/// and optionally a plugin from a file (the custom example).
pub fn default_strategies(scale: f64, custom: Option<&Path>) -> Vec<Strategy> {
    let mut every_path = toml::Table::new();
    every_path.insert("large_threshold".into(), toml::Value::Integer(0));
    let mut no_data = Strategy::new("popularity, no data", "popularity", 94, scaled("size_threshold", 1e8, scale));
    no_data.popularity_data = false;
    let mut all = vec![
        Strategy::new("single layer", "size", 2, None),
        Strategy::new("one path per layer", "size", 100_000, Some(every_path)),
        Strategy::new("popularity", "popularity", 94, scaled("size_threshold", 1e8, scale)),
        no_data,
        Strategy::new("size", "size", 94, scaled("large_threshold", 5e6, scale)),
    ];
    if let Some(path) = custom {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        all.push(Strategy::new(&name, &path.to_string_lossy(), 94, None));
    }
    all
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch space: package-set files, blob stores, OCI layouts, Nix roots.
    pub work_dir: PathBuf,
    /// `generated.nix`'s size multiplier.
    pub scale: f64,
    pub series: Vec<Step>,
    /// The library the bumped release bumps (`generated.nix`'s `bumpLib`).
    pub bump_lib: String,
    pub strategies: Vec<Strategy>,
    /// Compute popularity counts of the set (builds all of it once).
    pub popularity_data: bool,
    /// Pull every image with skopeo and check the counts against it.
    pub skopeo: bool,
}

/// One pull under one strategy.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Blobs (manifest, config and layers) the client did not have, and
    /// their bytes.
    pub new_blobs: usize,
    pub new_bytes: u64,
    /// The part of `new_bytes` that carried store paths the client already
    /// had (see [`pulls`]): what the layering made it download again.
    pub redownloaded: u64,
    /// Layers of the image, the symlink layer included.
    pub layers: usize,
    pub build_secs: f64,
    /// Blobs skopeo added to the layout (the manifest included).
    pub skopeo_blobs: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub label: String,
    pub group: String,
    pub budget: u32,
    pub steps: Vec<StepResult>,
    /// Bytes of the blobs in the strategy's blob store after the series:
    /// what the registry keeps (every encoding it serves).
    pub stored_bytes: u64,
}

impl Row {
    pub fn pulled(&self) -> Vec<u64> {
        self.steps.iter().map(|s| s.new_bytes).collect()
    }

    pub fn total_pulled(&self) -> u64 {
        self.steps.iter().map(|s| s.new_bytes).sum()
    }

    pub fn total_redownloaded(&self) -> u64 {
        self.steps.iter().map(|s| s.redownloaded).sum()
    }
}

/// What each image holds, strategy aside: the reference the rows are read
/// against.
#[derive(Debug, Clone, Serialize)]
pub struct StepInfo {
    pub label: String,
    pub image: String,
    pub bumped: bool,
    pub closure_paths: usize,
    /// NAR bytes of the closure (uncompressed).
    pub closure_bytes: u64,
    /// NAR bytes of store paths in no earlier image of the series: what any
    /// layering must transfer at least (before compression).
    pub new_path_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scale: f64,
    pub steps: Vec<StepInfo>,
    pub rows: Vec<Row>,
    pub skopeo_checked: bool,
    /// The grouping plugin `strata serve` uses with no configuration.
    pub default_group: String,
}

impl Report {
    pub fn row(&self, label: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.label == label)
    }

    /// The table, in Markdown.
    pub fn markdown(&self) -> String {
        table::markdown(self)
    }

    /// The ratios issue 5 asks for, one per line.
    pub fn ratios(&self) -> String {
        table::ratios(self)
    }

    /// The servable strategy (within Docker's layer limit: the reference
    /// rows are not) with the fewest bytes pulled over the series; ties go
    /// to the earlier row.
    pub fn winner(&self) -> Option<&Row> {
        self.rows.iter().filter(|r| r.budget <= DOCKER_LAYER_LIMIT).min_by_key(|r| r.total_pulled())
    }
}

fn slug(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

fn system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// The configuration of one builder: the caller's, with this strategy, this
/// release as the package source, and a blob store of the strategy's own.
fn builder_config(
    base: &Config,
    s: &Strategy,
    source: &Path,
    storage: &Path,
    nix_work: &Path,
    popularity: Option<&Path>,
) -> Config {
    let mut cfg = base.clone();
    cfg.storage.url = Some(format!("file://{}", storage.display()));
    cfg.nix.work_dir = Some(nix_work.to_path_buf());
    // A cold build of the whole set at scale 1 is minutes of Nix.
    cfg.nix.timeout_secs = cfg.nix.timeout_secs.max(3600);
    cfg.nix.popularity_url = popularity.filter(|_| s.popularity_data).map(|p| p.display().to_string());
    cfg.layers.budget = s.budget;
    cfg.plugins.group = s.group.clone();
    cfg.plugins.group_rules.clear();
    let plugin_name = Path::new(&s.group).file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match &s.config {
        Some(t) => cfg.plugins.config.insert(plugin_name, toml::Value::Table(t.clone())),
        None => cfg.plugins.config.remove(&plugin_name),
    };
    cfg.plugins.source = "nixpkgs-source".into();
    let mut src = toml::Table::new();
    src.insert("path".into(), toml::Value::String(source.display().to_string()));
    cfg.plugins.config.insert("nixpkgs-source".into(), toml::Value::Table(src));
    cfg
}

/// Builders for both releases of the set, sharing one blob store.
async fn builders(
    base: &Config,
    s: &Strategy,
    sets: &PackageSets,
    storage: &Path,
    nix_work: &Path,
    popularity: Option<&Path>,
) -> anyhow::Result<[Arc<Builder>; 2]> {
    let make = |release| builder_config(base, s, sets.path(release), storage, nix_work, popularity);
    Ok([Builder::new(Arc::new(make(Release::Current))).await?, Builder::new(Arc::new(make(Release::Bumped))).await?])
}

fn pick(builders: &[Arc<Builder>; 2], release: Release) -> &Arc<Builder> {
    match release {
        Release::Current => &builders[0],
        Release::Bumped => &builders[1],
    }
}

/// Runs the benchmark; `base` is the caller's configuration (compression
/// level, plugin limits), of which storage, source and grouping are
/// replaced.
pub async fn run(base: &Config, opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let work = std::path::absolute(&opts.work_dir)?;
    let sets = series::write_package_sets(&work.join("pkgs"), opts.scale, &opts.bump_lib)?;
    let nix_work = work.join("nix");

    // Popularity counts of the current release (builds every package once).
    let popularity = if opts.popularity_data {
        eprintln!("bench: counting popularity over the whole set (builds it with Nix)");
        let nix = strata::nix::NixRunner::new(strata::nix::NixOptions {
            timeout: Duration::from_secs(base.nix.timeout_secs.max(3600)),
            work_dir: nix_work.clone(),
            negative_ttl: Duration::ZERO,
        })?;
        let counts = popcount::popularity_of_set(&nix, &sets.current, &system()).await?;
        let file = work.join("popularity.json");
        std::fs::write(&file, serde_json::to_vec(&counts)?)?;
        Some(file)
    } else {
        None
    };

    // Warm Nix up with every image, so that build times are Strata's work
    // (evaluation, closure, grouping, packing), not the first compile.
    let (steps, nar) = {
        let probe = Strategy::new("size", "size", 94, None);
        let b = builders(base, &probe, &sets, &work.join("storage-probe"), &nix_work, None).await?;
        let mut infos = Vec::new();
        // NAR size of every store path of the series so far.
        let mut nar: HashMap<String, u64> = HashMap::new();
        for step in &opts.series {
            eprintln!("bench: Nix builds {} ({:?} release)", step.image, step.release);
            let i = pick(&b, step.release).inspect(&step.image, "latest").await?;
            let new_path_bytes = i.closure.iter().filter(|p| !nar.contains_key(&p.path)).map(|p| p.nar_size).sum();
            nar.extend(i.closure.iter().map(|p| (p.path.clone(), p.nar_size)));
            if step.release == Release::Bumped && new_path_bytes == 0 {
                anyhow::bail!(
                    "bumping {} renames nothing in {}: name a core library of generated.nix that it depends on",
                    opts.bump_lib,
                    step.image
                );
            }
            infos.push(StepInfo {
                label: step.label.clone(),
                image: step.image.clone(),
                bumped: step.release == Release::Bumped,
                closure_paths: i.closure.len(),
                closure_bytes: i.closure.iter().map(|p| p.nar_size).sum(),
                new_path_bytes,
            });
        }
        (infos, nar)
    };

    let mut rows = Vec::new();
    for s in &opts.strategies {
        rows.push(run_strategy(base, opts, s, &sets, &work, &nix_work, popularity.as_deref(), &nar).await?);
    }
    let default_group = Config::default().plugins.group;
    Ok(Report { scale: opts.scale, steps, rows, skopeo_checked: opts.skopeo, default_group })
}

async fn run_strategy(
    base: &Config,
    opts: &Options,
    s: &Strategy,
    sets: &PackageSets,
    work: &Path,
    nix_work: &Path,
    popularity: Option<&Path>,
    nar: &HashMap<String, u64>,
) -> anyhow::Result<Row> {
    let dir = work.join("strategies").join(slug(&s.label));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let b = builders(base, s, sets, &dir.join("storage"), nix_work, popularity).await?;
    let served =
        if opts.skopeo { Some([skopeo::serve(b[0].clone()).await?, skopeo::serve(b[1].clone()).await?]) } else { None };
    let layout = skopeo::Layout::new(&dir.join("client-oci"));
    let mut cache = ClientCache::default();
    let mut steps = Vec::new();
    for (n, step) in opts.series.iter().enumerate() {
        let builder = pick(&b, step.release);
        let started = Instant::now();
        let image = builder.image(&step.image, "latest").await?;
        let build_secs = started.elapsed().as_secs_f64();
        let mut blobs = manifest_blobs(&image.oci.bytes).map_err(|e| anyhow::anyhow!("{}: {e}", step.image))?;
        // The summary lists the manifest's layers in the same order.
        for (blob, layer) in blobs[1..].iter_mut().zip(&image.summary.layers) {
            blob.paths = layer.paths.iter().map(|p| (p.clone(), nar.get(p).copied().unwrap_or(0))).collect();
        }
        let manifest = Blob { digest: image.oci.digest.clone(), size: image.oci.bytes.len() as u64, paths: Vec::new() };
        let before = cache.clone();
        let Pulled { blobs: new_blobs, bytes: new_bytes, redownloaded } =
            cache.pull(&[std::slice::from_ref(&manifest), &blobs].concat());
        let skopeo_blobs = match &served {
            Some(servers) => {
                let addr = servers[if step.release == Release::Current { 0 } else { 1 }].addr;
                let added = layout.pull(addr, &step.image, "latest", &format!("step{}", n + 1)).await?;
                check_skopeo(&blobs, &before, &added, &image)
                    .map_err(|e| anyhow::anyhow!("{} ({}): {e}", step.image, s.label))?;
                Some(added.len())
            }
            None => None,
        };
        eprintln!(
            "bench: {:<22} {:<14} {:>3} layers, built in {:>6.1} s, pulled {} in {new_blobs} blobs",
            s.label,
            step.label,
            blobs.len() - 1,
            build_secs,
            indicatif::HumanBytes(new_bytes)
        );
        steps.push(StepResult { new_blobs, new_bytes, redownloaded, layers: blobs.len() - 1, build_secs, skopeo_blobs });
    }
    drop(served);
    let stored_bytes = b[0].storage.list(strata::storage::BLOB_PREFIX).await?.iter().map(|o| o.size).sum();
    // Blob stores of large scales are gigabytes: only the numbers stay.
    std::fs::remove_dir_all(&dir)?;
    Ok(Row { label: s.label.clone(), group: s.group.clone(), budget: s.budget, steps, stored_bytes })
}

/// skopeo must have added exactly the blobs the client model says are new,
/// plus the manifest.
fn check_skopeo(
    blobs: &[pulls::Blob],
    before: &ClientCache,
    added: &std::collections::BTreeMap<String, u64>,
    image: &strata::build::Image,
) -> Result<(), String> {
    let expected: BTreeSet<&str> = blobs.iter().map(|b| b.digest.as_str()).filter(|d| !before.has(d)).collect();
    let manifests: Vec<&str> = image.manifests().map(|m| m.digest.as_str()).collect();
    let got: BTreeSet<&str> = added.keys().map(String::as_str).filter(|d| !manifests.contains(d)).collect();
    if got != expected {
        return Err(format!("skopeo added blobs {got:?} besides the manifest; the client model expected {expected:?}"));
    }
    if added.len() != got.len() + 1 {
        return Err(format!(
            "skopeo added {} blobs, expected the {} new ones and the manifest",
            added.len(),
            got.len()
        ));
    }
    for b in blobs {
        if let Some(size) = added.get(&b.digest) {
            if *size != b.size {
                return Err(format!("{} is {size} bytes in the layout, {} in the manifest", b.digest, b.size));
            }
        }
    }
    Ok(())
}

/// `strata-bench layering`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Size multiplier of the generated package set (1: the whole set is
    /// about 610 MiB, the images of the series up to ~280 MiB).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Scratch directory; by default a new one under the system's temporary
    /// directory, removed afterwards.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// A grouping plugin file to add as a row (default: the custom example,
    /// examples/custom-plugin/one_layer_per_package.wasm, when built).
    #[arg(long)]
    pub custom_plugin: Option<PathBuf>,
    /// The base tool set, packages separated by `/`.
    #[arg(long, default_value = series::BASE)]
    pub base: String,
    /// What the second image adds to the base.
    #[arg(long, default_value = series::ADDED)]
    pub added: String,
    /// What the third image adds to the base instead.
    #[arg(long, default_value = series::OTHER)]
    pub other: String,
    /// The low-level library bumped for the last image (a core library of
    /// generated.nix: zlib, openssl, ncurses, xz, libpng, ...).
    #[arg(long, default_value = series::BUMP_LIB)]
    pub bump_lib: String,
    /// A series of your own instead of base/added/other/bump: the images in
    /// the order pulled, one `--image` each; `bumped:NAME` builds NAME from
    /// the release with `--bump-lib` bumped.
    #[arg(long = "image", value_name = "[bumped:]NAME")]
    pub images: Vec<String>,
    /// Do not pull the images with skopeo (the counts then come from the
    /// manifests alone).
    #[arg(long)]
    pub no_skopeo: bool,
    /// Do not compute popularity counts (skips building the whole set).
    #[arg(long)]
    pub no_popularity_data: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs the benchmark as the CLI does and prints the table. The base
/// configuration is the default one with the environment applied
/// (`STRATA_CONFIG` names a file to start from instead): storage, package
/// source and grouping are the benchmark's own anyway.
pub async fn cli(args: Args) -> anyhow::Result<()> {
    let env = strata::config::process_env();
    let file = env.get("STRATA_CONFIG").map(PathBuf::from);
    let cfg = Config::load(file.as_deref(), &env)?;
    let (work_dir, remove) = match &args.work_dir {
        Some(d) => (d.clone(), false),
        None => (std::env::temp_dir().join(format!("strata-bench-layering-{}", std::process::id())), true),
    };
    let example = Path::new("examples/custom-plugin/one_layer_per_package.wasm");
    let custom = args.custom_plugin.clone().or_else(|| example.is_file().then(|| example.to_path_buf()));
    let custom = custom.map(std::path::absolute).transpose()?;
    let opts = Options {
        work_dir: work_dir.clone(),
        scale: args.scale,
        series: if args.images.is_empty() {
            series::series(&args.base, &args.added, &args.other, &args.bump_lib)
        } else {
            series::custom_series(&args.images).map_err(anyhow::Error::msg)?
        },
        bump_lib: args.bump_lib.clone(),
        strategies: default_strategies(args.scale, custom.as_deref()),
        popularity_data: !args.no_popularity_data,
        skopeo: !args.no_skopeo,
    };
    let result = run(&cfg, &opts).await;
    if remove {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    let report = result?;
    println!("{}", report.markdown());
    println!("{}", report.ratios());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
