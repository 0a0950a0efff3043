//! A BERT encoder whose every operation has a gradient, for fine-tuning.
//!
//! candle-transformers' `BertModel` normalizes with candle-nn's fused layer norm kernel, which
//! has no backward pass in Candle 0.11: gradients stop at the first layer norm, so that model
//! cannot be fine-tuned. This module computes the same function (same weight names, same
//! configuration, same masking) with layer norm written out in differentiable tensor operations.
//! It is used only while fine-tuning; inference and frozen training use candle-transformers'
//! model, and a test checks that both give the same outputs.
//!
//! Dropout is left out (as candle-transformers does at inference), which keeps fine-tuning
//! deterministic.

use candle_core::{Tensor, D};
use candle_nn::{embedding, linear, Embedding, Init, Linear, Module, VarBuilder};
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};

use super::Result;

/// Layer normalization over the last dimension, in plain differentiable operations.
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    /// `(.., H)` -> `(.., H)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let centered = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// Word, position and token-type embeddings, summed and normalized.
struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: Norm,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        Ok(Self {
            words: embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?,
            positions: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_types: embedding(
                c.type_vocab_size,
                c.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            norm: Norm::load(vb.pp("LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
        })
    }

    /// `ids`, `types` `(B, L)` u32 -> `(B, L, H)`.
    fn forward(&self, ids: &Tensor, types: &Tensor) -> Result<Tensor> {
        let len = ids.dim(1)?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let sum = (self.words.forward(ids)? + self.token_types.forward(types)?)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        self.norm.forward(&sum)
    }
}

/// One transformer block: self-attention, then the feed-forward layers, each with a residual
/// connection and layer norm.
struct Block {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
    heads: usize,
    activation: HiddenAct,
}

impl Block {
    fn load(vb: VarBuilder, c: &BertConfig) -> Result<Self> {
        let (h, eps) = (c.hidden_size, c.layer_norm_eps);
        let attention = vb.pp("attention");
        Ok(Self {
            query: linear(h, h, attention.pp("self").pp("query"))?,
            key: linear(h, h, attention.pp("self").pp("key"))?,
            value: linear(h, h, attention.pp("self").pp("value"))?,
            attention_out: linear(h, h, attention.pp("output").pp("dense"))?,
            attention_norm: Norm::load(attention.pp("output").pp("LayerNorm"), h, eps)?,
            intermediate: linear(h, c.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            output: linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            output_norm: Norm::load(vb.pp("output").pp("LayerNorm"), h, eps)?,
            heads: c.num_attention_heads,
            activation: c.hidden_act,
        })
    }

    /// `xs` `(B, L, H)`, `bias` `(B, 1, 1, L)` additive mask -> `(B, L, H)`.
    fn forward(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let attended = self.attention(xs, bias)?;
        let attended =
            self.attention_norm.forward(&(self.attention_out.forward(&attended)? + xs)?)?;

        let inner = self.intermediate.forward(&attended)?;
        let inner = match self.activation {
            HiddenAct::Gelu => inner.gelu_erf()?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        self.output_norm.forward(&(self.output.forward(&inner)? + attended)?)
    }

    /// Multi-head scaled dot-product attention: `(B, L, H)` -> `(B, L, H)`.
    fn attention(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, l, h) = xs.dims3()?;
        let head_size = h / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, head_size))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(self.query.forward(xs)?)?;
        let k = split(self.key.forward(xs)?)?;
        let v = split(self.value.forward(xs)?)?;

        let scores = (q.matmul(&k.t()?)? / (head_size as f64).sqrt())?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, h))?)
    }
}

/// A BERT encoder (embeddings and blocks, no pooler) built for training.
pub struct TrainableBert {
    embeddings: Embeddings,
    blocks: Vec<Block>,
}

impl TrainableBert {
    /// Builds the encoder from `vb`, already moved under the weights' key prefix.
    ///
    /// # Errors
    /// A Candle error when a weight is missing or has the wrong shape.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let embeddings = Embeddings::load(vb.pp("embeddings"), config)?;
        let blocks = (0..config.num_hidden_layers)
            .map(|i| Block::load(vb.pp("encoder").pp("layer").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, blocks })
    }

    /// Last hidden states `(B, L, H)` f32 of `ids`, `types` and `mask` `(B, L)` u32 (1 for a
    /// real token, 0 for padding).
    ///
    /// # Errors
    /// A Candle error on inconsistent shapes.
    pub fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        // Padding gets the lowest f32 added to its scores, as Hugging Face does, so that its
        // softmax weight is exactly zero.
        let keep = mask.to_dtype(candle_core::DType::F32)?.unsqueeze(1)?.unsqueeze(1)?;
        let bias = ((1.0 - keep)? * f64::from(f32::MIN))?;

        let mut xs = self.embeddings.forward(ids, types)?;
        for block in &self.blocks {
            xs = block.forward(&xs, &bias)?;
        }
        Ok(xs)
    }
}
