//! Prediction with one network of a finished model.

use std::path::Path;

use candle_core::{Device, D};

use crate::ml::manifest::{Manifest, Role, MANIFEST_FILE};
use crate::ml::model::Classifier;
use crate::ml::train::predict_logits;

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
    model: Classifier,
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
        let entry = manifest.network(role).ok_or(ModelError::MissingRole(role))?;
        let tensors = candle_core::safetensors::load_buffer(weights, device)?;
        let vocab = manifest.tokenizer.vocab_size();
        let model =
            Classifier::from_tensors(&entry.config, vocab, manifest.labels.len(), tensors, false)?;
        Ok(Self { manifest, role, model })
    }

    /// Loads one network from a model folder.
    ///
    /// # Errors
    /// A [`ModelError`] when a file is missing or does not match.
    pub fn load(dir: &Path, role: Role, device: &Device) -> Result<Self, ModelError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| ModelError::Io { path, source })
        };
        let manifest: Manifest = serde_json::from_slice(&read(MANIFEST_FILE)?)
            .map_err(|e| ModelError::Manifest(e.to_string()))?;
        if manifest.format_version != crate::ml::manifest::FORMAT_VERSION {
            let msg = format!("unsupported format version {}", manifest.format_version);
            return Err(ModelError::Manifest(msg));
        }
        if manifest.network(role).is_none() {
            return Err(ModelError::MissingRole(role));
        }
        let weights = read(role.weights_file())?;
        Self::from_bytes(manifest, role, &weights, device)
    }

    /// Which network this is.
    pub fn role(&self) -> Role {
        self.role
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
    /// Texts are tokenized exactly as in training (the tokenizer saved in the manifest),
    /// grouped by length into batches, and put back in order.
    ///
    /// # Errors
    /// A [`ModelError`] when a tensor operation fails.
    pub fn predict(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let seqs: Vec<Vec<u32>> = texts.iter().map(|t| self.manifest.tokenizer.encode(t)).collect();
        let logits = predict_logits(&self.model, &seqs, 64).map_err(|e| match e {
            crate::ml::pipeline::TrainError::Candle(c) => ModelError::Candle(c),
            other => ModelError::Candle(candle_core::Error::Msg(other.to_string())),
        })?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?;
        Ok(probs.to_vec2::<f32>()?)
    }
}
