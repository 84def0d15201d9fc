//! What a build produces and the store keeps: an image (its two manifests,
//! the Docker one perhaps still to be packed; summary and SBOM), the records that let any replica serve it again
//! without Nix or plugins, what `strata inspect` shows, and the memory
//! cache of images. Plain data: the pull path (`build/mod.rs`) fills it,
//! the registry, the web page and `strata build --output` read it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_plugin_sdk::StorePath;

use crate::config::Platform;
use crate::image::layers::LayerBlob;
use crate::image::manifest::{Accepted, Format};

/// A manifest as served: its bytes and their digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub digest: String,
    pub media_type: &'static str,
}

/// What the web page and `strata inspect` show of an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    pub packages: Vec<String>,
    pub arch: String,
    pub source: String,
    /// The commit the source was fetched at, where Nix tells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub strategy: String,
    pub grouping_plugin: String,
    pub layers: Vec<LayerSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerSummary {
    pub digest: String,
    pub size: u64,
    pub nar_size: u64,
    pub paths: Vec<String>,
}

/// The stored record of a built image: enough to serve it again after a
/// restart, on any replica, without Nix or plugins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    /// `None` until a client first asks for the schema 2 manifest, when
    /// OCI's layers are not gzip ([`DockerPending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<String>,
    pub oci: String,
    pub built_at: u64,
    pub immutable: bool,
    pub summary: ImageSummary,
    /// This build's Nix GC roots directory, on the machine that built it
    /// (`strata gc` releases it with the last image naming it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_root: Option<std::path::PathBuf>,
    /// The image's SBOM, when `[sbom]` was on for its build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom: Option<SbomRef>,
    /// Set while `docker` is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_pending: Option<DockerPending>,
}

/// What an image's Docker schema 2 manifest is made of besides gzip copies
/// of its store-path layers, recorded by the build so that any replica can
/// pack it later without Nix or plugins: the config (the same for both
/// manifests) and the final layer's gzip form (small, so packed at once).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DockerPending {
    pub config: String,
    pub config_size: u64,
    pub final_layer: LayerBlob,
}

/// An image's SPDX document and the artifact manifests that make it a
/// referrer of the image's manifests (OCI's, then Docker's once it exists).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SbomRef {
    pub digest: String,
    pub size: u64,
    pub manifests: Vec<String>,
}

pub struct Image {
    pub oci: Manifest,
    /// Set once packed: at the build when OCI's layers are gzip, else when
    /// a client first asks for a schema 2 manifest (`Builder::manifest`).
    /// Every holder of the image sees it then.
    pub docker: std::sync::OnceLock<Manifest>,
    pub summary: ImageSummary,
    pub sbom: Option<SbomRef>,
    /// When a mutable-source image must be rebuilt; `None`: never.
    pub(crate) expires: Option<Instant>,
    /// Where its record is, to note the schema 2 manifest in it once packed.
    pub(crate) record_key: String,
    /// What the schema 2 manifest is made of, until it is packed.
    pub(crate) docker_pending: Option<DockerPending>,
}

impl Image {
    /// Approximate bytes held, for the memory cache's bound.
    pub(crate) fn weight(&self) -> u32 {
        let paths: usize = self.summary.layers.iter().flat_map(|l| &l.paths).map(|p| p.len() + 16).sum();
        let docker = self.docker.get().map_or(self.oci.bytes.len(), |m| m.bytes.len());
        (docker + self.oci.bytes.len() + paths + 512).try_into().unwrap_or(u32::MAX)
    }

    /// `None`: the schema 2 manifest is not packed yet.
    pub fn manifest(&self, format: Format) -> Option<&Manifest> {
        match format {
            Format::Docker => self.docker.get(),
            Format::Oci => Some(&self.oci),
        }
    }

    /// Both manifests, as far as they exist.
    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        std::iter::once(&self.oci).chain(self.docker.get())
    }
}

/// What a tag serves: one image, or, with several `[builds] platforms`
/// and a name that chooses no architecture, one image per platform and the
/// index over them.
pub struct Tagged {
    /// By platform (the index's order); one when there is no index.
    pub images: Vec<(Platform, Arc<Image>)>,
    pub index: Option<Index>,
}

/// A tag's index in both families: the OCI index over the OCI manifests,
/// the Docker manifest list over the schema 2 ones (set once they all are).
pub struct Index {
    pub docker: std::sync::OnceLock<Manifest>,
    pub oci: Manifest,
}

impl Tagged {
    /// One image, no index.
    pub fn single(platform: Platform, image: Arc<Image>) -> Tagged {
        Tagged { images: vec![(platform, image)], index: None }
    }

    /// The image a client that takes no index gets: the host platform's,
    /// else the first.
    pub fn image(&self) -> &Arc<Image> {
        let host = Platform::host();
        let found = self.images.iter().find(|(p, _)| p.arch == host.arch);
        &found.unwrap_or(&self.images[0]).1
    }

    /// The index or the manifest a client's `Accept` asks for; `None` when
    /// it is of schema 2 and not packed yet.
    pub fn manifest(&self, accepted: Accepted) -> Option<&Manifest> {
        match (&self.index, accepted.index()) {
            (Some(index), Some(Format::Docker)) => index.docker.get(),
            (Some(index), Some(Format::Oci)) => Some(&index.oci),
            _ => self.image().manifest(accepted.format),
        }
    }

    /// Every manifest served for the tag, the index's among them.
    pub fn manifests(&self) -> Vec<&Manifest> {
        let index = self.index.iter().flat_map(|i| std::iter::once(&i.oci).chain(i.docker.get()));
        self.images.iter().flat_map(|(_, i)| i.manifests()).chain(index).collect()
    }

    /// The earliest of its images' expiries.
    pub(crate) fn expires(&self) -> Option<Instant> {
        self.images.iter().filter_map(|(_, i)| i.expires).min()
    }

    fn weight(&self) -> u32 {
        let index = self.index.as_ref().map_or(0, |i| 2 * i.oci.bytes.len()) as u32;
        self.images.iter().fold(index, |w, (_, i)| w.saturating_add(i.weight()))
    }
}

/// The stored record of a tag's index: its two blobs and the manifests it
/// lists, for `strata gc` (the index is rebuilt from its images, byte for
/// byte, wherever they are served).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexRecord {
    /// `None` until its images' schema 2 manifests are packed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<String>,
    pub oci: String,
    pub manifests: Vec<String>,
}

/// Where the record of an index lives, by its OCI digest.
pub(crate) fn index_key(oci_digest: &str) -> String {
    format!("{}{}.json", crate::storage::INDEX_PREFIX, oci_digest.trim_start_matches("sha256:"))
}

/// `strata inspect` and `/api/inspect`: an image's plan, closure and layers.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub name: String,
    pub tag: String,
    pub packages: Vec<String>,
    pub arch: String,
    pub source: String,
    /// The commit the source was fetched at, where Nix tells it (a git or
    /// flake source, a channel pinned to a commit); `None` for a path.
    pub revision: Option<String>,
    pub immutable: bool,
    pub grouping_plugin: String,
    pub strategy: String,
    pub roots: Vec<String>,
    pub closure: Vec<StorePath>,
    /// The store-path layers; the host's symlink layer comes after them.
    pub layers: Vec<InspectedLayer>,
    /// `None` until the image was built (pulled) once.
    pub built: Option<Built>,
    /// Every platform the name is built for (one without an index); the
    /// fields above are the host platform's, else the first's.
    pub platforms: Vec<PlatformSummary>,
}

/// One platform of an inspected name.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformSummary {
    /// `linux/arm64/v8`
    pub platform: String,
    pub arch: String,
    pub closure_paths: usize,
    pub closure_nar_size: u64,
    /// The host's symlink layer included.
    pub layers: usize,
    pub built: Option<Built>,
}

impl Inspection {
    /// Roughly its bytes in memory, for the cache's bound: every store path
    /// appears in the closure and in one layer, with its references.
    pub(crate) fn weight(&self) -> u32 {
        let closure: usize = self.closure.iter().map(|p| 2 * p.path.len() + 8 * p.references.len() + 64).sum();
        (closure + 512).try_into().unwrap_or(u32::MAX)
    }
}

/// An inspected image as stored: its manifests and where its SBOM is.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    /// The OCI manifest's digest.
    pub manifest: String,
    /// `None` until a client asked for it ([`Image::docker`]).
    pub docker_manifest: Option<String>,
    pub sbom: Option<BuiltSbom>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuiltSbom {
    pub digest: String,
    pub size: u64,
    /// The document, through the registry API.
    pub blob_url: String,
    /// The referrers of the OCI manifest, the SBOM's manifest among them.
    pub referrers_url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectedLayer {
    pub nar_size: u64,
    pub paths: Vec<String>,
}

/// Where an image's record lives, by its cache key.
pub(crate) fn record_key(cache_key: &str) -> String {
    format!("{}{cache_key}.json", crate::storage::IMAGE_PREFIX)
}

/// (name, tag) → what it serves, holding at most `max_bytes` of them by
/// weight; entries of mutable sources expire with their first image.
pub(crate) fn image_cache(max_bytes: u64) -> moka::sync::Cache<(String, String), Arc<Tagged>> {
    moka::sync::Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|_, t: &Arc<Tagged>| t.weight())
        .expire_after(ImageExpiry)
        .build()
}

/// Entries expire when their image does (mutable sources); others live until
/// evicted by size.
struct ImageExpiry;

impl moka::Expiry<(String, String), Arc<Tagged>> for ImageExpiry {
    fn expire_after_create(&self, _: &(String, String), t: &Arc<Tagged>, now: Instant) -> Option<Duration> {
        t.expires().map(|t| t.saturating_duration_since(now))
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use moka::Expiry;
    use crate::image::manifest;

    fn tagged(i: usize, manifest_bytes: usize) -> Arc<Tagged> {
        Arc::new(Tagged::single(Platform::host(), image(i, manifest_bytes)))
    }

    fn image(i: usize, manifest_bytes: usize) -> Arc<Image> {
        let m = |media_type| Manifest {
            bytes: Bytes::from(vec![b'x'; manifest_bytes]),
            digest: format!("sha256:{i:064x}"),
            media_type,
        };
        Arc::new(Image {
            docker: m(manifest::DOCKER_MANIFEST).into(),
            oci: m(manifest::OCI_MANIFEST),
            record_key: String::new(),
            docker_pending: None,
            summary: ImageSummary {
                packages: vec![format!("p{i}")],
                arch: "amd64".into(),
                source: "test".into(),
                revision: None,
                strategy: "test".into(),
                grouping_plugin: "test".into(),
                layers: vec![],
            },
            sbom: None,
            expires: None,
        })
    }

    #[test]
    fn memory_cache_stays_within_its_byte_bound() {
        let bound = 200_000;
        let cache = image_cache(bound);
        let weight = tagged(0, 10_000).weight() as u64;
        assert!(weight >= 20_000, "an image weighs at least its two manifests: {weight}");
        for i in 0..100 {
            cache.insert((format!("img{i}"), "latest".into()), tagged(i, 10_000));
            cache.run_pending_tasks();
            assert!(cache.weighted_size() <= bound, "{} bytes held after {i} inserts", cache.weighted_size());
        }
        let held = cache.entry_count();
        assert!(held > 0 && held <= bound / weight, "{held} images of {weight} bytes held under {bound}");
    }

    /// With explicit times, no sleeping: the policy is asked about a
    /// given instant, and the cache is handed an image whose time is up
    /// (it can only be more so when the cache looks).
    #[test]
    fn mutable_images_leave_the_cache_when_they_expire() {
        let key = ("a".to_string(), "latest".to_string());
        let now = Instant::now();
        let with_expiry = |expires: Option<Instant>| {
            let mut img = Arc::into_inner(image(1, 100)).unwrap();
            img.expires = expires;
            Arc::new(Tagged::single(Platform::host(), Arc::new(img)))
        };
        let policy = |t: &Arc<Tagged>| ImageExpiry.expire_after_create(&key, t, now);
        assert_eq!(policy(&with_expiry(Some(now + Duration::from_secs(60)))), Some(Duration::from_secs(60)));
        assert_eq!(policy(&with_expiry(Some(now - Duration::from_secs(1)))), Some(Duration::ZERO));
        assert_eq!(policy(&with_expiry(None)), None, "an immutable image stays until evicted by size");

        let cache = image_cache(1 << 20);
        cache.insert(key.clone(), with_expiry(Some(now)));
        cache.insert(("b".into(), "latest".into()), tagged(2, 100));
        assert!(cache.get(&key).is_none(), "an image whose time is up is not served");
        assert!(cache.get(&("b".to_string(), "latest".to_string())).is_some());
    }
}
