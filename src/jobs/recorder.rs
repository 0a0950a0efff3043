//! From the training thread to the database, the storage and the listeners.
//!
//! [`ChannelObserver`] runs on the training thread: it forwards events over a bounded
//! channel, dropping progress reports when the channel is full (the next one supersedes
//! them) but never epochs or checkpoints. A checkpoint is first copied aside, so that the
//! trainer can move on while the copy is uploaded. [`Recorder`] runs on the runtime and
//! handles each message in order.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{checkpoint_prefix, JobContext, JobEvent};
use crate::domain::{now_millis, JobId, JobProgress, JobRecord, PhaseMetrics, WorkerId};
use crate::ml::progress::{CancelToken, EpochReport, Observer, Phase, StopReason, TrainEvent};

/// What the training thread sends to the recorder.
#[derive(Debug)]
pub(super) enum Message {
    /// An event to record as it is.
    Event(TrainEvent),
    /// A checkpoint copied aside, ready to upload.
    Checkpoint {
        /// Phase of the checkpoint.
        phase: Phase,
        /// Last finished epoch.
        epoch: usize,
        /// The copy.
        staged: PathBuf,
        /// Where the checkpoint lies inside the work folder (its storage sub-key).
        relative: String,
    },
}

/// Forwards the trainer's events from the training thread.
pub(super) struct ChannelObserver {
    sender: mpsc::Sender<Message>,
    work: PathBuf,
    staging: PathBuf,
    copies: AtomicUsize,
}

impl ChannelObserver {
    pub(super) fn new(sender: mpsc::Sender<Message>, work: &Path, staging: &Path) -> Self {
        Self {
            sender,
            work: work.to_path_buf(),
            staging: staging.to_path_buf(),
            copies: AtomicUsize::new(0),
        }
    }

    fn stage(&self, dir: &Path) -> std::io::Result<(PathBuf, String)> {
        let n = self.copies.fetch_add(1, Ordering::Relaxed);
        let staged = self.staging.join(n.to_string());
        copy_dir(dir, &staged)?;
        let relative = dir.strip_prefix(&self.work).unwrap_or(Path::new(""));
        let parts: Vec<_> =
            relative.components().map(|c| c.as_os_str().to_string_lossy()).collect();
        Ok((staged, parts.join("/")))
    }
}

impl Observer for ChannelObserver {
    fn on_event(&self, event: &TrainEvent) {
        let message = match event {
            TrainEvent::Progress(_) => {
                // A dropped report is superseded by the next one.
                let _ = self.sender.try_send(Message::Event(event.clone()));
                return;
            }
            TrainEvent::Checkpoint { phase, epoch, dir } => match self.stage(dir) {
                Ok((staged, relative)) => {
                    Message::Checkpoint { phase: *phase, epoch: *epoch, staged, relative }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "cannot copy the checkpoint aside");
                    return;
                }
            },
            other => Message::Event(other.clone()),
        };
        // We are on the training thread, never on the runtime, so waiting here is fine.
        let _ = self.sender.blocking_send(message);
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Records one job's events.
pub(super) struct Recorder<'a> {
    ctx: &'a JobContext,
    worker: &'a WorkerId,
    id: JobId,
    token: CancelToken,
    progress: JobProgress,
    metrics: PhaseMetrics,
    last_save: Option<Instant>,
    dirty: bool,
}

impl<'a> Recorder<'a> {
    pub(super) fn new(
        ctx: &'a JobContext,
        worker: &'a WorkerId,
        job: &JobRecord,
        token: &CancelToken,
    ) -> Self {
        Self {
            ctx,
            worker,
            id: job.id.clone(),
            token: token.clone(),
            progress: job.progress.clone(),
            metrics: job.metrics.clone(),
            last_save: None,
            dirty: false,
        }
    }

    /// Handles one message: updates the state, tells listeners, saves or uploads.
    pub(super) async fn record(&mut self, message: Message) {
        match message {
            Message::Event(event) => self.record_event(event).await,
            Message::Checkpoint { phase, epoch, staged, relative } => {
                self.upload(&staged, &relative).await;
                let dir = PathBuf::from(relative);
                self.publish(TrainEvent::Checkpoint { phase, epoch, dir });
            }
        }
    }

    async fn record_event(&mut self, event: TrainEvent) {
        let force = match &event {
            TrainEvent::Progress(report) => {
                self.progress.apply(report);
                metrics::gauge!("distillery_train_examples_per_second")
                    .set(report.examples_per_second);
                false
            }
            TrainEvent::Epoch(report) => {
                self.add_epoch(report);
                true
            }
            TrainEvent::PhaseStarted { phase } => {
                tracing::info!(phase = ?phase, "phase started");
                self.progress.phase = Some(*phase);
                true
            }
            TrainEvent::PhaseFinished { phase, seconds } => {
                tracing::info!(phase = ?phase, seconds, "phase finished");
                self.progress.phase_seconds.insert(*phase, *seconds);
                true
            }
            TrainEvent::Checkpoint { .. } => true,
        };
        self.dirty = true;
        self.publish(event);
        self.save(force).await;
    }

    fn add_epoch(&mut self, report: &EpochReport) {
        tracing::info!(
            phase = ?report.phase,
            epoch = report.epoch,
            loss = report.loss.total,
            valid_accuracy = report.valid_accuracy,
            "epoch finished"
        );
        metrics::counter!("distillery_train_epochs_total").increment(1);
        // A resumed run may report an epoch again; the newer report replaces the older.
        self.metrics.retain(|r| !(r.phase == report.phase && r.epoch == report.epoch));
        self.metrics.push(report.clone());
    }

    fn publish(&self, event: TrainEvent) {
        self.ctx.hub.publish(&self.id, JobEvent::Train(event));
    }

    /// Writes the progress when forced, or when the last write is old enough.
    async fn save(&mut self, force: bool) {
        let interval = self.ctx.settings.progress_interval;
        let due = self.last_save.is_none_or(|at| at.elapsed() >= interval);
        if !self.dirty || !(force || due) {
            return;
        }
        let saved = self
            .ctx
            .store
            .save_progress(&self.id, self.worker, &self.progress, &self.metrics, now_millis())
            .await;
        match saved {
            Ok(true) => {}
            Ok(false) => self.token.stop(StopReason::Interrupted),
            Err(error) => tracing::warn!(error = %error, "cannot save progress"),
        }
        self.last_save = Some(Instant::now());
        self.dirty = false;
    }

    /// Saves what is left unsaved.
    pub(super) async fn flush(&mut self) {
        self.save(true).await;
    }

    /// Uploads a staged checkpoint, then drops stored files the trainer has removed.
    async fn upload(&self, staged: &Path, relative: &str) {
        let base = checkpoint_prefix(&self.id);
        let prefix = if relative.is_empty() { base } else { format!("{base}/{relative}") };
        let started = Instant::now();
        match self.ctx.storage.upload_dir(staged, &prefix).await {
            Ok(keys) => {
                tracing::info!(
                    files = keys.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "checkpoint stored"
                );
                self.prune(&prefix, &keys).await;
            }
            Err(error) => tracing::warn!(error = %error, "cannot store the checkpoint"),
        }
        let _ = tokio::fs::remove_dir_all(staged).await;
    }

    /// Deletes stored files of this checkpoint that the copy just stored no longer has.
    ///
    /// Only the complete copy decides: the live work folder may already be an epoch
    /// ahead of what the storage holds.
    async fn prune(&self, prefix: &str, kept: &[String]) {
        let Ok(stored) = self.ctx.storage.list(prefix).await else { return };
        for key in stored.iter().filter(|k| !kept.contains(k)) {
            let _ = self.ctx.storage.delete(key).await;
        }
    }
}
