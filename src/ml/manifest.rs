//! The JSON manifest saved beside a model's weights.
//!
//! A finished model is a folder: `manifest.json`, `student.safetensors` and, when the job
//! had a recurrent teacher, `teacher.safetensors`. The manifest holds everything needed to
//! use either network alone: architecture, tokenizer, label names, and the metrics.

use serde::{Deserialize, Serialize};

use crate::ml::config::{JobConfig, ModelConfig};
use crate::ml::metrics::Metrics;
use crate::ml::tokenizer::Tokenizer;

/// Version of the manifest and weight layout; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a model folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Sub-folder holding a transformer teacher's head (and fine-tuned encoder).
pub const TRANSFORMER_DIR: &str = "transformer";

/// Which network of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The large network the student learned from.
    Teacher,
    /// The small, fast network that is served by default.
    Student,
}

impl Role {
    /// File name of this network's weights inside a model folder.
    pub fn weights_file(self) -> &'static str {
        match self {
            Role::Teacher => "teacher.safetensors",
            Role::Student => "student.safetensors",
        }
    }

    /// Lowercase name, as used in URLs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Teacher => "teacher",
            Role::Student => "student",
        }
    }
}

/// One network of a model: its architecture, size and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkEntry {
    /// Architecture (for a recurrent network).
    pub config: ModelConfig,
    /// Number of trainable parameters.
    pub parameters: usize,
    /// Size of the weights file in bytes.
    pub size_bytes: u64,
    /// Metrics on the validation rows at the kept epoch.
    pub metrics: Option<Metrics>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Seconds spent training this network.
    pub train_seconds: f64,
}

/// A pretrained transformer teacher: which one, and how it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerEntry {
    /// Name of the pretrained folder.
    pub pretrained: String,
    /// Whether the encoder was fine-tuned (else frozen, only the head trained).
    pub fine_tuned: bool,
    /// Metrics on the validation rows.
    pub metrics: Option<Metrics>,
    /// The kept epoch of the head.
    pub best_epoch: usize,
    /// Seconds spent loading, embedding and training.
    pub train_seconds: f64,
}

/// Everything about a finished model except its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] at the time of writing.
    pub format_version: u32,
    /// Label names, by class index.
    pub labels: Vec<String>,
    /// The tokenizer used in training; prediction uses exactly this one.
    pub tokenizer: Tokenizer,
    /// The teacher, when the model holds a recurrent one.
    pub teacher: Option<NetworkEntry>,
    /// The teacher, when it was a pretrained transformer (its head is in `transformer/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer_teacher: Option<TransformerEntry>,
    /// The student.
    pub student: NetworkEntry,
    /// The job's configuration.
    pub job: JobConfig,
    /// When the model was written (RFC 3339).
    pub created_at: String,
}

impl Manifest {
    /// The entry of one network, if the model holds it.
    pub fn network(&self, role: Role) -> Option<&NetworkEntry> {
        match role {
            Role::Teacher => self.teacher.as_ref(),
            Role::Student => Some(&self.student),
        }
    }
}
