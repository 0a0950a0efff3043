//! Each error case answers with its status and stable code, in the one JSON shape.

use std::time::Duration;

use serde_json::json;

use crate::common::{assert_error, quick_job, status_and_json, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_have_their_status_and_code() {
    let mut server = TestServer::start(&["--workers", "0", "--max-body-bytes", "4096"]).await;
    let dataset = server.upload_sentiment(20).await;

    // 400: not JSON; bad query.
    let raw = server
        .client
        .post(server.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_error(&status_and_json(raw).await, 400, "malformed_request");
    assert_error(&server.get("/v1/jobs?status=done").await, 400, "malformed_request");
    assert_error(&server.get("/v1/jobs?limit=x").await, 400, "malformed_request");

    // 415: not JSON content.
    let text = server
        .client
        .post(server.url("/v1/jobs"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(&status_and_json(text).await, 415, "unsupported_media_type");

    // 413: body over the limit.
    let big = json!({"dataset_id": "x".repeat(5000)});
    assert_error(&server.post("/v1/jobs", &big).await, 413, "payload_too_large");

    // 422: invalid job fields, named.
    let cases = [
        (json!({}), "dataset_id"),
        (json!({"dataset_id": 5}), "dataset_id"),
        (
            json!({"dataset_id": dataset, "distillation": {"temperature": -1}}),
            "distillation.temperature",
        ),
        (json!({"dataset_id": dataset, "student": {"cell": "transformer"}}), "student.cell"),
        (json!({"dataset_id": dataset, "device": "tpu"}), "device"),
        (json!({"dataset_id": dataset, "bogus": 1}), "config"),
    ];
    for (body, field) in cases {
        let got = server.post("/v1/jobs", &body).await;
        assert_error(&got, 422, "invalid_job");
        let message = got.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(field) || field == "config", "{body}: {message}");
    }
    assert_error(&server.post("/v1/jobs", &json!([1, 2])).await, 422, "invalid_job");

    // 404: unknown ids and routes; 405: wrong method.
    assert_error(
        &server.post("/v1/jobs", &json!({"dataset_id": "ds_nope"})).await,
        404,
        "dataset_not_found",
    );
    let reuse = json!({"dataset_id": dataset, "teacher": {"model_id": "mdl_nope"}});
    assert_error(&server.post("/v1/jobs", &reuse).await, 404, "model_not_found");
    assert_error(&server.get("/v1/jobs/job_nope").await, 404, "job_not_found");
    assert_error(&server.post("/v1/jobs/job_nope/cancel", &json!({})).await, 404, "job_not_found");
    assert_error(&server.get("/v1/jobs/job_nope/events").await, 404, "job_not_found");
    assert_error(&server.get("/v1/datasets/ds_nope").await, 404, "dataset_not_found");
    assert_error(&server.get("/v1/models/mdl_nope").await, 404, "model_not_found");
    assert_error(
        &server.post("/v1/models/mdl_nope/promote", &json!({})).await,
        404,
        "model_not_found",
    );
    assert_error(&server.get("/v1/models/mdl_nope/files/student").await, 404, "model_not_found");
    assert_error(&server.post("/predict", &json!({"text": "hi"})).await, 404, "model_not_found");
    assert_error(
        &server.post("/v1/models/mdl_nope/predict", &json!({"text": "hi"})).await,
        404,
        "model_not_found",
    );
    assert_error(&server.get("/v2/nothing").await, 404, "route_not_found");
    let put = server.client.put(server.url("/v1/jobs")).send().await.unwrap();
    assert_error(&status_and_json(put).await, 405, "method_not_allowed");
    let delete = server.client.delete(server.url("/v1/datasets/ds_nope")).send().await.unwrap();
    assert_error(&status_and_json(delete).await, 404, "dataset_not_found");

    // 422 and 413 on prediction requests.
    assert_error(&server.post("/predict", &json!({})).await, 422, "invalid_request");
    assert_error(&server.post("/predict", &json!({"texts": []})).await, 422, "invalid_request");
    assert_error(
        &server.post("/predict", &json!({"text": "a", "top_k": 0})).await,
        422,
        "invalid_request",
    );
    assert_error(&server.post("/predict", &json!({"text": 5})).await, 422, "invalid_request");
    assert_error(
        &server.post("/predict", &json!({"text": "a", "role": "boss"})).await,
        422,
        "invalid_request",
    );
    let many: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_error(&server.post("/predict", &json!({"texts": many})).await, 413, "too_many_texts");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_texts_are_refused_and_a_full_queue_sheds_load() {
    let mut server = TestServer::start(&[
        "--max-text-bytes",
        "100",
        "--predict-queue",
        "1",
        "--batch-max-texts",
        "1",
    ])
    .await;
    let dataset = server.upload_sentiment(200).await;
    let (_, job) = server.post("/v1/jobs", &quick_job(&dataset, 1)).await;
    let job = server
        .wait_for(job["id"].as_str().unwrap(), &["succeeded"], Duration::from_secs(120))
        .await;
    let model = job["model_id"].as_str().unwrap();

    let long = "good ".repeat(30);
    assert_error(
        &server.post("/predict", &json!({"texts": ["ok", long]})).await,
        413,
        "text_too_long",
    );
    let no_teacher = json!({"dataset_id": dataset, "teacher": {"kind": "none"}});
    assert_eq!(server.post("/v1/jobs", &no_teacher).await.0, 202);

    // Many concurrent requests of 256 texts against a queue of one: some are refused.
    let body = json!({"texts": vec!["the food was good"; 256]});
    let requests = (0..48).map(|_| {
        let request =
            server.client.post(server.url(&format!("/v1/models/{model}/predict"))).json(&body);
        async move { request.send().await.unwrap() }
    });
    let responses = futures::future::join_all(requests).await;
    let refused: Vec<_> = responses.iter().filter(|r| r.status() == 503).collect();
    assert!(!refused.is_empty(), "no request was refused");
    assert!(responses.iter().any(|r| r.status() == 200));
    assert_eq!(refused[0].headers()["retry-after"], "1");
    for response in responses.into_iter().filter(|r| r.status() == 503).take(1) {
        assert_error(&status_and_json(response).await, 503, "overloaded");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_routes_answer() {
    let mut server = TestServer::start(&["--workers", "0"]).await;
    let (status, health) = server.get("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = server.get("/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    server.get("/v1/jobs").await;
    let metrics =
        server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("distillery_http_requests_total"), "{metrics}");
    assert!(metrics.contains("distillery_http_request_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("distillery_queue_length"), "{metrics}");
    assert!(metrics.contains("distillery_jobs{status=\"queued\"}"), "{metrics}");
    server.stop().await;
}
