//! The pretrained transformer teacher: a BERT-family encoder with a linear classification head.
//!
//! A pretrained model is a folder holding `config.json`, `model.safetensors` and
//! `tokenizer.json` (the layout of a Hugging Face export), found under a configured root
//! ([`registry`]). [`encoder::PretrainedEncoder`] loads it with candle-transformers' BERT and the
//! `tokenizers` crate and turns texts into mean-pooled sentence embeddings, batched and sorted by
//! length. [`teacher::TransformerTeacher`] puts a linear head on those embeddings and trains
//! either the head alone on embeddings computed once (frozen, fast on a CPU) or the whole encoder
//! end to end (fine-tuning). The pipeline then uses the teacher's logits as soft targets for the
//! recurrent student. [`tiny`] writes a tiny random BERT folder for tests.
//!
//! Nothing here downloads anything: every model comes from a local folder.

pub mod bert;
pub mod cache;
pub mod encoder;
pub mod head;
pub mod registry;
pub mod teacher;
pub mod tiny;
mod training;

use std::path::PathBuf;

pub use encoder::{EmbedHooks, EncoderOptions, PretrainedEncoder};
pub use registry::{list_pretrained, resolve_pretrained, PretrainedInfo};
pub use teacher::{
    EpochReport, TeacherData, TeacherMode, TrainCallbacks, TrainReport, TransformerTeacher,
    TransformerTrainConfig,
};
pub use tiny::{write_tiny_bert, TinyBertSpec};

/// What can go wrong while loading, running, training or saving a transformer teacher.
#[derive(Debug, thiserror::Error)]
pub enum TransformerError {
    /// A pretrained folder lacks one of its required files.
    #[error("pretrained model folder {dir} has no {file}")]
    MissingFile {
        /// The folder.
        dir: PathBuf,
        /// The missing file name.
        file: &'static str,
    },
    /// A pretrained model name is not a plain folder name.
    #[error(
        "invalid pretrained model name `{0}`: expected a folder name under the pretrained root"
    )]
    InvalidName(String),
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (model config, teacher description) could not be parsed or written.
    #[error("invalid JSON in {path}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `tokenizer.json` could not be loaded or configured.
    #[error("cannot load tokenizer {path}")]
    TokenizerLoad {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tokenizers::Error,
    },
    /// The tokenizer failed on an input text.
    #[error("tokenization failed")]
    Tokenize(#[source] tokenizers::Error),
    /// The weights file has no BERT embedding table under any prefix.
    #[error("no BERT weights (`*embeddings.word_embeddings.weight`) in {0}")]
    NoBertWeights(PathBuf),
    /// The teacher was saved in a format this build does not read.
    #[error("unsupported teacher format version {0}")]
    UnsupportedVersion(u32),
    /// The caller passed inconsistent inputs (lengths, labels, sizes).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A lock around model variables was poisoned by a panic elsewhere.
    #[error("model variables are unusable after a panic in another thread")]
    Poisoned,
    /// Training was stopped by the caller's stop check.
    #[error("training canceled")]
    Canceled,
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of this module.
pub type Result<T, E = TransformerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
