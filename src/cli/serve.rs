//! `distillery serve` and `distillery worker`: settings, start-up and shutdown.
//!
//! Start-up: 1. logs and metrics, 2. the database (migrated) and the object storage,
//! 3. the training workers, 4. the HTTP listener. Shutdown (SIGTERM or Ctrl-C): stop
//! accepting, end event streams, let requests in flight finish, interrupt running jobs
//! so that they checkpoint and go back to the queue, then exit.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::telemetry::{init_tracing, metrics_handle, TelemetryArgs};
use crate::api::state::Readiness;
use crate::api::{ApiKey, AppState, Limits};
use crate::jobs::{JobContext, PipelineTrainer, Trainer, WorkerPool, WorkerSettings};
use crate::ml::data::ReadLimits;
use crate::serving::{BatchSettings, ModelServer, ServingSettings};
use crate::storage::{Storage, StorageConfig};
use crate::store::Store;

/// A secret setting: parsed from text, never printed.
#[derive(Clone)]
pub struct Secret(pub String);

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where data lives: the database, the object storage, local work files.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Local folder for the embedded database, stored files and work files.
    #[arg(long, env = "DISTILLERY_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite:PATH` or `postgres://USER:PASSWORD@HOST/DB`
    /// [default: sqlite:DATA_DIR/distillery.db].
    #[arg(long, env = "DISTILLERY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Most database connections of this process.
    #[arg(long, env = "DISTILLERY_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    /// Object storage: a folder, `s3://BUCKET/PREFIX`, or `memory://`
    /// [default: DATA_DIR/storage].
    #[arg(long, env = "DISTILLERY_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// S3 endpoint URL (MinIO and other S3-compatible servers); else AWS_ENDPOINT.
    #[arg(long, env = "DISTILLERY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region; else AWS_REGION.
    #[arg(long, env = "DISTILLERY_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id; else AWS_ACCESS_KEY_ID.
    #[arg(long, env = "DISTILLERY_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key; else AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "DISTILLERY_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
    /// Allow a plain-HTTP S3 endpoint (`true` or `false`).
    #[arg(long, env = "DISTILLERY_S3_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_allow_http: bool,
}

impl StoreArgs {
    fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.0.clone(),
            None => format!("sqlite:{}", self.data_dir.join("distillery.db").display()),
        }
    }

    fn storage_config(&self) -> StorageConfig {
        let default = self.data_dir.join("storage").display().to_string();
        StorageConfig {
            url: self.storage_url.clone().unwrap_or(default),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_access_key_id: self.s3_access_key_id.clone(),
            s3_secret_access_key: self.s3_secret_access_key.as_ref().map(|s| s.0.clone()),
            s3_allow_http: self.s3_allow_http,
        }
    }
}

/// Training workers of this process.
#[derive(Debug, Clone, Args)]
pub struct TrainingArgs {
    /// Jobs trained at once by this process; 0 serves the API only.
    #[arg(long, env = "DISTILLERY_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// CPU threads of Candle's kernels in this process (training and prediction); 0 uses
    /// every core. One is fastest for these small models and keeps Candle's spinning
    /// worker threads from taking CPU away from serving (docs/benchmarks.md).
    #[arg(long, env = "DISTILLERY_TRAIN_THREADS", default_value_t = 1)]
    pub train_threads: usize,
    /// Nice value of training threads, 0 to 19: above 0, a `/predict` request takes a
    /// core from training at once (Linux).
    #[arg(long, env = "DISTILLERY_TRAIN_NICE", default_value_t = 19,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub train_nice: i32,
    /// Seconds a claimed job's lease lasts without renewal; after that, another worker
    /// (or this one after a restart) takes the job up again.
    #[arg(long, env = "DISTILLERY_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,
    /// Milliseconds between lease renewals (which also pick up cancel requests made on
    /// other processes).
    #[arg(long, env = "DISTILLERY_HEARTBEAT_MS", default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Milliseconds an idle worker waits before looking for queued jobs again.
    #[arg(long, env = "DISTILLERY_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,
    /// Seconds that shutdown waits for running jobs to checkpoint and hand back.
    #[arg(long, env = "DISTILLERY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Folder of pretrained transformer folders (each with config.json, model.safetensors
    /// and tokenizer.json) that jobs may name as `teacher.pretrained`.
    #[arg(long, env = "DISTILLERY_PRETRAINED_DIR")]
    pub pretrained_dir: Option<PathBuf>,
}

/// Limits on requests.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest dataset upload, in bytes.
    #[arg(long, env = "DISTILLERY_MAX_UPLOAD_BYTES", default_value_t = 256 << 20)]
    pub max_upload_bytes: u64,
    /// Largest JSON body of other requests, in bytes.
    #[arg(long, env = "DISTILLERY_MAX_BODY_BYTES", default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// Most rows in one dataset.
    #[arg(long, env = "DISTILLERY_MAX_ROWS", default_value_t = 2_000_000)]
    pub max_rows: usize,
    /// Longest text in a dataset or a prediction request, in bytes.
    #[arg(long, env = "DISTILLERY_MAX_TEXT_BYTES", default_value_t = 20_000)]
    pub max_text_bytes: usize,
    /// Most texts in one prediction request.
    #[arg(long, env = "DISTILLERY_MAX_PREDICT_TEXTS", default_value_t = 256)]
    pub max_predict_texts: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_upload_bytes: self.max_upload_bytes,
            max_body_bytes: self.max_body_bytes,
            max_rows: self.max_rows,
            max_text_bytes: self.max_text_bytes,
            max_predict_texts: self.max_predict_texts,
            ..Limits::default()
        }
    }
}

/// Prediction serving.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Most model networks kept loaded in memory.
    #[arg(long, env = "DISTILLERY_MODEL_CACHE_SIZE", default_value_t = 8)]
    pub model_cache_size: usize,
    /// Most texts run through a model in one batch.
    #[arg(long, env = "DISTILLERY_BATCH_MAX_TEXTS", default_value_t = 64)]
    pub batch_max_texts: usize,
    /// Microseconds a batch waits for more requests once clients arrive together.
    #[arg(long, env = "DISTILLERY_BATCH_WAIT_US", default_value_t = 500)]
    pub batch_wait_us: u64,
    /// Requests that may wait per model; more are refused with 503 and Retry-After.
    #[arg(long, env = "DISTILLERY_PREDICT_QUEUE", default_value_t = 256)]
    pub predict_queue: usize,
    /// Device for predictions: `cpu`, `auto` or `cuda:N`.
    #[arg(long, env = "DISTILLERY_PREDICT_DEVICE", default_value = "cpu")]
    pub predict_device: String,
}

/// Settings of `distillery serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "DISTILLERY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// API key; when set, every route but /health needs `Authorization: Bearer KEY`.
    #[arg(long, env = "DISTILLERY_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Storage settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Training settings.
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Request limits.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Prediction settings.
    #[command(flatten)]
    pub predict: PredictArgs,
    /// Logging settings.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Settings of `distillery worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Address of the health and metrics listener.
    #[arg(long, env = "DISTILLERY_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// API key for /ready and /metrics (as for `serve`).
    #[arg(long, env = "DISTILLERY_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
    /// Storage settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Training settings.
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Logging settings.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl WorkerArgs {
    /// The equivalent `serve` settings, with the public API turned off.
    fn into_serve(self) -> ServeArgs {
        ServeArgs {
            listen: self.listen,
            api_key: self.api_key,
            store: self.store,
            training: self.training,
            limits: LimitArgs {
                max_upload_bytes: 0,
                max_body_bytes: 64 << 10,
                max_rows: ReadLimits::default().max_rows,
                max_text_bytes: ReadLimits::default().max_text_bytes,
                max_predict_texts: 0,
            },
            predict: PredictArgs {
                model_cache_size: 1,
                batch_max_texts: 1,
                batch_wait_us: 0,
                predict_queue: 1,
                predict_device: "cpu".into(),
            },
            telemetry: self.telemetry,
        }
    }
}

/// Runs `distillery serve` until SIGTERM or Ctrl-C.
///
/// # Errors
/// A start-up failure (bind, connect, migrate, storage).
pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    run_until_signal(args, true)
}

/// Runs `distillery worker` until SIGTERM or Ctrl-C.
///
/// # Errors
/// A start-up failure (bind, connect, migrate, storage).
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    run_until_signal(args.into_serve(), false)
}

fn run_until_signal(args: ServeArgs, public_api: bool) -> anyhow::Result<()> {
    init_tracing(&args.telemetry);
    cap_training_threads(args.training.train_threads);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("distillery-rt")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let service = Service::start(args, public_api).await?;
        shutdown_signal().await;
        tracing::info!("shutdown signal received");
        service.stop().await
    })
}

/// Caps the threads of Candle's CPU kernels; must run before any thread pool starts.
fn cap_training_threads(threads: usize) {
    if threads > 0 {
        // Read by Candle (and rayon) when their thread pools start, which is later.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// A started service: HTTP listener and training workers.
pub struct Service {
    addr: SocketAddr,
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    pool: WorkerPool,
    store: Store,
    grace: Duration,
}

impl Service {
    /// Starts everything with the training core's pipeline as trainer.
    ///
    /// # Errors
    /// A start-up failure (bind, connect, migrate, storage).
    pub async fn start(args: ServeArgs, public_api: bool) -> anyhow::Result<Self> {
        Self::start_with(args, public_api, Arc::new(PipelineTrainer)).await
    }

    /// Starts everything with the given trainer.
    ///
    /// # Errors
    /// A start-up failure (bind, connect, migrate, storage).
    pub async fn start_with(
        args: ServeArgs,
        public_api: bool,
        trainer: Arc<dyn Trainer>,
    ) -> anyhow::Result<Self> {
        tracing::info!(config = ?args, public_api, "starting");
        let metrics = metrics_handle();

        // 2. Database and storage.
        let data_dir = args.store.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create data folder {}", data_dir.display()))?;
        let store = Store::connect(&args.store.database_url(), args.store.db_max_connections)
            .await
            .context("cannot open the database")?;
        let storage =
            Storage::open(&args.store.storage_config()).context("cannot open the storage")?;

        // 3. Workers.
        let jobs = job_context(&args, store.clone(), storage.clone(), trainer);
        let pool = WorkerPool::start(jobs.clone());

        // 4. HTTP.
        let shutdown = CancellationToken::new();
        let readiness = Arc::new(Readiness::default());
        let models =
            Arc::new(ModelServer::new(store.clone(), storage.clone(), serving_settings(&args)?));
        let state = AppState {
            store: store.clone(),
            storage,
            jobs,
            models,
            limits: args.limits.limits(),
            api_key: args.api_key.as_ref().and_then(|k| ApiKey::new(&k.0)),
            metrics,
            readiness: Arc::clone(&readiness),
            shutdown: shutdown.clone(),
            tmp_dir: data_dir.join("tmp"),
            events_poll: Duration::from_millis(args.training.poll_ms.clamp(100, 2000)),
            public_api,
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr().context("cannot read the listening address")?;
        let app = crate::api::app(state);
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
        });
        tracing::info!(%addr, workers = pool.size(), "listening");
        let grace = Duration::from_secs(args.training.shutdown_grace_secs);
        Ok(Self { addr, shutdown, readiness, server, pool, store, grace })
    }

    /// The address the service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts down: stops accepting, ends event streams, lets requests in flight finish,
    /// hands running jobs back to the queue.
    ///
    /// # Errors
    /// When the HTTP server failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.readiness.set_shutting_down();
        self.shutdown.cancel();
        let grace = self.grace;
        let (server, ()) = tokio::join!(
            tokio::time::timeout(grace + Duration::from_secs(5), self.server),
            self.pool.shutdown(grace),
        );
        self.store.close().await;
        tracing::info!("stopped");
        match server {
            Ok(Ok(result)) => result.context("http server failed"),
            Ok(Err(join)) => Err(anyhow::anyhow!("http server task failed: {join}")),
            Err(_) => {
                tracing::warn!("requests still in flight at exit");
                Ok(())
            }
        }
    }
}

fn job_context(
    args: &ServeArgs,
    store: Store,
    storage: Storage,
    trainer: Arc<dyn Trainer>,
) -> JobContext {
    let training = &args.training;
    let settings = WorkerSettings {
        workers: training.workers,
        lease: Duration::from_secs(training.lease_secs.max(1)),
        heartbeat: Duration::from_millis(training.heartbeat_ms.max(10)),
        poll_interval: Duration::from_millis(training.poll_ms.max(10)),
        progress_interval: Duration::from_secs(1),
        work_dir: args.store.data_dir.join("work"),
        read_limits: ReadLimits { max_rows: usize::MAX, max_text_bytes: usize::MAX },
        pretrained_dir: training.pretrained_dir.clone(),
        train_nice: training.train_nice,
    };
    JobContext {
        store,
        storage,
        hub: Arc::default(),
        running: Arc::default(),
        wake: Arc::default(),
        trainer,
        settings,
    }
}

fn serving_settings(args: &ServeArgs) -> anyhow::Result<ServingSettings> {
    let predict = &args.predict;
    let device = crate::ml::device::open_device(&predict.predict_device)
        .context("cannot open the prediction device")?;
    Ok(ServingSettings {
        cache_size: predict.model_cache_size.max(1),
        batch: BatchSettings {
            max_batch: predict.batch_max_texts.max(1),
            max_wait: Duration::from_micros(predict.batch_wait_us),
            queue_capacity: predict.predict_queue.max(1),
        },
        default_ttl: Duration::from_secs(1),
        device,
    })
}
