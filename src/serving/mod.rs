//! Serving predictions: a bounded cache of loaded models, each with a batcher.
//!
//! A model network (model id and role) is loaded on first use from the object storage
//! and handed to its own thread, which batches the requests that arrive together
//! ([`batcher`]). Requests wait in a bounded queue; when it is full the caller is told
//! to come back later, so load is shed rather than queued without end. The default model
//! (the promoted one, else the newest) is looked up in the database and remembered for a
//! short while; promoting replaces it at once, while requests already handed to the old
//! model's batcher finish there.

mod batcher;
mod cache;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;

pub use batcher::BatchSettings;
pub use cache::ModelCache;

use crate::domain::ModelId;
use crate::ml::manifest::Role;
use crate::storage::Storage;
use crate::store::Store;

/// How models are served.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    /// Most model networks kept loaded at once.
    pub cache_size: usize,
    /// Batching of concurrent requests.
    pub batch: BatchSettings,
    /// How long the default model's id is remembered before the database is asked again.
    pub default_ttl: Duration,
    /// Device that predictions run on.
    pub device: Device,
}

/// Why a prediction could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No model has this id.
    #[error("no model with id `{0}`")]
    ModelNotFound(ModelId),
    /// No model exists yet.
    #[error("no model has been trained yet")]
    NoModel,
    /// The model has no network of this role.
    #[error("model `{id}` has no {} network", role.as_str())]
    NetworkNotFound {
        /// The model.
        id: ModelId,
        /// The role asked for.
        role: Role,
    },
    /// The model's queue is full.
    #[error("too many prediction requests waiting")]
    Overloaded,
    /// The model cannot be loaded.
    #[error("model `{id}` cannot be loaded: {reason}")]
    Load {
        /// The model.
        id: ModelId,
        /// Why (for the log).
        reason: String,
    },
    /// The prediction failed inside the model.
    #[error("prediction failed: {0}")]
    Predict(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Probabilities for a batch of texts, with the label names they refer to.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Label names, by class index.
    pub labels: Arc<Vec<String>>,
    /// `[texts][labels]` probabilities, in the order of the texts.
    pub probabilities: Vec<Vec<f32>>,
}

/// Loads, caches and runs models for the API.
pub struct ModelServer {
    store: Store,
    cache: ModelCache,
    default_ttl: Duration,
    default: Mutex<Option<(ModelId, Instant)>>,
}

impl ModelServer {
    /// A server with an empty cache.
    pub fn new(store: Store, storage: Storage, settings: ServingSettings) -> Self {
        let cache = ModelCache::new(store.clone(), storage, settings.clone());
        Self { store, cache, default_ttl: settings.default_ttl, default: Mutex::new(None) }
    }

    /// The model to use: `requested`, else the default one.
    ///
    /// # Errors
    /// [`ServeError::NoModel`] when there is none, or a store error.
    pub async fn resolve(&self, requested: Option<ModelId>) -> Result<ModelId, ServeError> {
        if let Some(id) = requested {
            return Ok(id);
        }
        if let Some(id) = self.fresh_default() {
            return Ok(id);
        }
        let model = self.store.default_model().await?.ok_or(ServeError::NoModel)?;
        *self.lock_default() = Some((model.id.clone(), Instant::now()));
        Ok(model.id)
    }

    fn fresh_default(&self) -> Option<ModelId> {
        let guard = self.lock_default();
        let (id, at) = guard.as_ref()?;
        (at.elapsed() < self.default_ttl).then(|| id.clone())
    }

    fn lock_default(&self) -> std::sync::MutexGuard<'_, Option<(ModelId, Instant)>> {
        // The cached id stays valid after a panic elsewhere.
        self.default.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `id` the default at once (after the database says so).
    pub fn set_default(&self, id: &ModelId) {
        *self.lock_default() = Some((id.clone(), Instant::now()));
    }

    /// Forgets a deleted model: its networks leave the cache, and it stops being the
    /// default.
    pub fn forget(&self, id: &ModelId) {
        self.cache.evict(id);
        let mut default = self.lock_default();
        if default.as_ref().is_some_and(|(d, _)| d == id) {
            *default = None;
        }
    }

    /// Class probabilities of `texts` by one network of one model.
    ///
    /// # Errors
    /// A [`ServeError`]: unknown model or role, full queue, load or model failure.
    pub async fn predict(
        &self,
        id: &ModelId,
        role: Role,
        texts: Vec<String>,
    ) -> Result<Prediction, ServeError> {
        let handle = self.cache.get(id, role).await?;
        let started = Instant::now();
        let count = texts.len();
        let probabilities = handle.predict(texts).await?;
        metrics::histogram!("distillery_predict_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("distillery_predictions_total").increment(count as u64);
        Ok(Prediction { labels: handle.labels(), probabilities })
    }

    /// Number of model networks loaded now.
    pub fn loaded(&self) -> usize {
        self.cache.len()
    }
}
