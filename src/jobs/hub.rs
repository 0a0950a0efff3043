//! Fan-out of job events to the listeners of this process (the SSE streams).
//!
//! Each job with listeners has a broadcast channel. A slow listener loses old events
//! (it then reads the job's stored state instead), so a listener never slows training.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::domain::{JobId, JobRecord};
use crate::ml::progress::TrainEvent;

/// Events kept per job for listeners that fall behind.
const CHANNEL_CAPACITY: usize = 256;

/// Something that happened to a job.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// The trainer reported an event.
    Train(TrainEvent),
    /// The job changed state; the record is the state after the change.
    Status(Box<JobRecord>),
}

/// Broadcast channels of jobs, by id.
#[derive(Debug, Default)]
pub struct EventHub {
    channels: Mutex<HashMap<JobId, broadcast::Sender<JobEvent>>>,
}

impl EventHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, broadcast::Sender<JobEvent>>> {
        // Senders stay valid after a panic elsewhere; nothing panics while holding this.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts listening to a job's events.
    pub fn subscribe(&self, id: &JobId) -> broadcast::Receiver<JobEvent> {
        let mut channels = self.lock();
        channels.retain(|_, sender| sender.receiver_count() > 0);
        channels
            .entry(id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Sends an event to the job's listeners, if any.
    pub fn publish(&self, id: &JobId, event: JobEvent) {
        if let Some(sender) = self.lock().get(id) {
            // An error only means that every listener has gone.
            let _ = sender.send(event);
        }
    }

    /// Number of jobs with a channel (for tests and metrics).
    pub fn channels(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::progress::Phase;

    #[tokio::test]
    async fn listeners_get_events_and_channels_are_dropped_with_them() {
        let hub = EventHub::default();
        let id = JobId::generate();
        hub.publish(&id, JobEvent::Train(TrainEvent::PhaseStarted { phase: Phase::Prepare }));
        let mut rx = hub.subscribe(&id);
        hub.publish(&id, JobEvent::Train(TrainEvent::PhaseStarted { phase: Phase::Teacher }));
        match rx.recv().await.unwrap() {
            JobEvent::Train(TrainEvent::PhaseStarted { phase }) => {
                assert_eq!(phase, Phase::Teacher)
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(rx);
        let _other = hub.subscribe(&JobId::generate());
        assert_eq!(hub.channels(), 1);
    }
}
