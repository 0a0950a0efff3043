//! Runs one claimed job from start to end.
//!
//! 1. Fetch the job's data (and a reused teacher) from the object storage, and the last
//!    checkpoint of an earlier attempt, into a fresh local work folder.
//! 2. Start the trainer on a named thread; keep the lease alive meanwhile.
//! 3. Record the trainer's events as they come: progress to the database (throttled),
//!    epochs always, every event to the listeners, and each checkpoint to the storage.
//! 4. Store the outcome: the model and `succeeded`, `failed`, `canceled`, or back to
//!    `queued` when the process is shutting down. A worker that lost its lease writes
//!    nothing, since another worker owns the job now.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::Instrument;

use super::lease::LeaseKeeper;
use super::recorder::Recorder;
use super::{checkpoint_prefix, dataset_key, model_prefix, JobContext, JobError, JobEvent};
use crate::domain::{now_millis, DatasetId, JobRecord, ModelId, ModelRecord, WorkerId};
use crate::ml::data::{read_json_lines, Example};
use crate::ml::manifest::Manifest;
use crate::ml::pipeline::{JobInputs, TrainError};
use crate::ml::progress::{CancelToken, StopReason};
use crate::store::JobOutcome;

/// Messages buffered between the training thread and the recorder.
const EVENT_CAPACITY: usize = 1024;

/// What the training thread gave back: the trainer's result, or a panic.
type ThreadResult = Result<Result<Manifest, TrainError>, String>;

/// The local folders of one job.
struct JobDirs {
    root: PathBuf,
    work: PathBuf,
    out: PathBuf,
    teacher: PathBuf,
    transfer: PathBuf,
    staging: PathBuf,
}

impl JobDirs {
    fn new(base: &Path, job: &JobRecord) -> Self {
        let root = base.join(job.id.as_str());
        Self {
            work: root.join("work"),
            out: root.join("out"),
            teacher: root.join("teacher"),
            transfer: root.join("transfer"),
            staging: root.join("staging"),
            root,
        }
    }

    async fn create_fresh(&self) -> Result<(), JobError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JobError::Io { path, source }
        };
        if tokio::fs::try_exists(&self.root).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&self.root).await.map_err(io(&self.root))?;
        }
        for dir in [&self.work, &self.out, &self.staging] {
            tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        }
        Ok(())
    }

    async fn remove(&self) {
        if let Err(error) = tokio::fs::remove_dir_all(&self.root).await {
            tracing::debug!(error = %error, "work folder not removed");
        }
    }
}

/// Runs a job that `worker` has just claimed, inside a span carrying the job's id.
pub(super) async fn run_job(ctx: &JobContext, worker: &WorkerId, job: JobRecord) {
    let span = tracing::info_span!("job", job.id = %job.id, attempt = job.attempts);
    run_claimed(ctx, worker, job).instrument(span).await;
}

async fn run_claimed(ctx: &JobContext, worker: &WorkerId, job: JobRecord) {
    tracing::info!(dataset.id = %job.dataset_id, "job started");
    ctx.hub.publish(&job.id, JobEvent::Status(Box::new(job.clone())));
    let token = CancelToken::new();
    ctx.running.insert(&job.id, token.clone());
    let keeper = LeaseKeeper::start(ctx, &job.id, worker, token.clone());
    let dirs = JobDirs::new(&ctx.settings.work_dir, &job);

    let result = train(ctx, worker, &job, &dirs, &token).await;
    let outcome = match result {
        Ok(thread_result) => outcome_of(ctx, &job, &dirs, thread_result).await,
        Err(error) => Some(setup_failure(&error)),
    };

    let lost = keeper.stop().await;
    ctx.running.remove(&job.id);
    match outcome {
        Some(outcome) if !lost => store_outcome(ctx, worker, &job, outcome).await,
        _ => tracing::warn!("job left to the worker that holds its lease"),
    }
    dirs.remove().await;
}

/// Steps 1 to 3: prepare, train on a thread, record events until the thread ends.
async fn train(
    ctx: &JobContext,
    worker: &WorkerId,
    job: &JobRecord,
    dirs: &JobDirs,
    token: &CancelToken,
) -> Result<ThreadResult, JobError> {
    dirs.create_fresh().await?;
    let inputs = load_inputs(ctx, job, dirs).await?;
    let restored = ctx.storage.download_prefix(&checkpoint_prefix(&job.id), &dirs.work).await?;
    if restored > 0 {
        tracing::info!(files = restored, "resuming from the stored checkpoint");
    }

    let (events, mut receiver) = tokio::sync::mpsc::channel(EVENT_CAPACITY);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let observer = super::recorder::ChannelObserver::new(events, &dirs.work, &dirs.staging);
    let (trainer, config, stop) = (Arc::clone(&ctx.trainer), job.config.clone(), token.clone());
    let (work, out) = (dirs.work.clone(), dirs.out.clone());
    let span = tracing::Span::current();
    let nice = ctx.settings.train_nice;
    std::thread::Builder::new()
        .name(format!("train-{}", short_id(job.id.as_str())))
        .spawn(move || {
            let _entered = span.enter();
            if let Err(error) = crate::ml::threads::set_this_thread_nice(nice) {
                tracing::warn!(%error, nice, "cannot lower the training thread's priority");
            }
            let run = || trainer.train(&config, inputs, &work, &out, &observer, &stop);
            let result = std::panic::catch_unwind(AssertUnwindSafe(run)).map_err(panic_text);
            drop(observer);
            let _ = done_tx.send(result);
        })
        .map_err(JobError::Spawn)?;

    let mut recorder = Recorder::new(ctx, worker, job, token);
    while let Some(message) = receiver.recv().await {
        recorder.record(message).await;
    }
    recorder.flush().await;
    Ok(done_rx.await.unwrap_or_else(|_| Err("the training thread vanished".to_string())))
}

async fn load_inputs(
    ctx: &JobContext,
    job: &JobRecord,
    dirs: &JobDirs,
) -> Result<JobInputs, JobError> {
    let train = load_dataset(ctx, &job.dataset_id).await?;
    let valid = match &job.validation_dataset_id {
        Some(id) => Some(load_dataset(ctx, id).await?),
        None => None,
    };
    let teacher_model = match job.config.teacher.model_id.clone().map(ModelId::from_string) {
        Some(id) => {
            let files = ctx.storage.download_prefix(&model_prefix(&id), &dirs.teacher).await?;
            if files == 0 {
                return Err(JobError::Missing(format!("model {id}")));
            }
            Some(dirs.teacher.clone())
        }
        None => None,
    };
    let transfer_model = match &job.config.teacher.job_id {
        Some(id) => Some(download_job_model(ctx, id, &dirs.transfer).await?),
        None => None,
    };
    Ok(JobInputs {
        train,
        valid,
        teacher_model,
        transfer_model,
        pretrained_dir: ctx.settings.pretrained_dir.clone(),
    })
}

/// Downloads the model of the earlier job `id`, whose transfer set a new student reuses.
async fn download_job_model(ctx: &JobContext, id: &str, dir: &Path) -> Result<PathBuf, JobError> {
    let job_id = crate::domain::JobId::from_string(id.to_string());
    let model_id = match ctx.store.job(&job_id).await? {
        Some(JobRecord { model_id: Some(model_id), .. }) => model_id,
        _ => return Err(JobError::Missing(format!("model of job {id}"))),
    };
    let files = ctx.storage.download_prefix(&model_prefix(&model_id), dir).await?;
    if files == 0 {
        return Err(JobError::Missing(format!("model {model_id}")));
    }
    Ok(dir.to_path_buf())
}

async fn load_dataset(ctx: &JobContext, id: &DatasetId) -> Result<Vec<Example>, JobError> {
    let bytes = match ctx.storage.get_bytes(&dataset_key(id)).await {
        Err(crate::storage::StorageError::NotFound(_)) => {
            return Err(JobError::Missing(format!("dataset {id}")))
        }
        other => other?,
    };
    let limits = ctx.settings.read_limits;
    let parsed =
        tokio::task::spawn_blocking(move || read_json_lines(bytes.as_ref(), &limits)).await;
    let parsed = parsed.map_err(|e| JobError::Missing(format!("dataset {id} ({e})")))?;
    parsed.map_err(|source| JobError::Dataset { id: id.clone(), source })
}

/// Step 4a: turns the thread's result into the outcome to store (`None`: write nothing).
async fn outcome_of(
    ctx: &JobContext,
    job: &JobRecord,
    dirs: &JobDirs,
    result: ThreadResult,
) -> Option<JobOutcome> {
    match result {
        Ok(Ok(manifest)) => Some(publish_model(ctx, job, dirs, &manifest).await),
        Ok(Err(TrainError::Stopped(StopReason::Canceled))) => Some(JobOutcome::Canceled),
        Ok(Err(TrainError::Stopped(StopReason::Interrupted))) => Some(JobOutcome::Requeued),
        Ok(Err(error)) => Some(JobOutcome::Failed(train_failure(&error))),
        Err(panic) => {
            tracing::error!(panic = %panic, "training thread panicked");
            Some(JobOutcome::Failed("training crashed (internal error)".to_string()))
        }
    }
}

/// Uploads the finished model's files; the record is stored with the job's new state.
async fn publish_model(
    ctx: &JobContext,
    job: &JobRecord,
    dirs: &JobDirs,
    manifest: &Manifest,
) -> JobOutcome {
    let id = ModelId::generate();
    if let Err(error) = ctx.storage.upload_dir(&dirs.out, &model_prefix(&id)).await {
        tracing::error!(error = %error, "cannot store the trained model");
        return JobOutcome::Failed("cannot store the trained model (internal error)".into());
    }
    let record = ModelRecord::from_manifest(id, job.id.clone(), manifest, now_millis());
    JobOutcome::Succeeded(Box::new(record))
}

/// Step 4b: writes the outcome, tells listeners, and drops what is no longer needed.
async fn store_outcome(ctx: &JobContext, worker: &WorkerId, job: &JobRecord, outcome: JobOutcome) {
    let held = match ctx.store.finish_job(&job.id, worker, &outcome, now_millis()).await {
        Ok(held) => held,
        Err(error) => {
            // The lease runs out and another attempt takes the job up again.
            tracing::error!(error = %error, "cannot store the job's outcome");
            return;
        }
    };
    if !held {
        if let JobOutcome::Succeeded(model) = &outcome {
            let _ = ctx.storage.delete_prefix(&model_prefix(&model.id)).await;
        }
        tracing::warn!("lease lost before the outcome was stored");
        return;
    }
    if matches!(outcome, JobOutcome::Succeeded(_)) {
        if let Err(error) = ctx.storage.delete_prefix(&checkpoint_prefix(&job.id)).await {
            tracing::warn!(error = %error, "checkpoints of a finished job not removed");
        }
    }
    announce(ctx, job).await;
}

async fn announce(ctx: &JobContext, job: &JobRecord) {
    match ctx.store.job(&job.id).await {
        Ok(Some(record)) => {
            tracing::info!(status = %record.status, model.id = ?record.model_id, "job ended");
            metrics::counter!("distillery_jobs_finished_total", "status" => record.status.as_str())
                .increment(1);
            ctx.hub.publish(&job.id, JobEvent::Status(Box::new(record)));
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(error = %error, "cannot read the job back"),
    }
}

fn setup_failure(error: &JobError) -> JobOutcome {
    match error {
        JobError::Missing(what) => {
            tracing::info!(error = %error, "job input missing");
            JobOutcome::Failed(format!("{what} no longer exists"))
        }
        _ => {
            tracing::error!(error = ?error, "job setup failed");
            JobOutcome::Failed("job setup failed (internal error)".to_string())
        }
    }
}

/// The message a user sees for a failed run; internal causes stay in the log.
fn train_failure(error: &TrainError) -> String {
    match error {
        TrainError::Config(_)
        | TrainError::Data(_)
        | TrainError::Device(_)
        | TrainError::NonFinite { .. } => {
            tracing::info!(error = %error, "training failed");
            error.to_string()
        }
        TrainError::Io { .. } | TrainError::Candle(_) | TrainError::Stopped(_) => {
            tracing::error!(error = ?error, "training failed");
            "training failed (internal error)".to_string()
        }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn short_id(id: &str) -> &str {
    let start = id.len().saturating_sub(8);
    id.get(start..).unwrap_or(id)
}
