//! What a client with a local blob cache downloads, pull after pull.
//!
//! A registry client (docker, podman, skopeo into one OCI layout) fetches a
//! blob only when it holds no blob of that digest. So the cost of a pull is
//! the bytes of the image's blobs not seen in any earlier pull, and that is
//! what a layering strategy is judged by. Manifests are left out: they are
//! fetched on every pull by tag whatever the layering, and are a few KiB.

use std::collections::BTreeMap;

/// A blob as a manifest references it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// One pull's cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulled {
    /// Blobs the client did not have.
    pub blobs: usize,
    pub bytes: u64,
}

/// The blobs a client holds, by digest.
#[derive(Debug, Default, Clone)]
pub struct ClientCache {
    have: BTreeMap<String, u64>,
}

impl ClientCache {
    /// Pulls an image's blobs (config and layers): counts and keeps those
    /// not held yet. A blob listed twice in one image is fetched once.
    pub fn pull(&mut self, blobs: &[Blob]) -> Pulled {
        let mut pulled = Pulled::default();
        for b in blobs {
            if self.have.insert(b.digest.clone(), b.size).is_none() {
                pulled.blobs += 1;
                pulled.bytes += b.size;
            }
        }
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
        Blob { digest: d.into(), size }
    }

    #[test]
    fn only_unseen_blobs_cost() {
        let mut c = ClientCache::default();
        assert_eq!(c.pull(&[b("a", 10), b("b", 5)]), Pulled { blobs: 2, bytes: 15 });
        assert_eq!(c.pull(&[b("a", 10), b("c", 7), b("c", 7)]), Pulled { blobs: 1, bytes: 7 });
        assert_eq!(c.pull(&[b("b", 5)]), Pulled::default());
        assert_eq!(c.bytes(), 22);
        assert!(c.has("c") && !c.has("d"));
    }

    #[test]
    fn reads_config_and_layers() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":3},
            "layers":[{"digest":"sha256:l1","size":100},{"digest":"sha256:l2","size":20}]}"#;
        assert_eq!(manifest_blobs(m).unwrap(), vec![b("sha256:c", 3), b("sha256:l1", 100), b("sha256:l2", 20)]);
        assert!(manifest_blobs(b"{}").is_err());
    }
}
