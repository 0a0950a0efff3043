//! The `jobs` table and the queue built on it.
//!
//! A worker claims the oldest queued job in one atomic statement (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL; on SQLite the single `UPDATE ... WHERE` runs under the write
//! lock), taking a lease that it renews while the job runs. Every later write of a worker
//! is guarded by `lease_owner`, so a worker that lost its lease can no longer change the
//! job. Jobs whose lease ran out go back to the queue through [`Store::requeue_expired`].

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json_column, to_json, Backend, Store, StoreError};
use crate::domain::{
    DatasetId, JobId, JobProgress, JobRecord, JobStatus, ModelId, ModelRecord, PhaseMetrics,
    WorkerId,
};

const COLUMNS: &str = "id, status, dataset_id, validation_dataset_id, config, \
    teacher_model_id, progress, metrics, error, model_id, cancel_requested, lease_owner, \
    lease_expires_at, attempts, created_at, updated_at, started_at, finished_at";

/// How many times a job may be claimed before a lease that runs out fails it.
pub const MAX_ATTEMPTS: i64 = 5;

/// The error of a job failed by [`MAX_ATTEMPTS`].
pub const ABANDONED_ERROR: &str = "the worker process died on each of the job's attempts \
    (out of memory?); try smaller models or batches";

/// Whether a worker still holds a job's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The lease was renewed; `cancel_requested` tells whether a user asked to cancel.
    Held {
        /// A user asked to cancel the job.
        cancel_requested: bool,
    },
    /// Another worker took the job, or it is no longer running.
    Lost,
}

/// How a worker ends its turn with a job.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    /// The job made this model, which is stored with it in one transaction.
    Succeeded(Box<ModelRecord>),
    /// The job failed with this message for the user.
    Failed(String),
    /// The job stopped because a user canceled it.
    Canceled,
    /// The job was interrupted and goes back to the queue.
    Requeued,
}

impl JobOutcome {
    fn status(&self) -> JobStatus {
        match self {
            JobOutcome::Succeeded(_) => JobStatus::Succeeded,
            JobOutcome::Failed(_) => JobStatus::Failed,
            JobOutcome::Canceled => JobStatus::Canceled,
            JobOutcome::Requeued => JobStatus::Queued,
        }
    }
}

/// What a cancel request did.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The job was queued and is now canceled.
    Canceled(Box<JobRecord>),
    /// The job is running; its worker will stop it within a batch.
    Requested(Box<JobRecord>),
    /// The job was already over.
    Finished(JobStatus),
    /// No job has this id.
    NotFound,
}

impl Store {
    /// Stores a new job, unless its datasets are gone: the check and the insert are one
    /// statement, so a dataset deleted meanwhile (which [`Store::delete_dataset`] refuses
    /// while a queued job uses it) cannot leave a job without its data. Returns whether
    /// the job was stored.
    ///
    /// # Errors
    /// A [`StoreError`] when the insert fails.
    pub async fn insert_job(&self, job: &JobRecord) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO jobs ({COLUMNS}) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18 \
             WHERE EXISTS (SELECT 1 FROM datasets WHERE id = $3) \
             AND ($4 IS NULL OR EXISTS (SELECT 1 FROM datasets WHERE id = $4))"
        );
        let inserted = sqlx::query(&sql)
            .bind(job.id.as_str())
            .bind(job.status.as_str())
            .bind(job.dataset_id.as_str())
            .bind(job.validation_dataset_id.as_ref().map(|d| d.as_str().to_string()))
            .bind(to_json(&job.config, "config")?)
            .bind(job.teacher_model_id.as_ref().map(|m| m.as_str().to_string()))
            .bind(to_json(&job.progress, "progress")?)
            .bind(to_json(&job.metrics, "metrics")?)
            .bind(job.error.clone())
            .bind(job.model_id.as_ref().map(|m| m.as_str().to_string()))
            .bind(i64::from(job.cancel_requested))
            .bind(job.lease_owner.as_ref().map(|w| w.as_str().to_string()))
            .bind(job.lease_expires_at)
            .bind(job.attempts)
            .bind(job.created_at)
            .bind(job.updated_at)
            .bind(job.started_at)
            .bind(job.finished_at)
            .execute(self.pool())
            .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// The job with this id.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.as_str()).fetch_optional(self.pool()).await?;
        row.map(|r| job_from_row(&r)).transpose()
    }

    /// Jobs, newest first, optionally only those in one state.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let order = "ORDER BY created_at DESC, id DESC";
        let rows = match status {
            Some(status) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM jobs WHERE status = $1 {order} LIMIT $2 OFFSET $3"
                );
                sqlx::query(&sql)
                    .bind(status.as_str())
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                let sql = format!("SELECT {COLUMNS} FROM jobs {order} LIMIT $1 OFFSET $2");
                sqlx::query(&sql).bind(limit).bind(offset).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(job_from_row).collect()
    }

    /// Claims the oldest queued job for `worker`, with a lease until `lease_until`.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn claim_job(
        &self,
        worker: &WorkerId,
        now: i64,
        lease_until: i64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
             attempts = attempts + 1, updated_at = $3, started_at = COALESCE(started_at, $3) \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' \
             ORDER BY created_at, id LIMIT 1 {lock}) AND status = 'queued' \
             RETURNING {COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(worker.as_str())
            .bind(lease_until)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| job_from_row(&r)).transpose()
    }

    /// Extends `worker`'s lease on a running job and reads its cancel flag.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn renew_lease(
        &self,
        id: &JobId,
        worker: &WorkerId,
        lease_until: i64,
    ) -> Result<LeaseState, StoreError> {
        let row = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1 \
             WHERE id = $2 AND lease_owner = $3 AND status = 'running' \
             RETURNING cancel_requested",
        )
        .bind(lease_until)
        .bind(id.as_str())
        .bind(worker.as_str())
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(row) => {
                let flag: i64 = row.try_get("cancel_requested")?;
                Ok(LeaseState::Held { cancel_requested: flag != 0 })
            }
            None => Ok(LeaseState::Lost),
        }
    }

    /// Saves the progress and epoch metrics of a job that `worker` runs.
    ///
    /// Returns whether the worker still held the lease (if not, nothing was written).
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn save_progress(
        &self,
        id: &JobId,
        worker: &WorkerId,
        progress: &JobProgress,
        metrics: &PhaseMetrics,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET progress = $1, metrics = $2, updated_at = $3 \
             WHERE id = $4 AND lease_owner = $5 AND status = 'running'",
        )
        .bind(to_json(progress, "progress")?)
        .bind(to_json(metrics, "metrics")?)
        .bind(now)
        .bind(id.as_str())
        .bind(worker.as_str())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ends `worker`'s turn with a running job, releasing the lease.
    ///
    /// A success stores the model in the same transaction. Returns whether the worker
    /// still held the lease (if not, nothing was written).
    ///
    /// # Errors
    /// A [`StoreError`] when a query fails.
    pub async fn finish_job(
        &self,
        id: &JobId,
        worker: &WorkerId,
        outcome: &JobOutcome,
        now: i64,
    ) -> Result<bool, StoreError> {
        let status = outcome.status();
        JobStatus::Running.check_transition(status)?;
        let finished_at = status.is_terminal().then_some(now);
        let (error, model_id) = match outcome {
            JobOutcome::Succeeded(model) => (None, Some(model.id.as_str().to_string())),
            JobOutcome::Failed(message) => (Some(message.clone()), None),
            JobOutcome::Canceled | JobOutcome::Requeued => (None, None),
        };

        // The job's update goes first: on SQLite a transaction that begins with a read
        // cannot later take the write lock without failing at once.
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET status = $1, error = $2, model_id = $3, finished_at = $4, \
             updated_at = $5, lease_owner = NULL, lease_expires_at = NULL \
             WHERE id = $6 AND lease_owner = $7 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(model_id)
        .bind(finished_at)
        .bind(now)
        .bind(id.as_str())
        .bind(worker.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let JobOutcome::Succeeded(model) = outcome {
            super::models::insert_model(&mut tx, model).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Cancels a queued job at once, or flags a running one for its worker to stop.
    ///
    /// # Errors
    /// A [`StoreError`] when a query fails.
    pub async fn request_cancel(&self, id: &JobId, now: i64) -> Result<CancelOutcome, StoreError> {
        JobStatus::Queued.check_transition(JobStatus::Canceled)?;
        let queued = sqlx::query(
            "UPDATE jobs SET status = 'canceled', cancel_requested = 1, finished_at = $1, \
             updated_at = $1 WHERE id = $2 AND status = 'queued'",
        )
        .bind(now)
        .bind(id.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        let running = if queued > 0 {
            0
        } else {
            sqlx::query(
                "UPDATE jobs SET cancel_requested = 1, updated_at = $1 \
                 WHERE id = $2 AND status = 'running'",
            )
            .bind(now)
            .bind(id.as_str())
            .execute(self.pool())
            .await?
            .rows_affected()
        };

        let Some(job) = self.job(id).await? else { return Ok(CancelOutcome::NotFound) };
        Ok(match (queued, running) {
            (q, _) if q > 0 => CancelOutcome::Canceled(Box::new(job)),
            (_, r) if r > 0 => CancelOutcome::Requested(Box::new(job)),
            _ => CancelOutcome::Finished(job.status),
        })
    }

    /// Puts running jobs whose lease ran out back in the queue; cancels them instead when a
    /// cancel was asked for, and fails them once they have been claimed
    /// [`MAX_ATTEMPTS`] times (a job whose worker dies every time, say from running out
    /// of memory, must not take the workers down again and again). Returns how many jobs
    /// changed.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn requeue_expired(&self, now: i64) -> Result<u64, StoreError> {
        JobStatus::Running.check_transition(JobStatus::Queued)?;
        JobStatus::Running.check_transition(JobStatus::Failed)?;
        let done = sqlx::query(
            "UPDATE jobs SET \
             status = CASE WHEN cancel_requested = 1 THEN 'canceled' \
                 WHEN attempts >= $2 THEN 'failed' ELSE 'queued' END, \
             error = CASE WHEN cancel_requested = 0 AND attempts >= $2 THEN $3 ELSE error END, \
             finished_at = CASE WHEN cancel_requested = 1 OR attempts >= $2 THEN $1 ELSE NULL END, \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE status = 'running' AND lease_expires_at < $1",
        )
        .bind(now)
        .bind(MAX_ATTEMPTS)
        .bind(ABANDONED_ERROR)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Number of jobs in each state (states without jobs are left out).
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn count_jobs(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            .fetch_all(self.pool())
            .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let status: String = row.try_get("status")?;
            let status = status
                .parse()
                .map_err(|e| StoreError::Corrupt { column: "status", source: Box::new(e) })?;
            counts.push((status, row.try_get("n")?));
        }
        Ok(counts)
    }
}

fn optional_id<T>(
    row: &AnyRow,
    column: &str,
    wrap: fn(String) -> T,
) -> Result<Option<T>, StoreError> {
    let value: Option<String> = row.try_get(column)?;
    Ok(value.map(wrap))
}

fn job_from_row(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let status = status
        .parse()
        .map_err(|e| StoreError::Corrupt { column: "status", source: Box::new(e) })?;
    Ok(JobRecord {
        id: JobId::from_string(row.try_get::<String, _>("id")?),
        status,
        dataset_id: DatasetId::from_string(row.try_get::<String, _>("dataset_id")?),
        validation_dataset_id: optional_id(row, "validation_dataset_id", DatasetId::from_string)?,
        config: json_column(row, "config")?,
        teacher_model_id: optional_id(row, "teacher_model_id", ModelId::from_string)?,
        progress: json_column(row, "progress")?,
        metrics: json_column(row, "metrics")?,
        error: row.try_get("error")?,
        model_id: optional_id(row, "model_id", ModelId::from_string)?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        lease_owner: optional_id(row, "lease_owner", WorkerId::from_string)?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}
