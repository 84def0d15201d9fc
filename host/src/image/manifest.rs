//! Image config and manifests, with `oci-spec`'s types.
//!
//! One image has one config blob and two manifests (Docker schema 2 and OCI)
//! over the same blobs: clients pick by `Accept`, and both must stay
//! fetchable by digest afterwards. Everything is serialised through
//! `serde_json::Value`, whose maps are sorted, so the bytes (and digests) are
//! the same on every replica.

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use std::str::FromStr;

use crate::image::compress::Codec;
use crate::error::{Error, Result};
use crate::image::layers::LayerBlob;
use strata_plugin_sdk::ImageSettings;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The empty JSON object `{}`, the config of an artifact manifest as the
/// image spec's artifact guidance has it.
pub const EMPTY_CONFIG: &[u8] = b"{}";
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

    /// The index type of the same family: a Docker manifest list lists
    /// Docker manifests, an OCI index OCI ones.
    pub fn index_media_type(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_LIST,
            Format::Oci => OCI_INDEX,
        }
    }
}

/// What a client's `Accept` allows for a tag served with several platforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The manifest format, when it gets one manifest.
    pub format: Format,
    oci_index: bool,
    docker_list: bool,
}

impl Accepted {
    pub fn read<'a>(accept: impl Iterator<Item = &'a str>) -> Accepted {
        let accept: Vec<&str> = accept.collect();
        let format = Format::negotiate(accept.iter().copied());
        let (mut oci_index, mut docker_list) = (false, false);
        for media in accept.iter().flat_map(|v| v.split(',')).map(|i| i.split(';').next().unwrap_or("").trim()) {
            oci_index |= media == OCI_INDEX;
            docker_list |= media == DOCKER_LIST;
        }
        Accepted { format, oci_index, docker_list }
    }

    /// The index to answer with, if the client takes one: the family of the
    /// manifest type it names first when it takes that family's index (so
    /// that Docker and containerd, which take both, keep getting schema 2
    /// manifests with gzip layers under a Docker list), else the one index
    /// type it takes. `None`: it gets one platform's manifest.
    pub fn index(&self) -> Option<Format> {
        match (self.format, self.oci_index, self.docker_list) {
            (Format::Docker, _, true) | (Format::Oci, false, true) => Some(Format::Docker),
            (_, true, _) => Some(Format::Oci),
            _ => None,
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
    annotated_manifest_json(format, config, layers, &std::collections::BTreeMap::new())
}

/// [`manifest_json`] with `annotations` (the image's provenance) in the OCI
/// manifest; Docker's schema 2 has no such field.
pub fn annotated_manifest_json(
    format: Format,
    config: (&str, u64),
    layers: &[LayerBlob],
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<u8>> {
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
    let mut manifest = manifest;
    if format == Format::Oci && !annotations.is_empty() {
        manifest.set_annotations(Some(annotations.clone().into_iter().collect()));
    }
    to_canonical_json(&manifest)
}

/// An artifact (the SBOM) as an OCI image manifest: `artifactType`, the
/// empty config, the one blob as its layer, and `subject` naming the image
/// manifest it describes, which is what makes it a referrer of that
/// manifest (distribution-spec 1.1).
pub fn artifact_manifest_json(
    artifact_type: &str,
    blob: (&str, u64),
    subject: (&str, &str, u64),
) -> Result<Vec<u8>> {
    let (subject_type, subject_digest, subject_size) = subject;
    let empty = Descriptor::new(MediaType::EmptyJSON, EMPTY_CONFIG.len() as u64, digest(&crate::image::layers::sha256_digest(EMPTY_CONFIG))?);
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::Other(artifact_type.into()))
        .config(empty)
        .layers(vec![Descriptor::new(MediaType::Other(artifact_type.into()), blob.1, digest(blob.0)?)])
        .subject(Descriptor::new(MediaType::Other(subject_type.into()), subject_size, digest(subject_digest)?))
        .build()
        .map_err(internal)?;
    to_canonical_json(&manifest)
}

/// A referrer as the referrers API lists it: the artifact manifest's
/// descriptor, with its `artifactType`.
pub fn referrer_descriptor(artifact_type: &str, manifest_digest: &str, size: u64) -> Result<serde_json::Value> {
    let mut d = Descriptor::new(MediaType::ImageManifest, size, digest(manifest_digest)?);
    d.set_artifact_type(Some(MediaType::Other(artifact_type.into())));
    serde_json::to_value(d).map_err(internal)
}

/// The referrers API's answer: an image index of the referrers' descriptors
/// (empty when there are none, as the spec asks, never a 404).
pub fn referrers_index_json(referrers: Vec<serde_json::Value>) -> Result<Vec<u8>> {
    let manifests = referrers
        .into_iter()
        .map(|v| serde_json::from_value::<Descriptor>(v).map_err(internal))
        .collect::<Result<Vec<_>>>()?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(internal)?;
    to_canonical_json(&index)
}

/// One platform's manifest in an index: the platform, and the manifest's
/// digest and size.
pub struct IndexEntry<'a> {
    pub platform: &'a crate::config::Platform,
    pub digest: &'a str,
    pub size: u64,
}

/// An OCI image index (`Format::Oci`, over OCI manifests) or a Docker
/// manifest list (`Format::Docker`, over schema 2 manifests), entries in
/// the order given: the same entries give the same bytes everywhere.
pub fn index_json(format: Format, entries: &[IndexEntry]) -> Result<Vec<u8>> {
    let manifests = entries
        .iter()
        .map(|e| {
            let mut platform = PlatformBuilder::default().os(Os::from(e.platform.os.as_str())).architecture(Arch::from(e.platform.arch.as_str()));
            if let Some(v) = &e.platform.variant {
                platform = platform.variant(v.clone());
            }
            let mut d = Descriptor::new(MediaType::Other(format.media_type().into()), e.size, digest(e.digest)?);
            d.set_platform(Some(platform.build().map_err(internal)?));
            Ok(d)
        })
        .collect::<Result<Vec<_>>>()?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::Other(format.index_media_type().into()))
        .manifests(manifests)
        .build()
        .map_err(internal)?;
    to_canonical_json(&index)
}

/// The layers' diff_ids an image config names, in order: what a layer
/// copied into another encoding must decompress to.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<String>> {
    let config = oci_spec::image::ImageConfiguration::from_reader(config).map_err(internal)?;
    Ok(config.rootfs().diff_ids().clone())
}

/// The media type a stored manifest or index declares, for serving it by
/// digest.
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
    p.media_type.filter(|m| [DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_LIST, OCI_INDEX].contains(&m.as_str()))
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
    fn an_index_is_offered_in_the_family_the_client_names_first() {
        let read = |lines: &[&str]| Accepted::read(lines.iter().copied());
        // skopeo and podman: one line per type, OCI first.
        let skopeo = read(&[OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX]);
        assert_eq!(skopeo.index(), Some(Format::Oci));
        // Docker and containerd: Docker's types first, both indexes.
        let docker = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX].join(", ");
        assert_eq!(read(&[&docker]).index(), Some(Format::Docker));
        assert_eq!(read(&[DOCKER_MANIFEST, DOCKER_LIST]).index(), Some(Format::Docker));
        assert_eq!(read(&[OCI_MANIFEST, DOCKER_LIST]).index(), Some(Format::Docker));
        assert_eq!(read(&[OCI_INDEX]).index(), Some(Format::Oci));
        let plain = read(&[OCI_MANIFEST]);
        assert_eq!((plain.index(), plain.format), (None, Format::Oci));
        assert_eq!(read(&[]).index(), None);
    }

    #[test]
    fn indexes_list_each_platform_and_are_canonical() {
        let (amd, arm) = (crate::config::Platform::linux("amd64"), crate::config::Platform::linux("arm64"));
        let (a, b) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        let entries = [IndexEntry { platform: &amd, digest: &a, size: 10 }, IndexEntry { platform: &arm, digest: &b, size: 11 }];
        for format in [Format::Oci, Format::Docker] {
            let bytes = index_json(format, &entries).unwrap();
            assert_eq!(bytes, index_json(format, &entries).unwrap());
            assert_eq!(declared_media_type(&bytes).as_deref(), Some(format.index_media_type()));
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["schemaVersion"], 2);
            assert_eq!(v["manifests"][0]["mediaType"], format.media_type());
            assert_eq!(v["manifests"][0]["platform"], serde_json::json!({"os": "linux", "architecture": "amd64"}));
            assert_eq!(v["manifests"][1]["platform"], serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}));
            assert_eq!((&v["manifests"][1]["digest"], &v["manifests"][1]["size"]), (&serde_json::json!(b), &serde_json::json!(11)));
        }
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

    #[test]
    fn artifact_manifests_name_their_subject_and_list_as_referrers() {
        let blob = format!("sha256:{}", "d".repeat(64));
        let subject = format!("sha256:{}", "e".repeat(64));
        let bytes = artifact_manifest_json("application/spdx+json", (&blob, 42), (DOCKER_MANIFEST, &subject, 7)).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(declared_media_type(&bytes).as_deref(), Some(OCI_MANIFEST));
        assert_eq!(m["artifactType"], "application/spdx+json");
        assert_eq!(m["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
        assert_eq!(m["config"]["digest"], "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a");
        assert_eq!(m["config"]["size"], 2);
        assert_eq!((&m["layers"][0]["digest"], &m["layers"][0]["size"]), (&serde_json::json!(blob), &serde_json::json!(42)));
        assert_eq!(m["subject"], serde_json::json!({"mediaType": DOCKER_MANIFEST, "digest": subject, "size": 7}));
        let d = referrer_descriptor("application/spdx+json", &blob, 9).unwrap();
        let index: serde_json::Value = serde_json::from_slice(&referrers_index_json(vec![d]).unwrap()).unwrap();
        assert_eq!(index["mediaType"], OCI_INDEX);
        assert_eq!(index["manifests"][0]["artifactType"], "application/spdx+json");
        let empty: serde_json::Value = serde_json::from_slice(&referrers_index_json(vec![]).unwrap()).unwrap();
        assert_eq!(empty["manifests"], serde_json::json!([]));
    }
}
