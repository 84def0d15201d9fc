//! `strata-bench perf`: Strata next to the CNCF registry and `tar | gzip`,
//! in one run, on this machine, printed as ratios (issue 6).
//!
//! Everything runs as a user would run it: `strata serve` (this binary) and
//! `docker-registry serve` as separate processes on 127.0.0.1, images pushed
//! from Strata to the registry with skopeo, load from `wrk` and `curl`. The
//! packages are `examples/demo-pkgs/generated.nix` (embedded), realised with
//! nix-build before any clock starts, so the cold build measures what Strata
//! does (plugins, closure, packing, storing) and not the fixture's builders.
//!
//! - P1 warm manifest GETs/s (wrk) of the same image, Strata vs registry,
//!   and vs nginx serving the same bytes from Strata's store with sendfile.
//! - P2 download throughput of the largest layer of the big image (curl),
//!   against the same two peers.
//! - P3 the cold build of the big image vs `tar -c <closure> | gzip -6`.
//! - P3r, P3z the cold build of a realistic corpus (`corpus.nix`: real
//!   binaries, libraries, JavaScript, catalogs and docs of this machine),
//!   gzip against `tar | pigz -6`, `compression = "zstd"` against
//!   `tar | zstd -3 -T0`, with peak RSS over each.
//! - P5 the plugin overhead benchmark (`cargo bench --bench
//!   plugin_overhead`), when run from a checkout with cargo.
//! - P6 Strata's peak RSS (VmHWM) over its start and that cold build.
//! - P7 50 concurrent first pulls of one new image on a fresh store vs one
//!   first pull of the same image on another fresh store.
//! - P8 the SBOM's cost: the big image's cold build on fresh stores with
//!   `[sbom] enabled` on and off, alternating, best of two each.
//! - P9 a second platform's cost: the big image's cold build as a
//!   two-platform index (`[builds] platforms`, amd64 and arm64) against
//!   the same image for one platform, fresh stores, alternating, best of
//!   two each. The arm64 closure is realised first, through Nix's
//!   `extra-platforms` (the set's busybox builders run as is).

use crate::layering::pulls::{manifest_blobs, Blob};
use anyhow::{bail, Context, Result};
use sha2::Digest as _;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Every Nix call of the run: no binary cache (offline), and this x86_64
/// machine may build the set for aarch64-linux (P9).
const ARM64_NIX_CONFIG: &str = "substituters =\nextra-platforms = aarch64-linux";
const GENERATED_NIX: &str = include_str!("../../examples/demo-pkgs/generated.nix");
const CORPUS_NIX: &str = include_str!("../../examples/demo-pkgs/corpus.nix");
/// Where `--write` puts the results, between these markers.
const BEGIN: &str = "<!-- bench perf: begin -->";
const END: &str = "<!-- bench perf: end -->";

#[derive(clap::Args)]
pub struct Args {
    /// `generated.nix`'s size multiplier; the big image (llvm, ghc,
    /// texlive) is about 340 MiB × scale.
    #[arg(long, default_value_t = 3.0)]
    pub scale: f64,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// A short run: scale 0.5, 3 s of wrk, no corpus, no plugin benchmark.
    #[arg(long)]
    pub quick: bool,
    /// Scratch directory (stores, logs, the registry); default: a new
    /// temporary one, removed afterwards.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Skip P5 (it compiles and runs `cargo bench`); said so in the report.
    #[arg(long)]
    pub no_plugin_bench: bool,
    /// Replace the results section of this Markdown file (between
    /// `<!-- bench perf: begin -->` and `<!-- bench perf: end -->`).
    #[arg(long)]
    pub write: Option<PathBuf>,
}

pub async fn run(mut args: Args) -> Result<()> {
    if args.quick {
        args.scale = 0.5;
        args.seconds = 3;
        args.no_plugin_bench = true;
    }
    if !(args.scale.is_finite() && args.scale > 0.0) {
        bail!("--scale {} is not a positive number", args.scale);
    }
    for tool in ["docker-registry", "nginx", "wrk", "skopeo", "curl", "nix-build", "nix-store", "nix-instantiate", "tar", "gzip", "pigz", "zstd"] {
        which(tool).with_context(|| format!("{tool} is needed (scripts/install-deps.sh installs it)"))?;
    }
    let (work, scratch) = match &args.work_dir {
        Some(d) => (std::path::absolute(d)?, false),
        None => (std::env::temp_dir().join(format!("strata-bench-perf-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&work)?;
    let report = measure(&args, &work).await;
    if scratch {
        let _ = std::fs::remove_dir_all(&work);
    }
    let report = report?;
    let text = report.markdown(&args);
    println!("\n{text}");
    if let Some(path) = &args.write {
        write_section(path, &text)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// The images of the run, from the generated set.
const BIG: &str = "llvm/ghc/texlive";
const SMALL: &str = "zlib";
const FRESH: &str = "curl/sqlite/libxml2";
const BIG_PKGS: [&str; 3] = ["llvm", "ghc", "texlive"];
const FRESH_PKGS: [&str; 3] = ["curl", "sqlite", "libxml2"];

#[derive(Default)]
struct Report {
    closure_bytes: u64,
    closure_paths: usize,
    fixture_secs: f64,
    p1_strata: f64,
    p1_registry: f64,
    p1_nginx: f64,
    p2_blob_bytes: u64,
    p2_strata: f64,
    p2_registry: f64,
    p2_nginx: f64,
    /// None with `--quick`.
    corpus: Option<Corpus>,
    p3_strata_secs: f64,
    p3_strata_bytes: u64,
    p3_layers: usize,
    /// `tar | gzip -6` of the big image's closure.
    p3_tar: Peer,
    p5: Option<String>,
    p6_idle_kib: u64,
    p6_peak_kib: u64,
    p7_builds: u64,
    p7_single_secs: f64,
    p7_last_secs: f64,
    p7_first_secs: f64,
    p8_on_secs: f64,
    p8_off_secs: f64,
    p9_two_secs: f64,
    p9_one_secs: f64,
    /// Layer bytes of the index's two images, and of the blobs both share.
    p9_two_bytes: u64,
    p9_shared_bytes: u64,
    /// /proc/loadavg at the start and the end: other work on the machine
    /// takes cores from the parallel packer first.
    load: (String, String),
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

async fn measure(args: &Args, work: &Path) -> Result<Report> {
    let mut r = Report { load: (loadavg(), String::new()), ..Default::default() };
    let pkgs = write_package_set(&work.join("pkgs"), args.scale)?;

    // The fixture: realise the packages now, so no clock below counts it.
    eprintln!("building the generated set's packages at scale {} with Nix (once; later runs reuse them)…", args.scale);
    let t = Instant::now();
    let mut roots = Vec::new();
    for attr in BIG_PKGS.iter().chain(&FRESH_PKGS).chain(&[SMALL]) {
        roots.push(output(Command::new("nix-build").arg(&pkgs).args(["--no-out-link", "-A", attr]))?.trim().to_string());
    }
    for attr in BIG_PKGS {
        let mut cmd = Command::new("nix-build");
        cmd.arg(&pkgs).args(["--no-out-link", "--argstr", "system", "aarch64-linux", "-A", attr]);
        output(&mut cmd)?;
    }
    r.fixture_secs = t.elapsed().as_secs_f64();
    let closure = output(Command::new("nix-store").arg("-qR").args(&roots[..BIG_PKGS.len()]))?;
    let closure: Vec<&str> = closure.lines().collect();
    r.closure_paths = closure.len();
    r.closure_bytes = output(Command::new("nix-store").args(["-q", "--size"]).args(&closure))?
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();

    // P3 peer: tar | gzip -6 of the same store paths.
    eprintln!("P3: tar -c | gzip -6 of the big image's closure ({} paths, {})…", closure.len(), mib(r.closure_bytes));
    r.p3_tar = tar_into(work, &closure, "gzip -6")?;

    // P3, P6: a fresh server, the big image cold.
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1800)).build()?;
    let one = Server::strata(work, "one", &pkgs, &http, "").await?;
    r.p6_idle_kib = one.peak_rss_kib()?;
    eprintln!("P3/P6: cold build of {BIG}…");
    let t = Instant::now();
    let big_manifest = get_manifest(&http, &one.base, BIG).await?;
    r.p3_strata_secs = t.elapsed().as_secs_f64();
    r.p6_peak_kib = one.peak_rss_kib()?;
    let big_layers = blobs_of(&big_manifest)?.split_off(1);
    r.p3_layers = big_layers.len();
    r.p3_strata_bytes = big_layers.iter().map(|l| l.size).sum();

    // P7 baseline: one first pull of FRESH on this server.
    eprintln!("P7: one first pull of {FRESH}…");
    let t = Instant::now();
    pull(&http, &one.base, FRESH).await?;
    r.p7_single_secs = t.elapsed().as_secs_f64();

    // The registry, fed by skopeo from Strata.
    let registry = Server::registry(work, &http).await?;
    eprintln!("copying {SMALL} and {BIG} into the CNCF registry with skopeo…");
    for image in [SMALL, BIG] {
        output(Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{image}:latest", one.host),
            &format!("docker://{}/{image}:latest", registry.host),
        ]))?;
    }
    let small = get_manifest(&http, &one.base, SMALL).await?;
    let mirrored = get_manifest(&http, &registry.base, SMALL).await?;
    if small != mirrored {
        bail!("the registry serves other manifest bytes for {SMALL} than Strata");
    }

    // nginx serves Strata's own store: the manifest and the layer are the
    // same files, sent with sendfile.
    let nginx = Server::nginx(work, &work.join("strata-one").join("storage"), &http).await?;
    let small_digest = format!("{:x}", sha2::Sha256::digest(&small));
    let nginx_manifest = format!("{}/blobs/sha256/{small_digest}", nginx.base);
    if http.get(&nginx_manifest).send().await?.error_for_status()?.bytes().await? != small {
        bail!("nginx serves other bytes for {SMALL}'s manifest than Strata");
    }

    // P1: warm manifest GETs.
    eprintln!("P1: wrk, {} s each…", args.seconds);
    r.p1_strata = wrk(&format!("{}/v2/{SMALL}/manifests/latest", one.base), args.seconds)?;
    r.p1_registry = wrk(&format!("{}/v2/{SMALL}/manifests/latest", registry.base), args.seconds)?;
    r.p1_nginx = wrk(&nginx_manifest, args.seconds)?;

    // P2: the big image's largest layer, best of three each, alternating.
    let Blob { digest, size, .. } = big_layers.iter().max_by_key(|l| l.size).cloned().context("the big image has no layers")?;
    r.p2_blob_bytes = size;
    eprintln!("P2: GET of a {} blob, best of 3…", mib(size));
    let (mut s, mut g, mut n) = (0f64, 0f64, 0f64);
    let hex = digest.trim_start_matches("sha256:");
    for _ in 0..3 {
        s = s.max(curl_speed(&format!("{}/v2/{BIG}/blobs/{digest}", one.base), size)?);
        g = g.max(curl_speed(&format!("{}/v2/{BIG}/blobs/{digest}", registry.base), size)?);
        n = n.max(curl_speed(&format!("{}/blobs/sha256/{hex}", nginx.base), size)?);
    }
    (r.p2_strata, r.p2_registry, r.p2_nginx) = (s, g, n);
    drop(nginx);
    drop(registry);
    drop(one);

    // P7: 50 concurrent first pulls of the same image on a fresh store.
    let two = Server::strata(work, "two", &pkgs, &http, "").await?;
    eprintln!("P7: 50 concurrent first pulls of {FRESH}…");
    let builds_before = two.builds(&http).await?;
    let started = Instant::now();
    let pulls = futures::future::join_all((0..50).map(|_| {
        let (http, base) = (http.clone(), two.base.clone());
        async move {
            pull(&http, &base, FRESH).await?;
            Ok::<_, anyhow::Error>(started.elapsed().as_secs_f64())
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<f64>>>()?;
    r.p7_builds = two.builds(&http).await? - builds_before;
    r.p7_last_secs = pulls.iter().cloned().fold(0.0, f64::max);
    r.p7_first_secs = pulls.iter().cloned().fold(f64::MAX, f64::min);
    drop(two);

    // P8: the SBOM's cost on the cold build. Alternating, so that a slow
    // moment of the machine does not land on one side only.
    eprintln!("P8: cold builds of {BIG} with and without the SBOM, best of 2…");
    (r.p8_on_secs, r.p8_off_secs) = (f64::MAX, f64::MAX);
    for round in 0..2 {
        for sbom in [true, false] {
            let name = format!("p8-{round}-{sbom}");
            let server = Server::strata(work, &name, &pkgs, &http, &format!("\n[sbom]\nenabled = {sbom}\n")).await?;
            let t = Instant::now();
            get_manifest(&http, &server.base, BIG).await?;
            let secs = t.elapsed().as_secs_f64();
            let best = if sbom { &mut r.p8_on_secs } else { &mut r.p8_off_secs };
            *best = best.min(secs);
            drop(server);
            std::fs::remove_dir_all(work.join(format!("strata-{name}")))?;
        }
    }

    // P9: a second platform's cost on the cold build, alternating.
    eprintln!("P9: cold builds of {BIG} for two platforms and for one, best of 2…");
    (r.p9_two_secs, r.p9_one_secs) = (f64::MAX, f64::MAX);
    for round in 0..2 {
        for two in [true, false] {
            let name = format!("p9-{round}-{two}");
            let platforms = if two { "[\"linux/amd64\", \"linux/arm64\"]" } else { "[\"linux/amd64\"]" };
            let toml = format!("\n[builds]\nplatforms = {platforms}\n");
            let server = Server::strata(work, &name, &pkgs, &http, &toml).await?;
            let t = Instant::now();
            let body = get_with_accept(&http, &server.base, BIG, if two { OCI_INDEX } else { OCI }).await?;
            let secs = t.elapsed().as_secs_f64();
            if two {
                let (all, shared) = index_layer_bytes(&http, &server.base, &body).await?;
                (r.p9_two_bytes, r.p9_shared_bytes) = (all, shared);
            }
            let best = if two { &mut r.p9_two_secs } else { &mut r.p9_one_secs };
            *best = best.min(secs);
            drop(server);
            std::fs::remove_dir_all(work.join(format!("strata-{name}")))?;
        }
    }

    if !args.quick {
        r.corpus = Some(measure_corpus(work, &http).await?);
    }

    if !args.no_plugin_bench {
        eprintln!("P5: cargo bench -p strata-bench --bench plugin_overhead…");
        r.p5 = Some(plugin_bench()?);
    }
    r.load.1 = loadavg();
    Ok(r)
}

/// The realistic corpus's cold builds and their peers.
#[derive(Default)]
struct Corpus {
    /// The packages `corpus.nix` found on this machine, as the image name.
    image: String,
    paths: usize,
    bytes: u64,
    fixture_secs: f64,
    gzip: ColdBuild,
    pigz: Peer,
    zstd: ColdBuild,
    zstd_cli: Peer,
    /// The zstd image's schema 2 copy, made on the first request for it.
    docker_copy: ColdBuild,
}

#[derive(Default)]
struct ColdBuild {
    secs: f64,
    /// The compressed layers of the OCI manifest.
    bytes: u64,
    layers: usize,
    peak_rss_kib: u64,
}

#[derive(Default)]
struct Peer {
    secs: f64,
    bytes: u64,
}

/// `tar -cf - <paths> | <compressor>` into a file: its time and size.
fn tar_into(work: &Path, paths: &[&str], compressor: &str) -> Result<Peer> {
    let file = work.join("closure.tar.compressed");
    let script = format!("tar -cf - \"$@\" | {compressor} > {}", shell_quote(&file));
    let t = Instant::now();
    output(Command::new("sh").args(["-c", &script, "sh"]).args(paths))?;
    let peer = Peer { secs: t.elapsed().as_secs_f64(), bytes: std::fs::metadata(&file)?.len() };
    std::fs::remove_file(&file)?;
    Ok(peer)
}

/// The corpus's cold builds on fresh stores: gzip (the default) against
/// pigz, zstd level 3 against the zstd CLI on every core. Each peer runs
/// right before Strata's build, so both meet the same page cache.
async fn measure_corpus(work: &Path, http: &reqwest::Client) -> Result<Corpus> {
    let dir = std::path::absolute(work.join("corpus"))?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("corpus.nix"), CORPUS_NIX)?;
    std::fs::write(
        dir.join("default.nix"),
        "# Written by `strata-bench perf`.\n{ system ? builtins.currentSystem, ... }:\nimport ./corpus.nix { inherit system; }\n",
    )?;
    let names: Vec<String> = serde_json::from_str(&output(Command::new("nix-instantiate").args(["--eval", "--json", "--strict", "-E"]).arg(format!(
        "builtins.filter (n: n != \"all\" && n != \"base\") (builtins.attrNames (import {} {{}}))",
        dir.display()
    )))?)?;
    if names.is_empty() {
        bail!("corpus.nix found none of its directories on this machine");
    }
    let mut c = Corpus { image: names.join("/"), ..Default::default() };
    eprintln!("corpus: copying {} into the store with Nix (once; later runs reuse it)…", names.join(", "));
    let t = Instant::now();
    let mut roots = Vec::new();
    for name in &names {
        roots.push(output(Command::new("nix-build").arg(&dir).args(["--no-out-link", "-A", name]))?.trim().to_string());
    }
    c.fixture_secs = t.elapsed().as_secs_f64();
    let closure = output(Command::new("nix-store").arg("-qR").args(&roots))?;
    let closure: Vec<&str> = closure.lines().collect();
    c.paths = closure.len();
    c.bytes = output(Command::new("nix-store").args(["-q", "--size"]).args(&closure))?
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();

    for (codec, extra) in [("gzip", ""), ("zstd", "\n[layers]\ncompression = \"zstd\"\nlevel = 3\n")] {
        eprintln!("corpus ({}, {} paths): tar | {codec} on every core, then Strata's cold build…", mib(c.bytes), c.paths);
        let peer = tar_into(work, &closure, if codec == "gzip" { "pigz -6" } else { "zstd -3 -T0 -q" })?;
        let server = Server::strata(work, &format!("corpus-{codec}"), &dir, http, extra).await?;
        let t = Instant::now();
        let manifest = get_manifest(http, &server.base, &c.image).await?;
        let secs = t.elapsed().as_secs_f64();
        let layers = blobs_of(&manifest)?.split_off(1);
        let build = ColdBuild {
            secs,
            bytes: layers.iter().map(|l| l.size).sum(),
            layers: layers.len(),
            peak_rss_kib: server.peak_rss_kib()?,
        };
        if codec == "zstd" {
            let t = Instant::now();
            let manifest = get_with_accept(http, &server.base, &c.image, DOCKER).await?;
            let secs = t.elapsed().as_secs_f64();
            let layers = blobs_of(&manifest)?.split_off(1);
            c.docker_copy = ColdBuild {
                secs,
                bytes: layers.iter().map(|l| l.size).sum(),
                layers: layers.len(),
                peak_rss_kib: server.peak_rss_kib()?,
            };
        }
        drop(server);
        std::fs::remove_dir_all(work.join(format!("strata-corpus-{codec}")))?;
        if codec == "gzip" {
            (c.gzip, c.pigz) = (build, peer);
        } else {
            (c.zstd, c.zstd_cli) = (build, peer);
        }
    }
    Ok(c)
}

impl Report {
    fn markdown(&self, args: &Args) -> String {
        let mut s = String::new();
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let cmd = if args.quick {
            "strata-bench perf --quick".to_string()
        } else {
            format!("strata-bench perf --scale {} --seconds {}", args.scale, args.seconds)
        };
        let _ = writeln!(
            s,
            "Command: `{cmd}` ({} cores; load average {} at the start, {} at the end).",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            self.load.0,
            self.load.1
        );
        let _ = writeln!(
            s,
            "Big image `{BIG}`: {} store paths, {} (NAR); realising them with Nix first took {:.0} s (not counted).",
            self.closure_paths,
            mib(self.closure_bytes),
            self.fixture_secs
        );
        let none = Corpus::default();
        let c = self.corpus.as_ref().unwrap_or(&none);
        let _ = match &self.corpus {
            Some(c) => writeln!(
                s,
                "Corpus `{}` (`corpus.nix`, this machine's files): {} store paths, {} (NAR); copying them with Nix first took {:.0} s (not counted).\n",
                c.image,
                c.paths,
                mib(c.bytes),
                c.fixture_secs
            ),
            None => writeln!(s, "The corpus (P3r, P3z) was not run (`--quick`).\n"),
        };
        let _ = writeln!(s, "| | Strata | peer | ratio | goal | |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        let p1 = ratio(self.p1_strata, self.p1_registry);
        let _ = writeln!(
            s,
            "| P1 warm manifest GET (wrk, 2 threads, 50 connections) | {:.0} req/s | registry {:.0} req/s | {p1:.1}× | ≥ 10× | {} |",
            self.p1_strata,
            self.p1_registry,
            verdict(p1 >= 10.0)
        );
        let p1n = ratio(self.p1_strata, self.p1_nginx);
        let _ = writeln!(
            s,
            "| P1 the same, against nginx (2 workers, sendfile) serving the same bytes | {:.0} req/s | nginx {:.0} req/s | {p1n:.2}× | ≥ 0.8× | {} |",
            self.p1_strata,
            self.p1_nginx,
            verdict(p1n >= 0.8)
        );
        let p2 = ratio(self.p2_strata, self.p2_registry);
        let _ = writeln!(
            s,
            "| P2 GET of a {} layer blob (curl, best of 3) | {:.0} MB/s | registry {:.0} MB/s | {p2:.2}× | ≥ 1.0× | {} |",
            mib(self.p2_blob_bytes),
            self.p2_strata / 1e6,
            self.p2_registry / 1e6,
            verdict(p2 >= 1.0)
        );
        let p2n = ratio(self.p2_strata, self.p2_nginx);
        let _ = writeln!(
            s,
            "| P2 the same blob, against nginx | {:.0} MB/s | nginx {:.0} MB/s | {p2n:.2}× | ≥ 0.9× | {} |",
            self.p2_strata / 1e6,
            self.p2_nginx / 1e6,
            verdict(p2n >= 0.9)
        );
        let p3 = ratio(self.p3_tar.secs, self.p3_strata_secs);
        let size = ratio(self.p3_strata_bytes as f64, self.p3_tar.bytes as f64);
        let _ = writeln!(
            s,
            "| P3 cold build of the big image vs `tar -c \\| gzip -6` | {:.1} s, {:.0} MB/s, {} in {} layers | {:.1} s, {:.0} MB/s, {} | {p3:.2}× faster, {size:.3}× the size | ≥ 1.5× at ≤ 1.02× | {} |",
            self.p3_strata_secs,
            self.closure_bytes as f64 / self.p3_strata_secs / 1e6,
            mib(self.p3_strata_bytes),
            self.p3_layers,
            self.p3_tar.secs,
            self.closure_bytes as f64 / self.p3_tar.secs / 1e6,
            mib(self.p3_tar.bytes),
            verdict(p3 >= 1.5 && size <= 1.02)
        );
        for (label, build, peer, peer_name, goal_secs, goal) in [
            ("P3r cold build of the corpus, gzip -6", &c.gzip, &c.pigz, "`tar -c \\| pigz -6`", 1.0, "≥ 1.0× at ≤ 1.02×"),
            ("P3z cold build of the corpus, `compression = \"zstd\"` (level 3)", &c.zstd, &c.zstd_cli, "`tar -c \\| zstd -3 -T0`", 1.0 / 1.3, "≤ 1.3× the time at ≤ 1.02×, ≤ 150 MiB"),
        ]
        .into_iter()
        .filter(|_| self.corpus.is_some())
        {
            let speed = ratio(peer.secs, build.secs);
            let size = ratio(build.bytes as f64, peer.bytes as f64);
            let peak = build.peak_rss_kib as f64 / 1024.0;
            let _ = writeln!(
                s,
                "| {label} | {:.1} s, {} in {} layers, peak RSS {peak:.0} MiB | {peer_name} {:.1} s, {} | {speed:.2}× as fast, {size:.3}× the size | {goal} | {} |",
                build.secs,
                mib(build.bytes),
                build.layers,
                peer.secs,
                mib(peer.bytes),
                verdict(speed >= goal_secs && size <= 1.02 && peak <= 150.0)
            );
        }
        if self.corpus.is_some() {
            let d = &c.docker_copy;
            let _ = writeln!(
                s,
                "| P3z′ the same image's schema 2 copy (gzip -6 from the stored zstd blobs), on the first Docker request | {:.1} s, {} in {} layers, peak RSS {:.0} MiB | {} {:.1} s, {} | {:.2}× as fast, {:.3}× the size | (not part of the cold build) | |",
                d.secs,
                mib(d.bytes),
                d.layers,
                d.peak_rss_kib as f64 / 1024.0,
                "`tar -c \\| pigz -6`",
                c.pigz.secs,
                mib(c.pigz.bytes),
                ratio(c.pigz.secs, d.secs),
                ratio(d.bytes as f64, c.pigz.bytes as f64)
            );
        }
        let peak = self.p6_peak_kib as f64 / 1024.0;
        let _ = writeln!(
            s,
            "| P6 peak RSS over start-up and the cold build | {peak:.0} MiB (after start-up: {:.0} MiB) | | | ≤ 150 MiB | {} |",
            self.p6_idle_kib as f64 / 1024.0,
            verdict(peak <= 150.0)
        );
        let _ = writeln!(
            s,
            "| P7 50 concurrent first pulls of `{FRESH}` | {} build(s); last pull done after {:.2} s (first {:.2} s) | one first pull: {:.2} s | {:.2}× | 1 build | {} |",
            self.p7_builds,
            self.p7_last_secs,
            self.p7_first_secs,
            self.p7_single_secs,
            ratio(self.p7_last_secs, self.p7_single_secs),
            verdict(self.p7_builds == 1)
        );
        let p8 = ratio(self.p8_on_secs, self.p8_off_secs);
        let _ = writeln!(
            s,
            "| P8 cold build of the big image with the SBOM (best of 2, alternating) | {:.2} s | without: {:.2} s | {p8:.3}× | ≤ 1.03× | {} |",
            self.p8_on_secs,
            self.p8_off_secs,
            verdict(p8 <= 1.03)
        );
        let p9 = ratio(self.p9_two_secs, self.p9_one_secs);
        let _ = writeln!(
            s,
            "| P9 cold build of the big image for two platforms (index) vs one (best of 2, alternating) | {:.2} s, {} of layers, {} shared | one platform: {:.2} s | {p9:.2}× | ≤ 1.3× | {} |",
            self.p9_two_secs,
            mib(self.p9_two_bytes),
            mib(self.p9_shared_bytes),
            self.p9_one_secs,
            verdict(p9 <= 1.3)
        );
        match &self.p5 {
            Some(p5) => {
                let _ = writeln!(s, "\nP5, plugin overhead (`cargo bench -p strata-bench --bench plugin_overhead`, same run):\n\n{p5}");
            }
            None => {
                let _ = writeln!(s, "\nP5 (plugin overhead) was not run (`--quick` or `--no-plugin-bench`).");
            }
        }
        s
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn which(tool: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|c| c.is_file()))
        .with_context(|| format!("{tool} not found in PATH"))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Runs a command to its end; its stdout, or an error with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    cmd.env("NIX_CONFIG", ARM64_NIX_CONFIG).stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The set at `scale`, as a `path` source names it.
fn write_package_set(dir: &Path, scale: f64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let dir = std::path::absolute(dir)?;
    std::fs::write(dir.join("generated.nix"), GENERATED_NIX)?;
    // `{:?}` keeps the decimal point: Nix then reads a float, as intended.
    std::fs::write(
        dir.join("default.nix"),
        format!("# Written by `strata-bench perf`.\n{{ system ? builtins.currentSystem, ... }}:\nimport ./generated.nix {{ inherit system; scale = {scale:?}; }}\n"),
    )?;
    Ok(dir)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_ready(http: &reqwest::Client, url: &str, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during start-up ({status}); log {}:\n{}", log.display(), std::fs::read_to_string(log).unwrap_or_default());
        }
        if http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not answer {url} within 60 s; log {}", log.display())
}

/// A server under test (`strata serve`, `docker-registry`) as a child
/// process on 127.0.0.1, killed when dropped.
struct Server {
    child: Child,
    host: String,
    base: String,
}

impl Server {
    /// Starts a server in the fresh directory `dir`: `launch` gets it and a
    /// free address, writes the server's configuration there and returns
    /// its command and the log to show if it does not come up.
    async fn start(
        http: &reqwest::Client,
        dir: &Path,
        what: &str,
        launch: impl FnOnce(&str) -> Result<(Command, PathBuf)>,
    ) -> Result<Server> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let host = format!("127.0.0.1:{}", free_port()?);
        let (mut command, log) = launch(&host)?;
        let mut child = command.stdin(Stdio::null()).spawn()?;
        let base = format!("http://{host}");
        wait_ready(http, &format!("{base}/v2/"), &mut child, what, &log).await?;
        Ok(Server { child, host, base })
    }

    /// `strata serve` with a store of its own; `extra_toml` is appended to
    /// its config.
    async fn strata(work: &Path, name: &str, pkgs: &Path, http: &reqwest::Client, extra_toml: &str) -> Result<Server> {
        let dir = work.join(format!("strata-{name}"));
        Server::start(http, &dir, "strata serve", |host| {
            let config = dir.join("strata.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = \"{host}\"\n\n[storage]\nurl = \"file://{}\"\n\n[nix]\nwork_dir = \"{}\"\ntimeout_secs = 1800\n{extra_toml}",
                    dir.join("storage").display(),
                    dir.join("nix").display()
                ),
            )?;
            let err = dir.join("strata.err");
            let mut command = Command::new(strata_binary()?);
            command
                .arg("--config")
                .arg(&config)
                .arg("serve")
                .env("NIXERY_PKGS_PATH", pkgs)
                .env("NIX_CONFIG", ARM64_NIX_CONFIG)
                .env("STRATA_NIX_OFFLINE", "1")
                .env("RUST_LOG", "warn")
                .stdout(std::fs::File::create(dir.join("strata.log"))?)
                .stderr(std::fs::File::create(&err)?);
            Ok((command, err))
        })
        .await
    }

    /// The CNCF registry (`docker-registry`), filesystem storage, no auth.
    async fn registry(work: &Path, http: &reqwest::Client) -> Result<Server> {
        let dir = work.join("registry");
        Server::start(http, &dir, "docker-registry", |host| {
            let config = dir.join("config.yml");
            // The registry's own recommended setup: an in-memory blob
            // descriptor cache in front of the filesystem driver.
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n  redirect:\n    disable: true\nhttp:\n  addr: {host}\n",
                    dir.join("data").display()
                ),
            )?;
            let log = dir.join("registry.log");
            let mut command = Command::new("docker-registry");
            command
                .arg("serve")
                .arg(&config)
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(&log)?);
            Ok((command, log))
        })
        .await
    }

    /// nginx (Debian's nginx-light) serving `root` as static files, the
    /// way a file server is set up for speed: two workers, sendfile, no
    /// access log.
    async fn nginx(work: &Path, root: &Path, http: &reqwest::Client) -> Result<Server> {
        let dir = work.join("nginx");
        let root = std::path::absolute(root)?;
        Server::start(http, &dir, "nginx", |host| {
            let config = dir.join("nginx.conf");
            // `/v2/` answers 200 like a registry's, for wait_ready.
            std::fs::write(
                &config,
                format!(
                    "user root;\nworker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  default_type {OCI};\n  client_body_temp_path {dir}/tmp;\n  proxy_temp_path {dir}/tmp;\n  server {{\n    listen {host};\n    root {root};\n    location = /v2/ {{ return 200 '{{}}'; }}\n  }}\n}}\n",
                    dir = dir.display(),
                    root = root.display()
                ),
            )?;
            std::fs::create_dir_all(dir.join("tmp"))?;
            let log = dir.join("error.log");
            let mut command = Command::new("nginx");
            command
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&config)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("nginx.err"))?);
            Ok((command, log))
        })
        .await
    }

    /// The process's high-water mark of resident memory.
    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    /// Images Strata has built (its `/metrics`).
    async fn builds(&self, http: &reqwest::Client) -> Result<u64> {
        let text = http.get(format!("{}/metrics", self.base)).send().await?.error_for_status()?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("strata_image_builds_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }
}

impl Drop for Server {
    /// SIGTERM first, then SIGKILL after 10 s: nginx's workers outlive a
    /// master that is killed outright, still holding the port and a core's
    /// share of whatever runs next.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_manifest(http: &reqwest::Client, base: &str, name: &str) -> Result<Vec<u8>> {
    get_with_accept(http, base, name, OCI).await
}

/// `name:latest`'s manifest (or index) for this `Accept`.
async fn get_with_accept(http: &reqwest::Client, base: &str, name: &str, accept: &str) -> Result<Vec<u8>> {
    let resp = http.get(format!("{base}/v2/{name}/manifests/latest")).header("accept", accept).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("GET {base}/v2/{name}/manifests/latest: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(body.to_vec())
}

/// The layer bytes of an index's images, and of the layers they share.
async fn index_layer_bytes(http: &reqwest::Client, base: &str, index: &[u8]) -> Result<(u64, u64)> {
    let index: serde_json::Value = serde_json::from_slice(index)?;
    let entries = index["manifests"].as_array().context("not an index")?;
    if entries.len() != 2 {
        bail!("the index lists {} manifests, not 2", entries.len());
    }
    let mut layers = Vec::new();
    for e in entries {
        let digest = e["digest"].as_str().context("index entry without a digest")?;
        let m = http.get(format!("{base}/v2/{BIG}/manifests/{digest}")).send().await?.error_for_status()?.bytes().await?;
        layers.push(blobs_of(&m)?.split_off(1));
    }
    let all = layers.iter().flatten().map(|b| b.size).sum();
    let shared = layers[0].iter().filter(|b| layers[1].iter().any(|c| c.digest == b.digest)).map(|b| b.size).sum();
    Ok((all, shared))
}

/// The config and layer blobs of a manifest.
fn blobs_of(manifest: &[u8]) -> Result<Vec<Blob>> {
    manifest_blobs(manifest).map_err(anyhow::Error::msg)
}

/// A pull as a client makes it: the manifest, then the config and every
/// layer, read to the end (and counted, not kept).
async fn pull(http: &reqwest::Client, base: &str, name: &str) -> Result<()> {
    let manifest = get_manifest(http, base, name).await?;
    for Blob { digest, size, .. } in blobs_of(&manifest)? {
        let mut resp = http.get(format!("{base}/v2/{name}/blobs/{digest}")).send().await?.error_for_status()?;
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await? {
            got += chunk.len() as u64;
        }
        if got != size {
            bail!("{digest}: {got} bytes, the manifest says {size}");
        }
    }
    Ok(())
}

/// `wrk` requests/s for warm manifest GETs; any non-2xx answer is an error.
fn wrk(url: &str, seconds: u64) -> Result<f64> {
    let out = output(Command::new("wrk").args([
        "-t2",
        "-c50",
        &format!("-d{seconds}s"),
        "-H",
        &format!("Accept: {OCI}"),
        url,
    ]))?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        bail!("wrk against {url} saw failed requests:\n{out}");
    }
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))
}

/// Bytes/s of one download with curl, checked for its size.
fn curl_speed(url: &str, size: u64) -> Result<f64> {
    let out = output(Command::new("curl").args(["-sf", "-o", "/dev/null", "-w", "%{size_download} %{speed_download}", url]))?;
    let mut it = out.split_whitespace();
    let got: u64 = it.next().and_then(|v| v.parse().ok()).context("curl size")?;
    let speed: f64 = it.next().and_then(|v| v.parse().ok()).context("curl speed")?;
    if got != size {
        bail!("{url}: {got} bytes, expected {size}");
    }
    Ok(speed)
}

/// The plugin overhead benchmark's table, run where the sources are.
fn plugin_bench() -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("repository root")?;
    let out = output(Command::new("cargo").args(["bench", "-q", "-p", "strata-bench", "--bench", "plugin_overhead"]).current_dir(root))
        .context("P5 needs the repository and cargo (or pass --no-plugin-bench)")?;
    Ok(out.trim().to_string())
}

/// Replaces the text between the markers (appending them if absent).
fn write_section(path: &Path, text: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{text}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{section}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// The `strata` binary the benchmark serves with: `STRATA_BIN`, or the one
/// cargo built beside this `strata-bench` (both land in target/<profile>/).
fn strata_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("STRATA_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("strata");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!("no strata binary beside {} (build it with `cargo build --release`, or set STRATA_BIN)", me.display())
}
