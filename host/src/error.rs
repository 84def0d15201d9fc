//! The one error type of a request, mapped once to the distribution spec's
//! JSON body and status. Internal detail (Nix logs, storage paths) goes to
//! the log, never into a response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use serde::{Deserialize, Serialize};

/// `Clone` because one build's outcome is handed to every request that
/// waited on it (single-flight).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// A tag outside the spec's grammar. The spec has no code for it and
    /// its conformance suite expects `404 MANIFEST_UNKNOWN`: no manifest
    /// can have such a tag.
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("invalid manifest reference: {0}")]
    ManifestInvalid(String),
    /// Packages the source does not have, or refuses to evaluate (with its
    /// reasons); all of them at once.
    #[error("{0}")]
    PackagesUnavailable(Unavailable),
    /// A package's derivation failed to build; the build log goes to the
    /// server log only.
    #[error("{0}")]
    BuildFailed(BuildFailure),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    #[error("requested range not satisfiable")]
    RangeInvalid { size: u64 },
    /// A method the route does not serve: 405 with `Allow: allow` (RFC
    /// 9110 §15.5.6; empty when the route serves no method at all).
    /// `message` is the whole sentence the client reads.
    #[error("{message}")]
    Unsupported { message: String, allow: &'static str },
    #[error("too many builds queued, retry later")]
    Busy { retry_after_secs: u64 },
    /// A plugin call without a usable answer. With a `code`, the plugin
    /// refused on purpose and named the registry code for it; `reason` is
    /// then its own message, which the client reads as it is.
    #[error("plugin {plugin} failed in {hook}: {reason}")]
    Plugin { plugin: String, hook: String, reason: String, code: Option<PluginCode> },
    /// Nix failed; `message` (with Nix's last lines) goes to the log only.
    #[error("nix: {message}")]
    Nix { timeout_secs: Option<u64>, message: String },
    #[error("storage: {0}")]
    Storage(String),
    /// The store's file system or quota is full: 507, so that alerting can
    /// tell it from a bug and a retry after clean-up can succeed.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// No or wrong credentials, when access control is on (`[auth]`).
    #[error("authentication required")]
    Unauthorized { realm: String },
    /// A request body larger than `[limits] max_body_bytes`.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Valid credentials that do not cover this name.
    #[error("access to {0} denied")]
    Denied(String),
    /// A `strata gc` window the access marks cannot resolve (the text of
    /// `config::WindowTooShort`); never a response.
    #[error("{0}")]
    GcWindow(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        Error::storage("", &e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

/// Whether an error, or one it wraps, is the OS saying the disk (or the
/// quota) is full. object_store and `SyncIoBridge` wrap the `io::Error`
/// several levels down, and `io::Error::source` skips its own payload, so
/// both links are followed.
fn is_storage_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                if is_storage_full(inner) {
                    return true;
                }
            }
        }
        next = e.source();
    }
    false
}

impl Error {
    /// The error of one platform's build of an index: a failed build or
    /// missing packages name the platform (`[builds] platforms`).
    pub fn for_platform(self, platform: &str) -> Error {
        match self {
            Error::BuildFailed(mut b) => {
                b.platform = Some(platform.to_string());
                Error::BuildFailed(b)
            }
            Error::PackagesUnavailable(mut u) => {
                u.platform = Some(platform.to_string());
                Error::PackagesUnavailable(u)
            }
            other => other,
        }
    }

    /// A storage failure, [`Error::StorageFull`] when that is its cause;
    /// `context` (may be empty) says what was being done.
    pub fn storage(context: &str, e: &(dyn std::error::Error + 'static)) -> Error {
        let text = if context.is_empty() { e.to_string() } else { format!("{context}: {e}") };
        if is_storage_full(e) {
            Error::StorageFull(text)
        } else {
            Error::Storage(text)
        }
    }

    /// The spec's code and the HTTP status for it.
    pub fn code_and_status(&self) -> (&'static str, StatusCode) {
        use Error::*;
        match self {
            NameInvalid(_) => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            TagInvalid(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestInvalid(_) => ("MANIFEST_INVALID", StatusCode::BAD_REQUEST),
            PackagesUnavailable(_) | ManifestUnknown(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUnknown(_) => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            NotFound(_) => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            // The spec has no code for it; the blob exists, so any code
            // the spec has would say something false. UNKNOWN says nothing.
            RangeInvalid { .. } => ("UNKNOWN", StatusCode::RANGE_NOT_SATISFIABLE),
            Unsupported { .. } => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            Plugin { code: Some(code), .. } => code.code_and_status(),
            Busy { .. } => ("TOOMANYREQUESTS", StatusCode::SERVICE_UNAVAILABLE),
            Nix { timeout_secs: Some(_), .. } => ("UNKNOWN", StatusCode::GATEWAY_TIMEOUT),
            StorageFull(_) => ("UNKNOWN", StatusCode::INSUFFICIENT_STORAGE),
            Unauthorized { .. } => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            Denied(_) => ("DENIED", StatusCode::FORBIDDEN),
            TooLarge(_) => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
            Plugin { code: None, .. } | Nix { .. } | BuildFailed(_) | Storage(_) | GcWindow(_) | Internal(_) => {
                ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// What a client is told. Nix's own output is withheld: it can be long
    /// and it names paths of the build machine. A server error names the
    /// request id, which the server log's lines about it carry too.
    fn public_message(&self) -> String {
        let message = match self {
            Error::Nix { timeout_secs: Some(s), .. } => {
                format!("image build timed out after {s} s")
            }
            Error::Nix { .. } => "image build failed in Nix".into(),
            Error::BuildFailed(b) => b.to_string(),
            Error::Storage(_) => "storage error".into(),
            Error::StorageFull(_) => "storage is full".into(),
            Error::Internal(_) => "internal error".into(),
            Error::Plugin { reason, code: Some(_), .. } => return reason.clone(),
            other => return other.to_string(),
        };
        match request_id() {
            Some(id) => format!("{message} (request id {id}; details in the server log)"),
            None => format!("{message} (details in the server log)"),
        }
    }

    fn detail(&self) -> serde_json::Value {
        match self {
            Error::PackagesUnavailable(u) => {
                json!({ "missing": u.missing, "unavailable": u.refused, "platform": u.platform })
            }
            Error::BuildFailed(b) => json!({ "packages": b.packages, "derivations": b.derivations, "platform": b.platform }),
            Error::Plugin { plugin, hook, reason, .. } => {
                json!({ "plugin": plugin, "hook": hook, "reason": reason })
            }
            _ => serde_json::Value::Null,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (code, status) = self.code_and_status();
        // The id the client reads in the body: the server log's key to it
        // (requests carry no tracing span, ops/metrics.rs says why).
        let id = request_id().unwrap_or_default();
        if let Error::BuildFailed(b) = &self {
            tracing::error!(%id, error = %self, derivations = ?b.derivations, "build failed; Nix's last lines:\n{}", b.log_tail);
        } else if let Error::Busy { .. } = &self {
            // Backpressure working as configured, not a fault: a burst must
            // not flood the error log.
            tracing::warn!(%id, error = %self, "request refused");
        } else if status.is_server_error() {
            tracing::error!(%id, error = %self, "request failed");
        } else {
            tracing::debug!(%id, error = %self, "request refused");
        }
        let body = json!({
            "errors": [{ "code": code, "message": self.public_message(), "detail": self.detail() }]
        });
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        if let Error::Busy { retry_after_secs } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        let allow = match &self {
            Error::Unsupported { allow, .. } => Some(*allow),
            // The plugin refuses this name whatever the method: none allowed.
            Error::Plugin { code: Some(PluginCode::Unsupported), .. } => Some(""),
            _ => None,
        };
        if let Some(allow) = allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Error::Unauthorized { realm } = &self {
            // Basic: what docker, podman and skopeo answer with `--creds`
            // or a `login` without a token service.
            if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if let Error::RangeInvalid { size } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                headers.insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The registry codes a plugin may refuse a request with (`code` of its
/// `err` envelope, docs/plugins.md); any other code is a plugin failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginCode {
    Denied,
    NameUnknown,
    ManifestUnknown,
    TooManyRequests,
    Unsupported,
}

impl std::fmt::Display for PluginCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code_and_status().0)
    }
}

impl PluginCode {
    /// The code as the plugin wrote it, if the host knows it.
    pub fn from_wire(code: &str) -> Option<PluginCode> {
        Some(match code {
            "DENIED" => PluginCode::Denied,
            "NAME_UNKNOWN" => PluginCode::NameUnknown,
            "MANIFEST_UNKNOWN" => PluginCode::ManifestUnknown,
            "TOOMANYREQUESTS" => PluginCode::TooManyRequests,
            "UNSUPPORTED" => PluginCode::Unsupported,
            _ => return None,
        })
    }

    /// The spec's code and the status the spec (RFC 9110 for 405 and 429)
    /// gives it.
    fn code_and_status(self) -> (&'static str, StatusCode) {
        match self {
            PluginCode::Denied => ("DENIED", StatusCode::FORBIDDEN),
            PluginCode::NameUnknown => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            PluginCode::ManifestUnknown => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            PluginCode::TooManyRequests => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            PluginCode::Unsupported => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
        }
    }
}

/// Requested names the package set cannot give: all of them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// Names the set does not have (or that are not packages, as `xorg`).
    pub missing: Vec<String>,
    /// Names whose evaluation threw or failed an assertion, with the set's
    /// own reason (one line, no paths: `nix::lookup`).
    pub refused: Vec<Refused>,
    /// The platform of an index whose build looked them up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(p) = &self.platform {
            write!(f, "for {p}: ")?;
        }
        if !self.missing.is_empty() {
            write!(f, "packages not found: {}", self.missing.join(", "))?;
        }
        if !self.refused.is_empty() {
            if !self.missing.is_empty() {
                f.write_str("; ")?;
            }
            f.write_str("packages unavailable: ")?;
            for (i, r) in self.refused.iter().enumerate() {
                let sep = if i == 0 { "" } else { "; " };
                write!(f, "{sep}{}: {}", r.name, r.reason)?;
            }
        }
        Ok(())
    }
}

/// A derivation that failed to build, and the requested packages it kept
/// from being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    /// Requested names whose build failed, directly or through a dependency.
    pub packages: Vec<String>,
    /// Names (without hash) of the derivations whose builders failed.
    pub derivations: Vec<String>,
    /// Nix's last lines: the failing builder's log; for the server log only.
    pub log_tail: String,
    /// The platform of an index this build was for.
    pub platform: Option<String>,
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.packages.is_empty() { "the image".to_string() } else { self.packages.join(", ") };
        write!(f, "building {what}")?;
        if let Some(p) = &self.platform {
            write!(f, " for {p}")?;
        }
        f.write_str(" failed")?;
        if !self.derivations.is_empty() {
            write!(f, " (derivation {} failed)", self.derivations.join(", "))?;
        }
        Ok(())
    }
}

tokio::task_local! {
    /// The id of the request being served (`x-request-id`, set by
    /// `ops::metrics::observe`): server errors name it to the client.
    pub static REQUEST_ID: String;
}

/// The id of the request this task serves, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

