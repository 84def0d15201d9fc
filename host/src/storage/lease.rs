//! Build leases: when several replicas share one bucket and all receive the
//! first request for a new image, one of them runs Nix and the others wait
//! for its image record.
//!
//! A lease is a small object `leases/<cache key>/<generation>` created with
//! `PutMode::Create`, the one conditional write every backend has (S3's
//! `If-None-Match`, GCS's generation match, Azure's `If-None-Match`, the
//! local file system's exclusive create). The newest generation is the
//! lease. Its holder renews it every third of its lifetime; one that died
//! mid-build stops renewing, and once it has expired the next generation is
//! created by whichever waiter gets there first: a takeover is itself a
//! conditional create, so two waiters cannot both take over, and nobody ever
//! deletes a lease that someone else could still hold (only superseded
//! generations and one's own).
//!
//! Expiry times are the holder's wall clock: replicas' clocks must agree to
//! well within a lease's lifetime (NTP does).

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::config::StorageConfig;
use crate::storage::{now_ms, Created, Storage, LEASE_PREFIX};

/// The leases of one process on one store: its identity and timing. Leases
/// sit on top of the store (they are objects in it); the store knows
/// nothing of them.
#[derive(Clone)]
pub struct Leases {
    storage: Storage,
    /// Who this process is in lease objects and logs.
    owner: String,
    ttl: Duration,
    wait: Duration,
    /// Whether the store honours conditional creates, found out once.
    conditional: Arc<tokio::sync::OnceCell<bool>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    owner: String,
    /// Unix milliseconds after which the lease may be taken over.
    expires_ms: u64,
}

/// What [`Leases::lease`] came back with.
pub enum Acquired<T> {
    /// This process builds; the lease lasts as long as the value.
    Held(Lease),
    /// Another replica built it meanwhile.
    Published(T),
}

/// A held lease, renewed in the background and released on drop.
pub struct Lease {
    key: Option<Path>,
    leases: Option<Leases>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Leases {
    /// `[storage] lease_secs` and `lease_wait_secs`.
    pub fn from_config(storage: Storage, cfg: &StorageConfig) -> Leases {
        Leases::new(storage, Duration::from_secs(cfg.lease_secs), Duration::from_secs(cfg.lease_wait_secs))
    }

    /// Leases lasting `ttl`, waited on for at most `wait`: tests make them
    /// expire in seconds.
    pub fn new(storage: Storage, ttl: Duration, wait: Duration) -> Leases {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = if host.trim().is_empty() { "host" } else { host.trim() };
        let owner = format!("{host}/{}/{:08x}", std::process::id(), rand::random::<u32>());
        Leases { storage, owner, ttl, wait, conditional: Arc::default() }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn record(&self) -> Bytes {
        let rec = LeaseRecord { owner: self.owner.clone(), expires_ms: now_ms() + self.ttl.as_millis() as u64 };
        Bytes::from(serde_json::to_vec(&rec).expect("a lease record serializes"))
    }
}

fn generation_key(image: &str, generation: u64) -> String {
    format!("{LEASE_PREFIX}{image}/{generation:020}")
}

/// The lease objects of one image, oldest generation first.
async fn generations(storage: &Storage, image: &str) -> Result<Vec<(u64, Path)>> {
    let mut found: Vec<(u64, Path)> = storage
        .list(&format!("{LEASE_PREFIX}{image}/"))
        .await?
        .into_iter()
        .filter_map(|m| Some((m.location.filename()?.parse().ok()?, m.location)))
        .collect();
    found.sort();
    Ok(found)
}

impl Leases {
    /// Whether a second conditional create of one key is refused, as it must
    /// be for leases to mean anything. Some S3-compatible servers accept
    /// `If-None-Match: *` and ignore it (s3s-fs 0.14 does): every replica
    /// would then "win" every lease. Asked of the store once per process.
    pub async fn conditional_create_works(&self) -> Result<bool> {
        let store = &self.storage;
        let works = self
            .conditional
            .get_or_try_init(|| async {
                let key = format!("{LEASE_PREFIX}.probe/{}", self.owner.replace('/', "-"));
                let first = store.put_if_absent(&key, Bytes::from_static(b"probe")).await?;
                let second = store.put_if_absent(&key, Bytes::from_static(b"probe")).await?;
                let _ = store.delete(&Path::from(key)).await;
                let works = first == Some(Created::New) && second == Some(Created::Existed);
                if !works {
                    tracing::warn!(
                        storage = store.description(),
                        "the store cannot create objects conditionally, or ignores the condition: replicas sharing it may build the same image at once"
                    );
                }
                Ok::<_, Error>(works)
            })
            .await?;
        Ok(*works)
    }

    /// Takes the build lease of the image with cache key `image`, or waits
    /// while another replica holds it until `published` finds that replica's
    /// result. Bounded by `storage.lease_wait_secs`: past it the request is
    /// answered 503, to be retried.
    pub async fn lease<T, F, Fut>(&self, image: &str, mut published: F) -> Result<Acquired<T>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let (leases, store) = (self, &self.storage);
        if !self.conditional_create_works().await? {
            return Ok(match published().await? {
                Some(done) => Acquired::Published(done),
                None => Acquired::Held(Lease::none()),
            });
        }
        let deadline = Instant::now() + leases.wait;
        let mut delay = Duration::from_millis(100);
        let mut waiting_on: Option<String> = None;
        loop {
            if let Some(done) = published().await? {
                return Ok(Acquired::Published(done));
            }
            let gens = generations(store, image).await?;
            let current = match gens.last() {
                Some((g, key)) => match store.get_bytes(key.as_ref()).await? {
                    Some(bytes) => Some((*g, serde_json::from_slice::<LeaseRecord>(&bytes).ok())),
                    // Released between the listing and the read.
                    None => None,
                },
                None => None,
            };
            let next = match &current {
                Some((_, Some(rec))) if rec.expires_ms > now_ms() => {
                    if waiting_on.as_deref() != Some(&rec.owner) {
                        tracing::info!(image, holder = %rec.owner, "another replica is building this image; waiting for it");
                        waiting_on = Some(rec.owner.clone());
                    }
                    None
                }
                Some((g, rec)) => {
                    let holder = rec.as_ref().map(|r| r.owner.as_str()).unwrap_or("(unreadable lease)");
                    tracing::warn!(image, holder, "build lease expired (its replica stopped renewing it); taking over");
                    Some(g + 1)
                }
                None => Some(gens.last().map(|(g, _)| g + 1).unwrap_or(0)),
            };
            if let Some(generation) = next {
                let key = generation_key(image, generation);
                match store.put_if_absent(&key, leases.record()).await? {
                    Some(Created::New) => {
                        // Superseded generations: nobody holds them any more.
                        for (_, old) in gens.iter().filter(|(g, _)| *g < generation) {
                            let _ = store.delete(old).await;
                        }
                        tracing::debug!(image, generation, "build lease taken");
                        return Ok(Acquired::Held(Lease::renewed(self.clone(), Path::from(key))));
                    }
                    Some(Created::Existed) => continue, // someone else won this round; look again
                    None => {
                        tracing::warn!(
                            storage = store.description(),
                            "the store cannot create objects conditionally: replicas may build the same image at once"
                        );
                        return Ok(Acquired::Held(Lease::none()));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy { retry_after_secs: 10 });
            }
            // Jittered so that many waiting replicas do not poll in step.
            let jitter = Duration::from_millis(rand::random::<u64>() % 100);
            tokio::time::sleep((delay + jitter).min(deadline.saturating_duration_since(Instant::now()))).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

impl Lease {
    /// A lease that coordinates nothing: the store has no conditional put.
    fn none() -> Lease {
        Lease { key: None, leases: None, renewal: None }
    }

    fn renewed(leases: Leases, key: Path) -> Lease {
        let every = leases.ttl / 3;
        let renewal = tokio::spawn({
            let (leases, key) = (leases.clone(), key.clone());
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    // Only this process writes this generation: a plain
                    // overwrite. Should it have expired and been taken over
                    // meanwhile, the newer generation is the lease anyway.
                    if let Err(e) = leases.storage.put_bytes(key.as_ref(), leases.record()).await {
                        tracing::warn!(lease = %key, error = %e, "could not renew the build lease");
                    }
                }
            }
        });
        Lease { key: Some(key), leases: Some(leases), renewal: Some(renewal) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        if let (Some(leases), Some(key)) = (self.leases.take(), self.key.take()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = leases.storage.delete(&key).await {
                        tracing::warn!(lease = %key, error = %e, "could not release the build lease; it expires by itself");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_sort_as_numbers() {
        assert!(generation_key("k", 9) < generation_key("k", 10));
        assert_eq!(generation_key("k", 3), "leases/k/00000000000000000003");
    }
}
