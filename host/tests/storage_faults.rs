//! Storage failing under a real build (real Nix on the demo set, the
//! embedded plugins, real packing): the store is a local directory wrapped
//! in an `ObjectStore` that refuses, on command, to write layer bytes or to
//! give a staged layer its final key. The request fails with a storage
//! error; no blob appears under a key its bytes do not hash to; no image
//! record is written; the next request, with the store healthy again,
//! builds the image whole.

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, UploadPart,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use strata::build::Builder;
use strata::config::{Config, Env};
use strata::error::Error;
use strata::storage::Storage;

/// What the store refuses while armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Writes under `staging/` (a layer's bytes on their way in): a single
    /// put fails, a multipart upload fails on its second part.
    StagingWrites,
    /// Moving a staged layer to its final key.
    Publish,
}

#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    fault: Fault,
    armed: Arc<AtomicBool>,
    /// Operations refused, so a test knows its fault was reached.
    refused: Arc<AtomicUsize>,
    /// Parts of multipart uploads refused: a layer failing mid-way.
    parts_refused: Arc<AtomicUsize>,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl Faulty {
    fn refuses(&self, fault: Fault, key: &Key) -> bool {
        let hit = self.armed.load(Ordering::SeqCst) && self.fault == fault && key.as_ref().starts_with("staging/");
        if hit {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "Faulty",
        source: format!("injected fault: {what}").into(),
    }
}

struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    parts: usize,
    fail: bool,
    refused: Arc<AtomicUsize>,
}

impl fmt::Debug for FaultyUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyUpload").field("parts", &self.parts).finish()
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts += 1;
        if self.fail && self.parts >= 2 {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(injected("layer part write")) });
        }
        self.inner.put_part(data)
    }
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(&self, key: &Key, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        if self.refuses(Fault::StagingWrites, key) {
            return Err(injected("layer write"));
        }
        self.inner.put_opts(key, payload, opts).await
    }
    async fn put_multipart_opts(&self, key: &Key, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        let fail = self.refuses(Fault::StagingWrites, key);
        let inner = self.inner.put_multipart_opts(key, opts).await?;
        Ok(Box::new(FaultyUpload { inner, parts: 0, fail, refused: self.parts_refused.clone() }))
    }
    async fn get_opts(&self, key: &Key, opts: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(key, opts).await
    }
    async fn delete(&self, key: &Key) -> object_store::Result<()> {
        self.inner.delete(key).await
    }
    fn list(&self, prefix: Option<&Key>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Key>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &Key, to: &Key) -> object_store::Result<()> {
        if self.refuses(Fault::Publish, from) {
            return Err(injected("publish (copy)"));
        }
        self.inner.copy(from, to).await
    }
    async fn rename(&self, from: &Key, to: &Key) -> object_store::Result<()> {
        if self.refuses(Fault::Publish, from) {
            return Err(injected("publish (rename)"));
        }
        self.inner.rename(from, to).await
    }
    async fn copy_if_not_exists(&self, from: &Key, to: &Key) -> object_store::Result<()> {
        if self.refuses(Fault::Publish, from) {
            return Err(injected("publish (copy_if_not_exists)"));
        }
        self.inner.copy_if_not_exists(from, to).await
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Every file under `blobs/sha256/` hashes to its name; returns their names.
fn checked_blobs(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for f in files_under(&root.join("blobs/sha256")) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains('#'), "a temporary file under blobs/: {}", f.display());
        let hex = hex::encode(Sha256::digest(std::fs::read(&f).unwrap()));
        assert_eq!(hex, name, "{} does not hold the bytes its name says", f.display());
        names.push(name);
    }
    names
}

async fn builder_over(
    root: &Path,
    work: &Path,
    fault: Fault,
    pkgs: &str,
) -> (Arc<Builder>, Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    std::env::set_var("STRATA_NIX_OFFLINE", "1");
    let env: Env = [("NIXERY_PKGS_PATH".to_string(), repo().join(pkgs).display().to_string())].into();
    let mut cfg = Config::load(None, &env).unwrap();
    cfg.nix.work_dir = Some(work.to_path_buf());
    let armed = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicUsize::new(0));
    let parts_refused = Arc::new(AtomicUsize::new(0));
    let store = Faulty {
        inner: Arc::new(LocalFileSystem::new_with_prefix(root).unwrap()),
        fault,
        armed: armed.clone(),
        refused: refused.clone(),
        parts_refused: parts_refused.clone(),
    };
    let storage = Storage::from_store(Arc::new(store), "faulty local directory");
    (Builder::with_storage(Arc::new(cfg), storage).await.unwrap(), armed, refused, parts_refused)
}

async fn failing_write_is_an_error_and_the_next_request_rebuilds(fault: Fault, pkgs: &str, image: &str) {
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (builder, armed, refused, parts_refused) = builder_over(root.path(), work.path(), fault, pkgs).await;

    let err = builder.image(image, "latest").await.err().expect("the build must fail while the store refuses");
    assert!(refused.load(Ordering::SeqCst) > 0, "{fault:?} was never reached");
    if fault == Fault::StagingWrites {
        // The 32 MiB layer goes up in parts: the failure hit it mid-way,
        // after its first part was written.
        assert!(parts_refused.load(Ordering::SeqCst) > 0, "no layer failed mid-upload");
    }
    assert!(matches!(err, Error::Storage(_)), "{fault:?}: {err:?}");
    assert!(err.to_string().contains("injected fault"), "{err}");
    let (code, status) = err.code_and_status();
    assert_eq!((code, status.as_u16()), ("UNKNOWN", 500));
    checked_blobs(root.path());
    assert!(files_under(&root.path().join("meta/images")).is_empty(), "an image record after a failed build");
    let staged = files_under(&root.path().join("staging"));
    assert!(staged.is_empty(), "{fault:?} left staged bytes: {staged:?}");

    // Healthy again: the next request builds (nothing of the failure was
    // remembered), and every blob the manifest names is there, whole.
    armed.store(false, Ordering::SeqCst);
    let img = builder.image(image, "latest").await.expect("the retry builds");
    let blobs = checked_blobs(root.path());
    let manifest: serde_json::Value = serde_json::from_slice(&img.oci.bytes).unwrap();
    let mut named = vec![manifest["config"]["digest"].as_str().unwrap().to_string()];
    named.extend(manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()));
    assert!(named.len() >= 2, "{manifest}");
    for d in named {
        assert!(blobs.contains(&d.trim_start_matches("sha256:").to_string()), "{d} is not stored");
    }
    assert_eq!(files_under(&root.path().join("meta/images")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_write_failing_leaves_no_blob_and_the_next_request_rebuilds() {
    // tests/fixtures/faulty-pkgs' `big`: 32 MiB that do not compress, so a
    // layer larger than one upload part.
    failing_write_is_an_error_and_the_next_request_rebuilds(Fault::StagingWrites, "tests/fixtures/faulty-pkgs", "shell/big").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_layer_failing_leaves_no_blob_and_the_next_request_rebuilds() {
    failing_write_is_an_error_and_the_next_request_rebuilds(Fault::Publish, "examples/demo-pkgs", "shell/hello").await;
}
