//! The check a user would make: pull every image of the series with skopeo,
//! through Strata's real registry API, into ONE OCI layout, and count the
//! blobs each pull adds. skopeo, like any client with a local store, skips
//! blobs the layout already holds, so what it adds is what it downloaded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use strata::build::Builder;

/// A builder's registry API on 127.0.0.1, served from this process until
/// dropped.
pub struct Served {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `builder` on a free loopback port.
pub async fn serve(builder: Arc<Builder>) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = strata::registry::router(builder);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("benchmark registry on {addr}: {e}");
        }
    });
    Ok(Served { addr, task })
}

/// One OCI layout that successive pulls go into.
pub struct Layout {
    dir: PathBuf,
}

/// How long one pull may take: a whole image at scale 1 is a few hundred
/// MB over loopback.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout { dir: dir.to_path_buf() }
    }

    /// Blobs held, by digest, with their sizes.
    pub fn blobs(&self) -> std::io::Result<BTreeMap<String, u64>> {
        let dir = self.dir.join("blobs").join("sha256");
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            out.insert(format!("sha256:{name}"), entry.metadata()?.len());
        }
        Ok(out)
    }

    /// `skopeo copy docker://ADDR/IMAGE:TAG oci:LAYOUT:REF`; returns the
    /// blobs the copy added to the layout (the manifest among them).
    pub async fn pull(
        &self,
        registry: SocketAddr,
        image: &str,
        tag: &str,
        reference: &str,
    ) -> anyhow::Result<BTreeMap<String, u64>> {
        let before = self.blobs()?;
        let src = format!("docker://{registry}/{image}:{tag}");
        let dest = format!("oci:{}:{reference}", self.dir.display());
        let child = tokio::process::Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", &src, &dest])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(PULL_TIMEOUT, child)
            .await
            .map_err(|_| anyhow::anyhow!("skopeo copy {src} took over {PULL_TIMEOUT:?}"))?
            .map_err(|e| anyhow::anyhow!("cannot run skopeo (is it installed?): {e}"))?;
        if !out.status.success() {
            anyhow::bail!("skopeo copy {src} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(self.blobs()?.into_iter().filter(|(d, _)| !before.contains_key(d)).collect())
    }
}
