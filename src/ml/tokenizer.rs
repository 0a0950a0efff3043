//! The word-level tokenizer that is saved inside every model.
//!
//! Text is normalised (Unicode NFKC, then lowercase) and split into words (runs of letters,
//! digits, marks, `_` and `'`) and single punctuation or symbol characters; whitespace
//! separates tokens. The vocabulary is built from training rows only, most frequent first
//! (ties broken by the token's text, so it is deterministic), after two reserved tokens:
//! padding (id 0) and unknown (id 1).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Id of the padding token.
pub const PAD_ID: u32 = 0;
/// Id of the unknown-word token.
pub const UNK_ID: u32 = 1;
/// The mask placeholder of augmented texts; it always encodes as [`UNK_ID`].
pub const MASK: &str = "[MASK]";
const PAD: &str = "<pad>";
const UNK: &str = "<unk>";

/// Splits normalised text into word and punctuation tokens.
pub fn split_words(text: &str) -> Vec<String> {
    let normalised: String = text.nfkc().flat_map(char::to_lowercase).collect();
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in normalised.chars() {
        if c.is_alphanumeric() || c == '_' || c == '\'' || is_mark(c) {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() && !c.is_control() {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// Combining marks stay inside their word (e.g. Devanagari vowel signs after NFKC).
fn is_mark(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x0900..=0x097F | 0x1AB0..=0x1AFF | 0x20D0..=0x20FF)
        && !c.is_whitespace()
}

/// Vocabulary and truncation length: everything needed to turn text into ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "TokenizerParts")]
pub struct Tokenizer {
    /// Tokens by id; ids 0 and 1 are padding and unknown.
    vocab: Vec<String>,
    /// Texts are cut to their first `max_len` tokens.
    max_len: usize,
    #[serde(skip)]
    index: HashMap<String, u32>,
}

/// The saved form of a [`Tokenizer`]; the lookup table is rebuilt on load.
#[derive(Deserialize)]
struct TokenizerParts {
    vocab: Vec<String>,
    max_len: usize,
}

impl From<TokenizerParts> for Tokenizer {
    fn from(parts: TokenizerParts) -> Self {
        Self::from_vocab(parts.vocab, parts.max_len)
    }
}

impl Tokenizer {
    /// Builds the vocabulary from training texts.
    ///
    /// Keeps at most `max_vocab` words seen at least `min_count` times, most frequent first.
    /// Every token of a text counts, also those past `max_len`.
    pub fn fit<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        max_vocab: usize,
        min_count: usize,
        max_len: usize,
    ) -> Self {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in texts {
            for token in split_words(text) {
                *counts.entry(token).or_default() += 1;
            }
        }
        let mut ranked: Vec<(String, usize)> =
            counts.into_iter().filter(|(_, count)| *count >= min_count.max(1)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(max_vocab);

        let mut vocab = vec![PAD.to_string(), UNK.to_string()];
        vocab.extend(ranked.into_iter().map(|(token, _)| token));
        Self::from_vocab(vocab, max_len)
    }

    /// Rebuilds a tokenizer from a saved vocabulary (ids 0 and 1 reserved).
    pub fn from_vocab(vocab: Vec<String>, max_len: usize) -> Self {
        let index = vocab.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Self { vocab, max_len, index }
    }

    /// Number of ids, reserved tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The truncation length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The token of an id, if it exists.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.vocab.get(id as usize).map(String::as_str)
    }

    /// Token ids of the first `max_len` tokens; a text with no token becomes `[UNK_ID]`,
    /// so that every text has at least one step. The placeholder [`MASK`] (left by
    /// augmentation) is one unknown token.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for (i, part) in text.split(MASK).enumerate() {
            if i > 0 {
                ids.push(UNK_ID);
            }
            ids.extend(
                split_words(part)
                    .into_iter()
                    .map(|t| self.index.get(&t).copied().unwrap_or(UNK_ID)),
            );
        }
        ids.truncate(self.max_len);
        if ids.is_empty() {
            ids.push(UNK_ID);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_and_punctuation_after_nfkc_and_lowercase() {
        assert_eq!(split_words("Hello, WORLD!! it's"), ["hello", ",", "world", "!", "!", "it's"]);
        // NFKC folds the full-width letters and the ligature.
        assert_eq!(split_words("Ｆｕｌｌ ﬁne"), ["full", "fine"]);
        assert_eq!(split_words("  "), Vec::<String>::new());
        assert_eq!(split_words("naïve café"), ["naïve", "café"]);
    }

    #[test]
    fn vocabulary_is_ranked_capped_and_filtered() {
        let texts = ["b a a", "c b a", "d"];
        let tok = Tokenizer::fit(texts, 2, 1, 10);
        assert_eq!(tok.token(2), Some("a"));
        assert_eq!(tok.token(3), Some("b"));
        assert_eq!(tok.vocab_size(), 4);
        let tok = Tokenizer::fit(texts, 100, 2, 10);
        assert_eq!(tok.vocab_size(), 4, "c and d are seen once");
    }

    #[test]
    fn encodes_with_unknowns_truncation_and_empty_texts() {
        let tok = Tokenizer::fit(["a b c"], 100, 1, 2);
        let a = tok.encode("a")[0];
        assert_eq!(tok.encode("a zzz q"), vec![a, UNK_ID]);
        assert_eq!(tok.encode("..."), vec![UNK_ID, UNK_ID]);
        assert_eq!(tok.encode(""), vec![UNK_ID]);
        let b = tok.encode("b")[0];
        assert_eq!(tok.encode("[MASK] b"), vec![UNK_ID, b]);
    }

    #[test]
    fn round_trips_through_json() {
        let tok = Tokenizer::fit(["x y"], 100, 1, 8);
        let back: Tokenizer = serde_json::from_str(&serde_json::to_string(&tok).unwrap()).unwrap();
        assert_eq!(back.encode("y x"), tok.encode("y x"));
    }
}
