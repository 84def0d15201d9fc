//! The GC roots of builds: one directory per set of top-level paths, under
//! `<work dir>/gcroots`, and the claim a build holds on it from before
//! `nix-build` until its image record is written, so that `strata gc`
//! leaves the directory alone meanwhile (see `gc`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::Result;
use crate::nix::store::internal;

pub fn roots_key(roots: &[String]) -> String {
    let mut sorted: Vec<&str> = roots.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sorted.join("\n").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A build's claim on its root directory `<gcroots>/<key>`: a shared lock on
/// `<gcroots>/<key>.lock`, held from before `nix-build` until the image
/// record naming the directory is written (the [`crate::nix::Resolved`]
/// holding it is dropped). Shared, so that builds of the same image on two
/// servers of one machine can both hold it; when the last copy goes, the
/// lock file's time is set to that moment (see [`collect`]). The lock file
/// stays when gc removes the directory: a build waiting on the lock must
/// get it on the file gc locked, not on one gc unlinked.
#[derive(Debug, Clone)]
pub struct RootsClaim {
    _held: std::sync::Arc<ClaimFile>,
}

#[derive(Debug)]
pub(crate) struct ClaimFile(std::fs::File);

impl Drop for ClaimFile {
    fn drop(&mut self) {
        // Before the lock goes (with the file): gc compares this time with
        // when it read the records.
        let _ = self.0.set_modified(SystemTime::now());
    }
}

/// Claims are not part of what a resolution says.
impl PartialEq for RootsClaim {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for RootsClaim {}

pub(crate) fn claim_file(dir: &Path) -> PathBuf {
    dir.with_extension("lock")
}

impl RootsClaim {
    /// Takes the claim on `dir`, waiting while a gc removes that directory.
    pub async fn take(dir: &Path) -> std::io::Result<RootsClaim> {
        let path = claim_file(dir);
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            file.lock_shared()?;
            Ok(RootsClaim { _held: std::sync::Arc::new(ClaimFile(file)) })
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// What a root directory's claim file says when gc looks.
pub(crate) enum Claim {
    /// No lock file: a directory from before builds took claims.
    Unknown,
    /// A build holds it.
    Held,
    /// Nobody holds it; gc does now (the lock goes with the file) and the
    /// last build let go at this time.
    Free(std::fs::File, SystemTime),
}

pub(crate) fn check_claim(dir: &Path) -> Claim {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(claim_file(dir)) else { return Claim::Unknown };
    match file.try_lock() {
        Ok(()) => {
            let at = file.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            Claim::Free(file, at)
        }
        Err(_) => Claim::Held,
    }
}

pub(crate) struct RootDir {
    pub(crate) dir: PathBuf,
    /// Store paths the links point at.
    pub(crate) targets: Vec<String>,
    pub(crate) newest: SystemTime,
}

pub(crate) fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::symlink_metadata(p).and_then(|m| m.modified()).ok()
}

/// Every directory under `gcroots`, with its links' targets and the time
/// the newest of them (or the directory) was written.
pub(crate) fn scan(gcroots: &Path) -> Result<Vec<RootDir>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(gcroots).map_err(|e| internal(&gcroots.display().to_string(), e))? {
        let entry = entry.map_err(|e| internal("reading gcroots", e))?;
        let dir = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
        if !meta.is_dir() {
            continue;
        }
        let mut newest = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut targets = Vec::new();
        for link in std::fs::read_dir(&dir).map_err(|e| internal(&dir.display().to_string(), e))?.flatten() {
            let link = link.path();
            newest = newest.max(mtime(&link).unwrap_or(SystemTime::UNIX_EPOCH));
            if let Ok(t) = std::fs::read_link(&link) {
                targets.push(t.to_string_lossy().into_owned());
            }
        }
        targets.sort();
        targets.dedup();
        dirs.push(RootDir { dir, targets, newest });
    }
    dirs.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HELLO: &str = "/nix/store/5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1";
    const BUSYBOX: &str = "/nix/store/r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static";

    #[test]
    fn roots_key_ignores_order() {
        let a = roots_key(&[HELLO.into(), BUSYBOX.into()]);
        assert_eq!(a, roots_key(&[BUSYBOX.into(), HELLO.into()]));
        assert_ne!(a, roots_key(&[HELLO.into()]));
    }

    /// A claim is seen as held while any copy of it lives (also from this
    /// process: flock locks belong to the open file), then as free with the
    /// time it was let go; gc's own lock keeps a build waiting.
    #[tokio::test]
    async fn claims_are_held_until_the_last_copy_goes_then_dated() {
        let gcroots = tempfile::tempdir().unwrap();
        let dir = gcroots.path().join("abc123");
        assert!(matches!(check_claim(&dir), Claim::Unknown), "no claim file yet");

        let claim = RootsClaim::take(&dir).await.unwrap();
        let copy = claim.clone();
        drop(claim);
        assert!(matches!(check_claim(&dir), Claim::Held));
        let before = SystemTime::now() - Duration::from_millis(10);
        drop(copy);
        let Claim::Free(lock, let_go) = check_claim(&dir) else { panic!("free once the last copy went") };
        assert!(let_go >= before, "dated when let go: {let_go:?} < {before:?}");

        // While gc holds the lock, a build waits for it.
        let waiting = tokio::spawn({
            let dir = dir.clone();
            async move { RootsClaim::take(&dir).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "a build took a claim gc holds");
        drop(lock);
        let taken = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the build gets it").unwrap();
        assert!(matches!(check_claim(&dir), Claim::Held));
        drop(taken);
    }
}
