//! Object storage for datasets, checkpoints and models, through the `object_store` crate.
//!
//! A local folder by default; S3-compatible storage when the URL is `s3://bucket/prefix`
//! (endpoint, region and credentials from [`StorageConfig`] or the usual `AWS_*`
//! variables). Every process of a deployment that shares the same storage sees every file,
//! so a model trained on one worker is served by any API replica.
//!
//! Keys are plain `/`-separated strings under the storage root:
//! `datasets/<id>.jsonl`, `checkpoints/<job_id>/...`, `models/<model_id>/...`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use tokio::io::AsyncWriteExt;

/// Where the storage is and how to reach it.
#[derive(Clone, Default)]
pub struct StorageConfig {
    /// A folder, `file:///folder`, `s3://bucket/prefix` or `memory://`.
    pub url: String,
    /// S3 endpoint (for MinIO and other S3-compatible servers).
    pub s3_endpoint: Option<String>,
    /// S3 region.
    pub s3_region: Option<String>,
    /// S3 access key id.
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key.
    pub s3_secret_access_key: Option<String>,
    /// Allow plain-HTTP endpoints.
    pub s3_allow_http: bool,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("StorageConfig")
            .field("url", &self.url)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field("s3_secret_access_key", &self.s3_secret_access_key.as_ref().map(|_| "***"))
            .field("s3_allow_http", &self.s3_allow_http)
            .finish()
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL names no supported storage.
    #[error("unsupported storage url `{0}`: expected a folder, file://, s3:// or memory://")]
    UnsupportedUrl(String),
    /// No object has this key.
    #[error("no stored object `{0}`")]
    NotFound(String),
    /// The object store failed.
    #[error("object storage failed for `{key}`")]
    Store {
        /// The key (or prefix) involved.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// A local file could not be read or written.
    #[error("local file i/o failed at {path}")]
    Io {
        /// The local path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The object storage of one deployment.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("store", &self.store.to_string()).finish()
    }
}

impl Storage {
    /// Opens the storage named by `config.url`; a local folder is created when missing.
    ///
    /// # Errors
    /// A [`StorageError`] when the URL is unsupported or the folder cannot be made.
    pub fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        let url = config.url.trim();
        if let Some(rest) = url.strip_prefix("s3://") {
            return open_s3(config, rest);
        }
        if url == "memory://" {
            return Ok(Self { store: Arc::new(InMemory::new()), root: String::new() });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(StorageError::UnsupportedUrl(url.to_string()));
        }
        Self::local(Path::new(url.trim_start_matches("file://")))
    }

    /// Opens a local folder as storage, creating it when missing.
    ///
    /// # Errors
    /// A [`StorageError`] when the folder cannot be made.
    pub fn local(dir: &Path) -> Result<Self, StorageError> {
        let io = |source| StorageError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let dir = dir.canonicalize().map_err(io)?;
        let store = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|source| StorageError::Store { key: dir.display().to_string(), source })?;
        Ok(Self { store: Arc::new(store), root: String::new() })
    }

    fn path(&self, key: &str) -> ObjectPath {
        match self.root.is_empty() {
            true => ObjectPath::from(key),
            false => ObjectPath::from(format!("{}/{key}", self.root)),
        }
    }

    fn key_of(&self, path: &ObjectPath) -> String {
        let full = path.as_ref();
        match self.root.is_empty() {
            true => full.to_string(),
            false => full.strip_prefix(&format!("{}/", self.root)).unwrap_or(full).to_string(),
        }
    }

    fn fail(key: &str) -> impl FnOnce(object_store::Error) -> StorageError + '_ {
        move |source| match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.to_string()),
            source => StorageError::Store { key: key.to_string(), source },
        }
    }

    /// Stores `bytes` under `key`, replacing what was there.
    ///
    /// # Errors
    /// A [`StorageError`] when the write fails.
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store.put(&self.path(key), PutPayload::from(bytes)).await.map_err(Self::fail(key))?;
        Ok(())
    }

    /// Stores a local file under `key`, streaming it in parts.
    ///
    /// # Errors
    /// A [`StorageError`] when reading the file or writing the object fails.
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<u64, StorageError> {
        let io = |source| StorageError::Io { path: file.to_path_buf(), source };
        let mut reader = tokio::fs::File::open(file).await.map_err(io)?;
        let mut writer = BufWriter::new(Arc::clone(&self.store), self.path(key));
        let copied = tokio::io::copy(&mut reader, &mut writer).await;
        let copied = match copied {
            Ok(n) => n,
            Err(source) => {
                let _ = writer.abort().await;
                return Err(io(source));
            }
        };
        writer.shutdown().await.map_err(io)?;
        Ok(copied)
    }

    /// Reads the object under `key`.
    ///
    /// # Errors
    /// [`StorageError::NotFound`] when it does not exist, else a [`StorageError`].
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let result = self.store.get(&self.path(key)).await.map_err(Self::fail(key))?;
        result.bytes().await.map_err(Self::fail(key))
    }

    /// Copies the object under `key` into a local file (its folder is created).
    ///
    /// # Errors
    /// [`StorageError::NotFound`] when it does not exist, else a [`StorageError`].
    pub async fn get_to_file(&self, key: &str, file: &Path) -> Result<u64, StorageError> {
        let io = |source| StorageError::Io { path: file.to_path_buf(), source };
        if let Some(parent) = file.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        let result = self.store.get(&self.path(key)).await.map_err(Self::fail(key))?;
        let mut stream = result.into_stream();
        let mut out = tokio::fs::File::create(file).await.map_err(io)?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Self::fail(key))?;
            out.write_all(&chunk).await.map_err(io)?;
            written += chunk.len() as u64;
        }
        out.sync_all().await.map_err(io)?;
        Ok(written)
    }

    /// Whether an object exists under `key`.
    ///
    /// # Errors
    /// A [`StorageError`] when the store cannot be asked.
    pub async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(StorageError::Store { key: key.to_string(), source }),
        }
    }

    /// Keys of every object under `prefix` (a folder-like key without a trailing `/`).
    ///
    /// # Errors
    /// A [`StorageError`] when listing fails.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let path = self.path(prefix);
        let metas: Vec<_> =
            self.store.list(Some(&path)).try_collect().await.map_err(Self::fail(prefix))?;
        let mut keys: Vec<String> = metas.iter().map(|m| self.key_of(&m.location)).collect();
        keys.sort();
        Ok(keys)
    }

    /// Deletes the object under `key`; a missing object is not an error.
    ///
    /// # Errors
    /// A [`StorageError`] when the delete fails.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StorageError::Store { key: key.to_string(), source }),
        }
    }

    /// Deletes every object under `prefix`.
    ///
    /// # Errors
    /// A [`StorageError`] when listing or a delete fails.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let keys = self.list(prefix).await?;
        for key in &keys {
            self.delete(key).await?;
        }
        Ok(keys.len())
    }

    /// Uploads every file below `dir` to `prefix/<relative path>`. Returns the keys
    /// written.
    ///
    /// JSON files go last: an index such as a checkpoint's `state.json` names the other
    /// files, so a reader that sees it finds them all, even if the upload is cut short.
    ///
    /// # Errors
    /// A [`StorageError`] when a file cannot be read or written.
    pub async fn upload_dir(&self, dir: &Path, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut files = local_files(dir)?;
        files.sort_by_key(|f| f.extension().is_some_and(|e| e == "json"));
        for file in files {
            let relative = file.strip_prefix(dir).unwrap_or(&file);
            let key = format!("{prefix}/{}", slash_path(relative));
            self.put_file(&key, &file).await?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Downloads every object under `prefix` into `dir`, keeping the relative paths.
    /// Returns how many files were written.
    ///
    /// # Errors
    /// A [`StorageError`] when listing, reading or writing fails.
    pub async fn download_prefix(&self, prefix: &str, dir: &Path) -> Result<usize, StorageError> {
        let keys = self.list(prefix).await?;
        for key in &keys {
            let relative = key.strip_prefix(prefix).unwrap_or(key).trim_start_matches('/');
            self.get_to_file(key, &dir.join(relative)).await?;
        }
        Ok(keys.len())
    }
}

fn open_s3(config: &StorageConfig, rest: &str) -> Result<Storage, StorageError> {
    let (bucket, root) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(StorageError::UnsupportedUrl(config.url.clone()));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &config.s3_endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.s3_region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &config.s3_access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &config.s3_secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if config.s3_allow_http {
        builder = builder.with_allow_http(true);
    }
    let store = builder
        .build()
        .map_err(|source| StorageError::Store { key: config.url.clone(), source })?;
    Ok(Storage { store: Arc::new(store), root: root.trim_matches('/').to_string() })
}

/// Every regular file below `dir`, in a stable order.
fn local_files(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let io = |source| StorageError::Io { path: folder.clone(), source };
        for entry in std::fs::read_dir(&folder).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn slash_path(path: &Path) -> String {
    let parts: Vec<_> = path.components().map(|c| c.as_os_str().to_string_lossy()).collect();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(storage: &Storage) {
        storage.put_bytes("models/m1/manifest.json", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(storage.get_bytes("models/m1/manifest.json").await.unwrap().as_ref(), b"{}");
        assert!(storage.exists("models/m1/manifest.json").await.unwrap());
        assert!(matches!(storage.get_bytes("nope").await, Err(StorageError::NotFound(_))));

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/w.bin"), b"weights").unwrap();
        std::fs::write(dir.path().join("top.json"), b"1").unwrap();
        let keys = storage.upload_dir(dir.path(), "checkpoints/j1").await.unwrap();
        assert_eq!(keys, ["checkpoints/j1/a/b/w.bin", "checkpoints/j1/top.json"]);
        std::fs::write(dir.path().join("a/index.json"), b"{}").unwrap();
        let keys = storage.upload_dir(dir.path(), "ordered").await.unwrap();
        assert_eq!(keys[0], "ordered/a/b/w.bin", "json files go last: {keys:?}");

        let back = tempfile::tempdir().unwrap();
        assert_eq!(storage.download_prefix("checkpoints/j1", back.path()).await.unwrap(), 2);
        assert_eq!(std::fs::read(back.path().join("a/b/w.bin")).unwrap(), b"weights");
        assert_eq!(storage.delete_prefix("checkpoints/j1").await.unwrap(), 2);
        storage.delete_prefix("ordered").await.unwrap();
        assert!(storage.list("checkpoints/j1").await.unwrap().is_empty());
        storage.delete("checkpoints/j1/top.json").await.unwrap();
    }

    #[tokio::test]
    async fn local_folder_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig { url: dir.path().display().to_string(), ..Default::default() };
        round_trip(&Storage::open(&config).unwrap()).await;
        assert!(dir.path().join("models/m1/manifest.json").is_file());
    }

    #[tokio::test]
    async fn memory_round_trip_and_bad_urls() {
        let config = StorageConfig { url: "memory://".into(), ..Default::default() };
        round_trip(&Storage::open(&config).unwrap()).await;
        let bad = StorageConfig { url: "ftp://x".into(), ..Default::default() };
        assert!(matches!(Storage::open(&bad), Err(StorageError::UnsupportedUrl(_))));
    }

    /// On a real S3-compatible server when `DISTILLERY_TEST_S3_ENDPOINT` and
    /// `DISTILLERY_TEST_S3_BUCKET` are set (`.ci/run` starts one), under a fresh prefix.
    #[tokio::test]
    async fn s3_round_trip_when_a_server_is_given() {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (Some(endpoint), Some(bucket)) =
            (var("DISTILLERY_TEST_S3_ENDPOINT"), var("DISTILLERY_TEST_S3_BUCKET"))
        else {
            eprintln!("skipped: set DISTILLERY_TEST_S3_ENDPOINT and DISTILLERY_TEST_S3_BUCKET");
            return;
        };
        let config = StorageConfig {
            url: format!("s3://{bucket}/storage-test-{}", uuid::Uuid::now_v7().simple()),
            s3_allow_http: endpoint.starts_with("http://"),
            s3_endpoint: Some(endpoint),
            s3_region: Some(var("DISTILLERY_TEST_S3_REGION").unwrap_or("us-east-1".into())),
            s3_access_key_id: Some(
                var("DISTILLERY_TEST_S3_ACCESS_KEY_ID").unwrap_or("test".into()),
            ),
            s3_secret_access_key: var("DISTILLERY_TEST_S3_SECRET_ACCESS_KEY")
                .or(Some("test".into())),
        };
        round_trip(&Storage::open(&config).unwrap()).await;
    }

    #[test]
    fn s3_urls_build_without_contacting_the_server() {
        let config = StorageConfig {
            url: "s3://bucket/some/prefix".into(),
            s3_endpoint: Some("http://127.0.0.1:9000".into()),
            s3_region: Some("us-east-1".into()),
            s3_access_key_id: Some("key".into()),
            s3_secret_access_key: Some("secret".into()),
            s3_allow_http: true,
        };
        let storage = Storage::open(&config).unwrap();
        assert_eq!(storage.root, "some/prefix");
        assert_eq!(storage.path("models/x").as_ref(), "some/prefix/models/x");
        assert!(!format!("{config:?}").contains("secret\""));
    }
}
