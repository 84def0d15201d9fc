//! What a person sees: the page (embedded, or Nixery-style from `WEB_DIR`),
//! `/api/info` and `/api/inspect/{name}` behind it, and the health probes.
//!
//! - `GET /`, `GET /<file>`: the page and its assets. Embedded in the binary
//!   unless `web_dir` is set, in which case files are served from that
//!   directory (and only from it: no `..`, no absolute parts, no symlinks out).
//! - `GET /api/info`: version, package source, storage, layer budget, plugins
//!   and the role each plays (documented in `docs/web.md`).
//! - `GET /api/inspect/{name}?tag=`: [`Builder::inspect`] as JSON; errors are
//!   the distribution spec's JSON, as for the registry API.
//! - `GET /healthz`: 200 while the process serves. `GET /readyz`: 200 when
//!   the plugins are loaded and the storage answers, 503 otherwise.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::build::Builder;
use crate::config::{Config, GroupRule};
use crate::error::Error;
use crate::plugins::PluginSet;

/// How long `/readyz` gives the storage to answer.
const READY_STORAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded page, served when no `web_dir` is configured.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset { path: "index.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../../web/index.html") },
    Asset { path: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../../web/app.js") },
    Asset { path: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../../web/style.css") },
];

/// Only what the embedded page itself needs: no inline script, no other
/// origin. Not applied to a `WEB_DIR` page, which is the operator's own.
const EMBEDDED_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

#[derive(Clone)]
struct WebState {
    builder: Arc<Builder>,
    web_dir: Option<Arc<PathBuf>>,
    /// Access control, when on: `/api/info` shows an anonymous client less.
    auth: Option<Arc<crate::registry::auth::Auth>>,
}

pub fn router(builder: Arc<Builder>) -> Router {
    let web_dir = builder.config().web_dir.clone().map(Arc::new);
    // `strata serve` checked the same `[auth]` before it got here.
    let auth = crate::registry::auth::Auth::from_config(&builder.config().auth).ok().flatten();
    let state = WebState { builder, web_dir, auth };
    Router::new()
        .route("/api/info", get(api_info))
        .route("/api/inspect/{*name}", get(api_inspect))
        .route("/api/{*rest}", get(api_unknown))
        .route("/readyz", get(readyz))
        .with_state(state.clone())
        .merge(static_router(state.web_dir))
        // Outside the static router so a WEB_DIR file cannot shadow it.
        .route("/healthz", get(healthz))
}

/// `/` and `/<file>`: the embedded page or `web_dir`'s files.
fn static_router(web_dir: Option<Arc<PathBuf>>) -> Router {
    Router::new()
        .route("/", get(static_index))
        .route("/{*path}", get(static_file))
        .with_state(web_dir)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(st): State<WebState>) -> Response {
    if st.builder.plugins.all().is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: no plugins loaded\n").into_response();
    }
    match tokio::time::timeout(READY_STORAGE_TIMEOUT, st.builder.storage.get_bytes("meta/readyz-probe")).await {
        Ok(Ok(_)) => "ready\n".into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readyz: storage did not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: storage unavailable\n").into_response()
        }
        Err(_) => {
            tracing::warn!("readyz: storage timed out");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: storage timed out\n").into_response()
        }
    }
}

// ---------------------------------------------------------------- /api/info

async fn api_info(State(st): State<WebState>, headers: HeaderMap) -> Response {
    let b = &st.builder;
    let anonymous = st.auth.as_ref().is_some_and(|a| !a.authenticated(&headers));
    let doc = info_document(b.config(), &roles_of(&b.plugins), &entries_of(&b.plugins), b.storage.description(), anonymous);
    no_store(Json(doc).into_response())
}

/// Which plugin plays which part, by plugin name.
#[derive(Debug, Clone)]
struct Roles {
    expand: Vec<String>,
    group: String,
    group_rules: Vec<(GroupRule, String)>,
    source: String,
}

fn roles_of(set: &PluginSet) -> Roles {
    Roles {
        expand: set.expand.iter().map(|p| p.name().to_string()).collect(),
        group: set.group.name().to_string(),
        group_rules: set.group_rules.iter().map(|(r, p)| (r.clone(), p.name().to_string())).collect(),
        source: set.source.name().to_string(),
    }
}

/// One loaded plugin as the page shows it.
#[derive(Debug, Clone)]
struct PluginEntry {
    name: String,
    module_name: String,
    version: String,
    hooks: Vec<String>,
    digest: String,
    origin: String,
}

fn entries_of(set: &PluginSet) -> Vec<PluginEntry> {
    set.all()
        .iter()
        .map(|p| PluginEntry {
            name: p.name().to_string(),
            module_name: p.info().name.clone(),
            version: p.info().version.clone(),
            hooks: p.info().hooks.clone(),
            digest: format!("sha256:{}", p.digest()),
            // A plugin file's name, not where it is on the server.
            origin: match p.origin() {
                "built-in" => "built-in".to_string(),
                path => std::path::Path::new(path)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "a file".into()),
            },
        })
        .collect()
}

/// The `/api/info` document (shape in `docs/web.md`). It shows no server
/// path: the storage by its kind, a `path` source as `(server path)`,
/// plugin files by name. With access control on, an `anonymous` client
/// (no valid credentials) sees neither the source's configuration nor the
/// name prefixes of group rules: those describe what the names it may not
/// pull are.
fn info_document(cfg: &Config, roles: &Roles, plugins: &[PluginEntry], storage: &str, anonymous: bool) -> Value {
    let source_config = match anonymous {
        true => json!({}),
        false => cfg
            .plugins
            .config
            .get(&roles.source)
            .and_then(|t| serde_json::to_value(t).ok())
            .map(redact)
            .map(without_paths)
            .unwrap_or_else(|| json!({})),
    };
    let storage = storage.split_once("://").map(|(scheme, _)| scheme).unwrap_or("unknown");
    let shown = |text: &Option<String>| if anonymous { None } else { text.clone() };
    let rule_json = |i: usize, rule: &GroupRule, plugin: &str| {
        json!({ "index": i, "prefix": shown(&rule.prefix), "tag": shown(&rule.tag), "plugin": plugin })
    };
    let plugins: Vec<Value> = plugins
        .iter()
        .map(|p| {
            let mut plays = Vec::new();
            for (i, name) in roles.expand.iter().enumerate() {
                if *name == p.name {
                    plays.push(json!({ "role": "expand", "position": i }));
                }
            }
            if roles.group == p.name {
                plays.push(json!({ "role": "group" }));
            }
            for (i, (rule, name)) in roles.group_rules.iter().enumerate() {
                if *name == p.name {
                    plays.push(json!({ "role": "group_rule", "index": i, "prefix": shown(&rule.prefix), "tag": shown(&rule.tag) }));
                }
            }
            if roles.source == p.name {
                plays.push(json!({ "role": "source" }));
            }
            json!({
                "name": p.name,
                "module_name": p.module_name,
                "version": p.version,
                "hooks": p.hooks,
                "digest": p.digest,
                "origin": p.origin,
                "roles": plays,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "source": { "plugin": roles.source, "config": source_config },
        "storage": storage,
        "layers": {
            "budget": cfg.layers.budget,
            "compression_level": cfg.layers.level(),
        },
        "max_packages": cfg.max_packages,
        "roles": {
            "expand": roles.expand,
            "group": roles.group,
            "group_rules": roles
                .group_rules
                .iter()
                .enumerate()
                .map(|(i, (rule, name))| rule_json(i, rule, name))
                .collect::<Vec<_>>(),
            "source": roles.source,
        },
        "plugins": plugins,
        "restricted": anonymous,
    })
}

/// A source's `path` is a directory on the server: not shown.
fn without_paths(v: Value) -> Value {
    match v {
        Value::Object(mut map) => {
            if let Some(path) = map.get_mut("path") {
                if path.is_string() {
                    *path = json!("(server path)");
                }
            }
            Value::Object(map)
        }
        other => other,
    }
}

/// The source table is shown publicly: drop credentials from URLs
/// (`https://user:token@host/…`) and values under secret-looking keys.
fn redact(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = ["token", "password", "secret", "credential", "key"]
                        .iter()
                        .any(|s| lower.contains(s));
                    if secret && !v.is_null() {
                        (k, json!("(redacted)"))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        Value::String(s) => match url::Url::parse(&s) {
            Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                Value::String(u.to_string())
            }
            _ => Value::String(s),
        },
        other => other,
    }
}

// ------------------------------------------------------------- /api/inspect

#[derive(Deserialize)]
struct InspectQuery {
    tag: Option<String>,
}

async fn api_inspect(
    State(st): State<WebState>,
    uri: Uri,
    query: Result<Query<InspectQuery>, QueryRejection>,
) -> Result<Response, Error> {
    // The name as `/v2/` reads it: from the raw path, nothing
    // percent-decoded (`hello%2Fgit` is refused, not read as `hello/git`),
    // which is also the name the auth guard checked.
    let name = uri.path().strip_prefix("/api/inspect/").unwrap_or_default();
    // Rejections answer in the spec's JSON too, not axum's plain text.
    let Query(q) = query.map_err(|e| Error::TagInvalid(e.body_text()))?;
    let tag = q.tag.filter(|t| !t.is_empty()).unwrap_or_else(|| "latest".to_string());
    crate::registry::reference::parse_name(name, st.builder.config().max_packages)?;
    crate::registry::reference::parse_tag(&tag)?;
    let mut inspection = st.builder.inspect(name, &tag).await?;
    // As the SBOM names it: a `path` source by its last component only.
    inspection.source = crate::image::sbom::source_name(&inspection.source);
    Ok(no_store(Json(inspection).into_response()))
}

async fn api_unknown(Path(rest): Path<String>) -> Error {
    Error::NotFound(format!("/api/{rest}"))
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

// ------------------------------------------------------------------ static

async fn static_index(State(dir): State<Option<Arc<PathBuf>>>, headers: HeaderMap) -> Response {
    serve_static(dir.as_deref(), "", &headers).await
}

async fn static_file(
    State(dir): State<Option<Arc<PathBuf>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve_static(dir.as_deref(), &path, &headers).await
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "not found\n").into_response()
}

/// The relative path a request may name under the web root: only normal
/// components, so no `..`, no root or drive prefix, no `.`, no backslash
/// (which some systems take as a separator), no NUL. `""` is the root.
fn safe_relative_path(path: &str) -> Option<PathBuf> {
    if path.contains(['\\', '\0']) {
        return None;
    }
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.starts_with('/') {
        return None;
    }
    let mut out = PathBuf::new();
    for part in trimmed.split('/') {
        match part {
            // Trailing slash (a directory) or a doubled slash: nothing named.
            "" => continue,
            "." | ".." => return None,
            _ => {}
        }
        let mut comps = std::path::Path::new(part).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(c)), None) => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

fn content_type(path: &std::path::Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// A response for a static body, honouring `If-None-Match`.
fn static_response(body: Vec<u8>, content_type: &'static str, embedded: bool, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if embedded {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(EMBEDDED_CSP));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    resp
}

async fn serve_static(dir: Option<&PathBuf>, path: &str, headers: &HeaderMap) -> Response {
    let Some(rel) = safe_relative_path(path) else {
        tracing::debug!(path, "refused a static path");
        return not_found();
    };
    let Some(root) = dir else {
        let wanted = if rel.as_os_str().is_empty() { "index.html" } else { rel.to_str().unwrap_or("") };
        return match ASSETS.iter().find(|a| a.path == wanted) {
            Some(a) => static_response(a.body.to_vec(), a.content_type, true, headers),
            None => not_found(),
        };
    };
    match read_under(root, &rel).await {
        Some((file, body)) => static_response(body, content_type(&file), false, headers),
        None => not_found(),
    }
}

/// Reads `rel` under `root` (a directory's `index.html`), refusing anything
/// whose real path (symlinks resolved) is outside `root`.
async fn read_under(root: &std::path::Path, rel: &std::path::Path) -> Option<(PathBuf, Vec<u8>)> {
    let root = tokio::fs::canonicalize(root).await.ok()?;
    let mut file = tokio::fs::canonicalize(root.join(rel)).await.ok()?;
    if !file.starts_with(&root) {
        tracing::warn!(path = %rel.display(), "refused a static path resolving outside web_dir");
        return None;
    }
    if tokio::fs::metadata(&file).await.ok()?.is_dir() {
        file = tokio::fs::canonicalize(file.join("index.html")).await.ok()?;
        if !file.starts_with(&root) {
            return None;
        }
    }
    if !tokio::fs::metadata(&file).await.ok()?.is_file() {
        return None;
    }
    let body = tokio::fs::read(&file).await.ok()?;
    Some((file, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn traversal_guard() {
        for ok in ["", "/", "index.html", "app.js", "img/logo.png", "a//b", "dir/", "..a", "a..", "a...b"] {
            assert!(safe_relative_path(ok).is_some(), "{ok:?}");
        }
        assert_eq!(safe_relative_path("img/logo.png").unwrap(), PathBuf::from("img/logo.png"));
        assert_eq!(safe_relative_path("/").unwrap(), PathBuf::new());
        for bad in [
            "..", "../x", "a/../b", "a/..", "./a", "a/./b", "//etc/passwd", "/../x", "a\\..\\b", "..\\x", "a\0b",
            "C:\\x",
        ] {
            assert!(safe_relative_path(bad).is_none(), "{bad:?}");
        }
    }

    /// A raw request, so that nothing on the client side normalises the path.
    async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    async fn serve(router: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    #[tokio::test]
    async fn web_dir_serves_files_and_nothing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("web");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), "<p>custom page</p>").unwrap();
        std::fs::write(root.join("sub/x.css"), "body{}").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "SECRET").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("link.txt")).unwrap();
        let addr = serve(static_router(Some(Arc::new(root)))).await;

        let (status, body) = raw_get(addr, "/").await;
        assert_eq!((status, body.contains("custom page")), (200, true));
        assert_eq!(raw_get(addr, "/sub/x.css").await.0, 200);
        assert_eq!(raw_get(addr, "/sub/").await.0, 404, "a directory without index.html");
        for bad in [
            "/../secret.txt",
            "/..%2fsecret.txt",
            "/%2e%2e/secret.txt",
            "/%2e%2e%2fsecret.txt",
            "/sub/..%2f..%2fsecret.txt",
            "/%2fetc%2fpasswd",
            "//etc/passwd",
            "/..%5csecret.txt",
            "/link.txt",
        ] {
            let (status, body) = raw_get(addr, bad).await;
            assert!(!body.contains("SECRET") && !body.contains("root:"), "{bad} leaked");
            assert!(status == 404 || status == 400, "{bad}: {status}");
        }
    }

    #[tokio::test]
    async fn embedded_page_and_assets() {
        let addr = serve(static_router(None)).await;
        let (status, body) = raw_get(addr, "/").await;
        assert_eq!(status, 200);
        assert!(body.contains("app.js") && body.contains("style.css"));
        assert_eq!(raw_get(addr, "/app.js").await.0, 200);
        assert_eq!(raw_get(addr, "/style.css").await.0, 200);
        assert_eq!(raw_get(addr, "/Cargo.toml").await.0, 404);
        assert_eq!(raw_get(addr, "/../Cargo.toml").await.0, 404);
    }

    #[test]
    fn info_shape() {
        let mut cfg = Config::default();
        let mut table = toml::map::Map::new();
        table.insert("path".into(), toml::Value::String("/srv/pkgs".into()));
        table.insert("git".into(), toml::Value::String("https://bob:hunter2@example.com/pkgs.git".into()));
        table.insert("token".into(), toml::Value::String("abc".into()));
        cfg.plugins.config.insert("nixpkgs-source".into(), toml::Value::Table(table));
        let rule = GroupRule { prefix: Some("big/".into()), tag: None, plugin: "popularity".into() };
        let roles = Roles {
            expand: vec!["bundles".into()],
            group: "size".into(),
            group_rules: vec![(rule, "popularity".into())],
            source: "nixpkgs-source".into(),
        };
        let entry = |name: &str, hooks: &[&str]| PluginEntry {
            name: name.into(),
            module_name: name.into(),
            version: "0.1.0".into(),
            hooks: hooks.iter().map(|h| h.to_string()).collect(),
            digest: format!("sha256:{}", "0".repeat(64)),
            origin: "built-in".into(),
        };
        let plugins = [
            entry("bundles", &["expand_names"]),
            entry("size", &["group_layers"]),
            entry("popularity", &["group_layers"]),
            entry("nixpkgs-source", &["render_source"]),
        ];
        let doc = info_document(&cfg, &roles, &plugins, "file:///var/lib/strata", false);

        assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["storage"], "file", "no server path");
        assert_eq!(doc["restricted"], false);
        assert_eq!(doc["layers"]["budget"], 94);
        assert_eq!(doc["source"]["plugin"], "nixpkgs-source");
        assert_eq!(doc["source"]["config"]["path"], "(server path)");
        assert_eq!(doc["source"]["config"]["git"], "https://example.com/pkgs.git");
        assert_eq!(doc["source"]["config"]["token"], "(redacted)");
        assert_eq!(doc["roles"]["expand"], json!(["bundles"]));
        assert_eq!(doc["roles"]["group"], "size");
        assert_eq!(doc["roles"]["group_rules"][0], json!({"index": 0, "prefix": "big/", "tag": null, "plugin": "popularity"}));
        assert_eq!(doc["roles"]["source"], "nixpkgs-source");

        let ps = doc["plugins"].as_array().unwrap();
        assert_eq!(ps.len(), 4);
        for p in ps {
            for key in ["name", "module_name", "version", "digest", "origin"] {
                assert!(p[key].is_string(), "{key} in {p}");
            }
            assert!(p["hooks"].is_array() && !p["roles"].as_array().unwrap().is_empty(), "{p}");
        }
        assert_eq!(ps[0]["roles"], json!([{"role": "expand", "position": 0}]));
        assert_eq!(ps[1]["roles"], json!([{"role": "group"}]));
        assert_eq!(ps[2]["roles"], json!([{"role": "group_rule", "index": 0, "prefix": "big/", "tag": null}]));
        assert_eq!(ps[3]["roles"], json!([{"role": "source"}]));

        // Anonymous, with access control on: nothing that describes names.
        let doc = info_document(&cfg, &roles, &plugins, "s3://bucket/prefix", true);
        assert_eq!(doc["storage"], "s3");
        assert_eq!(doc["restricted"], true);
        assert_eq!(doc["source"]["config"], json!({}));
        assert_eq!(doc["roles"]["group_rules"][0], json!({"index": 0, "prefix": null, "tag": null, "plugin": "popularity"}));
        assert_eq!(doc["plugins"][2]["roles"], json!([{"role": "group_rule", "index": 0, "prefix": null, "tag": null}]));
    }

    #[test]
    fn info_without_source_table() {
        let roles = Roles { expand: vec![], group: "size".into(), group_rules: vec![], source: "src".into() };
        let doc = info_document(&Config::default(), &roles, &[], "file:///x", false);
        assert_eq!(doc["source"], json!({"plugin": "src", "config": {}}));
        assert_eq!(doc["plugins"], json!([]));
    }
}
