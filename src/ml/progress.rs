//! What a training run reports while it runs, and how it is stopped.
//!
//! The pipeline calls an [`Observer`] from its training thread; the command line draws a
//! progress bar from the events and the service stores and streams them. A
//! [`CancelToken`] is checked between batches.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A phase of a training job, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Tokenizer, vocabulary, validation split.
    Prepare,
    /// Training the teacher.
    Teacher,
    /// Computing the teacher's logits over the transfer set.
    Labeling,
    /// Training the student.
    Student,
    /// Final metrics on the validation rows, and writing the model.
    Finalize,
}

/// Loss terms of the current step or epoch (means over rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossTerms {
    /// The weighted total that is minimised.
    pub total: f64,
    /// Cross-entropy against the labels (labelled rows only).
    pub ce: f64,
    /// The soft-target term (KL times T^2, or MSE); 0 for the teacher.
    pub distill: f64,
}

/// A progress report, sent every few steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Current phase.
    pub phase: Phase,
    /// Epoch, from 1.
    pub epoch: usize,
    /// Epochs of this phase.
    pub epochs: usize,
    /// Step within the epoch, from 1.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Running mean of the loss terms over this epoch.
    pub loss: LossTerms,
    /// Training rows per second over this epoch.
    pub examples_per_second: f64,
    /// Estimated seconds left in the whole job.
    pub eta_seconds: f64,
    /// Fraction of the whole job done, from 0 to 1.
    pub fraction: f64,
}

/// Metrics at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// Phase of the epoch.
    pub phase: Phase,
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean loss terms over the epoch.
    pub loss: LossTerms,
    /// Accuracy on the validation rows.
    pub valid_accuracy: f64,
    /// Macro-F1 on the validation rows.
    pub valid_macro_f1: f64,
    /// For the student: share of validation rows where it agrees with the teacher.
    pub agreement: Option<f64>,
    /// Seconds of training in this epoch (validation excluded).
    pub seconds: f64,
    /// Training rows per second.
    pub examples_per_second: f64,
    /// Whether this is the best epoch so far (the one that is kept).
    pub best: bool,
}

/// One thing that happened during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrainEvent {
    /// A phase begins.
    PhaseStarted {
        /// The phase.
        phase: Phase,
    },
    /// Progress within an epoch.
    Progress(Progress),
    /// An epoch ended and was evaluated.
    Epoch(EpochReport),
    /// A resumable checkpoint was written (atomically) to `dir`.
    Checkpoint {
        /// Phase of the checkpoint.
        phase: Phase,
        /// Last finished epoch.
        epoch: usize,
        /// Folder holding the checkpoint files.
        dir: PathBuf,
    },
    /// A phase ended.
    PhaseFinished {
        /// The phase.
        phase: Phase,
        /// Seconds it took.
        seconds: f64,
    },
}

/// Receives the events of a run, on the training thread.
pub trait Observer: Send + Sync {
    /// Called for each event; must return quickly.
    fn on_event(&self, event: &TrainEvent);
}

/// An observer that drops every event.
pub struct NoObserver;

impl Observer for NoObserver {
    fn on_event(&self, _event: &TrainEvent) {}
}

impl<F: Fn(&TrainEvent) + Send + Sync> Observer for F {
    fn on_event(&self, event: &TrainEvent) {
        self(event)
    }
}

/// Why a run was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The user canceled the job.
    Canceled,
    /// The process is shutting down; the job goes back to the queue.
    Interrupted,
}

/// A cheap, clonable flag that asks a run to stop between batches.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicU8>);

impl CancelToken {
    /// A token that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop; the first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        let code = match reason {
            StopReason::Canceled => 1,
            StopReason::Interrupted => 2,
        };
        let _ = self.0.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Why the run should stop, if it should.
    pub fn reason(&self) -> Option<StopReason> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(StopReason::Canceled),
            2 => Some(StopReason::Interrupted),
            _ => None,
        }
    }
}
