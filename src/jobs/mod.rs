//! Training jobs: the worker pool that claims jobs from the queue in the database, runs
//! each on its own thread, keeps its lease alive, stores its progress and checkpoints, and
//! tells event listeners what happens.
//!
//! Flow of one job: `worker` claims it (atomically, with a lease), `runner` fetches its
//! data and last checkpoint from the object storage and starts the trainer on a named
//! thread, `lease` renews the lease and watches for a cancel request, and the runner
//! persists the trainer's events (`hub` broadcasts them) until the job ends.

mod hub;
mod lease;
mod recorder;
mod runner;
mod trainer;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use hub::{EventHub, JobEvent};
pub use trainer::{PipelineTrainer, Trainer};
pub use worker::WorkerPool;

use crate::domain::JobId;
use crate::ml::data::ReadLimits;
use crate::ml::progress::{CancelToken, StopReason};
use crate::storage::Storage;
use crate::store::Store;

/// How the training workers of one process behave.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Number of jobs trained at once by this process (0: none).
    pub workers: usize,
    /// How long a claimed job's lease lasts without renewal.
    pub lease: Duration,
    /// How often a running job's lease is renewed and its cancel flag read.
    pub heartbeat: Duration,
    /// How often an idle worker looks for queued jobs.
    pub poll_interval: Duration,
    /// Least time between two progress writes of one job (epochs are always written).
    pub progress_interval: Duration,
    /// Local folder for work files (data, checkpoints, model output).
    pub work_dir: PathBuf,
    /// Limits used when reading stored datasets back.
    pub read_limits: ReadLimits,
    /// Folder of pretrained transformer folders, for transformer teachers.
    pub pretrained_dir: Option<PathBuf>,
    /// Nice value of training threads (0: the same priority as serving).
    pub train_nice: i32,
}

/// Storage key of a dataset's rows (normalised to JSON lines).
pub fn dataset_key(id: &crate::domain::DatasetId) -> String {
    format!("datasets/{id}.jsonl")
}

/// Storage prefix of a model's files.
pub fn model_prefix(id: &crate::domain::ModelId) -> String {
    format!("models/{id}")
}

/// Storage prefix of a job's checkpoints.
pub fn checkpoint_prefix(id: &JobId) -> String {
    format!("checkpoints/{id}")
}

/// The jobs running in this process, by id, with the tokens that stop them.
#[derive(Debug, Default)]
pub struct RunningJobs {
    tokens: Mutex<HashMap<JobId, CancelToken>>,
    /// Worker tasks of this process that are alive (for `/ready`).
    alive_workers: AtomicUsize,
}

impl RunningJobs {
    fn insert(&self, id: &JobId, token: CancelToken) {
        self.lock().insert(id.clone(), token);
    }

    fn remove(&self, id: &JobId) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, CancelToken>> {
        // A poisoned map still holds valid tokens: no code panics while holding it.
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the job if it runs here; returns whether it did.
    pub fn stop(&self, id: &JobId, reason: StopReason) -> bool {
        self.lock().get(id).map(|token| token.stop(reason)).is_some()
    }

    /// Stops every job running here.
    pub fn stop_all(&self, reason: StopReason) {
        self.lock().values().for_each(|token| token.stop(reason));
    }

    /// How many jobs run here now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no job runs here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many worker tasks of this process are alive.
    pub fn alive_workers(&self) -> usize {
        self.alive_workers.load(Ordering::SeqCst)
    }
}

/// What the workers share: the database, the storage, listeners and the trainer.
#[derive(Clone)]
pub struct JobContext {
    /// The database.
    pub store: Store,
    /// The object storage.
    pub storage: Storage,
    /// Event listeners of running jobs.
    pub hub: Arc<EventHub>,
    /// Jobs running in this process.
    pub running: Arc<RunningJobs>,
    /// Wakes idle workers when a job is queued by this process.
    pub wake: Arc<tokio::sync::Notify>,
    /// The training core.
    pub trainer: Arc<dyn Trainer>,
    /// Worker behaviour.
    pub settings: WorkerSettings,
}

/// Why a job could not be prepared, run or stored.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The object storage failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A stored dataset cannot be read back.
    #[error("stored dataset {id} is unreadable")]
    Dataset {
        /// The dataset.
        id: crate::domain::DatasetId,
        /// The cause.
        #[source]
        source: crate::ml::data::DataError,
    },
    /// A dataset or model the job needs no longer exists.
    #[error("{0} no longer exists")]
    Missing(String),
    /// A local work file cannot be written.
    #[error("work folder i/o failed at {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The training thread cannot be started.
    #[error("cannot start the training thread")]
    Spawn(#[source] std::io::Error),
}
