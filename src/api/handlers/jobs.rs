//! `/v1/jobs`: create, list, show and cancel training jobs, and follow their events.

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{next_offset, page};
use crate::api::dto::{JobList, JobListQuery, JobView, ProgressView};
use crate::api::extract::{ApiJson, ApiQuery};
use crate::api::{ApiError, AppState};
use crate::domain::{now_millis, DatasetId, JobId, JobProgress, JobRecord, JobStatus, ModelId};
use crate::jobs::JobEvent;
use crate::ml::config::{JobConfig, TeacherKind};
use crate::ml::manifest::Role;
use crate::ml::progress::{Phase, TrainEvent};
use crate::ml::transformer::resolve_pretrained;
use crate::store::CancelOutcome;

/// `POST /v1/jobs`: queues a training job; answers 202 with a `Location` header.
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request = JobRequest::parse(body)?;
    let needed_model = check_references(&state, &request).await?;

    let now = now_millis();
    let job = JobRecord {
        id: JobId::generate(),
        status: JobStatus::Queued,
        teacher_model_id: needed_model,
        dataset_id: request.dataset_id,
        validation_dataset_id: request.validation_dataset_id,
        config: request.config,
        progress: JobProgress::default(),
        metrics: Vec::new(),
        error: None,
        model_id: None,
        cancel_requested: false,
        lease_owner: None,
        lease_expires_at: None,
        attempts: 0,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
    };
    if !state.store.insert_job(&job).await? {
        // A dataset was deleted between the check above and the insert.
        let gone = match &job.validation_dataset_id {
            Some(valid) if state.store.dataset(valid).await?.is_none() => valid.clone(),
            _ => job.dataset_id.clone(),
        };
        return Err(ApiError::DatasetNotFound(gone));
    }
    state.jobs.wake.notify_one();
    tracing::info!(job.id = %job.id, dataset.id = %job.dataset_id, "job queued");

    let location =
        HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)).map_err(ApiError::internal)?;
    let mut response = (StatusCode::ACCEPTED, Json(JobView::from(job))).into_response();
    response.headers_mut().insert(LOCATION, location);
    Ok(response)
}

/// A job request: the dataset ids, and everything else as a [`JobConfig`].
struct JobRequest {
    dataset_id: DatasetId,
    validation_dataset_id: Option<DatasetId>,
    config: JobConfig,
}

impl JobRequest {
    fn parse(body: Value) -> Result<Self, ApiError> {
        let invalid = |field: &str, message: &str| ApiError::InvalidJob {
            field: field.to_string(),
            message: message.to_string(),
        };
        let Value::Object(mut fields) = body else {
            return Err(invalid("body", "must be a JSON object"));
        };
        let dataset_id = match fields.remove("dataset_id") {
            Some(Value::String(id)) => DatasetId::from_string(id),
            Some(_) => return Err(invalid("dataset_id", "must be a string")),
            None => return Err(invalid("dataset_id", "is required")),
        };
        let validation_dataset_id = match fields.remove("validation_dataset_id") {
            Some(Value::String(id)) => Some(DatasetId::from_string(id)),
            Some(Value::Null) | None => None,
            Some(_) => return Err(invalid("validation_dataset_id", "must be a string")),
        };
        let config = JobConfig::from_json(&Value::Object(Map::from_iter(fields)).to_string())
            .map_err(|e| ApiError::InvalidJob { field: e.field, message: e.message })?;
        Ok(Self { dataset_id, validation_dataset_id, config })
    }
}

/// Checks that the datasets and a reused teacher exist. Returns the model whose files the
/// job will need (a reused teacher's, or that of the job whose transfer set it reuses),
/// which cannot be deleted while the job waits or runs.
async fn check_references(
    state: &AppState,
    request: &JobRequest,
) -> Result<Option<ModelId>, ApiError> {
    let datasets = std::iter::once(&request.dataset_id).chain(&request.validation_dataset_id);
    for id in datasets {
        if state.store.dataset(id).await?.is_none() {
            return Err(ApiError::DatasetNotFound(id.clone()));
        }
    }
    let transfer_model = check_teacher_source(state, request).await?;
    let Some(model_id) = &request.config.teacher.model_id else { return Ok(transfer_model) };
    let model_id = ModelId::from_string(model_id.clone());
    let model = state.store.model(&model_id).await?.ok_or(ApiError::ModelNotFound(model_id))?;
    if !model.has_role(Role::Teacher) {
        let message = format!("model `{}` has no teacher network to reuse", model.id);
        return Err(ApiError::InvalidJob { field: "teacher.model_id".into(), message });
    }
    Ok(Some(model.id))
}

/// Checks a transformer teacher's folder and a reused job's transfer set; returns the
/// model that holds that transfer set.
async fn check_teacher_source(
    state: &AppState,
    request: &JobRequest,
) -> Result<Option<ModelId>, ApiError> {
    let invalid =
        |field: &str, message: String| ApiError::InvalidJob { field: field.into(), message };
    let teacher = &request.config.teacher;
    if let (TeacherKind::Transformer, Some(name)) = (teacher.kind, &teacher.pretrained) {
        let Some(root) = &state.jobs.settings.pretrained_dir else {
            let message = "this server has no folder of pretrained models (--pretrained-dir)";
            return Err(invalid("teacher.pretrained", message.into()));
        };
        resolve_pretrained(root, name).map_err(|e| invalid("teacher.pretrained", e.to_string()))?;
    }
    let Some(job_id) = &teacher.job_id else { return Ok(None) };
    let id = JobId::from_string(job_id.clone());
    let job = state.store.job(&id).await?.ok_or_else(|| ApiError::JobNotFound(id.clone()))?;
    if job.status != JobStatus::Succeeded || job.config.teacher.kind == TeacherKind::None {
        let message =
            format!("job `{id}` has not finished with a teacher, so it has no transfer set");
        return Err(invalid("teacher.job_id", message));
    }
    if job.dataset_id != request.dataset_id {
        let message =
            format!("job `{id}` was trained on dataset `{}`; use the same dataset", job.dataset_id);
        return Err(invalid("dataset_id", message));
    }
    Ok(job.model_id)
}

/// `GET /v1/jobs`: lists jobs, newest first, optionally by state.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JobListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let status = match query.status.as_deref() {
        Some(text) => {
            Some(text.parse::<JobStatus>().map_err(|e| ApiError::Malformed(e.to_string()))?)
        }
        None => None,
    };
    let (limit, offset) = page(query.limit, query.offset, &state.limits)?;
    let records = state.store.list_jobs(status, limit, offset).await?;
    let next_offset = next_offset(limit, offset, records.len());
    Ok(Json(JobList { jobs: records.into_iter().map(JobView::from).collect(), next_offset }))
}

/// `GET /v1/jobs/{id}`: one job and where it stands.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = JobId::from_string(id);
    let job = state.store.job(&id).await?.ok_or(ApiError::JobNotFound(id))?;
    Ok(Json(JobView::from(job)))
}

/// `POST /v1/jobs/{id}/cancel`: cancels a queued job at once (200), or asks a running
/// one to stop within a batch (202); 409 when it is already over.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let id = JobId::from_string(id);
    match state.store.request_cancel(&id, now_millis()).await? {
        CancelOutcome::Canceled(job) => {
            tracing::info!(job.id = %id, "queued job canceled");
            state.jobs.hub.publish(&id, JobEvent::Status(job.clone()));
            Ok((StatusCode::OK, Json(JobView::from(*job))))
        }
        CancelOutcome::Requested(job) => {
            let local = state.jobs.running.stop(&id, crate::ml::progress::StopReason::Canceled);
            tracing::info!(job.id = %id, local, "cancel requested");
            Ok((StatusCode::ACCEPTED, Json(JobView::from(*job))))
        }
        CancelOutcome::Finished(status) => Err(ApiError::JobFinished { id, status }),
        CancelOutcome::NotFound => Err(ApiError::JobNotFound(id)),
    }
}

/// `GET /v1/jobs/{id}/events`: a Server-Sent Events stream of the job's progress.
///
/// Events: `state` (the job, first), `phase_started`, `progress`, `epoch`, `checkpoint`,
/// `phase_finished`, `status` (a change of state) and `end` (the final job, last).
/// Events of a job running in this process come as they happen; for a job running
/// elsewhere the stream reads the stored state every poll interval.
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = JobId::from_string(id);
    let receiver = state.jobs.hub.subscribe(&id);
    let job = state.store.job(&id).await?.ok_or(ApiError::JobNotFound(id))?;
    Ok(Sse::new(event_stream(state, job, receiver)).keep_alive(KeepAlive::default()))
}

fn sse(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default().event(name).json_data(data).unwrap_or_else(|_| Event::default().event(name))
}

/// What a stream has already told its listener.
struct Seen {
    status: JobStatus,
    updated_at: i64,
    epochs: Vec<(Phase, usize)>,
    live: bool,
}

impl Seen {
    fn of(job: &JobRecord) -> Self {
        let epochs = job.metrics.iter().map(|r| (r.phase, r.epoch)).collect();
        Self { status: job.status, updated_at: job.updated_at, epochs, live: false }
    }

    /// Records an epoch; false when it was already sent.
    fn first_sight(&mut self, phase: Phase, epoch: usize) -> bool {
        if self.epochs.contains(&(phase, epoch)) {
            return false;
        }
        self.epochs.push((phase, epoch));
        true
    }

    /// Events for a live trainer event (epochs already sent from the store are skipped).
    fn train_event(&mut self, job: &JobId, event: TrainEvent) -> Option<Event> {
        self.live = true;
        Some(match event {
            TrainEvent::Progress(report) => {
                let mut progress = JobProgress::default();
                progress.apply(&report);
                sse("progress", &ProgressView { job_id: job.to_string(), progress })
            }
            TrainEvent::Epoch(report) => {
                if !self.first_sight(report.phase, report.epoch) {
                    return None;
                }
                sse("epoch", &report)
            }
            event @ TrainEvent::PhaseStarted { .. } => sse("phase_started", &event),
            event @ TrainEvent::PhaseFinished { .. } => sse("phase_finished", &event),
            event @ TrainEvent::Checkpoint { .. } => sse("checkpoint", &event),
        })
    }

    /// Events for the stored state of the job: new epochs, progress, a change of state.
    fn stored(&mut self, job: &JobRecord) -> Vec<Event> {
        let mut events = Vec::new();
        for report in &job.metrics {
            if self.first_sight(report.phase, report.epoch) {
                events.push(sse("epoch", report));
            }
        }
        if job.updated_at != self.updated_at && !self.live && job.status == JobStatus::Running {
            let view = ProgressView { job_id: job.id.to_string(), progress: job.progress.clone() };
            events.push(sse("progress", &view));
        }
        if job.status != self.status {
            events.push(sse("status", &JobView::from(job.clone())));
        }
        self.status = job.status;
        self.updated_at = job.updated_at;
        self.live = false;
        events
    }
}

fn event_stream(
    state: AppState,
    job: JobRecord,
    mut receiver: tokio::sync::broadcast::Receiver<JobEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        let id = job.id.clone();
        let mut seen = Seen::of(&job);
        yield Ok(sse("state", &JobView::from(job.clone())));
        if job.status.is_terminal() {
            yield Ok(sse("end", &JobView::from(job)));
            return;
        }
        let mut poll = tokio::time::interval(state.events_poll);
        let mut listening = true;
        loop {
            let stored = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                message = receiver.recv(), if listening => match message {
                    Ok(JobEvent::Train(event)) => {
                        if let Some(event) = seen.train_event(&id, event) {
                            yield Ok(event);
                        }
                        continue;
                    }
                    Ok(JobEvent::Status(record)) => Some(*record),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => { listening = false; continue; }
                },
                _ = poll.tick() => match state.store.job(&id).await {
                    Ok(record) => record,
                    Err(error) => {
                        tracing::warn!(job.id = %id, error = %error, "events stream cannot read the job");
                        continue;
                    }
                },
            };
            let Some(record) = stored else { return };
            for event in seen.stored(&record) {
                yield Ok(event);
            }
            if record.status.is_terminal() {
                yield Ok(sse("end", &JobView::from(record)));
                return;
            }
        }
    }
}
