//! Blob and metadata storage over `object_store`, so that a local directory,
//! S3, GCS and Azure are one code path.
//!
//! Layout: `blobs/sha256/<hex>` (layers, configs, manifests, by content),
//! `staging/<random>` (uploads in progress), `meta/…` (small JSON records:
//! built images, packed layers; last accesses), `leases/…` (which replica is
//! building what, see [`lease`]). A blob appears under its final key
//! only by a rename (on S3, GCS and Azure: a server-side copy, which makes
//! the object appear whole or not at all) after its size and digest were
//! checked, so a crash never leaves a partial blob where a client could
//! fetch it; what it leaves under `staging/` is removed by `strata gc`.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ServeMode};
use crate::error::{Error, Result};

mod access;
mod backend;
pub mod lease;

pub use access::{access_key, ACCESS_PREFIX};

pub const BLOB_PREFIX: &str = "blobs/sha256/";
pub const IMAGE_PREFIX: &str = "meta/images/";
/// Where a blob is written before it is checked and published.
pub type StagingWriter = BufWriter;

pub const LAYER_PREFIX: &str = "meta/layers/";
/// `meta/indexes/<oci index>.json`: a tag's index over its platforms'
/// manifests, so that `strata gc` keeps the index's two blobs while it
/// keeps all of those manifests, and removes them with the first to go.
pub const INDEX_PREFIX: &str = "meta/indexes/";
pub const STAGING_PREFIX: &str = "staging/";
pub const LEASE_PREFIX: &str = "leases/";
/// `meta/referrers/<subject>/<referrer>.json`: the referrers API's index,
/// one descriptor per object, so that answering it is one list under the
/// subject and adding a referrer never rewrites a shared object.
pub const REFERRER_PREFIX: &str = "meta/referrers/";

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// For `serve = "redirect"`: signs keys under the URL's prefix.
    redirect: Option<Redirect>,
    /// For logs and the web page; never contains credentials.
    description: String,
    marks: access::Marks,
    /// The directory of a `file://` store.
    local_root: Option<Arc<std::path::PathBuf>>,
}

#[derive(Clone)]
struct Redirect {
    signer: Arc<dyn Signer>,
    prefix: Path,
    lifetime: Duration,
}

/// The wall clock in Unix milliseconds: lease expiries and access marks.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A blob's digest, as the store keys it and the spec names it.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn blob_key(digest: &str) -> Path {
    Path::from(format!("{BLOB_PREFIX}{}", digest.trim_start_matches("sha256:")))
}

/// Where the referrer `referrer` of the manifest `subject` is recorded.
pub fn referrer_key(subject: &str, referrer: &str) -> String {
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    format!("{REFERRER_PREFIX}{}/{}.json", hex(subject), hex(referrer))
}

/// Whether a conditional create made the object or found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existed,
}

impl Storage {
    /// Opens a store from a URL (`file:///dir`, `s3://bucket/prefix`,
    /// `gs://bucket`, `az://container`, `memory://`), credentials taken from
    /// the environment as each SDK does; blobs are streamed through the host
    /// and leases have their default timing.
    pub fn open(url: &str) -> anyhow::Result<Storage> {
        Storage::open_with(url, &[])
    }

    /// [`Storage::open`] with object_store options (`aws_endpoint`,
    /// `azure_storage_use_emulator`, …) over the environment's: for tests,
    /// which cannot give each store its own process environment.
    pub fn open_with(url: &str, options: &[(&str, &str)]) -> anyhow::Result<Storage> {
        let opened = backend::open(url, options)?;
        let local_root = opened.local_root.map(Arc::new);
        Ok(Storage { local_root, ..Storage::from_store(opened.store, &opened.description) })
    }

    /// The store `[storage]` describes, serving and leasing as configured.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Storage> {
        let st = &cfg.storage;
        let url = cfg.storage_url();
        let opened = backend::open(&url, &[])?;
        let redirect = match (st.serve, opened.signer) {
            (ServeMode::Proxy, _) => None,
            (ServeMode::Redirect, Some(signer)) => {
                Some(Redirect { signer, prefix: opened.prefix, lifetime: Duration::from_secs(st.presign_secs) })
            }
            (ServeMode::Redirect, None) => anyhow::bail!(
                "configuration: storage.serve = \"redirect\" needs a store that presigns URLs (s3://, gs://, az://); {} is served by the host: use serve = \"proxy\"",
                opened.description
            ),
        };
        Ok(Storage {
            store: opened.store,
            redirect,
            description: opened.description,
            marks: access::Marks::new(cfg.cache.access_mark_interval()),
            local_root: opened.local_root.map(Arc::new),
        })
    }

    /// Any `object_store` as the store, streamed through the host, leases
    /// with their default timing: for tests that wrap a real store in one
    /// that fails on purpose.
    pub fn from_store(store: Arc<dyn ObjectStore>, description: &str) -> Storage {
        Storage {
            store,
            redirect: None,
            description: description.to_string(),
            marks: access::Marks::new(crate::config::MARK_INTERVAL),
            local_root: None,
        }
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Option<Bytes>> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Small records: one put is atomic on every backend.
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.store.put(&Path::from(key), PutPayload::from(bytes)).await?;
        Ok(())
    }

    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>> {
        match self.store.head(&blob_key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A small blob held in memory (configs, manifests): hashed here, so the
    /// key always matches the content.
    pub async fn put_blob(&self, bytes: Bytes) -> Result<String> {
        let digest = sha256_digest(&bytes);
        if self.blob_size(&digest).await? != Some(bytes.len() as u64) {
            self.store.put(&blob_key(&digest), PutPayload::from(bytes)).await?;
        }
        Ok(digest)
    }

    pub async fn get_blob_bytes(&self, digest: &str) -> Result<Option<Bytes>> {
        self.get_bytes(blob_key(digest).as_ref()).await
    }

    /// Streams a blob, or the part of it `range` names. Returns the blob's
    /// full size with the stream.
    pub async fn get_blob(
        &self,
        digest: &str,
        range: Option<Range<u64>>,
    ) -> Result<(u64, BoxStream<'static, std::io::Result<Bytes>>)> {
        let opts = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        match self.store.get_opts(&blob_key(digest), opts).await {
            Ok(r) => {
                let size = r.meta.size;
                let stream = r.into_stream().map(|c| c.map_err(std::io::Error::other)).boxed();
                Ok((size, stream))
            }
            Err(object_store::Error::NotFound { .. }) => Err(Error::BlobUnknown(digest.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// A writer for a blob whose digest is not known yet. The bytes go to a
    /// staging key; [`Storage::publish`] moves them to their final key.
    ///
    /// Parts of S3's smallest size, at most three in flight: object_store's
    /// default (10 MiB parts, eight in flight) lets one writer hold 90 MiB
    /// whenever the store is slower than the packer (a disk in writeback,
    /// a far bucket), and one writer per core packs at once.
    pub fn staging_writer(&self) -> (Path, StagingWriter) {
        const PART: usize = 5 * 1024 * 1024;
        let key = Path::from(format!("{STAGING_PREFIX}{:032x}", rand::random::<u128>()));
        (key.clone(), BufWriter::with_capacity(self.store.clone(), key, PART).with_max_concurrency(3))
    }

    /// Checks the staged object against what the packer counted, then gives
    /// it its content address. An existing blob of the same digest and size
    /// is kept and the staged copy dropped.
    pub async fn publish(&self, staging: &Path, digest: &str, size: u64) -> Result<()> {
        let staged = self.store.head(staging).await?;
        if staged.size != size {
            let _ = self.store.delete(staging).await;
            return Err(Error::Storage(format!(
                "staged blob {digest} has {} bytes, expected {size}",
                staged.size
            )));
        }
        if self.blob_size(digest).await? == Some(size) {
            let _ = self.store.delete(staging).await;
            return Ok(());
        }
        if let Err(e) = self.store.rename(staging, &blob_key(digest)).await {
            let _ = self.store.delete(staging).await;
            return Err(e.into());
        }
        Ok(())
    }

    pub async fn discard(&self, staging: &Path) {
        let _ = self.store.delete(staging).await;
    }

    /// A presigned URL for a blob when the store is configured to answer
    /// blob GETs by redirect; `None`: stream it through the host.
    pub async fn redirect_url(&self, digest: &str) -> Result<Option<url::Url>> {
        let Some(r) = &self.redirect else { return Ok(None) };
        let key = Path::from_iter(r.prefix.parts().chain(blob_key(digest).parts()));
        Ok(Some(r.signer.signed_url(reqwest::Method::GET, &key, r.lifetime).await?))
    }

    /// Whether this process has not marked the image (by its Docker
    /// manifest digest) as requested within the last interval.
    pub fn access_due(&self, digest: &str) -> bool {
        self.marks.due(digest)
    }

    /// `[cache] access_mark_secs` of this handle.
    pub fn mark_interval(&self) -> Duration {
        self.marks.interval()
    }

    /// Makes the image's mark due at once: gc removed it.
    pub fn forget_access(&self, digest: &str) {
        self.marks.forget(digest);
    }

    /// Records that the image was requested, at most once an interval,
    /// without making the caller wait for the store.
    pub fn mark_access(&self, digest: &str) {
        if !self.marks.take(digest) {
            return;
        }
        let (store, marks, digest) = (self.store.clone(), self.marks.clone(), digest.to_string());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return marks.forget(&digest) };
        runtime.spawn(async move {
            let now = now_ms() / 1000;
            let key = Path::from(access_key(&digest));
            if let Err(e) = store.put(&key, PutPayload::from(now.to_string())).await {
                tracing::warn!(%digest, error = %e, "could not record the image's last access");
                marks.forget(&digest);
            }
        });
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object under `prefix` (a folder, ending in `/`), with its size
    /// and modification time.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = Path::from(prefix);
        Ok(self.store.list(Some(&prefix)).try_collect().await?)
    }

    /// The recorded referrers of the manifest `subject` (descriptors, as
    /// the referrers API lists them), in key order; unreadable records are
    /// skipped.
    pub async fn referrers_of(&self, subject: &str) -> Result<Vec<serde_json::Value>> {
        let prefix = format!("{REFERRER_PREFIX}{}/", subject.trim_start_matches("sha256:"));
        let mut keys: Vec<Path> = self.list(&prefix).await?.into_iter().map(|m| m.location).collect();
        keys.sort();
        let mut found = Vec::new();
        for key in keys {
            if let Some(bytes) = self.get_bytes(key.as_ref()).await? {
                if let Ok(v) = serde_json::from_slice(&bytes) {
                    found.push(v);
                }
            }
        }
        Ok(found)
    }

    /// Removes the empty directories right under `prefix` last modified
    /// before `cutoff`, in a `file://` store (object stores have no
    /// directories: 0 there); how many went. Deleting an object prunes the
    /// directories it empties, so what this finds are the leftovers of
    /// older versions (one `leases/<key>/` per image ever asked for). Only
    /// an empty directory can be removed, so one a lease is being created
    /// in at this moment stays, or is recreated by the create.
    pub async fn prune_empty_dirs(&self, prefix: &str, cutoff: std::time::SystemTime) -> Result<usize> {
        let Some(root) = self.local_root.clone() else { return Ok(0) };
        let dir = root.join(prefix);
        let pruned = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.metadata().is_ok_and(|m| m.is_dir() && m.modified().is_ok_and(|t| t < cutoff)))
                .filter(|e| std::fs::remove_dir(e.path()).is_ok())
                .count()
        })
        .await
        .map_err(|e| Error::Internal(format!("pruning {prefix}: {e}")))?;
        Ok(pruned)
    }

    /// Deletes one object; one already gone is not an error.
    pub async fn delete(&self, key: &Path) -> Result<()> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `bytes` unless `key` exists, atomically (`PutMode::Create`):
    /// of several replicas trying at once, exactly one gets [`Created::New`].
    /// `Ok(None)` when the store cannot put conditionally.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<Option<Created>> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&Path::from(key), PutPayload::from(bytes), opts).await {
            Ok(_) => Ok(Some(Created::New)),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Some(Created::Existed))
            }
            Err(object_store::Error::NotImplemented) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
