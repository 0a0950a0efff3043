//! Token-id batches and the length-grouped order in which training visits them.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use crate::ml::rng::Rng;
use crate::ml::tokenizer::PAD_ID;

/// A padded batch of token ids with the real length of each row.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, T)` u32 token ids, right-padded with [`PAD_ID`] to the longest row.
    pub ids: Tensor,
    /// Real length of each row, each in `1..=T`.
    pub lengths: Arc<Vec<usize>>,
}

impl Batch {
    /// Pads `seqs` (each non-empty) into one batch on `device`.
    ///
    /// # Errors
    /// When the tensor cannot be built on the device.
    pub fn from_sequences(seqs: &[&[u32]], device: &Device) -> Result<Self> {
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(seqs.len() * t);
        for seq in seqs {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(PAD_ID, t - seq.len()));
        }
        let lengths = seqs.iter().map(|s| s.len().max(1)).collect();
        Ok(Self {
            ids: Tensor::from_vec(ids, (seqs.len(), t), device)?,
            lengths: Arc::new(lengths),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }
}

/// Splits row indices into batches of similar lengths, in a random order.
///
/// Rows are shuffled, cut into pools of 50 batches, each pool sorted by length and cut into
/// batches, and the batches shuffled, so that padding is small while every epoch still
/// sees a different mix. The same `rng` state gives the same batches.
pub fn length_grouped_batches(
    lengths: &[usize],
    rows: &[usize],
    batch_size: usize,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    let mut order = rows.to_vec();
    rng.shuffle(&mut order);
    let pool = batch_size * 50;
    let mut batches = Vec::with_capacity(order.len().div_ceil(batch_size));
    for chunk in order.chunks_mut(pool) {
        // A stable sort keeps the shuffled order among equal lengths.
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

/// Splits row indices into batches sorted by length, for evaluation (order irrelevant).
pub fn sorted_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_right_and_keeps_lengths() {
        let a = [5u32, 6, 7];
        let b = [8u32];
        let batch = Batch::from_sequences(&[&a, &b], &Device::Cpu).unwrap();
        assert_eq!(batch.ids.to_vec2::<u32>().unwrap(), vec![vec![5, 6, 7], vec![8, 0, 0]]);
        assert_eq!(*batch.lengths, vec![3, 1]);
    }

    #[test]
    fn grouped_batches_cover_every_row_once_and_repeat_for_a_seed() {
        let lengths: Vec<usize> = (0..1000).map(|i| 1 + (i * 7919) % 40).collect();
        let rows: Vec<usize> = (0..1000).collect();
        let a = length_grouped_batches(&lengths, &rows, 16, &mut Rng::new(1));
        let b = length_grouped_batches(&lengths, &rows, 16, &mut Rng::new(1));
        assert_eq!(a, b);
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, rows);
        // Grouping keeps the spread of lengths inside a batch small.
        let spread: usize = a
            .iter()
            .map(|b| {
                let ls: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
                ls.iter().max().unwrap() - ls.iter().min().unwrap()
            })
            .sum();
        assert!(spread / a.len() <= 3, "mean spread {}", spread / a.len());
    }
}
