//! The pull side of the OCI distribution spec, over axum.
//!
//! Names contain `/`, so every `/v2/…` request goes to one handler that
//! splits the *raw* path itself: percent-encoded input (`%2e%2e`, `%2f`) is
//! never decoded into something the name grammar would then accept.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use std::ops::Range;
use std::sync::Arc;

use crate::build::{Builder, Manifest};
use crate::error::{Error, Result};
use crate::image::manifest::Accepted;
use crate::registry::reference::{self, Reference};

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

pub fn router(builder: Arc<Builder>) -> Router {
    Router::new()
        .route("/v2", any(version_check))
        .route("/v2/", any(version_check))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(builder)
}

/// What every route of a read-only registry allows (RFC 9110 `Allow`).
const READ: &str = "GET, HEAD";

async fn version_check(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let message = format!("{method} is not allowed on /v2/, which answers GET and HEAD only");
        return Error::Unsupported { message, allow: READ }.into_response();
    }
    ([API_VERSION, (header::CONTENT_TYPE.as_str(), "application/json")], "{}").into_response()
}

/// What a `/v2/<name>/…` path asks for.
enum Route<'a> {
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Tags(&'a str),
    /// distribution-spec 1.1: the artifacts whose `subject` is a manifest.
    Referrers(&'a str, &'a str),
    Upload,
}

fn route(path: &str) -> Option<Route<'_>> {
    if path.contains("/blobs/uploads") {
        return Some(Route::Upload);
    }
    if let Some((name, r)) = path.rsplit_once("/manifests/") {
        return Some(Route::Manifest(name, r));
    }
    if let Some((name, d)) = path.rsplit_once("/referrers/") {
        return Some(Route::Referrers(name, d));
    }
    if let Some((name, d)) = path.rsplit_once("/blobs/") {
        return Some(Route::Blob(name, d));
    }
    path.strip_suffix("/tags/list").map(Route::Tags)
}

async fn dispatch(State(builder): State<Arc<Builder>>, req: Request) -> Response {
    let result = handle(&builder, req.method().clone(), req.uri(), req.headers()).await;
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    resp
}

async fn handle(builder: &Arc<Builder>, method: Method, uri: &Uri, headers: &HeaderMap) -> Result<Response> {
    let rest = uri.path().strip_prefix("/v2/").unwrap_or("");
    let route = route(rest).ok_or_else(|| Error::NotFound(format!("/v2/{rest}")))?;
    let read = method == Method::GET || method == Method::HEAD;
    let max_segments = builder.config().max_packages;
    match route {
        Route::Upload => Err(Error::Unsupported {
            message: "this registry accepts no uploads: Strata builds its images from Nix packages".into(),
            allow: "",
        }),
        _ if !read => Err(Error::Unsupported {
            message: format!("{method} is not allowed: Strata builds its images from Nix packages and accepts none"),
            allow: READ,
        }),
        Route::Tags(name) => {
            reference::parse_name(name, max_segments)?;
            let tags = builder.tags().await?;
            let body = serde_json::json!({ "name": name, "tags": tags }).to_string();
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Route::Manifest(name, r) => {
            reference::parse_name(name, max_segments)?;
            let manifest = match reference::parse_reference(r)? {
                Reference::Tag(tag) => {
                    let accepted = Accepted::read(headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()));
                    builder.manifest(name, tag, accepted).await?
                }
                Reference::Digest(d) => builder.manifest_by_digest(d).await?,
            };
            Ok(manifest_response(&method, headers, &manifest))
        }
        Route::Referrers(name, d) => {
            reference::parse_name(name, max_segments)?;
            let digest = reference::parse_digest(d)?;
            let artifact_type = artifact_type_filter(uri);
            let body = builder.referrers(digest, artifact_type.as_deref()).await?;
            let mut resp = if method == Method::HEAD { Response::new(Body::empty()) } else { Response::new(Body::from(body.clone())) };
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::image::manifest::OCI_INDEX));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            // The index changes when an image is (re)built: not cacheable.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            if artifact_type.is_some() {
                h.insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
            }
            Ok(resp)
        }
        Route::Blob(name, d) => {
            reference::parse_name(name, max_segments)?;
            let digest = reference::parse_digest(d)?;
            blob_response(builder, &method, headers, digest).await
        }
    }
}

/// The first value of `key` in the query string, percent-decoded.
fn query_value(uri: &Uri, key: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// The referrers route's `artifactType`. A media type has no spaces (RFC
/// 6838), so a space here is a `+` sent unencoded
/// (`?artifactType=application/spdx+json` typed into curl) that form
/// decoding turned into a space; it is read as the `+` it was.
fn artifact_type_filter(uri: &Uri) -> Option<String> {
    query_value(uri, "artifactType").map(|t| t.replace(' ', "+"))
}

fn manifest_response(method: &Method, headers: &HeaderMap, m: &Manifest) -> Response {
    let etag = format!("\"{}\"", m.digest);
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if *method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(m.bytes.clone()))
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(m.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    set(h, "docker-content-digest", &m.digest);
    set(h, header::ETAG.as_str(), &etag);
    resp
}

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// The one range of a blob of `size` bytes a GET asks for, per RFC 9110
/// §14: `bytes=a-b`, `bytes=a-` or `bytes=-n`. `None` (the whole blob, 200)
/// when there is no Range, when it is malformed or names several ranges
/// (a server may ignore those, §14.2), and when an `If-Range` does not
/// match the blob's ETag (§13.1.5; a date never matches: blobs carry no
/// Last-Modified). A well-formed range that starts at or past the end is
/// unsatisfiable: 416 (§15.5.17).
fn parse_range(headers: &HeaderMap, size: u64, etag: &str) -> Result<Option<Range<u64>>> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    if let Some(if_range) = headers.get(header::IF_RANGE) {
        // A strong comparison: a weak validator never matches.
        if if_range.to_str().ok().map(str::trim) != Some(etag) {
            return Ok(None);
        }
    }
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let unsatisfiable = Err(Error::RangeInvalid { size });
    if a.is_empty() {
        // A suffix: the last n bytes.
        let Some(n) = Some(b).filter(|b| digits(b)).and_then(|b| b.parse::<u64>().ok()) else { return Ok(None) };
        if n == 0 || size == 0 {
            return unsatisfiable;
        }
        return Ok(Some(size.saturating_sub(n)..size));
    }
    let Some(start) = Some(a).filter(|a| digits(a)).and_then(|a| a.parse::<u64>().ok()) else { return Ok(None) };
    let end = if b.is_empty() {
        size
    } else {
        let Some(last) = Some(b).filter(|b| digits(b)).and_then(|b| b.parse::<u64>().ok()) else { return Ok(None) };
        if last < start {
            return Ok(None);
        }
        last.saturating_add(1).min(size)
    };
    if start >= size {
        return unsatisfiable;
    }
    Ok(Some(start..end))
}

async fn blob_response(builder: &Builder, method: &Method, headers: &HeaderMap, digest: &str) -> Result<Response> {
    let size = builder.storage.blob_size(digest).await?.ok_or_else(|| Error::BlobUnknown(digest.into()))?;
    // From a cloud store, the bytes may go straight to the client; the
    // client sends its Range to the store itself.
    if *method == Method::GET {
        if let Some(url) = builder.storage.redirect_url(digest).await? {
            let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
            let h = resp.headers_mut();
            set(h, header::LOCATION.as_str(), url.as_str());
            // The URL expires: no cache may keep the redirect.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            set(h, "docker-content-digest", digest);
            return Ok(resp);
        }
    }
    // Range applies to GET only (RFC 9110 §14.2).
    let etag = format!("\"{digest}\"");
    let range = match *method == Method::GET {
        true => parse_range(headers, size, &etag)?,
        false => None,
    };
    let (status, len) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, size),
    };
    let mut resp = if *method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let span = range.clone().unwrap_or(0..size);
        let body = match local_blob_file(builder, digest) {
            Some(file) => match map_range(&file, span.clone()) {
                Ok(mapped) => Body::from(mapped),
                Err(_) => Body::from_stream(read_file_range(file, span)),
            },
            None => Body::from_stream(builder.storage.get_blob(digest, range.clone()).await?.1),
        };
        crate::ops::metrics::bytes_served(len);
        Response::new(body)
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    set(h, "docker-content-digest", digest);
    set(h, header::ETAG.as_str(), &etag);
    if let Some(r) = range {
        set(h, header::CONTENT_RANGE.as_str(), &format!("bytes {}-{}/{size}", r.start, r.end - 1));
    }
    Ok(resp)
}

/// Chunk size of blobs read from a local directory: object_store's file
/// store reads 8 KiB at a time, which caps a download at a few hundred MB/s
/// of system calls; 1 MiB reads keep up with loopback.
const FILE_CHUNK: usize = 1 << 20;

/// The blob's file when the store is a local directory (`file://`), opened,
/// so that it is served by large reads instead of through object_store.
fn local_blob_file(builder: &Builder, digest: &str) -> Option<std::fs::File> {
    let url = url::Url::parse(&builder.config().storage_url()).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    let root = url.to_file_path().ok()?;
    std::fs::File::open(root.join(crate::storage::blob_key(digest).as_ref())).ok()
}

/// `span` of a local blob, mapped: hyper writes straight from the page
/// cache to the socket, so the kernel makes the only copy, as sendfile
/// would. Blobs are never modified in place once published (a new blob is
/// a new file, renamed in; `strata gc` unlinks, which leaves a mapping
/// intact), so the mapping cannot change under the response.
fn map_range(file: &std::fs::File, span: Range<u64>) -> std::io::Result<bytes::Bytes> {
    if span.is_empty() {
        return Ok(bytes::Bytes::new());
    }
    // SAFETY: see above; the file is not truncated or written while mapped.
    let map = unsafe { memmap2::MmapOptions::new().offset(span.start).len((span.end - span.start) as usize).map(file)? };
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(bytes::Bytes::from_owner(map))
}

/// `span` of `file` as a stream of [`FILE_CHUNK`] reads (when it cannot be
/// mapped), made on a blocking
/// thread a few chunks ahead of the client; it stops when the client leaves.
fn read_file_range(
    file: std::fs::File,
    span: Range<u64>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut at = span.start;
        while at < span.end {
            let want = (span.end - at).min(FILE_CHUNK as u64) as usize;
            let mut buf = bytes::BytesMut::zeroed(want);
            let chunk = match file.read_at(&mut buf, at) {
                Ok(0) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "blob file shorter than its size")),
                Ok(n) => {
                    buf.truncate(n);
                    at += n as u64;
                    Ok(buf.freeze())
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<Range<u64>>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        parse_range(&h, size, "\"sha256:00\"")
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some(0..10));
        assert_eq!(range("bytes=90-", 100).unwrap(), Some(90..100));
        assert_eq!(range("bytes=-5", 100).unwrap(), Some(95..100));
        assert_eq!(range("bytes=-500", 100).unwrap(), Some(0..100));
        assert_eq!(range("bytes=95-200", 100).unwrap(), Some(95..100));
        // Unsatisfiable: 416.
        assert!(matches!(range("bytes=100-", 100), Err(Error::RangeInvalid { size: 100 })));
        assert!(matches!(range("bytes=-0", 100), Err(Error::RangeInvalid { size: 100 })));
        assert!(matches!(range("bytes=0-", 0), Err(Error::RangeInvalid { size: 0 })));
        // Malformed, or several: ignored, the whole blob.
        for ignored in ["bytes=5-2", "bytes=x-", "bytes=-", "bytes=1-x", "bytes=+1-2", "items=0-1", "bytes=0-1,5-6", "bytes"] {
            assert_eq!(range(ignored, 100).unwrap(), None, "{ignored}");
        }
    }

    #[test]
    fn if_range() {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-9"));
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"sha256:00\""));
        assert_eq!(parse_range(&h, 100, "\"sha256:00\"").unwrap(), Some(0..10));
        for other in ["\"sha256:11\"", "W/\"sha256:00\"", "Sun, 06 Nov 1994 08:49:37 GMT"] {
            h.insert(header::IF_RANGE, HeaderValue::from_static(other));
            assert_eq!(parse_range(&h, 100, "\"sha256:00\"").unwrap(), None, "{other}");
        }
    }

    #[test]
    fn routes() {
        assert!(matches!(route("a/b/manifests/latest"), Some(Route::Manifest("a/b", "latest"))));
        assert!(matches!(route("a/manifests/manifests/x"), Some(Route::Manifest("a/manifests", "x"))));
        assert!(matches!(route("a/blobs/sha256:00"), Some(Route::Blob("a", "sha256:00"))));
        assert!(matches!(route("a/blobs/uploads/"), Some(Route::Upload)));
        assert!(matches!(route("a/tags/list"), Some(Route::Tags("a"))));
        assert!(matches!(route("a/b/referrers/sha256:00"), Some(Route::Referrers("a/b", "sha256:00"))));
        let uri: Uri = "/v2/a/referrers/sha256:00?n=1&artifactType=application%2Fspdx%2Bjson".parse().unwrap();
        assert_eq!(query_value(&uri, "artifactType").as_deref(), Some("application/spdx+json"));
        assert_eq!(query_value(&"/v2/a/referrers/x".parse().unwrap(), "artifactType"), None);
        for raw in ["application%2Fspdx%2Bjson", "application/spdx+json", "application/spdx%20json"] {
            let uri: Uri = format!("/v2/a/referrers/sha256:00?artifactType={raw}").parse().unwrap();
            assert_eq!(artifact_type_filter(&uri).as_deref(), Some("application/spdx+json"), "{raw}");
        }
        assert!(route("a/other").is_none());
    }
}
