//! An image's SPDX 2.3 document, from what Nix knows exactly: every store
//! path of the runtime closure, its NAR hash and references, and the `meta`
//! of the packages the request named.
//!
//! Nothing is scanned or guessed: a path is in the document because Nix
//! says the image's closure holds it, and a licence is there only when the
//! package set declares one. Dependencies are reported by store path, with
//! `NOASSERTION` for the licence and homepage: their `meta` would cost an
//! evaluation per path, and the closure (from `nix path-info`) does not
//! carry it.
//!
//! The bytes are a function of the image alone (paths, hashes, meta,
//! source, plugins): no timestamp, no random namespace, so two replicas
//! building one image publish one SBOM blob.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::{Error, Result};
use crate::nix::{Described, License};
use strata_plugin_sdk::{store_name, ClosureGraph};

pub const MEDIA_TYPE: &str = "application/spdx+json";
const NOASSERTION: &str = "NOASSERTION";
/// Fixed, as the image config's `created`: see the module's last paragraph.
const CREATED: &str = "1970-01-01T00:00:01Z";
/// Nix's outputs whose names end a store path (`libxml2-2.11.5-bin`); the
/// default output (`out`) adds no suffix.
const OUTPUT_SUFFIXES: &[&str] = &["bin", "dev", "lib", "man", "doc", "info", "devdoc", "static", "debug"];

/// What an image's document is made of.
pub struct SbomInput<'a> {
    /// The packages that went in, as the lookup described them.
    pub described: &'a [Described],
    pub graph: &'a ClosureGraph,
    /// Store path → NAR hash, hex SHA-256.
    pub nar_hashes: &'a BTreeMap<String, String>,
    pub arch: &'a str,
    /// The package source's identity (channel, git revision, path).
    pub source: &'a str,
    /// The commit the source was fetched at, where Nix tells it.
    pub revision: Option<&'a str>,
    /// The plugins that decided the image, as `hook: name`.
    pub plugins: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    document_describes: Vec<String>,
    packages: Vec<Package>,
    relationships: Vec<Relationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedLicence>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: &'static str,
    creators: Vec<String>,
    comment: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Package {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    download_location: &'static str,
    files_analyzed: bool,
    checksums: Vec<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    homepage: Option<String>,
    license_concluded: &'static str,
    license_declared: String,
    copyright_text: &'static str,
    external_refs: Vec<ExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedLicence {
    license_id: String,
    extracted_text: String,
    name: String,
}

/// The document's bytes.
pub fn document(input: &SbomInput) -> Result<Vec<u8>> {
    let graph = input.graph;
    // Which requested package (and so which meta) each top-level path is.
    let mut requested: HashMap<&str, &Described> = HashMap::new();
    for d in input.described {
        for p in &d.paths {
            requested.entry(p.as_str()).or_insert(d);
        }
    }
    let ids: Vec<String> = graph.paths.iter().map(|p| spdx_id(&p.path)).collect();
    let mut extracted: BTreeMap<String, ExtractedLicence> = BTreeMap::new();
    let mut packages = Vec::with_capacity(graph.paths.len());
    for (p, id) in graph.paths.iter().zip(&ids) {
        let hash = input
            .nar_hashes
            .get(&p.path)
            .ok_or_else(|| Error::Internal(format!("no NAR hash for {}", p.path)))?;
        let (name, version, output) = parse_store_name(store_name(&p.path));
        let described = requested.get(p.path.as_str());
        let licence = described
            .and_then(|d| d.meta.licenses.as_deref())
            .map(|l| licence_expression(l, &mut extracted))
            .unwrap_or_else(|| NOASSERTION.to_string());
        let comment = described.map(|d| match &output {
            Some(o) => format!("package set attribute {}, Nix output {o}", d.name),
            None => format!("package set attribute {}", d.name),
        });
        packages.push(Package {
            spdx_id: id.clone(),
            name,
            version_info: version,
            download_location: NOASSERTION,
            files_analyzed: false,
            checksums: vec![Checksum { algorithm: "SHA256", checksum_value: hash.clone() }],
            homepage: described.and_then(|d| d.meta.homepage.clone()).filter(|h| is_url(h)),
            license_concluded: NOASSERTION,
            license_declared: licence,
            copyright_text: NOASSERTION,
            external_refs: vec![ExternalRef {
                reference_category: "OTHER",
                reference_type: "nix-store-path",
                reference_locator: p.path.clone(),
            }],
            comment,
        });
    }

    let mut describes: Vec<String> = Vec::new();
    for d in input.described {
        for p in &d.paths {
            let id = spdx_id(p);
            if !describes.contains(&id) {
                describes.push(id);
            }
        }
    }
    let mut relationships: Vec<Relationship> = describes
        .iter()
        .map(|id| Relationship {
            spdx_element_id: "SPDXRef-DOCUMENT".into(),
            relationship_type: "DESCRIBES",
            related_spdx_element: id.clone(),
        })
        .collect();
    for (p, id) in graph.paths.iter().zip(&ids) {
        let refs: BTreeSet<u32> = p.references.iter().copied().collect();
        for r in refs.into_iter().filter(|&r| ids.get(r as usize) != Some(id)) {
            let target = ids.get(r as usize).ok_or_else(|| Error::Internal(format!("reference {r} of {}", p.path)))?;
            relationships.push(Relationship {
                spdx_element_id: id.clone(),
                relationship_type: "DEPENDS_ON",
                related_spdx_element: target.clone(),
            });
        }
    }

    let names: Vec<&str> = input.described.iter().map(|d| d.name.as_str()).collect();
    let mut doc = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: format!("image of {} ({})", names.join(", "), input.arch),
        document_namespace: String::new(),
        creation_info: CreationInfo {
            created: CREATED,
            creators: vec![format!("Tool: strata-{}", env!("CARGO_PKG_VERSION"))],
            comment: format!(
                "Built by Nix from {}{}; decided by the plugins {}. One package per store path of the image's \
                 runtime closure; checksums are SHA-256 NAR hashes as Nix records them; licences and homepages \
                 are the package set's meta, for the requested packages only.",
                source_name(input.source),
                input.revision.map(|r| format!(" at revision {r}")).unwrap_or_default(),
                input.plugins.join(", ")
            ),
        },
        document_describes: describes,
        packages,
        relationships,
        has_extracted_licensing_infos: extracted.into_values().collect(),
    };
    // SPDX wants a namespace unique to the document: the hash of everything
    // else in it is, and is the same wherever the same image is built.
    let body = serde_json::to_vec(&doc).map_err(|e| Error::Internal(format!("sbom: {e}")))?;
    doc.document_namespace = format!("https://strata.invalid/spdx/{}", hex::encode(sha2_256(&body)));
    serde_json::to_vec(&doc).map_err(|e| Error::Internal(format!("sbom: {e}")))
}

/// The source as the document names it: a channel or a git revision as
/// is, a local path (a path source, a `path:` or `git+file://` flake) by
/// its last component only, so that one package set checked out in two
/// places gives one document (and no server path is published).
fn source_name(identity: &str) -> String {
    let last = |path: &str| path.trim_end_matches('/').rsplit('/').next().unwrap_or(path).to_string();
    for local in ["path:", "flake:path:", "flake:git+file://"] {
        if let Some(rest) = identity.strip_prefix(local) {
            let (path, at) = rest.split_once('@').map_or((rest, String::new()), |(p, r)| (p, format!("@{r}")));
            let path = path.split('?').next().unwrap_or(path);
            return format!("{local}{}{at}", last(path));
        }
    }
    identity.to_string()
}

fn sha2_256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// `SPDXRef-StorePath-<hash>`: the store hash is unique in the closure and
/// made of characters an SPDX id allows.
fn spdx_id(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let hash = base.split_once('-').map_or(base, |(h, _)| h);
    let clean: String = hash.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("SPDXRef-StorePath-{clean}")
}

/// Nix's `builtins.parseDrvName` (the version starts at the first `-`
/// followed by a non-letter), with a trailing output name split off:
/// `libxml2-2.11.5-bin` → (`libxml2`, `2.11.5`, `bin`).
fn parse_store_name(name: &str) -> (String, Option<String>, Option<String>) {
    let split = name
        .char_indices()
        .find(|&(i, c)| c == '-' && name[i + 1..].chars().next().is_some_and(|n| !n.is_ascii_alphabetic()))
        .map(|(i, _)| i);
    let Some(i) = split else { return (name.to_string(), None, None) };
    let (pname, mut version) = (name[..i].to_string(), name[i + 1..].to_string());
    let mut output = None;
    if let Some((v, o)) = version.rsplit_once('-') {
        if OUTPUT_SUFFIXES.contains(&o) {
            output = Some(o.to_string());
            version = v.to_string();
        }
    }
    (pname, Some(version), output)
}

/// nixpkgs' licences as an SPDX expression: an SPDX identifier where SPDX
/// has one, else a `LicenseRef-` named after the set's short name (and
/// recorded in `extracted`). Several licences are ANDed: nixpkgs' list says
/// that all of them apply to parts of the package.
fn licence_expression(licences: &[License], extracted: &mut BTreeMap<String, ExtractedLicence>) -> String {
    let mut terms: Vec<String> = Vec::new();
    for l in licences {
        let term = match l.spdx_id.as_deref().filter(|id| spdx::license_id(id).is_some()) {
            Some(id) => id.to_string(),
            None => {
                let Some(name) = l.name.as_deref().or(l.spdx_id.as_deref()) else { continue };
                let id = format!("LicenseRef-{}", licence_ref(name));
                extracted.entry(id.clone()).or_insert_with(|| ExtractedLicence {
                    license_id: id.clone(),
                    extracted_text: format!("The package set names this licence \"{name}\", without an SPDX identifier."),
                    name: name.to_string(),
                });
                id
            }
        };
        if !terms.contains(&term) {
            terms.push(term);
        }
    }
    match terms.len() {
        0 => NOASSERTION.to_string(),
        1 => terms.remove(0),
        _ => terms.join(" AND "),
    }
}

/// The characters a `LicenseRef-` may hold: letters, digits, `.` and `-`.
fn licence_ref(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect()
}

/// SPDX's homepage is a URL; free text there fails validation.
fn is_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https" | "ftp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sources_are_named_by_their_last_component() {
        assert_eq!(source_name("path:/srv/checkout/demo-pkgs/"), "path:demo-pkgs");
        assert_eq!(source_name("flake:path:/srv/f?dir=x"), "flake:path:f");
        let rev = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(source_name(&format!("flake:git+file:///srv/repo@{rev}")), format!("flake:git+file://repo@{rev}"));
        assert_eq!(source_name("flake:github:o/r@abc1234"), "flake:github:o/r@abc1234");
        assert_eq!(source_name("channel:nixos-unstable"), "channel:nixos-unstable");
    }
    use crate::nix::PackageMeta;
    use serde_json::Value;
    use strata_plugin_sdk::NamedPath;

    const HELLO: &str = "/nix/store/5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1";
    const XML: &str = "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-libxml2-2.11.5-bin";
    const BUSYBOX: &str = "/nix/store/r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static";

    fn licence(spdx_id: Option<&str>, name: &str) -> License {
        License { spdx_id: spdx_id.map(str::to_string), name: Some(name.to_string()) }
    }

    fn input_doc(licences: Vec<License>) -> Value {
        let paths = vec![
            NamedPath { path: HELLO.into(), nar_size: 1, references: vec![BUSYBOX.into(), HELLO.into()] },
            NamedPath { path: XML.into(), nar_size: 1, references: vec![BUSYBOX.into()] },
            NamedPath { path: BUSYBOX.into(), nar_size: 1, references: vec![] },
        ];
        let graph = ClosureGraph::from_named(&[HELLO, XML], paths).unwrap();
        let hashes = [HELLO, XML, BUSYBOX].iter().map(|p| (p.to_string(), "ab".repeat(32))).collect();
        let described = vec![
            Described {
                name: "hello".into(),
                paths: vec![HELLO.into()],
                meta: PackageMeta {
                    homepage: Some("https://www.gnu.org/software/hello/".into()),
                    licenses: Some(licences),
                    ..Default::default()
                },
            },
            Described { name: "libxml2".into(), paths: vec![XML.into()], meta: PackageMeta::default() },
        ];
        let plugins = vec!["expand: bundles".to_string()];
        let input = SbomInput {
            described: &described,
            graph: &graph,
            nar_hashes: &hashes,
            arch: "amd64",
            source: "path:/srv/checkout/demo-pkgs/",
            revision: None,
            plugins: &plugins,
        };
        let bytes = document(&input).unwrap();
        assert_eq!(bytes, document(&input).unwrap(), "the same input gives the same bytes");
        serde_json::from_slice(&bytes).unwrap()
    }

    fn package<'a>(doc: &'a Value, path: &str) -> &'a Value {
        doc["packages"].as_array().unwrap().iter().find(|p| p["externalRefs"][0]["referenceLocator"] == path).unwrap()
    }

    #[test]
    fn one_package_per_store_path_with_names_hashes_and_relationships() {
        let doc = input_doc(vec![licence(Some("GPL-3.0-or-later"), "gpl3Plus")]);
        assert_eq!(doc["packages"].as_array().unwrap().len(), 3);
        let hello = package(&doc, HELLO);
        assert_eq!((hello["name"].as_str(), hello["versionInfo"].as_str()), (Some("hello"), Some("2.12.1")));
        assert_eq!(hello["licenseDeclared"], "GPL-3.0-or-later");
        assert_eq!(hello["homepage"], "https://www.gnu.org/software/hello/");
        assert_eq!(hello["checksums"][0]["checksumValue"], "ab".repeat(32));
        let xml = package(&doc, XML);
        assert_eq!((xml["name"].as_str(), xml["versionInfo"].as_str()), (Some("libxml2"), Some("2.11.5")));
        assert_eq!(xml["comment"], "package set attribute libxml2, Nix output bin");
        let busybox = package(&doc, BUSYBOX);
        assert_eq!((busybox["name"].as_str(), busybox.get("versionInfo")), (Some("busybox-static"), None));
        assert_eq!(busybox["licenseDeclared"], "NOASSERTION");
        let described: Vec<&str> = doc["documentDescribes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(described, [spdx_id(HELLO), spdx_id(XML)]);
        let rels: Vec<(String, String, String)> = doc["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap().to_string();
                (s("spdxElementId"), s("relationshipType"), s("relatedSpdxElement"))
            })
            .collect();
        // hello's reference to itself is not a dependency.
        assert_eq!(rels.iter().filter(|r| r.1 == "DEPENDS_ON").count(), 2);
        assert!(rels.contains(&(spdx_id(HELLO), "DEPENDS_ON".into(), spdx_id(BUSYBOX))));
        assert!(rels.contains(&("SPDXRef-DOCUMENT".into(), "DESCRIBES".into(), spdx_id(XML))));
        assert!(doc["documentNamespace"].as_str().unwrap().starts_with("https://strata.invalid/spdx/"));
        assert!(doc["creationInfo"]["comment"].as_str().unwrap().starts_with("Built by Nix from path:demo-pkgs;"));
    }

    #[test]
    fn licences_without_spdx_ids_become_licence_refs() {
        let doc = input_doc(vec![licence(None, "free"), licence(Some("MIT"), "mit"), licence(Some("Not-An-Id"), "odd one")]);
        assert_eq!(package(&doc, HELLO)["licenseDeclared"], "LicenseRef-free AND MIT AND LicenseRef-odd-one");
        let refs: Vec<&str> =
            doc["hasExtractedLicensingInfos"].as_array().unwrap().iter().map(|e| e["licenseId"].as_str().unwrap()).collect();
        assert_eq!(refs, ["LicenseRef-free", "LicenseRef-odd-one"]);
        let none = input_doc(vec![]);
        assert_eq!(package(&none, HELLO)["licenseDeclared"], "NOASSERTION");
        assert!(none.get("hasExtractedLicensingInfos").is_none());
    }

    #[test]
    fn store_names_split_like_parse_drv_name() {
        let p = |s| parse_store_name(s);
        assert_eq!(p("bash-interactive-5.2-p15"), ("bash-interactive".into(), Some("5.2-p15".into()), None));
        assert_eq!(p("busybox-static"), ("busybox-static".into(), None, None));
        assert_eq!(p("libxml2-2.11.5-man"), ("libxml2".into(), Some("2.11.5".into()), Some("man".into())));
        assert_eq!(p("iana-etc-20231227"), ("iana-etc".into(), Some("20231227".into()), None));
    }
}
