//! Keeps a running job's lease alive and turns a cancel request into a stop.
//!
//! Every heartbeat the keeper renews the lease. When the database says a user asked to
//! cancel, it stops the trainer with [`StopReason::Canceled`]; when the lease is lost
//! (another worker took the job after this one stalled), it stops the trainer with
//! [`StopReason::Interrupted`] and records that the job is no longer ours.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::domain::{now_millis, JobId, WorkerId};
use crate::jobs::JobContext;
use crate::ml::progress::{CancelToken, StopReason};
use crate::store::LeaseState;

/// A running lease keeper; dropping it does not stop it, [`LeaseKeeper::stop`] does.
pub(super) struct LeaseKeeper {
    done: CancellationToken,
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts renewing `worker`'s lease on job `id`.
    pub(super) fn start(
        ctx: &JobContext,
        id: &JobId,
        worker: &WorkerId,
        token: CancelToken,
    ) -> Self {
        let done = CancellationToken::new();
        let lost = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(keep_task(
            ctx.clone(),
            id.clone(),
            worker.clone(),
            token,
            done.clone(),
            Arc::clone(&lost),
        ));
        Self { done, lost, task }
    }

    /// Stops renewing and waits for the keeper to end.
    pub(super) async fn stop(self) -> bool {
        self.done.cancel();
        let _ = self.task.await;
        self.lost.load(Ordering::SeqCst)
    }
}

async fn keep_task(
    ctx: JobContext,
    id: JobId,
    worker: WorkerId,
    token: CancelToken,
    done: CancellationToken,
    lost: Arc<AtomicBool>,
) {
    let mut ticks = tokio::time::interval(ctx.settings.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let until = now_millis() + ctx.settings.lease.as_millis() as i64;
        match ctx.store.renew_lease(&id, &worker, until).await {
            Ok(LeaseState::Held { cancel_requested: true }) => token.stop(StopReason::Canceled),
            Ok(LeaseState::Held { cancel_requested: false }) => {}
            Ok(LeaseState::Lost) => {
                tracing::warn!(job.id = %id, "lease lost; stopping the local run");
                lost.store(true, Ordering::SeqCst);
                token.stop(StopReason::Interrupted);
                return;
            }
            // A database hiccup is retried at the next beat; the lease outlives a few.
            Err(error) => tracing::warn!(job.id = %id, error = %error, "lease renewal failed"),
        }
    }
}
