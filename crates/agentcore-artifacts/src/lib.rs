//! The artifact store: where checkpoints, run reports and warm-start caches live beyond the
//! machine that wrote them.
//!
//! Two backends behind one type, [`Artifacts`]:
//! - **local** (the embedded default): the data directory is the store; every call here is a
//!   no-op, so a single machine behaves exactly as it did before object storage existed;
//! - **object storage** (`s3://bucket/prefix`, `gs://…`, `az://…`, or `file:///dir` for a shared
//!   mount), through the `object_store` crate: the data directory becomes a local working copy,
//!   every artifact written there is also uploaded, and a machine that lacks one downloads it.
//!
//! Keys mirror the data directory's layout (`runs/<job>/checkpoints/ckpt-00005/model.safetensors`
//! under the URL's prefix), so a bucket reads like a data directory.
//!
//! Atomicity: a directory (a checkpoint) is complete or absent. Its files are uploaded first and
//! its manifest (the file named by the caller, holding every file's size and SHA-256) last; a
//! reader ignores a directory without a manifest, downloads the rest into a temporary directory,
//! has the caller verify it against the manifest, and only then renames it into place. A removal
//! deletes the manifest first. Single files are single PUTs (atomic in every object store).
//!
//! Credentials come from the environment the way each cloud's own tools read them
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for an
//! S3-compatible server, `AWS_ALLOW_HTTP=true` for plain HTTP on loopback; `GOOGLE_*`;
//! `AZURE_*`); they never appear in an error or a log line.
#![deny(missing_docs)]

use std::future::Future;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub mod testing;

use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{
    ListResult, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload, WriteMultipart,
};

/// The environment variable naming the artifact store when no flag does.
pub const ARTIFACTS_ENV: &str = "AGENTCORE_ARTIFACTS";

/// Files larger than this are uploaded in parts (S3 refuses single PUTs over 5 GiB, and parts
/// bound the memory an upload holds).
pub const MULTIPART_THRESHOLD_BYTES: u64 = 32 << 20;

/// The size of one part of a multipart upload (S3's minimum is 5 MiB).
pub const MULTIPART_CHUNK_BYTES: usize = 16 << 20;

/// A failed artifact operation: what was being done, on which key of which store, and why.
#[derive(Debug, thiserror::Error)]
#[error("artifact store {store}: {action} {key}: {message}")]
pub struct ArtifactError {
    /// The store, as [`Artifacts::describe`] gives it (no credentials).
    pub store: String,
    /// What was being done ("uploading", "downloading", ...).
    pub action: &'static str,
    /// The key or local path concerned.
    pub key: String,
    /// Why it failed.
    pub message: String,
}

impl From<agentcore_fs::FsError> for ArtifactError {
    fn from(e: agentcore_fs::FsError) -> Self {
        Self {
            store: "local".into(),
            action: e.action,
            key: e.path.display().to_string(),
            message: e.source.to_string(),
        }
    }
}

/// The artifact store of a process: local (no-op) or object storage.
#[derive(Debug, Default)]
pub struct Artifacts {
    remote: Option<Remote>,
}

struct Remote {
    /// The URL as given, without userinfo or query (what errors and logs show).
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: Key,
    /// The store's own runtime: callers are blocking threads (training jobs) or async tasks
    /// (the server); both hand their futures to it and wait on a channel.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's async context panics; this never blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn install_crypto_provider() {
    // reqwest is built without a provider (aws-lc-rs would compile a C library); ring is the
    // one the rest of the workspace's rustls already uses. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Artifacts {
    /// The local backend: the data directory is the store.
    #[must_use]
    pub fn local() -> Self {
        Self { remote: None }
    }

    /// The store a URL names: `s3://bucket[/prefix]` (also S3-compatible servers through
    /// `AWS_ENDPOINT`), `gs://bucket[/prefix]`, `az://container[/prefix]`, `file:///dir`, or
    /// `local` (the data directory itself).
    ///
    /// # Errors
    /// An unsupported scheme, a URL that does not parse, a store whose settings are incomplete.
    pub fn open(url: &str) -> Result<Self, ArtifactError> {
        Self::open_with(url, &[])
    }

    /// [`Artifacts::open`] with settings given explicitly on top of the environment's, by the
    /// names the environment uses in lower case (`aws_endpoint`, `aws_allow_http`, ...).
    ///
    /// # Errors
    /// As [`Artifacts::open`], and a setting the store does not know.
    pub fn open_with(url: &str, settings: &[(&str, &str)]) -> Result<Self, ArtifactError> {
        let url = url.trim();
        if url.is_empty() || url == "local" {
            return Ok(Self::local());
        }
        let bad = |message: String| ArtifactError {
            store: redact(url),
            action: "opening",
            key: String::new(),
            message,
        };
        let parsed = url::Url::parse(url).map_err(|e| {
            bad(format!("the artifact store must be a URL like s3://bucket/prefix: {e}"))
        })?;
        let (scheme, path) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let prefix = Key::parse(path).map_err(|e| bad(e.to_string()))?;
        install_crypto_provider();
        let unknown = |k: &str| bad(format!("unknown store setting {k:?}"));
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
                for (k, v) in settings {
                    b = b.with_config(k.parse().map_err(|_| unknown(k))?, *v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url);
                for (k, v) in settings {
                    b = b.with_config(k.parse().map_err(|_| unknown(k))?, *v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url);
                for (k, v) in settings {
                    b = b.with_config(k.parse().map_err(|_| unknown(k))?, *v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            ObjectStoreScheme::Local => Arc::new(object_store::local::LocalFileSystem::new()),
            other => {
                return Err(bad(format!(
                    "scheme {other:?} is not an artifact store (s3://, gs://, az:// or file://)"
                )));
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("artifacts")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("starting its I/O runtime: {e}")))?;
        Ok(Self {
            remote: Some(Remote { url: redact(url), store, prefix, runtime: Some(runtime) }),
        })
    }

    /// The store named by `flag`, else by [`ARTIFACTS_ENV`], else the local one.
    ///
    /// # Errors
    /// As [`Artifacts::open`].
    pub fn from_flag_or_env(flag: Option<&str>) -> Result<Self, ArtifactError> {
        match flag.map(str::to_owned).or_else(|| std::env::var(ARTIFACTS_ENV).ok()) {
            Some(url) => Self::open(&url),
            None => Ok(Self::local()),
        }
    }

    /// Whether artifacts go to object storage (false: the data directory is the store).
    #[must_use]
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The store for messages: `local` or its URL without credentials.
    #[must_use]
    pub fn describe(&self) -> String {
        self.remote.as_ref().map_or_else(|| "local".to_owned(), |r| r.url.clone())
    }

    /// Uploads `data_dir/rel` to the key `rel`. Local backend: nothing to do.
    ///
    /// # Errors
    /// The file cannot be read, the upload failed.
    pub fn put_file(&self, data_dir: &Path, rel: &str) -> Result<(), ArtifactError> {
        let Some(r) = &self.remote else { return Ok(()) };
        let key = r.key(rel)?;
        let local = data_dir.join(rel);
        r.block(r.upload(local, key))
    }

    /// Downloads the key `rel` into `data_dir/rel` (atomically: the file is complete or
    /// untouched). `Ok(false)` when the store has no such key. Local backend: `Ok(false)`.
    ///
    /// # Errors
    /// The download or the local write failed.
    pub fn get_file(&self, data_dir: &Path, rel: &str) -> Result<bool, ArtifactError> {
        let Some(r) = &self.remote else { return Ok(false) };
        let key = r.key(rel)?;
        let target = data_dir.join(rel);
        r.block(r.download(key, target))
    }

    /// Uploads the directory `data_dir/rel` (its plain files): every file, then `last` (the
    /// manifest), so that readers see it complete or not at all. Local backend: nothing to do.
    ///
    /// # Errors
    /// A file cannot be read, an upload failed, `last` is missing.
    pub fn put_dir(&self, data_dir: &Path, rel: &str, last: &str) -> Result<(), ArtifactError> {
        let Some(r) = &self.remote else { return Ok(()) };
        let dir = data_dir.join(rel);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| r.err("listing", &dir.display().to_string(), e))?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != last)
            .collect();
        names.sort();
        if !dir.join(last).is_file() {
            return Err(r.err(
                "uploading",
                &format!("{rel}/{last}"),
                "the directory has no such file",
            ));
        }
        names.push(last.to_owned());
        for name in names {
            let key = r.key(&format!("{rel}/{name}"))?;
            r.block(r.upload(dir.join(&name), key))?;
        }
        Ok(())
    }

    /// Downloads the directory at key `rel` into `data_dir/rel` if it is complete (its `last`
    /// file exists): into a temporary directory first, which `check` verifies (checksums against
    /// the manifest) before it is renamed into place, replacing what was there. `Ok(false)` when
    /// the store has no complete directory there. Local backend: `Ok(false)`.
    ///
    /// # Errors
    /// A download failed, `check` refused the files (the local directory is then untouched).
    pub fn get_dir(
        &self,
        data_dir: &Path,
        rel: &str,
        last: &str,
        check: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<bool, ArtifactError> {
        let Some(r) = &self.remote else { return Ok(false) };
        let dir_key = r.key(rel)?;
        let objects = r.object_names(dir_key.clone())?;
        if !objects.iter().any(|n| n == last) {
            return Ok(false);
        }
        let target = data_dir.join(rel);
        agentcore_fs::write_dir_atomic(&target, |tmp| -> Result<(), ArtifactError> {
            for name in &objects {
                let key = r.key(&format!("{rel}/{name}"))?;
                if !r.block(r.download(key, tmp.join(name)))? {
                    return Err(r.err(
                        "downloading",
                        &format!("{rel}/{name}"),
                        "removed meanwhile",
                    ));
                }
            }
            check(tmp).map_err(|m| r.err("verifying", rel, m))
        })?;
        Ok(true)
    }

    /// Removes the directory at key `rel`: `first` (the manifest) first, so that no reader
    /// takes a half-deleted directory for a complete one, then everything else under it.
    /// Local backend: nothing to do.
    ///
    /// # Errors
    /// A delete failed.
    pub fn remove_dir(&self, rel: &str, first: &str) -> Result<(), ArtifactError> {
        let Some(r) = &self.remote else { return Ok(()) };
        let dir_key = r.key(rel)?;
        let manifest = r.key(&format!("{rel}/{first}"))?;
        r.block(r.delete(manifest))?;
        for name in r.object_names(dir_key)? {
            let key = r.key(&format!("{rel}/{name}"))?;
            r.block(r.delete(key))?;
        }
        Ok(())
    }

    /// The names of the directories directly under key `rel` (sorted). Local backend: none.
    ///
    /// # Errors
    /// The listing failed.
    pub fn list_dirs(&self, rel: &str) -> Result<Vec<String>, ArtifactError> {
        let Some(r) = &self.remote else { return Ok(Vec::new()) };
        let listed = r.block(r.listing(r.key(rel)?))?;
        Ok(sorted(listed.common_prefixes.iter().filter_map(|p| p.filename())))
    }
}

/// An error of the store `url` about `key`.
fn failure(
    url: &str,
    action: &'static str,
    key: &Key,
    message: impl std::fmt::Display,
) -> ArtifactError {
    ArtifactError {
        store: url.to_owned(),
        action,
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// Names, sorted.
fn sorted<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = names.map(str::to_owned).collect();
    v.sort();
    v
}

/// A URL without userinfo, query or fragment.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<unparsable artifact store URL>".to_owned(),
    }
}

impl Remote {
    fn err(
        &self,
        action: &'static str,
        key: &str,
        message: impl std::fmt::Display,
    ) -> ArtifactError {
        ArtifactError {
            store: self.url.clone(),
            action,
            key: key.to_owned(),
            message: message.to_string(),
        }
    }

    /// The key of `rel` under the prefix; `rel` must be a relative path of plain components.
    fn key(&self, rel: &str) -> Result<Key, ArtifactError> {
        let plain = Path::new(rel).components().all(|c| matches!(c, Component::Normal(_)));
        if rel.is_empty() || !plain {
            return Err(self.err("naming", rel, "not a relative path of plain components"));
        }
        Ok(rel.split('/').fold(self.prefix.clone(), |k, part| k.join(part)))
    }

    /// Runs `fut` on the store's runtime and waits for it (from a blocking thread or an async
    /// task alike: the caller's thread only waits on a channel).
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, ArtifactError>> + Send + 'static,
    ) -> Result<T, ArtifactError> {
        let Some(rt) = &self.runtime else {
            return Err(self.err("using", "", "the store is shutting down"));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| Err(self.err("waiting for", "", "the I/O task ended")))
    }

    fn upload(
        &self,
        local: PathBuf,
        key: Key,
    ) -> impl Future<Output = Result<(), ArtifactError>> + Send + 'static {
        let (store, url) = (Arc::clone(&self.store), self.url.clone());
        async move {
            let fail = |action, message: String| failure(&url, action, &key, message);
            let shown = local.display().to_string();
            let size = tokio::fs::metadata(&local)
                .await
                .map_err(|e| fail("reading", format!("{shown}: {e}")))?
                .len();
            if size <= MULTIPART_THRESHOLD_BYTES {
                let bytes = tokio::fs::read(&local)
                    .await
                    .map_err(|e| fail("reading", format!("{shown}: {e}")))?;
                store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map_err(|e| fail("uploading", e.to_string()))?;
                return Ok(());
            }
            let upload =
                store.put_multipart(&key).await.map_err(|e| fail("uploading", e.to_string()))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK_BYTES);
            let mut file = tokio::fs::File::open(&local)
                .await
                .map_err(|e| fail("reading", format!("{shown}: {e}")))?;
            let mut buf = vec![0u8; MULTIPART_CHUNK_BYTES];
            loop {
                use tokio::io::AsyncReadExt;
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| fail("reading", format!("{shown}: {e}")))?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await.map_err(|e| fail("uploading", e.to_string()))?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map_err(|e| fail("uploading", e.to_string()))?;
            Ok(())
        }
    }

    /// Streams `key` into `target` through a temporary file beside it; `false` if absent.
    fn download(
        &self,
        key: Key,
        target: PathBuf,
    ) -> impl Future<Output = Result<bool, ArtifactError>> + Send + 'static {
        let (store, url) = (Arc::clone(&self.store), self.url.clone());
        async move {
            let fail = |action, message: String| failure(&url, action, &key, message);
            let got = match store.get(&key).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(fail("downloading", e.to_string())),
            };
            let dir = target.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            std::fs::create_dir_all(&dir)
                .map_err(|e| fail("creating", format!("{}: {e}", dir.display())))?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .tempfile_in(&dir)
                .map_err(|e| {
                    fail("creating", format!("a temporary file in {}: {e}", dir.display()))
                })?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| fail("downloading", e.to_string()))?;
                tmp.write_all(&chunk)
                    .map_err(|e| fail("writing", format!("{}: {e}", target.display())))?;
            }
            tmp.as_file()
                .sync_all()
                .map_err(|e| fail("syncing", format!("{}: {e}", target.display())))?;
            tmp.persist(&target)
                .map_err(|e| fail("renaming into", format!("{}: {}", target.display(), e.error)))?;
            agentcore_fs::sync_dir(&dir).map_err(|e| fail("syncing", e.to_string()))?;
            Ok(true)
        }
    }

    /// The store's listing of `dir`: the objects directly under it and its subdirectories.
    fn listing(
        &self,
        dir: Key,
    ) -> impl Future<Output = Result<ListResult, ArtifactError>> + Send + 'static {
        let (store, url) = (Arc::clone(&self.store), self.url.clone());
        async move {
            store
                .list_with_delimiter(Some(&dir))
                .await
                .map_err(|e| failure(&url, "listing", &dir, e))
        }
    }

    /// The names of the objects directly under `dir` (not in deeper directories), sorted.
    fn object_names(&self, dir: Key) -> Result<Vec<String>, ArtifactError> {
        let listed = self.block(self.listing(dir))?;
        Ok(sorted(listed.objects.iter().filter_map(|o| o.location.filename())))
    }

    fn delete(&self, key: Key) -> impl Future<Output = Result<(), ArtifactError>> + Send + 'static {
        let (store, url) = (Arc::clone(&self.store), self.url.clone());
        async move {
            match store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(failure(&url, "deleting", &key, e)),
            }
        }
    }
}
