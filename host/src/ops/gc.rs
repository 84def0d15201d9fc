//! `strata gc`: removes images nobody requested within a window, then the
//! blobs no remaining image names, then debris (abandoned uploads, dead
//! leases).
//!
//! Safe beside running replicas: a blob is only removed when no kept image
//! names it *and* it is older than the window, so a build in progress (whose
//! image record does not exist yet) keeps the blobs it just wrote. The one
//! race left, a build reusing an old unreferenced layer while gc removes it,
//! is caught afterwards: an image recorded since gc started that names a
//! removed blob loses its record and is rebuilt on its next request.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectMeta;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::config::{check_gc_window, Config};
use crate::error::{Error, Result};
use crate::storage::{
    access_key, Storage, ACCESS_PREFIX, BLOB_PREFIX, IMAGE_PREFIX, INDEX_PREFIX, LAYER_PREFIX, LEASE_PREFIX,
    REFERRER_PREFIX, STAGING_PREFIX,
};

/// Uploads older than this were abandoned (a crash, a killed replica).
pub const STAGING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Reads of small records in flight at once.
const READS: usize = 16;

/// The part of an image record gc needs.
#[derive(Deserialize)]
struct ImageRecord {
    /// `None` until a client asked for the schema 2 manifest of an image
    /// whose OCI layers are not gzip; `docker_pending` names the blob it
    /// will need besides OCI's config.
    #[serde(default)]
    docker: Option<String>,
    oci: String,
    #[serde(default)]
    docker_pending: Option<DockerPending>,
    #[serde(default)]
    summary: Option<Summary>,
    /// The Nix GC roots directory of the build, on the machine that built it
    /// (older records have none).
    #[serde(default)]
    gc_root: Option<std::path::PathBuf>,
    #[serde(default)]
    sbom: Option<SbomRef>,
}

#[derive(Deserialize)]
struct DockerPending {
    final_layer: Descriptor,
}

/// An image's SBOM: the artifact manifests naming its document.
#[derive(Deserialize)]
struct SbomRef {
    #[serde(default)]
    manifests: Vec<String>,
}

#[derive(Deserialize)]
struct Summary {
    packages: Vec<String>,
    #[serde(default)]
    layers: Vec<SummaryLayer>,
}

#[derive(Deserialize)]
struct SummaryLayer {
    #[serde(default)]
    paths: Vec<String>,
}

/// Docker and OCI manifests alike.
#[derive(Deserialize)]
struct ManifestRefs {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// A tag's index: its two blobs, and the image manifests it lists.
#[derive(Deserialize)]
struct IndexRecord {
    #[serde(default)]
    docker: Option<String>,
    oci: String,
    manifests: Vec<String>,
}

#[derive(Deserialize)]
struct LayerRecord {
    digest: String,
}

/// What one run found, and removed unless it was a dry run.
#[derive(Debug, Default)]
pub struct Report {
    pub deleted: bool,
    pub older_than: Duration,
    pub images_kept: usize,
    /// Stale images: their packages (or key) and when last requested.
    pub images_removed: Vec<(String, SystemTime)>,
    pub blobs_kept: usize,
    pub blob_bytes_kept: u64,
    pub blobs_removed: usize,
    pub blob_bytes_removed: u64,
    /// Unreferenced but newer than the window: perhaps a build in progress.
    pub blobs_young: usize,
    pub layer_records_removed: usize,
    /// Indexes that lost one of their images: their records (their blobs
    /// are counted with the blobs).
    pub index_records_removed: usize,
    /// Referrer records whose subject or artifact manifest is gone.
    pub referrer_records_removed: usize,
    pub access_marks_removed: usize,
    pub staging_removed: usize,
    pub leases_removed: usize,
    /// Empty lease directories of a `file://` store, older than a day.
    pub lease_dirs_removed: usize,
    /// Images recorded during the run that named a removed blob: their
    /// records were removed so that they are rebuilt.
    pub images_repaired: usize,
    /// Digests of the blobs removed (manifests among them), for the serving
    /// process to drop from memory.
    pub removed_digests: HashSet<String>,
    /// What the kept images hold in Nix (roots, store paths), for the Nix
    /// part.
    pub kept: crate::nix::gc::Kept,
    /// The Nix part, when it ran.
    pub nix: Option<crate::nix::gc::NixReport>,
    /// `false`: the object store was only read (to know which images stay),
    /// not collected: another replica collects it.
    pub storage_part: bool,
}

/// Which parts of a collection run here.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    /// The object store: images, blobs, records, debris.
    pub storage: bool,
    /// This machine's Nix GC roots and the store paths only they hold.
    pub nix: bool,
}

/// One whole collection, as `strata gc` and the schedule in `strata serve`
/// run it: the object store first (which decides which images stay), then
/// the Nix roots of this machine.
pub async fn run(cfg: &Config, storage: &Storage, older_than: Duration, delete: bool, parts: Parts) -> Result<Report> {
    check_gc_window(older_than, cfg.cache.access_mark_interval()).map_err(|e| Error::GcWindow(e.to_string()))?;
    let result = run_parts(cfg, storage, older_than, delete, parts).await;
    match &result {
        Ok(r) => {
            let storage_bytes = if r.deleted && r.storage_part { r.blob_bytes_removed } else { 0 };
            let nix_bytes = r.nix.as_ref().filter(|n| n.deleted).map_or(0, |n| n.bytes_freed);
            crate::ops::metrics::gc(storage_bytes, nix_bytes, true);
        }
        Err(_) => crate::ops::metrics::gc(0, 0, false),
    }
    result
}

async fn run_parts(cfg: &Config, storage: &Storage, older_than: Duration, delete: bool, parts: Parts) -> Result<Report> {
    let records_read_at = std::time::SystemTime::now();
    let mut report = collect(storage, older_than, delete && parts.storage).await?;
    report.deleted = delete;
    report.storage_part = parts.storage;
    if parts.nix {
        let opts = crate::nix::gc::Options {
            work_dir: cfg.nix_work_dir(),
            older_than,
            nix_timeout: Duration::from_secs(cfg.nix.timeout_secs),
            records_read_at,
        };
        report.nix = Some(crate::nix::gc::collect(&opts, &report.kept, delete).await?);
    }
    Ok(report)
}


/// `[gc] enabled`: runs [`run`] with `--delete` every `interval` in the
/// background of `strata serve`, logging each report. What a run removed is
/// handed to `forget`, so that it leaves this process's memory at once
/// (other replicas look at the store again once the images' marks are due).
/// gc works on the store's records, not on the builder: it is told how to
/// forget rather than importing the build.
pub fn spawn_schedule(
    cfg: std::sync::Arc<Config>,
    storage: Storage,
    forget: impl Fn(&HashSet<String>) + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let gc = cfg.gc.clone();
    if !gc.enabled {
        return None;
    }
    let (older_than, interval) = (gc.older_than(), gc.interval());
    tracing::info!(
        older_than = %humantime::format_duration(older_than),
        interval = %humantime::format_duration(interval),
        storage = gc.storage,
        nix = gc.nix,
        "scheduled gc on"
    );
    Some(tokio::spawn(async move {
        let parts = Parts { storage: gc.storage, nix: gc.nix };
        loop {
            tokio::time::sleep(interval).await;
            match run(&cfg, &storage, older_than, true, parts).await {
                Ok(report) => {
                    forget(&report.removed_digests);
                    let nix = report.nix.as_ref().map_or(0, |n| n.bytes_freed);
                    tracing::info!(
                        images_removed = report.images_removed.len(),
                        blob_bytes_removed = report.blob_bytes_removed,
                        nix_bytes_freed = nix,
                        "scheduled gc done:\n{report}"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "scheduled gc failed; next run in {}", humantime::format_duration(interval)),
            }
        }
    }))
}


fn digest_of(meta: &ObjectMeta) -> Option<String> {
    meta.location.filename().map(|hex| format!("sha256:{hex}"))
}

/// Reads many small JSON objects, a few at a time; unreadable ones are `None`.
async fn read_all<T: serde::de::DeserializeOwned>(storage: &Storage, keys: Vec<Path>) -> Result<Vec<(Path, Option<T>)>> {
    futures::stream::iter(keys)
        .map(|key| async move {
            let bytes: Option<Bytes> = storage.get_bytes(key.as_ref()).await?;
            Ok((key, bytes.and_then(|b| serde_json::from_slice(&b).ok())))
        })
        .buffer_unordered(READS)
        .try_collect()
        .await
}

/// Every blob a manifest names, itself included; `None` if the manifest is
/// gone or unreadable (its image cannot be served as recorded).
async fn manifest_blobs(storage: &Storage, digest: &str) -> Result<Option<Vec<String>>> {
    let Some(bytes) = storage.get_blob_bytes(digest).await? else { return Ok(None) };
    let Ok(m) = serde_json::from_slice::<ManifestRefs>(&bytes) else { return Ok(None) };
    let mut all = vec![digest.to_string(), m.config.digest];
    all.extend(m.layers.into_iter().map(|l| l.digest));
    Ok(Some(all))
}

/// Blobs an image record names (its SBOM's among them), or `None` when one
/// of its image manifests is missing. A missing SBOM manifest only loses
/// its referrer record (step 3): the image itself still serves.
async fn record_blobs(storage: &Storage, rec: &ImageRecord) -> Result<Option<Vec<String>>> {
    let mut all = Vec::new();
    for m in std::iter::once(&rec.oci).chain(&rec.docker) {
        match manifest_blobs(storage, m).await? {
            Some(b) => all.extend(b),
            None => return Ok(None),
        }
    }
    all.extend(rec.docker_pending.iter().map(|p| p.final_layer.digest.clone()));
    for m in rec.sbom.iter().flat_map(|s| &s.manifests) {
        all.extend(manifest_blobs(storage, m).await?.unwrap_or_default());
    }
    Ok(Some(all))
}

/// (subject, referrer) digests of a `meta/referrers/<subject>/<referrer>.json` key.
fn referrer_pair(key: &Path) -> Option<(String, String)> {
    let rest = key.as_ref().strip_prefix(REFERRER_PREFIX)?;
    let (subject, file) = rest.split_once('/')?;
    Some((format!("sha256:{subject}"), format!("sha256:{}", file.strip_suffix(".json")?)))
}

/// One collection over `storage`: images not requested within `older_than`
/// and what only they used; removes it all when `delete`, else reports.
pub async fn collect(storage: &Storage, older_than: Duration, delete: bool) -> Result<Report> {
    let started = SystemTime::now();
    let cutoff = started.checked_sub(older_than).unwrap_or(SystemTime::UNIX_EPOCH);
    let is_old = |m: &ObjectMeta| SystemTime::from(m.last_modified) < cutoff;
    let mut report = Report { deleted: delete, older_than, storage_part: true, ..Default::default() };

    // 1. Images: the last request is the newer of the access mark and the
    //    record itself (written when the image was built).
    let accessed: HashMap<Path, ObjectMeta> =
        storage.list(ACCESS_PREFIX).await?.into_iter().map(|m| (m.location.clone(), m)).collect();
    let records = storage.list(IMAGE_PREFIX).await?;
    let modified: HashMap<Path, SystemTime> =
        records.iter().map(|m| (m.location.clone(), SystemTime::from(m.last_modified))).collect();
    let parsed = read_all::<ImageRecord>(storage, records.iter().map(|m| m.location.clone()).collect()).await?;
    let mut live: HashSet<String> = HashSet::new();
    let mut stale: Vec<Path> = Vec::new();
    let mut stale_marks: Vec<Path> = Vec::new();
    let mut kept_marks: HashSet<Path> = HashSet::new();
    for (key, rec) in parsed {
        let mut last = modified[&key];
        // Marked by the OCI manifest; stores written before this release
        // marked the schema 2 one.
        let mark: Vec<Path> = rec
            .iter()
            .flat_map(|r| std::iter::once(&r.oci).chain(&r.docker))
            .map(|d| Path::from(access_key(d)))
            .collect();
        for m in mark.iter().filter_map(|m| accessed.get(m)) {
            last = last.max(SystemTime::from(m.last_modified));
        }
        let blobs = match &rec {
            Some(r) if last >= cutoff => record_blobs(storage, r).await?,
            _ => None,
        };
        match blobs {
            Some(blobs) => {
                report.images_kept += 1;
                live.extend(blobs);
                kept_marks.extend(mark);
                if let Some(r) = &rec {
                    report.kept.roots.extend(r.gc_root.clone());
                    let layers = r.summary.iter().flat_map(|s| &s.layers);
                    report.kept.paths.extend(layers.flat_map(|l| l.paths.iter().cloned()));
                }
            }
            // Stale, unreadable, or missing a manifest (which the server
            // would rebuild anyway).
            None => {
                let name = match rec.as_ref().and_then(|r| r.summary.as_ref()) {
                    Some(s) => s.packages.join(" "),
                    None => key.filename().unwrap_or_default().to_string(),
                };
                report.images_removed.push((name, last));
                stale.push(key);
                stale_marks.extend(mark);
            }
        }
    }
    // Indexes: kept while every image they list is kept, so that a client
    // never gets an index naming a removed manifest; otherwise they go
    // with the first of their images (their blobs in step 2).
    let index_keys: Vec<Path> = storage.list(INDEX_PREFIX).await?.into_iter().map(|m| m.location).collect();
    let mut stale_indexes: Vec<Path> = Vec::new();
    for (key, rec) in read_all::<IndexRecord>(storage, index_keys).await? {
        match rec {
            Some(r) if r.manifests.iter().all(|m| live.contains(m)) => live.extend(r.docker.into_iter().chain([r.oci])),
            _ => stale_indexes.push(key),
        }
    }
    report.index_records_removed = stale_indexes.len();
    // Marks of images that no longer exist at all.
    for (key, meta) in &accessed {
        if !kept_marks.contains(key) && is_old(meta) && !stale_marks.contains(key) {
            stale_marks.push(key.clone());
        }
    }

    // 2. Blobs no kept image names; the young ones may belong to a build
    //    that has not written its record yet.
    let mut doomed_blobs: Vec<Path> = Vec::new();
    let mut doomed_digests: HashSet<String> = HashSet::new();
    for meta in storage.list(BLOB_PREFIX).await? {
        let Some(digest) = digest_of(&meta) else { continue };
        if live.contains(&digest) {
            report.blobs_kept += 1;
            report.blob_bytes_kept += meta.size;
        } else if !is_old(&meta) {
            report.blobs_young += 1;
            report.blobs_kept += 1;
            report.blob_bytes_kept += meta.size;
        } else {
            report.blobs_removed += 1;
            report.blob_bytes_removed += meta.size;
            doomed_digests.insert(digest);
            doomed_blobs.push(meta.location);
        }
    }

    // 3. Layer records pointing at removed (or long gone) blobs: harmless,
    //    as a build checks the blob, but clutter.
    let layer_keys: Vec<Path> = storage.list(LAYER_PREFIX).await?.into_iter().map(|m| m.location).collect();
    let mut doomed_layer_records = Vec::new();
    for (key, rec) in read_all::<LayerRecord>(storage, layer_keys).await? {
        let gone = match rec {
            Some(r) => doomed_digests.contains(&r.digest) || storage.blob_size(&r.digest).await?.is_none(),
            None => true,
        };
        if gone {
            doomed_layer_records.push(key);
        }
    }
    report.layer_records_removed = doomed_layer_records.len();
    // Referrer records: the referrers API must not list an artifact whose
    // manifest, or whose subject, is gone.
    let mut doomed_referrers = Vec::new();
    for meta in storage.list(REFERRER_PREFIX).await? {
        let gone = match referrer_pair(&meta.location) {
            Some((subject, referrer)) => {
                let mut gone = false;
                for d in [&subject, &referrer] {
                    gone = gone || doomed_digests.contains(d) || storage.blob_size(d).await?.is_none();
                }
                gone
            }
            None => true,
        };
        if gone {
            doomed_referrers.push(meta.location);
        }
    }
    report.referrer_records_removed = doomed_referrers.len();
    report.access_marks_removed = stale_marks.len();

    // 4. Debris: uploads abandoned mid-way, leases of replicas that died
    //    (a live lease is rewritten every few seconds).
    let debris_cutoff = started.checked_sub(STAGING_MAX_AGE).unwrap_or(SystemTime::UNIX_EPOCH);
    let old_debris = |m: &ObjectMeta| SystemTime::from(m.last_modified) < debris_cutoff;
    let staging: Vec<Path> = storage.list(STAGING_PREFIX).await?.into_iter().filter(old_debris).map(|m| m.location).collect();
    let leases: Vec<Path> = storage.list(LEASE_PREFIX).await?.into_iter().filter(old_debris).map(|m| m.location).collect();
    report.staging_removed = staging.len();
    report.leases_removed = leases.len();

    if !delete {
        return Ok(report);
    }
    // Records first: from here no replica loads these images from the
    // store, so nothing serves a manifest whose blobs are going.
    let records = stale.iter().chain(&stale_indexes).chain(&stale_marks);
    for key in records.chain(&doomed_layer_records).chain(&doomed_referrers) {
        storage.delete(key).await?;
    }
    for key in doomed_blobs.iter().chain(&staging).chain(&leases) {
        storage.delete(key).await?;
    }
    report.lease_dirs_removed = storage.prune_empty_dirs(LEASE_PREFIX, debris_cutoff).await?;
    report.images_repaired = repair(storage, started, &doomed_digests).await?;
    report.removed_digests = doomed_digests;
    Ok(report)
}

/// Removes the records of images written since `since` that name a removed
/// blob: the server then rebuilds them instead of serving them broken.
async fn repair(storage: &Storage, since: SystemTime, removed: &HashSet<String>) -> Result<usize> {
    if removed.is_empty() {
        return Ok(0);
    }
    let fresh: Vec<Path> = storage
        .list(IMAGE_PREFIX)
        .await?
        .into_iter()
        .filter(|m| SystemTime::from(m.last_modified) >= since)
        .map(|m| m.location)
        .collect();
    let mut repaired = 0;
    for (key, rec) in read_all::<ImageRecord>(storage, fresh).await? {
        let Some(rec) = rec else { continue };
        let broken = match record_blobs(storage, &rec).await? {
            Some(blobs) => blobs.iter().any(|b| removed.contains(b)),
            None => true,
        };
        if broken {
            tracing::warn!(record = %key, "an image built during gc reused a removed blob; dropping its record so it is rebuilt");
            storage.delete(&key).await?;
            repaired += 1;
        }
    }
    Ok(repaired)
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.deleted && self.storage_part { "removed" } else { "to remove" };
        let window = humantime::format_duration(self.older_than);
        if !self.storage_part {
            writeln!(f, "images:        {} kept, {} stale (not requested within {window}); the store is collected elsewhere", self.images_kept, self.images_removed.len())?;
            if let Some(n) = &self.nix {
                writeln!(f, "{n}")?;
            }
            if !self.deleted {
                write!(f, "dry run: nothing was removed; run again with --delete to remove it")?;
            }
            return Ok(());
        }
        writeln!(f, "images:        {} kept, {} {verb} (not requested within {window})", self.images_kept, self.images_removed.len())?;
        let mut by_age: BTreeMap<SystemTime, &str> = BTreeMap::new();
        for (name, last) in &self.images_removed {
            by_age.insert(*last, name);
        }
        const SHOWN: usize = 20;
        for (last, name) in by_age.iter().take(SHOWN) {
            writeln!(f, "  - {name} (last requested {})", humantime::format_rfc3339_seconds(*last))?;
        }
        if self.images_removed.len() > SHOWN {
            writeln!(f, "  … and {} more", self.images_removed.len() - SHOWN)?;
        }
        writeln!(
            f,
            "blobs:         {} kept ({}), {} {verb} ({})",
            self.blobs_kept,
            human(self.blob_bytes_kept),
            self.blobs_removed,
            human(self.blob_bytes_removed)
        )?;
        if self.blobs_young > 0 {
            writeln!(f, "               {} unreferenced but newer than the window, kept (a build may be using them)", self.blobs_young)?;
        }
        writeln!(
            f,
            "records:       {} layer records, {} referrer records, {} index records, {} access marks {verb}",
            self.layer_records_removed, self.referrer_records_removed, self.index_records_removed, self.access_marks_removed
        )?;
        writeln!(f, "debris:        {} staged uploads, {} leases older than a day {verb}", self.staging_removed, self.leases_removed)?;
        if self.lease_dirs_removed > 0 {
            writeln!(f, "               {} empty lease directories older than a day removed", self.lease_dirs_removed)?;
        }
        if self.images_repaired > 0 {
            writeln!(f, "repaired:      {} images built during gc reused a removed blob; they will be rebuilt", self.images_repaired)?;
        }
        if let Some(n) = &self.nix {
            writeln!(f, "{n}")?;
        }
        if !self.deleted {
            write!(f, "dry run: nothing was removed; run again with --delete to remove it")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrer_keys_name_subject_and_referrer() {
        let (a, b) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        let key = Path::from(crate::storage::referrer_key(&a, &b));
        assert_eq!(referrer_pair(&key), Some((a, b)));
        assert_eq!(referrer_pair(&Path::from("meta/referrers/x")), None);
    }
}
