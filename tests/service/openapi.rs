//! `openapi.yaml` and the router agree: every route and method is in both, and every
//! documented route answers on a live server with something other than "no such route".

use std::collections::BTreeSet;

use distillery::api::ROUTES;

use crate::common::TestServer;

/// (METHOD, path) pairs of the `paths` section of the OpenAPI file.
fn documented() -> BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let mut in_paths = false;
    let mut path = String::new();
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let key = line.trim().trim_end_matches(':');
        if indent == 2 && key.starts_with('/') && line.trim_end().ends_with(':') {
            path = key.to_string();
        } else if indent == 4 && ["get", "post", "put", "patch", "delete"].contains(&key) {
            found.insert((key.to_uppercase(), path.clone()));
        }
    }
    found
}

#[test]
fn openapi_and_router_list_the_same_routes() {
    let documented = documented();
    let served: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert!(!served.is_empty());
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "routes missing from openapi.yaml: {missing:?}");
    assert!(extra.is_empty(), "documented routes the server lacks: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_served() {
    let mut server = TestServer::start(&["--workers", "0"]).await;
    for (method, path) in documented() {
        let url = server.url(&path.replace("{id}", "x_unknown").replace("{file}", "student"));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = server
            .client
            .request(method.clone(), &url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("route_not_found") && status != 405,
            "{method} {path}: {status} {body}"
        );
    }
    server.stop().await;
}
