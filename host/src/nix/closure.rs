//! The runtime closure as `nix path-info --json --recursive` reports it:
//! every path with its NAR size, hash and references, in the formats Nix
//! 2.8 through 2.19+ print.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use strata_plugin_sdk::NamedPath;

use crate::nix::process::NixError;

/// One entry of `nix path-info --json`, any version.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathInfoJson {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(default)]
    store_dir: Option<String>,
    #[serde(default)]
    nar_hash: Option<Value>,
}

/// Parses `nix path-info --json` into graph entries (references by path).
///
/// Nix has printed three shapes: an array of objects with a `path` (up to
/// 2.18), an object keyed by full path (2.19 on), and an object keyed by
/// base name, with base-name references and structured hashes (the "v2"
/// format of later versions). Base names are completed with `store_dir`
/// (the entry's own `storeDir` when it has one). Also returns each path's
/// NAR hash as hex (see [`nar_hash_hex`]).
pub fn parse_path_info(
    json: &[u8],
    store_dir: &str,
) -> Result<(Vec<NamedPath>, BTreeMap<String, String>), NixError> {
    let value: Value =
        serde_json::from_slice(json).map_err(|e| NixError::Parse(format!("path-info output: {e}")))?;
    let entries: Vec<(Option<String>, Value)> = match value {
        Value::Array(items) => items.into_iter().map(|v| (None, v)).collect(),
        Value::Object(map) => map.into_iter().map(|(k, v)| (Some(k), v)).collect(),
        other => return Err(NixError::Parse(format!("path-info output is neither list nor map: {other}"))),
    };
    let mut paths = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    for (key, value) in entries {
        if value.is_null() {
            let key = key.unwrap_or_default();
            return Err(NixError::Parse(format!("{key} is not a valid store path")));
        }
        let info: PathInfoJson =
            serde_json::from_value(value).map_err(|e| NixError::Parse(format!("path-info entry: {e}")))?;
        let dir = info.store_dir.as_deref().unwrap_or(store_dir);
        let path = key
            .or(info.path)
            .map(|p| full_path(dir, &p))
            .ok_or_else(|| NixError::Parse("path-info entry without a path".into()))?;
        if info.valid == Some(false) {
            return Err(NixError::Parse(format!("{path} is not a valid store path")));
        }
        let nar_size = info
            .nar_size
            .ok_or_else(|| NixError::Parse(format!("path-info gives no narSize for {path}")))?;
        let references = info.references.iter().map(|r| full_path(dir, r)).collect();
        let hash = info
            .nar_hash
            .as_ref()
            .and_then(nar_hash_hex)
            .ok_or_else(|| NixError::Parse(format!("path-info gives no SHA-256 narHash for {path}")))?;
        hashes.insert(path.clone(), hash);
        paths.insert(path.clone(), NamedPath { path, nar_size, references });
    }
    Ok((paths.into_values().collect(), hashes))
}

/// A NAR hash as Nix prints it, any version, as hex SHA-256: SRI
/// (`sha256-<base64>`, 2.4 on), `sha256:<nix32>` (older), `sha256:<hex>`,
/// or the v2 object `{"algorithm","format","hash"}`. `None` for another
/// algorithm or a malformed hash.
pub fn nar_hash_hex(value: &Value) -> Option<String> {
    use base64::Engine as _;
    let (algorithm, format, hash) = match value {
        Value::String(s) => match (s.split_once('-'), s.split_once(':')) {
            (_, Some((a, h))) => (a, if h.len() == 64 { "base16" } else { "nix32" }, h),
            (Some((a, h)), None) => (a, "base64", h),
            _ => return None,
        },
        Value::Object(o) => (o.get("algorithm")?.as_str()?, o.get("format")?.as_str()?, o.get("hash")?.as_str()?),
        _ => return None,
    };
    if algorithm != "sha256" {
        return None;
    }
    let bytes = match format {
        "base64" => base64::engine::general_purpose::STANDARD.decode(hash).ok()?,
        "nix32" => nix_base32::from_nix_base32(hash)?,
        "base16" => hex::decode(hash).ok()?,
        _ => return None,
    };
    (bytes.len() == 32).then(|| hex::encode(bytes))
}

fn full_path(store_dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", store_dir.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_plugin_sdk::ClosureGraph;

    const HELLO: &str = "/nix/store/5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1";
    const BUSYBOX: &str = "/nix/store/r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static";

    fn expected() -> Vec<NamedPath> {
        vec![
            NamedPath { path: HELLO.into(), nar_size: 1280, references: vec![BUSYBOX.into()] },
            NamedPath { path: BUSYBOX.into(), nar_size: 1982512, references: vec![] },
        ]
    }

    #[test]
    fn parses_nix_2_8_array() {
        // As printed by Nix 2.8 (this machine), busybox first to check sorting.
        let json = format!(
            r#"[{{"path":"{BUSYBOX}","narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[],"registrationTime":1795434700,"ultimate":true}},
               {{"path":"{HELLO}","narHash":"sha256-2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o=","narSize":1280,"references":["{BUSYBOX}"],"deriver":"/nix/store/g37rz126y6rx634b05cdas0i879nnzhq-hello-2.12.1.drv","registrationTime":1795434718,"ultimate":true}}]"#
        );
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap().0, expected());
    }

    #[test]
    fn parses_nix_2_19_object() {
        let json = format!(
            r#"{{"{HELLO}":{{"ca":null,"deriver":"/nix/store/g37rz126y6rx634b05cdas0i879nnzhq-hello-2.12.1.drv","narHash":"sha256-2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o=","narSize":1280,"references":["{BUSYBOX}"],"registrationTime":1795434718,"signatures":[],"ultimate":true}},
                "{BUSYBOX}":{{"ca":"fixed:r:sha256:1aaa","deriver":null,"narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[],"registrationTime":1795434700,"signatures":[],"ultimate":false}}}}"#
        );
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap().0, expected());
    }

    #[test]
    fn parses_base_names_of_the_v2_format() {
        let json = r#"{"5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1":{"version":2,"storeDir":"/nix/store","narHash":{"algorithm":"sha256","format":"base64","hash":"2bOfe7UMqd2tlJgsFXyWAlXJgnD87PdDOay32ARHY3o="},"narSize":1280,"references":["r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static"]},
                       "r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static":{"version":2,"narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[]}}"#;
        assert_eq!(parse_path_info(json.as_bytes(), "/nix/store").unwrap().0, expected());
    }

    #[test]
    fn nar_hashes_in_every_format_give_the_same_hex() {
        // busybox's hash as this machine's Nix prints it, and converted with
        // `nix-hash --type sha256 --to-base32 / --to-base16`.
        let hex = "77765f0711a75598809a749ef304f48139f6750c66fcc9750af7d4d05a2a5e81";
        let sri = Value::from("sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=");
        assert_eq!(nar_hash_hex(&sri).as_deref(), Some(hex));
        let nix32 = nix_base32::to_nix_base32(&::hex::decode(hex).unwrap());
        assert_eq!(nar_hash_hex(&Value::from(format!("sha256:{nix32}"))).as_deref(), Some(hex));
        assert_eq!(nar_hash_hex(&Value::from(format!("sha256:{hex}"))).as_deref(), Some(hex));
        let v2 = serde_json::json!({"algorithm": "sha256", "format": "base64", "hash": "d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE="});
        assert_eq!(nar_hash_hex(&v2).as_deref(), Some(hex));
        assert_eq!(nar_hash_hex(&Value::from("sha512-AAAA")), None);
        assert_eq!(nar_hash_hex(&Value::from("sha256-AAAA")), None);
        let json = format!(r#"[{{"path":"{BUSYBOX}","narHash":"sha256-d3ZfBxGnVZiAmnSe8wT0gTn2dQxm/Ml1CvfU0FoqXoE=","narSize":1982512,"references":[]}}]"#);
        let (_, hashes) = parse_path_info(json.as_bytes(), "/nix/store").unwrap();
        assert_eq!(hashes.get(BUSYBOX).map(String::as_str), Some(hex));
    }

    #[test]
    fn rejects_invalid_paths() {
        let old = format!(r#"[{{"path":"{HELLO}","valid":false}}]"#);
        assert!(matches!(parse_path_info(old.as_bytes(), "/nix/store"), Err(NixError::Parse(_))));
        let new = format!(r#"{{"{HELLO}":null}}"#);
        assert!(matches!(parse_path_info(new.as_bytes(), "/nix/store"), Err(NixError::Parse(_))));
        assert!(matches!(parse_path_info(b"42", "/nix/store"), Err(NixError::Parse(_))));
    }

    #[test]
    fn closure_check_catches_dangling_references() {
        let graph = |roots: &[&str], paths| ClosureGraph::from_named(roots, paths);
        let g = graph(&[HELLO], expected()).unwrap();
        assert_eq!((g.roots, g.paths[0].references.clone()), (vec![0], vec![1]));
        let mut paths = expected();
        paths.pop();
        assert!(graph(&[HELLO], paths).is_err());
        assert!(graph(&["/nix/store/x-other"], expected()).is_err());
    }
}
