//! The API key: required on every route but /health when set, ignored when not.

use crate::common::{assert_error, status_and_json, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_every_route_but_health_needs_it() {
    let mut server = TestServer::start(&["--workers", "0", "--api-key", "s3cret-key"]).await;
    assert_eq!(server.get("/health").await.0, 200);
    assert_error(&server.get("/v1/jobs").await, 401, "unauthorized");
    assert_error(&server.get("/metrics").await, 401, "unauthorized");

    let wrong =
        server.client.get(server.url("/v1/jobs")).bearer_auth("s3cret-kez").send().await.unwrap();
    assert_error(&status_and_json(wrong).await, 401, "unauthorized");
    let short =
        server.client.get(server.url("/v1/jobs")).bearer_auth("s3cret").send().await.unwrap();
    assert_error(&status_and_json(short).await, 401, "unauthorized");
    let basic = server
        .client
        .get(server.url("/v1/jobs"))
        .basic_auth("s3cret-key", None::<&str>)
        .send()
        .await
        .unwrap();
    assert_error(&status_and_json(basic).await, 401, "unauthorized");

    let right =
        server.client.get(server.url("/v1/jobs")).bearer_auth("s3cret-key").send().await.unwrap();
    assert_eq!(right.status(), 200);
    let ready =
        server.client.get(server.url("/ready")).bearer_auth("s3cret-key").send().await.unwrap();
    assert_eq!(ready.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_api_is_open() {
    let mut server = TestServer::start(&["--workers", "0"]).await;
    assert_eq!(server.get("/v1/jobs").await.0, 200);
    let with_header =
        server.client.get(server.url("/v1/models")).bearer_auth("anything").send().await.unwrap();
    assert_eq!(with_header.status(), 200);
    server.stop().await;
}
