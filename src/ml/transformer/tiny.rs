//! A tiny BERT-family model with random weights, written in the pretrained folder layout.
//!
//! Tests (here and in the service's end-to-end tests) need a real folder that goes through the
//! same loading code as a downloaded checkpoint, without any download. [`write_tiny_bert`] writes
//! `config.json`, `model.safetensors` (random weights under the `bert.` key prefix, plus the
//! extra tensors real exports carry: `position_ids` and a pooler) and a WordPiece
//! `tokenizer.json`. The vocabulary holds the special tokens, single letters and digits (with
//! their `##` continuations, so that every lowercase ASCII word can be tokenized) and a few
//! hundred common words.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use super::encoder::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use super::{Result, TransformerError};
use crate::ml::augment::SplitMix64;

/// The special tokens, at ids 0 to 4 in this order.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Whole words of the vocabulary, besides letters and digits.
const WORDS: &str = "the a an and or but of to in on at for with from by about as is are was \
were be been has have had do does did not no yes it its this that these those he she they we \
you i me him her them us my your our their what which who when where why how all any some more \
most very so than too can will would should could may might must up down out over under again \
new old good bad great best worst big small high low first last long short day week year time \
people man woman child world life home team game match win won lose lost goal play player \
season club cup league final score government minister party election vote law court police \
president country state city market shares bank company profit loss price sales growth economy \
deal firm film music star show award band album song actor movie tv phone computer software \
internet technology mobile online data users net love like happy sad hate good awesome terrible \
amazing awful fun boring thanks please sorry today tomorrow night morning lol";

/// Shape of the tiny model written by [`write_tiny_bert_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TinyBertSpec {
    /// Hidden size (a multiple of `attention_heads`).
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub layers: usize,
    /// Attention heads per layer.
    pub attention_heads: usize,
    /// Width of the feed-forward layers.
    pub intermediate_size: usize,
    /// Maximum positions (longest input in tokens).
    pub max_positions: usize,
    /// Key prefix of the weights: `"bert."` (as in `BertFor*` exports) or `""` (as in
    /// sentence-transformers exports).
    pub key_prefix: String,
}

impl Default for TinyBertSpec {
    fn default() -> Self {
        Self {
            hidden_size: 32,
            layers: 2,
            attention_heads: 4,
            intermediate_size: 64,
            max_positions: 64,
            key_prefix: "bert.".to_string(),
        }
    }
}

/// Writes a tiny random BERT-family model folder to `dir` (created if needed) with
/// [`TinyBertSpec::default`]: 2 layers, hidden size 32, 64 positions, weights under `bert.`.
///
/// The weights are a function of `seed`. The folder loads with
/// [`super::PretrainedEncoder::load`] and is listed by [`super::list_pretrained`], so tests can
/// drive the whole transformer-teacher path offline.
///
/// # Errors
/// [`TransformerError::Io`] or a Candle error when a file cannot be written.
pub fn write_tiny_bert(dir: &Path, seed: u64) -> Result<()> {
    write_tiny_bert_with(dir, seed, &TinyBertSpec::default())
}

/// As [`write_tiny_bert`], with the model's shape given.
///
/// # Errors
/// [`TransformerError::InvalidInput`] when `hidden_size` is not a multiple of
/// `attention_heads`; otherwise as [`write_tiny_bert`].
pub fn write_tiny_bert_with(dir: &Path, seed: u64, spec: &TinyBertSpec) -> Result<()> {
    if spec.attention_heads == 0 || spec.hidden_size % spec.attention_heads != 0 {
        return Err(TransformerError::InvalidInput(format!(
            "hidden_size {} is not a multiple of attention_heads {}",
            spec.hidden_size, spec.attention_heads
        )));
    }
    std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;

    let vocab = tiny_vocab();
    write_json(&dir.join(CONFIG_FILE), &config_json(spec, vocab.len()))?;
    write_json(&dir.join(TOKENIZER_FILE), &tokenizer_json(&vocab))?;
    let tensors = random_weights(spec, vocab.len(), seed)?;
    candle_core::safetensors::save(&tensors, dir.join(WEIGHTS_FILE))?;
    Ok(())
}

/// The vocabulary in id order: special tokens, letters, digits, continuations, words.
fn tiny_vocab() -> Vec<String> {
    let mut vocab: Vec<String> = SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect();
    let symbols: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    vocab.extend(symbols.iter().map(char::to_string));
    vocab.extend(symbols.iter().map(|c| format!("##{c}")));
    vocab.extend(['.', ',', '!', '?', '\'', '-', ':', ';'].iter().map(char::to_string));
    for word in WORDS.split_whitespace() {
        if !vocab.iter().any(|v| v == word) {
            vocab.push(word.to_string());
        }
    }
    vocab
}

/// `config.json` in the Hugging Face BERT format.
fn config_json(spec: &TinyBertSpec, vocab_size: usize) -> Value {
    json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention_heads,
        "intermediate_size": spec.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": spec.max_positions,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute"
    })
}

/// `tokenizer.json` for a lowercasing BERT WordPiece tokenizer over `vocab`.
fn tokenizer_json(vocab: &[String]) -> Value {
    let ids: serde_json::Map<String, Value> =
        vocab.iter().enumerate().map(|(id, token)| (token.clone(), json!(id))).collect();
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, token)| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    })
}

/// Random weights under the names candle-transformers' BERT reads, plus the extras of real
/// exports.
///
/// Word embeddings get a larger scale (1.0) than positions (0.1) so that pooled outputs of the
/// random model still tell words apart; other matrices use BERT's 0.02.
fn random_weights(
    spec: &TinyBertSpec,
    vocab_size: usize,
    seed: u64,
) -> Result<HashMap<String, Tensor>> {
    let mut w = WeightWriter { rng: SplitMix64::new(seed), tensors: HashMap::new() };
    let (h, p) = (spec.hidden_size, spec.max_positions);
    let e = format!("{}embeddings.", spec.key_prefix);
    w.normal(&format!("{e}word_embeddings.weight"), &[vocab_size, h], 1.0)?;
    w.normal(&format!("{e}position_embeddings.weight"), &[p, h], 0.1)?;
    w.normal(&format!("{e}token_type_embeddings.weight"), &[2, h], 0.02)?;
    w.layer_norm(&format!("{e}LayerNorm"), h)?;
    let positions: Vec<i64> = (0..p as i64).collect();
    w.tensors
        .insert(format!("{e}position_ids"), Tensor::from_vec(positions, (1, p), &Device::Cpu)?);

    for layer in 0..spec.layers {
        let l = format!("{}encoder.layer.{layer}.", spec.key_prefix);
        for part in ["query", "key", "value"] {
            w.linear(&format!("{l}attention.self.{part}"), h, h)?;
        }
        w.linear(&format!("{l}attention.output.dense"), h, h)?;
        w.layer_norm(&format!("{l}attention.output.LayerNorm"), h)?;
        w.linear(&format!("{l}intermediate.dense"), h, spec.intermediate_size)?;
        w.linear(&format!("{l}output.dense"), spec.intermediate_size, h)?;
        w.layer_norm(&format!("{l}output.LayerNorm"), h)?;
    }
    w.linear(&format!("{}pooler.dense", spec.key_prefix), h, h)?;
    Ok(w.tensors)
}

/// Collects named random tensors.
struct WeightWriter {
    rng: SplitMix64,
    tensors: HashMap<String, Tensor>,
}

impl WeightWriter {
    /// A tensor of normal values (Box-Muller over the seeded generator).
    fn normal(&mut self, name: &str, shape: &[usize], std: f64) -> Result<()> {
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| {
                let u1 = 1.0 - self.rng.next_f64();
                let u2 = self.rng.next_f64();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (z * std) as f32
            })
            .collect();
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?;
        self.tensors.insert(name.to_string(), tensor);
        Ok(())
    }

    /// A linear layer `name.weight` `(out, in)` and `name.bias` `(out)` (zeros).
    fn linear(&mut self, name: &str, inputs: usize, outputs: usize) -> Result<()> {
        self.normal(&format!("{name}.weight"), &[outputs, inputs], 0.02)?;
        let bias = Tensor::zeros(outputs, candle_core::DType::F32, &Device::Cpu)?;
        self.tensors.insert(format!("{name}.bias"), bias);
        Ok(())
    }

    /// A layer norm with unit gain and zero bias.
    fn layer_norm(&mut self, name: &str, size: usize) -> Result<()> {
        let gain = Tensor::ones(size, candle_core::DType::F32, &Device::Cpu)?;
        let bias = Tensor::zeros(size, candle_core::DType::F32, &Device::Cpu)?;
        self.tensors.insert(format!("{name}.weight"), gain);
        self.tensors.insert(format!("{name}.bias"), bias);
        Ok(())
    }
}

/// Writes pretty JSON to `path`.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|source| TransformerError::Json { path: path.to_path_buf(), source })?;
    std::fs::write(path, text).map_err(|source| io_error(path, source))
}

/// An I/O error on `path`.
fn io_error(path: &Path, source: std::io::Error) -> TransformerError {
    TransformerError::Io { path: path.to_path_buf(), source }
}
