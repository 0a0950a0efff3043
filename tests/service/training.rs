//! A job trained to success over HTTP, its events, predictions, cancel and shutdown.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::common::{assert_error, quick_job, slow_job, TestServer};

const LONG: Duration = Duration::from_secs(180);

/// Reads a Server-Sent Events stream to its end; returns (event, data) pairs.
async fn read_events(server: &TestServer, job: &str) -> Vec<(String, serde_json::Value)> {
    let response =
        server.client.get(server.url(&format!("/v1/jobs/{job}/events"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    let read = tokio::time::timeout(LONG, async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    });
    read.await.expect("the stream ends when the job does");
    parse_events(&text)
}

fn parse_events(text: &str) -> Vec<(String, serde_json::Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if !name.is_empty() {
            events.push((name, serde_json::from_str(&data).unwrap_or_default()));
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_trains_streams_its_events_and_serves_right_predictions() {
    let mut server = TestServer::start(&[]).await;
    let dataset = server.upload_sentiment(400).await;

    let response = server
        .client
        .post(server.url("/v1/jobs"))
        .json(&quick_job(&dataset, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: serde_json::Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["status"], "queued");

    // The stream delivers progress, epochs with their metrics, and the end.
    let events = read_events(&server, &id).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"state"));
    assert_eq!(names.last(), Some(&"end"), "{names:?}");
    assert!(names.contains(&"progress") || names.contains(&"epoch"), "{names:?}");
    let (_, end) = events.last().unwrap();
    assert_eq!(end["status"], "succeeded", "{end}");

    let (status, job) = server.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(job["progress"], 1.0);
    let student = job["metrics"]["student"].as_array().unwrap();
    assert!(!student.is_empty(), "{job}");
    assert!(student.last().unwrap()["valid_accuracy"].as_f64().unwrap() > 0.8, "{job}");
    let model = job["model_id"].as_str().unwrap().to_string();

    // Predictions are right on easy inputs, in order, from the default model.
    let texts = ["the food was great", "awful service", "lovely day", "the movie was terrible"];
    let (status, body) = server.post("/predict", &json!({"texts": texts})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], model.as_str());
    let labels: Vec<&str> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["pos", "neg", "pos", "neg"], "{body}");
    let first = &body["predictions"][0];
    assert_eq!(first["scores"].as_array().unwrap().len(), 2);
    let total: f64 =
        first["scores"].as_array().unwrap().iter().map(|s| s["score"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-3);

    // The teacher answers too, and top_k trims the scores.
    let body = json!({"text": "great", "role": "teacher", "top_k": 1});
    let (status, answer) = server.post(&format!("/v1/models/{model}/predict"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["role"], "teacher");
    assert_eq!(answer["predictions"][0]["scores"].as_array().unwrap().len(), 1);

    model_routes(&server, &model, &dataset).await;
    server.stop().await;
}

/// The model's description, files, promotion and deletion.
async fn model_routes(server: &TestServer, model: &str, dataset: &str) {
    let (status, view) = server.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["labels"], json!(["neg", "pos"]));
    assert!(view["student"]["metrics"]["accuracy"].as_f64().is_some(), "{view}");
    let weights = server
        .client
        .get(server.url(&format!("/v1/models/{model}/files/student")))
        .send()
        .await
        .unwrap();
    assert_eq!(weights.status(), 200);
    assert_eq!(
        weights.bytes().await.unwrap().len() as i64,
        view["student_bytes"].as_i64().unwrap()
    );
    let (status, manifest) = server.get(&format!("/v1/models/{model}/files/manifest")).await;
    assert_eq!(status, 200);
    assert_eq!(manifest["labels"], json!(["neg", "pos"]));

    // A second model; the newest is the default until the first is promoted.
    let (_, second) = server.post("/v1/jobs", &quick_job(dataset, 1)).await;
    let second_job = second["id"].as_str().unwrap();
    let done = server.wait_for(second_job, &["succeeded"], LONG).await;
    let second_model = done["model_id"].as_str().unwrap();
    // The default model's id is remembered for up to a second.
    let newest = crate::common::wait_until(Duration::from_secs(5), || async {
        let (_, answer) = server.post("/predict", &json!({"text": "good"})).await;
        (answer["model"] == second_model).then_some(())
    });
    assert!(newest.await.is_some(), "the newest model becomes the default");
    let (status, _) = server.post(&format!("/v1/models/{model}/promote"), &json!({})).await;
    assert_eq!(status, 200);
    let (_, answer) = server.post("/predict", &json!({"text": "good"})).await;
    assert_eq!(answer["model"], model);

    let response = server
        .client
        .delete(server.url(&format!("/v1/models/{second_model}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_error(&server.get(&format!("/v1/models/{second_model}")).await, 404, "model_not_found");
    let body = json!({"text": "good"});
    assert_error(
        &server.post(&format!("/v1/models/{second_model}/predict"), &body).await,
        404,
        "model_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_and_keeps_its_checkpoint() {
    let mut server = TestServer::start(&[]).await;
    let dataset = server.upload_sentiment(3000).await;
    let (_, job) = server.post("/v1/jobs", &slow_job(&dataset)).await;
    let id = job["id"].as_str().unwrap();
    server.wait_for(id, &["running"], LONG).await;
    server.wait_for_checkpoint(id, LONG).await;

    let (status, body) = server.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["cancel_requested"], true);
    let job = server.wait_for(id, &["canceled", "succeeded"], Duration::from_secs(30)).await;
    assert_eq!(job["status"], "canceled", "{job}");
    assert!(job["model_id"].is_null());
    assert!(crate::common::has_files(&server.data_dir.join("storage/checkpoints").join(id)));

    assert_error(
        &server.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await,
        409,
        "job_finished",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_canceled_at_once_and_unblocks_its_dataset() {
    let mut server = TestServer::start(&["--workers", "0"]).await;
    let dataset = server.upload_sentiment(20).await;
    let (_, job) = server.post("/v1/jobs", &quick_job(&dataset, 1)).await;
    let id = job["id"].as_str().unwrap();

    let delete =
        server.client.delete(server.url(&format!("/v1/datasets/{dataset}"))).send().await.unwrap();
    assert_eq!(delete.status(), 409);
    let (status, body) = server.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("canceled")), "{body}");
    let delete =
        server.client.delete(server.url(&format!("/v1/datasets/{dataset}"))).send().await.unwrap();
    assert_eq!(delete.status(), 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_a_running_job_back_and_a_restart_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(tmp.path(), &[]).await;
    let dataset = server.upload_sentiment(3000).await;
    let (_, job) = server.post("/v1/jobs", &slow_job(&dataset)).await;
    let id = job["id"].as_str().unwrap().to_string();
    server.wait_for(&id, &["running"], LONG).await;
    server.wait_for_checkpoint(&id, LONG).await;

    let started = std::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?}", started.elapsed());

    // Nothing runs it now: without workers, it stays queued.
    let mut api_only = TestServer::start_in(tmp.path(), &["--workers", "0"]).await;
    let (_, stored) = api_only.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(stored["status"], "queued", "{stored}");
    api_only.stop().await;

    let mut restarted = TestServer::start_in(tmp.path(), &[]).await;
    let done = restarted.wait_for(&id, &["succeeded", "failed"], LONG).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    restarted.stop().await;
}
