//! What every handler can reach: the database, the storage, the jobs, the models.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::jobs::JobContext;
use crate::serving::ModelServer;
use crate::storage::Storage;
use crate::store::Store;

/// Limits on what a request may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest dataset upload, in bytes.
    pub max_upload_bytes: u64,
    /// Largest JSON body of any other request, in bytes.
    pub max_body_bytes: usize,
    /// Most rows in one dataset.
    pub max_rows: usize,
    /// Longest text (in a dataset or a prediction request), in bytes.
    pub max_text_bytes: usize,
    /// Most texts in one prediction request.
    pub max_predict_texts: usize,
    /// Most items in one page of a listing.
    pub max_page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 256 << 20,
            max_body_bytes: 2 << 20,
            max_rows: 2_000_000,
            max_text_bytes: 20_000,
            max_predict_texts: 256,
            max_page_size: 200,
        }
    }
}

/// The API key that callers must present; compared in constant time, never printed.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; an empty one means no key.
    pub fn new(key: &str) -> Option<Self> {
        (!key.is_empty()).then(|| Self(key.to_string()))
    }

    /// Whether `given` is the key, without leaking where they differ or how long the key
    /// is: the time taken depends on the key's length alone.
    pub fn matches(&self, given: &str) -> bool {
        let (key, given) = (self.0.as_bytes(), given.as_bytes());
        let mut padded = vec![0u8; key.len()];
        let shared = given.len().min(key.len());
        padded[..shared].copy_from_slice(&given[..shared]);
        let same_length = (given.len() as u64).ct_eq(&(key.len() as u64));
        (padded.as_slice().ct_eq(key) & same_length).into()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Whether the process can take work (for `/ready`).
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
}

impl Readiness {
    /// Marks the process as shutting down.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The object storage.
    pub storage: Storage,
    /// Workers, event listeners and running jobs.
    pub jobs: JobContext,
    /// Loaded models and their batchers.
    pub models: Arc<ModelServer>,
    /// Request limits.
    pub limits: Limits,
    /// The API key, when one is required.
    pub api_key: Option<ApiKey>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Process readiness.
    pub readiness: Arc<Readiness>,
    /// Cancelled when the process begins to shut down (ends event streams).
    pub shutdown: CancellationToken,
    /// Folder for uploads in progress.
    pub tmp_dir: PathBuf,
    /// How often event streams read a job's stored state.
    pub events_poll: Duration,
    /// Whether this process serves the public API (false for `distillery worker`).
    pub public_api: bool,
}

#[cfg(test)]
mod tests {
    use super::ApiKey;

    #[test]
    fn the_key_matches_itself_only() {
        let key = ApiKey::new("s3cret-key").expect("a key");
        assert!(key.matches("s3cret-key"));
        for wrong in ["", "s3cret", "s3cret-key!", "s3cret-kez", "S3CRET-KEY", "s3cret-key\0"] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
        assert!(ApiKey::new("").is_none());
    }
}
