//! From a storage URL to an `object_store` client. The only place that knows
//! which service is behind the URL: past this, every backend is one
//! `ObjectStore` (and, for the clouds, one `Signer`).

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;
use object_store::ObjectStore;
use std::sync::Arc;
use url::Url;

pub(super) struct Opened {
    /// Rooted at the URL's prefix: keys are `blobs/…`, `meta/…` whatever
    /// the prefix.
    pub store: Arc<dyn ObjectStore>,
    /// Present for stores that can presign; signs keys under `prefix`,
    /// which the signer (unlike `store`) does not add by itself.
    pub signer: Option<Arc<dyn Signer>>,
    pub prefix: Path,
    /// The URL without credentials, for logs and the web page.
    pub description: String,
    /// The directory of a `file://` store: the one store with directories,
    /// which gc prunes ([`super::Storage::prune_empty_dirs`]).
    pub local_root: Option<std::path::PathBuf>,
}

/// Opens `url`; credentials come from the environment the way each SDK
/// reads them (`AWS_*`, `GOOGLE_*`, `AZURE_*`, instance metadata), then from
/// `options` (object_store's keys, e.g. `aws_endpoint`), which win.
pub(super) fn open(url: &str, options: &[(&str, &str)]) -> anyhow::Result<Opened> {
    let parsed = Url::parse(url).map_err(|e| anyhow::anyhow!("storage url {url:?}: {e}"))?;
    let description = without_secrets(&parsed);
    let err = |e: object_store::Error| anyhow::anyhow!("storage {description}: {e}");
    let local = |store: Arc<dyn ObjectStore>, local_root| Opened {
        store,
        signer: None,
        prefix: Path::default(),
        description: description.clone(),
        local_root,
    };
    // For the clouds the host is the bucket (container) and the path a
    // prefix inside it, as in `s3://bucket/team/strata`.
    let prefix =
        Path::from_url_path(parsed.path()).map_err(|e| anyhow::anyhow!("storage {description}: prefix: {e}"))?;
    let (store, signer): (Arc<dyn ObjectStore>, Arc<dyn Signer>) = match parsed.scheme() {
        // object_store's file store needs its root to exist; everything
        // else is created on demand by the service.
        "file" => {
            let dir =
                parsed.to_file_path().map_err(|_| anyhow::anyhow!("storage url {url:?} is not an absolute path"))?;
            std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("storage url {url:?}: {e}"))?;
            // Deleting an object removes the directories it leaves empty:
            // every image ever asked for got a `leases/<key>/` otherwise.
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(err)?
                .with_automatic_cleanup(true);
            return Ok(local(Arc::new(store), Some(dir)));
        }
        "memory" => return Ok(local(Arc::new(object_store::memory::InMemory::new()), None)),
        "s3" | "s3a" => {
            let builder = configure(AmazonS3Builder::from_env().with_url(url), options, &description, |b, k, v| {
                b.with_config(k, v)
            })?;
            let builder = loopback_http(builder, options, &description)?;
            let s3 = Arc::new(builder.build().map_err(err)?);
            (s3.clone(), s3)
        }
        "gs" => {
            let builder = GoogleCloudStorageBuilder::from_env().with_url(url);
            let gcs = Arc::new(
                configure(builder, options, &description, |b, k, v| b.with_config(k, v))?.build().map_err(err)?,
            );
            (gcs.clone(), gcs)
        }
        "az" => {
            let builder = MicrosoftAzureBuilder::from_env().with_url(url);
            let az = Arc::new(
                configure(builder, options, &description, |b, k, v| b.with_config(k, v))?.build().map_err(err)?,
            );
            (az.clone(), az)
        }
        other => return Err(unsupported(&description, other)),
    };
    let store = if prefix.as_ref().is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix.clone())) };
    Ok(Opened { store, signer: Some(signer), prefix, description, local_root: None })
}

/// Applies `options` to a builder; a key the backend does not know is an
/// error naming it, never silently ignored.
fn configure<B, K: std::str::FromStr>(
    builder: B,
    options: &[(&str, &str)],
    description: &str,
    set: impl Fn(B, K, &str) -> B,
) -> anyhow::Result<B> {
    options.iter().try_fold(builder, |b, (k, v)| {
        let key = k.parse().map_err(|_| anyhow::anyhow!("storage {description}: unknown option {k:?}"))?;
        Ok(set(b, key, v))
    })
}

fn unsupported(description: &str, scheme: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "storage {description}: unsupported scheme {scheme:?}; use file://, s3://, gs://, az:// or memory://"
    )
}

/// `AWS_ENDPOINT_URL=http://127.0.0.1:…` (a local S3 server) works without
/// saying `AWS_ALLOW_HTTP`; plain http to any other host must be asked for,
/// since it would send signed requests and data in the clear.
fn loopback_http(
    builder: AmazonS3Builder,
    options: &[(&str, &str)],
    description: &str,
) -> anyhow::Result<AmazonS3Builder> {
    let Some(endpoint) = builder.get_config_value(&AmazonS3ConfigKey::Endpoint) else { return Ok(builder) };
    let parsed = Url::parse(&endpoint).map_err(|e| anyhow::anyhow!("storage {description}: AWS_ENDPOINT_URL: {e}"))?;
    if parsed.scheme() != "http" {
        return Ok(builder);
    }
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    let asked = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || options.iter().any(|(k, v)| k.ends_with("allow_http") && v.eq_ignore_ascii_case("true"));
    if loopback || asked {
        return Ok(builder.with_allow_http(true));
    }
    anyhow::bail!(
        "storage {description}: AWS_ENDPOINT_URL={} is plain http to a host that is not loopback; use https or set AWS_ALLOW_HTTP=true",
        without_secrets(&parsed)
    )
}

/// A URL as it may be shown: no user, password or query (SAS tokens).
fn without_secrets(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_hold_no_secrets() {
        let u = Url::parse("s3://key:secret@bucket/prefix?sig=abc").unwrap();
        assert_eq!(without_secrets(&u), "s3://bucket/prefix");
    }

    #[test]
    fn unknown_schemes_are_named() {
        let e = open("ftp://host/x", &[]).err().unwrap().to_string();
        assert!(e.contains("\"ftp\"") && e.contains("s3://"), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback_unless_asked() {
        let ok = open("s3://b/p", &[("aws_endpoint", "http://127.0.0.1:9"), ("aws_region", "x")]);
        assert!(ok.is_ok(), "{:?}", ok.err());
        let e =
            open("s3://b", &[("aws_endpoint", "http://10.0.0.1:9"), ("aws_region", "x")]).err().unwrap().to_string();
        assert!(e.contains("AWS_ALLOW_HTTP"), "{e}");
        let asked =
            open("s3://b", &[("aws_endpoint", "http://10.0.0.1:9"), ("aws_region", "x"), ("aws_allow_http", "true")]);
        assert!(asked.is_ok());
        let e = open("s3://b", &[("aws_no_such_thing", "1")]).err().unwrap().to_string();
        assert!(e.contains("aws_no_such_thing"), "{e}");
    }
}
