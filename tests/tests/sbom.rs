//! The SBOM (issue 17): every image Strata builds gets an SPDX 2.3 document,
//! served as an OCI artifact whose `subject` is the image manifest and found
//! through the distribution-spec 1.1 referrers API. Checked with real tools:
//! `pyspdxtools` (PyPI spdx-tools) validates the document, Nix itself
//! (`nix-store --query --hash/--references`, `nix-instantiate`) is the
//! reference for its contents, the image's own layer tarballs (pulled by
//! skopeo) for its store paths, and the `oras` Python SDK reads the
//! referrer as a supply-chain tool would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::blocking::Response;
use strata_e2e::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const SPDX: &str = "application/spdx+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn header(r: &Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap_or_default().to_string())
}

/// An image manifest pulled by tag in one format: (digest, bytes, JSON).
struct Pulled {
    digest: String,
    bytes: Vec<u8>,
    json: Value,
}

fn pull(server: &Server, name: &str, accept: &str) -> Pulled {
    let r = server.get(&format!("/v2/{name}/manifests/latest")).header("Accept", accept).send().expect("GET manifest");
    assert_eq!(r.status().as_u16(), 200, "GET /v2/{name}/manifests/latest ({accept})");
    assert_eq!(header(&r, "content-type").as_deref(), Some(accept));
    let digest = header(&r, "docker-content-digest").expect("Docker-Content-Digest");
    let bytes = r.bytes().unwrap().to_vec();
    assert_eq!(sha256_digest(&bytes), digest);
    let json = serde_json::from_slice(&bytes).expect("manifest is JSON");
    Pulled { digest, bytes, json }
}

/// A referrers answer: (status, Content-Type, OCI-Filters-Applied, body).
struct Referrers {
    status: u16,
    content_type: Option<String>,
    filters: Option<String>,
    body: Vec<u8>,
}

impl Referrers {
    /// The index, checked to be one.
    fn index(&self) -> Value {
        assert_eq!(self.status, 200, "referrers: {}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.content_type.as_deref(), Some(INDEX), "referrers Content-Type");
        let v: Value = serde_json::from_slice(&self.body).expect("referrers body is JSON");
        assert_eq!(v["schemaVersion"], 2, "{v}");
        assert_eq!(v["mediaType"], INDEX, "{v}");
        assert!(v["manifests"].is_array(), "{v}");
        v
    }

    fn manifests(&self) -> Vec<Value> {
        self.index()["manifests"].as_array().unwrap().clone()
    }
}

fn referrers(server: &Server, name: &str, digest: &str, artifact_type: Option<&str>) -> Referrers {
    let mut path = format!("/v2/{name}/referrers/{digest}");
    if let Some(t) = artifact_type {
        // Percent-encoded, as clients send it: in a query `+` means a space.
        let encoded: String = t
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        path.push_str(&format!("?artifactType={encoded}"));
    }
    let r = server.get(&path).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    Referrers {
        status: r.status().as_u16(),
        content_type: header(&r, "content-type"),
        filters: header(&r, "oci-filters-applied"),
        body: r.bytes().unwrap().to_vec(),
    }
}

/// The one SPDX referrer of `subject` (an image manifest just pulled), its
/// manifest fetched by digest and checked against the descriptor and the
/// subject: (descriptor, manifest bytes, manifest JSON).
fn sbom_manifest(server: &Server, name: &str, subject: &Pulled, subject_type: &str) -> (Value, Vec<u8>, Value) {
    let all = referrers(server, name, &subject.digest, None);
    assert_eq!(all.filters, None, "no filter asked, none claimed");
    let listed = all.manifests();
    assert_eq!(listed.len(), 1, "one referrer (the SBOM) of {}: {listed:?}", subject.digest);
    let desc = listed[0].clone();
    assert_eq!(desc["mediaType"], OCI, "{desc}");
    assert_eq!(desc["artifactType"], SPDX, "{desc}");

    // Filtered on its type: the same list, and the header says so.
    let filtered = referrers(server, name, &subject.digest, Some(SPDX));
    assert_eq!(filtered.filters.as_deref(), Some("artifactType"), "OCI-Filters-Applied");
    assert_eq!(filtered.manifests(), listed, "artifactType={SPDX}");
    // The same type typed unencoded, as into curl: its `+` is not a space.
    let r = server.get(&format!("/v2/{name}/referrers/{}?artifactType={SPDX}", subject.digest)).send().unwrap();
    assert_eq!(header(&r, "oci-filters-applied").as_deref(), Some("artifactType"));
    let raw: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert_eq!(raw["manifests"].as_array().cloned().unwrap_or_default(), listed, "artifactType={SPDX}, unencoded");
    // Filtered on another type: nothing, and still the header.
    let other = referrers(server, name, &subject.digest, Some("application/vnd.example.signature.v1+json"));
    assert_eq!(other.filters.as_deref(), Some("artifactType"), "OCI-Filters-Applied");
    assert_eq!(other.manifests(), Vec::<Value>::new(), "another artifactType");

    let digest = desc["digest"].as_str().expect("digest").to_string();
    let r = server.get(&format!("/v2/{name}/manifests/{digest}")).header("Accept", OCI).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET the SBOM manifest {digest}");
    assert_eq!(header(&r, "content-type").as_deref(), Some(OCI));
    assert_eq!(header(&r, "docker-content-digest").as_deref(), Some(digest.as_str()));
    let bytes = r.bytes().unwrap().to_vec();
    assert_eq!(sha256_digest(&bytes), digest, "the SBOM manifest's bytes match the descriptor's digest");
    assert_eq!(desc["size"].as_u64(), Some(bytes.len() as u64), "descriptor size");
    let m: Value = serde_json::from_slice(&bytes).unwrap();

    // The artifact as the image spec's guidance has it.
    assert_eq!(m["schemaVersion"], 2, "{m}");
    assert_eq!(m["mediaType"], OCI, "{m}");
    assert_eq!(m["artifactType"], SPDX, "{m}");
    assert_eq!(m["config"]["mediaType"], EMPTY, "empty config: {m}");
    assert_eq!(m["config"]["digest"], EMPTY_DIGEST, "{m}");
    assert_eq!(m["config"]["size"], 2, "{m}");
    let layers = m["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer, the document: {m}");
    assert_eq!(layers[0]["mediaType"], SPDX, "{m}");
    assert_eq!(m["subject"]["mediaType"], subject_type, "subject: {m}");
    assert_eq!(m["subject"]["digest"], subject.digest.as_str(), "subject: {m}");
    assert_eq!(m["subject"]["size"].as_u64(), Some(subject.bytes.len() as u64), "subject: {m}");
    // The empty config is a real blob too.
    let r = server.get(&format!("/v2/{name}/blobs/{EMPTY_DIGEST}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET the empty config blob");
    assert_eq!(&r.bytes().unwrap()[..], b"{}");

    // Nothing refers to the SBOM itself.
    assert_eq!(referrers(server, name, &digest, None).manifests(), Vec::<Value>::new(), "referrers of the SBOM");
    (desc, bytes, m)
}

/// GET a blob, checked against its digest.
fn blob(server: &Server, name: &str, digest: &str) -> Vec<u8> {
    let r = server.get(&format!("/v2/{name}/blobs/{digest}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET blob {digest}");
    let bytes = r.bytes().unwrap().to_vec();
    assert_eq!(sha256_digest(&bytes), digest, "blob bytes match their digest");
    bytes
}

/// The SPDX document an SBOM manifest names: (digest, bytes, JSON).
fn spdx_of(server: &Server, name: &str, sbom: &Value) -> (String, Vec<u8>, Value) {
    let layer = &sbom["layers"][0];
    let digest = layer["digest"].as_str().expect("layer digest").to_string();
    let bytes = blob(server, name, &digest);
    assert_eq!(layer["size"].as_u64(), Some(bytes.len() as u64), "layer size");
    let doc = serde_json::from_slice(&bytes).expect("the SPDX document is JSON");
    (digest, bytes, doc)
}

/// `pyspdxtools -i FILE -o OUT`: validates the document and, only when it
/// is valid, writes it back as pyspdxtools parsed it. spdx-tools 0.8.5
/// reads the format from the file name (it must end in `.json`), exits 0
/// and prints nothing for a valid document, and exits 1 with
/// `ERROR:root:The document is invalid. …` (or a parse error) on stderr
/// otherwise. Returns the document as parsed.
fn pyspdxtools(dir: &Path, label: &str, bytes: &[u8]) -> Result<Value, String> {
    let tool = require_tool("pyspdxtools");
    let input = dir.join(format!("{label}.spdx.json"));
    let output = dir.join(format!("{label}.parsed.spdx.json"));
    std::fs::write(&input, bytes).unwrap();
    let _ = std::fs::remove_file(&output);
    let out = run(Command::new(tool).arg("-i").arg(&input).arg("-o").arg(&output), Duration::from_secs(120));
    assert!(!out.timed_out, "{out}");
    let said = format!("{}{}", out.stdout, out.stderr);
    if !out.success() || said.contains("ERROR") || said.to_lowercase().contains("invalid") {
        return Err(format!("{out}"));
    }
    let parsed = std::fs::read(&output).unwrap_or_else(|e| panic!("pyspdxtools wrote no {}: {e}\n{out}", output.display()));
    Ok(serde_json::from_slice(&parsed).unwrap_or_else(|e| panic!("pyspdxtools' output is not JSON: {e}")))
}

fn nix(tool: &str, args: &[&str]) -> String {
    let bin = require_tool(tool);
    let out = run(Command::new(bin).args(args).env("NIX_CONFIG", "substituters ="), Duration::from_secs(120)).assert_ok();
    out.stdout
}

/// Nix's NAR hash of each path, as base-16 (what SPDX's SHA256 wants).
fn nar_hashes(paths: &BTreeSet<String>) -> BTreeMap<String, String> {
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut args = vec!["--query", "--hash"];
    args.extend(&paths);
    let hashes: Vec<String> = nix("nix-store", &args)
        .lines()
        .map(|h| h.trim().strip_prefix("sha256:").unwrap_or_else(|| panic!("nix-store --query --hash: {h}")).to_string())
        .collect();
    assert_eq!(hashes.len(), paths.len(), "one hash per path");
    let mut args = vec!["--type", "sha256", "--to-base16"];
    args.extend(hashes.iter().map(String::as_str));
    let hex: Vec<String> = nix("nix-hash", &args).lines().map(|h| h.trim().to_string()).collect();
    assert_eq!(hex.len(), paths.len(), "one base-16 hash per path");
    paths.iter().map(|p| p.to_string()).zip(hex).collect()
}

/// Nix's references of a path, itself left out.
fn references(path: &str) -> BTreeSet<String> {
    nix("nix-store", &["--query", "--references", path])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != path)
        .collect()
}

/// An attribute of the demo package set, evaluated by Nix.
fn demo_meta(expr: &str) -> Value {
    let set = repo_root().join("examples/demo-pkgs");
    let e = format!("(import {} {{}}).{expr}", set.display());
    let out = nix("nix-instantiate", &["--eval", "--strict", "--json", "-E", &e]);
    serde_json::from_str(&out).unwrap_or_else(|err| panic!("nix-instantiate {e}: {err}: {out}"))
}

/// The store paths an image's layer tarballs hold (`nix/store/<name>/…`),
/// read from an OCI layout skopeo pulled.
fn store_paths_in_layout(layout: &Path, manifest: &Value) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let hex = layer["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).expect("layer blob in the layout");
        for (path, ..) in layer_entries(&bytes) {
            if let Some(rest) = path.strip_prefix("nix/store/") {
                let top = rest.split('/').next().unwrap_or_default();
                if !top.is_empty() {
                    paths.insert(format!("/nix/store/{top}"));
                }
            }
        }
    }
    paths
}

/// The document's packages by store path (each package has exactly one
/// `nix-store-path` reference, no path twice).
fn packages_by_path(doc: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for p in doc["packages"].as_array().expect("packages") {
        let refs: Vec<&Value> = p["externalRefs"]
            .as_array()
            .unwrap_or_else(|| panic!("externalRefs of {p}"))
            .iter()
            .filter(|r| r["referenceType"] == "nix-store-path")
            .collect();
        assert_eq!(refs.len(), 1, "one nix-store-path reference: {p}");
        assert_eq!(refs[0]["referenceCategory"], "OTHER", "{p}");
        let path = refs[0]["referenceLocator"].as_str().expect("referenceLocator").to_string();
        assert!(out.insert(path.clone(), p.clone()).is_none(), "{path} listed twice");
    }
    out
}

fn spdx_id(path: &str) -> String {
    let base = path.strip_prefix("/nix/store/").expect("a store path");
    format!("SPDXRef-StorePath-{}", &base[..32])
}

/// `(from, type, to)` of every relationship.
fn relationships(doc: &Value) -> BTreeSet<(String, String, String)> {
    doc["relationships"]
        .as_array()
        .expect("relationships")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} of {r}")).to_string();
            (s("spdxElementId"), s("relationshipType"), s("relatedSpdxElement"))
        })
        .collect()
}

fn get_json(server: &Server, path: &str) -> Value {
    let r = server.get(path).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status().as_u16(), 200, "GET {path}");
    serde_json::from_slice(&r.bytes().unwrap()).unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
}

// ------------------------------------------------------------------ tests

#[test]
fn shell_hello_has_an_spdx_sbom_through_the_referrers_api() {
    let server = Server::start();
    let name = "shell/hello";
    let work = tempfile::tempdir().unwrap();

    // Never built: no SBOM yet, and the inspector says so.
    let before = get_json(&server, &format!("/api/inspect/{name}"));
    assert!(before.get("built").is_some_and(Value::is_null), "built before any pull: {}", before["built"]);

    let oci = pull(&server, name, OCI);
    let docker = pull(&server, name, DOCKER);

    // Referrers of both manifests: each its own SBOM manifest, one document.
    let (oci_desc, _, oci_sbom) = sbom_manifest(&server, name, &oci, OCI);
    let (docker_desc, _, docker_sbom) = sbom_manifest(&server, name, &docker, DOCKER);
    assert_ne!(oci_desc["digest"], docker_desc["digest"], "one SBOM manifest per image manifest");
    assert_eq!(oci_sbom["layers"], docker_sbom["layers"], "both name the same document");
    let (spdx_digest, spdx_bytes, doc) = spdx_of(&server, name, &oci_sbom);

    // Unknown and malformed subjects.
    let zero = format!("sha256:{}", "0".repeat(64));
    assert_eq!(referrers(&server, name, &zero, None).manifests(), Vec::<Value>::new(), "unknown digest: empty index");
    for bad in ["sha256:xyz", "notadigest", "sha256:0123", "sha256:ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789"] {
        let r = referrers(&server, name, bad, None);
        let (code, message, _) = spec_error(&r.body);
        assert_eq!((r.status, code.as_str()), (400, "DIGEST_INVALID"), "referrers of {bad}: {message}");
    }

    let info = get_json(&server, "/api/info");
    let inspect = get_json(&server, &format!("/api/inspect/{name}"));

    // spdx-tools says the document is valid, and read all of it.
    let parsed = pyspdxtools(work.path(), "served", &spdx_bytes).unwrap_or_else(|e| panic!("pyspdxtools rejects the SBOM:\n{e}"));
    assert_eq!(
        parsed["packages"].as_array().map(Vec::len),
        doc["packages"].as_array().map(Vec::len),
        "pyspdxtools parsed every package"
    );
    assert_eq!(relationships(&parsed), relationships(&doc), "pyspdxtools parsed every relationship");
    // …and it is a validator that can say no: the same document with one
    // dangling dependency is rejected.
    let mut broken = doc.clone();
    broken["relationships"].as_array_mut().unwrap().push(serde_json::json!({
        "spdxElementId": doc["documentDescribes"][0],
        "relationshipType": "DEPENDS_ON",
        "relatedSpdxElement": "SPDXRef-StorePath-00000000000000000000000000000000",
    }));
    let rejected = pyspdxtools(work.path(), "broken", &serde_json::to_vec(&broken).unwrap());
    assert!(rejected.as_ref().is_err_and(|e| e.contains("SPDXRef-StorePath-00000000000000000000000000000000")), "{rejected:?}");

    // The document's header.
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["dataLicense"], "CC0-1.0");
    assert_eq!(doc["SPDXID"], "SPDXRef-DOCUMENT");
    // Named after what is in the image, not the name asked for: names that
    // expand to the same packages share one image, and so one document.
    let doc_name = doc["name"].as_str().unwrap_or_default();
    let packages_named: Vec<&str> = inspect["packages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let arch = inspect["arch"].as_str().unwrap();
    let mut sorted = packages_named.clone();
    sorted.sort_unstable();
    assert_eq!(doc_name, format!("image of {} ({arch})", sorted.join(", ")), "document name");
    let ns = doc["documentNamespace"].as_str().unwrap_or_default();
    let ns_hex = ns.strip_prefix("https://strata.invalid/spdx/").unwrap_or_else(|| panic!("documentNamespace {ns}"));
    assert!(ns_hex.len() == 64 && ns_hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{ns}");
    let creation = &doc["creationInfo"];
    assert_eq!(creation["created"], "1970-01-01T00:00:01Z", "fixed, for determinism");
    let version = info["version"].as_str().expect("version");
    assert_eq!(creation["creators"], serde_json::json!([format!("Tool: strata-{version}")]));
    let comment = creation["comment"].as_str().unwrap_or_default();
    // The source's identity; a local path by its last component only (one
    // set checked out in two places gives one document, and no server path
    // is published).
    let source = inspect["source"].as_str().expect("inspect.source");
    let source = match source.strip_prefix("path:") {
        Some(path) => format!("path:{}", path.trim_end_matches('/').rsplit('/').next().unwrap()),
        None => source.to_string(),
    };
    assert_eq!(source, "path:demo-pkgs");
    assert!(comment.contains(&format!("from {source};")), "creationInfo.comment names the package source {source}: {comment}");
    assert!(!comment.contains("/work/") && !comment.contains(repo_root().to_str().unwrap()), "no server path: {comment}");
    for plugin in ["bundles", "size", "nixpkgs-source"] {
        assert!(comment.contains(plugin), "creationInfo.comment names plugin {plugin}: {comment}");
    }

    // Every store path of the image, as skopeo pulls it, is a package; and
    // nothing else is. The same set as the closure /api/inspect reports.
    let layout = work.path().join("oci");
    skopeo_copy(&server, name, "latest", &layout, "t").assert_ok();
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], oci.digest.as_str(), "skopeo pulled the SBOM's subject");
    let in_layers = store_paths_in_layout(&layout, &oci.json);
    let packages = packages_by_path(&doc);
    let described: BTreeSet<String> = packages.keys().cloned().collect();
    assert_eq!(described, in_layers, "SBOM packages = store paths in the image's layers");
    let closure: BTreeSet<String> =
        inspect["closure"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(described, closure, "SBOM packages = /api/inspect's closure");
    assert_eq!(packages.len(), doc["packages"].as_array().unwrap().len());

    // Each package against Nix.
    let hashes = nar_hashes(&described);
    for (path, p) in &packages {
        let id = spdx_id(path);
        assert_eq!(p["SPDXID"], id.as_str(), "{p}");
        check_name_and_version(path, p);
        assert_eq!(p["downloadLocation"], "NOASSERTION", "{p}");
        assert_eq!(p["filesAnalyzed"], false, "{p}");
        assert_eq!(p["licenseConcluded"], "NOASSERTION", "{p}");
        assert_eq!(p["copyrightText"], "NOASSERTION", "{p}");
        assert!(p["licenseDeclared"].is_string(), "{p}");
        assert_eq!(
            p["checksums"],
            serde_json::json!([{ "algorithm": "SHA256", "checksumValue": hashes[path] }]),
            "the NAR hash nix-store reports, base 16: {p}"
        );
        // DEPENDS_ON exactly Nix's references.
        let deps: BTreeSet<String> = relationships(&doc)
            .into_iter()
            .filter(|(from, ty, to)| from == &id && ty == "DEPENDS_ON" && to != &id)
            .map(|(_, _, to)| to)
            .collect();
        let want: BTreeSet<String> = references(path).iter().map(|r| spdx_id(r)).collect();
        assert_eq!(deps, want, "DEPENDS_ON of {path} = nix-store --query --references");
    }
    for (from, ty, to) in relationships(&doc) {
        assert!(
            (from == "SPDXRef-DOCUMENT" && ty == "DESCRIBES") || (ty == "DEPENDS_ON" && from != "SPDXRef-DOCUMENT"),
            "unexpected relationship {from} {ty} {to}"
        );
    }
    // The requested packages are what the document describes.
    let roots: BTreeSet<String> = inspect["roots"].as_array().unwrap().iter().map(|r| spdx_id(r.as_str().unwrap())).collect();
    let describes: BTreeSet<String> =
        doc["documentDescribes"].as_array().expect("documentDescribes").iter().map(|d| d.as_str().unwrap().to_string()).collect();
    assert_eq!(describes, roots, "documentDescribes = the roots of the requested packages");
    let describes_rel: BTreeSet<String> =
        relationships(&doc).into_iter().filter(|(_, ty, _)| ty == "DESCRIBES").map(|(_, _, to)| to).collect();
    assert_eq!(describes_rel, roots, "one DESCRIBES per root");

    // Licences and homepages where the set has meta, NOASSERTION where not.
    let by_name = |n: &str| -> &Value {
        let found: Vec<&Value> = packages.values().filter(|p| p["name"] == n).collect();
        assert_eq!(found.len(), 1, "one package named {n}");
        found[0]
    };
    let hello = by_name("hello");
    assert_eq!(hello["versionInfo"], "2.12.1", "{hello}");
    assert_eq!(hello["licenseDeclared"], demo_meta("hello.meta.license.spdxId"), "{hello}");
    assert_eq!(hello["licenseDeclared"], "GPL-3.0-or-later", "{hello}");
    assert_eq!(hello["homepage"], demo_meta("hello.meta.homepage"), "{hello}");
    let bash = by_name("bash-interactive");
    assert_eq!(bash["versionInfo"], "5.2-p15", "the version starts at the first dash before a non-letter: {bash}");
    let nano = by_name("nano");
    assert_eq!(nano["licenseDeclared"], "NOASSERTION", "no meta.license: {nano}");
    assert!(nano.get("homepage").is_none_or(|h| h == "NOASSERTION"), "no meta.homepage: {nano}");
    // moreutils' `free` has no SPDX id: a LicenseRef, defined in the document.
    let moreutils = by_name("moreutils");
    assert_eq!(moreutils["licenseDeclared"], "LicenseRef-free", "{moreutils}");
    assert_eq!(moreutils["homepage"], demo_meta("moreutils.meta.homepage"), "{moreutils}");
    let extracted = doc["hasExtractedLicensingInfos"].as_array().expect("hasExtractedLicensingInfos");
    assert!(extracted.iter().any(|l| l["licenseId"] == "LicenseRef-free"), "{extracted:?}");
    // busybox-static (builtins.path) has no version and no meta.
    let busybox = by_name("busybox-static");
    assert!(busybox.get("versionInfo").is_none(), "{busybox}");
    assert_eq!(busybox["licenseDeclared"], "NOASSERTION", "{busybox}");

    // The inspector links the SBOM of the built image.
    let built = &inspect["built"];
    assert_eq!(built["manifest"], oci.digest.as_str(), "{built}");
    assert_eq!(built["docker_manifest"], docker.digest.as_str(), "{built}");
    let sbom = &built["sbom"];
    assert_eq!(sbom["digest"], spdx_digest.as_str(), "{built}");
    assert_eq!(sbom["size"].as_u64(), Some(spdx_bytes.len() as u64), "{built}");
    assert_eq!(sbom["blob_url"], format!("/v2/{name}/blobs/{spdx_digest}"), "{built}");
    assert_eq!(sbom["referrers_url"], format!("/v2/{name}/referrers/{}", oci.digest), "{built}");
    let via_link = server.get(sbom["blob_url"].as_str().unwrap()).send().unwrap();
    assert_eq!(via_link.status().as_u16(), 200);
    assert_eq!(via_link.bytes().unwrap().to_vec(), spdx_bytes, "blob_url serves the document");
    let via_link = server.get(sbom["referrers_url"].as_str().unwrap()).send().unwrap();
    assert_eq!(via_link.status().as_u16(), 200);
    let linked: Value = serde_json::from_slice(&via_link.bytes().unwrap()).unwrap();
    assert_eq!(linked["manifests"], serde_json::json!([oci_desc]), "referrers_url lists the SBOM");

    // The oras Python SDK finds and reads the referrer as a client would.
    let python = require_tool("python3");
    let script = repo_root().join("tests/clients/oras_sbom.py");
    let out_dir = work.path().join("oras");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = run(
        Command::new(python).arg(&script).arg(server.host()).arg(name).arg(&oci.digest).arg(&out_dir),
        Duration::from_secs(120),
    );
    assert!(out.success(), "oras could not read the SBOM: {out}");
    let result: Value = serde_json::from_slice(&std::fs::read(out_dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["manifest_digest"], oci_desc["digest"], "{result}");
    assert_eq!(result["filters"], "artifactType", "{result}");
    assert_eq!(result["manifest"], oci_sbom, "{result}");
    let files = result["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{result}");
    let pulled = std::fs::read(files[0].as_str().unwrap()).unwrap();
    assert_eq!(pulled, spdx_bytes, "oras pulled the document");
}

#[test]
fn adding_packages_changes_the_sbom() {
    let server = Server::start();
    let names = ["shell/hello", "shell/hello/jq", "shell/hello/jq/gmp/libxml2"];
    let mut docs = Vec::new();
    for name in names {
        let image = pull(&server, name, OCI);
        let (_, _, sbom) = sbom_manifest(&server, name, &image, OCI);
        let (digest, bytes, doc) = spdx_of(&server, name, &sbom);
        // The described packages are this name's roots, whatever else is in it.
        let inspect = get_json(&server, &format!("/api/inspect/{name}"));
        let roots: BTreeSet<String> =
            inspect["roots"].as_array().unwrap().iter().map(|r| spdx_id(r.as_str().unwrap())).collect();
        let describes: BTreeSet<String> =
            doc["documentDescribes"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
        assert_eq!(describes, roots, "{name}: documentDescribes = the roots");
        let closure: BTreeSet<String> =
            inspect["closure"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap().to_string()).collect();
        let packages = packages_by_path(&doc);
        assert_eq!(packages.keys().cloned().collect::<BTreeSet<_>>(), closure, "{name}: one package per closure path");
        for (path, p) in &packages {
            check_name_and_version(path, p);
        }
        docs.push((digest, bytes, packages, doc));
    }
    for pair in docs.windows(2) {
        let (small, big) = (&pair[0], &pair[1]);
        assert_ne!(small.0, big.0, "a different image, a different SBOM");
        let small_paths: BTreeSet<&String> = small.2.keys().collect();
        let big_paths: BTreeSet<&String> = big.2.keys().collect();
        assert!(small_paths.is_subset(&big_paths), "the smaller image's paths are all in the bigger one's");
        assert!(big_paths.len() > small_paths.len(), "{} vs {} packages", big_paths.len(), small_paths.len());
    }
    // Another name for the same packages: the same image, the same document
    // (which is why the document is named after its packages).
    let same = pull(&server, "hello/shell", OCI);
    assert_eq!(same.digest, pull(&server, names[0], OCI).digest, "hello/shell and shell/hello are one image");
    let (_, _, sbom) = sbom_manifest(&server, "hello/shell", &same, OCI);
    assert_eq!(spdx_of(&server, "hello/shell", &sbom).0, docs[0].0, "one image, one SBOM");
    let by_name = |doc: usize, n: &str| -> Vec<Value> { docs[doc].2.values().filter(|p| p["name"] == n).cloned().collect() };

    // jq: requested, its meta is there; glibc came with it, as a dependency
    // only: no meta read for it.
    let jq = by_name(1, "jq");
    assert_eq!(jq.len(), 1, "{jq:?}");
    assert_eq!(jq[0]["licenseDeclared"], demo_meta("jq.meta.license.spdxId"), "{}", jq[0]);
    assert_eq!(jq[0]["homepage"], demo_meta("jq.meta.homepage"), "{}", jq[0]);
    assert!(!docs[0].2.values().any(|p| p["name"] == "jq" || p["name"] == "glibc"), "neither in shell/hello");
    let glibc = by_name(1, "glibc");
    assert_eq!(glibc.len(), 1, "{glibc:?}");
    assert_eq!(glibc[0]["licenseDeclared"], "NOASSERTION", "a dependency that was not requested: {}", glibc[0]);
    assert!(glibc[0].get("homepage").is_none(), "{}", glibc[0]);

    // gmp's meta.license is a list of two: both ids, joined.
    let gmp = by_name(2, "gmp");
    assert_eq!(gmp.len(), 1, "{gmp:?}");
    let licence = gmp[0]["licenseDeclared"].as_str().unwrap_or_default();
    assert!(
        licence.contains("LGPL-3.0-or-later") && licence.contains("GPL-2.0-or-later") && licence.contains(" AND "),
        "gmp: {}",
        gmp[0]
    );
    // libxml2 installs its bin and man outputs (meta.outputsToInstall), and
    // out comes with them: three store paths, one name and version.
    let xml = by_name(2, "libxml2");
    assert_eq!(xml.len(), 3, "libxml2's out, bin and man: {xml:?}");
    assert!(xml.iter().all(|p| p["versionInfo"] == "2.11.5"), "{xml:?}");
    let described: Vec<&Value> = xml.iter().filter(|p| docs[2].3["documentDescribes"].as_array().unwrap().contains(&p["SPDXID"])).collect();
    assert_eq!(described.len(), 2, "bin and man are described, out is their dependency: {xml:?}");
    assert!(described.iter().all(|p| p["licenseDeclared"] == "MIT"), "{described:?}");

    let work = tempfile::tempdir().unwrap();
    let last = names.len() - 1;
    pyspdxtools(work.path(), "big", &docs[last].1)
        .unwrap_or_else(|e| panic!("pyspdxtools rejects {}'s SBOM:\n{e}", names[last]));
}

/// The package's name and version make its store name, as Nix's
/// `parseDrvName` splits it, with an output name (`-bin`, `-man`) after.
fn check_name_and_version(path: &str, p: &Value) {
    let store_name = &path["/nix/store/".len() + 33..];
    let pname = p["name"].as_str().unwrap_or_else(|| panic!("name of {p}"));
    let whole = match p.get("versionInfo").and_then(Value::as_str) {
        Some(v) => format!("{pname}-{v}"),
        None => pname.to_string(),
    };
    let output = store_name.strip_prefix(whole.as_str()).unwrap_or_else(|| panic!("{store_name} starts with {whole}: {p}"));
    assert!(
        output.is_empty() || (output.starts_with('-') && output[1..].chars().all(|c| c.is_ascii_lowercase())),
        "{store_name} = {whole} and an output name: {p}"
    );
}

#[test]
fn same_image_same_sbom_on_two_stores_and_from_the_cli_and_off_when_disabled() {
    let name = "shell/hello";
    let first = Server::start();
    let second = Server::start();
    assert_ne!(first.storage, second.storage, "two separate storages");
    let mut seen = Vec::new();
    for server in [&first, &second] {
        let image = pull(server, name, OCI);
        let (desc, _, sbom) = sbom_manifest(server, name, &image, OCI);
        let (digest, bytes, _) = spdx_of(server, name, &sbom);
        seen.push((image.digest, desc["digest"].clone(), digest, bytes));
    }
    assert_eq!(seen[0].0, seen[1].0, "the same image");
    assert_eq!(seen[0].2, seen[1].2, "the same SPDX document digest on two stores");
    assert_eq!(seen[0].1, seen[1].1, "the same SBOM manifest digest on two stores");
    let (image_digest, spdx_digest) = (seen[0].0.clone(), seen[0].2.clone());
    assert_eq!(seen[0].3, seen[1].3, "the same bytes");
    drop(second);

    // `strata build --sbom FILE` writes the very same document.
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("out");
    let file = work.path().join("hello.spdx.json");
    strata_cli(
        work.path(),
        &["build", name, "--quiet", "--output", &format!("oci:{}:latest", layout.display()), "--sbom", file.to_str().unwrap()],
    )
    .assert_ok();
    let written = std::fs::read(&file).unwrap_or_else(|e| panic!("strata build --sbom wrote no {}: {e}", file.display()));
    assert_eq!(sha256_digest(&written), spdx_digest, "strata build --sbom = the served document");
    pyspdxtools(work.path(), "cli", &written).unwrap_or_else(|e| panic!("pyspdxtools rejects the CLI's SBOM:\n{e}"));
    let help = strata_cli(work.path(), &["build", "--help"]).assert_ok();
    assert!(help.stdout.contains("--sbom"), "build --help names --sbom:\n{help}");

    // Switched off: the same image, no referrer, no document stored.
    let off = Server::start_with(ServerOptions { extra_toml: "[sbom]\nenabled = false".into(), ..Default::default() });
    let image = pull(&off, name, OCI);
    assert_eq!(image.digest, image_digest, "the image does not depend on the SBOM switch");
    let docker = pull(&off, name, DOCKER);
    for digest in [&image.digest, &docker.digest] {
        assert_eq!(referrers(&off, name, digest, None).manifests(), Vec::<Value>::new(), "no referrers when disabled");
        let filtered = referrers(&off, name, digest, Some(SPDX));
        assert_eq!(filtered.manifests(), Vec::<Value>::new(), "no referrers when disabled");
    }
    let r = off.get(&format!("/v2/{name}/blobs/{spdx_digest}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 404, "no SPDX document stored when disabled");
    let inspect = get_json(&off, &format!("/api/inspect/{name}"));
    assert_eq!(inspect["built"]["manifest"], image.digest.as_str(), "{}", inspect["built"]);
    assert!(inspect["built"]["sbom"].is_null(), "built.sbom when disabled: {}", inspect["built"]);
}
