//! A training job from rows to a finished model folder.
//!
//! Phases: 1. prepare (labels, tokenizer, validation split), 2. train or load the teacher,
//! 3. label the transfer set with the frozen teacher, 4. train the student, 5. write the
//! model. Each epoch ends with a checkpoint in the work folder, from which an interrupted
//! run resumes.

use std::path::{Path, PathBuf};

use crate::ml::config::JobConfig;
use crate::ml::data::Example;
use crate::ml::manifest::Manifest;
use crate::ml::progress::{CancelToken, Observer, Phase, StopReason};

/// The data of a job.
#[derive(Debug, Clone)]
pub struct JobInputs {
    /// Training rows; unlabelled rows feed only the distillation term.
    pub train: Vec<Example>,
    /// Validation rows; when absent, a stratified fraction of `train` is held out.
    pub valid: Option<Vec<Example>>,
    /// Folder of an earlier model whose teacher is reused (`teacher.model_id`).
    pub teacher_model: Option<PathBuf>,
}

/// Why a run did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::ml::config::ConfigError),
    /// The data cannot be trained on (too few labels, a label unknown to the teacher, ...).
    #[error("invalid data: {0}")]
    Data(String),
    /// The device cannot be opened.
    #[error(transparent)]
    Device(#[from] crate::ml::device::DeviceError),
    /// The loss became NaN or infinite.
    #[error("loss became {value} in phase {phase:?}, epoch {epoch}, step {step}")]
    NonFinite {
        /// Phase where it happened.
        phase: Phase,
        /// Epoch where it happened.
        epoch: usize,
        /// Step where it happened.
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// The run was stopped through its [`CancelToken`].
    #[error("training stopped: {0:?}")]
    Stopped(StopReason),
    /// Reading or writing checkpoints or the model failed.
    #[error("i/o error at {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Runs a job: trains (or resumes) everything and writes the model to `out_dir`.
///
/// `work_dir` holds the checkpoints; if it already holds some from an earlier run of the
/// same job, training resumes from the last one and ends as an uninterrupted run would.
///
/// # Errors
/// A [`TrainError`]; on [`TrainError::Stopped`] the last checkpoint stays in `work_dir`.
pub fn run(
    config: &JobConfig,
    inputs: JobInputs,
    work_dir: &Path,
    out_dir: &Path,
    observer: &dyn Observer,
    cancel: &CancelToken,
) -> Result<Manifest, TrainError> {
    let _ = (config, inputs, work_dir, out_dir, observer, cancel);
    unimplemented!("the pipeline is being written in this change")
}
