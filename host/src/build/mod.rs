//! The pull path in one place:
//! request → plugins (names, source) → Nix → closure graph → grouping plugin
//! → layers → storage → manifest.
//!
//! [`Builder::image`] is what the registry calls for a manifest by tag;
//! everything a build needs is read from top to bottom in [`Builder::build`].

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

pub mod export;
pub mod record;

pub use record::{
    Built, BuiltSbom, Image, ImageSummary, Index, InspectedLayer, Inspection, LayerSummary, Manifest, PlatformSummary,
    SbomRef, Tagged,
};
use record::{image_cache, index_key, record_key, DockerPending, ImageRecord, IndexRecord};

use crate::config::{Config, Platform};
use crate::error::{Error, Result};
use crate::image::compress::{self, Encoding};
use crate::image::layers::{self, FinalLayer, LayerBlob};
use crate::image::manifest::{self, Accepted, Format, LayerDescription};
use crate::nix::{NixOptions, NixRunner, Resolved};
use crate::plugins::{Plugin, PluginSet};
use crate::image::sbom;
use crate::storage::lease::{Acquired, Leases};
use crate::storage::{referrer_key, Storage};
use strata_plugin_sdk::{store_name, ClosureGraph, Expansion, GroupInput, Layers, NixSource, SourceInput, SourceOutput};

/// Observes a build, for the CLI's progress bars; the server sets none.
pub trait Progress: Send + Sync {
    fn stage(&self, _what: &str) {}
    fn layer_start(&self, _index: usize, _nar_size: u64) {}
    fn layer_advance(&self, _index: usize, _bytes: u64) {}
    fn layer_done(&self, _index: usize, _blob: &LayerBlob, _reused: bool) {}
}

/// One run of some work per key at a time: later callers await the first
/// one's result. The work runs in its own task, so a caller hanging up does
/// not cancel what others wait for.
struct Flights<K, T> {
    running: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, Result<T>>>>>>,
}

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Flights { running: Arc::default() }
    }
}

impl<K, T> Flights<K, T>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// `work`'s result, or that of the run of `key` already under way.
    async fn run(&self, key: K, what: &'static str, work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let fut = {
            let mut running = self.running.lock().unwrap();
            running
                .entry(key.clone())
                .or_insert_with(|| {
                    let running = self.running.clone();
                    async move {
                        let result =
                            tokio::spawn(work).await.unwrap_or_else(|e| Err(Error::Internal(format!("{what} task: {e}"))));
                        running.lock().unwrap().remove(&key);
                        result
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        fut.await
    }
}

pub struct Builder {
    cfg: Arc<Config>,
    pub plugins: Arc<PluginSet>,
    pub nix: NixRunner,
    pub storage: Storage,
    /// Which replica builds which image, when several share the store.
    pub leases: Leases,
    popularity: Arc<BTreeMap<String, u64>>,
    /// (name, tag) → built image(s): a warm pull touches neither Nix nor
    /// plugins. Bounded in bytes; entries of mutable sources expire.
    images: moka::sync::Cache<(String, String), Arc<Tagged>>,
    /// Manifests by digest, for clients that re-fetch by digest (Docker).
    /// Kept one access-mark interval, as images are: gc may remove a
    /// manifest's blobs, and a replica that kept serving it would answer
    /// for an image whose layers are gone.
    by_digest: moka::sync::Cache<String, Manifest>,
    /// An image's cache key → its inspection: a repeated `/api/inspect`
    /// runs no Nix. Kept as long as a mutable image is.
    inspections: moka::sync::Cache<String, Arc<Inspection>>,
    /// One build per (name, tag) at a time; later requests await the first.
    inflight: Flights<(String, String), Arc<Tagged>>,
    /// One packing of an image's schema 2 manifest at a time, by its OCI
    /// manifest's digest.
    docker_inflight: Flights<String, Manifest>,
    /// Builds of different images at once, and how many may wait.
    build_slots: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    /// Packing is CPU-bound: at most one layer per core at once.
    pack_slots: Arc<Semaphore>,
    progress: std::sync::OnceLock<Arc<dyn Progress>>,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hex_sha256(bytes: &[u8]) -> String {
    layers::sha256_digest(bytes).trim_start_matches("sha256:").to_string()
}

/// Docker's architecture names → Nix systems.
fn nix_system(arch: &str) -> Result<&'static str> {
    Platform::linux(arch)
        .nix_system()
        .ok_or_else(|| Error::Internal(format!("expansion chose unsupported architecture {arch:?}")))
}

impl Builder {
    pub async fn new(cfg: Arc<Config>) -> anyhow::Result<Arc<Builder>> {
        let storage = Storage::from_config(&cfg)?;
        Builder::with_storage(cfg, storage).await
    }

    /// [`Builder::new`] over a store opened elsewhere: tests put a store that
    /// fails on purpose under a real build.
    pub async fn with_storage(cfg: Arc<Config>, storage: Storage) -> anyhow::Result<Arc<Builder>> {
        let plugins = Arc::new(PluginSet::load(&cfg.plugins)?);
        let nix = NixRunner::new(NixOptions {
            timeout: Duration::from_secs(cfg.nix.timeout_secs),
            work_dir: cfg.nix_work_dir(),
            negative_ttl: Duration::from_secs(cfg.nix.negative_ttl_secs),
        })
        .map_err(|e| anyhow::anyhow!("nix work dir {}: {e}", cfg.nix_work_dir().display()))?;
        let popularity = Arc::new(load_popularity(cfg.nix.popularity_url.as_deref()).await?);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let memory = cfg.cache.memory_mib * 1024 * 1024;
        let mark_interval = cfg.cache.access_mark_interval();
        let build_slots = Arc::new(Semaphore::new(cfg.builds.max_concurrent()));
        let mutable_ttl = Duration::from_secs(cfg.cache.mutable_ttl_secs.max(1));
        let leases = Leases::from_config(storage.clone(), &cfg.storage);
        Ok(Arc::new(Builder {
            cfg,
            plugins,
            nix,
            storage,
            leases,
            popularity,
            images: image_cache(memory / 2),
            by_digest: moka::sync::Cache::builder()
                .max_capacity(memory / 4)
                .weigher(|k: &String, m: &Manifest| (k.len() + m.bytes.len()).try_into().unwrap_or(u32::MAX))
                .time_to_live(mark_interval)
                .build(),
            inspections: moka::sync::Cache::builder()
                .max_capacity(memory / 4)
                .weigher(|_, i: &Arc<Inspection>| i.weight())
                .time_to_live(mutable_ttl)
                .build(),
            inflight: Flights::default(),
            docker_inflight: Flights::default(),
            build_slots,
            waiting: Default::default(),
            pack_slots: Arc::new(Semaphore::new(cores)),
            progress: std::sync::OnceLock::new(),
        }))
    }

    pub fn set_progress(&self, p: Arc<dyn Progress>) {
        let _ = self.progress.set(p);
    }

    fn stage(&self, what: &str) {
        if let Some(p) = self.progress.get() {
            p.stage(what);
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The configuration, shared: for what runs beside the builder (the gc
    /// schedule).
    pub fn config_arc(&self) -> Arc<Config> {
        self.cfg.clone()
    }

    /// The image a client that takes no index gets for a validated name
    /// and tag (the host platform's): see [`Builder::tagged`].
    pub async fn image(self: &Arc<Self>, name: &str, tag: &str) -> Result<Arc<Image>> {
        Ok(self.tagged(name, tag).await?.image().clone())
    }

    /// What a validated name and tag serves, one image or one per platform
    /// with their index: from memory, else from the store's records, else
    /// built; concurrent callers share one build.
    pub async fn tagged(self: &Arc<Self>, name: &str, tag: &str) -> Result<Arc<Tagged>> {
        let key = (name.to_string(), tag.to_string());
        if let Some(tagged) = self.images.get(&key) {
            // Once its access mark is due (`[cache] access_mark_secs`), an
            // image goes the store's way again: `strata gc` may have removed
            // it since.
            let fresh = tagged.expires().is_none_or(|t| t > Instant::now())
                && !tagged.images.iter().any(|(_, img)| self.storage.access_due(&img.oci.digest));
            if fresh {
                crate::ops::metrics::cache("memory");
                return Ok(tagged);
            }
        }
        let this = self.clone();
        let work = async move {
            let result = this.build(&key.0, &key.1).await;
            if let Ok(tagged) = &result {
                this.remember(key.0, key.1, tagged.clone());
            }
            result
        };
        let tagged = self.inflight.run((name.to_string(), tag.to_string()), "build", work).await?;
        // An index's images are marked together: gc keeps them together.
        for (_, img) in &tagged.images {
            self.storage.mark_access(&img.oci.digest);
        }
        Ok(tagged)
    }

    /// The manifest (or index) a client's `Accept` asks for by tag. A
    /// schema 2 one of an image whose layers are not gzip is packed now, on
    /// the first request that needs it ([`compress::docker_copy`]).
    pub async fn manifest(self: &Arc<Self>, name: &str, tag: &str, accepted: Accepted) -> Result<Manifest> {
        let tagged = self.tagged(name, tag).await?;
        if let Some(m) = tagged.manifest(accepted) {
            return Ok(m.clone());
        }
        match (&tagged.index, accepted.index()) {
            (Some(index), Some(Format::Docker)) => {
                futures::future::try_join_all(tagged.images.iter().map(|(_, img)| self.docker_manifest(img))).await?;
                let list = self.index_manifest(Format::Docker, &tagged.images).await?;
                let _ = index.docker.set(list);
                self.put_index_record(&tagged.images, index).await?;
            }
            _ => {
                self.docker_manifest(tagged.image()).await?;
            }
        }
        self.remember(name.to_string(), tag.to_string(), tagged.clone());
        tagged.manifest(accepted).cloned().ok_or_else(|| Error::Internal("schema 2 manifest not set after packing".into()))
    }

    /// An image's schema 2 manifest, packed once (concurrent callers share
    /// the packing, which runs in its own task: a client hanging up does
    /// not waste it).
    async fn docker_manifest(self: &Arc<Self>, image: &Arc<Image>) -> Result<Manifest> {
        if let Some(m) = image.docker.get() {
            return Ok(m.clone());
        }
        let (this, img) = (self.clone(), image.clone());
        let work = async move {
            let m = this.pack_docker(&img).await?;
            let _ = img.docker.set(m.clone());
            Ok(m)
        };
        self.docker_inflight.run(image.oci.digest.clone(), "schema 2", work).await
    }

    /// Packs the schema 2 manifest of an image whose OCI layers are not
    /// gzip: each store-path layer recompressed from its stored blob (so
    /// no Nix store is needed, and each layer is done at most once ever,
    /// as packing is), the final layer's copy made at the build, the shared
    /// config. Noted in the image's record, so that every replica serves it
    /// from then on; under a build slot, as it is a build's worth of work.
    async fn pack_docker(&self, image: &Image) -> Result<Manifest> {
        let missing = || Error::Internal(format!("image {} has no schema 2 manifest nor the parts of one", image.oci.digest));
        let pending = image.docker_pending.as_ref().ok_or_else(missing)?;
        let to = compress::docker_copy(&self.cfg.layers).ok_or_else(missing)?;
        let _slot = self.build_slot().await?;
        let layers = &image.summary.layers;
        let diff_ids = manifest::config_diff_ids(&self.storage.get_blob_bytes(&pending.config).await?.ok_or_else(missing)?)?;
        if diff_ids.len() != layers.len() {
            return Err(missing());
        }
        let copies = futures::future::join_all(
            layers[..layers.len() - 1].iter().zip(&diff_ids).enumerate().map(|(i, (l, diff_id))| self.layer_copy(i, l, diff_id, to)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        let blobs: Vec<LayerBlob> = copies.into_iter().chain([pending.final_layer.clone()]).collect();
        let docker = self.put_manifest(Format::Docker, (&pending.config, pending.config_size), &blobs, &BTreeMap::new()).await?;
        let artifact = match (&image.sbom, self.cfg.sbom.enabled) {
            (Some(s), true) => Some(self.refer_sbom((&s.digest, s.size), &docker).await?),
            _ => None,
        };
        // Read again: the store's record is the one replicas share.
        if let Some(bytes) = self.storage.get_bytes(&image.record_key).await? {
            if let Ok(mut record) = serde_json::from_slice::<ImageRecord>(&bytes) {
                record.docker = Some(docker.digest.clone());
                record.docker_pending = None;
                if let (Some(s), Some(a)) = (record.sbom.as_mut(), artifact) {
                    if !s.manifests.contains(&a) {
                        s.manifests.push(a);
                    }
                }
                let bytes = serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))?;
                self.storage.put_bytes(&image.record_key, Bytes::from(bytes)).await?;
            }
        }
        tracing::info!(manifest = %docker.digest, oci = %image.oci.digest, layers = blobs.len(), "schema 2 manifest packed");
        Ok(docker)
    }

    /// Drops from memory what gc just removed from the store (`digests`:
    /// the removed blobs): images whose manifests went, so that their next
    /// request rebuilds them, and manifests by digest, so that none is
    /// served whose layers are gone.
    pub fn forget_removed(&self, digests: &std::collections::HashSet<String>) {
        if digests.is_empty() {
            return;
        }
        let gone: Vec<(String, String)> = self
            .images
            .iter()
            .filter(|(_, tagged)| tagged.manifests().iter().any(|m| digests.contains(&m.digest)))
            .map(|(key, _)| (*key).clone())
            .collect();
        for key in gone {
            if let Some(tagged) = self.images.remove(&key) {
                for (_, img) in &tagged.images {
                    self.storage.forget_access(&img.oci.digest);
                }
            }
        }
        for digest in digests {
            self.by_digest.invalidate(digest);
        }
    }

    fn remember(&self, name: String, tag: String, tagged: Arc<Tagged>) {
        for m in tagged.manifests() {
            self.by_digest.insert(m.digest.clone(), m.clone());
        }
        self.images.insert((name, tag), tagged);
    }

    /// Waits for a build slot, or refuses at once when too many wait: a
    /// burst of distinct new images must not pile up unbounded Nix work.
    async fn build_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering;
        if let Ok(permit) = self.build_slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.cfg.builds.queue_limit {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Busy { retry_after_secs: 10 });
        }
        let permit = self.build_slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|e| Error::Internal(e.to_string()))
    }

    /// A manifest by digest: from memory, else from the blob store.
    pub async fn manifest_by_digest(&self, digest: &str) -> Result<Manifest> {
        if let Some(m) = self.by_digest.get(digest) {
            return Ok(m);
        }
        let bytes = self
            .storage
            .get_blob_bytes(digest)
            .await?
            .ok_or_else(|| Error::ManifestUnknown(digest.to_string()))?;
        let media_type = match manifest::declared_media_type(&bytes).as_deref() {
            Some(manifest::OCI_MANIFEST) => manifest::OCI_MANIFEST,
            Some(manifest::DOCKER_MANIFEST) => manifest::DOCKER_MANIFEST,
            Some(manifest::OCI_INDEX) => manifest::OCI_INDEX,
            Some(manifest::DOCKER_LIST) => manifest::DOCKER_LIST,
            _ => return Err(Error::ManifestUnknown(digest.to_string())),
        };
        let m = Manifest { bytes, digest: digest.to_string(), media_type };
        self.by_digest.insert(digest.to_string(), m.clone());
        Ok(m)
    }

    /// Names and source through the plugins, for the host's platform: the
    /// part of a build that runs even when the image turns out to be stored
    /// already.
    pub async fn plan(&self, name: &str, tag: &str) -> Result<Plan> {
        self.plan_for(name, tag, &Platform::host().arch).await
    }

    /// [`Builder::plan`] for the platform of architecture `arch`, unless the
    /// name chooses another (`arm64/…`): the plan's expansion says which.
    pub async fn plan_for(&self, name: &str, tag: &str, arch: &str) -> Result<Plan> {
        let segments: Vec<String> = name.split('/').map(str::to_string).collect();
        let expand = self.plugins.expand_for(&segments, tag, arch);
        let mut expansion = timed("expand chain", "expand_names", expand).await?;
        // Sorted, as Nixery does: `git/shell` and `shell/git` are one image,
        // byte for byte, whichever a replica happened to build first (the
        // symlink forest's "first package wins" then follows this order).
        expansion.packages.sort();
        expansion.packages.dedup();
        let mut seen = std::collections::HashSet::new();
        expansion.optional.retain(|o| seen.insert(o.clone()) && expansion.packages.binary_search(o).is_err());
        if expansion.packages.is_empty() {
            return Err(Error::NameInvalid(format!("{name} names no packages")));
        }
        if expansion.packages.len() > self.cfg.max_packages {
            return Err(Error::NameInvalid(format!(
                "{} packages requested, at most {} allowed",
                expansion.packages.len(),
                self.cfg.max_packages
            )));
        }
        let system = nix_system(&expansion.arch)?;
        let source_plugin = &self.plugins.source;
        let source = timed(
            source_plugin.name(),
            "render_source",
            source_plugin.render_source(SourceInput { config: serde_json::Value::Null, tag: tag.to_string() }),
        )
        .await?;
        let grouper = self.plugins.grouper_for(name, tag).clone();
        let cache_key = self.cache_key(&expansion, &source, &grouper);
        Ok(Plan { expansion, system, source, grouper, cache_key })
    }

    /// What `/tags/list` names: `latest` when the source resolves it. The
    /// revisions a git source also resolves are not listed: there is no
    /// end to them, and listing them would mean asking the repository.
    pub async fn tags(&self) -> Result<Vec<&'static str>> {
        let source = &self.plugins.source;
        let input = SourceInput { config: serde_json::Value::Null, tag: "latest".into() };
        match timed(source.name(), "render_source", source.render_source(input)).await {
            Ok(_) => Ok(vec!["latest"]),
            Err(f) if f.code == Some(crate::error::PluginCode::ManifestUnknown) => Ok(vec![]),
            Err(f) => Err(f.into()),
        }
    }

    /// Everything that decides an image's bytes, hashed: the same key on any
    /// replica means the same manifests.
    fn cache_key(&self, e: &Expansion, s: &SourceOutput, grouper: &Plugin) -> String {
        let mut plugins: Vec<&str> = self.plugins.expand.iter().map(|p| p.digest()).collect();
        plugins.push(grouper.digest());
        plugins.push(self.plugins.source.digest());
        // v2: the final layer gained /usr/bin/env and /bin/sh.
        let mut key = serde_json::json!({
            "v": 2,
            "source": s.identity,
            "packages": e.packages,
            "optional": e.optional,
            "arch": e.arch,
            "image": e.image,
            "plugins": plugins,
            "budget": self.cfg.layers.budget,
            "encodings": self.encoding_ids(),
        });
        if let Some(allow) = &s.allow_unfree {
            key["allow_unfree"] = serde_json::json!(allow);
        }
        hex_sha256(key.to_string().as_bytes())
    }

    /// The byte formats layers are packed in, OCI's first (see
    /// [`crate::config::LayersConfig::encodings`]).
    fn encoding_ids(&self) -> Vec<String> {
        crate::image::compress::encodings(&self.cfg.layers).iter().map(|e| e.format_id()).collect()
    }

    /// The platforms a name is built for, each with its plan, in the
    /// index's order: every `[builds] platforms` entry, or one when only
    /// one is configured or the name chose its architecture (`arm64/…`,
    /// Nixery's meaning: one image of it, no index).
    async fn targets(&self, name: &str, tag: &str) -> Result<Vec<(Platform, Plan)>> {
        let platforms = &self.cfg.builds.platforms;
        let plans =
            futures::future::try_join_all(platforms.iter().map(|p| self.plan_for(name, tag, &p.arch))).await?;
        let chosen = plans.iter().zip(platforms).position(|(plan, p)| plan.expansion.arch != p.arch);
        let mut targets: Vec<(Platform, Plan)> = platforms.iter().cloned().zip(plans).collect();
        if platforms.len() == 1 || chosen.is_some() {
            let (_, plan) = targets.swap_remove(chosen.unwrap_or(0));
            return Ok(vec![(Platform::linux(&plan.expansion.arch), plan)]);
        }
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(targets)
    }

    async fn build(self: &Arc<Self>, name: &str, tag: &str) -> Result<Arc<Tagged>> {
        // 1. Plugins: which packages, for which architecture, from where;
        //    once per platform.
        let targets = self.targets(name, tag).await?;
        if let [(platform, plan)] = &targets[..] {
            return Ok(Arc::new(Tagged::single(platform.clone(), self.platform_image(name, tag, plan).await?)));
        }
        // 2–6 for every platform at once, each in a build slot of its own.
        // All run to their end: a platform that failed leaves the others'
        // images recorded, and the retry builds only what failed.
        let built = futures::future::join_all(targets.iter().map(|(platform, plan)| async move {
            let image = self.platform_image(name, tag, plan).await.map_err(|e| e.for_platform(&platform.to_string()))?;
            Ok::<_, Error>((platform.clone(), image))
        }))
        .await;
        let images = built.into_iter().collect::<Result<Vec<_>>>()?;
        // 7. The index over them, the same bytes wherever they are served.
        let index = self.store_index(&images).await?;
        Ok(Arc::new(Tagged { images, index: Some(index) }))
    }

    /// The OCI index over one image per platform, and the Docker manifest
    /// list once all their schema 2 manifests exist, stored with the record
    /// that lets gc keep them as long as it keeps all of those images.
    async fn store_index(&self, images: &[(Platform, Arc<Image>)]) -> Result<Index> {
        let index = Index { oci: self.index_manifest(Format::Oci, images).await?, docker: Default::default() };
        if images.iter().all(|(_, i)| i.docker.get().is_some()) {
            let _ = index.docker.set(self.index_manifest(Format::Docker, images).await?);
        }
        self.put_index_record(images, &index).await?;
        Ok(index)
    }

    /// One family's index over `images`, whose manifests of that family
    /// all exist. Put every time the tag is assembled: gc may have removed
    /// the blob while its images stayed in memory.
    async fn index_manifest(&self, format: Format, images: &[(Platform, Arc<Image>)]) -> Result<Manifest> {
        let entries = images
            .iter()
            .map(|(platform, img)| {
                let m = img.manifest(format).ok_or_else(|| Error::Internal("index over a missing manifest".into()))?;
                Ok(manifest::IndexEntry { platform, digest: &m.digest, size: m.bytes.len() as u64 })
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = Bytes::from(manifest::index_json(format, &entries)?);
        let digest = self.storage.put_blob(bytes.clone()).await?;
        Ok(Manifest { bytes, digest, media_type: format.index_media_type() })
    }

    async fn put_index_record(&self, images: &[(Platform, Arc<Image>)], index: &Index) -> Result<()> {
        let record = IndexRecord {
            docker: index.docker.get().map(|m| m.digest.clone()),
            oci: index.oci.digest.clone(),
            manifests: images.iter().flat_map(|(_, i)| i.manifests().map(|m| m.digest.clone())).collect(),
        };
        let record = serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))?;
        self.storage.put_bytes(&index_key(&index.oci.digest), Bytes::from(record)).await
    }

    /// One platform's image (the whole pull path when one platform is
    /// configured): from the store's records, else built.
    async fn platform_image(&self, name: &str, tag: &str, plan: &Plan) -> Result<Arc<Image>> {
        let record_key = record_key(&plan.cache_key);
        if let Some(img) = self.load_record(&record_key).await? {
            crate::ops::metrics::cache("store");
            return Ok(img);
        }
        // Another replica may be building the same image on the same store.
        let _lease = match self.leases.lease(&plan.cache_key, || self.load_record(&record_key)).await? {
            Acquired::Held(lease) => lease,
            Acquired::Published(img) => {
                crate::ops::metrics::cache("store");
                return Ok(img);
            }
        };
        let _slot = self.build_slot().await?;
        crate::ops::metrics::cache("built");
        let started = Instant::now();
        let result = self.build_new(name, tag, plan, &record_key).await;
        crate::ops::metrics::build(started.elapsed(), result.is_ok());
        result
    }

    async fn build_new(&self, name: &str, tag: &str, plan: &Plan, record_key: &str) -> Result<Arc<Image>> {
        tracing::info!(%name, %tag, arch = %plan.expansion.arch, packages = ?plan.expansion.packages, source = %plan.source.identity, "building image");

        // 2. Nix builds the packages; 3. the grouping plugin splits their
        //    closure into layers.
        self.stage("building packages with Nix");
        let (resolved, grouping) = self.resolve_and_group(plan).await?;

        // 4. Layers: pack each group (in parallel, each one at most once
        //    ever) in OCI's encoding, then the final layer with the symlink
        //    forest in every encoding (it is small).
        let layer_paths = grouping.named(&resolved.graph);
        let layer_nars = nar_sizes(&resolved.graph, &grouping);
        self.stage("packing layers");
        // All of them run to their end even when one fails: a layer dropped
        // mid-way would leave its staged bytes behind (its packing thread
        // cannot be cancelled), one that ends discards or publishes them.
        let packed = futures::future::join_all(
            layer_paths.iter().zip(&layer_nars).enumerate().map(|(i, (paths, &nar))| self.store_path_layer(i, paths.clone(), nar)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        let roots = resolved.roots.clone();
        let closure: Vec<String> = resolved.graph.paths.iter().map(|p| p.path.clone()).collect();
        let account = plan.expansion.image.account.clone();
        let encodings = compress::encodings(&self.cfg.layers);
        let (ca_bundle, final_blobs, final_bytes) = tokio::task::spawn_blocking(move || {
            let mut forest = FinalLayer::new(&roots, &closure)?;
            if let Some(a) = &account {
                forest.add_account(a);
            }
            let (blobs, bytes) = forest.pack(&encodings, vec![Vec::new(); encodings.len()])?;
            Ok::<_, std::io::Error>((forest.ca_bundle(), blobs, bytes))
        })
        .await
        .map_err(|e| Error::Internal(format!("final layer task: {e}")))??;
        for bytes in final_bytes {
            self.storage.put_blob(Bytes::from(bytes)).await?;
        }
        let final_blob = final_blobs[0].clone();

        // One description per layer in the OCI manifest's encoding; the
        // config (diff_ids, history) is the same for every encoding.
        let mut descriptions: Vec<LayerDescription> = packed
            .iter()
            .zip(&layer_paths)
            .map(|(blob, paths)| LayerDescription {
                blob: blob.clone(),
                created_by: format!("strata {}: {}", grouping.strategy, store_names(paths)),
            })
            .collect();
        descriptions.push(LayerDescription {
            blob: final_blob.clone(),
            created_by: format!("strata: symlinks to {}", resolved.packages.join(", ")),
        });

        // 5. Config and manifests, stored by content.
        let mut env = vec!["PATH=/bin:/usr/bin:/sbin:/usr/sbin".to_string()];
        if let Some(ca) = ca_bundle {
            env.push(format!("SSL_CERT_FILE={ca}"));
        }
        // Where the packages came from, on the image itself (Nixery's #3,
        // #27): the host's labels replace a plugin's of the same key.
        let provenance = provenance(&plan.source.source, resolved.revision.as_deref());
        let mut settings = plan.expansion.image.clone();
        settings.labels.extend(provenance.clone());
        let config = manifest::config_json(&manifest::ConfigInput {
            arch: &plan.expansion.arch,
            layers: &descriptions,
            env,
            settings: &settings,
        })?;
        let config_size = config.len() as u64;
        let config_digest = self.storage.put_blob(Bytes::from(config)).await?;
        // The schema 2 manifest now if the layers are gzip, else when a
        // client first asks for it (`Builder::manifest`): what it needs
        // besides the layers' copies is recorded.
        let oci_blobs: Vec<LayerBlob> = descriptions.iter().map(|d| d.blob.clone()).collect();
        let config_ref = (config_digest.as_str(), config_size);
        let oci = self.put_manifest(Format::Oci, config_ref, &oci_blobs, &provenance).await?;
        let (docker, docker_pending) = match final_blobs.get(1) {
            None => (Some(self.put_manifest(Format::Docker, config_ref, &oci_blobs, &provenance).await?), None),
            Some(copy) => {
                (None, Some(DockerPending { config: config_digest.clone(), config_size, final_layer: copy.clone() }))
            }
        };

        // 6. The SBOM, before the record: a recorded image has one.
        let sbom = match self.cfg.sbom.enabled {
            true => Some(self.store_sbom(plan, &resolved, std::iter::once(&oci).chain(&docker)).await?),
            false => None,
        };

        let mut layer_summaries: Vec<LayerSummary> = packed
            .iter()
            .zip(layer_paths.iter().zip(&layer_nars))
            .map(|(blob, (paths, &nar_size))| LayerSummary {
                digest: blob.digest.clone(),
                size: blob.size,
                nar_size,
                paths: paths.clone(),
            })
            .collect();
        layer_summaries.push(LayerSummary {
            digest: final_blob.digest.clone(),
            size: final_blob.size,
            nar_size: 0,
            paths: vec![],
        });
        let record = ImageRecord {
            oci: oci.digest.clone(),
            docker: docker.as_ref().map(|m| m.digest.clone()),
            docker_pending: docker_pending.clone(),
            built_at: now_unix(),
            immutable: plan.source.immutable,
            gc_root: resolved.gc_root.clone(),
            sbom,
            summary: ImageSummary {
                packages: resolved.packages.clone(),
                arch: plan.expansion.arch.clone(),
                source: plan.source.identity.clone(),
                revision: resolved.revision.clone(),
                strategy: grouping.strategy.clone(),
                grouping_plugin: plan.grouper.name().to_string(),
                layers: layer_summaries,
            },
        };
        let record_bytes = serde_json::to_vec(&record).map_err(|e| Error::Internal(e.to_string()))?;
        self.storage.put_bytes(record_key, Bytes::from(record_bytes)).await?;
        tracing::info!(%name, %tag, layers = descriptions.len(), manifest = %record.oci, "image built");
        Ok(Arc::new(Image {
            oci,
            docker: docker.map_or_else(Default::default, Into::into),
            expires: self.expiry(&record),
            summary: record.summary,
            sbom: record.sbom,
            record_key: record_key.to_string(),
            docker_pending,
        }))
    }

    /// A manifest of `format` over these layers, stored by content.
    async fn put_manifest(
        &self,
        format: Format,
        config: (&str, u64),
        layers: &[LayerBlob],
        annotations: &BTreeMap<String, String>,
    ) -> Result<Manifest> {
        let bytes = Bytes::from(manifest::annotated_manifest_json(format, config, layers, annotations)?);
        let digest = self.storage.put_blob(bytes.clone()).await?;
        Ok(Manifest { bytes, digest, media_type: format.media_type() })
    }

    /// Writes the SBOM of a build: the document, the empty config, and for
    /// each image manifest an artifact manifest naming it as `subject`,
    /// recorded as that manifest's referrer.
    async fn store_sbom(
        &self,
        plan: &Plan,
        resolved: &Resolved,
        manifests: impl Iterator<Item = &Manifest>,
    ) -> Result<SbomRef> {
        let doc = sbom::document(&sbom::SbomInput {
            described: &resolved.described,
            graph: &resolved.graph,
            nar_hashes: &resolved.nar_hashes,
            arch: &plan.expansion.arch,
            source: &plan.source.identity,
            revision: resolved.revision.as_deref(),
            plugins: &self.plugin_names(plan),
        })?;
        let size = doc.len() as u64;
        let digest = self.storage.put_blob(Bytes::from(doc)).await?;
        let mut artifacts = Vec::new();
        for m in manifests {
            artifacts.push(self.refer_sbom((&digest, size), m).await?);
        }
        Ok(SbomRef { digest, size, manifests: artifacts })
    }

    /// Makes the SBOM document `doc` a referrer of manifest `m`: an
    /// artifact manifest naming `m` as its subject, and the record the
    /// referrers API lists. Returns the artifact manifest's digest.
    async fn refer_sbom(&self, doc: (&str, u64), m: &Manifest) -> Result<String> {
        self.storage.put_blob(Bytes::from_static(manifest::EMPTY_CONFIG)).await?;
        let subject = (m.media_type, m.digest.as_str(), m.bytes.len() as u64);
        let bytes = manifest::artifact_manifest_json(sbom::MEDIA_TYPE, doc, subject)?;
        let len = bytes.len() as u64;
        let artifact = self.storage.put_blob(Bytes::from(bytes)).await?;
        let descriptor = manifest::referrer_descriptor(sbom::MEDIA_TYPE, &artifact, len)?;
        let record = serde_json::to_vec(&descriptor).map_err(|e| Error::Internal(e.to_string()))?;
        self.storage.put_bytes(&referrer_key(&m.digest, &artifact), Bytes::from(record)).await?;
        Ok(artifact)
    }

    /// The plugins that decided an image, for its SBOM's creation info.
    fn plugin_names(&self, plan: &Plan) -> Vec<String> {
        let mut names: Vec<String> = self.plugins.expand.iter().map(|p| format!("expand: {}", p.name())).collect();
        names.push(format!("source: {}", self.plugins.source.name()));
        names.push(format!("group: {}", plan.grouper.name()));
        names
    }

    /// The referrers API's answer for a manifest digest: an image index of
    /// the artifacts naming it, those of `artifact_type` when given. A
    /// digest nothing refers to (or that Strata never served) gets an empty
    /// index, as distribution-spec 1.1 asks.
    pub async fn referrers(&self, digest: &str, artifact_type: Option<&str>) -> Result<Vec<u8>> {
        let mut found = match self.cfg.sbom.enabled {
            true => self.storage.referrers_of(digest).await?,
            false => Vec::new(),
        };
        if let Some(t) = artifact_type {
            found.retain(|d| d.get("artifactType").and_then(|v| v.as_str()) == Some(t));
        }
        manifest::referrers_index_json(found)
    }

    /// Nix, then the grouping plugin: shared by builds and by `inspect`,
    /// which stops here.
    async fn resolve_and_group(&self, plan: &Plan) -> Result<(Resolved, Layers)> {
        let e = &plan.expansion;
        let resolved = self
            .nix
            .resolve_allowing(&plan.source.source, plan.source.allow_unfree.as_ref(), &e.packages, &e.optional, plan.system)
            .await?;
        // One layer of the budget is the host's own final layer.
        let mut graph = resolved.graph.clone();
        graph.set_popularity(&self.popularity);
        let input = GroupInput { config: serde_json::Value::Null, graph, budget: self.cfg.layers.budget - 1 };
        let grouping = timed(plan.grouper.name(), "group_layers", plan.grouper.group_layers(input)).await?;
        Ok((resolved, grouping))
    }

    /// What an image would hold and how it would be layered, without
    /// packing: the host platform's in full (else the first's), and a
    /// summary of every platform the name is built for.
    pub async fn inspect(&self, name: &str, tag: &str) -> Result<Inspection> {
        let targets = self.targets(name, tag).await?;
        let several = targets.len() > 1;
        let inspections = futures::future::try_join_all(targets.into_iter().map(|(platform, plan)| async move {
            match self.inspect_plan(name, tag, plan).await {
                Ok(i) => Ok((platform, i)),
                Err(e) if several => Err(e.for_platform(&platform.to_string())),
                Err(e) => Err(e),
            }
        }))
        .await?;
        let platforms: Vec<PlatformSummary> = inspections
            .iter()
            .map(|(platform, i)| PlatformSummary {
                platform: platform.to_string(),
                arch: i.arch.clone(),
                closure_paths: i.closure.len(),
                closure_nar_size: i.closure.iter().map(|p| p.nar_size).sum(),
                layers: i.layers.len() + 1,
                built: i.built.clone(),
            })
            .collect();
        let host = Platform::host();
        let pick = inspections.iter().position(|(p, _)| p.arch == host.arch).unwrap_or(0);
        let (_, mut inspection) = inspections.into_iter().nth(pick).expect("a platform");
        inspection.platforms = platforms;
        Ok(inspection)
    }

    /// One platform's inspection. Remembered as images are, and run under
    /// the builds' limit (`builds.max_concurrent`): an inspection runs Nix
    /// as a build does.
    async fn inspect_plan(&self, name: &str, tag: &str, plan: Plan) -> Result<Inspection> {
        if let Some(found) = self.remembered_inspection(name, tag, &plan.cache_key).await? {
            return Ok(found);
        }
        let _slot = self.build_slot().await?;
        // Asked for by another request while this one waited for its slot.
        if let Some(found) = self.remembered_inspection(name, tag, &plan.cache_key).await? {
            return Ok(found);
        }
        let (resolved, grouping) = self.resolve_and_group(&plan).await?;
        let layers = grouping
            .named(&resolved.graph)
            .into_iter()
            .zip(nar_sizes(&resolved.graph, &grouping))
            .map(|(paths, nar_size)| InspectedLayer { nar_size, paths })
            .collect();
        let built = self.built(name, &plan.cache_key).await?;
        let inspection = Inspection {
            built,
            name: name.to_string(),
            tag: tag.to_string(),
            packages: resolved.packages,
            arch: plan.expansion.arch,
            source: plan.source.identity,
            revision: resolved.revision,
            immutable: plan.source.immutable,
            grouping_plugin: plan.grouper.name().to_string(),
            strategy: grouping.strategy,
            roots: resolved.roots,
            closure: resolved.graph.paths,
            layers,
            platforms: Vec::new(),
        };
        self.inspections.insert(plan.cache_key.clone(), Arc::new(inspection.clone()));
        Ok(inspection)
    }

    /// A remembered inspection of the image `cache_key` names, for this
    /// name and tag (another name may mean the same image), with what the
    /// store now holds of it (it may have been built, or collected, since).
    async fn remembered_inspection(&self, name: &str, tag: &str, cache_key: &str) -> Result<Option<Inspection>> {
        let Some(inspection) = self.inspections.get(cache_key) else { return Ok(None) };
        let mut inspection = (*inspection).clone();
        inspection.name = name.to_string();
        inspection.tag = tag.to_string();
        inspection.built = self.built(name, cache_key).await?;
        Ok(Some(inspection))
    }

    /// What the store holds of an inspected image, if it was built.
    async fn built(&self, name: &str, cache_key: &str) -> Result<Option<Built>> {
        let Some(bytes) = self.storage.get_bytes(&record_key(cache_key)).await? else { return Ok(None) };
        let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else { return Ok(None) };
        let sbom = record.sbom.filter(|_| self.cfg.sbom.enabled).map(|s| BuiltSbom {
            blob_url: format!("/v2/{name}/blobs/{}", s.digest),
            referrers_url: format!("/v2/{name}/referrers/{}", record.oci),
            digest: s.digest,
            size: s.size,
        });
        Ok(Some(Built { manifest: record.oci, docker_manifest: record.docker, sbom }))
    }

    fn expiry(&self, record: &ImageRecord) -> Option<Instant> {
        if record.immutable {
            return None;
        }
        let age = now_unix().saturating_sub(record.built_at);
        let left = self.cfg.cache.mutable_ttl_secs.saturating_sub(age);
        Some(Instant::now() + Duration::from_secs(left))
    }

    /// An image some replica built before, if its record is still fresh and
    /// its manifests are still stored.
    async fn load_record(&self, key: &str) -> Result<Option<Arc<Image>>> {
        let Some(bytes) = self.storage.get_bytes(key).await? else { return Ok(None) };
        let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else { return Ok(None) };
        // Built before the SBOM was on: built again, so that every image
        // served has one (its layers are reused, only the SBOM is new).
        if self.cfg.sbom.enabled && record.sbom.is_none() {
            return Ok(None);
        }
        let expires = self.expiry(&record);
        if expires.is_some_and(|t| t <= Instant::now()) {
            return Ok(None);
        }
        let Ok(oci) = self.manifest_by_digest(&record.oci).await else { return Ok(None) };
        let docker = match (&record.docker, &record.docker_pending) {
            (Some(digest), _) => match self.manifest_by_digest(digest).await {
                Ok(m) => m.into(),
                Err(_) => return Ok(None),
            },
            (None, Some(_)) => Default::default(),
            (None, None) => return Ok(None),
        };
        Ok(Some(Arc::new(Image {
            oci,
            docker,
            expires,
            summary: record.summary,
            sbom: record.sbom,
            record_key: key.to_string(),
            docker_pending: record.docker_pending,
        })))
    }

    /// Packs one group of store paths in OCI's encoding, unless the same
    /// set was packed so before (by any image, on any replica): the record
    /// maps the sorted path set and the byte format to the blob.
    async fn store_path_layer(&self, index: usize, mut paths: Vec<String>, nar_size: u64) -> Result<LayerBlob> {
        paths.sort();
        let encoding = compress::primary(&self.cfg.layers);
        let owned = paths.clone();
        self.stored_layer(index, &paths, nar_size, encoding, move |out, advance| {
            let (mut blobs, mut outs) = layers::pack_store_paths(&owned, &[encoding], vec![out], advance)?;
            Ok((blobs.pop().expect("one encoding"), outs.pop().expect("one writer")))
        })
        .await
    }

    /// A store-path layer of an image in encoding `to`, recompressed from
    /// its stored blob ([`layers::recompress`]) unless made before: it has
    /// the record a packing of the same paths in `to` would have.
    async fn layer_copy(&self, index: usize, layer: &LayerSummary, diff_id: &str, to: Encoding) -> Result<LayerBlob> {
        let mut paths = layer.paths.clone();
        paths.sort();
        let (from, diff_id) = (compress::primary(&self.cfg.layers).codec, diff_id.to_string());
        let (storage, digest) = (self.storage.clone(), layer.digest.clone());
        self.stored_layer(index, &paths, layer.nar_size, to, move |out, advance| {
            // Opened here, not before: a copy made earlier reads nothing.
            let (_, stream) = tokio::runtime::Handle::current()
                .block_on(storage.get_blob(&digest, None))
                .map_err(|e| std::io::Error::other(format!("reading {digest}: {e}")))?;
            let blob = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
            layers::recompress(std::io::BufReader::new(blob), from, &diff_id, to, out, advance)
        })
        .await
    }

    /// The layer of the sorted store paths `paths` in `encoding`: the blob
    /// the layer record names, when it is still stored, else what `pack`
    /// writes (on a blocking thread, holding a packing slot), published
    /// only once its digest is checked, then recorded.
    async fn stored_layer(
        &self,
        index: usize,
        paths: &[String],
        nar_size: u64,
        encoding: Encoding,
        pack: impl FnOnce(StagingBridge, &mut dyn FnMut(u64)) -> std::io::Result<(LayerBlob, StagingBridge)> + Send + 'static,
    ) -> Result<LayerBlob> {
        let progress = self.progress.get().cloned();
        let key = format!(
            "meta/layers/{}.json",
            hex_sha256(serde_json::json!({ "paths": paths, "formats": [encoding.format_id()] }).to_string().as_bytes())
        );
        // The record is the blob's description (older ones also list other
        // encodings' blobs, which are not read).
        if let Some(bytes) = self.storage.get_bytes(&key).await? {
            if let Ok(blob) = serde_json::from_slice::<LayerBlob>(&bytes) {
                if self.storage.blob_size(&blob.digest).await? == Some(blob.size) {
                    if let Some(p) = &progress {
                        p.layer_done(index, &blob, true);
                    }
                    return Ok(blob);
                }
            }
        }
        let _slot = self.pack_slots.clone().acquire_owned().await.map_err(|e| Error::Internal(e.to_string()))?;
        let (staging, writer) = self.storage.staging_writer();
        if let Some(p) = &progress {
            p.layer_start(index, nar_size);
        }
        let observer = progress.clone();
        let packed = tokio::task::spawn_blocking(move || {
            let mut advance = |n: u64| {
                if let Some(p) = &observer {
                    p.layer_advance(index, n)
                }
            };
            let (blob, mut bridge) = pack(tokio_util::io::SyncIoBridge::new(writer), &mut advance)?;
            bridge.shutdown()?;
            Ok::<_, std::io::Error>(blob)
        })
        .await
        .map_err(|e| Error::Internal(format!("packing task: {e}")))
        // A full disk is 507, not a bug (Error::storage looks for ENOSPC).
        .and_then(|packed| packed.map_err(|e| Error::storage("packing layer", &e)));
        let blob = match packed {
            Ok(blob) => blob,
            Err(e) => {
                self.storage.discard(&staging).await;
                return Err(e);
            }
        };
        self.storage.publish(&staging, &blob.digest, blob.size).await?;
        let record = serde_json::to_vec(&blob).map_err(|e| Error::Internal(e.to_string()))?;
        self.storage.put_bytes(&key, Bytes::from(record)).await?;
        if let Some(p) = &progress {
            p.layer_done(index, &blob, false);
        }
        Ok(blob)
    }
}

/// The blocking side of a staging writer, as packers write to it.
type StagingBridge = tokio_util::io::SyncIoBridge<crate::storage::StagingWriter>;

/// The plugins' decisions for one request.
pub struct Plan {
    pub expansion: Expansion,
    pub system: &'static str,
    pub source: SourceOutput,
    pub grouper: Arc<Plugin>,
    pub cache_key: String,
}

/// The OCI labels (and manifest annotations) naming an image's source and
/// the commit it was built from: a git or flake source's URL as configured,
/// nixpkgs' repository for a channel; the revision where Nix told it. A
/// path source has neither.
fn provenance(source: &NixSource, revision: Option<&str>) -> BTreeMap<String, String> {
    let url = match source {
        NixSource::Channel { .. } => Some("https://github.com/NixOS/nixpkgs"),
        NixSource::Git { url, .. } | NixSource::Flake { url, .. } => Some(url.as_str()),
        NixSource::Path { .. } => None,
    };
    let mut labels = BTreeMap::new();
    if let Some(url) = url {
        labels.insert("org.opencontainers.image.source".to_string(), url.to_string());
        if let Some(rev) = revision {
            labels.insert("org.opencontainers.image.revision".to_string(), rev.to_string());
        }
    }
    labels
}

/// Times a plugin call into the metrics.
async fn timed<T, E>(
    plugin: &str,
    hook: &'static str,
    call: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, E> {
    let started = Instant::now();
    let result = call.await;
    crate::ops::metrics::plugin_call(plugin, hook, started.elapsed(), result.is_ok());
    result
}

/// Each layer's NAR bytes, summed over the indices the grouping names its
/// paths by (checked against the graph before this).
fn nar_sizes(graph: &ClosureGraph, grouping: &Layers) -> Vec<u64> {
    grouping
        .layers
        .iter()
        .map(|l| l.iter().filter_map(|&i| graph.paths.get(i as usize)).map(|p| p.nar_size).sum())
        .collect()
}

/// `bash-5.2, coreutils-9.1, …` for a history entry.
fn store_names(paths: &[String]) -> String {
    const SHOWN: usize = 8;
    let names: Vec<&str> = paths.iter().map(|p| store_name(p)).collect();
    let mut s = names.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Popularity data as Nixery publishes it: a JSON map name → count, from a
/// file or an http(s) URL. None configured: every count is 0.
async fn load_popularity(url: Option<&str>) -> anyhow::Result<BTreeMap<String, u64>> {
    let Some(url) = url else { return Ok(BTreeMap::new()) };
    let bytes: Vec<u8> = if url.starts_with("http://") || url.starts_with("https://") {
        let resp = reqwest::get(url).await.map_err(|e| anyhow::anyhow!("NIX_POPULARITY_URL {url}: {e}"))?;
        resp.error_for_status()
            .map_err(|e| anyhow::anyhow!("NIX_POPULARITY_URL {url}: {e}"))?
            .bytes()
            .await?
            .to_vec()
    } else {
        let path = url.strip_prefix("file://").unwrap_or(url);
        std::fs::read(path).map_err(|e| anyhow::anyhow!("NIX_POPULARITY_URL {url}: {e}"))?
    };
    serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("NIX_POPULARITY_URL {url}: not a JSON map of counts: {e}"))
}
