//! The seam between the workers and the training core.

use std::path::Path;

use crate::ml::config::JobConfig;
use crate::ml::manifest::Manifest;
use crate::ml::pipeline::{JobInputs, TrainError};
use crate::ml::progress::{CancelToken, Observer};

/// Trains one job; blocking CPU (or GPU) work, always called on a dedicated thread.
pub trait Trainer: Send + Sync + 'static {
    /// Trains (or resumes from `work_dir`) and writes the model to `out_dir`.
    ///
    /// # Errors
    /// A [`TrainError`]; [`TrainError::Stopped`] when `cancel` fired.
    fn train(
        &self,
        config: &JobConfig,
        inputs: JobInputs,
        work_dir: &Path,
        out_dir: &Path,
        observer: &dyn Observer,
        cancel: &CancelToken,
    ) -> Result<Manifest, TrainError>;
}

/// The training core's pipeline ([`crate::ml::pipeline::run`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct PipelineTrainer;

impl Trainer for PipelineTrainer {
    fn train(
        &self,
        config: &JobConfig,
        inputs: JobInputs,
        work_dir: &Path,
        out_dir: &Path,
        observer: &dyn Observer,
        cancel: &CancelToken,
    ) -> Result<Manifest, TrainError> {
        crate::ml::pipeline::run(config, inputs, work_dir, out_dir, observer, cancel)
    }
}
