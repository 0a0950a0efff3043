//! Evaluation of a finished model folder: the metrics of its networks on labelled rows,
//! and how fast each one predicts.
//!
//! The student is always in the folder. The teacher is either the recurrent network saved
//! beside it or, for a model distilled from a pretrained transformer, the trained head in
//! `transformer/` on top of the encoder found under a folder of pretrained models; without
//! that folder such a teacher is left out. `distillery eval` is the front end.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::ml::checkpoint::load_tensors;
use crate::ml::data::Example;
use crate::ml::manifest::{Manifest, Role, TRANSFORMER_DIR};
use crate::ml::metrics::{agreement, Metrics};
use crate::ml::model::{argmax_rows, Classifier};
use crate::ml::pipeline::{read_manifest, TrainError};
use crate::ml::train::predict_logits;
use crate::ml::transformer::{TransformerError, TransformerTeacher};

/// One network of a model folder, ready to predict.
enum Network {
    /// A recurrent classifier, fed by the model's own tokenizer.
    Recurrent(Classifier),
    /// A pretrained transformer with its trained head, fed by its own tokenizer.
    Transformer(Box<TransformerTeacher>),
}

/// How fast a network predicts, tokenization included, in texts per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PredictSpeed {
    /// One text per call.
    pub batch_1_texts_per_s: f64,
    /// 64 texts per call.
    pub batch_64_texts_per_s: f64,
}

/// The networks of one model folder, loaded on the CPU.
pub struct ModelNetworks {
    manifest: Manifest,
    teacher: Option<Network>,
    student: Network,
}

impl ModelNetworks {
    /// Loads the student and, where it can, the teacher of the model folder `dir`.
    ///
    /// A transformer teacher needs `pretrained_dir`, the folder holding the pretrained model
    /// it was built on; without it the teacher is left out.
    ///
    /// # Errors
    /// When a file of the model is missing or unreadable, or the pretrained model named by
    /// the teacher is not under `pretrained_dir`.
    pub fn load(dir: &Path, pretrained_dir: Option<&Path>) -> Result<Self, TrainError> {
        let manifest = read_manifest(dir)?;
        let device = Device::Cpu;
        let student = Network::Recurrent(load_recurrent(dir, &manifest, Role::Student, &device)?);
        let teacher = match (&manifest.teacher, &manifest.transformer_teacher, pretrained_dir) {
            (Some(_), _, _) => {
                Some(Network::Recurrent(load_recurrent(dir, &manifest, Role::Teacher, &device)?))
            }
            (None, Some(_), Some(root)) => {
                let teacher = TransformerTeacher::load(&dir.join(TRANSFORMER_DIR), root, &device)
                    .map_err(transformer_error)?;
                Some(Network::Transformer(Box::new(teacher)))
            }
            _ => None,
        };
        Ok(Self { manifest, teacher, student })
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether the teacher was loaded.
    pub fn has_teacher(&self) -> bool {
        self.teacher.is_some()
    }

    /// Metrics of each loaded network on the labelled `rows` (unlabelled rows are skipped),
    /// with the student's agreement with the teacher when both are there.
    ///
    /// # Errors
    /// When a row's label is not one of the model's, or a tensor operation fails.
    pub fn evaluate(
        &self,
        rows: &[Example],
        batch_size: usize,
    ) -> Result<HashMap<Role, Metrics>, TrainError> {
        let labels = &self.manifest.labels;
        let index: HashMap<&str, usize> =
            labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
        let labelled: Vec<&Example> = rows.iter().filter(|e| e.label.is_some()).collect();
        let truth = labelled
            .iter()
            .map(|e| {
                let label = e.label.as_deref().unwrap_or_default();
                index.get(label).copied().ok_or_else(|| {
                    TrainError::Data(format!("label `{label}` is not one of the model's labels"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&str> = labelled.iter().map(|e| e.text.as_str()).collect();

        let mut out = HashMap::new();
        let mut teacher_preds = None;
        if let Some(teacher) = &self.teacher {
            let preds = argmax_rows(&self.logits(teacher, &texts, batch_size)?)?;
            out.insert(Role::Teacher, Metrics::compute(labels, &truth, &preds));
            teacher_preds = Some(preds);
        }
        let preds = argmax_rows(&self.logits(&self.student, &texts, batch_size)?)?;
        let mut metrics = Metrics::compute(labels, &truth, &preds);
        metrics.agreement = teacher_preds.as_ref().map(|t| agreement(&preds, t));
        out.insert(Role::Student, metrics);
        Ok(out)
    }

    /// Prediction speed of each loaded network on `texts`: one text per call, then 64 per
    /// call, each for at most `budget` (and at least one call) or until the texts run out.
    ///
    /// # Errors
    /// When a tensor operation fails.
    pub fn measure_speed(
        &self,
        texts: &[&str],
        budget: Duration,
    ) -> Result<HashMap<Role, PredictSpeed>, TrainError> {
        let mut out = HashMap::new();
        let networks =
            [(Role::Teacher, self.teacher.as_ref()), (Role::Student, Some(&self.student))];
        for (role, network) in networks {
            let Some(network) = network else { continue };
            let speed = PredictSpeed {
                batch_1_texts_per_s: self.texts_per_second(network, texts, 1, budget)?,
                batch_64_texts_per_s: self.texts_per_second(network, texts, 64, budget)?,
            };
            out.insert(role, speed);
        }
        Ok(out)
    }

    /// Texts per second predicting `texts` in calls of `batch` texts, within `budget`.
    fn texts_per_second(
        &self,
        network: &Network,
        texts: &[&str],
        batch: usize,
        budget: Duration,
    ) -> Result<f64, TrainError> {
        // One untimed call first, so that one-off costs (first allocations) stay out.
        if let Some(first) = texts.chunks(batch).next() {
            self.logits(network, first, batch)?;
        }

        let started = Instant::now();
        let mut done = 0;
        for chunk in texts.chunks(batch) {
            self.logits(network, chunk, batch)?;
            done += chunk.len();
            if started.elapsed() >= budget {
                break;
            }
        }
        Ok(done as f64 / started.elapsed().as_secs_f64().max(1e-9))
    }

    /// Logits `(N, C)` of `texts`, in order, tokenized as the network was trained.
    fn logits(
        &self,
        network: &Network,
        texts: &[&str],
        batch_size: usize,
    ) -> Result<Tensor, TrainError> {
        match network {
            Network::Recurrent(model) => {
                let tokenizer = &self.manifest.tokenizer;
                let seqs: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t)).collect();
                predict_logits(model, &seqs, batch_size)
            }
            Network::Transformer(teacher) => {
                teacher.logits(texts, batch_size).map_err(transformer_error)
            }
        }
    }
}

/// Evaluates a finished model folder on labelled rows: metrics of the student and, when it
/// is a recurrent network, the teacher (see [`ModelNetworks`] for a transformer teacher).
///
/// # Errors
/// When the model cannot be read or the rows hold an unknown label.
pub fn evaluate_model(
    dir: &Path,
    rows: &[Example],
    batch_size: usize,
) -> Result<HashMap<Role, Metrics>, TrainError> {
    ModelNetworks::load(dir, None)?.evaluate(rows, batch_size)
}

fn load_recurrent(
    dir: &Path,
    manifest: &Manifest,
    role: Role,
    device: &Device,
) -> Result<Classifier, TrainError> {
    let entry = manifest.network(role).ok_or_else(|| {
        TrainError::Data(format!("the model holds no recurrent {}", role.as_str()))
    })?;
    let tensors = load_tensors(&dir.join(role.weights_file()), device)?;
    let (vocab, classes) = (manifest.tokenizer.vocab_size(), manifest.labels.len());
    Ok(Classifier::from_tensors(&entry.config, vocab, classes, tensors, false)?)
}

/// Candle errors stay Candle errors; the rest (a missing folder, a bad file) is bad data.
fn transformer_error(error: TransformerError) -> TrainError {
    match error {
        TransformerError::Candle(e) => TrainError::Candle(e),
        other => TrainError::Data(other.to_string()),
    }
}
