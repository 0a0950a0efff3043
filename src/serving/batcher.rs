//! One loaded network on its own thread, batching the requests that arrive together.
//!
//! The thread takes the first waiting request, then everything already queued behind it
//! up to the batch limit. When the previous batch held several requests (clients are
//! arriving together), it also waits up to `max_wait` for more; a lone client never
//! waits. The queue is bounded: [`BatcherHandle::predict`] fails with
//! [`ServeError::Overloaded`] instead of queueing more.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use candle_core::Device;
use tokio::sync::oneshot;

use super::ServeError;
use crate::domain::ModelId;
use crate::ml::manifest::{Manifest, Role};
use crate::ml::predictor::Predictor;

/// How requests are batched and queued.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most texts run in one batch.
    pub max_batch: usize,
    /// Longest wait for more requests once clients arrive together.
    pub max_wait: Duration,
    /// Most requests waiting per model network; more are refused.
    pub queue_capacity: usize,
}

/// Probabilities of a request's texts, or why the model failed.
type Reply = Result<Vec<Vec<f32>>, String>;

struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Reply>,
}

/// The sending side of a batcher thread; the thread ends when every handle is gone.
#[derive(Clone)]
pub struct BatcherHandle {
    sender: SyncSender<Request>,
    labels: Arc<Vec<String>>,
}

impl BatcherHandle {
    /// Starts a batcher thread for one network and waits until it has loaded.
    ///
    /// # Errors
    /// [`ServeError::Load`] when the weights do not load.
    pub async fn start(
        id: &ModelId,
        role: Role,
        manifest: Manifest,
        weights: Bytes,
        device: Device,
        settings: BatchSettings,
    ) -> Result<Self, ServeError> {
        let (sender, receiver) = mpsc::sync_channel(settings.queue_capacity.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        let labels = Arc::new(manifest.labels.clone());
        let load_error = |reason: String| ServeError::Load { id: id.clone(), reason };
        std::thread::Builder::new()
            .name(format!("predict-{}", role.as_str()))
            .spawn(move || match Predictor::from_bytes(manifest, role, &weights, &device) {
                Ok(predictor) => {
                    drop(weights);
                    let _ = ready_tx.send(Ok(()));
                    serve_task(&predictor, &receiver, settings);
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                }
            })
            .map_err(|e| load_error(e.to_string()))?;
        let ready = ready_rx.await.map_err(|_| load_error("loader thread ended".into()))?;
        ready.map_err(load_error)?;
        Ok(Self { sender, labels })
    }

    /// Label names of the network.
    pub fn labels(&self) -> Arc<Vec<String>> {
        Arc::clone(&self.labels)
    }

    /// Queues `texts` and waits for their probabilities.
    ///
    /// # Errors
    /// [`ServeError::Overloaded`] when the queue is full; [`ServeError::Predict`] when the
    /// model fails.
    pub async fn predict(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ServeError> {
        let (reply, answer) = oneshot::channel();
        match self.sender.try_send(Request { texts, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ServeError::Overloaded),
            Err(TrySendError::Disconnected(_)) => {
                return Err(ServeError::Predict("the model's thread has ended".into()))
            }
        }
        let answer = answer.await.map_err(|_| ServeError::Predict("no answer".into()))?;
        answer.map_err(ServeError::Predict)
    }
}

/// The batcher's loop: runs until every sender is gone.
fn serve_task(predictor: &Predictor, receiver: &Receiver<Request>, settings: BatchSettings) {
    let mut last_batch_requests = 1;
    while let Ok(first) = receiver.recv() {
        let wait = if last_batch_requests > 1 { settings.max_wait } else { Duration::ZERO };
        let batch = gather(first, receiver, settings.max_batch, Instant::now() + wait);
        last_batch_requests = batch.len();
        run_batch(predictor, batch);
    }
}

/// Takes requests after `first` until the batch is full or nothing comes by `deadline`.
fn gather(
    first: Request,
    receiver: &Receiver<Request>,
    max_batch: usize,
    deadline: Instant,
) -> Vec<Request> {
    let mut texts = first.texts.len();
    let mut batch = vec![first];
    while texts < max_batch {
        let next = match receiver.try_recv() {
            Ok(request) => request,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match receiver.recv_timeout(left) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        texts += next.texts.len();
        batch.push(next);
    }
    batch
}

/// Runs one batch and answers each request with its share of the results.
fn run_batch(predictor: &Predictor, batch: Vec<Request>) {
    let texts: Vec<&str> = batch.iter().flat_map(|r| r.texts.iter().map(String::as_str)).collect();
    metrics::histogram!("distillery_predict_batch_size").record(texts.len() as f64);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| predictor.predict(&texts)));
    let result = match result {
        Ok(Ok(rows)) if rows.len() == texts.len() => Ok(rows),
        Ok(Ok(rows)) => Err(format!("model gave {} rows for {} texts", rows.len(), texts.len())),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("the model panicked".to_string()),
    };
    match result {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for request in batch {
                let share: Vec<_> = rows.by_ref().take(request.texts.len()).collect();
                let _ = request.reply.send(Ok(share));
            }
        }
        Err(message) => {
            tracing::error!(error = %message, "prediction failed");
            for request in batch {
                let _ = request.reply.send(Err(message.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(n: usize) -> (Request, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (Request { texts: vec!["x".to_string(); n], reply }, rx)
    }

    #[test]
    fn gather_takes_what_is_queued_up_to_the_limit() {
        let (tx, rx) = mpsc::sync_channel(8);
        let mut keep = Vec::new();
        for n in [2, 2, 2] {
            let (r, answer) = request(n);
            keep.push(answer);
            tx.send(r).unwrap();
        }
        let (first, _a) = request(1);
        let batch = gather(first, &rx, 4, Instant::now());
        assert_eq!(batch.len(), 3, "1 + 2 + 2 texts reach the limit of 4");
        let batch = gather(rx.recv().unwrap(), &rx, 4, Instant::now());
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn gather_waits_until_the_deadline_for_more() {
        let (tx, rx) = mpsc::sync_channel(8);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let (r, _answer) = request(1);
            tx.send(r).unwrap();
        });
        let (first, _a) = request(1);
        let batch = gather(first, &rx, 8, Instant::now() + Duration::from_secs(5));
        assert_eq!(batch.len(), 2);
        sender.join().unwrap();
    }
}
