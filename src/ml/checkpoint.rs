//! Files of a run: atomic writes, weight files, and the resumable state of a phase.
//!
//! A phase's checkpoint is a folder `<work_dir>/<phase>/` holding `state.json` and the
//! weight files it names (`weights-<epoch>.safetensors` with the optimizer state,
//! `best-<epoch>.safetensors`). Every file is written to a temporary name, synced and
//! renamed; `state.json` is renamed last, so it always names a complete set of files, and
//! files it no longer names are removed afterwards.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::ml::pipeline::TrainError;
use crate::ml::progress::EpochReport;

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename.
///
/// # Errors
/// [`TrainError::Io`] naming the file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |source| TrainError::Io { path: path.to_path_buf(), source };
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // Persist the rename itself; failing to open a folder is not fatal on every OS.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Serialises named tensors in the safetensors format.
///
/// # Errors
/// When a tensor cannot be read back from its device.
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, TrainError> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_, candle_core::Error>>()?;
    let views: Vec<(&str, &Tensor)> = cpu.iter().map(|(n, t)| (n.as_str(), t)).collect();
    safetensors::serialize(views, None)
        .map_err(|e| TrainError::Candle(candle_core::Error::Msg(e.to_string())))
}

/// Writes named tensors to a safetensors file atomically.
///
/// # Errors
/// [`TrainError::Io`] or a tensor error.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<u64, TrainError> {
    let bytes = safetensors_bytes(tensors)?;
    write_atomic(path, &bytes)?;
    Ok(bytes.len() as u64)
}

/// Reads a safetensors file onto `device`.
///
/// # Errors
/// [`TrainError::Io`] when it cannot be read, or a format error.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
    let bytes =
        fs::read(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
    Ok(candle_core::safetensors::load_buffer(&bytes, device)?)
}

/// The resumable state of one training phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseState {
    /// Last finished epoch (0 before the first).
    pub epoch: usize,
    /// Whether the phase has ended (all epochs, or stopped early).
    pub finished: bool,
    /// The epoch whose weights are kept, and its validation accuracy.
    pub best_epoch: usize,
    /// Validation accuracy of the best epoch (-1 before the first).
    pub best_accuracy: f64,
    /// Epochs since the best one.
    pub stale_epochs: usize,
    /// Seconds of training so far.
    pub seconds: f64,
    /// Reports of the finished epochs.
    pub history: Vec<EpochReport>,
    /// File of the current weights and optimizer state.
    pub weights_file: Option<String>,
    /// File of the best weights.
    pub best_file: Option<String>,
}

/// The checkpoint folder of one phase.
pub struct PhaseDir {
    dir: PathBuf,
}

const STATE_FILE: &str = "state.json";

impl PhaseDir {
    /// The folder `<work_dir>/<name>`, created if missing.
    ///
    /// # Errors
    /// [`TrainError::Io`] when it cannot be created.
    pub fn open(work_dir: &Path, name: &str) -> Result<Self, TrainError> {
        let dir = work_dir.join(name);
        fs::create_dir_all(&dir).map_err(|source| TrainError::Io { path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved state, if a checkpoint exists.
    ///
    /// # Errors
    /// When `state.json` exists but cannot be read or parsed.
    pub fn load_state(&self) -> Result<Option<PhaseState>, TrainError> {
        let path = self.dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TrainError::Io { path, source }),
        };
        let state = serde_json::from_str(&text).map_err(|e| TrainError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Ok(Some(state))
    }

    /// Reads a file named by the state.
    ///
    /// # Errors
    /// As [`load_tensors`].
    pub fn load(&self, file: &str, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
        load_tensors(&self.dir.join(file), device)
    }

    /// Writes a weights file (not yet named by the state).
    ///
    /// # Errors
    /// As [`save_tensors`].
    pub fn save(&self, file: &str, tensors: &[(String, Tensor)]) -> Result<(), TrainError> {
        save_tensors(&self.dir.join(file), tensors).map(|_| ())
    }

    /// Commits `state` (atomically) and removes the files it no longer names.
    ///
    /// # Errors
    /// [`TrainError::Io`].
    pub fn commit(&self, state: &PhaseState) -> Result<(), TrainError> {
        let json = serde_json::to_vec_pretty(state).expect("phase state serialises");
        write_atomic(&self.dir.join(STATE_FILE), &json)?;
        let keep: Vec<&str> = [state.weights_file.as_deref(), state.best_file.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".safetensors") && !keep.contains(&name.as_str()) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_only_complete_files_and_old_ones_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PhaseDir::open(tmp.path(), "student").unwrap();
        assert!(dir.load_state().unwrap().is_none());
        let t = vec![("w".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())];
        dir.save("weights-1.safetensors", &t).unwrap();
        let mut state = PhaseState {
            epoch: 1,
            weights_file: Some("weights-1.safetensors".into()),
            ..Default::default()
        };
        dir.commit(&state).unwrap();
        dir.save("weights-2.safetensors", &t).unwrap();
        state.epoch = 2;
        state.weights_file = Some("weights-2.safetensors".into());
        dir.commit(&state).unwrap();
        assert!(!dir.path().join("weights-1.safetensors").exists());
        let back = dir.load_state().unwrap().unwrap();
        assert_eq!(back, state);
        let loaded = dir.load("weights-2.safetensors", &Device::Cpu).unwrap();
        assert_eq!(loaded["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}
