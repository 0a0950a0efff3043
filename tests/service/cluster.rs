//! The scaled set-up for real: one API process (`serve --workers 0`) and two worker
//! processes (`worker`) of the built binary, on one fresh PostgreSQL database and one
//! shared storage: S3 when `DISTILLERY_TEST_S3_ENDPOINT` and `DISTILLERY_TEST_S3_BUCKET`
//! are set (`.ci/run` starts such a server), else a folder that every process shares.
//!
//! Runs when `DISTILLERY_TEST_POSTGRES_URL` names a server where it may create a database;
//! without it the test says so and passes. What the processes did is read from their JSON
//! logs (`job started`, `resuming from the stored checkpoint`, `job ended`, each carrying
//! the job's id), so the checks see each run, not only the final rows.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{quick_job, slow_job, wait_until, TestServer};

/// The test's own lease: short, so that a killed worker's job comes back within seconds.
const LEASE_SECS: &str = "2";

/// One process of the binary, its JSON log events, and its address.
struct Process {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    base: String,
}

impl Process {
    /// Starts `distillery <role> <args>` listening on a free port; waits for its address.
    fn spawn(role: &str, data_dir: &Path, args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_distillery"))
            .arg(role)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--log", "info"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_remove("DISTILLERY_API_KEY")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let events = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                if event["message"] == "listening" {
                    let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_string());
                }
                sink.lock().unwrap().push(event);
            }
        });
        // Dropping `child` on a failed wait kills nothing: wrap it first.
        let mut process = Self { child, events, base: String::new() };
        let addr =
            rx.recv_timeout(Duration::from_secs(60)).expect("the process reports its address");
        process.base = format!("http://{addr}");
        process
    }

    /// Events so far whose message is `message` and whose job span is `job`.
    fn job_events(&self, job: &str, message: &str) -> Vec<Value> {
        let events = self.events.lock().unwrap();
        events.iter().filter(|e| e["message"] == message && job_of(e) == job).cloned().collect()
    }

    /// Every `job started` event so far, as (job id, attempt).
    fn started(&self) -> Vec<(String, i64)> {
        let events = self.events.lock().unwrap();
        let started = events.iter().filter(|e| e["message"] == "job started");
        started.map(|e| (job_of(e).to_string(), e["span"]["attempt"].as_i64().unwrap())).collect()
    }

    /// How many events it has logged so far.
    fn event_count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// SIGKILL, and wait until the process is gone.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The job id in the span of a log event, or "".
fn job_of(event: &Value) -> &str {
    event["span"]["job.id"].as_str().unwrap_or_default()
}

/// A fresh database on the test server, dropped by [`Database::drop_now`].
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str) -> Self {
        use sqlx::Connection;
        let name = format!("distillery_cluster_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("postgres reachable");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
        let url = format!("{base}/{name}");
        Self { admin_url: admin_url.to_string(), name, url }
    }

    async fn drop_now(self) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        let sql = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
}

/// The storage flags every process gets: S3 from the environment, else a shared folder.
fn storage_args(shared_dir: &Path) -> Vec<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(endpoint), Some(bucket)) =
        (var("DISTILLERY_TEST_S3_ENDPOINT"), var("DISTILLERY_TEST_S3_BUCKET"))
    else {
        return vec!["--storage-url".into(), shared_dir.display().to_string()];
    };
    let prefix = format!("cluster-{}", uuid::Uuid::now_v7().simple());
    let key = var("DISTILLERY_TEST_S3_ACCESS_KEY_ID").unwrap_or_else(|| "test".into());
    let secret = var("DISTILLERY_TEST_S3_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into());
    let region = var("DISTILLERY_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into());
    let allow_http = endpoint.starts_with("http://").to_string();
    [
        ["--storage-url", &format!("s3://{bucket}/{prefix}")],
        ["--s3-endpoint", &endpoint],
        ["--s3-region", &region],
        ["--s3-access-key-id", &key],
        ["--s3-secret-access-key", &secret],
        ["--s3-allow-http", &allow_http],
    ]
    .iter()
    .flat_map(|pair| pair.iter().map(|s| s.to_string()))
    .collect()
}

/// One API process and two workers on one database and storage.
struct Cluster {
    api: Process,
    workers: Vec<Process>,
    database: Database,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    async fn start(admin_url: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let database = Database::create(admin_url).await;
        let mut shared = vec!["--database-url".to_string(), database.url.clone()];
        shared.extend(storage_args(&tmp.path().join("shared-storage")));
        let polling = ["--lease-secs", LEASE_SECS, "--heartbeat-ms", "200", "--poll-ms", "100"];
        shared.extend(polling.map(String::from));

        // The API first: it migrates the fresh database before the workers connect.
        let mut api_args = shared.clone();
        api_args.extend(["--workers", "0"].map(String::from));
        let api = Process::spawn("serve", &tmp.path().join("api"), &api_args);
        let mut worker_args = shared;
        worker_args.extend(["--train-threads", "1"].map(String::from));
        let workers = ["worker-a", "worker-b"]
            .iter()
            .map(|name| Process::spawn("worker", &tmp.path().join(name), &worker_args))
            .collect();
        Self { api, workers, database, _tmp: tmp }
    }

    /// An HTTP client of the API process.
    fn client(&self) -> TestServer {
        TestServer {
            service: None,
            base: self.api.base.clone(),
            client: reqwest::Client::new(),
            data_dir: self._tmp.path().join("api"),
            tmp: None,
        }
    }

    /// Every worker's `job started` events for `job`, as (worker index, attempt).
    fn runs_of(&self, job: &str) -> Vec<(usize, i64)> {
        let mut runs = Vec::new();
        for (index, worker) in self.workers.iter().enumerate() {
            let started = worker.started().into_iter().filter(|(id, _)| id == job);
            runs.extend(started.map(|(_, attempt)| (index, attempt)));
        }
        runs
    }

    async fn stop(self) {
        let Self { api, workers, database, _tmp } = self;
        drop((api, workers));
        database.drop_now().await;
    }
}

fn admin_url() -> Option<String> {
    let url = std::env::var("DISTILLERY_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("skipped: set DISTILLERY_TEST_POSTGRES_URL to run the cluster test");
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_and_two_workers_share_one_queue_and_survive_a_killed_worker() {
    let Some(admin_url) = admin_url() else { return };
    let mut cluster = Cluster::start(&admin_url).await;
    let api = cluster.client();
    let (status, _) = api.get("/ready").await;
    assert_eq!(status, 200, "the API process is ready with no training workers");
    for worker in &cluster.workers {
        let client = reqwest::Client::new();
        let health = client.get(format!("{}/health", worker.base)).send().await.unwrap();
        assert_eq!(health.status(), 200, "a worker answers /health");
        let jobs = client.get(format!("{}/v1/jobs", worker.base)).send().await.unwrap();
        assert_eq!(jobs.status(), 404, "a worker has no public API");
    }

    let models = several_jobs_finish_exactly_once(&cluster, &api).await;
    a_killed_workers_job_is_finished_by_the_other(&mut cluster, &api).await;
    the_api_predicts_with_models_trained_by_workers(&api, &models).await;
    cluster.stop().await;
}

/// Submits several small jobs; each is run by exactly one worker, once, and succeeds.
/// Returns the models they made.
async fn several_jobs_finish_exactly_once(cluster: &Cluster, api: &TestServer) -> Vec<String> {
    let dataset = api.upload_sentiment(400).await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let (status, job) = api.post("/v1/jobs", &quick_job(&dataset, 3)).await;
        assert_eq!(status, 202, "{job}");
        jobs.push(job["id"].as_str().unwrap().to_string());
    }

    let mut models = Vec::new();
    for id in &jobs {
        let done = api.wait_for(id, &["succeeded", "failed"], Duration::from_secs(240)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "taken up once: {done}");
        models.push(done["model_id"].as_str().unwrap().to_string());
    }

    for id in &jobs {
        // A worker logs the end just after storing it: wait for the line to arrive.
        let ended = || cluster.workers.iter().map(|w| w.job_events(id, "job ended").len()).sum();
        let logged = wait_until(Duration::from_secs(10), || {
            let count: usize = ended();
            async move { (count > 0).then_some(()) }
        });
        assert!(logged.await.is_some(), "{id} ended");
        assert_eq!(ended(), 1, "{id} ended once");
        assert_eq!(cluster.runs_of(id).len(), 1, "one run of {id}: {:?}", cluster.runs_of(id));
    }
    assert!(cluster.api.started().is_empty(), "`serve --workers 0` trains nothing");
    for (index, worker) in cluster.workers.iter().enumerate() {
        assert!(!worker.started().is_empty(), "worker {index} took part: both poll one queue");
    }
    models
}

/// Kills the worker running a long job once it has stored a checkpoint; the other worker
/// takes the job up after the lease runs out, resumes from that checkpoint and finishes.
async fn a_killed_workers_job_is_finished_by_the_other(cluster: &mut Cluster, api: &TestServer) {
    let dataset = api.upload_sentiment(3000).await;
    let (status, job) = api.post("/v1/jobs", &slow_job(&dataset)).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();

    let victim = wait_until(Duration::from_secs(120), || {
        let runs = cluster.runs_of(&id);
        async move { runs.first().map(|(index, _)| *index) }
    })
    .await
    .expect("a worker starts the job");
    let checkpointed = wait_until(Duration::from_secs(240), || {
        let stored = cluster.workers[victim].job_events(&id, "checkpoint stored");
        async move { (!stored.is_empty()).then_some(()) }
    });
    assert!(checkpointed.await.is_some(), "the first worker stores a checkpoint");

    let survivor = 1 - victim;
    let seen_before_kill = cluster.workers[survivor].event_count();
    cluster.workers[victim].kill();

    let done = api.wait_for(&id, &["succeeded", "failed"], Duration::from_secs(300)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let mut runs = cluster.runs_of(&id);
    runs.sort_by_key(|(_, attempt)| *attempt);
    assert_eq!(runs, [(victim, 1), (survivor, 2)], "never two runs at once");

    // The survivor's run began after the kill, from the stored checkpoint.
    let events = cluster.workers[survivor].events.lock().unwrap().clone();
    let (before, after) = events.split_at(seen_before_kill);
    assert!(before.iter().all(|e| job_of(e) != id), "the survivor left the job alone");
    let resumed = after
        .iter()
        .any(|e| job_of(e) == id && e["message"] == "resuming from the stored checkpoint");
    assert!(resumed, "the survivor resumed from the checkpoint");
    let model = done["model_id"].as_str().unwrap();
    let body = json!({"text": "lovely"});
    let (status, answer) = api.post(&format!("/v1/models/{model}/predict"), &body).await;
    assert_eq!(status, 200, "the resumed job's model serves: {answer}");
}

/// The API process, which trained nothing, loads the workers' models from the shared
/// storage and predicts right on easy inputs.
async fn the_api_predicts_with_models_trained_by_workers(api: &TestServer, models: &[String]) {
    let texts = ["the food was great", "awful service", "lovely day", "the movie was terrible"];
    for model in models {
        let body = json!({"texts": texts});
        let (status, answer) = api.post(&format!("/v1/models/{model}/predict"), &body).await;
        assert_eq!(status, 200, "{answer}");
        let labels: Vec<&str> = answer["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["pos", "neg", "pos", "neg"], "{model}: {answer}");
    }
    let (status, answer) = api.post("/predict", &json!({"text": "excellent"})).await;
    assert_eq!(status, 200, "the newest model serves /predict: {answer}");
}
