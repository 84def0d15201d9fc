//! Image config and manifests, with `oci-spec`'s types.
//!
//! One image has one config blob and two manifests (Docker schema 2 and OCI)
//! over the same blobs: clients pick by `Accept`, and both must stay
//! fetchable by digest afterwards. Everything is serialised through
//! `serde_json::Value`, whose maps are sorted, so the bytes (and digests) are
//! the same on every replica.

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, HistoryBuilder, ImageConfigurationBuilder,
    ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use std::str::FromStr;

use crate::compress::Codec;
use crate::error::{Error, Result};
use crate::layers::LayerBlob;
use strata_plugin_sdk::ImageSettings;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Fixed so that the same packages give the same config digest.
const CREATED: &str = "1970-01-01T00:00:01Z";

/// The manifest format a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Docker,
    Oci,
}

impl Format {
    /// Reads every `Accept` value (skopeo sends one header line per type,
    /// others one comma-joined line) and picks the first format the client
    /// names; with neither, Docker schema 2, which every client reads.
    pub fn negotiate<'a>(accept: impl Iterator<Item = &'a str>) -> Format {
        for value in accept {
            for item in value.split(',') {
                let media = item.split(';').next().unwrap_or("").trim();
                if media == OCI_MANIFEST {
                    return Format::Oci;
                }
                if media == DOCKER_MANIFEST {
                    return Format::Docker;
                }
            }
        }
        Format::Docker
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_MANIFEST,
            Format::Oci => OCI_MANIFEST,
        }
    }
}

/// One layer as the config's history tells it.
pub struct LayerDescription {
    pub blob: LayerBlob,
    pub created_by: String,
}

pub struct ConfigInput<'a> {
    pub arch: &'a str,
    pub layers: &'a [LayerDescription],
    pub env: Vec<String>,
    pub settings: &'a ImageSettings,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("image metadata: {e}"))
}

pub fn to_canonical_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(v).map_err(internal)?;
    serde_json::to_vec(&value).map_err(internal)
}

pub fn config_json(input: &ConfigInput) -> Result<Vec<u8>> {
    let s = input.settings;
    let mut env = input.env.clone();
    env.extend(s.env.iter().cloned());
    let mut cfg = ConfigBuilder::default();
    cfg = cfg.env(env);
    if let Some(cmd) = &s.cmd {
        cfg = cfg.cmd(cmd.clone());
    }
    if let Some(ep) = &s.entrypoint {
        cfg = cfg.entrypoint(ep.clone());
    }
    if let Some(u) = &s.user {
        cfg = cfg.user(u.clone());
    }
    if let Some(w) = &s.working_dir {
        cfg = cfg.working_dir(w.clone());
    }
    if !s.labels.is_empty() {
        cfg = cfg.labels(s.labels.clone().into_iter().collect::<std::collections::HashMap<_, _>>());
    }
    let history = input
        .layers
        .iter()
        .map(|l| {
            HistoryBuilder::default()
                .created(CREATED)
                .created_by(l.created_by.clone())
                .build()
                .map_err(internal)
        })
        .collect::<Result<Vec<_>>>()?;
    let image = ImageConfigurationBuilder::default()
        .created(CREATED)
        .architecture(Arch::from(input.arch))
        .os(Os::Linux)
        .config(cfg.build().map_err(internal)?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(input.layers.iter().map(|l| l.blob.diff_id.clone()).collect::<Vec<_>>())
                .build()
                .map_err(internal)?,
        )
        .history(history)
        .build()
        .map_err(internal)?;
    to_canonical_json(&image)
}

fn digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(internal)
}

pub fn manifest_json(format: Format, config: (&str, u64), layers: &[LayerBlob]) -> Result<Vec<u8>> {
    let config_type = match format {
        Format::Docker => MediaType::Other(DOCKER_CONFIG.into()),
        Format::Oci => MediaType::ImageConfig,
    };
    // Schema 2 has no zstd layer type: the builder gives it gzip copies.
    let layer_type = |l: &LayerBlob| match (format, l.codec) {
        (Format::Docker, Codec::Gzip) => Ok(MediaType::Other(DOCKER_LAYER.into())),
        (Format::Docker, other) => Err(internal(format!("a Docker schema 2 manifest cannot hold {} layers", other.name()))),
        (Format::Oci, Codec::Gzip) => Ok(MediaType::ImageLayerGzip),
        (Format::Oci, Codec::Zstd) => Ok(MediaType::ImageLayerZstd),
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::Other(format.media_type().into()))
        .config(Descriptor::new(config_type, config.1, digest(config.0)?))
        .layers(
            layers
                .iter()
                .map(|l| Ok(Descriptor::new(layer_type(l)?, l.size, digest(&l.digest)?)))
                .collect::<Result<Vec<_>>>()?,
        )
        .build()
        .map_err(internal)?;
    to_canonical_json(&manifest)
}

/// The media type a stored manifest declares, for serving it by digest.
pub fn declared_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let p: Probe = serde_json::from_slice(bytes).ok()?;
    p.schema_version?;
    p.media_type.filter(|m| m == DOCKER_MANIFEST || m == OCI_MANIFEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_merges_header_lines_and_defaults_to_docker() {
        let skopeo = [OCI_MANIFEST, DOCKER_MANIFEST, "application/vnd.docker.distribution.manifest.v1+prettyjws"];
        assert_eq!(Format::negotiate(skopeo.into_iter()), Format::Oci);
        let docker = [format!("{DOCKER_MANIFEST}, application/vnd.docker.distribution.manifest.list.v2+json, {OCI_MANIFEST}")];
        assert_eq!(Format::negotiate(docker.iter().map(|s| s.as_str())), Format::Docker);
        assert_eq!(Format::negotiate(["*/*"].into_iter()), Format::Docker);
    }

    #[test]
    fn manifests_are_canonical_and_carry_their_media_type() {
        let blob = LayerBlob {
            digest: format!("sha256:{}", "a".repeat(64)),
            diff_id: format!("sha256:{}", "b".repeat(64)),
            size: 10,
            md5: String::new(),
            codec: Codec::Gzip,
        };
        let cfg = format!("sha256:{}", "c".repeat(64));
        for f in [Format::Docker, Format::Oci] {
            let a = manifest_json(f, (&cfg, 5), std::slice::from_ref(&blob)).unwrap();
            let b = manifest_json(f, (&cfg, 5), std::slice::from_ref(&blob)).unwrap();
            assert_eq!(a, b);
            assert_eq!(declared_media_type(&a).as_deref(), Some(f.media_type()));
        }
        let zstd = LayerBlob { codec: Codec::Zstd, ..blob };
        let oci = manifest_json(Format::Oci, (&cfg, 5), std::slice::from_ref(&zstd)).unwrap();
        assert!(String::from_utf8(oci).unwrap().contains("application/vnd.oci.image.layer.v1.tar+zstd"));
        assert!(manifest_json(Format::Docker, (&cfg, 5), &[zstd]).is_err());
    }
}
