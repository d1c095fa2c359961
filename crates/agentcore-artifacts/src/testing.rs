//! A real S3-compatible server on loopback for tests and benchmarks: moto's server (PyPI
//! `moto[server]`), installed into the agentcore cache by `scripts/setup_s3.sh`.
//!
//! Where it is not installed, [`S3Server::start`] answers `Ok(None)` (the caller skips and says
//! so), unless [`REQUIRE_S3_ENV`] is set (CI), when it is an error.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ArtifactError, Artifacts};

/// Set (to anything) to make a missing S3 server an error instead of a skip.
pub const REQUIRE_S3_ENV: &str = "AGENTCORE_REQUIRE_S3";

/// Overrides where the `moto_server` executable is.
pub const S3_SERVER_ENV: &str = "AGENTCORE_S3_SERVER";

/// How long the server may take to accept connections.
pub const S3_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto S3 server with one bucket; stopped when dropped.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    /// The server's log.
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var(S3_SERVER_ENV) {
        return PathBuf::from(p);
    }
    let cache = std::env::var("AGENTCORE_CACHE").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/agentcore"),
        PathBuf::from,
    );
    cache.join("s3-venv/bin/moto_server")
}

impl S3Server {
    /// Starts the server on a free loopback port and creates `bucket`; `Ok(None)` (with a note on
    /// stderr) when it is not installed.
    ///
    /// # Errors
    /// The server is missing while [`REQUIRE_S3_ENV`] is set, it did not start, the bucket
    /// could not be made.
    pub fn start(bucket: &str) -> Result<Option<Self>, String> {
        let bin = server_binary();
        if !bin.is_file() {
            let why = format!(
                "no S3 server at {} (run scripts/setup_s3.sh, or set {S3_SERVER_ENV})",
                bin.display()
            );
            if std::env::var_os(REQUIRE_S3_ENV).is_some() {
                return Err(format!("{why}; {REQUIRE_S3_ENV} is set"));
            }
            #[expect(clippy::print_stderr, reason = "a skipped test says why")]
            {
                eprintln!("SKIPPED: {why}");
            }
            return Ok(None);
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let log_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = log_dir.path().join("moto.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_owned(),
            log,
            _log_dir: log_dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + S3_START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("the S3 server exited ({status}): {}", server.log_text()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the S3 server did not listen within {S3_START_TIMEOUT:?}: {}",
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ureq::put(&format!("{}/{bucket}", server.endpoint))
            .send_empty()
            .map_err(|e| format!("creating bucket {bucket}: {e}"))?;
        Ok(Some(server))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `s3://BUCKET/prefix`.
    #[must_use]
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The store settings that reach this server (test credentials, plain HTTP, path style).
    #[must_use]
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "testing".into()),
            ("aws_secret_access_key", "testing".into()),
            ("aws_region", "us-east-1".into()),
        ]
    }

    /// The same settings as environment variables, for child processes.
    #[must_use]
    pub fn env(&self) -> Vec<(String, String)> {
        self.settings().into_iter().map(|(k, v)| (k.to_ascii_uppercase(), v)).collect()
    }

    /// The artifact store at `prefix` of the bucket.
    ///
    /// # Errors
    /// As [`Artifacts::open_with`].
    pub fn artifacts(&self, prefix: &str) -> Result<Artifacts, ArtifactError> {
        let settings = self.settings();
        let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Artifacts::open_with(&self.url(prefix), &pairs)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
