//! The folder of pretrained models: listing (`GET /v1/pretrained`) and resolving names.
//!
//! Each direct subfolder of the pretrained root that holds `config.json`, `model.safetensors`
//! and `tokenizer.json` is one model, named after the folder. Names are plain folder names, so a
//! job cannot reach outside the root.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::encoder::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
use super::{Result, TransformerError};

/// What the service tells about one pretrained model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PretrainedInfo {
    /// Folder name, used as the model's name in job configs.
    pub name: String,
    /// `model_type` of `config.json` (e.g. `bert`), when given.
    pub model_type: Option<String>,
    /// Width of the embeddings.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub layers: usize,
    /// Number of attention heads per layer.
    pub attention_heads: usize,
    /// Size of the WordPiece vocabulary.
    pub vocab_size: usize,
    /// Longest input in tokens the model accepts.
    pub max_positions: usize,
    /// Size of `model.safetensors` in bytes.
    pub weights_bytes: u64,
}

/// The subset of `config.json` listed.
#[derive(Debug, Deserialize)]
struct ConfigSummary {
    model_type: Option<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
}

/// Lists the usable pretrained models under `root`, sorted by name.
///
/// A folder is listed only when it has the three required files and a readable `config.json`;
/// others are skipped (with a warning for an unreadable config). A missing or unreadable root
/// lists nothing.
pub fn list_pretrained(root: &Path) -> Vec<PretrainedInfo> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut infos: Vec<PretrainedInfo> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_dir() && check_folder(&entry.path()).is_ok())
        .filter_map(|entry| describe(&entry.path()))
        .collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    infos
}

/// The folder of the pretrained model `name` under `root`.
///
/// # Errors
/// [`TransformerError::InvalidName`] when `name` is not a plain folder name (empty, `.`/`..`,
/// or holding a path separator); [`TransformerError::MissingFile`] when the folder lacks a
/// required file.
pub fn resolve_pretrained(root: &Path, name: &str) -> Result<PathBuf> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && Path::new(name).components().count() == 1;
    if !plain {
        return Err(TransformerError::InvalidName(name.to_string()));
    }
    let dir = root.join(name);
    check_folder(&dir)?;
    Ok(dir)
}

/// Checks that `dir` holds the three files of a pretrained model.
///
/// # Errors
/// [`TransformerError::MissingFile`] naming the first file missing.
pub fn check_folder(dir: &Path) -> Result<()> {
    for file in [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE] {
        if !dir.join(file).is_file() {
            return Err(TransformerError::MissingFile { dir: dir.to_path_buf(), file });
        }
    }
    Ok(())
}

/// Reads and parses a JSON file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TransformerError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map_err(|source| TransformerError::Json { path: path.to_path_buf(), source })
}

/// The listing entry of one complete folder, or `None` when its config cannot be read.
fn describe(dir: &Path) -> Option<PretrainedInfo> {
    let name = dir.file_name()?.to_str()?.to_string();
    let config: ConfigSummary = match read_json(&dir.join(CONFIG_FILE)) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(pretrained = %name, error = %error, "skipping pretrained model");
            return None;
        }
    };
    let weights_bytes = std::fs::metadata(dir.join(WEIGHTS_FILE)).map(|m| m.len()).unwrap_or(0);
    Some(PretrainedInfo {
        name,
        model_type: config.model_type,
        hidden_size: config.hidden_size,
        layers: config.num_hidden_layers,
        attention_heads: config.num_attention_heads,
        vocab_size: config.vocab_size,
        max_positions: config.max_position_embeddings,
        weights_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_complete_folders_sorted() {
        let root = tempfile::tempdir().unwrap();
        crate::ml::transformer::write_tiny_bert(&root.path().join("zeta"), 1).unwrap();
        crate::ml::transformer::write_tiny_bert(&root.path().join("alpha"), 2).unwrap();
        let partial = root.path().join("partial");
        std::fs::create_dir(&partial).unwrap();
        std::fs::write(partial.join(CONFIG_FILE), "{}").unwrap();

        let infos = list_pretrained(root.path());
        let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        let spec = crate::ml::transformer::TinyBertSpec::default();
        assert_eq!(infos[0].hidden_size, spec.hidden_size);
        assert_eq!(infos[0].layers, spec.layers);
        assert_eq!(infos[0].max_positions, spec.max_positions);
        assert!(infos[0].vocab_size > 30);
        assert!(infos[0].weights_bytes > 0);
        assert!(list_pretrained(&root.path().join("absent")).is_empty());
    }

    #[test]
    fn resolve_rejects_paths_and_incomplete_folders() {
        let root = tempfile::tempdir().unwrap();
        crate::ml::transformer::write_tiny_bert(&root.path().join("tiny"), 1).unwrap();
        assert!(resolve_pretrained(root.path(), "tiny").is_ok());
        for bad in ["", ".", "..", "../tiny", "a/b", "a\\b", "/etc"] {
            let err = resolve_pretrained(root.path(), bad).unwrap_err();
            assert!(matches!(err, TransformerError::InvalidName(_)), "{bad}: {err}");
        }
        let err = resolve_pretrained(root.path(), "absent").unwrap_err();
        assert!(matches!(err, TransformerError::MissingFile { .. }));
    }
}
