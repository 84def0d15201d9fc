//! Object-store stand-ins on 127.0.0.1: real servers speaking the S3, Azure
//! Blob and GCS APIs, so that the storage code is tested against the wire
//! protocols it will meet in production, not against `object_store`'s
//! in-memory store.
//!
//! - [`Kind::Moto`]: moto's server, all of S3, but it does not check
//!   signatures (a tampered presigned URL still works there).
//! - [`Kind::S3sFs`]: `s3s-fs`, an S3 server on a directory that verifies
//!   SigV4 headers and presigned URLs (403 on a wrong signature or an expired
//!   URL): the store for proving a redirect is really signed.
//! - [`Kind::Azurite`]: Microsoft's Azure Blob emulator; checks shared keys.
//! - [`Kind::Gcs`]: `gcp-storage-emulator`; checks no credentials at all.
//! - [`Kind::File`]: no server, a directory (`file://`), for running the
//!   same tests on the default backend.
//!
//! Each [`Store`] is its own process group on a free port, stopped when the
//! handle drops; one bucket (container) per store, which tests divide by URL
//! prefix. A stand-in that is not installed fails the test with a pointer to
//! `scripts/install-deps.sh`.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{free_port, require_tool, run, stop_group, tail, wait_bounded};

/// The access key pair every S3 stand-in is started with; not a secret.
pub const S3_ACCESS_KEY: &str = "strata-test-key";
pub const S3_SECRET_KEY: &str = "strata-test-secret-0123456789";
/// Azurite's well-known development account (documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The one bucket (container) of every stand-in.
pub const BUCKET: &str = "strata";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Moto,
    S3sFs,
    Azurite,
    Gcs,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Moto => "s3 (moto)",
            Kind::S3sFs => "s3 (s3s-fs)",
            Kind::Azurite => "azure (azurite)",
            Kind::Gcs => "gcs (gcp-storage-emulator)",
        }
    }
}

/// A running stand-in (or a directory, for [`Kind::File`]).
pub struct Store {
    pub kind: Kind,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` (no server: empty).
    pub endpoint: String,
    log: PathBuf,
}

impl Store {
    /// Starts a stand-in of `kind` with its bucket created; panics with its
    /// log if it does not come up within 60 s.
    pub fn start(kind: Kind) -> Store {
        let dir = tempfile::Builder::new().prefix("strata-store-").tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        if kind == Kind::File {
            std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
            return Store { kind, child: None, dir, endpoint: String::new(), log };
        }
        let mut last = String::new();
        // A port picked free can be taken before the server binds it.
        for _attempt in 0..3 {
            let port = free_port();
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).expect("data dir");
            let mut cmd = command(kind, port, &data);
            let log_file = std::fs::File::create(&log).expect("log file");
            cmd.current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log fd"))
                .stderr(log_file)
                .process_group(0);
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", kind.name()));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if wait_listening(&mut child, addr, Duration::from_secs(60)) {
                let mut store = Store { kind, child: Some(child), dir, endpoint: format!("http://{addr}"), log };
                store.create_bucket();
                return store;
            }
            stop_group(&mut child);
            last = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("{} did not start listening in 3 attempts; log:\n{}", kind.name(), tail(&last, 60));
    }

    /// The storage URL of a part of the bucket (`prefix` may be empty).
    pub fn url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        let sep = if prefix.is_empty() { "" } else { "/" };
        match self.kind {
            Kind::File => format!("file://{}{sep}{prefix}", self.data_dir().display()),
            Kind::Moto | Kind::S3sFs => format!("s3://{BUCKET}{sep}{prefix}"),
            Kind::Azurite => format!("az://{BUCKET}{sep}{prefix}"),
            Kind::Gcs => format!("gs://{BUCKET}{sep}{prefix}"),
        }
    }

    /// Where the File store and s3s-fs keep objects (s3s-fs: one directory
    /// per bucket, objects as files under their keys).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Environment for a `strata` process using this store: credentials and
    /// endpoint the way an operator would give them.
    pub fn env(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match self.kind {
            Kind::File => vec![],
            Kind::Moto | Kind::S3sFs => vec![
                ("AWS_ENDPOINT_URL", self.endpoint.clone()),
                ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
                ("AWS_REGION", "us-east-1".into()),
            ],
            Kind::Azurite => vec![
                ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
                ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
                ("AZURE_STORAGE_ENDPOINT", format!("{}/{AZURITE_ACCOUNT}", self.endpoint)),
                ("AZURE_ALLOW_HTTP", "true".into()),
            ],
            Kind::Gcs => vec![
                ("GOOGLE_SERVICE_ACCOUNT", self.gcs_service_account().display().to_string()),
                ("GOOGLE_ALLOW_HTTP", "true".into()),
            ],
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The same as [`Store::env`], as `object_store` option keys, for
    /// `strata::storage::Storage::open_with` inside a test process.
    pub fn options(&self) -> Vec<(String, String)> {
        self.env().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()
    }

    /// object_store has no endpoint setting for GCS: its base URL comes from
    /// a service-account file (`gcs_base_url`), with OAuth turned off since
    /// the emulator checks nothing.
    fn gcs_service_account(&self) -> PathBuf {
        let path = self.dir.path().join("gcs-service-account.json");
        if !path.exists() {
            let json = serde_json::json!({
                "gcs_base_url": self.endpoint,
                "disable_oauth": true,
                "client_email": "strata-test@example.invalid",
                "private_key": "",
                "private_key_id": "",
            });
            std::fs::write(&path, json.to_string()).expect("write service account file");
        }
        path
    }

    fn create_bucket(&mut self) {
        match self.kind {
            Kind::File | Kind::Gcs => {} // Gcs: --default-bucket
            // s3s-fs maps buckets to directories under its root.
            Kind::S3sFs => std::fs::create_dir_all(self.data_dir().join(BUCKET)).expect("bucket dir"),
            // moto accepts unsigned requests.
            Kind::Moto => {
                let r = crate::http_client()
                    .put(format!("{}/{BUCKET}", self.endpoint))
                    .send()
                    .unwrap_or_else(|e| panic!("moto: create bucket: {e}"));
                assert!(r.status().is_success(), "moto: create bucket: {}", r.status());
            }
            // Azure wants a signed request: Microsoft's own SDK makes it.
            Kind::Azurite => {
                let conn = format!(
                    "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={}/{AZURITE_ACCOUNT};",
                    self.endpoint
                );
                let script = "import sys\nfrom azure.storage.blob import BlobServiceClient\nBlobServiceClient.from_connection_string(sys.argv[1]).create_container(sys.argv[2])\n";
                let python = require_tool("python3");
                let out = run(Command::new(python).args(["-c", script, &conn, BUCKET]), Duration::from_secs(60));
                assert!(
                    out.success(),
                    "azurite: create container (needs PyPI azure-storage-blob; run scripts/install-deps.sh): {out}"
                );
            }
        }
    }

    /// The stand-in's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server now (the data directory stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_group(&mut c);
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("---- {} log ----\n{}\n---- end ----", self.kind.name(), tail(&self.log(), 40));
        }
        self.stop();
    }
}

fn command(kind: Kind, port: u16, data: &Path) -> Command {
    let port = port.to_string();
    match kind {
        Kind::File => unreachable!("no server"),
        Kind::Moto => {
            let mut c = Command::new(require_tool("moto_server"));
            c.args(["-H", "127.0.0.1", "-p", &port]);
            c
        }
        Kind::S3sFs => {
            let mut c = Command::new(require_tool("s3s-fs"));
            c.args([
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--access-key",
                S3_ACCESS_KEY,
                "--secret-key",
                S3_SECRET_KEY,
            ])
            .arg(data);
            c
        }
        Kind::Azurite => {
            let mut c = Command::new(require_tool("azurite-blob"));
            c.args(["--blobHost", "127.0.0.1", "--blobPort", &port, "--skipApiVersionCheck", "--loose", "--silent"])
                .args(["--disableTelemetry", "--location"])
                .arg(data);
            c
        }
        Kind::Gcs => {
            let mut c = Command::new(require_tool("gcp-storage-emulator"));
            c.arg("-d").arg(data).args(["start", "-H", "127.0.0.1", "--port", &port, "--default-bucket", BUCKET, "-q"]);
            c
        }
    }
}

/// True once `addr` accepts connections; false if the process exited or the
/// time ran out.
fn wait_listening(child: &mut Child, addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = wait_bounded(child, Duration::ZERO);
    false
}
