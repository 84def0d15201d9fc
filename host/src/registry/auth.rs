//! Optional access control, off unless `[auth]` names a user: static
//! credentials from the config or a separate file, kept only as SHA-256
//! hashes, checked before a request reaches the registry or the inspect
//! API (both can start Nix builds).
//!
//! Clients send `Authorization: Basic base64(user:secret)` — what docker,
//! podman and skopeo send after a `401` with a `Basic` challenge, given
//! `--creds`/`login` — or `Authorization: Bearer secret` with the secret
//! alone (curl, scripts). There is no token service: a `Bearer` challenge
//! would make registry clients look for one.
//!
//! Secrets are compared by their SHA-256, so they must be random tokens
//! (e.g. `openssl rand -base64 32`), not passwords a person chose: a fast
//! hash does not slow down guessing. Neither secrets nor the
//! `Authorization` header are ever logged.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub use crate::config::{AuthConfig, User};
use crate::error::Error;


#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<User>,
}

struct Entry {
    name: String,
    hash: [u8; 32],
    prefixes: Option<Vec<String>>,
}

impl Entry {
    fn allows(&self, name: &str) -> bool {
        let Some(prefixes) = &self.prefixes else { return true };
        prefixes.iter().any(|p| {
            let p = p.trim_end_matches('/');
            name == p || name.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// The loaded credentials.
pub struct Auth {
    realm: String,
    by_name: HashMap<String, Arc<Entry>>,
    by_hash: HashMap<[u8; 32], Arc<Entry>>,
}

fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Auth {
    /// `None` when no user is configured: access control is off.
    pub fn from_config(cfg: &AuthConfig) -> anyhow::Result<Option<Arc<Auth>>> {
        let mut users = cfg.users.clone();
        if let Some(file) = &cfg.users_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("configuration: auth.users_file {}: {e}", file.display()))?;
            let more: UsersFile = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("configuration: auth.users_file {}: {}", file.display(), e.message()))?;
            users.extend(more.users);
        }
        if users.is_empty() {
            return Ok(None);
        }
        let mut auth = Auth { realm: cfg.realm.clone(), by_name: HashMap::new(), by_hash: HashMap::new() };
        for u in users {
            let bad = |why: &str| anyhow::anyhow!("configuration: auth user {:?}: {why}", u.name);
            if u.name.is_empty() || u.name.contains(':') {
                return Err(bad("a name must be non-empty and without ':'"));
            }
            let hash: [u8; 32] = hex::decode(u.sha256.trim())
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| bad("sha256 must be 64 hex digits (printf %s \"$SECRET\" | sha256sum)"))?;
            if u.prefixes.as_ref().is_some_and(|p| p.is_empty()) {
                return Err(bad("prefixes = [] allows nothing; omit it to allow every name"));
            }
            let entry = Arc::new(Entry { name: u.name.clone(), hash, prefixes: u.prefixes });
            if auth.by_name.insert(u.name.clone(), entry.clone()).is_some() {
                return Err(bad("defined twice"));
            }
            if auth.by_hash.insert(hash, entry).is_some() {
                return Err(bad("has the same secret as another user"));
            }
        }
        Ok(Some(Arc::new(auth)))
    }

    /// Whether the `Authorization` header proves a user.
    pub fn authenticated(&self, headers: &HeaderMap) -> bool {
        self.authenticate(headers).is_some()
    }

    /// The user the `Authorization` header proves, if any.
    fn authenticate(&self, headers: &HeaderMap) -> Option<&Entry> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
            let (user, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
            let entry = self.by_name.get(user)?;
            bool::from(entry.hash.ct_eq(&sha256(secret.as_bytes()))).then_some(&**entry)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.by_hash.get(&sha256(rest.trim().as_bytes())).map(|e| &**e)
        } else {
            None
        }
    }

    /// Whether the request may go on: 401 without valid credentials, 403
    /// when they do not cover `name`.
    fn check(&self, headers: &HeaderMap, name: Option<&str>) -> Result<(), Error> {
        let Some(user) = self.authenticate(headers) else {
            return Err(Error::Unauthorized { realm: self.realm.clone() });
        };
        if let Some(name) = name {
            // A name a client percent-encoded is compared as sent, so it can
            // only fail to match; the handlers refuse it anyway.
            if !user.allows(name) {
                tracing::info!(user = %user.name, %name, "access denied");
                return Err(Error::Denied(name.to_string()));
            }
        }
        Ok(())
    }
}

/// What a path needs: `None` — open (the page, health, metrics);
/// `Some(None)` — any valid credentials (`/v2/`); `Some(Some(name))` —
/// credentials covering `name`.
fn protected(path: &str) -> Option<Option<&str>> {
    if path == "/v2" || path == "/v2/" {
        return Some(None);
    }
    if let Some(rest) = path.strip_prefix("/v2/") {
        let name = ["/manifests/", "/blobs/", "/tags/", "/referrers/"].iter().filter_map(|m| rest.rsplit_once(m).map(|(n, _)| n)).next();
        return Some(Some(name.unwrap_or(rest)));
    }
    path.strip_prefix("/api/inspect/").map(Some)
}

/// The middleware: runs before the registry and the inspect API.
pub async fn guard(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let Some(name) = protected(req.uri().path()) else { return next.run(req).await };
    match auth.check(req.headers(), name) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml_text: &str) -> Arc<Auth> {
        let cfg: AuthConfig = toml::from_str(toml_text).unwrap();
        Auth::from_config(&cfg).unwrap().unwrap()
    }

    fn hex_of(secret: &str) -> String {
        hex::encode(sha256(secret.as_bytes()))
    }

    fn basic(user: &str, secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {v}")).unwrap());
        h
    }

    fn bearer(secret: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {secret}")).unwrap());
        h
    }

    fn code(r: Result<(), Error>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(e) => e.code_and_status().0,
        }
    }

    #[test]
    fn basic_and_bearer_with_prefixes_by_whole_segments() {
        let a = auth(&format!(
            "[[users]]\nname = \"ci\"\nsha256 = \"{}\"\nprefixes = [\"team-a\", \"shell/\"]\n\n[[users]]\nname = \"ops\"\nsha256 = \"{}\"\n",
            hex_of("s3cret-ci"),
            hex_of("s3cret-ops")
        ));
        let ci = basic("ci", "s3cret-ci");
        assert_eq!(code(a.check(&ci, Some("team-a"))), "ok");
        assert_eq!(code(a.check(&ci, Some("team-a/hello"))), "ok");
        assert_eq!(code(a.check(&ci, Some("shell/git"))), "ok");
        assert_eq!(code(a.check(&ci, Some("team-abc"))), "DENIED");
        assert_eq!(code(a.check(&ci, Some("hello"))), "DENIED");
        assert_eq!(code(a.check(&ci, None)), "ok");
        assert_eq!(code(a.check(&bearer("s3cret-ci"), Some("team-a/x"))), "ok");
        assert_eq!(code(a.check(&bearer("s3cret-ops"), Some("anything/at/all"))), "ok");
        for wrong in [basic("ci", "s3cret-ops"), basic("ops", "s3cret-ci"), basic("nobody", "s3cret-ci"), bearer("nope"), HeaderMap::new()] {
            assert_eq!(code(a.check(&wrong, Some("team-a"))), "UNAUTHORIZED");
        }
        let mut garbage = HeaderMap::new();
        garbage.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!not-base64"));
        assert_eq!(code(a.check(&garbage, None)), "UNAUTHORIZED");
    }

    #[test]
    fn the_challenge_is_basic_with_the_realm() {
        let a = auth(&format!("realm = \"acme\"\n[[users]]\nname = \"u\"\nsha256 = \"{}\"\n", hex_of("x")));
        let resp = a.check(&HeaderMap::new(), None).unwrap_err().into_response();
        assert_eq!(resp.status(), 401);
        let challenge = resp.headers().get(header::WWW_AUTHENTICATE).unwrap().to_str().unwrap();
        assert!(challenge.starts_with("Basic realm=\"acme\""), "{challenge}");
    }

    #[test]
    fn which_paths_are_protected() {
        assert_eq!(protected("/v2/"), Some(None));
        assert_eq!(protected("/v2/a/b/manifests/latest"), Some(Some("a/b")));
        assert_eq!(protected("/v2/a/blobs/sha256:00"), Some(Some("a")));
        assert_eq!(protected("/v2/a/tags/list"), Some(Some("a")));
        assert_eq!(protected("/v2/a/b/referrers/sha256:00"), Some(Some("a/b")));
        assert_eq!(protected("/api/inspect/shell/git"), Some(Some("shell/git")));
        assert_eq!(protected("/"), None);
        assert_eq!(protected("/metrics"), None);
    }

    #[test]
    fn bad_user_tables_are_errors() {
        for (toml_text, what) in [
            ("[[users]]\nname = \"a:b\"\nsha256 = \"00\"\n", "without ':'"),
            ("[[users]]\nname = \"a\"\nsha256 = \"abc\"\n", "64 hex"),
            (&*format!("[[users]]\nname = \"a\"\nsha256 = \"{}\"\nprefixes = []\n", hex_of("x")), "allows nothing"),
            (&*format!("[[users]]\nname = \"a\"\nsha256 = \"{0}\"\n[[users]]\nname = \"a\"\nsha256 = \"{1}\"\n", hex_of("x"), hex_of("y")), "twice"),
        ] {
            let cfg: AuthConfig = toml::from_str(toml_text).unwrap();
            let err = Auth::from_config(&cfg).err().unwrap().to_string();
            assert!(err.contains(what), "{err}");
        }
        assert!(Auth::from_config(&AuthConfig::default()).unwrap().is_none());
    }
}
