//! End-to-end tests of the training core on generated data.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::ml::config::{CellKind, ModelConfig, Pooling};
use crate::ml::evaluation::evaluate_model;
use crate::ml::predictor::Predictor;
use crate::ml::progress::NoObserver;

/// Rows whose label is whether "alpha" comes before "beta" among filler words: a task
/// that needs both the order of tokens and memory across the text.
pub(crate) fn order_task(rows: usize, seed: u64) -> Vec<Example> {
    let filler = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "sea"];
    let mut rng = Rng::new(seed);
    (0..rows)
        .map(|_| {
            let len = 4 + rng.below(7);
            let mut words: Vec<&str> = (0..len).map(|_| filler[rng.below(filler.len())]).collect();
            let a = rng.below(len + 1);
            words.insert(a, "alpha");
            let b = rng.below(len + 2);
            words.insert(b, "beta");
            let alpha_first =
                words.iter().position(|w| *w == "alpha") < words.iter().position(|w| *w == "beta");
            Example {
                text: words.join(" "),
                label: Some(if alpha_first { "before" } else { "after" }.into()),
            }
        })
        .collect()
}

fn small(cell: CellKind, bidirectional: bool) -> ModelConfig {
    ModelConfig {
        cell,
        embedding_dim: 16,
        hidden_size: 24,
        layers: 1,
        bidirectional,
        dropout: 0.0,
        pooling: Pooling::Last,
    }
}

fn quick_config(teacher: ModelConfig, student: ModelConfig, epochs: usize) -> JobConfig {
    let mut config = JobConfig::default();
    let t = &mut config.teacher;
    (t.cell, t.embedding_dim, t.hidden_size, t.layers, t.bidirectional, t.dropout) = (
        teacher.cell,
        teacher.embedding_dim,
        teacher.hidden_size,
        teacher.layers,
        teacher.bidirectional,
        teacher.dropout,
    );
    config.student = student;
    config.training.epochs = epochs;
    config.training.learning_rate = 1e-2;
    config.training.batch_size = 32;
    config.device = "cpu".into();
    config
}

#[test]
fn every_cell_learns_an_order_task() {
    let train = order_task(1200, 1);
    let valid = order_task(300, 2);
    for cell in [CellKind::Rnn, CellKind::Lstm, CellKind::Gru] {
        let mut config = quick_config(small(cell, false), small(cell, false), 8);
        config.teacher.kind = TeacherKind::None;
        let tmp = tempfile::tempdir().unwrap();
        let inputs = JobInputs::new(train.clone(), Some(valid.clone()));
        let manifest = run(
            &config,
            inputs,
            &tmp.path().join("work"),
            &tmp.path().join("model"),
            &NoObserver,
            &CancelToken::new(),
        )
        .unwrap();
        let accuracy = manifest.student.metrics.as_ref().unwrap().accuracy;
        assert!(accuracy > 0.9, "{cell:?} reached only {accuracy}");
    }
}

#[test]
fn distilled_model_saves_loads_and_predicts_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let config = quick_config(small(CellKind::Lstm, true), small(CellKind::Gru, false), 3);
    let inputs = JobInputs::new(order_task(600, 3), None);
    let manifest = run(
        &config,
        inputs,
        &tmp.path().join("work"),
        &tmp.path().join("model"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap();
    assert!(manifest.teacher.is_some());
    assert!(manifest.student.metrics.as_ref().unwrap().agreement.is_some());

    let texts = ["alpha red beta", "beta sun moon alpha", "cat alpha dog beta"];
    let student = Predictor::load(&tmp.path().join("model"), Role::Student, &Device::Cpu).unwrap();
    let teacher = Predictor::load(&tmp.path().join("model"), Role::Teacher, &Device::Cpu).unwrap();
    let batch = student.predict(&texts).unwrap();
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(student.predict(&[text]).unwrap()[0], batch[i], "alone vs batched");
    }
    assert_eq!(teacher.predict(&texts).unwrap().len(), 3);
    let evaluated = evaluate_model(&tmp.path().join("model"), &order_task(200, 4), 64).unwrap();
    assert!(evaluated[&Role::Student].accuracy > 0.5);
}

/// A run stopped after its first student epoch and resumed ends exactly like a run that
/// was never stopped.
#[test]
fn interrupted_run_resumes_to_the_same_result() {
    let config = quick_config(small(CellKind::Gru, true), small(CellKind::Gru, false), 3);
    let data = order_task(500, 5);
    let inputs = || JobInputs::new(data.clone(), None);
    let tmp = tempfile::tempdir().unwrap();
    let straight = run(
        &config,
        inputs(),
        &tmp.path().join("w1"),
        &tmp.path().join("m1"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap();

    let cancel = CancelToken::new();
    let student_epochs = AtomicUsize::new(0);
    let stopper = |event: &TrainEvent| {
        if let TrainEvent::Checkpoint { phase: Phase::Student, .. } = event {
            if student_epochs.fetch_add(1, Ordering::SeqCst) == 0 {
                cancel.stop(StopReason::Interrupted);
            }
        }
    };
    let err =
        run(&config, inputs(), &tmp.path().join("w2"), &tmp.path().join("m2"), &stopper, &cancel)
            .unwrap_err();
    assert!(matches!(err, TrainError::Stopped(StopReason::Interrupted)), "{err}");
    let resumed = run(
        &config,
        inputs(),
        &tmp.path().join("w2"),
        &tmp.path().join("m2"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(straight.student.metrics, resumed.student.metrics);
    assert_eq!(
        straight.teacher.as_ref().unwrap().metrics,
        resumed.teacher.as_ref().unwrap().metrics
    );
    let a = std::fs::read(tmp.path().join("m1/student.safetensors")).unwrap();
    let b = std::fs::read(tmp.path().join("m2/student.safetensors")).unwrap();
    assert!(a == b, "the resumed student's weights differ");
}

#[test]
fn same_seed_same_metrics_and_progress_is_reported() {
    let config = quick_config(small(CellKind::Rnn, false), small(CellKind::Rnn, false), 2);
    let data = order_task(300, 6);
    let events = Mutex::new(Vec::new());
    let record = |e: &TrainEvent| events.lock().unwrap().push(e.clone());
    let tmp = tempfile::tempdir().unwrap();
    let a = run(
        &config,
        JobInputs::new(data.clone(), None),
        &tmp.path().join("w1"),
        &tmp.path().join("m1"),
        &record,
        &CancelToken::new(),
    )
    .unwrap();
    let b = run(
        &config,
        JobInputs::new(data, None),
        &tmp.path().join("w2"),
        &tmp.path().join("m2"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(a.student.metrics, b.student.metrics);
    let events = events.into_inner().unwrap();
    let fractions: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Progress(p) => Some(p.fraction),
            _ => None,
        })
        .collect();
    assert!(!fractions.is_empty() && fractions.windows(2).all(|w| w[0] <= w[1] + 1e-12));
    assert!(events.iter().any(
        |e| matches!(e, TrainEvent::Epoch(r) if r.phase == Phase::Student && r.agreement.is_some())
    ));
}

#[test]
fn bad_inputs_are_rejected_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let one_label = vec![Example { text: "a b".into(), label: Some("x".into()) }; 10];
    let err = run(
        &JobConfig::default(),
        JobInputs::new(one_label, None),
        tmp.path(),
        tmp.path(),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("at least 2 labels"), "{err}");

    let mut config = JobConfig::default();
    config.distillation.alpha = 2.0;
    let err = run(
        &config,
        JobInputs::new(order_task(10, 1), None),
        tmp.path(),
        tmp.path(),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("distillation.alpha"), "{err}");

    let valid = vec![Example { text: "a".into(), label: Some("unknown".into()) }];
    let err = run(
        &JobConfig::default(),
        JobInputs::new(order_task(10, 1), Some(valid)),
        tmp.path(),
        tmp.path(),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`unknown`"), "{err}");
}

#[test]
fn a_nan_loss_stops_the_run_naming_phase_and_step() {
    let mut config = quick_config(small(CellKind::Gru, false), small(CellKind::Gru, false), 1);
    config.teacher.kind = TeacherKind::None;
    config.training.learning_rate = 1e38;
    config.training.clip_norm = 0.0;
    let tmp = tempfile::tempdir().unwrap();
    let err = run(
        &config,
        JobInputs::new(order_task(400, 7), None),
        tmp.path(),
        &tmp.path().join("m"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap_err();
    match err {
        TrainError::NonFinite { phase, step, .. } => assert!(phase == Phase::Student && step > 1),
        other => panic!("expected a non-finite loss, got {other}"),
    }
}

#[test]
fn unlabelled_rows_feed_only_distillation_and_teachers_can_be_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = quick_config(small(CellKind::Gru, false), small(CellKind::Gru, false), 2);
    let first = run(
        &config,
        JobInputs::new(order_task(400, 8), None),
        &tmp.path().join("w1"),
        &tmp.path().join("m1"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap();

    let mut rows = order_task(400, 9);
    for row in rows.iter_mut().skip(100) {
        row.label = None;
    }
    let mut config = config.clone();
    config.teacher.model_id = Some("m1".into());
    let inputs =
        JobInputs { teacher_model: Some(tmp.path().join("m1")), ..JobInputs::new(rows, None) };
    let second = run(
        &config,
        inputs,
        &tmp.path().join("w2"),
        &tmp.path().join("m2"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(second.labels, first.labels);
    assert_eq!(second.tokenizer, first.tokenizer, "a reused teacher brings its tokenizer");
    let t1 = std::fs::read(tmp.path().join("m1/teacher.safetensors")).unwrap();
    let t2 = std::fs::read(tmp.path().join("m2/teacher.safetensors")).unwrap();
    assert!(t1 == t2, "the frozen teacher must not change while the student trains");
}

/// A transformer teacher (a tiny random BERT) labels the training rows and their
/// augmentations; a second job distils another student from the stored transfer set
/// without running the teacher again.
#[test]
fn transformer_teacher_with_augmentation_and_a_reused_transfer_set() {
    let tmp = tempfile::tempdir().unwrap();
    let pretrained = tmp.path().join("pretrained");
    crate::ml::transformer::write_tiny_bert(&pretrained.join("tiny"), 3).unwrap();
    let mut config = quick_config(small(CellKind::Gru, false), small(CellKind::Gru, false), 2);
    config.teacher.kind = TeacherKind::Transformer;
    config.teacher.pretrained = Some("tiny".into());
    config.teacher.epochs = Some(3);
    config.distillation.augment.factor = 2;
    let rows = order_task(120, 10);
    let inputs = JobInputs {
        pretrained_dir: Some(pretrained.clone()),
        ..JobInputs::new(rows.clone(), None)
    };
    let events = Mutex::new(Vec::new());
    let record = |e: &TrainEvent| events.lock().unwrap().push(e.clone());
    let first = run(
        &config,
        inputs,
        &tmp.path().join("w1"),
        &tmp.path().join("m1"),
        &record,
        &CancelToken::new(),
    )
    .unwrap();
    assert!(first.teacher.is_none() && first.transformer_teacher.is_some());
    assert!(first.student.metrics.as_ref().unwrap().agreement.is_some());
    let phases: Vec<Phase> = events
        .into_inner()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            TrainEvent::PhaseFinished { phase, .. } => Some(*phase),
            _ => None,
        })
        .collect();
    assert!(phases.contains(&Phase::Labeling) && phases.contains(&Phase::Teacher), "{phases:?}");

    let stored =
        crate::ml::transfer::TransferSet::load(&tmp.path().join("m1"), &Device::Cpu).unwrap();
    let augmented = stored.examples(crate::ml::transfer::RowKind::Augmented);
    let train = stored.examples(crate::ml::transfer::RowKind::Train);
    assert_eq!(augmented.len(), 2 * train.len(), "factor 2 makes two rows per training row");
    assert!(augmented.iter().all(|e| !e.text.trim().is_empty() && e.label.is_none()));

    let mut reuse = config.clone();
    reuse.teacher.job_id = Some("earlier".into());
    reuse.teacher.kind = TeacherKind::Recurrent;
    reuse.teacher.pretrained = None;
    let inputs =
        JobInputs { transfer_model: Some(tmp.path().join("m1")), ..JobInputs::new(rows, None) };
    let second = run(
        &reuse,
        inputs,
        &tmp.path().join("w2"),
        &tmp.path().join("m2"),
        &NoObserver,
        &CancelToken::new(),
    )
    .unwrap();
    assert_eq!(second.labels, first.labels);
    assert_eq!(
        second.student.metrics, first.student.metrics,
        "same transfer set, same seed, same student"
    );
}
