//! Blob and metadata storage over `object_store`, so that a local directory,
//! S3, GCS and Azure are one code path.
//!
//! Layout: `blobs/sha256/<hex>` (layers, configs, manifests, by content),
//! `staging/<random>` (uploads in progress), `meta/…` (small JSON records:
//! built images, packed layers). A blob appears under its final key only by a
//! rename after its size and digest were checked, so a crash never leaves a
//! partial blob where a client could fetch it.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};
use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// For logs and the web page; never contains credentials.
    description: String,
}

pub fn blob_key(digest: &str) -> Path {
    Path::from(format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")))
}

impl Storage {
    /// Opens a store from a URL (`file:///dir`, `s3://bucket/prefix`,
    /// `gs://bucket`, `az://container`, `memory://`), credentials taken from
    /// the environment as each SDK does.
    pub fn open(url: &str) -> anyhow::Result<Storage> {
        let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("storage url {url:?}: {e}"))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            // object_store's file store needs its root to exist; everything
            // else is created on demand by the service.
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| anyhow::anyhow!("storage url {url:?} is not an absolute path"))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| anyhow::anyhow!("storage url {url:?}: {e}"))?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?)
            }
            "memory" => Arc::new(object_store::memory::InMemory::new()),
            _ => {
                let opts: Vec<(String, String)> = std::env::vars()
                    .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                let (store, prefix) = object_store::parse_url_opts(&parsed, opts)?;
                let store: Arc<dyn ObjectStore> = Arc::from(store);
                if prefix.as_ref().is_empty() {
                    store
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
                }
            }
        };
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        shown.set_query(None);
        Ok(Storage { store, description: shown.to_string() })
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
        let digest = crate::layers::sha256_digest(&bytes);
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
    pub fn staging_writer(&self) -> (Path, BufWriter) {
        let key = Path::from(format!("staging/{:032x}", rand::random::<u128>()));
        (key.clone(), BufWriter::new(self.store.clone(), key))
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
        self.store.rename(staging, &blob_key(digest)).await?;
        Ok(())
    }

    pub async fn discard(&self, staging: &Path) {
        let _ = self.store.delete(staging).await;
    }
}
