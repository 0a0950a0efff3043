//! Pooled embeddings that a frozen teacher has already computed.
//!
//! A frozen teacher embeds its training and validation texts once to train its head; the
//! pipeline then labels the transfer set, which holds those same texts again (plus any
//! augmented ones). Keeping the pooled vectors by text lets that second pass run the encoder
//! only on texts it has not seen, which halves the teacher's encoder time of a job without
//! augmentation. A fine-tuned encoder changes as it trains, so only the frozen mode keeps one.

use std::collections::HashMap;

use candle_core::Tensor;

use super::Result;

/// Pooled embeddings `(N, hidden)` f32 by text.
pub struct EmbeddingCache {
    rows: HashMap<String, u32>,
    pooled: Tensor,
}

impl std::fmt::Debug for EmbeddingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingCache").field("texts", &self.rows.len()).finish()
    }
}

impl EmbeddingCache {
    /// A cache of `pooled` `(N, hidden)`, row `i` being the embedding of `texts[i]`.
    ///
    /// # Errors
    /// When `pooled` does not have one row per text.
    pub fn new(texts: &[&str], pooled: Tensor) -> Result<Self> {
        let (n, _) = pooled.dims2()?;
        if n != texts.len() {
            let message = format!("{n} embeddings for {} texts", texts.len());
            return Err(super::TransformerError::InvalidInput(message));
        }
        let mut rows = HashMap::with_capacity(n);
        for (i, text) in texts.iter().enumerate() {
            // Row numbers fit: a tensor of more than u32::MAX rows of embeddings would not.
            rows.entry((*text).to_string()).or_insert(i as u32);
        }
        Ok(Self { rows, pooled })
    }

    /// Pooled embeddings of `texts` in order: cached rows where there are some, and
    /// `embed(missing)` for the texts not in the cache (called once, only if any is missing).
    ///
    /// # Errors
    /// What `embed` returns, or a Candle error.
    pub fn pooled_or_embed(
        &self,
        texts: &[&str],
        embed: impl FnOnce(&[&str]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let cached = self.pooled.dim(0)? as u32;
        let mut missing = Vec::new();
        let mut index = Vec::with_capacity(texts.len());
        for text in texts {
            match self.rows.get(*text) {
                Some(&row) => index.push(row),
                None => {
                    index.push(cached + missing.len() as u32);
                    missing.push(*text);
                }
            }
        }

        let index = Tensor::from_vec(index, texts.len(), self.pooled.device())?;
        if missing.is_empty() {
            return Ok(self.pooled.index_select(&index, 0)?);
        }
        let fresh = embed(&missing)?;
        Ok(Tensor::cat(&[&self.pooled, &fresh], 0)?.index_select(&index, 0)?)
    }
}
