//! The transformer teacher: a pretrained encoder plus a [`LinearHead`], trained on labelled texts.
//!
//! Two modes ([`TeacherMode`]):
//! - frozen (default): the encoder is run once over the training and validation texts, and only
//!   the head is trained on those fixed embeddings. The encoder pass dominates the time; epochs
//!   of the head cost milliseconds.
//! - fine-tune: encoder and head are trained end to end (AdamW, a small learning rate for the
//!   encoder and a larger one for the new head). Slow on a CPU.
//!
//! Training runs epochs of shuffled mini-batches with cross-entropy, checks the caller's stop
//! flag between batches, evaluates accuracy on the validation texts after each epoch, and keeps
//! the weights of the best epoch. A trained teacher is saved as a folder: `teacher.json` (the
//! pretrained folder's name, the mode, the shapes), `head.safetensors`, and for fine-tuning
//! `encoder.safetensors`; loading needs the pretrained root for the config and tokenizer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::cache::EmbeddingCache;
use super::encoder::{EmbedHooks, EncoderOptions, PretrainedEncoder};
use super::head::LinearHead;
use super::registry::{read_json, resolve_pretrained};
use super::training::{adamw, run_epochs, FineTuneTrainee, FrozenTrainee};
use super::{Result, TransformerError};

/// Format version written to `teacher.json`.
const FORMAT_VERSION: u32 = 1;
/// Description file of a saved teacher.
pub const TEACHER_FILE: &str = "teacher.json";
/// Head weights of a saved teacher.
pub const HEAD_FILE: &str = "head.safetensors";
/// Encoder weights of a saved fine-tuned teacher.
pub const ENCODER_FILE: &str = "encoder.safetensors";

/// How the encoder takes part in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TeacherMode {
    /// Encoder frozen; only the head is trained, on embeddings computed once.
    #[default]
    Frozen,
    /// Encoder and head trained end to end.
    FineTune,
}

/// Hyperparameters of [`TransformerTeacher::train`].
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerTrainConfig {
    /// Frozen or fine-tuned encoder.
    pub mode: TeacherMode,
    /// Passes over the training texts (at least 1).
    pub epochs: usize,
    /// Texts per training step (at least 1).
    pub batch_size: usize,
    /// AdamW learning rate of the head.
    pub lr: f64,
    /// AdamW learning rate of the encoder (fine-tune only).
    pub encoder_lr: f64,
    /// AdamW decoupled weight decay, for head and encoder.
    pub weight_decay: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Truncation in tokens; `None` uses the encoder's default (see [`EncoderOptions`]).
    pub max_tokens: Option<usize>,
    /// Texts per batch of the embedding passes (frozen embeddings, validation, logits).
    pub embed_batch_size: usize,
}

impl Default for TransformerTrainConfig {
    fn default() -> Self {
        Self {
            mode: TeacherMode::Frozen,
            epochs: 30,
            batch_size: 32,
            lr: 1e-3,
            encoder_lr: 3e-5,
            weight_decay: 1e-2,
            seed: 0,
            max_tokens: None,
            embed_batch_size: 32,
        }
    }
}

/// Labelled texts for training and validation.
#[derive(Debug, Clone, Copy)]
pub struct TeacherData<'a> {
    /// Training texts.
    pub train_texts: &'a [&'a str],
    /// Label id of each training text, below `num_labels`.
    pub train_labels: &'a [u32],
    /// Validation texts (may be empty: then the last epoch is kept).
    pub valid_texts: &'a [&'a str],
    /// Label id of each validation text.
    pub valid_labels: &'a [u32],
    /// Number of classes (at least 2).
    pub num_labels: usize,
}

/// Hooks into [`TransformerTeacher::train`].
#[derive(Clone, Copy)]
pub struct TrainCallbacks<'a> {
    /// Called after each step with `(epoch, step, steps_per_epoch, loss)`, epoch and step from 1.
    pub progress: &'a dyn Fn(usize, usize, usize, f64),
    /// Checked before each batch; `true` stops training with [`TransformerError::Canceled`].
    pub should_stop: &'a dyn Fn() -> bool,
    /// Called after each embedding batch with `(texts_done, texts_total)`.
    pub embed_progress: &'a dyn Fn(usize, usize),
}

impl Default for TrainCallbacks<'_> {
    fn default() -> Self {
        Self { progress: &ignore_step, should_stop: &never_stop, embed_progress: &ignore_embed }
    }
}

impl std::fmt::Debug for TrainCallbacks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrainCallbacks")
    }
}

fn ignore_step(_: usize, _: usize, _: usize, _: f64) {}
fn never_stop() -> bool {
    false
}
fn ignore_embed(_: usize, _: usize) {}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochReport {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training cross-entropy over the epoch's batches.
    pub train_loss: f64,
    /// Accuracy on the validation texts, when there are any.
    pub valid_accuracy: Option<f64>,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
}

/// What a training run did and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    /// The mode trained.
    pub mode: TeacherMode,
    /// One entry per epoch run.
    pub epochs: Vec<EpochReport>,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Validation accuracy of the kept epoch.
    pub best_valid_accuracy: Option<f64>,
    /// Seconds spent loading the encoder.
    pub load_seconds: f64,
    /// Seconds spent embedding texts before training (frozen mode; 0 for fine-tuning).
    pub embed_seconds: f64,
    /// Texts embedded per second in that pass.
    pub embed_texts_per_s: f64,
    /// Seconds spent in the epochs.
    pub train_seconds: f64,
}

/// Description stored in `teacher.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TeacherFile {
    format_version: u32,
    pretrained: String,
    mode: TeacherMode,
    num_labels: usize,
    hidden_size: usize,
    max_tokens: usize,
}

/// A pretrained encoder with a trained classification head.
#[derive(Debug)]
pub struct TransformerTeacher {
    pretrained: String,
    mode: TeacherMode,
    encoder: PretrainedEncoder,
    head: LinearHead,
    /// Frozen mode, after training: the embeddings of the training and validation texts.
    cache: Option<EmbeddingCache>,
}

impl TransformerTeacher {
    /// Trains a teacher on the pretrained folder `pretrained_dir` (see the module docs).
    ///
    /// # Errors
    /// [`TransformerError::InvalidInput`] for inconsistent data or hyperparameters,
    /// [`TransformerError::Canceled`] when `should_stop` returned true, a loading error from
    /// [`PretrainedEncoder::load_with`], or a Candle error.
    pub fn train(
        pretrained_dir: &Path,
        data: &TeacherData<'_>,
        config: &TransformerTrainConfig,
        device: &Device,
        callbacks: &TrainCallbacks<'_>,
    ) -> Result<(Self, TrainReport)> {
        validate(data, config)?;
        let start = Instant::now();
        let trainable = config.mode == TeacherMode::FineTune;
        let options = EncoderOptions { max_tokens: config.max_tokens, trainable, weights: None };
        let encoder = PretrainedEncoder::load_with(pretrained_dir, device, &options)?;
        let load_seconds = start.elapsed().as_secs_f64();
        tracing::info!(
            dir = %pretrained_dir.display(),
            mode = ?config.mode,
            load_seconds,
            "loaded encoder"
        );

        let pretrained = folder_name(pretrained_dir)?;
        let head = LinearHead::new(encoder.hidden_size(), data.num_labels, device)?;
        let mut teacher = Self { pretrained, mode: config.mode, encoder, head, cache: None };
        let mut report = match config.mode {
            TeacherMode::Frozen => teacher.train_frozen(data, config, callbacks)?,
            TeacherMode::FineTune => teacher.train_fine_tune(data, config, callbacks)?,
        };
        report.load_seconds = load_seconds;
        Ok((teacher, report))
    }

    /// Name of the pretrained folder the teacher was built on.
    pub fn pretrained(&self) -> &str {
        &self.pretrained
    }

    /// Frozen or fine-tuned.
    pub fn mode(&self) -> TeacherMode {
        self.mode
    }

    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.head.labels()
    }

    /// The encoder.
    pub fn encoder(&self) -> &PretrainedEncoder {
        &self.encoder
    }

    /// Logits `(N, C)` f32 of `texts`, in input order, computed in length-sorted batches.
    /// A frozen teacher fresh from training reuses the embeddings of the texts it trained
    /// and validated on.
    ///
    /// # Errors
    /// A tokenizer or Candle error.
    pub fn logits(&self, texts: &[&str], batch_size: usize) -> Result<Tensor> {
        self.logits_with_hooks(texts, batch_size, &EmbedHooks::default())
    }

    /// As [`Self::logits`], reporting progress and checking for a stop between batches.
    ///
    /// # Errors
    /// A tokenizer or Candle error, or [`TransformerError::Canceled`] when stopped.
    pub fn logits_with_hooks(
        &self,
        texts: &[&str],
        batch_size: usize,
        hooks: &EmbedHooks<'_>,
    ) -> Result<Tensor> {
        let embed = |texts: &[&str]| self.encoder.embed_with_hooks(texts, batch_size, hooks);
        let pooled = match &self.cache {
            Some(cache) => cache.pooled_or_embed(texts, embed)?,
            None => embed(texts)?,
        };
        Ok(self.head.forward(&pooled)?.detach())
    }

    /// Saves the teacher into `dir` (created if needed).
    ///
    /// # Errors
    /// [`TransformerError::Io`]/[`TransformerError::Json`] or a Candle error on write failure.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|source| TransformerError::Io { path: dir.to_path_buf(), source })?;
        self.head.save(&dir.join(HEAD_FILE))?;
        if self.mode == TeacherMode::FineTune {
            self.encoder.save_weights(&dir.join(ENCODER_FILE))?;
        }

        let file = TeacherFile {
            format_version: FORMAT_VERSION,
            pretrained: self.pretrained.clone(),
            mode: self.mode,
            num_labels: self.head.labels(),
            hidden_size: self.encoder.hidden_size(),
            max_tokens: self.encoder.max_tokens(),
        };
        let path = dir.join(TEACHER_FILE);
        let text = serde_json::to_string_pretty(&file)
            .map_err(|source| TransformerError::Json { path: path.clone(), source })?;
        std::fs::write(&path, text).map_err(|source| TransformerError::Io { path, source })
    }

    /// Loads a teacher saved by [`Self::save`], with its config and tokenizer from the folder
    /// named in `teacher.json` under `pretrained_root`. The encoder is loaded frozen.
    ///
    /// # Errors
    /// [`TransformerError::UnsupportedVersion`] for a newer format, a name or loading error
    /// when the pretrained folder is gone, [`TransformerError::InvalidInput`] when the head does
    /// not fit the encoder.
    pub fn load(dir: &Path, pretrained_root: &Path, device: &Device) -> Result<Self> {
        let file: TeacherFile = read_json(&dir.join(TEACHER_FILE))?;
        if file.format_version != FORMAT_VERSION {
            return Err(TransformerError::UnsupportedVersion(file.format_version));
        }
        let pretrained_dir = resolve_pretrained(pretrained_root, &file.pretrained)?;
        let weights = (file.mode == TeacherMode::FineTune).then(|| dir.join(ENCODER_FILE));
        let options =
            EncoderOptions { max_tokens: Some(file.max_tokens), trainable: false, weights };
        let encoder = PretrainedEncoder::load_with(&pretrained_dir, device, &options)?;

        let head = LinearHead::load(&dir.join(HEAD_FILE), device)?;
        if encoder.hidden_size() != file.hidden_size || head.labels() != file.num_labels {
            return Err(TransformerError::InvalidInput(format!(
                "teacher in {} does not fit pretrained model `{}`",
                dir.display(),
                file.pretrained
            )));
        }
        Ok(Self { pretrained: file.pretrained, mode: file.mode, encoder, head, cache: None })
    }

    /// Frozen mode: 1. embed training and validation texts once, 2. fit the scaler, 3. train
    /// the head on the fixed embeddings.
    fn train_frozen(
        &mut self,
        data: &TeacherData<'_>,
        config: &TransformerTrainConfig,
        callbacks: &TrainCallbacks<'_>,
    ) -> Result<TrainReport> {
        // 1. One pass over all texts, so that sorting by length spans both sets.
        let start = Instant::now();
        let all: Vec<&str> = data.train_texts.iter().chain(data.valid_texts).copied().collect();
        let hooks =
            EmbedHooks { progress: callbacks.embed_progress, should_stop: callbacks.should_stop };
        let pooled = self.encoder.embed_with_hooks(&all, config.embed_batch_size, &hooks)?;
        let embed_seconds = start.elapsed().as_secs_f64();
        self.cache = Some(EmbeddingCache::new(&all, pooled.clone())?);
        let n_train = data.train_texts.len();
        let train_x = pooled.narrow(0, 0, n_train)?;
        let valid_x = pooled.narrow(0, n_train, data.valid_texts.len())?;

        // 2.
        self.head.fit_scaler(&train_x)?;

        // 3.
        let device = self.encoder.device().clone();
        let mut trainee = FrozenTrainee {
            head: &self.head,
            optimizer: adamw(self.head.vars(), config.lr, config.weight_decay)?,
            train_x,
            train_y: Tensor::new(data.train_labels, &device)?,
            valid_x,
            valid_labels: data.valid_labels,
        };
        let mut report = run_epochs(&mut trainee, n_train, config, callbacks)?;
        report.embed_seconds = embed_seconds;
        report.embed_texts_per_s = all.len() as f64 / embed_seconds.max(1e-9);
        Ok(report)
    }

    /// Fine-tune mode: tokenize once, then train encoder and head end to end.
    fn train_fine_tune(
        &mut self,
        data: &TeacherData<'_>,
        config: &TransformerTrainConfig,
        callbacks: &TrainCallbacks<'_>,
    ) -> Result<TrainReport> {
        let encoder_vars = self.encoder.vars();
        let mut all_vars = encoder_vars.clone();
        all_vars.extend(self.head.vars());
        let mut trainee = FineTuneTrainee {
            encoder: &self.encoder,
            head: &self.head,
            encoder_optimizer: adamw(encoder_vars, config.encoder_lr, config.weight_decay)?,
            head_optimizer: adamw(self.head.vars(), config.lr, config.weight_decay)?,
            all_vars,
            train_ids: self.encoder.tokenize(data.train_texts)?,
            train_labels: data.train_labels,
            valid_ids: self.encoder.tokenize(data.valid_texts)?,
            valid_labels: data.valid_labels,
            embed_batch_size: config.embed_batch_size,
            hooks: EmbedHooks { should_stop: callbacks.should_stop, ..EmbedHooks::default() },
        };
        run_epochs(&mut trainee, data.train_texts.len(), config, callbacks)
    }
}

/// Checks lengths, label ids and hyperparameters.
fn validate(data: &TeacherData<'_>, config: &TransformerTrainConfig) -> Result<()> {
    let invalid = |message: String| Err(TransformerError::InvalidInput(message));
    if data.num_labels < 2 {
        return invalid(format!("need at least 2 labels, got {}", data.num_labels));
    }
    if data.train_texts.is_empty() || data.train_texts.len() != data.train_labels.len() {
        return invalid("need as many training labels as training texts, and some".into());
    }
    if data.valid_texts.len() != data.valid_labels.len() {
        return invalid("need as many validation labels as validation texts".into());
    }
    let labels = data.train_labels.iter().chain(data.valid_labels);
    if let Some(bad) = labels.copied().find(|&l| l as usize >= data.num_labels) {
        return invalid(format!("label id {bad} is not below num_labels {}", data.num_labels));
    }
    if config.epochs == 0 || config.batch_size == 0 || config.embed_batch_size == 0 {
        return invalid("epochs, batch_size and embed_batch_size must be at least 1".into());
    }
    Ok(())
}

/// The last component of a pretrained folder path, used as its name.
fn folder_name(dir: &Path) -> Result<String> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| TransformerError::InvalidName(PathBuf::from(dir).display().to_string()))
}
