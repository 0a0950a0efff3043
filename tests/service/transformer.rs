//! A transformer teacher over HTTP: a tiny random BERT folder written by the test is listed,
//! labels an augmented transfer set, teaches a student that serves `/predict`, and its
//! stored logits teach a second student without the transformer running again.

use std::time::Duration;

use distillery::ml::transformer::write_tiny_bert;
use serde_json::{json, Value};

use crate::common::{assert_error, status_and_json, TestServer};

const LONG: Duration = Duration::from_secs(180);

/// A job distilling a small GRU from the pretrained folder `tiny-bert`.
fn transformer_job(dataset: &str) -> Value {
    json!({
        "dataset_id": dataset,
        "device": "cpu",
        "seed": 11,
        "teacher": {"kind": "transformer", "pretrained": "tiny-bert", "epochs": 20},
        "student": {"embedding_dim": 8, "hidden_size": 8},
        "distillation": {"augment": {"factor": 1}},
        "training": {"epochs": 4, "batch_size": 16, "learning_rate": 0.01, "patience": 0}
    })
}

fn labels_of(answer: &Value) -> Vec<String> {
    let predictions = answer["predictions"].as_array().expect("predictions");
    predictions.iter().map(|p| p["label"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_bert_teaches_a_student_that_serves_and_its_logits_teach_another() {
    let pretrained = tempfile::tempdir().unwrap();
    write_tiny_bert(&pretrained.path().join("tiny-bert"), 5).unwrap();
    let root = pretrained.path().display().to_string();
    let mut server = TestServer::start(&["--pretrained-dir", &root]).await;

    // 1. The folder is listed, and a job naming an unknown one is refused.
    let (status, list) = server.get("/v1/pretrained").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["pretrained"][0]["name"], "tiny-bert", "{list}");
    let dataset = server.upload_sentiment(300).await;
    let mut bad = transformer_job(&dataset);
    bad["teacher"]["pretrained"] = json!("no-such-model");
    let refused = server.post("/v1/jobs", &bad).await;
    assert_error(&refused, 422, "invalid_job");
    assert!(refused.1["error"]["message"].as_str().unwrap().contains("teacher.pretrained"));

    // 2. Load, label (with augmented rows), distil.
    let (status, job) = server.post("/v1/jobs", &transformer_job(&dataset)).await;
    assert_eq!(status, 202, "{job}");
    let first = job["id"].as_str().unwrap().to_string();
    let done = server.wait_for(&first, &["succeeded", "failed"], LONG).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for phase in ["prepare", "teacher", "labeling", "student", "finalize"] {
        let seconds = done["phase_seconds"][phase].as_f64();
        assert!(seconds.is_some_and(|s| s >= 0.0), "{phase} time: {done}");
    }
    let epochs = done["metrics"]["student"].as_array().unwrap();
    let last = epochs.last().unwrap();
    let agreement = last["agreement"].as_f64().unwrap_or_default();
    assert!(agreement > 0.8, "student-teacher agreement {agreement}: {done}");
    assert!(last["valid_accuracy"].as_f64().unwrap() > 0.8, "{done}");
    let model = done["model_id"].as_str().unwrap().to_string();

    // 3. The student serves; the transformer teacher is not a servable network.
    let texts = ["the food was great", "awful service", "lovely day", "the movie was terrible"];
    let (status, answer) = server.post("/predict", &json!({"texts": texts})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], model.as_str());
    assert_eq!(labels_of(&answer), ["pos", "neg", "pos", "neg"], "{answer}");
    let teacher = json!({"text": "great", "role": "teacher"});
    let asked = server.post(&format!("/v1/models/{model}/predict"), &teacher).await;
    assert_error(&asked, 404, "network_not_found");

    // 4. A second student from the stored logits: no pretrained folder is needed any more.
    std::fs::remove_dir_all(pretrained.path().join("tiny-bert")).unwrap();
    let reuse = json!({
        "dataset_id": dataset,
        "device": "cpu",
        "seed": 12,
        "teacher": {"job_id": first},
        "student": {"cell": "lstm", "embedding_dim": 8, "hidden_size": 8},
        "training": {"epochs": 4, "batch_size": 16, "learning_rate": 0.01, "patience": 0}
    });
    let (status, job) = server.post("/v1/jobs", &reuse).await;
    assert_eq!(status, 202, "{job}");
    let second = job["id"].as_str().unwrap().to_string();
    // The first model holds the stored logits: it stays while the second job needs them.
    let url = server.url(&format!("/v1/models/{model}"));
    let delete = server.client.delete(url).send().await.unwrap();
    assert_error(&status_and_json(delete).await, 409, "model_in_use");
    let done = server.wait_for(&second, &["succeeded", "failed"], LONG).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let second_model = done["model_id"].as_str().unwrap();
    let path = format!("/v1/models/{second_model}/predict");
    let (status, answer) = server.post(&path, &json!({"texts": texts})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(labels_of(&answer), ["pos", "neg", "pos", "neg"], "{answer}");

    // 5. A job naming a transformer while none is configured is refused at once.
    let mut plain = TestServer::start(&[]).await;
    let dataset = plain.upload_sentiment(50).await;
    let refused = plain.post("/v1/jobs", &transformer_job(&dataset)).await;
    assert_error(&refused, 422, "invalid_job");
    plain.stop().await;
    server.stop().await;
}
