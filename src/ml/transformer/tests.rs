//! Tests of the transformer teacher: the whole path on a tiny random BERT written by the test,
//! and pooled embeddings of the real all-MiniLM-L6-v2 against PyTorch reference values.
//!
//! The MiniLM tests read the model folder from `DISTILLERY_TEST_MINILM_DIR` and are skipped
//! (with a message) when it is unset. The reference values and how they were made are in
//! `tests/fixtures/minilm/`.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::teacher::{TeacherData, TrainCallbacks, TransformerTrainConfig};
use super::*;
use crate::ml::augment::SplitMix64;

const SPORT: [&str; 8] = ["match", "goal", "team", "player", "season", "cup", "league", "score"];
const MONEY: [&str; 8] = ["market", "shares", "bank", "profit", "price", "sales", "growth", "deal"];
const FILLER: [&str; 8] = ["the", "a", "of", "in", "new", "day", "people", "time"];

/// `n` texts alternating between two topics, with label ids 0 and 1.
fn topic_texts(n: usize, seed: u64) -> (Vec<String>, Vec<u32>) {
    let mut rng = SplitMix64::new(seed);
    let mut texts = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let topic = if i % 2 == 0 { &SPORT } else { &MONEY };
        let len = 4 + rng.below(8);
        let words: Vec<&str> = (0..len)
            .map(|_| if rng.next_f64() < 0.5 { topic[rng.below(8)] } else { FILLER[rng.below(8)] })
            .collect();
        texts.push(words.join(" "));
        labels.push((i % 2) as u32);
    }
    (texts, labels)
}

fn tiny_root(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tiny-bert");
    write_tiny_bert(&dir, seed).unwrap();
    (root, dir)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn tiny_embeddings_do_not_depend_on_batching_or_order() {
    let (_root, dir) = tiny_root(1);
    let encoder = PretrainedEncoder::load(&dir, &Device::Cpu).unwrap();
    let texts = ["a goal", "the bank reported a loss in the new season", "", "lol", "shares up"];

    let batched = encoder.embed(&texts, 3).unwrap();
    assert_eq!(batched.dims(), [texts.len(), encoder.hidden_size()]);
    for (i, text) in texts.iter().enumerate() {
        let alone = encoder.embed(&[text], 1).unwrap();
        let row = batched.narrow(0, i, 1).unwrap();
        assert!(max_abs_diff(&alone, &row) < 1e-5, "row {i} differs when batched");
    }
    let other = encoder.embed(&[texts[0], texts[1]], 2).unwrap();
    assert!(max_abs_diff(&other.narrow(0, 0, 1).unwrap(), &other.narrow(0, 1, 1).unwrap()) > 1e-3);
    assert_eq!(encoder.embed(&[], 4).unwrap().dims(), [0, encoder.hidden_size()]);

    let reports = std::cell::RefCell::new(Vec::new());
    let progress = |done: usize, total: usize| reports.borrow_mut().push((done, total));
    let hooks = EmbedHooks { progress: &progress, ..EmbedHooks::default() };
    encoder.embed_with_hooks(&texts, 2, &hooks).unwrap();
    assert_eq!(*reports.borrow(), [(2, 5), (4, 5), (5, 5)]);
    let stop = EmbedHooks { should_stop: &|| true, ..EmbedHooks::default() };
    let err = encoder.embed_with_hooks(&texts, 2, &stop).unwrap_err();
    assert!(matches!(err, TransformerError::Canceled), "{err}");
}

#[test]
fn tiny_truncates_to_max_tokens() {
    let (_root, dir) = tiny_root(2);
    let options = EncoderOptions { max_tokens: Some(6), ..EncoderOptions::default() };
    let encoder = PretrainedEncoder::load_with(&dir, &Device::Cpu, &options).unwrap();
    let long = "the team won the cup and the league in the same season again";
    let ids = encoder.tokenize(&[long, "goal"]).unwrap();
    assert_eq!(ids[0].len(), 6);
    assert_eq!(ids[0].first(), Some(&2), "[CLS] first");
    assert_eq!(ids[0].last(), Some(&3), "[SEP] kept at the end");
    assert_eq!(ids[1].len(), 3);

    let huge = EncoderOptions { max_tokens: Some(10_000), ..EncoderOptions::default() };
    let capped = PretrainedEncoder::load_with(&dir, &Device::Cpu, &huge).unwrap();
    assert_eq!(capped.max_tokens(), TinyBertSpec::default().max_positions);
    let words = vec!["goal"; 200].join(" ");
    assert_eq!(capped.embed(&[&words], 1).unwrap().dims(), [1, 32]);
}

#[test]
fn tiny_loads_weights_without_the_bert_prefix() {
    let root = tempfile::tempdir().unwrap();
    let spec = TinyBertSpec { key_prefix: String::new(), ..TinyBertSpec::default() };
    tiny::write_tiny_bert_with(root.path(), 3, &spec).unwrap();
    let encoder = PretrainedEncoder::load(root.path(), &Device::Cpu).unwrap();
    assert_eq!(encoder.embed(&["hello world"], 1).unwrap().dims(), [1, 32]);
}

#[test]
fn tiny_frozen_teacher_learns_and_survives_save_and_load() {
    let (root, dir) = tiny_root(4);
    let (train, train_labels) = topic_texts(80, 1);
    let (valid, valid_labels) = topic_texts(40, 2);
    let train: Vec<&str> = train.iter().map(String::as_str).collect();
    let valid: Vec<&str> = valid.iter().map(String::as_str).collect();
    let data = TeacherData {
        train_texts: &train,
        train_labels: &train_labels,
        valid_texts: &valid,
        valid_labels: &valid_labels,
        num_labels: 2,
    };
    let config = TransformerTrainConfig { epochs: 15, batch_size: 16, ..Default::default() };
    let steps = Cell::new(0);
    let progress = |_: usize, _: usize, _: usize, loss: f64| {
        assert!(loss.is_finite());
        steps.set(steps.get() + 1);
    };
    let callbacks = TrainCallbacks { progress: &progress, ..TrainCallbacks::default() };

    let (teacher, report) =
        TransformerTeacher::train(&dir, &data, &config, &Device::Cpu, &callbacks).unwrap();
    assert_eq!(steps.get(), 15 * 5);
    assert_eq!(report.epochs.len(), 15);
    assert!(report.epochs[14].train_loss < report.epochs[0].train_loss);
    let best = report.best_valid_accuracy.unwrap();
    assert!(best >= 0.9, "validation accuracy {best}");
    assert_eq!(report.epochs[report.best_epoch - 1].valid_accuracy, Some(best));

    let logits = teacher.logits(&valid, 7).unwrap();
    assert_eq!(logits.dims(), [valid.len(), 2]);
    let saved = root.path().join("saved-teacher");
    teacher.save(&saved).unwrap();
    assert!(!saved.join(teacher::ENCODER_FILE).exists());
    let loaded = TransformerTeacher::load(&saved, root.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.mode(), TeacherMode::Frozen);
    assert_eq!(loaded.pretrained(), "tiny-bert");
    assert!(max_abs_diff(&logits, &loaded.logits(&valid, 32).unwrap()) < 1e-5);

    // The trained teacher answers seen texts from its embedding cache and embeds the rest;
    // the loaded one has no cache: both give the same logits.
    let mixed = [valid[3], "a profit in the cup season", train[0], "", valid[3]];
    let diff =
        max_abs_diff(&teacher.logits(&mixed, 2).unwrap(), &loaded.logits(&mixed, 2).unwrap());
    assert!(diff < 1e-5, "cached and fresh logits differ by {diff}");
}

#[test]
fn tiny_fine_tune_trains_the_encoder() {
    let (root, dir) = tiny_root(5);
    let (train, labels) = topic_texts(24, 3);
    let train: Vec<&str> = train.iter().map(String::as_str).collect();
    let data = TeacherData {
        train_texts: &train,
        train_labels: &labels,
        valid_texts: &train[..8],
        valid_labels: &labels[..8],
        num_labels: 2,
    };
    let config = TransformerTrainConfig {
        mode: TeacherMode::FineTune,
        epochs: 4,
        batch_size: 8,
        lr: 1e-2,
        encoder_lr: 1e-3,
        ..Default::default()
    };
    let frozen = PretrainedEncoder::load(&dir, &Device::Cpu).unwrap().embed(&train, 8).unwrap();

    let (teacher, report) =
        TransformerTeacher::train(&dir, &data, &config, &Device::Cpu, &Default::default()).unwrap();
    let losses: Vec<f64> = report.epochs.iter().map(|e| e.train_loss).collect();
    assert!(losses[3] < losses[0], "loss did not fall: {losses:?}");
    let tuned = teacher.encoder().embed(&train, 8).unwrap();
    assert!(max_abs_diff(&frozen, &tuned) > 1e-4, "encoder weights did not move");

    let saved = root.path().join("tuned");
    teacher.save(&saved).unwrap();
    assert!(saved.join(teacher::ENCODER_FILE).exists());
    let loaded = TransformerTeacher::load(&saved, root.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.mode(), TeacherMode::FineTune);
    let before = teacher.logits(&train, 8).unwrap();
    assert!(max_abs_diff(&before, &loaded.logits(&train, 5).unwrap()) < 1e-5);
}

#[test]
fn training_stops_when_asked_and_rejects_bad_labels() {
    let (_root, dir) = tiny_root(6);
    let texts = ["goal", "bank", "cup", "price"];
    let labels = [0, 1, 0, 1];
    let mut data = TeacherData {
        train_texts: &texts,
        train_labels: &labels,
        valid_texts: &[],
        valid_labels: &[],
        num_labels: 2,
    };
    let config = TransformerTrainConfig { epochs: 3, batch_size: 2, ..Default::default() };
    let calls = Cell::new(0);
    let stop = || {
        calls.set(calls.get() + 1);
        calls.get() > 3
    };
    let callbacks = TrainCallbacks { should_stop: &stop, ..TrainCallbacks::default() };
    let err =
        TransformerTeacher::train(&dir, &data, &config, &Device::Cpu, &callbacks).unwrap_err();
    assert!(matches!(err, TransformerError::Canceled), "{err}");

    let (_, report) =
        TransformerTeacher::train(&dir, &data, &config, &Device::Cpu, &Default::default()).unwrap();
    assert_eq!((report.best_epoch, report.best_valid_accuracy), (3, None));

    let bad = [0, 1, 2, 1];
    data.train_labels = &bad;
    let err = TransformerTeacher::train(&dir, &data, &config, &Device::Cpu, &Default::default())
        .unwrap_err();
    assert!(matches!(err, TransformerError::InvalidInput(_)), "{err}");
}

/// The all-MiniLM-L6-v2 folder from `DISTILLERY_TEST_MINILM_DIR`, or `None` (test skipped).
fn minilm_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("DISTILLERY_TEST_MINILM_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("{test}: skipped, DISTILLERY_TEST_MINILM_DIR is not set");
            None
        }
    }
}

/// Reference rows: `(text, token count, embedding)`.
fn minilm_reference() -> Vec<(String, usize, Vec<f32>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm/reference.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let text = row["text"].as_str().unwrap().to_string();
            let tokens = row["tokens"].as_u64().unwrap() as usize;
            let values = row["embedding"].as_array().unwrap();
            (text, tokens, values.iter().map(|v| v.as_f64().unwrap() as f32).collect())
        })
        .collect()
}

#[test]
fn minilm_embeddings_match_pytorch_reference() {
    let Some(dir) = minilm_dir("minilm_embeddings_match_pytorch_reference") else {
        return;
    };
    let encoder = PretrainedEncoder::load(&dir, &Device::Cpu).unwrap();
    assert_eq!((encoder.hidden_size(), encoder.max_tokens()), (384, 256));
    let reference = minilm_reference();
    let texts: Vec<&str> = reference.iter().map(|(t, _, _)| t.as_str()).collect();

    let ids = encoder.tokenize(&texts).unwrap();
    for ((text, tokens, _), ids) in reference.iter().zip(&ids) {
        assert_eq!(ids.len(), *tokens, "token count of {text:?}");
    }
    let mut overall = 0f32;
    for batch_size in [1, 4] {
        let embeddings = encoder.embed(&texts, batch_size).unwrap().to_vec2::<f32>().unwrap();
        for ((text, _, expected), got) in reference.iter().zip(&embeddings) {
            let worst = expected.iter().zip(got).map(|(e, g)| (e - g).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "batch {batch_size}, {text:?}: max difference {worst}");
            overall = overall.max(worst);
        }
    }
    eprintln!("largest difference to the PyTorch reference: {overall:e}");
}

/// Texts of about `words` words each.
fn bench_texts(count: usize, words: usize) -> Vec<String> {
    let vocab: Vec<&str> = SPORT.iter().chain(&MONEY).chain(&FILLER).copied().collect();
    let mut rng = SplitMix64::new(9);
    (0..count)
        .map(|_| {
            let n = words * 3 / 4 + rng.below(words / 2 + 1);
            (0..n).map(|_| vocab[rng.below(vocab.len())]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

#[test]
#[ignore = "throughput measurement on the real model; run with --release -- --ignored"]
fn minilm_embedding_throughput() {
    let Some(dir) = minilm_dir("minilm_embedding_throughput") else {
        return;
    };
    let short = bench_texts(256, 20);
    let long = bench_texts(128, 200);
    println!("threads: {}", candle_core::utils::get_num_threads());
    for (label, texts, max_tokens) in
        [("short", &short, 256), ("long", &long, 128), ("long", &long, 256)]
    {
        let options = EncoderOptions { max_tokens: Some(max_tokens), ..Default::default() };
        let encoder = PretrainedEncoder::load_with(&dir, &Device::Cpu, &options).unwrap();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        for batch_size in [1, 64] {
            let n = if batch_size == 1 { texts.len() / 4 } else { texts.len() };
            let start = Instant::now();
            encoder.embed(&texts[..n], batch_size).unwrap();
            let rate = n as f64 / start.elapsed().as_secs_f64();
            println!(
                "{label} max_tokens={max_tokens} batch={batch_size}: {rate:.1} texts/s ({n} texts)"
            );
        }
    }
}

#[test]
fn trainable_bert_matches_candle_transformers_and_has_gradients() {
    let (_root, dir) = tiny_root(7);
    let frozen = PretrainedEncoder::load(&dir, &Device::Cpu).unwrap();
    let options = EncoderOptions { trainable: true, ..Default::default() };
    let trainable = PretrainedEncoder::load_with(&dir, &Device::Cpu, &options).unwrap();
    let texts = ["the goal of the season", "bank", "", "shares fell in the new market"];
    let a = frozen.embed(&texts, 3).unwrap();
    let b = trainable.embed(&texts, 3).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-5, "{}", max_abs_diff(&a, &b));

    let ids = trainable.tokenize(&texts[..2]).unwrap();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let loss = trainable.forward_pooled(&seqs).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = trainable.vars();
    assert_eq!(vars.len(), 5 + 16 * TinyBertSpec::default().layers);
    assert!(vars.iter().all(|v| grads.get(v.as_tensor()).is_some()), "a weight has no gradient");
    assert!(frozen.vars().is_empty());
}

#[test]
#[ignore = "fine-tuning speed on the real model; run with --release -- --ignored"]
fn minilm_fine_tune_speed() {
    let Some(dir) = minilm_dir("minilm_fine_tune_speed") else {
        return;
    };
    let (texts, labels) = topic_texts(64, 4);
    let texts: Vec<String> = texts.iter().map(|t| format!("{t} {t}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let data = TeacherData {
        train_texts: &texts,
        train_labels: &labels,
        valid_texts: &texts[..16],
        valid_labels: &labels[..16],
        num_labels: 2,
    };
    let config = TransformerTrainConfig {
        mode: TeacherMode::FineTune,
        epochs: 1,
        batch_size: 16,
        ..Default::default()
    };
    let (_, report) =
        TransformerTeacher::train(&dir, &data, &config, &Device::Cpu, &Default::default()).unwrap();
    let epoch = &report.epochs[0];
    println!(
        "fine-tune: 64 texts of ~20 words in {:.1}s ({:.1} texts/s incl. validation of 16), \
         loss {:.3}",
        epoch.seconds,
        64.0 / epoch.seconds,
        epoch.train_loss
    );
}
