//! Configuration: `strata.toml`, then the environment variables Nixery
//! reads (with Nixery's meaning, so that an operator moving from Nixery only
//! swaps the binary), then validation. Every problem is one line naming the
//! setting, reported before the server binds its port.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; `PORT` replaces the port.
    pub listen: SocketAddr,
    pub storage: StorageConfig,
    pub nix: NixConfig,
    pub layers: LayersConfig,
    pub cache: CacheConfig,
    pub builds: BuildsConfig,
    pub plugins: PluginsConfig,
    /// What each client may send and hold (enforced by `registry::limits`).
    pub limits: LimitsConfig,
    /// Optional access control (`registry::auth`); off by default.
    pub auth: AuthConfig,
    /// `strata gc` on a schedule inside `strata serve`; off by default.
    pub gc: GcConfig,
    /// Each image's SPDX document, served through the referrers API.
    pub sbom: SbomConfig,
    /// Directory of web assets replacing the embedded page (`WEB_DIR`).
    pub web_dir: Option<PathBuf>,
    /// Largest number of packages one image may name.
    pub max_packages: usize,
    /// `text` (for people) or `json` (one object per line, for log
    /// collectors); `--log-json` on the command line also selects JSON.
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `file:///abs/dir` (default: a directory under the user's data dir),
    /// `s3://bucket/prefix`, `gs://bucket`, `az://container`, `memory://`.
    pub url: Option<String>,
    /// How blob GETs are answered from a store that can sign URLs (S3, GCS,
    /// Azure): streamed through the host, or a 307 to a presigned URL so
    /// layer bytes go from the store to the client without the host.
    pub serve: ServeMode,
    /// Lifetime of a presigned URL. A client must start its download within
    /// it; a leaked URL is useless after it.
    pub presign_secs: u64,
    /// A build lease's lifetime, renewed while the build runs: how long a
    /// replica that died mid-build blocks the others.
    pub lease_secs: u64,
    /// How long a request waits for another replica's build before it is
    /// answered 503 with `Retry-After`.
    pub lease_wait_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServeMode {
    #[default]
    Proxy,
    Redirect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NixConfig {
    /// Seconds one Nix invocation may take (`NIX_TIMEOUT`, Nixery's default 60).
    pub timeout_secs: u64,
    /// Popularity data for the grouping plugins: a file path or http(s) URL
    /// of a JSON map store-path-name → count (`NIX_POPULARITY_URL`).
    pub popularity_url: Option<String>,
    /// Where Nix expressions and GC roots live (default: under the data dir).
    pub work_dir: Option<PathBuf>,
    /// Seconds a name found missing or unavailable (a throw, a refused
    /// broken or unfree package) is answered from memory, without
    /// evaluating it again: clients retry, and explaining a refusal costs an
    /// evaluation of its own. 0 turns this off.
    pub negative_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayersConfig {
    /// Most layers of an image, the host's symlink layer included. Docker's
    /// limit is 125; 94 leaves room for users' own layers, as in Nixery.
    pub budget: u32,
    /// `gzip`, which every client reads, or `zstd` (OCI `+zstd` layers,
    /// smaller and faster to unpack, for the clients that read them; Docker
    /// schema 2 manifests have no zstd type and keep gzip layers).
    pub compression: Codec,
    /// Level of `compression`: gzip 0–9 (default 6), zstd 1–19 (default
    /// 3). `compression_level` is its older name.
    #[serde(rename = "level", alias = "compression_level")]
    pub compression_level: Option<u32>,
}

impl LayersConfig {
    /// The level, the codec's default when unset.
    pub fn level(&self) -> u32 {
        self.compression_level.unwrap_or(match self.compression {
            Codec::Gzip => 6,
            Codec::Zstd => 3,
        })
    }
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    Gzip,
    Zstd,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an image built from a mutable source (a channel, a branch)
    /// is served before it is rebuilt.
    pub mutable_ttl_secs: u64,
    /// Bytes of manifests and image records kept in memory, MiB.
    pub memory_mib: u64,
    /// How often a replica writes an image's access mark and, as long, how
    /// long it serves the image from memory before reading its record (and
    /// a manifest by digest) from the store again. Shorter: more small
    /// writes and reads; `strata gc` windows may be shorter too (at least
    /// [`MIN_WINDOW_MARKS`] times this). Every replica and the
    /// config `strata gc` reads must agree on it.
    pub access_mark_secs: u64,
}

impl CacheConfig {
    pub fn access_mark_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.access_mark_secs)
    }
}

/// `[gc]`: the collection `strata gc --delete` does, run by `strata serve`
/// every `interval` (`ops::gc::spawn_schedule`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    pub enabled: bool,
    /// Images not requested for this long go (`30d`, `12h`), as
    /// `--older-than`.
    pub older_than: String,
    /// Time between runs (the first one `interval` after start).
    pub interval: String,
    /// Also collect the object store (images, blobs, debris). With several
    /// replicas on one bucket, one replica collecting it is enough.
    pub storage: bool,
    /// Release this machine's Nix GC roots of removed images and delete the
    /// store paths only they held.
    pub nix: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig { enabled: false, older_than: "30d".into(), interval: "6h".into(), storage: true, nix: true }
    }
}

impl GcConfig {
    /// The window (validated at load).
    pub fn older_than(&self) -> std::time::Duration {
        parse_age(&self.older_than).unwrap_or(std::time::Duration::from_secs(30 * 86400))
    }

    /// The interval (validated at load).
    pub fn interval(&self) -> std::time::Duration {
        parse_age(&self.interval).unwrap_or(std::time::Duration::from_secs(6 * 3600))
    }
}

/// `[sbom]`: whether builds write an SPDX document and serve it as a
/// referrer of the image's manifests (docs/sbom.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SbomConfig {
    pub enabled: bool,
}

impl Default for SbomConfig {
    fn default() -> Self {
        SbomConfig { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildsConfig {
    /// Builds of different images running at once (default: the number of
    /// cores).
    pub max_concurrent: Option<usize>,
    /// Builds waiting for a slot; past this a request gets 503 with
    /// `Retry-After`.
    pub queue_limit: usize,
    /// The platforms a tag is built for, as `os/arch[/variant]`. One (the
    /// default: the host's): plain manifests. Several: a tag is an image
    /// index with one manifest per platform (docs/clients.md).
    pub platforms: Vec<Platform>,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        BuildsConfig { max_concurrent: None, queue_limit: 32, platforms: vec![Platform::host()] }
    }
}

/// A platform of an image index entry, as Docker and OCI name them:
/// `linux/amd64`, `linux/arm64` (whose variant is `v8`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on; amd64 where it is neither of the
    /// two Strata builds for.
    pub fn host() -> Platform {
        let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { "amd64" };
        Platform::linux(arch)
    }

    /// `linux/<arch>`, with the variant the index names it by (arm64 → v8,
    /// as Docker Hub's indexes have it and containerd expects).
    pub fn linux(arch: &str) -> Platform {
        let variant = (arch == "arm64").then(|| "v8".to_string());
        Platform { os: "linux".into(), arch: arch.into(), variant }
    }

    /// The Nix system that builds this platform's image.
    pub fn nix_system(&self) -> Option<&'static str> {
        match self.arch.as_str() {
            "amd64" => Some("x86_64-linux"),
            "arm64" => Some("aarch64-linux"),
            _ => None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// `linux/amd64`, `linux/arm64` or `linux/arm64/v8`: the platforms Nix
    /// has a system for here.
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let platform = match parts.as_slice() {
            ["linux", arch] => Platform::linux(arch),
            ["linux", "arm64", "v8"] => Platform::linux("arm64"),
            _ => return Err(format!("platform {s:?} is not one of linux/amd64, linux/arm64")),
        };
        match platform.nix_system() {
            Some(_) => Ok(platform),
            None => Err(format!("platform {s:?} is not one of linux/amd64, linux/arm64")),
        }
    }
}

impl Serialize for Platform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Platform, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl BuildsConfig {
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            storage: StorageConfig::default(),
            nix: NixConfig::default(),
            layers: LayersConfig::default(),
            cache: CacheConfig::default(),
            builds: BuildsConfig::default(),
            plugins: PluginsConfig::default(),
            limits: Default::default(),
            auth: Default::default(),
            gc: GcConfig::default(),
            sbom: SbomConfig::default(),
            web_dir: None,
            max_packages: 64,
            log_format: LogFormat::Text,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { url: None, serve: ServeMode::Proxy, presign_secs: 300, lease_secs: 30, lease_wait_secs: 600 }
    }
}

impl Default for NixConfig {
    fn default() -> Self {
        NixConfig { timeout_secs: 60, popularity_url: None, work_dir: None, negative_ttl_secs: 60 }
    }
}

impl Default for LayersConfig {
    fn default() -> Self {
        LayersConfig { budget: 94, compression: Codec::Gzip, compression_level: None }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mutable_ttl_secs: 3600,
            memory_mib: 64,
            access_mark_secs: MARK_INTERVAL.as_secs(),
        }
    }
}

/// `[limits]` in strata.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Seconds a client has to send a whole request head; also how long an
    /// idle keep-alive connection is kept. A client trickling its headers
    /// (slowloris) is disconnected after it.
    pub header_read_secs: u64,
    /// Largest request head (request line and headers), bytes; larger is
    /// answered `431`. hyper's minimum is 8192.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more is answered `431`.
    pub max_headers: usize,
    /// Largest request body announced by `Content-Length`, bytes; larger is
    /// answered `413` without reading it. Strata takes no uploads: requests
    /// with a body are refused anyway, this stops them early.
    pub max_body_bytes: u64,
    /// Connections served at once; further ones wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: usize,
    /// On SIGTERM: stop accepting, then give responses under way (a build a
    /// client waits for included) this long before dropping them.
    pub shutdown_grace_secs: u64,
    /// Seconds a response may wait on a client that reads nothing (its
    /// receive window full) before the connection is closed: a client
    /// reading a layer at a trickle, or not at all, would otherwise hold a
    /// connection slot and a blob reader forever. A slow but moving
    /// download is never cut: the clock restarts with every byte written.
    pub write_stall_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_read_secs: 15,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 64 * 1024,
            max_connections: 4096,
            shutdown_grace_secs: 120,
            write_stall_secs: 60,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.header_read_secs == 0 || self.write_stall_secs == 0 {
            return bad("limits.header_read_secs and limits.write_stall_secs must be at least 1".into());
        }
        if self.max_header_bytes < 8192 {
            return bad(format!("limits.max_header_bytes={} must be at least 8192 (hyper's minimum)", self.max_header_bytes));
        }
        if self.max_headers == 0 || self.max_connections == 0 {
            return bad("limits.max_headers and limits.max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// `[auth]` in strata.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The realm of the `WWW-Authenticate` challenge.
    pub realm: String,
    pub users: Vec<User>,
    /// A TOML file of more `[[users]]`, so that the hashes can live apart
    /// from the main config (and be readable by the server only).
    pub users_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { realm: "strata".into(), users: vec![], users_file: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// The user name of Basic credentials.
    pub name: String,
    /// Hex SHA-256 of the secret: `printf %s "$SECRET" | sha256sum`.
    pub sha256: String,
    /// Image names this user may pull, as prefixes of whole segments:
    /// `team-a` allows `team-a` and `team-a/…`, not `team-abc`. Omitted:
    /// every name.
    #[serde(default)]
    pub prefixes: Option<Vec<String>>,
}

/// The default of `[cache] access_mark_secs`: how often one process marks
/// one image as requested, and so the resolution of `strata gc
/// --older-than` (storage/access.rs).
pub const MARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// A gc window must span this many access-mark intervals (`[cache]
/// access_mark_secs`). A replica writes an image's mark once an interval and
/// serves the image from memory until the mark is due, so an image in use
/// can carry a mark one interval old while a replica still serves it
/// without looking at the store: one interval is the least window at which
/// gc never removes such an image. The second is margin for what that
/// assumes exactly: the mark's time is the store's clock, the replica's
/// deadline its own clock, the window the gc machine's, and the mark lands
/// a moment after the request that took it.
pub const MIN_WINDOW_MARKS: u32 = 2;

/// `30d`, `12h`, `90m`, `1h 30m`: a positive duration.
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (examples: 30d, 12h, 90m)"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: the window must be longer than zero"));
    }
    Ok(d)
}

/// A gc window the access marks cannot resolve.
#[derive(Debug, thiserror::Error)]
#[error(
    "a gc window of {} is shorter than {} ({} times cache.access_mark_secs = {}): replicas mark an image as requested, and serve it from memory without looking at the store, for that long, so a shorter window cannot tell images in use from unused ones",
    humantime::format_duration(*.window),
    humantime::format_duration(*.minimum),
    MIN_WINDOW_MARKS,
    .interval.as_secs()
)]
pub struct WindowTooShort {
    pub window: std::time::Duration,
    pub minimum: std::time::Duration,
    pub interval: std::time::Duration,
}

/// Refuses a window shorter than [`MIN_WINDOW_MARKS`] access-mark
/// intervals: within it the records cannot tell which images are in use.
pub fn check_gc_window(older_than: std::time::Duration, mark_interval: std::time::Duration) -> Result<(), WindowTooShort> {
    let minimum = mark_interval * MIN_WINDOW_MARKS;
    if older_than < minimum {
        return Err(WindowTooShort { window: older_than, minimum, interval: mark_interval });
    }
    Ok(())
}

/// A start-up error: one line, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The environment a config is read from; a map so tests need not touch the
/// process environment.
pub type Env = BTreeMap<String, String>;

pub fn process_env() -> Env {
    std::env::vars().collect()
}

/// The `nixpkgs-source` keys that name a package source (exactly one is
/// set): what a Nixery variable replaces, and what the default fills in.
const NIXPKGS_SOURCE_KEYS: [&str; 4] = ["channel", "git", "path", "flake"];

impl Config {
    /// TOML file (if any), then the environment, then validation.
    pub fn load(file: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<Config>(&text).map_err(|e| {
                    let msg = e.message().replace('\n', " ");
                    bad(format!("{}: {msg}", path.display()))
                })?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        let get = |k: &str| env.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());

        if let Some(port) = get("PORT") {
            let port: u16 = port.parse().map_err(|_| bad(format!("PORT={port} is not a port number")))?;
            self.listen.set_port(port);
        }

        // Nixery's three package sources map onto the source plugin's table.
        let sources: Vec<(&str, &str, String)> = [
            ("NIXERY_CHANNEL", "channel"),
            ("NIXERY_PKGS_REPO", "git"),
            ("NIXERY_PKGS_PATH", "path"),
        ]
        .into_iter()
        .filter_map(|(var, key)| get(var).map(|v| (var, key, v)))
        .collect();
        if sources.len() > 1 {
            let names: Vec<&str> = sources.iter().map(|s| s.0).collect();
            return Err(bad(format!("{} are all set; set exactly one package source", names.join(" and "))));
        }
        if let Some((var, key, value)) = sources.into_iter().next() {
            let value = if key == "path" {
                std::fs::canonicalize(&value)
                    .map_err(|e| bad(format!("{var}={value}: {e}")))?
                    .to_string_lossy()
                    .into_owned()
            } else {
                value
            };
            // The variable replaces the file's source; the table's other
            // keys (`any_tag`) stay.
            let plugin = self.plugins.source.clone();
            let mut table = match self.plugins.config.remove(&plugin) {
                Some(toml::Value::Table(t)) => t,
                _ => toml::map::Map::new(),
            };
            for other in NIXPKGS_SOURCE_KEYS {
                table.remove(other);
            }
            table.insert(key.to_string(), toml::Value::String(value));
            self.plugins.config.insert(plugin, toml::Value::Table(table));
        }

        // Production's default source, as in Nixery: a nixpkgs channel,
        // when the table names none (it may hold `any_tag` alone).
        if self.plugins.source == "nixpkgs-source" {
            let table = self
                .plugins
                .config
                .entry("nixpkgs-source".to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            if let toml::Value::Table(t) = table {
                if !NIXPKGS_SOURCE_KEYS.iter().any(|k| t.contains_key(*k)) {
                    t.insert("channel".into(), toml::Value::String("nixos-unstable".into()));
                }
            }
        }

        if let Some(t) = get("NIX_TIMEOUT") {
            self.nix.timeout_secs = t
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("NIX_TIMEOUT={t} is not a positive number of seconds")))?;
        }
        if let Some(u) = get("NIX_POPULARITY_URL") {
            self.nix.popularity_url = Some(u);
        }
        if let Some(w) = get("WEB_DIR") {
            self.web_dir = Some(PathBuf::from(w));
        }

        match get("NIXERY_STORAGE_BACKEND").as_deref() {
            None => {
                if get("STORAGE_PATH").is_some() {
                    return Err(bad("STORAGE_PATH is set but NIXERY_STORAGE_BACKEND is not; set NIXERY_STORAGE_BACKEND=filesystem"));
                }
            }
            Some("filesystem") => {
                let path = get("STORAGE_PATH").ok_or_else(|| {
                    bad("NIXERY_STORAGE_BACKEND=filesystem needs STORAGE_PATH")
                })?;
                std::fs::create_dir_all(&path).map_err(|e| bad(format!("STORAGE_PATH={path}: {e}")))?;
                let abs = std::fs::canonicalize(&path).map_err(|e| bad(format!("STORAGE_PATH={path}: {e}")))?;
                self.storage.url = Some(format!("file://{}", abs.display()));
            }
            Some("gcs") => {
                let bucket = get("GCS_BUCKET").ok_or_else(|| bad("NIXERY_STORAGE_BACKEND=gcs needs GCS_BUCKET"))?;
                self.storage.url = Some(format!("gs://{bucket}"));
            }
            Some("s3") => {
                let bucket = get("S3_BUCKET").ok_or_else(|| bad("NIXERY_STORAGE_BACKEND=s3 needs S3_BUCKET"))?;
                let prefix = get("S3_PREFIX").map(|p| format!("/{}", p.trim_matches('/'))).unwrap_or_default();
                self.storage.url = Some(format!("s3://{bucket}{prefix}"));
            }
            Some(other) => {
                return Err(bad(format!(
                    "NIXERY_STORAGE_BACKEND={other} is not one of filesystem, gcs, s3"
                )))
            }
        }
        Ok(())
    }

    /// Every check, also after the command line replaced a setting
    /// (`strata build --platform`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        let st = &self.storage;
        // S3 refuses presigned URLs valid for more than 7 days.
        if st.presign_secs == 0 || st.presign_secs > 7 * 24 * 3600 {
            return Err(bad(format!("storage.presign_secs={} must be between 1 and 604800 (7 days)", st.presign_secs)));
        }
        if st.lease_secs < 3 {
            return Err(bad(format!("storage.lease_secs={} must be at least 3 (it is renewed every third of it)", st.lease_secs)));
        }
        if st.lease_wait_secs == 0 {
            return Err(bad("storage.lease_wait_secs must be at least 1"));
        }
        if self.layers.budget < 2 || self.layers.budget > 125 {
            return Err(bad(format!(
                "layers.budget={} must be between 2 and 125 (Docker's limit)",
                self.layers.budget
            )));
        }
        let level = self.layers.level();
        let range = match self.layers.compression {
            Codec::Gzip => 0..=9,
            Codec::Zstd => 1..=19,
        };
        if !range.contains(&level) {
            return Err(bad(format!(
                "layers.level={level} must be {}-{} for {}",
                range.start(),
                range.end(),
                self.layers.compression.name()
            )));
        }
        if self.plugins.expand.is_empty() && self.plugins.config.contains_key("bundles") {
            return Err(bad("plugins.config.bundles is set but plugins.expand is empty"));
        }
        if self.builds.max_concurrent == Some(0) {
            return Err(bad("builds.max_concurrent must be at least 1"));
        }
        if self.builds.platforms.is_empty() {
            return Err(bad("builds.platforms must name at least one platform"));
        }
        let mut arches: Vec<&str> = self.builds.platforms.iter().map(|p| p.arch.as_str()).collect();
        arches.sort();
        if arches.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("builds.platforms names a platform twice"));
        }
        if self.max_packages == 0 {
            return Err(bad("max_packages must be at least 1"));
        }
        if self.cache.access_mark_secs == 0 {
            return Err(bad("cache.access_mark_secs must be at least 1"));
        }
        let older_than = parse_age(&self.gc.older_than).map_err(|e| bad(format!("gc.older_than={e}")))?;
        parse_age(&self.gc.interval).map_err(|e| bad(format!("gc.interval={e}")))?;
        if self.gc.enabled {
            check_gc_window(older_than, self.cache.access_mark_interval())
                .map_err(|e| bad(format!("gc.older_than={}: {e}", self.gc.older_than)))?;
        }
        if self.gc.enabled && !self.gc.storage && !self.gc.nix {
            return Err(bad("gc.enabled is set but both gc.storage and gc.nix are off"));
        }
        Ok(())
    }

    /// Where local state lives when nothing else is configured.
    pub fn data_dir() -> PathBuf {
        dirs::data_dir().unwrap_or_else(std::env::temp_dir).join("strata")
    }

    pub fn storage_url(&self) -> String {
        self.storage
            .url
            .clone()
            .unwrap_or_else(|| format!("file://{}", Self::data_dir().join("storage").display()))
    }

    pub fn nix_work_dir(&self) -> PathBuf {
        self.nix.work_dir.clone().unwrap_or_else(|| Self::data_dir().join("nix"))
    }
}

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
            fuel: 6_000_000_000,
            memory_mib: 64,
            output_mib: 16,
            cache_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d").unwrap(), std::time::Duration::from_secs(30 * 86400));
        assert_eq!(parse_age("90m").unwrap(), std::time::Duration::from_secs(5400));
        assert!(parse_age("0s").is_err());
        assert!(parse_age("soon").unwrap_err().contains("soon"));
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The configs an operator copies from must load as they are.
    #[test]
    fn example_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(Some(&path), &Env::new()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 2, "examples/*.toml: found {seen}");
    }

    #[test]
    fn nixery_variables_keep_their_meaning() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let cfg = Config::load(
            None,
            &env(&[
                ("PORT", "9999"),
                ("NIXERY_PKGS_PATH", dir.path().to_str().unwrap()),
                ("NIX_TIMEOUT", "5"),
                ("NIXERY_STORAGE_BACKEND", "filesystem"),
                ("STORAGE_PATH", store.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9999);
        assert_eq!(cfg.nix.timeout_secs, 5);
        assert!(cfg.storage_url().starts_with("file:///"));
        let src = cfg.plugins.config.get("nixpkgs-source").unwrap();
        assert!(src.get("path").is_some());
        assert!(src.get("channel").is_none());
    }

    #[test]
    fn default_source_is_a_channel() {
        let cfg = Config::load(None, &env(&[])).unwrap();
        let src = cfg.plugins.config.get("nixpkgs-source").unwrap();
        assert_eq!(src.get("channel").and_then(|v| v.as_str()), Some("nixos-unstable"));
    }

    #[test]
    fn any_tag_survives_the_source_variables_and_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("strata.toml");
        std::fs::write(&file, "[plugins.config.nixpkgs-source]\nany_tag = true\nchannel = \"x\"\n").unwrap();
        let cfg = Config::load(Some(&file), &env(&[("NIXERY_PKGS_PATH", dir.path().to_str().unwrap())])).unwrap();
        let src = cfg.plugins.config.get("nixpkgs-source").unwrap();
        assert_eq!(src.get("any_tag").and_then(|v| v.as_bool()), Some(true));
        assert!(src.get("path").is_some() && src.get("channel").is_none(), "{src:?}");
        std::fs::write(&file, "[plugins.config.nixpkgs-source]\nany_tag = true\n").unwrap();
        let cfg = Config::load(Some(&file), &env(&[])).unwrap();
        let src = cfg.plugins.config.get("nixpkgs-source").unwrap();
        assert_eq!(src.get("channel").and_then(|v| v.as_str()), Some("nixos-unstable"));
        assert_eq!(src.get("any_tag").and_then(|v| v.as_bool()), Some(true));
    }

    #[test]
    fn bad_settings_are_one_line_errors_naming_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("NIXERY_CHANNEL", "a"), ("NIXERY_PKGS_REPO", "b")], "NIXERY_CHANNEL"),
            (&[("PORT", "http")], "PORT"),
            (&[("NIX_TIMEOUT", "-1")], "NIX_TIMEOUT"),
            (&[("NIXERY_STORAGE_BACKEND", "filesystem")], "STORAGE_PATH"),
            (&[("NIXERY_STORAGE_BACKEND", "floppy")], "NIXERY_STORAGE_BACKEND"),
            (&[("NIXERY_STORAGE_BACKEND", "gcs")], "GCS_BUCKET"),
        ];
        for (vars, name) in cases {
            let err = Config::load(None, &env(vars)).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn toml_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "[layers]\nbudget = 500\n").unwrap();
        let err = Config::load(Some(&file), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("layers.budget"), "{err}");
        std::fs::write(&file, "[layers]\ncompression = \"zstd\"\nlevel = 0\n").unwrap();
        let err = Config::load(Some(&file), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("layers.level=0") && err.contains("zstd"), "{err}");
        std::fs::write(&file, "[layers]\ncompression = \"zstd\"\n").unwrap();
        let cfg = Config::load(Some(&file), &env(&[])).unwrap();
        assert_eq!((cfg.layers.compression, cfg.layers.level()), (Codec::Zstd, 3));
        std::fs::write(&file, "[layers]\ncompression_level = 9\n").unwrap();
        let layers = Config::load(Some(&file), &env(&[])).unwrap().layers;
        assert_eq!((layers.compression, layers.level()), (Codec::Gzip, 9));
        std::fs::write(&file, "[layers]\nbudgett = 5\n").unwrap();
        let err = Config::load(Some(&file), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("budgett"), "{err}");
    }

    #[test]
    fn platforms_parse_default_to_the_host_and_refuse_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        assert_eq!(Config::load(None, &env(&[])).unwrap().builds.platforms, vec![Platform::host()]);
        std::fs::write(&file, "[builds]\nplatforms = [\"linux/amd64\", \"linux/arm64/v8\"]\n").unwrap();
        let platforms = Config::load(Some(&file), &env(&[])).unwrap().builds.platforms;
        assert_eq!(platforms.iter().map(|p| p.to_string()).collect::<Vec<_>>(), ["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(platforms[1].nix_system(), Some("aarch64-linux"));
        for bad in ["[\"linux/riscv64\"]", "[\"windows/amd64\"]", "[]", "[\"linux/arm64\", \"linux/arm64/v8\"]"] {
            std::fs::write(&file, format!("[builds]\nplatforms = {bad}\n")).unwrap();
            let err = Config::load(Some(&file), &env(&[])).unwrap_err().to_string();
            assert!(err.contains("platform"), "{bad}: {err}");
        }
    }

    /// A scheduled gc whose window the access marks cannot resolve would
    /// remove images replicas are serving: `strata serve` refuses to start.
    #[test]
    fn scheduled_gc_window_must_span_two_access_mark_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "[gc]\nenabled = true\nolder_than = \"90m\"\n").unwrap();
        let err = Config::load(Some(&file), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("gc.older_than=90m") && err.contains("cache.access_mark_secs"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        std::fs::write(&file, "[gc]\nolder_than = \"90m\"\n").unwrap();
        Config::load(Some(&file), &env(&[])).expect("off: not checked");
        std::fs::write(&file, "[cache]\naccess_mark_secs = 600\n[gc]\nenabled = true\nolder_than = \"20m\"\n").unwrap();
        assert_eq!(Config::load(Some(&file), &env(&[])).unwrap().cache.access_mark_interval().as_secs(), 600);
        std::fs::write(&file, "[cache]\naccess_mark_secs = 0\n").unwrap();
        let err = Config::load(Some(&file), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("cache.access_mark_secs"), "{err}");
    }
}
