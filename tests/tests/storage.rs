//! The host's storage layer against real object-store APIs on 127.0.0.1
//! (moto's S3, s3s-fs, azurite, gcp-storage-emulator) and the local file
//! system, the same checks on each: uploads staged and published only whole,
//! skipped when the blob is already there, multipart for large layers,
//! conditional creates with exactly one winner, and build leases (one
//! builder among many, takeover after a holder dies).
//!
//! The servers themselves are tests/src/stores.rs; the pulls through
//! `strata serve` on these stores are in tests/scale_out.rs.

use bytes::Bytes;
use futures::future::join_all;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use strata::storage::lease::{Acquired, Leases};
use strata::storage::{blob_key, Created, Storage, BLOB_PREFIX, STAGING_PREFIX};
use strata_e2e::sha256_digest;
use strata_e2e::stores::{Kind, Store};
use tokio::io::AsyncWriteExt;

fn open(store: &Store, prefix: &str) -> Storage {
    open_with(store, prefix, &[])
}

/// [`open`] with more object_store options over the store's own.
fn open_with(store: &Store, prefix: &str, extra: &[(&str, &str)]) -> Storage {
    let options = store.options();
    let mut pairs: Vec<(&str, &str)> = options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.extend_from_slice(extra);
    Storage::open_with(&store.url(prefix), &pairs).unwrap_or_else(|e| panic!("open {}: {e:#}", store.url(prefix)))
}

/// Bytes that do not compress and differ per seed, `len` long.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// object_store's BufWriter switches to a multipart upload past 10 MiB.
const LARGE: usize = 12 * 1024 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn modified(storage: &Storage, key: &str) -> SystemTime {
    storage.head(key).await.expect("head").unwrap_or_else(|| panic!("{key} exists")).last_modified.into()
}

/// Staging, publishing, skipping, multipart and interrupted uploads.
async fn uploads(kind: Kind, store: &Store) {
    let storage = open(store, "uploads");
    let what = kind.name();

    // A small blob: put once; the second put finds it and writes nothing
    // (the object keeps its modification time).
    let small = Bytes::from(noise(1, 4096));
    let digest = storage.put_blob(small.clone()).await.expect("put_blob");
    assert_eq!(digest, sha256_digest(&small), "{what}");
    let key = blob_key(&digest).to_string();
    let first = modified(&storage, &key).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    storage.put_blob(small.clone()).await.expect("put_blob again");
    assert_eq!(modified(&storage, &key).await, first, "{what}: the second put_blob rewrote the blob");
    assert_eq!(storage.get_blob_bytes(&digest).await.unwrap().as_deref(), Some(&small[..]), "{what}");

    // A large layer through a staging writer: multipart, invisible under
    // its final key until published.
    let large = noise(2, LARGE);
    let large_digest = sha256_digest(&large);
    let (staging, mut writer) = storage.staging_writer();
    for chunk in large.chunks(1 << 20) {
        writer.write_all(chunk).await.expect("write");
    }
    assert_eq!(storage.blob_size(&large_digest).await.unwrap(), None, "{what}: visible before publish");
    writer.shutdown().await.expect("complete upload");
    let staged = storage.head(staging.as_ref()).await.unwrap().expect("staged object");
    assert_eq!(staged.size, LARGE as u64, "{what}");
    if matches!(kind, Kind::Moto | Kind::S3sFs) {
        // S3 names a multipart object's ETag "<md5 of part md5s>-<parts>".
        let etag = staged.e_tag.clone().unwrap_or_default();
        assert!(etag.trim_matches('"').contains('-'), "{what}: not a multipart upload, ETag {etag}");
    }
    // A size that does not match what the packer counted is refused and
    // the staged copy dropped.
    let wrong = storage.publish(&staging, &large_digest, LARGE as u64 - 1).await;
    assert!(wrong.is_err(), "{what}: publish of the wrong size succeeded");
    assert_eq!(storage.blob_size(&large_digest).await.unwrap(), None, "{what}");
    assert!(storage.head(staging.as_ref()).await.unwrap().is_none(), "{what}: staged copy left behind");

    // Again, properly.
    let (staging, mut writer) = storage.staging_writer();
    writer.write_all(&large).await.expect("write");
    writer.shutdown().await.expect("complete upload");
    storage.publish(&staging, &large_digest, LARGE as u64).await.expect("publish");
    assert_eq!(storage.blob_size(&large_digest).await.unwrap(), Some(LARGE as u64), "{what}");
    let back = storage.get_blob_bytes(&large_digest).await.unwrap().expect("published blob");
    assert_eq!(sha256_digest(&back), large_digest, "{what}: published bytes differ");
    assert!(storage.head(staging.as_ref()).await.unwrap().is_none(), "{what}: staging key left after publish");

    // The same layer staged again (another replica packed it too): the
    // published blob is kept as it is, the staged copy dropped.
    let published_at = modified(&storage, blob_key(&large_digest).as_ref()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (staging, mut writer) = storage.staging_writer();
    writer.write_all(&large).await.expect("write");
    writer.shutdown().await.expect("complete upload");
    storage.publish(&staging, &large_digest, LARGE as u64).await.expect("publish again");
    assert_eq!(modified(&storage, blob_key(&large_digest).as_ref()).await, published_at, "{what}: blob rewritten");
    assert!(storage.head(staging.as_ref()).await.unwrap().is_none(), "{what}");

    // An upload interrupted after parts went out (the writer dropped, as
    // when the task or the process dies): nothing under blobs/ but what
    // was there, and no complete object under its staging key.
    let other = noise(3, LARGE);
    let other_digest = sha256_digest(&other);
    let (staging, mut writer) = storage.staging_writer();
    writer.write_all(&other[..LARGE - 100]).await.expect("write");
    writer.flush().await.expect("flush");
    drop(writer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(storage.blob_size(&other_digest).await.unwrap(), None, "{what}: interrupted upload visible");
    if let Some(meta) = storage.head(staging.as_ref()).await.unwrap() {
        panic!("{what}: interrupted upload left an object at its staging key: {meta:?}");
    }
    let mut blobs: Vec<String> =
        storage.list(BLOB_PREFIX).await.unwrap().iter().map(|m| m.location.filename().unwrap().to_string()).collect();
    blobs.sort();
    let mut expected =
        vec![digest.trim_start_matches("sha256:").to_string(), large_digest.trim_start_matches("sha256:").to_string()];
    expected.sort();
    assert_eq!(blobs, expected, "{what}: blobs/ holds exactly the published blobs");
    // Every blob's bytes hash to its key.
    for hex in &blobs {
        let bytes = storage.get_blob_bytes(hex).await.unwrap().expect("listed blob");
        assert_eq!(sha256_digest(&bytes), format!("sha256:{hex}"), "{what}");
    }
    let staged: Vec<_> = storage.list(STAGING_PREFIX).await.unwrap();
    assert!(staged.is_empty(), "{what}: staging/ not empty: {staged:?}");
}

/// Eight stores (as eight replicas) create one key at once: one wins.
async fn conditional_create(store: &Store) {
    let replicas: Vec<Storage> = (0..8).map(|_| open(store, "race")).collect();
    let results =
        join_all(replicas.iter().enumerate().map(|(i, s)| s.put_if_absent("leases/x/1", Bytes::from(format!("{i}")))))
            .await;
    let results: Vec<Option<Created>> = results.into_iter().map(|r| r.expect("put_if_absent")).collect();
    assert!(results.iter().all(Option::is_some), "{}: conditional put not supported: {results:?}", store.kind.name());
    let winners: Vec<usize> =
        results.iter().enumerate().filter(|(_, r)| **r == Some(Created::New)).map(|(i, _)| i).collect();
    assert_eq!(winners.len(), 1, "{}: {results:?}", store.kind.name());
    let body = replicas[0].get_bytes("leases/x/1").await.unwrap().expect("the key");
    assert_eq!(body, Bytes::from(winners[0].to_string()), "{}: the winner's body is stored", store.kind.name());
}

/// A store and its leases, lasting `ttl`, waited on for `wait`: leases
/// expire in seconds here.
fn leased(storage: Storage, ttl: Duration, wait: Duration) -> (Storage, Leases) {
    let leases = Leases::new(storage.clone(), ttl, wait);
    (storage, leases)
}

/// Leases with the configuration's default timing.
fn default_leases(storage: Storage) -> Leases {
    Leases::from_config(storage, &strata::config::StorageConfig::default())
}

/// Four replicas want the same new image at once: one builds it, the others
/// get its record.
async fn one_builder(store: &Store) {
    let what = store.kind.name();
    let builds = Arc::new(AtomicUsize::new(0));
    let replicas: Vec<(Storage, Leases)> = (0..4)
        .map(|_| leased(open(store, "lease"), Duration::from_secs(3), Duration::from_secs(30)))
        .collect();
    let outcomes = join_all(replicas.iter().map(|(s, l)| {
        let builds = builds.clone();
        async move {
            let published = || async { s.get_bytes("meta/images/img.json").await };
            match l.lease("img", published).await.expect("lease") {
                Acquired::Held(lease) => {
                    builds.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await; // the "build"
                    s.put_bytes("meta/images/img.json", Bytes::from_static(b"built")).await.expect("record");
                    drop(lease);
                    "built"
                }
                Acquired::Published(_) => "waited",
            }
        }
    }))
    .await;
    assert_eq!(builds.load(Ordering::SeqCst), 1, "{what}: {outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == "waited").count(), 3, "{what}: {outcomes:?}");
}

/// A holder that dies (its runtime gone: no renewal, no release) blocks the
/// image only until its lease expires; then exactly one waiter takes over.
fn takeover(store: &Store) {
    let what = store.kind.name();
    let ttl = Duration::from_secs(3);
    let record = "meta/images/taken.json";
    // The doomed holder, on a runtime of its own that is then shut down.
    let (_, doomed) = leased(open(store, "takeover"), ttl, Duration::from_secs(30));
    let rt = runtime();
    let lease = rt.block_on(async { doomed.lease("taken", || async { Ok(None::<()>) }).await.expect("first lease") });
    let Acquired::Held(lease) = lease else { panic!("{what}: nothing was published yet") };
    std::mem::forget(lease); // a killed process releases nothing
    let died = Instant::now();
    rt.shutdown_background(); // …and renews nothing

    runtime().block_on(async {
        let builds = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<(Storage, Leases)> =
            (0..3).map(|_| leased(open(store, "takeover"), ttl, Duration::from_secs(30))).collect();
        let outcomes = join_all(waiters.iter().map(|(s, l)| {
            let builds = builds.clone();
            async move {
                match l.lease("taken", || async { s.get_bytes(record).await }).await.expect("lease") {
                    Acquired::Held(lease) => {
                        let waited = died.elapsed();
                        builds.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        s.put_bytes(record, Bytes::from_static(b"built")).await.expect("record");
                        drop(lease);
                        waited
                    }
                    Acquired::Published(_) => Duration::ZERO,
                }
            }
        }))
        .await;
        assert_eq!(builds.load(Ordering::SeqCst), 1, "{what}: {outcomes:?}");
        let waited = outcomes.into_iter().max().unwrap();
        // Not before the dead holder's lease expired (renewed at most at
        // ttl/3 intervals: it was written at most just before `died`).
        assert!(
            waited >= ttl - Duration::from_millis(200),
            "{what}: took over after {waited:?}, before the lease expired"
        );
        assert!(waited < ttl + Duration::from_secs(5), "{what}: took over only after {waited:?}");
    });
}

fn suite(kind: Kind, leases: bool) {
    let store = Store::start(kind);
    let rt = runtime();
    rt.block_on(async {
        uploads(kind, &store).await;
        let honoured = default_leases(open(&store, "probe")).conditional_create_works().await.expect("probe");
        assert!(honoured, "{}: conditional creates honoured", kind.name());
        if leases {
            conditional_create(&store).await;
            one_builder(&store).await;
        }
    });
    drop(rt);
    if leases {
        takeover(&store);
    }
}

#[test]
fn file_store() {
    suite(Kind::File, true);
}

#[test]
fn s3_moto() {
    suite(Kind::Moto, true);
}

/// s3s-fs honours `If-None-Match: *` one request at a time, but not under
/// concurrency (it checks, then writes: eight concurrent creates of one
/// key all succeeded here), so leases are tested on the other stores.
#[test]
fn s3_s3s_fs() {
    suite(Kind::S3sFs, false);
}

/// A store that cannot create conditionally (here moto, with object_store's
/// conditional put turned off): the host finds out once, warns, and builds
/// without coordination instead of failing or waiting.
#[test]
fn store_without_conditional_create() {
    let store = Store::start(Kind::Moto);
    let storage = open_with(&store, "nocond", &[("aws_conditional_put", "disabled")]);
    runtime().block_on(async {
        let leases = default_leases(storage.clone());
        assert!(!leases.conditional_create_works().await.expect("probe"));
        let first = leases.lease("img", || async { Ok(None::<()>) }).await.expect("lease");
        let second = leases.lease("img", || async { Ok(None::<()>) }).await.expect("lease");
        assert!(matches!((first, second), (Acquired::Held(_), Acquired::Held(_))), "both build, neither waits");
        assert!(storage.list("leases/").await.unwrap().is_empty(), "no lease objects written");
    });
}

#[test]
fn azure_azurite() {
    suite(Kind::Azurite, true);
}

/// object_store's GCS client speaks the XML API (PUT/GET/HEAD on
/// `/<bucket>/<key>`, copies by `x-goog-copy-source`, XML multipart,
/// listing with `list-type=2`); gcp-storage-emulator implements only the JSON
/// API. Pointed at it (through a service-account file's `gcs_base_url`),
/// listing and HEAD get 501 Not Implemented, and an upload's answer lacks
/// the ETag header object_store requires. If
/// this test starts failing because the operations work, run `suite(Kind::Gcs,
/// true)` here and update docs/scaling.md.
#[test]
fn gcs_emulator_lacks_the_xml_api_object_store_uses() {
    let store = Store::start(Kind::Gcs);
    // The emulator is there, with the bucket, on its JSON API.
    let json_api = format!("{}/storage/v1/b/{}/o", store.endpoint, strata_e2e::stores::BUCKET);
    let listed = strata_e2e::http_client().get(&json_api).send().expect("GET JSON API");
    assert_eq!(listed.status().as_u16(), 200, "{json_api}");
    let storage = open(&store, "probe");
    runtime().block_on(async {
        for (op, result) in [
            ("list", storage.list("blobs/").await.map(|_| ())),
            ("head", storage.head("meta/x").await.map(|_| ())),
            ("put", storage.put_bytes("meta/x", Bytes::from_static(b"x")).await),
        ] {
            let e = result
                .err()
                .unwrap_or_else(|| panic!("{op} now works on the emulator: enable the GCS suite"))
                .to_string();
            // A put's body is taken, but the answer lacks the ETag every
            // XML API upload returns.
            let why = if op == "put" { "ETag Header missing" } else { "501 Not Implemented" };
            assert!(e.contains(why), "{op}: {e}");
        }
    });
}
