//! Dataset uploads: JSON lines and CSV, listing, showing, deleting, and bad uploads.

use serde_json::json;

use crate::common::{assert_error, sentiment_jsonl, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_count_labels_and_list_newest_first() {
    let mut server = TestServer::start(&["--workers", "0"]).await;
    let mut lines = sentiment_jsonl(10, 1);
    lines
        .push_str("{\"text\": \"no label here\"}\n\n{\"text\": \"null label\", \"label\": null}\n");
    let (status, first) = server.upload("mixed", lines).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["rows"], 12);
    assert_eq!(first["labels"], json!({"neg": 5, "pos": 5}));
    assert_eq!(first["unlabelled"], 2);
    assert_eq!(first["format"], "jsonl");

    let csv = "text,label\n\"good, really\",pos\nawful one,neg\nunlabelled,\n";
    let response = server
        .client
        .post(server.url("/v1/datasets?name=table"))
        .header("content-type", "text/csv; charset=utf-8")
        .body(csv)
        .send()
        .await
        .unwrap();
    let (status, second) = crate::common::status_and_json(response).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!((second["rows"].as_i64(), second["unlabelled"].as_i64()), (Some(3), Some(1)));

    let (_, list) = server.get("/v1/datasets?limit=1").await;
    assert_eq!(list["datasets"][0]["id"], second["id"]);
    assert_eq!(list["next_offset"], 1);
    let (_, page) = server.get("/v1/datasets?limit=1&offset=1").await;
    assert_eq!(page["datasets"][0]["id"], first["id"]);

    let id = second["id"].as_str().unwrap();
    let (status, shown) = server.get(&format!("/v1/datasets/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown["sample"][0]["text"], "good, really");

    let delete =
        server.client.delete(server.url(&format!("/v1/datasets/{id}"))).send().await.unwrap();
    assert_eq!(delete.status(), 204);
    assert_error(&server.get(&format!("/v1/datasets/{id}")).await, 404, "dataset_not_found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_name_the_line_and_respect_the_limits() {
    let mut server =
        TestServer::start(&["--workers", "0", "--max-rows", "5", "--max-upload-bytes", "2000"])
            .await;
    let bad = "{\"text\": \"fine\", \"label\": \"a\"}\n{\"txt\": \"oops\"}\n";
    let got = server.upload("bad", bad.into()).await;
    assert_error(&got, 422, "invalid_dataset");
    assert!(got.1["error"]["message"].as_str().unwrap().starts_with("line 2"), "{}", got.1);

    assert_error(&server.upload("broken", "{not json\n".into()).await, 422, "invalid_dataset");
    assert_error(&server.upload("empty", "\n\n".into()).await, 422, "invalid_dataset");
    assert_error(&server.upload("many", sentiment_jsonl(6, 1)).await, 413, "too_many_rows");
    let huge = format!("{{\"text\": \"{}\"}}\n", "x".repeat(3000));
    assert_error(&server.upload("huge", huge).await, 413, "payload_too_large");

    let response = server
        .client
        .post(server.url("/v1/datasets?name=x"))
        .header("content-type", "application/pdf")
        .body("%PDF")
        .send()
        .await
        .unwrap();
    assert_error(&crate::common::status_and_json(response).await, 415, "unsupported_media_type");
    let response = server
        .client
        .post(server.url("/v1/datasets"))
        .header("content-type", "text/csv")
        .body("text\na\n")
        .send()
        .await
        .unwrap();
    assert_error(&crate::common::status_and_json(response).await, 400, "malformed_request");
    server.stop().await;
}
