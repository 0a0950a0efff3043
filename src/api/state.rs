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

    /// Whether `given` is the key, without leaking where they differ.
    pub fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
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
    workers_down: AtomicBool,
}

impl Readiness {
    /// Marks the process as shutting down.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Records whether the training workers are all alive.
    pub fn set_workers_up(&self, up: bool) {
        self.workers_down.store(!up, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether the training workers are all alive.
    pub fn workers_up(&self) -> bool {
        !self.workers_down.load(Ordering::SeqCst)
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
