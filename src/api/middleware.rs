//! Request middleware: one log line and metrics per request, and the API key check.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::{ApiError, AppState};

/// Routes that answer without an API key.
const OPEN_ROUTES: [&str; 1] = ["/health"];

/// Logs the request (method, route, status, latency) and counts it in the metrics.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());

    let response = next.run(request).await;

    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    let latency_ms = seconds * 1000.0;
    if route == "/health" || route == "/metrics" {
        tracing::debug!(http.method = %method, http.route = %route, http.status = status, latency_ms, "request");
    } else {
        tracing::info!(http.method = %method, http.route = %route, http.status = status, latency_ms, "request");
    }
    let labels = [("method", method.to_string()), ("route", route)];
    metrics::histogram!("distillery_http_request_duration_seconds", &labels).record(seconds);
    let mut labels = labels.to_vec();
    labels.push(("status", status.to_string()));
    metrics::counter!("distillery_http_requests_total", &labels).increment(1);
    response
}

/// Refuses requests without the right `Authorization: Bearer <key>`, when a key is set.
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = &state.api_key else { return next.run(request).await };
    if OPEN_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if key.matches(given) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}
