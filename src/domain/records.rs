//! The records kept for datasets, jobs and models, as the store reads and writes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{DatasetId, JobId, JobStatus, ModelId, WorkerId};
use crate::ml::config::JobConfig;
use crate::ml::data::Example;
use crate::ml::manifest::{Manifest, NetworkEntry, Role};
use crate::ml::progress::{EpochReport, LossTerms, Phase, Progress};

/// An uploaded dataset, stored as JSON lines under `datasets/<id>.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// Its id.
    pub id: DatasetId,
    /// The name given at upload.
    pub name: String,
    /// The format it was uploaded in (`jsonl` or `csv`).
    pub format: String,
    /// Number of rows.
    pub rows: i64,
    /// Rows per label name.
    pub labels: BTreeMap<String, i64>,
    /// Rows without a label.
    pub unlabelled: i64,
    /// Size of the upload in bytes.
    pub size_bytes: i64,
    /// The first few rows.
    pub sample: Vec<Example>,
    /// Upload time, milliseconds since the epoch.
    pub created_at: i64,
}

/// Where a running job stands, as last reported by its worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Current phase.
    pub phase: Option<Phase>,
    /// Epoch of the phase, from 1.
    pub epoch: usize,
    /// Epochs of the phase.
    pub epochs: usize,
    /// Step within the epoch, from 1.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Fraction of the whole job done, from 0 to 1.
    pub fraction: f64,
    /// Training rows per second.
    pub examples_per_second: f64,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
    /// Running loss of the current epoch.
    pub loss: Option<LossTerms>,
    /// Seconds each finished phase took (in this run of the job; a resumed phase counts
    /// the run that finished it).
    #[serde(default)]
    pub phase_seconds: BTreeMap<Phase, f64>,
}

impl JobProgress {
    /// Takes in a progress report from the trainer.
    pub fn apply(&mut self, report: &Progress) {
        *self = JobProgress {
            phase: Some(report.phase),
            epoch: report.epoch,
            epochs: report.epochs,
            step: report.step,
            steps: report.steps,
            fraction: report.fraction.clamp(0.0, 1.0),
            examples_per_second: report.examples_per_second,
            eta_seconds: report.eta_seconds.is_finite().then_some(report.eta_seconds),
            loss: Some(report.loss),
            phase_seconds: std::mem::take(&mut self.phase_seconds),
        };
    }
}

/// Epoch reports of a job so far, in the order they came.
pub type PhaseMetrics = Vec<EpochReport>;

/// A training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its state.
    pub status: JobStatus,
    /// The training rows.
    pub dataset_id: DatasetId,
    /// The validation rows, when given.
    pub validation_dataset_id: Option<DatasetId>,
    /// What to train and how.
    pub config: JobConfig,
    /// The model whose files the job needs: the one whose teacher it reuses
    /// (`teacher.model_id`), or that of the job whose transfer set it reuses
    /// (`teacher.job_id`). It cannot be deleted while the job is queued or running.
    pub teacher_model_id: Option<ModelId>,
    /// Progress as last reported.
    pub progress: JobProgress,
    /// Epoch reports so far.
    pub metrics: PhaseMetrics,
    /// Why it failed, for a failed job.
    pub error: Option<String>,
    /// The model it made, for a succeeded job.
    pub model_id: Option<ModelId>,
    /// Whether a user asked to cancel it.
    pub cancel_requested: bool,
    /// The worker holding its lease while it runs.
    pub lease_owner: Option<WorkerId>,
    /// When the lease runs out, milliseconds since the epoch.
    pub lease_expires_at: Option<i64>,
    /// How many times a worker claimed it.
    pub attempts: i64,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// Last change, milliseconds since the epoch.
    pub updated_at: i64,
    /// First claim, milliseconds since the epoch.
    pub started_at: Option<i64>,
    /// End, milliseconds since the epoch.
    pub finished_at: Option<i64>,
}

/// A trained model, stored under `models/<id>/`.
///
/// The row keeps what listings need; the full manifest (tokenizer included) stays in the
/// object storage beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Its id.
    pub id: ModelId,
    /// The job that made it.
    pub job_id: JobId,
    /// Label names, by class index.
    pub labels: Vec<String>,
    /// The student network.
    pub student: NetworkEntry,
    /// The recurrent teacher, when the model holds one.
    pub teacher: Option<NetworkEntry>,
    /// The configuration of the job that made it.
    pub config: JobConfig,
    /// Size of the student's weights in bytes.
    pub student_bytes: i64,
    /// Size of the teacher's weights in bytes, when it has a teacher.
    pub teacher_bytes: Option<i64>,
    /// Creation time, milliseconds since the epoch.
    pub created_at: i64,
    /// When it was last promoted to be the default model.
    pub promoted_at: Option<i64>,
}

impl ModelRecord {
    /// The record of a model freshly written by `job_id`.
    pub fn from_manifest(id: ModelId, job_id: JobId, manifest: &Manifest, now: i64) -> Self {
        let size = |entry: &NetworkEntry| i64::try_from(entry.size_bytes).unwrap_or(i64::MAX);
        Self {
            id,
            job_id,
            labels: manifest.labels.clone(),
            student: manifest.student.clone(),
            teacher: manifest.teacher.clone(),
            config: manifest.job.clone(),
            student_bytes: size(&manifest.student),
            teacher_bytes: manifest.teacher.as_ref().map(size),
            created_at: now,
            promoted_at: None,
        }
    }

    /// Whether the model holds a network of this role.
    pub fn has_role(&self, role: Role) -> bool {
        match role {
            Role::Student => true,
            Role::Teacher => self.teacher.is_some(),
        }
    }
}
