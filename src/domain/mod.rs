//! Domain types shared by every layer: ids, job states and their transitions, the
//! records kept for datasets, jobs and models, and the stable error codes of the API.
//!
//! Nothing here knows about HTTP, SQL or Candle; `store`, `jobs` and `api` build on it.

pub mod codes;
pub mod ids;
pub mod records;
pub mod status;

pub use codes::ErrorCode;
pub use ids::{DatasetId, JobId, ModelId, WorkerId};
pub use records::{DatasetRecord, JobProgress, JobRecord, ModelRecord, PhaseMetrics};
pub use status::{JobStatus, TransitionError};

/// Milliseconds since the Unix epoch, as stored in the database.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Formats a stored timestamp (milliseconds since the epoch) as RFC 3339.
pub fn format_millis(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
