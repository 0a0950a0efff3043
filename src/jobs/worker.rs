//! The pool of training workers of one process.
//!
//! Each worker is a task that loops: 1. put jobs whose lease ran out back in the queue,
//! 2. claim the oldest queued job, 3. run it (the training itself is on its own thread),
//! or wait for a wake-up, the poll interval, or shutdown. On shutdown, running jobs are
//! stopped with [`StopReason::Interrupted`]: they save a checkpoint and go back to the
//! queue, and the pool waits for that up to a grace period.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{runner, JobContext};
use crate::domain::{now_millis, WorkerId};
use crate::ml::progress::StopReason;
use crate::store::JobOutcome;

/// The running workers of this process.
pub struct WorkerPool {
    ctx: JobContext,
    tasks: JoinSet<()>,
    stop: CancellationToken,
    workers: Vec<WorkerId>,
}

impl WorkerPool {
    /// Starts `ctx.settings.workers` workers (none when it is 0).
    pub fn start(ctx: JobContext) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let workers: Vec<WorkerId> =
            (0..ctx.settings.workers).map(|_| WorkerId::generate()).collect();
        for worker in &workers {
            tasks.spawn(worker_task(ctx.clone(), worker.clone(), stop.clone()));
        }
        tracing::info!(workers = workers.len(), "training workers started");
        Self { ctx, tasks, stop, workers }
    }

    /// Number of workers.
    pub fn size(&self) -> usize {
        self.workers.len()
    }

    /// Stops claiming, interrupts running jobs, and waits up to `grace` for them to hand
    /// their jobs back. Jobs still running after that are put back in the queue here.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        self.ctx.running.stop_all(StopReason::Interrupted);
        let drained =
            tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(
                running = self.ctx.running.len(),
                "jobs still running at exit; requeueing"
            );
            self.requeue_own().await;
        }
    }

    async fn requeue_own(&self) {
        for worker in &self.workers {
            let Ok(Some(job)) = self.claimed_by(worker).await else { continue };
            let _ =
                self.ctx.store.finish_job(&job, worker, &JobOutcome::Requeued, now_millis()).await;
        }
    }

    async fn claimed_by(
        &self,
        worker: &WorkerId,
    ) -> Result<Option<crate::domain::JobId>, crate::store::StoreError> {
        let running =
            self.ctx.store.list_jobs(Some(crate::domain::JobStatus::Running), 1000, 0).await?;
        Ok(running.into_iter().find(|j| j.lease_owner.as_ref() == Some(worker)).map(|j| j.id))
    }
}

/// Counts a worker task as alive from its start until it ends, by return or by unwinding.
struct AliveGuard(std::sync::Arc<super::RunningJobs>);

impl AliveGuard {
    fn new(running: &std::sync::Arc<super::RunningJobs>) -> Self {
        running.alive_workers.fetch_add(1, Ordering::SeqCst);
        Self(running.clone())
    }
}

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive_workers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One worker: runs [`worker_round`] until shutdown. A round that panics (a bug, never
/// user input: training panics are caught on the training thread) is logged and the
/// worker goes on, so one bad round does not leave the process without workers.
async fn worker_task(ctx: JobContext, worker: WorkerId, stop: CancellationToken) {
    let _alive = AliveGuard::new(&ctx.running);
    while !stop.is_cancelled() {
        let round = std::panic::AssertUnwindSafe(worker_round(&ctx, &worker, &stop));
        if round.catch_unwind().await.is_err() {
            tracing::error!(worker = %worker, "a worker round panicked; the worker goes on");
            idle(&ctx, &stop).await;
        }
    }
}

/// One round: 1. requeue expired leases, 2. claim a job, 3. run it or wait.
async fn worker_round(ctx: &JobContext, worker: &WorkerId, stop: &CancellationToken) {
    // 1. Expired leases: the worker that held them is gone.
    match ctx.store.requeue_expired(now_millis()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "requeued jobs whose lease ran out"),
        Err(error) => tracing::warn!(error = %error, "cannot requeue expired jobs"),
    }

    // 2. Claim.
    let now = now_millis();
    let until = now + ctx.settings.lease.as_millis() as i64;
    let claimed = ctx.store.claim_job(worker, now, until).await;

    // 3. Run, or wait.
    match claimed {
        Ok(Some(job)) if stop.is_cancelled() => {
            // Shutdown began while the claim was on its way: hand the job back.
            let requeue = JobOutcome::Requeued;
            let _ = ctx.store.finish_job(&job.id, worker, &requeue, now_millis()).await;
        }
        Ok(Some(job)) => runner::run_job(ctx, worker, job).await,
        Ok(None) => idle(ctx, stop).await,
        Err(error) => {
            tracing::warn!(error = %error, "cannot claim a job");
            idle(ctx, stop).await;
        }
    }
}

async fn idle(ctx: &JobContext, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = ctx.wake.notified() => {}
        _ = tokio::time::sleep(ctx.settings.poll_interval) => {}
    }
}
