//! A pretrained BERT-family encoder that turns texts into mean-pooled sentence embeddings.
//!
//! Loading reads `config.json` (candle-transformers' BERT config), `tokenizer.json` (the
//! `tokenizers` crate) and the weights, whose key prefix varies between exports (`embeddings.*`
//! or `bert.embeddings.*`): the prefix is found from the name of the word embedding table. A
//! frozen encoder runs candle-transformers' `BertModel` over plain tensors; a trainable one runs
//! the differentiable [`TrainableBert`] over variables in a [`VarMap`], for fine-tuning.
//!
//! Embedding texts goes: 1. tokenize all texts (in parallel, truncated to `max_tokens` with the
//! final `[SEP]` kept), 2. sort them by token count, 3. run batches padded to their longest
//! member, 4. mean-pool each text over its real tokens, 5. put the rows back in input order.
//! Sorting keeps padding, and so wasted work, small. Candle's CPU kernels use every core
//! (`RAYON_NUM_THREADS` caps them).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use super::bert::TrainableBert;
use super::registry::{check_folder, read_json};
use super::{Result, TransformerError};

/// The model configuration file of a pretrained folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a pretrained folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The tokenizer file of a pretrained folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Optional sentence-transformers file whose `max_seq_length` sets the default truncation.
pub const SENTENCE_CONFIG_FILE: &str = "sentence_bert_config.json";

/// Name suffix of the word embedding table, whose full name reveals the key prefix.
const EMBEDDING_SUFFIX: &str = "embeddings.word_embeddings.weight";

/// How to load a [`PretrainedEncoder`].
#[derive(Debug, Clone, Default)]
pub struct EncoderOptions {
    /// Truncation length in tokens, `[CLS]` and `[SEP]` included. Default: `max_seq_length` of
    /// `sentence_bert_config.json` when the folder has one, else the model's maximum positions.
    /// Always capped at the maximum positions.
    pub max_tokens: Option<usize>,
    /// Hold the weights as trainable variables (for fine-tuning).
    pub trainable: bool,
    /// Read the weights from this safetensors file instead of the folder's `model.safetensors`
    /// (a fine-tuned encoder saved by [`PretrainedEncoder::save_weights`]).
    pub weights: Option<PathBuf>,
}

/// Hooks into a long embedding pass.
#[derive(Clone, Copy)]
pub struct EmbedHooks<'a> {
    /// Called after each batch with `(texts_done, texts_total)`.
    pub progress: &'a dyn Fn(usize, usize),
    /// Checked before each batch; `true` ends the pass with [`TransformerError::Canceled`].
    pub should_stop: &'a dyn Fn() -> bool,
}

impl Default for EmbedHooks<'_> {
    fn default() -> Self {
        Self { progress: &ignore_progress, should_stop: &never_stop }
    }
}

impl std::fmt::Debug for EmbedHooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbedHooks")
    }
}

fn ignore_progress(_: usize, _: usize) {}

fn never_stop() -> bool {
    false
}

/// The subset of `sentence_bert_config.json` read here.
#[derive(Debug, Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

/// The network under the tokenizer.
enum Backbone {
    /// candle-transformers' model over plain tensors (fast, no gradients).
    Frozen(BertModel),
    /// The differentiable model over variables.
    Trainable(TrainableBert),
}

impl Backbone {
    /// Last hidden states `(B, L, H)` of `ids`, `types`, `mask` `(B, L)` u32.
    fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self {
            Self::Frozen(model) => Ok(model.forward(ids, types, Some(mask))?),
            Self::Trainable(model) => model.forward(ids, types, mask),
        }
    }
}

/// A BERT-family encoder with its tokenizer, producing mean-pooled sentence embeddings.
pub struct PretrainedEncoder {
    dir: PathBuf,
    config: BertConfig,
    tokenizer: Tokenizer,
    model: Backbone,
    max_tokens: usize,
    pad_id: u32,
    device: Device,
    varmap: Option<VarMap>,
}

impl std::fmt::Debug for PretrainedEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PretrainedEncoder")
            .field("dir", &self.dir)
            .field("hidden_size", &self.config.hidden_size)
            .field("layers", &self.config.num_hidden_layers)
            .field("max_tokens", &self.max_tokens)
            .field("trainable", &self.varmap.is_some())
            .finish()
    }
}

impl PretrainedEncoder {
    /// Loads a frozen encoder from a pretrained folder with default options.
    ///
    /// # Errors
    /// [`TransformerError::MissingFile`] when the folder lacks a required file; a JSON,
    /// tokenizer or Candle error when a file is invalid; [`TransformerError::NoBertWeights`] when
    /// the weights hold no BERT embedding table.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with(dir, device, &EncoderOptions::default())
    }

    /// Loads an encoder from a pretrained folder.
    ///
    /// # Errors
    /// As [`PretrainedEncoder::load`], and [`TransformerError::InvalidInput`] when
    /// `options.max_tokens` is below 2.
    pub fn load_with(dir: &Path, device: &Device, options: &EncoderOptions) -> Result<Self> {
        check_folder(dir)?;
        let config: BertConfig = read_json(&dir.join(CONFIG_FILE))?;
        let max_tokens = resolve_max_tokens(dir, &config, options.max_tokens)?;
        let tokenizer = load_tokenizer(&dir.join(TOKENIZER_FILE), max_tokens)?;

        let weights = options.weights.clone().unwrap_or_else(|| dir.join(WEIGHTS_FILE));
        let tensors = candle_core::safetensors::load(&weights, device)?;
        let prefix = find_prefix(&tensors).ok_or(TransformerError::NoBertWeights(weights))?;
        let (model, varmap) = if options.trainable {
            let (model, varmap) = build_trainable(&tensors, &prefix, &config, device)?;
            (Backbone::Trainable(model), Some(varmap))
        } else {
            let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
            (Backbone::Frozen(BertModel::load(at_prefix(vb, &prefix), &config)?), None)
        };

        let pad_id = u32::try_from(config.pad_token_id).unwrap_or(0);
        let dir = dir.to_path_buf();
        Ok(Self {
            dir,
            config,
            tokenizer,
            model,
            max_tokens,
            pad_id,
            device: device.clone(),
            varmap,
        })
    }

    /// The folder the encoder was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Width of the embeddings (the model's hidden size).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Truncation length in tokens, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The model's BERT configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The encoder's trainable variables; empty for a frozen encoder.
    pub fn vars(&self) -> Vec<Var> {
        self.varmap.as_ref().map(VarMap::all_vars).unwrap_or_default()
    }

    /// Writes the weights of a trainable encoder to a safetensors file, under the key names of
    /// the original export.
    ///
    /// # Errors
    /// [`TransformerError::InvalidInput`] for a frozen encoder; a Candle error on write failure.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        let varmap = self.varmap.as_ref().ok_or_else(|| {
            TransformerError::InvalidInput("only a trainable encoder saves its weights".into())
        })?;
        Ok(varmap.save(path)?)
    }

    /// Token ids of each text, with `[CLS]`/`[SEP]`, truncated to [`Self::max_tokens`].
    ///
    /// # Errors
    /// [`TransformerError::Tokenize`] when the tokenizer fails.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(TransformerError::Tokenize)?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Mean-pooled embeddings of one batch of token id sequences, padded to the longest.
    ///
    /// Returns `(B, hidden)` f32. On a trainable encoder the result is part of the autograd
    /// graph, so a loss on it trains the encoder.
    ///
    /// # Errors
    /// A Candle error from the forward pass.
    pub fn forward_pooled(&self, seqs: &[&[u32]]) -> Result<Tensor> {
        let (ids, mask) = self.pad_batch(seqs)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, &mask)?;
        mean_pool(&hidden, &mask)
    }

    /// Mean-pooled sentence embeddings of `texts`, `(N, hidden)` f32 in input order.
    ///
    /// # Errors
    /// A tokenizer or Candle error.
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Tensor> {
        self.embed_with_hooks(texts, batch_size, &EmbedHooks::default())
    }

    /// As [`Self::embed`], reporting progress and checking for a stop between batches, and
    /// logging the throughput at the end.
    ///
    /// # Errors
    /// A tokenizer or Candle error, or [`TransformerError::Canceled`] when stopped.
    pub fn embed_with_hooks(
        &self,
        texts: &[&str],
        batch_size: usize,
        hooks: &EmbedHooks<'_>,
    ) -> Result<Tensor> {
        let start = Instant::now();
        let seqs = self.tokenize(texts)?;
        let embeddings = self.embed_tokens(&seqs, batch_size, hooks)?;

        let seconds = start.elapsed().as_secs_f64();
        tracing::info!(
            texts = texts.len(),
            batch_size,
            elapsed_ms = (seconds * 1000.0) as u64,
            texts_per_s = texts.len() as f64 / seconds.max(1e-9),
            "embedded texts"
        );
        Ok(embeddings)
    }

    /// Mean-pooled embeddings of tokenized texts, `(N, hidden)` f32 in input order, computed in
    /// batches of `batch_size` texts of similar length.
    ///
    /// # Errors
    /// A Candle error from the forward pass, or [`TransformerError::Canceled`] when stopped.
    pub fn embed_tokens(
        &self,
        seqs: &[Vec<u32>],
        batch_size: usize,
        hooks: &EmbedHooks<'_>,
    ) -> Result<Tensor> {
        if seqs.is_empty() {
            return Ok(Tensor::zeros((0, self.hidden_size()), DType::F32, &self.device)?);
        }

        // Longest first, so that a batch too large for memory fails at once.
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| Reverse(seqs[i].len()));

        let mut parts = Vec::with_capacity(order.len().div_ceil(batch_size.max(1)));
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            if (hooks.should_stop)() {
                return Err(TransformerError::Canceled);
            }
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            parts.push(self.forward_pooled(&batch)?.detach());
            done += chunk.len();
            (hooks.progress)(done, seqs.len());
        }

        let sorted = Tensor::cat(&parts, 0)?;
        restore_order(&sorted, &order)
    }

    /// Pads sequences to the longest with the pad id: `(ids, mask)`, both `(B, L)` u32.
    fn pad_batch(&self, seqs: &[&[u32]]) -> Result<(Tensor, Tensor)> {
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(seqs.len() * len);
        let mut mask = Vec::with_capacity(seqs.len() * len);
        for seq in seqs {
            let pad = len - seq.len();
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(self.pad_id, pad));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, pad));
        }

        let shape = (seqs.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        Ok((ids, mask))
    }
}

/// Averages token states over the real tokens: `hidden` `(B, L, H)`, `mask` `(B, L)` of 0/1 ->
/// `(B, H)`, as sentence-transformers' mean pooling does.
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
    let count = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}

/// Row `k` of `sorted` belongs to text `order[k]`; returns the rows in text order.
fn restore_order(sorted: &Tensor, order: &[usize]) -> Result<Tensor> {
    let mut position = vec![0u32; order.len()];
    for (k, &text) in order.iter().enumerate() {
        position[text] = u32::try_from(k).map_err(|_| {
            TransformerError::InvalidInput(format!("too many texts ({})", order.len()))
        })?;
    }
    let index = Tensor::from_vec(position, order.len(), sorted.device())?;
    Ok(sorted.index_select(&index, 0)?)
}

/// The truncation length: asked for, else the sentence-transformers setting, else the model's
/// maximum positions; never above the maximum positions.
fn resolve_max_tokens(dir: &Path, config: &BertConfig, asked: Option<usize>) -> Result<usize> {
    let sentence_path = dir.join(SENTENCE_CONFIG_FILE);
    let from_sentence = if asked.is_none() && sentence_path.is_file() {
        read_json::<SentenceConfig>(&sentence_path)?.max_seq_length
    } else {
        None
    };

    let max_tokens = asked.or(from_sentence).unwrap_or(config.max_position_embeddings);
    if max_tokens < 2 {
        return Err(TransformerError::InvalidInput(format!(
            "max_tokens must be at least 2 (for [CLS] and [SEP]), got {max_tokens}"
        )));
    }
    Ok(max_tokens.min(config.max_position_embeddings))
}

/// Loads `tokenizer.json` with padding off (batches are padded here) and truncation at
/// `max_tokens`.
fn load_tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer> {
    let load_error = |source| TransformerError::TokenizerLoad { path: path.to_path_buf(), source };
    let mut tokenizer = Tokenizer::from_file(path).map_err(load_error)?;
    tokenizer.with_padding(None);
    let truncation = TruncationParams { max_length: max_tokens, ..TruncationParams::default() };
    tokenizer.with_truncation(Some(truncation)).map_err(load_error)?;
    Ok(tokenizer)
}

/// The key prefix before `embeddings.word_embeddings.weight` (`""` or e.g. `"bert."`).
fn find_prefix(tensors: &HashMap<String, Tensor>) -> Option<String> {
    tensors
        .keys()
        .filter_map(|name| name.strip_suffix(EMBEDDING_SUFFIX))
        .filter(|prefix| prefix.is_empty() || prefix.ends_with('.'))
        .min_by_key(|prefix| prefix.len())
        .map(str::to_string)
}

/// `vb` moved under a key prefix such as `"bert."` (or left alone for `""`).
fn at_prefix<'a>(vb: VarBuilder<'a>, prefix: &str) -> VarBuilder<'a> {
    match prefix.strip_suffix('.') {
        Some(path) if !path.is_empty() => vb.pp(path),
        _ => vb,
    }
}

/// Builds the differentiable model over fresh variables, then sets each variable to the stored
/// weight.
///
/// Building first makes the map hold exactly the weights the model uses, whatever else the
/// export carries (pooler, masked-LM head, position ids).
fn build_trainable(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    config: &BertConfig,
    device: &Device,
) -> Result<(TrainableBert, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = TrainableBert::load(at_prefix(vb, prefix), config)?;

    let vars = varmap.data().lock().map_err(|_| TransformerError::Poisoned)?;
    for (name, var) in vars.iter() {
        let stored = tensors.get(name).ok_or_else(|| {
            TransformerError::InvalidInput(format!("weights have no tensor `{name}`"))
        })?;
        var.set(&stored.to_dtype(DType::F32)?)?;
    }
    drop(vars);
    Ok((model, varmap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_found_with_and_without_bert() {
        let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let plain = HashMap::from([("embeddings.word_embeddings.weight".to_string(), t.clone())]);
        assert_eq!(find_prefix(&plain).as_deref(), Some(""));
        let nested =
            HashMap::from([("bert.embeddings.word_embeddings.weight".to_string(), t.clone())]);
        assert_eq!(find_prefix(&nested).as_deref(), Some("bert."));
        let none = HashMap::from([("xembeddings.word_embeddings.weight".to_string(), t)]);
        assert_eq!(find_prefix(&none), None);
    }

    #[test]
    fn mean_pool_ignores_padding() {
        let dev = Device::Cpu;
        let hidden = Tensor::new(&[[[1f32, 2.], [3., 4.], [100., 100.]]], &dev).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0]], &dev).unwrap();
        let pooled = mean_pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pooled, vec![vec![2.0, 3.0]]);
    }

    #[test]
    fn restore_order_inverts_the_sort() {
        let dev = Device::Cpu;
        let sorted = Tensor::new(&[[20f32], [0.], [10.]], &dev).unwrap();
        let back = restore_order(&sorted, &[2, 0, 1]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(back, vec![vec![0.0], vec![10.0], vec![20.0]]);
    }
}
