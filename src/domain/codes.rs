//! Stable, machine-readable error codes of the API (`{"error": {"code": ...}}`).
//!
//! Clients match on these strings, so a code is never renamed once released.

use serde::{Deserialize, Serialize};

/// An error code of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not well-formed (bad JSON, bad query string).
    MalformedRequest,
    /// The API key is missing or wrong.
    Unauthorized,
    /// No route matches the path.
    RouteNotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// No dataset has this id.
    DatasetNotFound,
    /// No job has this id.
    JobNotFound,
    /// No model has this id (or no model exists yet).
    ModelNotFound,
    /// The model has no network of the role asked for.
    NetworkNotFound,
    /// The dataset is used by a queued or running job.
    DatasetInUse,
    /// The model is the teacher of a queued or running job.
    ModelInUse,
    /// The job is already over.
    JobFinished,
    /// The body is larger than allowed.
    PayloadTooLarge,
    /// The upload holds more rows than allowed.
    TooManyRows,
    /// A text is longer than allowed.
    TextTooLong,
    /// A prediction request holds more texts than allowed.
    TooManyTexts,
    /// The content type is not one the route takes.
    UnsupportedMediaType,
    /// The uploaded data is invalid (the message names the line).
    InvalidDataset,
    /// The job request is invalid (the message names the field).
    InvalidJob,
    /// The request is well-formed but its content is invalid.
    InvalidRequest,
    /// The server is busy; retry after the delay in `Retry-After`.
    Overloaded,
    /// The server is not ready (database unreachable, shutting down).
    NotReady,
    /// The model cannot be loaded or used.
    ModelUnavailable,
    /// Something failed on the server; the log has the details.
    Internal,
}

impl ErrorCode {
    /// The code as it appears in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::DatasetNotFound => "dataset_not_found",
            ErrorCode::JobNotFound => "job_not_found",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::NetworkNotFound => "network_not_found",
            ErrorCode::DatasetInUse => "dataset_in_use",
            ErrorCode::ModelInUse => "model_in_use",
            ErrorCode::JobFinished => "job_finished",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRows => "too_many_rows",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::TooManyTexts => "too_many_texts",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::InvalidDataset => "invalid_dataset",
            ErrorCode::InvalidJob => "invalid_job",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::ModelUnavailable => "model_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for code in [ErrorCode::MalformedRequest, ErrorCode::TooManyTexts, ErrorCode::Internal] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
