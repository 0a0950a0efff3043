//! Data augmentation for the transfer set, after Tang et al. 2019 ("Distilling Task-Specific
//! Knowledge from BERT into Simple Neural Networks", section 3.3).
//!
//! A pretrained teacher knows more than the labelled rows show; new rows made from the training
//! texts and labelled by the teacher (soft targets) let the student see more of that knowledge.
//! Each new row starts from a training text split on whitespace; every word is, with its own
//! probability, masked (replaced by a mask token) or replaced by a word drawn from the words of
//! the whole training set. Then, with a further probability, only a random contiguous span of the
//! words is kept (n-gram sampling). The pipeline labels these rows with the teacher; they carry
//! no labels of their own.
//!
//! Everything is deterministic for a seed: the random numbers come from [`SplitMix64`], written
//! here so that the streams do not change with a `rand` release.

use crate::ml::config::AugmentConfig;

/// The mask token used by [`augment`]: BERT-family vocabularies know it as a special token.
pub const DEFAULT_MASK_TOKEN: &str = "[MASK]";

/// Attempts at drawing a row that differs from its original before one is forced to differ.
const MAX_ATTEMPTS: usize = 8;

/// Shortest upper bound of the n-gram length (Tang et al. draw n from 1 to 5).
const MIN_NGRAM_BOUND: usize = 5;

/// A small, fast, seedable pseudo-random generator (SplitMix64, Steele et al. 2014).
///
/// Not for cryptography. Its stream is fixed by this code, so seeded results stay the same across
/// dependency upgrades.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in `0..n`; `n` must be at least 1 (0 gives 0).
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift maps 64 random bits onto 0..n with a bias below 2^-32 for any n that
        // fits in memory, which is plenty here.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// One augmented row and the index of the training text it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AugmentedRow {
    /// Index of the original text in the input slice.
    pub source: usize,
    /// The new text: never empty.
    pub text: String,
}

/// Makes `config.factor` new texts per training text with [`DEFAULT_MASK_TOKEN`].
///
/// Texts without any word (empty or whitespace only) yield no rows, so the result holds
/// `config.factor` rows for each of the others, grouped by original in input order. See
/// [`augment_rows`] for the details.
pub fn augment(texts: &[&str], config: &AugmentConfig, seed: u64) -> Vec<String> {
    augment_rows(texts, config, seed, DEFAULT_MASK_TOKEN).into_iter().map(|r| r.text).collect()
}

/// Makes `config.factor` new rows per training text, each naming its original.
///
/// Words are whitespace-separated and joined back with single spaces. For each word a uniform
/// draw `x` decides: masked when `x < mask_prob`, replaced by a word of the training set (drawn
/// in proportion to its frequency) when `x < mask_prob + replace_prob`, else kept. Then, with
/// probability `ngram_prob`, only a span of `n` consecutive words is kept, `n` uniform in
/// `1..=max(5, words / 2)` (capped at the word count). A row equal to its original is drawn again
/// (up to 8 tries), and then one word is forced to change, so that no row repeats its original
/// unless the vocabulary leaves no choice. Rows are never empty. The result is a function of
/// `(texts, config, seed, mask_token)` alone.
pub fn augment_rows(
    texts: &[&str],
    config: &AugmentConfig,
    seed: u64,
    mask_token: &str,
) -> Vec<AugmentedRow> {
    let docs: Vec<Vec<&str>> = texts.iter().map(|t| t.split_whitespace().collect()).collect();
    let pool: Vec<&str> = docs.iter().flatten().copied().collect();
    let augmenter = Augmenter { config, pool: &pool, mask_token };
    let mut rng = SplitMix64::new(seed);

    let mut rows = Vec::with_capacity(texts.len() * config.factor);
    for (source, words) in docs.iter().enumerate().filter(|(_, w)| !w.is_empty()) {
        for _ in 0..config.factor {
            let text = augmenter.new_row(words, &mut rng);
            rows.push(AugmentedRow { source, text });
        }
    }
    rows
}

/// The fixed inputs of one augmentation pass.
struct Augmenter<'a> {
    config: &'a AugmentConfig,
    pool: &'a [&'a str],
    mask_token: &'a str,
}

impl Augmenter<'_> {
    /// One new row from `words` (not empty), different from them where possible.
    fn new_row(&self, words: &[&str], rng: &mut SplitMix64) -> String {
        for _ in 0..MAX_ATTEMPTS {
            let row = self.draw(words, rng);
            if row.as_slice() != words {
                return row.join(" ");
            }
        }
        self.force_change(words, rng).join(" ")
    }

    /// Applies the word-level draws, then maybe the n-gram sampling.
    fn draw<'w>(&'w self, words: &[&'w str], rng: &mut SplitMix64) -> Vec<&'w str> {
        let replace_edge = self.config.mask_prob + self.config.replace_prob;
        let mut row: Vec<&str> = words
            .iter()
            .map(|&word| {
                let x = rng.next_f64();
                if x < self.config.mask_prob {
                    self.mask_token
                } else if x < replace_edge {
                    self.pool[rng.below(self.pool.len())]
                } else {
                    word
                }
            })
            .collect();

        if rng.next_f64() < self.config.ngram_prob {
            row = sample_ngram(row, rng);
        }
        row
    }

    /// `words` with one word changed: replaced by a different pool word, else masked.
    fn force_change<'w>(&'w self, words: &[&'w str], rng: &mut SplitMix64) -> Vec<&'w str> {
        let mut row = words.to_vec();
        let at = rng.below(row.len());
        let start = rng.below(self.pool.len());
        // Walk the pool from a random start so that the replacement stays random but the search
        // ends even when every pool word equals the chosen one.
        let other = (0..self.pool.len())
            .map(|k| self.pool[(start + k) % self.pool.len()])
            .find(|&w| w != row[at] && w != self.mask_token);
        row[at] = match other {
            Some(word) if rng.next_f64() >= 0.5 || row[at] == self.mask_token => word,
            _ => self.mask_token,
        };
        row
    }
}

/// Keeps a random span of `1..=max(5, len / 2)` consecutive words (at most all of them).
fn sample_ngram<'w>(row: Vec<&'w str>, rng: &mut SplitMix64) -> Vec<&'w str> {
    let bound = MIN_NGRAM_BOUND.max(row.len() / 2).min(row.len());
    let n = 1 + rng.below(bound);
    let start = rng.below(row.len() - n + 1);
    row[start..start + n].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> Vec<&'static str> {
        vec![
            "the match ended with a late goal from the home side",
            "shares fell sharply after the bank reported a loss",
            "",
            "wow",
            "   ",
            "the new phone has a bigger screen and a faster chip than last year",
        ]
    }

    fn config(factor: usize) -> AugmentConfig {
        AugmentConfig { factor, mask_prob: 0.1, replace_prob: 0.1, ngram_prob: 0.25 }
    }

    #[test]
    fn same_seed_gives_same_rows_and_other_seed_differs() {
        let a = augment(&texts(), &config(4), 7);
        let b = augment(&texts(), &config(4), 7);
        let c = augment(&texts(), &config(4), 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn factor_rows_per_non_empty_original_and_none_empty() {
        let rows = augment_rows(&texts(), &config(3), 1, DEFAULT_MASK_TOKEN);
        assert_eq!(rows.len(), 4 * 3);
        for source in [0, 1, 3, 5] {
            assert_eq!(rows.iter().filter(|r| r.source == source).count(), 3);
        }
        assert!(rows.iter().all(|r| !r.text.trim().is_empty()));
        assert!(augment(&texts(), &config(0), 1).is_empty());
    }

    #[test]
    fn rows_differ_from_their_original() {
        let texts = texts();
        let rows = augment_rows(&texts, &config(5), 3, DEFAULT_MASK_TOKEN);
        for row in &rows {
            assert_ne!(row.text, texts[row.source], "row repeats its original");
        }
    }

    #[test]
    fn rows_differ_even_with_zero_probabilities() {
        let quiet = AugmentConfig { factor: 2, mask_prob: 0.0, replace_prob: 0.0, ngram_prob: 0.0 };
        let texts = ["alpha beta gamma", "delta"];
        let rows = augment_rows(&texts, &quiet, 9, DEFAULT_MASK_TOKEN);
        assert_eq!(rows.len(), 4);
        for row in &rows {
            assert_ne!(row.text, texts[row.source]);
            assert_eq!(row.text.split(' ').count(), texts[row.source].split(' ').count());
        }
    }

    #[test]
    fn full_mask_probability_masks_every_word() {
        let all = AugmentConfig { factor: 1, mask_prob: 1.0, replace_prob: 0.0, ngram_prob: 0.0 };
        let rows = augment(&["one two three"], &all, 5);
        assert_eq!(rows, vec!["[MASK] [MASK] [MASK]".to_string()]);
    }

    #[test]
    fn replacements_come_from_the_training_words() {
        let swap = AugmentConfig { factor: 20, mask_prob: 0.0, replace_prob: 1.0, ngram_prob: 0.0 };
        let texts = ["red green", "blue yellow"];
        for text in augment(&texts, &swap, 11) {
            for word in text.split(' ') {
                assert!(["red", "green", "blue", "yellow"].contains(&word), "{word}");
            }
        }
    }

    #[test]
    fn ngrams_are_contiguous_spans() {
        let grams =
            AugmentConfig { factor: 30, mask_prob: 0.0, replace_prob: 0.0, ngram_prob: 1.0 };
        let text = "a b c d e f g h i j k l";
        for row in augment(&[text], &grams, 2) {
            assert!(text.contains(&row), "{row}");
            assert!(row.split(' ').count() <= 6);
        }
    }

    #[test]
    fn splitmix_is_stable_and_below_stays_in_range() {
        let mut rng = SplitMix64::new(0);
        // First output of SplitMix64 seeded with 0, as published with the algorithm.
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        for n in 1..50 {
            assert!(rng.below(n) < n);
        }
        let x = rng.next_f64();
        assert!((0.0..1.0).contains(&x));
    }
}
