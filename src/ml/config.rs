//! Job configuration: what a training job trains and how.
//!
//! One [`JobConfig`] drives the whole pipeline (tokenizer, teacher, student, distillation,
//! optimizer). It is read from JSON by the command line (`--config JOB.json`) and by the
//! HTTP API (`POST /v1/jobs`). Every field has a default, unknown fields are rejected, and
//! [`JobConfig::validate`] names the offending field of a bad value.

use serde::{Deserialize, Serialize};

/// A configuration value that is out of range or inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("invalid config field `{field}`: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `distillation.temperature`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_string(), message: message.into() }
    }
}

/// The recurrent cell of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellKind {
    /// The plain tanh cell (Elman RNN).
    Rnn,
    /// Long short-term memory, gates in PyTorch order (input, forget, cell, output).
    Lstm,
    /// Gated recurrent unit, gates in PyTorch order (reset, update, new).
    Gru,
}

impl CellKind {
    /// Number of gate blocks stacked in the weight matrices (1, 4 or 3).
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }
}

/// How the per-token outputs of the top layer become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The final hidden state (for a bidirectional layer: forward state at the last real
    /// token, concatenated with the backward state at the first token).
    #[default]
    Last,
    /// Mean of the outputs over the real tokens.
    Mean,
    /// Element-wise maximum of the outputs over the real tokens.
    Max,
}

/// Architecture of one recurrent classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Recurrent cell.
    pub cell: CellKind,
    /// Width of the token embeddings.
    pub embedding_dim: usize,
    /// Width of each recurrent layer (per direction).
    pub hidden_size: usize,
    /// Number of stacked recurrent layers.
    pub layers: usize,
    /// Whether each layer also reads the text backwards.
    pub bidirectional: bool,
    /// Dropout probability between layers and before the output layer.
    pub dropout: f64,
    /// How token outputs are pooled into one vector.
    pub pooling: Pooling,
}

impl ModelConfig {
    /// The default teacher: 2-layer bidirectional LSTM 256 over 128-wide embeddings.
    pub fn default_teacher() -> Self {
        Self {
            cell: CellKind::Lstm,
            embedding_dim: 128,
            hidden_size: 256,
            layers: 2,
            bidirectional: true,
            dropout: 0.2,
            pooling: Pooling::Last,
        }
    }

    /// The default student: 1-layer GRU 64 over 64-wide embeddings.
    pub fn default_student() -> Self {
        Self {
            cell: CellKind::Gru,
            embedding_dim: 64,
            hidden_size: 64,
            layers: 1,
            bidirectional: false,
            dropout: 0.0,
            pooling: Pooling::Last,
        }
    }

    /// Width of the pooled vector fed to the output layer.
    pub fn output_dim(&self) -> usize {
        self.hidden_size * if self.bidirectional { 2 } else { 1 }
    }

    /// Checks ranges; `prefix` is the field path of this config (`teacher` or `student`).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field out of range.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        check_range(&field("embedding_dim"), self.embedding_dim, 1, 4096)?;
        check_range(&field("hidden_size"), self.hidden_size, 1, 4096)?;
        check_range(&field("layers"), self.layers, 1, 16)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::new(&field("dropout"), "must be in [0, 1)"));
        }
        Ok(())
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::default_student()
    }
}

/// Where the teacher comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TeacherKind {
    /// A recurrent classifier trained on the job's data (the default).
    #[default]
    Recurrent,
    /// A pretrained BERT-family transformer with a classification head.
    Transformer,
    /// No teacher: the student is trained alone on the labels.
    None,
}

/// The teacher of a job: its source and, for a recurrent teacher, its architecture.
///
/// The architecture fields sit beside the source fields in JSON
/// (`{"cell": "lstm", "hidden_size": 256}` or `{"model_id": "..."}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    /// Where the teacher comes from.
    pub kind: TeacherKind,
    /// Reuse the teacher of this earlier model instead of training one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// Reuse the stored teacher logits of this earlier job (transfer set included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Name of a pretrained transformer folder (for `kind: transformer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// Fine-tune the whole transformer encoder instead of only the head.
    pub fine_tune: bool,
    /// Epochs of the teacher's training; defaults to `training.epochs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Recurrent cell.
    pub cell: CellKind,
    /// Width of the token embeddings.
    pub embedding_dim: usize,
    /// Width of each recurrent layer (per direction).
    pub hidden_size: usize,
    /// Number of stacked recurrent layers.
    pub layers: usize,
    /// Whether each layer also reads the text backwards.
    pub bidirectional: bool,
    /// Dropout probability between layers and before the output layer.
    pub dropout: f64,
    /// How token outputs are pooled into one vector.
    pub pooling: Pooling,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        let m = ModelConfig::default_teacher();
        Self {
            kind: TeacherKind::Recurrent,
            model_id: None,
            job_id: None,
            pretrained: None,
            fine_tune: false,
            epochs: None,
            cell: m.cell,
            embedding_dim: m.embedding_dim,
            hidden_size: m.hidden_size,
            layers: m.layers,
            bidirectional: m.bidirectional,
            dropout: m.dropout,
            pooling: m.pooling,
        }
    }
}

impl TeacherConfig {
    /// The recurrent architecture described by this config.
    pub fn model(&self) -> ModelConfig {
        ModelConfig {
            cell: self.cell,
            embedding_dim: self.embedding_dim,
            hidden_size: self.hidden_size,
            layers: self.layers,
            bidirectional: self.bidirectional,
            dropout: self.dropout,
            pooling: self.pooling,
        }
    }

    /// Whether the job trains a teacher of its own (rather than reusing or skipping one).
    pub fn trains_recurrent(&self) -> bool {
        self.kind == TeacherKind::Recurrent && self.model_id.is_none() && self.job_id.is_none()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.model().validate("teacher")?;
        if let Some(epochs) = self.epochs {
            check_range("teacher.epochs", epochs, 1, 1000)?;
        }
        let sources = [self.model_id.is_some(), self.job_id.is_some()];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(ConfigError::new("teacher", "give at most one of model_id and job_id"));
        }
        match self.kind {
            TeacherKind::Transformer if self.pretrained.is_none() && self.job_id.is_none() => {
                Err(ConfigError::new("teacher.pretrained", "required when kind is transformer"))
            }
            TeacherKind::Recurrent | TeacherKind::None if self.pretrained.is_some() => {
                Err(ConfigError::new("teacher.pretrained", "only allowed when kind is transformer"))
            }
            TeacherKind::None if self.model_id.is_some() || self.job_id.is_some() => {
                Err(ConfigError::new("teacher.kind", "`none` cannot take model_id or job_id"))
            }
            _ => Ok(()),
        }
    }
}

/// Which distillation loss compares student and teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DistillLoss {
    /// `T^2 * KL(softmax(z_t / T) || softmax(z_s / T))` (Hinton et al. 2015).
    #[default]
    Kl,
    /// Mean squared error between raw logits (Tang et al. 2019).
    Mse,
}

/// Word-level augmentation of training texts into extra transfer rows (Tang et al. 2019).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// New rows made per original row (0 turns augmentation off).
    pub factor: usize,
    /// Probability of replacing a word by the mask token.
    pub mask_prob: f64,
    /// Probability of replacing a word by another word of the same text... or vocabulary.
    pub replace_prob: f64,
    /// Probability of keeping only a random n-gram of the augmented text.
    pub ngram_prob: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self { factor: 0, mask_prob: 0.1, replace_prob: 0.1, ngram_prob: 0.25 }
    }
}

/// The student's loss: how much it learns from the teacher and how much from labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// Soft-target loss.
    pub loss: DistillLoss,
    /// Softmax temperature `T` (> 0) of the KL term.
    pub temperature: f64,
    /// Weight of the soft-target term, in [0, 1]; `1 - alpha` weighs the label term.
    pub alpha: f64,
    /// Augmented transfer rows labelled by the teacher.
    pub augment: AugmentConfig,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            loss: DistillLoss::Kl,
            temperature: 4.0,
            alpha: 0.7,
            augment: AugmentConfig::default(),
        }
    }
}

impl DistillConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(ConfigError::new("distillation.temperature", "must be > 0"));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(ConfigError::new("distillation.alpha", "must be in [0, 1]"));
        }
        let a = &self.augment;
        check_range("distillation.augment.factor", a.factor, 0, 64)?;
        for (name, p) in [("mask_prob", a.mask_prob), ("replace_prob", a.replace_prob)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError::new(
                    &format!("distillation.augment.{name}"),
                    "must be in [0, 1]",
                ));
            }
        }
        if !(0.0..=1.0).contains(&a.ngram_prob) {
            return Err(ConfigError::new("distillation.augment.ngram_prob", "must be in [0, 1]"));
        }
        Ok(())
    }
}

/// The optimizer and the training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Passes over the training rows (each phase; see `teacher.epochs`).
    pub epochs: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// Rows per batch when evaluating and labelling.
    pub eval_batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Largest global gradient norm; 0 turns clipping off.
    pub clip_norm: f64,
    /// Stop after this many epochs without a better validation accuracy; 0 never stops early.
    pub patience: usize,
    /// Fraction of the training rows held out (stratified) when no validation set is given.
    pub validation_fraction: f64,
    /// Largest vocabulary, reserved tokens excluded.
    pub max_vocab: usize,
    /// Words seen fewer times than this in the training rows become the unknown token.
    pub min_count: usize,
    /// Texts are truncated to this many tokens.
    pub max_len: usize,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 64,
            eval_batch_size: 256,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            clip_norm: 5.0,
            patience: 3,
            validation_fraction: 0.1,
            max_vocab: 30000,
            min_count: 1,
            max_len: 64,
        }
    }
}

impl TrainingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_range("training.epochs", self.epochs, 1, 1000)?;
        check_range("training.batch_size", self.batch_size, 1, 65536)?;
        check_range("training.eval_batch_size", self.eval_batch_size, 1, 65536)?;
        check_range("training.max_vocab", self.max_vocab, 1, 10_000_000)?;
        check_range("training.max_len", self.max_len, 1, 100_000)?;
        check_positive("training.learning_rate", self.learning_rate)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(ConfigError::new("training.weight_decay", "must be >= 0"));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return Err(ConfigError::new(
                "training.clip_norm",
                "must be >= 0 (0 disables clipping)",
            ));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return Err(ConfigError::new("training.validation_fraction", "must be in (0, 1)"));
        }
        Ok(())
    }
}

/// Everything a training job needs besides its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobConfig {
    /// The teacher: trained here, reused, a transformer, or none.
    pub teacher: TeacherConfig,
    /// The student's architecture.
    pub student: ModelConfig,
    /// The student's loss.
    pub distillation: DistillConfig,
    /// Optimizer, loop and tokenizer settings.
    pub training: TrainingConfig,
    /// Seed of every random choice; a CPU run with the same seed repeats exactly.
    pub seed: u64,
    /// `auto`, `cpu` or `cuda:N`.
    pub device: String,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            teacher: TeacherConfig::default(),
            student: ModelConfig::default_student(),
            distillation: DistillConfig::default(),
            training: TrainingConfig::default(),
            seed: 42,
            device: "auto".to_string(),
        }
    }
}

impl JobConfig {
    /// Parses a JSON config; unknown fields and wrong types are errors naming the field.
    ///
    /// # Errors
    /// A [`ConfigError`] for malformed JSON or an invalid value.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: JobConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(if path == "." { "config" } else { &path }, e.inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field's range and the consistency between fields.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.teacher.validate()?;
        self.student.validate("student")?;
        self.distillation.validate()?;
        self.training.validate()?;
        crate::ml::device::parse_device(&self.device)
            .map_err(|e| ConfigError::new("device", e.to_string()))?;
        if self.teacher.trains_recurrent() {
            self.check_size("teacher", &self.teacher.model())?;
        }
        self.check_size("student", &self.student)
    }

    /// Refuses a network too large to train in a server's memory: each field may be in
    /// range while their product is not, and a process that runs out of memory takes
    /// its API down with it.
    fn check_size(&self, field: &str, model: &ModelConfig) -> Result<(), ConfigError> {
        let vocab = self.training.max_vocab + 2;
        let parameters: usize = crate::ml::model::parameter_shapes(model, vocab, 2)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        if parameters > MAX_PARAMETERS {
            return Err(ConfigError::new(
                field,
                format!(
                    "would have about {parameters} parameters with training.max_vocab {}, \
                     more than the {MAX_PARAMETERS} allowed",
                    self.training.max_vocab
                ),
            ));
        }
        // What the backward pass keeps of a batch: about twice the gates of every step
        // of every layer and direction.
        let directions = if model.bidirectional { 2 } else { 1 };
        let per_step = model.cell.gates() * model.hidden_size * model.layers * directions * 2;
        let kept = self.training.batch_size.saturating_mul(self.training.max_len) * per_step;
        if kept > MAX_BATCH_ACTIVATIONS {
            return Err(ConfigError::new(
                field,
                format!(
                    "a training batch would keep about {kept} activations \
                     (training.batch_size x training.max_len x the network's width), \
                     more than the {MAX_BATCH_ACTIVATIONS} allowed"
                ),
            ));
        }
        Ok(())
    }

    /// Epochs of the teacher's phase.
    pub fn teacher_epochs(&self) -> usize {
        self.teacher.epochs.unwrap_or(self.training.epochs)
    }
}

/// Most parameters a recurrent network of a job may have (400 MB of `f32`, before the
/// optimizer's two moments and the gradients).
pub const MAX_PARAMETERS: usize = 100_000_000;

/// Most activations one training batch of a recurrent network may keep (2 GB of `f32`).
pub const MAX_BATCH_ACTIVATIONS: usize = 500_000_000;

fn check_range(field: &str, value: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

fn check_positive(field: &str, value: f64) -> Result<(), ConfigError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(ConfigError::new(field, format!("must be a finite number > 0, got {value}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_gives_defaults() {
        let config = JobConfig::from_json("{}").unwrap();
        assert_eq!(config, JobConfig::default());
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (r#"{"distillation": {"temperature": 0}}"#, "distillation.temperature"),
            (r#"{"distillation": {"alpha": 1.5}}"#, "distillation.alpha"),
            (r#"{"student": {"layers": 0}}"#, "student.layers"),
            (r#"{"student": {"cell": "transformer"}}"#, "student.cell"),
            (r#"{"teacher": {"hiden_size": 3}}"#, "teacher"),
            (r#"{"training": {"batch_size": "x"}}"#, "training.batch_size"),
            (r#"{"device": "tpu"}"#, "device"),
            (
                r#"{"teacher": {"embedding_dim": 4096}, "training": {"max_vocab": 100000}}"#,
                "teacher",
            ),
            (r#"{"student": {"hidden_size": 4096, "layers": 16}}"#, "student"),
            (r#"{"training": {"batch_size": 65536, "max_len": 1000}}"#, "teacher"),
        ];
        for (json, field) in cases {
            let err = JobConfig::from_json(json).unwrap_err();
            assert!(err.field.starts_with(field), "{json}: got field {}", err.field);
        }
    }
}
