//! When an image was last requested, for `strata gc`: a small object
//! `meta/access/<manifest hex>` whose modification time is the answer.
//!
//! Written at most once an interval (`[cache] access_mark_secs`, an hour by
//! default) per image and process, from a spawned task: a warm pull pays one
//! in-memory lookup, never a store round trip. The same interval bounds how
//! long a replica serves an image from memory without looking at the store:
//! once its mark is due, the request goes the store's way again, so an image
//! `gc` removed is rebuilt instead of served with missing blobs. That is
//! why gc refuses windows shorter than `config::MIN_WINDOW_MARKS`
//! intervals: an image requested all along may carry a mark one interval
//! old, and the replica serving it trusts its memory that long.

use std::time::Duration;


pub const ACCESS_PREFIX: &str = "meta/access/";

/// The marker of the image whose Docker manifest is `digest`.
pub fn access_key(digest: &str) -> String {
    format!("{ACCESS_PREFIX}{}", digest.trim_start_matches("sha256:"))
}

/// Images this process marked within the last interval.
#[derive(Clone)]
pub(super) struct Marks {
    recent: moka::sync::Cache<String, ()>,
    interval: Duration,
}

impl Marks {
    pub fn new(interval: Duration) -> Marks {
        let recent = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(interval).build();
        Marks { recent, interval }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn due(&self, digest: &str) -> bool {
        !self.recent.contains_key(digest)
    }

    /// True when the caller should write the marker now; the slot is taken
    /// at once so that concurrent requests write it once.
    pub fn take(&self, digest: &str) -> bool {
        self.recent.entry(digest.to_string()).or_insert(()).is_fresh()
    }

    /// A marker that could not be written is retried by the next request;
    /// one of an image gc removed is written afresh when it is rebuilt.
    pub fn forget(&self, digest: &str) {
        self.recent.invalidate(digest);
    }
}
