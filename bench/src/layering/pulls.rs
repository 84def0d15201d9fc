//! What a client with a local blob cache downloads, pull after pull.
//!
//! A registry client (docker, podman, skopeo into one OCI layout) fetches a
//! blob only when it holds no blob of that digest. So the cost of a pull is
//! the bytes of the image's blobs not seen in any earlier pull, and that is
//! what a layering strategy is judged by. The manifest counts too: a new
//! image is a new manifest, and it grows with the number of layers.
//!
//! Part of what a pull downloads is new to the client whatever the
//! layering (store paths it never had); the rest is *re-downloaded*: store
//! paths it already holds, fetched again because the layer around them
//! changed. Only that part is the layering's doing, so it is counted
//! apart: each new blob's bytes are shared among its store paths by NAR
//! size, and the shares of paths the client held are re-downloaded bytes.

use std::collections::{BTreeMap, BTreeSet};

/// A blob as a manifest references it, and what it holds: the store paths
/// of a layer with their NAR sizes (none for a manifest, a config or the
/// symlink layer).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub paths: Vec<(String, u64)>,
}

/// One pull's cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Blobs the client did not have.
    pub blobs: usize,
    pub bytes: u64,
    /// The part of `bytes` that carried store paths the client already had.
    pub redownloaded: u64,
}

/// The blobs a client holds, by digest, and the store paths they hold.
#[derive(Debug, Default, Clone)]
pub struct ClientCache {
    have: BTreeMap<String, u64>,
    paths: BTreeSet<String>,
}

impl ClientCache {
    /// Pulls an image's blobs (manifest, config and layers): counts and
    /// keeps those not held yet. A blob listed twice in one image is
    /// fetched once.
    pub fn pull(&mut self, blobs: &[Blob]) -> Pulled {
        let mut pulled = Pulled::default();
        for b in blobs {
            if self.have.insert(b.digest.clone(), b.size).is_none() {
                pulled.blobs += 1;
                pulled.bytes += b.size;
                let nar: u128 = b.paths.iter().map(|p| p.1 as u128).sum();
                let held: u128 = b.paths.iter().filter(|p| self.paths.contains(&p.0)).map(|p| p.1 as u128).sum();
                if nar > 0 {
                    pulled.redownloaded += (b.size as u128 * held / nar) as u64;
                }
            }
        }
        self.paths.extend(blobs.iter().flat_map(|b| b.paths.iter().map(|p| p.0.clone())));
        pulled
    }

    /// Whether the client holds a blob of this digest.
    pub fn has(&self, digest: &str) -> bool {
        self.have.contains_key(digest)
    }

    /// Bytes of every distinct blob pulled so far: what a registry stores
    /// for the whole series, too.
    pub fn bytes(&self) -> u64 {
        self.have.values().sum()
    }
}

/// The config and layer blobs of an OCI or Docker image manifest.
pub fn manifest_blobs(manifest: &[u8]) -> Result<Vec<Blob>, String> {
    let v: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let blob = |d: &serde_json::Value| -> Result<Blob, String> {
        Ok(Blob {
            digest: d["digest"].as_str().ok_or("descriptor without a digest")?.to_string(),
            size: d["size"].as_u64().ok_or("descriptor without a size")?,
            paths: Vec::new(),
        })
    };
    let mut blobs = vec![blob(&v["config"])?];
    for layer in v["layers"].as_array().ok_or("manifest without layers")? {
        blobs.push(blob(layer)?);
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(d: &str, size: u64) -> Blob {
        Blob { digest: d.into(), size, paths: Vec::new() }
    }

    fn layer(d: &str, size: u64, paths: &[(&str, u64)]) -> Blob {
        Blob { paths: paths.iter().map(|&(p, n)| (p.to_string(), n)).collect(), ..b(d, size) }
    }

    #[test]
    fn only_unseen_blobs_cost() {
        let mut c = ClientCache::default();
        assert_eq!(c.pull(&[b("a", 10), b("b", 5)]), Pulled { blobs: 2, bytes: 15, redownloaded: 0 });
        assert_eq!(c.pull(&[b("a", 10), b("c", 7), b("c", 7)]), Pulled { blobs: 1, bytes: 7, redownloaded: 0 });
        assert_eq!(c.pull(&[b("b", 5)]), Pulled::default());
        assert_eq!(c.bytes(), 22);
        assert!(c.has("c") && !c.has("d"));
    }

    #[test]
    fn paths_held_in_another_blob_are_redownloaded() {
        let mut c = ClientCache::default();
        let first = c.pull(&[layer("l1", 100, &[("p", 300), ("q", 100)]), layer("l2", 40, &[("r", 50)])]);
        assert_eq!(first, Pulled { blobs: 2, bytes: 140, redownloaded: 0 });
        // p is held (in l1), s is new: 3/4 of the new blob's bytes by NAR.
        let second = c.pull(&[layer("l3", 80, &[("p", 300), ("s", 100)]), layer("l2", 40, &[("r", 50)]), b("cfg", 9)]);
        assert_eq!(second, Pulled { blobs: 2, bytes: 89, redownloaded: 60 });
    }

    #[test]
    fn reads_config_and_layers() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":3},
            "layers":[{"digest":"sha256:l1","size":100},{"digest":"sha256:l2","size":20}]}"#;
        assert_eq!(manifest_blobs(m).unwrap(), vec![b("sha256:c", 3), b("sha256:l1", 100), b("sha256:l2", 20)]);
        assert!(manifest_blobs(b"{}").is_err());
    }
}
