//! A server process killed with SIGKILL mid-training loses nothing: started again, it
//! takes the job up from its last checkpoint and finishes it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{slow_job, wait_until, TestServer};

/// A server process that is killed if the test fails before it ends.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The real binary, serving on a free port; returns the process and its base URL.
fn spawn_server(data_dir: &Path) -> (ServerProcess, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_distillery"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--log", "info"])
        .args(["--lease-secs", "2", "--heartbeat-ms", "200", "--poll-ms", "100"])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DISTILLERY_API_KEY")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut process = ServerProcess(child);
    let stderr = process.0.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if event["message"] == "listening" {
                let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("the server reports its address");
    (process, format!("http://{addr}"))
}

fn client_for(base: &str, data_dir: &Path) -> TestServer {
    TestServer {
        service: None,
        base: base.to_string(),
        client: reqwest::Client::new(),
        data_dir: data_dir.to_path_buf(),
        tmp: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_resumes_its_job_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn_server(tmp.path());
    let server = client_for(&base, tmp.path());
    let dataset = server.upload_sentiment(3000).await;
    let (status, job) = server.post("/v1/jobs", &slow_job(&dataset)).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    server.wait_for(&id, &["running"], Duration::from_secs(120)).await;
    server.wait_for_checkpoint(&id, Duration::from_secs(180)).await;

    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reaped");

    let (mut child, base) = spawn_server(tmp.path());
    let server = client_for(&base, tmp.path());
    let (_, dataset_view) = server.get(&format!("/v1/datasets/{dataset}")).await;
    assert_eq!(dataset_view["rows"], 3000, "the dataset survived");
    let done = server.wait_for(&id, &["succeeded", "failed"], Duration::from_secs(240)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["attempts"].as_i64().unwrap() >= 2, "{done}");

    let model = done["model_id"].as_str().unwrap();
    let (status, _) = server.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200);
    let healthy = wait_until(Duration::from_secs(5), || async {
        (server.get("/health").await.0 == 200).then_some(())
    });
    assert!(healthy.await.is_some());

    // SIGTERM: a clean, quick exit.
    let pid = child.0.id().to_string();
    let term = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(term.success());
    let exited = wait_until(Duration::from_secs(15), || {
        let status = child.0.try_wait().ok().flatten();
        async move { status }
    });
    let status = exited.await.expect("exits within seconds of SIGTERM");
    assert!(status.success(), "{status:?}");
}
