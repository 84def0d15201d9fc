//! `strata build --output`: an image from the store written as an OCI image
//! layout or a `docker load`-able archive, so images can be built offline
//! with the server's plugins and config. A tag built for several platforms
//! is written as an OCI layout whose entry is the tag's index.

use anyhow::{bail, Context};
use futures::StreamExt;
use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::build::record::{Image, Tagged};
use crate::storage::Storage;

/// Where `--output` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `oci:DIR[:tag]`
    Oci { dir: PathBuf, tag: String },
    /// `docker-archive:FILE[:name:tag]`
    DockerArchive { file: PathBuf, reference: Option<String> },
}

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') => (d, t),
                _ => (rest, "latest"),
            };
            if dir.is_empty() {
                return Err("oci: needs a directory, e.g. oci:./out:latest".into());
            }
            strata_reference::parse_tag(tag).map_err(|e| crate::error::Error::from(e).to_string())?;
            Ok(Output::Oci { dir: dir.into(), tag: tag.into() })
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, reference) = match rest.split_once(':') {
                Some((f, r)) => (f, Some(r.to_string())),
                None => (rest, None),
            };
            if file.is_empty() {
                return Err("docker-archive: needs a file, e.g. docker-archive:./image.tar".into());
            }
            Ok(Output::DockerArchive { file: file.into(), reference })
        } else {
            Err(format!("{s:?}: use oci:DIR[:tag] or docker-archive:FILE[:name:tag]"))
        }
    }
}

async fn copy_blob(storage: &Storage, digest: &str, out: &mut (impl Write + ?Sized)) -> anyhow::Result<u64> {
    let (_, mut stream) = storage.get_blob(digest, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        out.write_all(&chunk)?;
        n += chunk.len() as u64;
    }
    Ok(n)
}

fn manifest_of(image: &Image) -> anyhow::Result<ImageManifest> {
    Ok(ImageManifest::from_reader(&image.oci.bytes[..])?)
}

fn blobs_of(m: &ImageManifest) -> Vec<String> {
    std::iter::once(m.config().digest().to_string())
        .chain(m.layers().iter().map(|l| l.digest().to_string()))
        .collect()
}

pub async fn write(storage: &Storage, tagged: &Tagged, output: &Output, name: &str) -> anyhow::Result<()> {
    match output {
        Output::Oci { dir, tag } => write_oci(storage, tagged, dir, tag).await,
        Output::DockerArchive { file, reference } => {
            if tagged.index.is_some() {
                bail!("a docker archive holds one platform: name one with --platform, or write oci:DIR for the index");
            }
            let reference = reference.clone().unwrap_or_else(|| format!("{name}:latest"));
            write_docker_archive(storage, tagged.image(), file, &reference).await
        }
    }
}

async fn write_oci(storage: &Storage, tagged: &Tagged, dir: &Path, tag: &str) -> anyhow::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    // The layout's entry: the tag's index, or its one manifest.
    let (manifest, media_type) = match &tagged.index {
        Some(index) => (&index.oci, MediaType::ImageIndex),
        None => (&tagged.image().oci, MediaType::ImageManifest),
    };
    let mut digests = Vec::new();
    for (_, image) in &tagged.images {
        digests.extend(blobs_of(&manifest_of(image)?));
        digests.push(image.oci.digest.clone());
    }
    if tagged.index.is_some() {
        digests.push(manifest.digest.clone());
    }
    for digest in digests {
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        if path.exists() {
            continue;
        }
        // Written beside, renamed when complete: a layout never holds a
        // truncated blob.
        let tmp = path.with_extension("partial");
        let mut f = std::fs::File::create(&tmp)?;
        copy_blob(storage, &digest, &mut f).await?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
    }

    let index_path = dir.join("index.json");
    let mut entries: Vec<Descriptor> = if index_path.exists() {
        ImageIndex::from_file(&index_path)?.manifests().clone()
    } else {
        vec![]
    };
    const REF: &str = "org.opencontainers.image.ref.name";
    entries.retain(|d| d.annotations().as_ref().and_then(|a| a.get(REF)).map(String::as_str) != Some(tag));
    let mut desc = Descriptor::new(
        media_type,
        manifest.bytes.len() as u64,
        Digest::from_str(&manifest.digest)?,
    );
    desc.set_annotations(Some(HashMap::from([(REF.to_string(), tag.to_string())])));
    entries.push(desc);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(entries)
        .build()?;
    std::fs::write(&index_path, crate::image::manifest::to_canonical_json(&index).map_err(|e| anyhow::anyhow!("{e}"))?)?;
    Ok(())
}

/// `docker save`'s format: `manifest.json`, the config, one file per layer
/// (gzip-compressed here, the schema 2 manifest's layers when it exists;
/// `docker load` and skopeo both detect that).
async fn write_docker_archive(storage: &Storage, image: &Image, file: &Path, reference: &str) -> anyhow::Result<()> {
    if !reference.contains(':') {
        bail!("docker-archive reference {reference:?} needs a tag, e.g. shell/git:latest");
    }
    let m = match image.docker.get() {
        Some(docker) => ImageManifest::from_reader(&docker.bytes[..])?,
        None => manifest_of(image)?,
    };
    let tmp = file.with_extension("partial");
    let mut tar = tar::Builder::new(std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?);
    let mut layer_names = vec![];
    let config_name = format!("{}.json", m.config().digest().digest());
    for (i, digest) in blobs_of(&m).iter().enumerate() {
        let name = if i == 0 {
            config_name.clone()
        } else {
            let n = format!("{}.tar.gz", digest.trim_start_matches("sha256:"));
            layer_names.push(n.clone());
            n
        };
        let mut bytes = Vec::new();
        copy_blob(storage, digest, &mut bytes).await?;
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        tar.append_data(&mut h, &name, &bytes[..])?;
    }
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": [reference], "Layers": layer_names }]);
    let bytes = serde_json::to_vec(&manifest)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1);
    tar.append_data(&mut h, "manifest.json", &bytes[..])?;
    tar.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse() {
        assert_eq!(
            "oci:./out:v1".parse::<Output>().unwrap(),
            Output::Oci { dir: "./out".into(), tag: "v1".into() }
        );
        assert_eq!("oci:out".parse::<Output>().unwrap(), Output::Oci { dir: "out".into(), tag: "latest".into() });
        assert_eq!(
            "docker-archive:x.tar:shell/git:latest".parse::<Output>().unwrap(),
            Output::DockerArchive { file: "x.tar".into(), reference: Some("shell/git:latest".into()) }
        );
        assert!("tar:x".parse::<Output>().is_err());
        assert!("oci:".parse::<Output>().is_err());
        assert!("oci:out:bad/tag".parse::<Output>().is_ok()); // a dir containing ':'
    }
}
