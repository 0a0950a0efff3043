//! Classification metrics: accuracy, macro-F1, per-class precision/recall/F1, confusion.

use serde::{Deserialize, Serialize};

/// Precision, recall and F1 of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Label name.
    pub label: String,
    /// Share of rows predicted as this class that are of it.
    pub precision: f64,
    /// Share of rows of this class predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Rows of this class.
    pub support: usize,
}

/// The metrics of one network on one set of labelled rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub rows: usize,
    /// Share of rows predicted right.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1.
    pub macro_f1: f64,
    /// Per-class figures, by class index.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]` row counts.
    pub confusion: Vec<Vec<usize>>,
    /// Share of rows where this network agrees with the teacher (students only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
}

impl Metrics {
    /// Computes the metrics of predicted class indices against true ones.
    ///
    /// # Panics
    /// When the slices differ in length or an index is not below `labels.len()`.
    pub fn compute(labels: &[String], truth: &[usize], predicted: &[usize]) -> Self {
        assert_eq!(truth.len(), predicted.len(), "one prediction per row");
        let n = labels.len();
        let mut confusion = vec![vec![0usize; n]; n];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let correct: usize = (0..n).map(|c| confusion[c][c]).sum();
        let per_class: Vec<ClassMetrics> =
            (0..n).map(|c| class_metrics(&confusion, c, &labels[c])).collect();
        let macro_f1 = per_class.iter().map(|c| c.f1).sum::<f64>() / n.max(1) as f64;
        Metrics {
            rows: truth.len(),
            accuracy: ratio(correct, truth.len()),
            macro_f1,
            per_class,
            confusion,
            agreement: None,
        }
    }
}

fn class_metrics(confusion: &[Vec<usize>], c: usize, label: &str) -> ClassMetrics {
    let tp = confusion[c][c];
    let predicted: usize = confusion.iter().map(|row| row[c]).sum();
    let support: usize = confusion[c].iter().sum();
    let precision = ratio(tp, predicted);
    let recall = ratio(tp, support);
    // F1 as 2tp / (2tp + fp + fn), which is 0 when the class is never hit.
    let f1 = ratio(2 * tp, predicted + support);
    ClassMetrics { label: label.to_string(), precision, recall, f1, support }
}

/// Share of `a` in `b`, 0 when `b` is 0.
pub fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Share of positions where two predictions agree.
pub fn agreement(a: &[usize], b: &[usize]) -> f64 {
    ratio(a.iter().zip(b).filter(|(x, y)| x == y).count(), a.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_example() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let truth = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 1, 0, 2];
        let m = Metrics::compute(&labels, &truth, &pred);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]);
        // a: p 1/2 r 1/2 f1 1/2; b: p 2/3 r 1 f1 0.8; c: p 1 r 1/2 f1 2/3
        assert!((m.per_class[1].f1 - 0.8).abs() < 1e-12);
        assert!((m.macro_f1 - (0.5 + 0.8 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((agreement(&truth, &pred) - m.accuracy).abs() < 1e-12);
    }
}
