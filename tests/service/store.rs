//! The store on SQLite and, when `DISTILLERY_TEST_POSTGRES_URL` is set, on PostgreSQL:
//! the queue's claim, leases, cancel, requeue, and the guarded deletes.
//!
//! For PostgreSQL each test creates (and drops) its own database on that server.

use std::collections::BTreeMap;

use distillery::domain::{
    now_millis, DatasetId, DatasetRecord, JobId, JobProgress, JobRecord, JobStatus, ModelId,
    WorkerId,
};
use distillery::ml::config::JobConfig;
use distillery::store::{
    Backend, CancelOutcome, DeleteOutcome, JobOutcome, LeaseState, Store, ABANDONED_ERROR,
    MAX_ATTEMPTS,
};

/// A fresh, migrated database of each backend available, with a guard that cleans up.
async fn stores() -> Vec<(Store, Cleanup)> {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/store.db", tmp.path().display());
    let mut stores = vec![(Store::connect(&url, 4).await.unwrap(), Cleanup::Dir(tmp))];
    if let Ok(admin_url) = std::env::var("DISTILLERY_TEST_POSTGRES_URL") {
        stores.push(postgres_store(&admin_url).await);
    }
    stores
}

enum Cleanup {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

async fn postgres_store(admin_url: &str) -> (Store, Cleanup) {
    use sqlx::Connection;
    let name = format!("distillery_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("postgres reachable");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
    let store = Store::connect(&format!("{base}/{name}"), 4).await.unwrap();
    assert_eq!(store.backend(), Backend::Postgres);
    (store, Cleanup::Postgres { admin_url: admin_url.to_string(), name })
}

async fn cleanup(store: Store, guard: Cleanup) {
    store.close().await;
    if let Cleanup::Postgres { admin_url, name } = guard {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

fn dataset() -> DatasetRecord {
    DatasetRecord {
        id: DatasetId::generate(),
        name: "d".into(),
        format: "jsonl".into(),
        rows: 2,
        labels: BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 1)]),
        unlabelled: 0,
        size_bytes: 10,
        sample: Vec::new(),
        created_at: now_millis(),
    }
}

fn job(dataset: &DatasetId, created_at: i64) -> JobRecord {
    JobRecord {
        id: JobId::generate(),
        status: JobStatus::Queued,
        dataset_id: dataset.clone(),
        validation_dataset_id: None,
        config: JobConfig::default(),
        teacher_model_id: None,
        progress: JobProgress::default(),
        metrics: Vec::new(),
        error: None,
        model_id: None,
        cancel_requested: false,
        lease_owner: None,
        lease_expires_at: None,
        attempts: 0,
        created_at,
        updated_at: created_at,
        started_at: None,
        finished_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_take_each_job_once_oldest_first() {
    for (store, guard) in stores().await {
        let data = dataset();
        store.insert_dataset(&data).await.unwrap();
        let now = now_millis();
        let jobs: Vec<_> = (0..6).map(|i| job(&data.id, now + i)).collect();
        for job in &jobs {
            assert!(store.insert_job(job).await.unwrap());
        }

        // Twelve workers race for six jobs.
        let claims = (0..12).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let worker = WorkerId::generate();
                store.claim_job(&worker, now_millis(), now_millis() + 60_000).await.unwrap()
            })
        });
        let claimed: Vec<_> = futures::future::join_all(claims)
            .await
            .into_iter()
            .filter_map(|r| r.unwrap())
            .collect();
        let mut ids: Vec<_> = claimed.iter().map(|j| j.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6, "{:?}: every job claimed exactly once", store.backend());
        assert!(claimed.iter().all(|j| j.status == JobStatus::Running && j.attempts == 1));
        let none =
            store.claim_job(&WorkerId::generate(), now_millis(), now_millis() + 1).await.unwrap();
        assert!(none.is_none());
        cleanup(store, guard).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_guard_every_write_and_expired_ones_requeue() {
    for (store, guard) in stores().await {
        let data = dataset();
        store.insert_dataset(&data).await.unwrap();
        let record = job(&data.id, now_millis());
        assert!(store.insert_job(&record).await.unwrap());
        let (first, second) = (WorkerId::generate(), WorkerId::generate());

        let now = now_millis();
        let claimed = store.claim_job(&first, now, now + 50).await.unwrap().unwrap();
        assert_eq!(claimed.id, record.id);
        let held = store.renew_lease(&record.id, &first, now + 100).await.unwrap();
        assert_eq!(held, LeaseState::Held { cancel_requested: false });

        // The lease runs out: the job goes back to the queue and another worker takes it.
        assert_eq!(store.requeue_expired(now + 1_000).await.unwrap(), 1);
        assert_eq!(store.job(&record.id).await.unwrap().unwrap().status, JobStatus::Queued);
        let again = store.claim_job(&second, now + 1_000, now + 60_000).await.unwrap().unwrap();
        assert_eq!(again.attempts, 2);

        // The first worker can no longer write anything.
        assert_eq!(
            store.renew_lease(&record.id, &first, now + 2_000).await.unwrap(),
            LeaseState::Lost
        );
        let progress = JobProgress { fraction: 0.5, ..JobProgress::default() };
        assert!(!store
            .save_progress(&record.id, &first, &progress, &Vec::new(), now)
            .await
            .unwrap());
        assert!(!store
            .finish_job(&record.id, &first, &JobOutcome::Failed("x".into()), now)
            .await
            .unwrap());
        assert!(store
            .save_progress(&record.id, &second, &progress, &Vec::new(), now)
            .await
            .unwrap());
        assert_eq!(store.job(&record.id).await.unwrap().unwrap().progress.fraction, 0.5);

        // Cancel reaches the worker through its lease; then the job ends canceled.
        assert!(matches!(
            store.request_cancel(&record.id, now).await.unwrap(),
            CancelOutcome::Requested(_)
        ));
        let flagged = store.renew_lease(&record.id, &second, now + 60_000).await.unwrap();
        assert_eq!(flagged, LeaseState::Held { cancel_requested: true });
        assert!(store.finish_job(&record.id, &second, &JobOutcome::Canceled, now).await.unwrap());
        let ended = store.job(&record.id).await.unwrap().unwrap();
        assert_eq!((ended.status, ended.lease_owner), (JobStatus::Canceled, None));
        assert!(matches!(
            store.request_cancel(&record.id, now).await.unwrap(),
            CancelOutcome::Finished(JobStatus::Canceled)
        ));
        assert!(matches!(
            store.request_cancel(&JobId::generate(), now).await.unwrap(),
            CancelOutcome::NotFound
        ));
        cleanup(store, guard).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_keeps_dying_fails_after_the_last_attempt() {
    for (store, guard) in stores().await {
        let data = dataset();
        store.insert_dataset(&data).await.unwrap();
        let record = job(&data.id, now_millis());
        assert!(store.insert_job(&record).await.unwrap());

        // Each claim's lease runs out, as when the process dies (say, out of memory).
        let mut now = now_millis();
        for attempt in 1..=MAX_ATTEMPTS {
            let worker = WorkerId::generate();
            let claimed = store.claim_job(&worker, now, now + 10).await.unwrap().unwrap();
            assert_eq!(claimed.attempts, attempt);
            now += 1_000;
            assert_eq!(store.requeue_expired(now).await.unwrap(), 1);
            let after = store.job(&record.id).await.unwrap().unwrap();
            let expected =
                if attempt < MAX_ATTEMPTS { JobStatus::Queued } else { JobStatus::Failed };
            assert_eq!(after.status, expected, "{:?} after attempt {attempt}", store.backend());
        }

        let failed = store.job(&record.id).await.unwrap().unwrap();
        assert_eq!(failed.error.as_deref(), Some(ABANDONED_ERROR));
        assert!(failed.finished_at.is_some() && failed.lease_owner.is_none());
        assert!(store.claim_job(&WorkerId::generate(), now, now + 10).await.unwrap().is_none());
        cleanup(store, guard).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_wait_for_active_jobs_and_listing_filters() {
    for (store, guard) in stores().await {
        let data = dataset();
        store.insert_dataset(&data).await.unwrap();
        let queued = job(&data.id, now_millis());
        assert!(store.insert_job(&queued).await.unwrap());
        assert_eq!(store.delete_dataset(&data.id).await.unwrap(), DeleteOutcome::InUse);

        assert!(matches!(
            store.request_cancel(&queued.id, now_millis()).await.unwrap(),
            CancelOutcome::Canceled(_)
        ));
        let canceled = store.list_jobs(Some(JobStatus::Canceled), 10, 0).await.unwrap();
        assert_eq!(canceled.len(), 1);
        assert!(store.list_jobs(Some(JobStatus::Queued), 10, 0).await.unwrap().is_empty());
        let counts = store.count_jobs().await.unwrap();
        assert_eq!(counts, vec![(JobStatus::Canceled, 1)]);

        assert_eq!(store.delete_dataset(&data.id).await.unwrap(), DeleteOutcome::Deleted);
        assert_eq!(store.delete_dataset(&data.id).await.unwrap(), DeleteOutcome::NotFound);
        // A job whose dataset is gone (deleted after the API checked it) is not stored.
        let orphan = job(&data.id, now_millis());
        assert!(!store.insert_job(&orphan).await.unwrap());
        assert!(store.job(&orphan.id).await.unwrap().is_none());
        assert!(store.default_model().await.unwrap().is_none());
        assert!(!store.promote_model(&ModelId::generate(), now_millis()).await.unwrap());
        assert_eq!(
            store.delete_model(&ModelId::generate()).await.unwrap(),
            DeleteOutcome::NotFound
        );
        store.ping().await.unwrap();
        cleanup(store, guard).await;
    }
}
