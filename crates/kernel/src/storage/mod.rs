//! File storage: uploaded documents, addressed by organization and SHA-256 checksum.
//!
//! Content-addressed and deduplicated per organization: the same bytes uploaded twice by one
//! organization are stored once (and two organizations never share a stored object, so one
//! tenant cannot learn whether another holds a file). Each stored file has a row in
//! `keel_files` (checksum, size, detected type, first name) and an object in a [`BlobStore`]:
//! a local directory (the default, under the data directory) or an S3-compatible bucket
//! (`object_store`). Files are served back only through scoped routes
//! (`GET /api/v1/files/{sha256}/content`); there are no public URLs.
//!
//! Writes are durable before they are acknowledged: the local backend writes a temporary
//! file, syncs it, renames it into place and syncs the directory; S3 acknowledges a PUT only
//! once stored. The object is written inside the transaction that inserts its row, before
//! commit, so a crash in between leaves at most an unreferenced object, never a row without
//! content; a delete removes the object inside the transaction that deletes the row, so an
//! upload of the same content racing it waits on the row and writes the object again.

pub mod kind;
pub mod routes;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use kind::{FileKind, KindError};
pub use store::StoredFile;

use crate::config::Secret;
use crate::store::{Db, StoreError};
use crate::tenancy::TenantScope;

/// Where an object lives: its organization and the hex SHA-256 of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobKey {
    pub org_id: Uuid,
    pub sha256: String,
}

impl BlobKey {
    /// `orgs/<org id>/<first two hex digits>/<sha256>`: spreads a large organization's files
    /// over directories.
    pub fn path(&self) -> String {
        format!(
            "orgs/{}/{}/{}",
            self.org_id,
            self.sha256.get(..2).unwrap_or("00"),
            self.sha256
        )
    }
}

/// A backend that stores objects by key. Writing the same key twice writes the same bytes
/// (keys are checksums), so `put` may overwrite.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// `local` or `s3`.
    fn name(&self) -> &'static str;
    async fn put(&self, key: &BlobKey, bytes: Bytes) -> anyhow::Result<()>;
    /// `Ok(None)` when there is no such object.
    async fn get(&self, key: &BlobKey) -> anyhow::Result<Option<Bytes>>;
    /// Deleting a missing object succeeds.
    async fn delete(&self, key: &BlobKey) -> anyhow::Result<()>;
}

/// A directory on local disk.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn file(&self, key: &BlobKey) -> PathBuf {
        self.root.join(key.path())
    }
}

#[async_trait::async_trait]
impl BlobStore for LocalStore {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn put(&self, key: &BlobKey, bytes: Bytes) -> anyhow::Result<()> {
        let path = self.file(key);
        let dir = path
            .parent()
            .context("an object path has a directory")?
            .to_path_buf();
        tokio::task::spawn_blocking(move || write_durably(&dir, &path, &bytes))
            .await
            .context("the file writer stopped")?
    }

    async fn get(&self, key: &BlobKey) -> anyhow::Result<Option<Bytes>> {
        match tokio::fs::read(self.file(key)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context("cannot read a stored file")),
        }
    }

    async fn delete(&self, key: &BlobKey) -> anyhow::Result<()> {
        match tokio::fs::remove_file(self.file(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("cannot delete a stored file")),
        }
    }
}

/// Temporary file, fsync, rename, fsync of the directory: the object is complete or absent.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".tmp-{}", Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write a file under {}", dir.display()))
}

/// An S3-compatible bucket (AWS S3, MinIO, Ceph, …) through `object_store`.
pub struct S3Store {
    store: object_store::aws::AmazonS3,
    prefix: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Store {
    pub fn new(config: &S3Config) -> anyhow::Result<Self> {
        use object_store::aws::AmazonS3Builder;
        let bucket = config
            .bucket
            .as_deref()
            .context("files.s3.bucket is required for the s3 backend")?;
        // Credentials come from configuration or, when unset, from the environment the
        // builder reads (AWS_ACCESS_KEY_ID, instance metadata, …).
        let mut builder = AmazonS3Builder::from_env()
            // First: the client options replace any set before (such as allow_http).
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(20)),
            )
            .with_bucket_name(bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(config.virtual_hosted_style)
            // object_store retries for up to three minutes by default; an upload request
            // gives up well within Keel's request timeout instead (503 to the client).
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(10),
                ..Default::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key.expose());
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose());
        }
        let store = builder
            .build()
            .map_err(|e| anyhow::anyhow!("files.s3: {e}"))?;
        Ok(Self {
            store,
            prefix: config.prefix.trim_matches('/').to_string(),
        })
    }

    fn path(&self, key: &BlobKey) -> object_store::path::Path {
        if self.prefix.is_empty() {
            object_store::path::Path::from(key.path())
        } else {
            object_store::path::Path::from(format!("{}/{}", self.prefix, key.path()))
        }
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, key: &BlobKey, bytes: Bytes) -> anyhow::Result<()> {
        use object_store::ObjectStore as _;
        self.store
            .put_opts(&self.path(key), bytes.into(), Default::default())
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("S3 put failed: {e}"))
    }

    async fn get(&self, key: &BlobKey) -> anyhow::Result<Option<Bytes>> {
        use object_store::ObjectStore as _;
        match self
            .store
            .get_opts(&self.path(key), Default::default())
            .await
        {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| anyhow::anyhow!("S3 read failed: {e}"))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("S3 get failed: {e}")),
        }
    }

    async fn delete(&self, key: &BlobKey) -> anyhow::Result<()> {
        use futures::{StreamExt as _, TryStreamExt as _};
        use object_store::ObjectStore as _;
        let path = self.path(key);
        let mut deleted = self
            .store
            .delete_stream(futures::stream::once(async move { Ok(path) }).boxed());
        match deleted.try_next().await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("S3 delete failed: {e}")),
        }
    }
}

/// `local` (a directory) or `s3` (an S3-compatible bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    S3,
}

/// `[files]`: where uploaded files are stored and how large they may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// `KEEL_FILES__BACKEND`: `local` or `s3`.
    pub backend: Backend,
    /// `KEEL_FILES__LOCAL_DIR`: the local backend's directory; unset means `<data_dir>/files`.
    pub local_dir: Option<PathBuf>,
    /// `KEEL_FILES__MAX_BYTES`: the largest file accepted (≤ `http.body_limit_bytes`).
    pub max_bytes: u64,
    pub s3: S3Config,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Local,
            local_dir: None,
            max_bytes: 2 * 1024 * 1024,
            s3: S3Config::default(),
        }
    }
}

/// `[files.s3]`: the bucket for the `s3` backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: Option<String>,
    pub region: String,
    /// An S3-compatible service's URL (MinIO, Ceph…); unset means AWS.
    pub endpoint: Option<String>,
    /// Unset: taken from the environment (`AWS_ACCESS_KEY_ID`, instance credentials).
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// Allow an `http://` endpoint (refused in production).
    pub allow_http: bool,
    /// `bucket.host` addressing instead of `host/bucket`.
    pub virtual_hosted_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: None,
            region: "us-east-1".into(),
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            prefix: String::new(),
            allow_http: false,
            virtual_hosted_style: false,
        }
    }
}

impl FilesConfig {
    /// Problems with the values, one message each.
    pub fn value_problems(&self, body_limit_bytes: usize, production: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_bytes == 0 {
            problems.push("files.max_bytes: must be greater than 0".into());
        }
        if self.max_bytes > body_limit_bytes as u64 {
            problems.push(format!(
                "files.max_bytes: {} exceeds http.body_limit_bytes ({body_limit_bytes}); raise both",
                self.max_bytes
            ));
        }
        if self.backend == Backend::S3 {
            if self.s3.bucket.as_deref().is_none_or(str::is_empty) {
                problems.push("files.s3.bucket: required when files.backend = \"s3\"".into());
            }
            if self.s3.access_key_id.is_some() != self.s3.secret_access_key.is_some() {
                problems.push(
                    "files.s3.access_key_id and files.s3.secret_access_key: set both or neither"
                        .into(),
                );
            }
        }
        if let Some(endpoint) = &self.s3.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                problems.push(format!(
                    "files.s3.endpoint: `{endpoint}` is not an http(s) URL"
                ));
            } else if endpoint.starts_with("http://") && !self.s3.allow_http {
                problems.push(
                    "files.s3.endpoint: an http:// endpoint needs files.s3.allow_http = true"
                        .into(),
                );
            }
        }
        if production && self.s3.allow_http {
            problems.push("files.s3.allow_http: refused in production".into());
        }
        if self.s3.region.trim().is_empty() {
            problems.push("files.s3.region: must not be empty".into());
        }
        problems
    }
}

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {size} bytes; the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error(transparent)]
    Kind(#[from] KindError),
    #[error("no such file")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(anyhow::Error),
}

impl From<FileError> for crate::http::ApiError {
    fn from(e: FileError) -> Self {
        use crate::http::ApiError;
        match e {
            FileError::Empty => ApiError::invalid_field("file", "must not be empty"),
            FileError::TooLarge { .. } => ApiError::payload_too_large(e.to_string()),
            FileError::Kind(KindError::Unsupported) => ApiError::unsupported_media_type(
                "the content is not a supported document type (PDF, PNG, JPEG, WebP or GIF)",
            )
            .with_errors(vec![crate::http::FieldError::new(
                "file",
                "is not a PDF, PNG, JPEG, WebP or GIF",
            )]),
            FileError::Kind(k) => ApiError::invalid_field("file", k.to_string()),
            FileError::NotFound => ApiError::not_found(),
            FileError::Store(s) => s.into(),
            FileError::Backend(b) => {
                // An unreachable bucket or a full disk is an outage, not a bug: 503, with
                // the cause in the log only.
                tracing::error!(error = %format!("{b:#}"), "file storage failed");
                ApiError::service_unavailable("file storage is unavailable; try again later")
            }
        }
    }
}

/// The file service on `AppState::files`: checks, stores and reads files inside a scope.
#[derive(Clone)]
pub struct Files {
    blobs: Arc<dyn BlobStore>,
    max_bytes: u64,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("backend", &self.blobs.name())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// The hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether a string is a hex SHA-256 (64 lowercase hex digits).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Files {
    /// The configured backend.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Self> {
        let blobs: Arc<dyn BlobStore> = match config.files.backend {
            Backend::Local => Arc::new(LocalStore::new(
                config
                    .files
                    .local_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("files")),
            )),
            Backend::S3 => Arc::new(S3Store::new(&config.files.s3)?),
        };
        Ok(Self::new(blobs, config.files.max_bytes))
    }

    pub fn new(blobs: Arc<dyn BlobStore>, max_bytes: u64) -> Self {
        Self { blobs, max_bytes }
    }

    pub fn backend(&self) -> &'static str {
        self.blobs.name()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Checks a file (size, type by content against what the client declared) and stores it
    /// for the scope's organization. The same content stored again returns the existing file
    /// (`created` false).
    pub async fn put(
        &self,
        db: &Db,
        scope: &TenantScope,
        file_name: Option<&str>,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<(StoredFile, bool), FileError> {
        if bytes.is_empty() {
            return Err(FileError::Empty);
        }
        let size = bytes.len() as u64;
        if size > self.max_bytes {
            return Err(FileError::TooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        let kind = kind::check(&bytes, file_name, content_type)?;
        let sha256 = sha256_hex(&bytes);
        if let Some(existing) = store::find(db, scope, &sha256).await? {
            return Ok((existing, false));
        }
        let key = BlobKey {
            org_id: scope.org_id(),
            sha256: sha256.clone(),
        };
        let name = file_name.map(clean_file_name);
        // The row first, then the object, then commit: a concurrent delete of the same
        // content holds the row until its object is gone, so this insert waits for it and
        // the object written next cannot be removed by that delete. A crash before commit
        // leaves at most an unreferenced object.
        let mut tx = db.begin().await?;
        let (row, created) = store::insert(&mut tx, scope, &sha256, size, kind, name).await?;
        if created {
            self.blobs
                .put(&key, bytes)
                .await
                .map_err(FileError::Backend)?;
        }
        tx.commit().await?;
        Ok((row, created))
    }

    /// A stored file's row (404 for another organization's).
    pub async fn info(
        &self,
        db: &Db,
        scope: &TenantScope,
        sha256: &str,
    ) -> Result<StoredFile, FileError> {
        store::find(db, scope, sha256)
            .await?
            .ok_or(FileError::NotFound)
    }

    /// A stored file's row and content.
    pub async fn get(
        &self,
        db: &Db,
        scope: &TenantScope,
        sha256: &str,
    ) -> Result<(StoredFile, Bytes), FileError> {
        let row = self.info(db, scope, sha256).await?;
        let key = BlobKey {
            org_id: scope.org_id(),
            sha256: row.sha256.clone(),
        };
        match self.blobs.get(&key).await.map_err(FileError::Backend)? {
            Some(bytes) => Ok((row, bytes)),
            None => Err(FileError::Backend(anyhow::anyhow!(
                "file {} of organization {} has a row but no stored object",
                row.sha256,
                row.org_id
            ))),
        }
    }

    /// Stores bytes an app produced itself (an export, a report) for the scope's
    /// organization, under their SHA-256, which it returns. No type check and no
    /// `keel_files` row (these are not uploaded documents and are not listed or served by
    /// `/api/v1/files`): the app records the checksum and serves the bytes through its own
    /// scoped route with [`Files::get_object`]. Not bound by `files.max_bytes`.
    pub async fn put_object(&self, scope: &TenantScope, bytes: Bytes) -> Result<String, FileError> {
        let sha256 = sha256_hex(&bytes);
        let key = BlobKey {
            org_id: scope.org_id(),
            sha256: sha256.clone(),
        };
        self.blobs
            .put(&key, bytes)
            .await
            .map_err(FileError::Backend)?;
        Ok(sha256)
    }

    /// Bytes stored with [`Files::put_object`] for the scope's organization (another
    /// organization's checksum finds nothing).
    pub async fn get_object(&self, scope: &TenantScope, sha256: &str) -> Result<Bytes, FileError> {
        if !is_sha256(sha256) {
            return Err(FileError::NotFound);
        }
        let key = BlobKey {
            org_id: scope.org_id(),
            sha256: sha256.to_string(),
        };
        self.blobs
            .get(&key)
            .await
            .map_err(FileError::Backend)?
            .ok_or(FileError::NotFound)
    }

    /// Deletes a file: its row, then its object. False when there was none.
    pub async fn delete(
        &self,
        db: &Db,
        scope: &TenantScope,
        sha256: &str,
    ) -> Result<bool, FileError> {
        // The object goes while the row's deletion is uncommitted, so an upload of the same
        // content waits and then writes its object afresh (see `put`).
        let mut tx = db.begin().await?;
        let deleted = store::delete(&mut tx, scope, sha256).await?;
        if deleted {
            let key = BlobKey {
                org_id: scope.org_id(),
                sha256: sha256.to_string(),
            };
            self.blobs.delete(&key).await.map_err(FileError::Backend)?;
        }
        tx.commit().await?;
        Ok(deleted)
    }
}

/// A file name as stored: its last path component, control characters removed, ≤ 255 chars.
fn clean_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    last.chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_by_checksum_under_the_organization() {
        let org = Uuid::nil();
        let key = BlobKey {
            org_id: org,
            sha256: "ab".repeat(32),
        };
        assert_eq!(key.path(), format!("orgs/{org}/ab/{}", "ab".repeat(32)));
        assert!(is_sha256(&"ab".repeat(32)));
        assert!(!is_sha256(&"AB".repeat(32)));
        assert!(!is_sha256("../../etc/passwd"));
    }

    #[test]
    fn file_names_lose_their_directories() {
        assert_eq!(clean_file_name("../../x/invoice.pdf"), "invoice.pdf");
        assert_eq!(clean_file_name("C:\\scan\\a.png"), "a.png");
    }

    #[test]
    fn s3_settings_are_checked() {
        let mut c = FilesConfig {
            backend: Backend::S3,
            ..FilesConfig::default()
        };
        c.s3.endpoint = Some("http://127.0.0.1:9000".into());
        c.s3.access_key_id = Some(Secret::new("k"));
        c.max_bytes = 4 * 1024 * 1024;
        let problems = c.value_problems(2 * 1024 * 1024, true).join("\n");
        for needle in [
            "files.s3.bucket",
            "access_key_id and files.s3.secret_access_key",
            "allow_http = true",
            "exceeds http.body_limit_bytes",
        ] {
            assert!(problems.contains(needle), "{needle} in {problems}");
        }
        c.s3.allow_http = true;
        assert!(
            c.value_problems(8 * 1024 * 1024, true)
                .iter()
                .any(|p| p.contains("refused in production"))
        );
        assert!(
            FilesConfig::default()
                .value_problems(2 * 1024 * 1024, true)
                .is_empty()
        );
    }

    #[tokio::test]
    async fn the_local_store_round_trips_and_deletes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let key = BlobKey {
            org_id: Uuid::now_v7(),
            sha256: sha256_hex(b"hello"),
        };
        assert!(store.get(&key).await.expect("get").is_none());
        store
            .put(&key, Bytes::from_static(b"hello"))
            .await
            .expect("put");
        assert_eq!(
            store.get(&key).await.expect("get").as_deref(),
            Some(&b"hello"[..])
        );
        store.delete(&key).await.expect("delete");
        store.delete(&key).await.expect("delete twice");
        assert!(store.get(&key).await.expect("get").is_none());
    }

    #[tokio::test]
    async fn generated_objects_are_read_back_only_by_their_organization() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files::new(Arc::new(LocalStore::new(dir.path())), 1);
        let (a, b) = (
            TenantScope::system(Uuid::now_v7(), "test"),
            TenantScope::system(Uuid::now_v7(), "test"),
        );
        // A CSV is no document type and larger than `max_bytes`: generated objects pass.
        let csv = Bytes::from_static(b"id,reference\n1,EXP-1\n");
        let sha = files.put_object(&a, csv.clone()).await.expect("put");
        assert_eq!(sha, sha256_hex(&csv));
        assert_eq!(files.get_object(&a, &sha).await.expect("get"), csv);
        assert!(matches!(
            files.get_object(&b, &sha).await,
            Err(FileError::NotFound)
        ));
        assert!(matches!(
            files.get_object(&a, "../x").await,
            Err(FileError::NotFound)
        ));
    }
}
