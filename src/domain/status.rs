//! The life of a job: its states and the transitions allowed between them.
//!
//! ```text
//! queued -> running -> succeeded | failed | canceled
//!    |         |
//!    |         +-> queued   (interrupted by shutdown, or its lease ran out)
//!    +-> canceled
//! ```
//! The database enforces the set of states with a `CHECK`; the store consults
//! [`JobStatus::check_transition`] before each change of state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// State of a training job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting in the queue for a worker.
    Queued,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Finished with a model.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped by a user.
    Canceled,
}

/// A change of state that the job's life does not allow.
#[derive(Debug, thiserror::Error)]
#[error("a job cannot go from {from} to {to}")]
pub struct TransitionError {
    /// The current state.
    pub from: JobStatus,
    /// The state asked for.
    pub to: JobStatus,
}

impl JobStatus {
    /// Every state, in life order.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    /// The lowercase name used in JSON, URLs and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Whether the job is over and will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled)
    }

    /// Whether the job still waits or runs (and so holds on to its datasets).
    pub fn is_active(self) -> bool {
        !self.is_terminal()
    }

    /// Whether a job in this state may move to `to`.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Queued, Canceled)
                | (Running, Queued)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Canceled)
        )
    }

    /// Checks a transition.
    ///
    /// # Errors
    /// A [`TransitionError`] when [`JobStatus::can_become`] says no.
    pub fn check_transition(self, to: JobStatus) -> Result<(), TransitionError> {
        if self.can_become(to) {
            Ok(())
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no job state.
#[derive(Debug, thiserror::Error)]
#[error("unknown job status `{0}`: expected queued, running, succeeded, failed or canceled")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_never_change() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn running_may_go_back_to_the_queue_but_queued_may_not_finish() {
        assert!(JobStatus::Running.can_become(JobStatus::Queued));
        assert!(JobStatus::check_transition(JobStatus::Queued, JobStatus::Succeeded).is_err());
        assert_eq!("canceled".parse::<JobStatus>().unwrap(), JobStatus::Canceled);
        assert!("done".parse::<JobStatus>().is_err());
    }
}
