//! Shared helpers: a server per test, generated data, and waiting for a job.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use distillery::cli::serve::{ServeArgs, Service};
use serde_json::{json, Value};

/// Parses `serve` flags the way the binary does.
#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A server running in this process on a fresh data folder.
pub struct TestServer {
    pub service: Option<Service>,
    pub base: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    pub tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server with the default settings plus `extra` flags.
    pub async fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().to_path_buf();
        let mut server = Self::start_in(&data_dir, extra).await;
        server.tmp = Some(tmp);
        server
    }

    /// Starts a server on an existing data folder (kept by the caller).
    pub async fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        let args = serve_args(data_dir, extra);
        let service = Service::start(args, true).await.expect("server starts");
        let base = format!("http://{}", service.addr());
        Self {
            service: Some(service),
            base,
            client: reqwest::Client::new(),
            data_dir: data_dir.into(),
            tmp: None,
        }
    }

    /// The full URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server gracefully.
    pub async fn stop(&mut self) {
        if let Some(service) = self.service.take() {
            service.stop().await.expect("clean stop");
        }
    }

    /// Uploads JSON lines; returns the response status and body.
    pub async fn upload(&self, name: &str, body: String) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(&format!("/v1/datasets?name={name}")))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        status_and_json(response).await
    }

    /// Uploads generated data and returns the dataset's id.
    pub async fn upload_sentiment(&self, rows: usize) -> String {
        let (status, body) = self.upload("sentiment", sentiment_jsonl(rows, 7)).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// POSTs JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).json(body).send().await.unwrap();
        status_and_json(response).await
    }

    /// GETs JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        status_and_json(response).await
    }

    /// Waits until the job is in one of `states`; panics after `timeout`.
    pub async fn wait_for(&self, job: &str, states: &[&str], timeout: Duration) -> Value {
        wait_until(timeout, || async {
            let (_, body) = self.get(&format!("/v1/jobs/{job}")).await;
            states.contains(&body["status"].as_str().unwrap_or_default()).then_some(body)
        })
        .await
        .unwrap_or_else(|| panic!("job {job} never reached {states:?}"))
    }

    /// Waits until the running job has stored at least one checkpoint.
    pub async fn wait_for_checkpoint(&self, job: &str, timeout: Duration) {
        let dir = self.data_dir.join("storage/checkpoints").join(job);
        let found = wait_until(timeout, || async { has_files(&dir).then_some(()) }).await;
        assert!(found.is_some(), "no checkpoint stored for {job}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.service.is_some() {
            eprintln!("test server dropped without stop()");
        }
    }
}

/// Builds `serve` settings for a test: ephemeral port, fast polling, short lease.
pub fn serve_args(data_dir: &Path, extra: &[&str]) -> ServeArgs {
    let data = data_dir.display().to_string();
    let mut argv = vec!["test", "--listen", "127.0.0.1:0", "--data-dir", &data];
    argv.extend(["--poll-ms", "100", "--heartbeat-ms", "200", "--lease-secs", "3"]);
    argv.extend(["--log", "warn"]);
    argv.extend_from_slice(extra);
    TestCli::try_parse_from(argv).expect("valid test flags").serve
}

/// Whether a folder holds any file, at any depth.
pub fn has_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| e.path().is_file() || has_files(&e.path()))
}

/// Polls `check` every 50 ms until it gives a value or `timeout` passes.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(value) = check().await {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Asserts an error response's status and code.
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(got.1["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", got.1);
}

const POSITIVE: [&str; 4] = ["good", "great", "lovely", "excellent"];
const NEGATIVE: [&str; 4] = ["bad", "awful", "terrible", "poor"];
const FILLER: [&str; 10] =
    ["the", "movie", "was", "food", "really", "quite", "day", "service", "and", "it"];

/// Sentiment rows as JSON lines: filler words plus one positive or negative word.
pub fn sentiment_jsonl(rows: usize, seed: u64) -> String {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let mut out = String::new();
    for i in 0..rows {
        let positive = i % 2 == 0;
        let mut words: Vec<&str> = (0..3 + next(4)).map(|_| FILLER[next(FILLER.len())]).collect();
        let pool = if positive { POSITIVE } else { NEGATIVE };
        words.insert(next(words.len() + 1), pool[next(pool.len())]);
        let label = if positive { "pos" } else { "neg" };
        out.push_str(&json!({"text": words.join(" "), "label": label}).to_string());
        out.push('\n');
    }
    out
}

/// A small job that trains in about a second on a CPU.
pub fn quick_job(dataset_id: &str, epochs: usize) -> Value {
    json!({
        "dataset_id": dataset_id,
        "device": "cpu",
        "seed": 3,
        "teacher": {"embedding_dim": 16, "hidden_size": 16, "layers": 1, "bidirectional": false},
        "student": {"embedding_dim": 8, "hidden_size": 8},
        "training": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.01, "patience": 0}
    })
}

/// A job that trains long enough (several seconds) to be interrupted mid-way.
pub fn slow_job(dataset_id: &str) -> Value {
    json!({
        "dataset_id": dataset_id,
        "device": "cpu",
        "seed": 5,
        "teacher": {"embedding_dim": 64, "hidden_size": 96, "layers": 2, "bidirectional": true},
        "student": {"embedding_dim": 16, "hidden_size": 16},
        "training": {"epochs": 6, "batch_size": 16, "learning_rate": 0.005, "patience": 0}
    })
}
