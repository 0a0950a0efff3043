//! Operations: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use crate::api::{ApiError, AppState};
use crate::domain::JobStatus;

/// `GET /health`: the process is alive (no API key needed).
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: the database answers, the workers are up, and shutdown has not begun.
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.readiness.is_shutting_down() {
        return Err(ApiError::NotReady("shutting down".into()));
    }
    if let Err(error) = state.store.ping().await {
        tracing::warn!(error = %error, "readiness: database unreachable");
        return Err(ApiError::NotReady("database unreachable".into()));
    }
    if state.jobs.running.alive_workers() < state.jobs.settings.workers {
        return Err(ApiError::NotReady("training workers are down".into()));
    }
    Ok(Json(json!({
        "status": "ready",
        "workers": state.jobs.settings.workers,
        "workers_alive": state.jobs.running.alive_workers(),
        "running_jobs": state.jobs.running.len(),
        "loaded_models": state.models.loaded(),
    })))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.count_jobs().await {
        Ok(counts) => {
            for status in JobStatus::ALL {
                let n = counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
                metrics::gauge!("distillery_jobs", "status" => status.as_str()).set(n as f64);
                if status == JobStatus::Queued {
                    metrics::gauge!("distillery_queue_length").set(n as f64);
                }
            }
        }
        Err(error) => tracing::warn!(error = %error, "metrics: cannot count jobs"),
    }
    metrics::gauge!("distillery_models_loaded").set(state.models.loaded() as f64);
    metrics::gauge!("distillery_jobs_running_here").set(state.jobs.running.len() as f64);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
