//! Prediction with one network of a finished model.

use std::path::Path;

use candle_core::Device;

use crate::ml::manifest::{Manifest, Role};

/// Why a model cannot be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model has no network of this role (e.g. no recurrent teacher).
    #[error("the model has no {0:?} network")]
    MissingRole(Role),
    /// The manifest is unreadable or of an unknown format version.
    #[error("invalid model manifest: {0}")]
    Manifest(String),
    /// Reading a file failed.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tensor operation failed (bad weights, wrong shapes).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A loaded network with its tokenizer and label names, ready to predict.
pub struct Predictor {
    manifest: Manifest,
    role: Role,
    device: Device,
}

impl Predictor {
    /// Loads one network from the manifest and the bytes of its safetensors file.
    ///
    /// # Errors
    /// A [`ModelError`] when the weights do not match the manifest.
    pub fn from_bytes(
        manifest: Manifest,
        role: Role,
        weights: &[u8],
        device: &Device,
    ) -> Result<Self, ModelError> {
        let _ = weights;
        Ok(Self { manifest, role, device: device.clone() })
    }

    /// Loads one network from a model folder.
    ///
    /// # Errors
    /// A [`ModelError`] when a file is missing or does not match.
    pub fn load(dir: &Path, role: Role, device: &Device) -> Result<Self, ModelError> {
        let _ = (dir, role, device);
        unimplemented!("the predictor is being written in this change")
    }

    /// Label names, by class index.
    pub fn labels(&self) -> &[String] {
        &self.manifest.labels
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Class probabilities of each text, `[texts][labels]`, in the order given.
    ///
    /// # Errors
    /// A [`ModelError`] when a tensor operation fails.
    pub fn predict(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _ = (texts, self.role, &self.device);
        unimplemented!("the predictor is being written in this change")
    }
}
