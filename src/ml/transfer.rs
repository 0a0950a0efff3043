//! The transfer set: the texts a student learns from, with the teacher's logits.
//!
//! It holds the training rows, the augmented rows made from them, and the validation rows,
//! each with the frozen teacher's logits, computed once. It is saved beside the model
//! (`transfer.jsonl`, `teacher_logits.safetensors`), so that a later job can distil another
//! student from it without running the teacher again (`teacher.job_id`).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::ml::checkpoint::{load_tensors, save_tensors};
use crate::ml::data::Example;
use crate::ml::pipeline::TrainError;

/// File of the transfer rows: a header line with the label names, then one row per line.
pub const TRANSFER_FILE: &str = "transfer.jsonl";
/// File of the teacher's logits, `(rows, classes)` under the name `logits`.
pub const LOGITS_FILE: &str = "teacher_logits.safetensors";

/// Where a transfer row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// A training row (labelled or not).
    Train,
    /// A row made by augmenting a training row (never labelled).
    Augmented,
    /// A validation row.
    Valid,
}

#[derive(Serialize, Deserialize)]
struct TransferRow {
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    kind: RowKind,
}

/// Rows with the teacher's logits for each.
pub struct TransferSet {
    /// The rows, in the order of `logits`.
    pub rows: Vec<(Example, RowKind)>,
    /// `(rows, classes)` f32 logits of the teacher.
    pub logits: Tensor,
    /// Label names, in the column order of `logits`.
    pub label_names: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct TransferHeader {
    labels: Vec<String>,
}

impl TransferSet {
    /// Writes the two files into `dir`.
    ///
    /// # Errors
    /// [`TrainError::Io`] or a tensor error.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(TRANSFER_FILE);
        let io = |source| TrainError::Io { path: path.clone(), source };
        let mut out = BufWriter::new(File::create(&path).map_err(io)?);
        let header = serde_json::to_string(&TransferHeader { labels: self.label_names.clone() })
            .expect("a header serialises");
        writeln!(out, "{header}").map_err(io)?;
        for (example, kind) in &self.rows {
            let row = TransferRow {
                text: example.text.clone(),
                label: example.label.clone(),
                kind: *kind,
            };
            let line = serde_json::to_string(&row).expect("a transfer row serialises");
            writeln!(out, "{line}").map_err(io)?;
        }
        out.flush().map_err(io)?;
        save_tensors(&dir.join(LOGITS_FILE), &[("logits".to_string(), self.logits.clone())])?;
        Ok(())
    }

    /// Reads the two files from `dir`.
    ///
    /// # Errors
    /// [`TrainError::Io`], or [`TrainError::Data`] when they are missing or disagree.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        let path = dir.join(TRANSFER_FILE);
        let file = File::open(&path)
            .map_err(|_| TrainError::Data("the teacher job stored no transfer set".to_string()))?;
        let mut rows = Vec::new();
        let mut lines = BufReader::new(file).lines();
        let corrupt = |e: String| TrainError::Data(format!("corrupt transfer set: {e}"));
        let header = lines.next().ok_or_else(|| corrupt("empty file".into()))?;
        let header = header.map_err(|source| TrainError::Io { path: path.clone(), source })?;
        let header: TransferHeader =
            serde_json::from_str(&header).map_err(|e| corrupt(e.to_string()))?;
        for line in lines {
            let line = line.map_err(|source| TrainError::Io { path: path.clone(), source })?;
            let row: TransferRow = serde_json::from_str(&line)
                .map_err(|e| TrainError::Data(format!("corrupt transfer set: {e}")))?;
            rows.push((Example { text: row.text, label: row.label }, row.kind));
        }
        let mut tensors = load_tensors(&dir.join(LOGITS_FILE), device)?;
        let logits = tensors
            .remove("logits")
            .ok_or_else(|| TrainError::Data("the stored teacher logits are missing".to_string()))?;
        if logits.dim(0)? != rows.len() {
            return Err(TrainError::Data("stored logits and transfer rows disagree".to_string()));
        }
        Ok(Self { rows, logits, label_names: header.labels })
    }

    /// The rows of one kind, as examples.
    pub fn examples(&self, kind: RowKind) -> Vec<Example> {
        self.rows.iter().filter(|(_, k)| *k == kind).map(|(e, _)| e.clone()).collect()
    }
}
