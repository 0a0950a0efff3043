//! Wire types of the API: what requests hold and responses show.
//!
//! They are built from the domain records and never leak storage details (local paths,
//! leases). Timestamps are RFC 3339 strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{
    format_millis, DatasetRecord, ErrorCode, JobProgress, JobRecord, JobStatus, ModelRecord,
};
use crate::ml::config::JobConfig;
use crate::ml::data::Example;
use crate::ml::manifest::{NetworkEntry, Role};
use crate::ml::progress::{EpochReport, Phase};

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A stable code and a message for people.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and, for client errors, how to fix it.
    pub message: String,
}

/// Paging of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Items per page (default 50).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobListQuery {
    /// Only jobs in this state.
    pub status: Option<String>,
    /// Items per page (default 50).
    pub limit: Option<usize>,
    /// Items to skip.
    pub offset: Option<usize>,
}

/// Query of `POST /v1/datasets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetUploadQuery {
    /// Name of the dataset.
    pub name: String,
}

/// A dataset.
#[derive(Debug, Serialize, Deserialize)]
pub struct DatasetView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Upload format: `jsonl` or `csv`.
    pub format: String,
    /// Number of rows.
    pub rows: i64,
    /// Rows per label.
    pub labels: BTreeMap<String, i64>,
    /// Rows without a label.
    pub unlabelled: i64,
    /// Upload size in bytes.
    pub size_bytes: i64,
    /// Upload time.
    pub created_at: String,
    /// The first rows (only when one dataset is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<Vec<Example>>,
}

impl DatasetView {
    /// The view of a record, with or without its sample rows.
    pub fn from_record(record: DatasetRecord, with_sample: bool) -> Self {
        Self {
            id: record.id.to_string(),
            name: record.name,
            format: record.format,
            rows: record.rows,
            labels: record.labels,
            unlabelled: record.unlabelled,
            size_bytes: record.size_bytes,
            created_at: format_millis(record.created_at),
            sample: with_sample.then_some(record.sample),
        }
    }
}

/// A page of datasets.
#[derive(Debug, Serialize, Deserialize)]
pub struct DatasetList {
    /// The datasets, newest first.
    pub datasets: Vec<DatasetView>,
    /// Offset of the next page, when there may be one.
    pub next_offset: Option<usize>,
}

/// Epoch reports of a job, by phase.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MetricsByPhase {
    /// The teacher's epochs.
    pub teacher: Vec<EpochReport>,
    /// The student's epochs.
    pub student: Vec<EpochReport>,
}

impl MetricsByPhase {
    fn from_reports(reports: Vec<EpochReport>) -> Self {
        let (teacher, student) = reports.into_iter().partition(|r| r.phase == Phase::Teacher);
        Self { teacher, student }
    }
}

/// A job and where it stands.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// Its state.
    pub status: JobStatus,
    /// The training rows.
    pub dataset_id: String,
    /// The validation rows, when given.
    pub validation_dataset_id: Option<String>,
    /// The configuration, defaults filled in.
    pub config: JobConfig,
    /// Current phase.
    pub phase: Option<Phase>,
    /// Epoch of the phase, from 1.
    pub epoch: usize,
    /// Epochs of the phase.
    pub epochs: usize,
    /// Step within the epoch.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Fraction of the job done, 0 to 1.
    pub progress: f64,
    /// Training rows per second.
    pub examples_per_second: f64,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
    /// Seconds of each finished phase (`prepare`, `teacher`, `labeling`, `student`,
    /// `finalize`).
    pub phase_seconds: std::collections::BTreeMap<Phase, f64>,
    /// Epoch metrics so far, by phase.
    pub metrics: MetricsByPhase,
    /// Why it failed.
    pub error: Option<String>,
    /// The model it made.
    pub model_id: Option<String>,
    /// Whether a cancel was asked for.
    pub cancel_requested: bool,
    /// How many times a worker took it up.
    pub attempts: i64,
    /// Creation time.
    pub created_at: String,
    /// First start.
    pub started_at: Option<String>,
    /// End.
    pub finished_at: Option<String>,
}

impl From<JobRecord> for JobView {
    fn from(job: JobRecord) -> Self {
        let progress = if job.status == JobStatus::Succeeded { 1.0 } else { job.progress.fraction };
        Self {
            id: job.id.to_string(),
            status: job.status,
            dataset_id: job.dataset_id.to_string(),
            validation_dataset_id: job.validation_dataset_id.map(|d| d.to_string()),
            config: job.config,
            phase: job.progress.phase,
            epoch: job.progress.epoch,
            epochs: job.progress.epochs,
            step: job.progress.step,
            steps: job.progress.steps,
            progress,
            examples_per_second: job.progress.examples_per_second,
            eta_seconds: job.progress.eta_seconds,
            phase_seconds: job.progress.phase_seconds,
            metrics: MetricsByPhase::from_reports(job.metrics),
            error: job.error,
            model_id: job.model_id.map(|m| m.to_string()),
            cancel_requested: job.cancel_requested,
            attempts: job.attempts,
            created_at: format_millis(job.created_at),
            started_at: job.started_at.map(format_millis),
            finished_at: job.finished_at.map(format_millis),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobList {
    /// The jobs, newest first.
    pub jobs: Vec<JobView>,
    /// Offset of the next page, when there may be one.
    pub next_offset: Option<usize>,
}

/// A progress event of the events stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProgressView {
    /// The job.
    pub job_id: String,
    /// Progress as last reported.
    #[serde(flatten)]
    pub progress: JobProgress,
}

/// A model.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelView {
    /// Its id.
    pub id: String,
    /// The job that made it.
    pub job_id: String,
    /// Label names, by class index.
    pub labels: Vec<String>,
    /// The student: architecture, size, metrics.
    pub student: NetworkEntry,
    /// The teacher, when the model holds one.
    pub teacher: Option<NetworkEntry>,
    /// The job's configuration.
    pub config: JobConfig,
    /// Size of the student's weights file.
    pub student_bytes: i64,
    /// Size of the teacher's weights file.
    pub teacher_bytes: Option<i64>,
    /// Creation time.
    pub created_at: String,
    /// Last promotion.
    pub promoted_at: Option<String>,
}

impl From<ModelRecord> for ModelView {
    fn from(model: ModelRecord) -> Self {
        Self {
            id: model.id.to_string(),
            job_id: model.job_id.to_string(),
            labels: model.labels,
            student: model.student,
            teacher: model.teacher,
            config: model.config,
            student_bytes: model.student_bytes,
            teacher_bytes: model.teacher_bytes,
            created_at: format_millis(model.created_at),
            promoted_at: model.promoted_at.map(format_millis),
        }
    }
}

/// A page of models.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelList {
    /// The models, newest first.
    pub models: Vec<ModelView>,
    /// Offset of the next page, when there may be one.
    pub next_offset: Option<usize>,
}

/// Body of `POST /predict` and `POST /v1/models/{id}/predict`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// One text.
    pub text: Option<String>,
    /// Several texts.
    pub texts: Option<Vec<String>>,
    /// The model (on `/predict`); default: the promoted model, else the newest.
    pub model: Option<String>,
    /// `student` (default) or `teacher`.
    pub role: Option<Role>,
    /// Return only the `top_k` most likely labels in `scores`.
    pub top_k: Option<usize>,
}

/// One label and its probability.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabelScore {
    /// The label.
    pub label: String,
    /// Its probability.
    pub score: f32,
}

/// The prediction for one text.
#[derive(Debug, Serialize, Deserialize)]
pub struct PredictionView {
    /// The most likely label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Labels with their probabilities, most likely first (all, or the top k).
    pub scores: Vec<LabelScore>,
}

impl PredictionView {
    /// Ranks one row of probabilities.
    pub fn from_probabilities(labels: &[String], probabilities: &[f32], top_k: usize) -> Self {
        let mut scores: Vec<LabelScore> = labels
            .iter()
            .zip(probabilities)
            .map(|(label, &score)| LabelScore { label: label.clone(), score })
            .collect();
        scores.sort_by(|a, b| b.score.total_cmp(&a.score));
        let (label, score) = scores.first().map(|s| (s.label.clone(), s.score)).unwrap_or_default();
        scores.truncate(top_k.max(1));
        Self { label, score, scores }
    }
}

/// Response of the prediction routes.
#[derive(Debug, Serialize, Deserialize)]
pub struct PredictResponse {
    /// The model that answered.
    pub model: String,
    /// The network that answered.
    pub role: Role,
    /// One prediction per text, in order.
    pub predictions: Vec<PredictionView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_rank_labels_and_keep_top_k() {
        let labels = ["neg".to_string(), "neu".to_string(), "pos".to_string()];
        let view = PredictionView::from_probabilities(&labels, &[0.2, 0.1, 0.7], 2);
        assert_eq!(view.label, "pos");
        assert_eq!(view.scores.len(), 2);
        assert_eq!(view.scores[1].label, "neg");
    }
}
