//! The one error type of the API and its JSON shape, `{"error": {"code", "message"}}`.
//!
//! [`ApiError::status_and_code`] is the single table from errors to HTTP statuses and
//! stable codes. Server-side failures answer with a generic message; the log keeps the
//! whole chain of causes. Client mistakes are logged at debug only.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::dto::{ErrorBody, ErrorDetail};
use crate::domain::{DatasetId, ErrorCode, JobId, JobStatus, ModelId};
use crate::serving::ServeError;

/// Seconds a client is asked to wait before retrying an overloaded endpoint.
const RETRY_AFTER_SECONDS: u32 = 1;

/// Any failure of a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is not well-formed.
    #[error("{0}")]
    Malformed(String),
    /// The API key is missing or wrong.
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// No route has this path.
    #[error("no route for this path")]
    RouteNotFound,
    /// The route does not take this method.
    #[error("this route does not take this method")]
    MethodNotAllowed,
    /// Unknown dataset.
    #[error("no dataset with id `{0}`")]
    DatasetNotFound(DatasetId),
    /// Unknown job.
    #[error("no job with id `{0}`")]
    JobNotFound(JobId),
    /// Unknown model.
    #[error("no model with id `{0}`")]
    ModelNotFound(ModelId),
    /// No model exists to serve by default.
    #[error("no model has been trained yet")]
    NoModel,
    /// The model lacks the network asked for.
    #[error("{0}")]
    NetworkNotFound(String),
    /// A queued or running job uses the dataset.
    #[error("dataset `{0}` is used by a queued or running job")]
    DatasetInUse(DatasetId),
    /// A queued or running job reuses the model's teacher.
    #[error("model `{0}` is the teacher of a queued or running job")]
    ModelInUse(ModelId),
    /// The job is already over.
    #[error("job `{id}` is already {status}")]
    JobFinished {
        /// The job.
        id: JobId,
        /// Its final state.
        status: JobStatus,
    },
    /// The body is too large; the message says which limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many rows in an upload.
    #[error("the data has more than the limit of {0} rows")]
    TooManyRows(usize),
    /// A text is too long.
    #[error("text {index} is longer than the limit of {limit} bytes")]
    TextTooLong {
        /// Position of the text in the request.
        index: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many texts in one prediction request.
    #[error("{given} texts given; the limit is {limit} per request")]
    TooManyTexts {
        /// Texts given.
        given: usize,
        /// The limit.
        limit: usize,
    },
    /// The content type is not accepted.
    #[error("unsupported content type; expected {0}")]
    UnsupportedMediaType(&'static str),
    /// The uploaded data is invalid.
    #[error("{0}")]
    InvalidDataset(String),
    /// The job request is invalid.
    #[error("invalid field `{field}`: {message}")]
    InvalidJob {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The request's content is invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// Too much load; retry later.
    #[error("the server is busy; retry after {RETRY_AFTER_SECONDS} s")]
    Overloaded,
    /// The process is not ready.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The model cannot be loaded or used.
    #[error("the model cannot be used right now")]
    ModelUnavailable(#[source] ServeError),
    /// A failure on the server.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// Wraps a server-side failure.
    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(error))
    }

    /// The HTTP status and error code of this error.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        use ErrorCode as C;
        use StatusCode as S;
        match self {
            ApiError::Malformed(_) => (S::BAD_REQUEST, C::MalformedRequest),
            ApiError::Unauthorized => (S::UNAUTHORIZED, C::Unauthorized),
            ApiError::RouteNotFound => (S::NOT_FOUND, C::RouteNotFound),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, C::MethodNotAllowed),
            ApiError::DatasetNotFound(_) => (S::NOT_FOUND, C::DatasetNotFound),
            ApiError::JobNotFound(_) => (S::NOT_FOUND, C::JobNotFound),
            ApiError::ModelNotFound(_) | ApiError::NoModel => (S::NOT_FOUND, C::ModelNotFound),
            ApiError::NetworkNotFound(_) => (S::NOT_FOUND, C::NetworkNotFound),
            ApiError::DatasetInUse(_) => (S::CONFLICT, C::DatasetInUse),
            ApiError::ModelInUse(_) => (S::CONFLICT, C::ModelInUse),
            ApiError::JobFinished { .. } => (S::CONFLICT, C::JobFinished),
            ApiError::PayloadTooLarge(_) => (S::PAYLOAD_TOO_LARGE, C::PayloadTooLarge),
            ApiError::TooManyRows(_) => (S::PAYLOAD_TOO_LARGE, C::TooManyRows),
            ApiError::TextTooLong { .. } => (S::PAYLOAD_TOO_LARGE, C::TextTooLong),
            ApiError::TooManyTexts { .. } => (S::PAYLOAD_TOO_LARGE, C::TooManyTexts),
            ApiError::UnsupportedMediaType(_) => {
                (S::UNSUPPORTED_MEDIA_TYPE, C::UnsupportedMediaType)
            }
            ApiError::InvalidDataset(_) => (S::UNPROCESSABLE_ENTITY, C::InvalidDataset),
            ApiError::InvalidJob { .. } => (S::UNPROCESSABLE_ENTITY, C::InvalidJob),
            ApiError::InvalidRequest(_) => (S::UNPROCESSABLE_ENTITY, C::InvalidRequest),
            ApiError::Overloaded => (S::SERVICE_UNAVAILABLE, C::Overloaded),
            ApiError::NotReady(_) => (S::SERVICE_UNAVAILABLE, C::NotReady),
            ApiError::ModelUnavailable(_) => (S::SERVICE_UNAVAILABLE, C::ModelUnavailable),
            ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, C::Internal),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() && !matches!(self, ApiError::Overloaded | ApiError::NotReady(_))
        {
            tracing::error!(error = ?self, code = code.as_str(), "request failed");
        } else {
            tracing::debug!(error = %self, code = code.as_str(), "request refused");
        }
        let body = ErrorBody { error: ErrorDetail { code, message: self.to_string() } };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::Overloaded) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::internal(error)
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        ApiError::internal(error)
    }
}

impl From<ServeError> for ApiError {
    fn from(error: ServeError) -> Self {
        match error {
            ServeError::ModelNotFound(id) => ApiError::ModelNotFound(id),
            ServeError::NoModel => ApiError::NoModel,
            ServeError::NetworkNotFound { .. } => ApiError::NetworkNotFound(error.to_string()),
            ServeError::Overloaded => ApiError::Overloaded,
            ServeError::Store(error) => ApiError::internal(error),
            ServeError::Load { .. } | ServeError::Predict(_) => ApiError::ModelUnavailable(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_hide_their_cause() {
        let error = ApiError::internal(std::io::Error::other("disk /secret/path full"));
        assert_eq!(error.status_and_code().0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.to_string(), "internal error");
    }

    #[test]
    fn overload_sets_retry_after() {
        let response = ApiError::Overloaded.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
