//! The bounded cache of loaded model networks, least recently used out first.
//!
//! Two requests for a network that is not loaded yet share one load. An evicted network's
//! thread ends once the requests that already hold its handle are answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::batcher::BatcherHandle;
use super::{ServeError, ServingSettings};
use crate::domain::ModelId;
use crate::jobs::model_prefix;
use crate::ml::manifest::{Manifest, Role, MANIFEST_FILE};
use crate::storage::{Storage, StorageError};
use crate::store::Store;

type Key = (ModelId, Role);

struct Slot {
    handle: OnceCell<BatcherHandle>,
    last_used: AtomicU64,
}

/// Loaded model networks, by model id and role.
pub struct ModelCache {
    store: Store,
    storage: Storage,
    settings: ServingSettings,
    slots: Mutex<HashMap<Key, Arc<Slot>>>,
    clock: AtomicU64,
}

impl ModelCache {
    /// An empty cache.
    pub fn new(store: Store, storage: Storage, settings: ServingSettings) -> Self {
        Self { store, storage, settings, slots: Mutex::default(), clock: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Slot>>> {
        // The map holds no invariant a panic could break.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of networks loaded or loading.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The handle of a network, loading it first when needed.
    ///
    /// # Errors
    /// A [`ServeError`] when the model or role is unknown or the load fails.
    pub async fn get(&self, id: &ModelId, role: Role) -> Result<BatcherHandle, ServeError> {
        let key = (id.clone(), role);
        let slot = self.slot(&key);
        let loaded = slot.handle.get_or_try_init(|| self.load(id, role)).await.cloned();
        if loaded.is_err() {
            // Failures are not cached: the next request tries again.
            let mut slots = self.lock();
            if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&key);
            }
        }
        loaded
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        if let Some(slot) = slots.get(key) {
            slot.last_used.store(tick, Ordering::Relaxed);
            return Arc::clone(slot);
        }
        while slots.len() >= self.settings.cache_size.max(1) {
            let oldest = slots.iter().min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed));
            let Some(oldest) = oldest.map(|(k, _)| k.clone()) else { break };
            tracing::info!(model.id = %oldest.0, role = oldest.1.as_str(), "model unloaded");
            slots.remove(&oldest);
        }
        let slot = Arc::new(Slot { handle: OnceCell::new(), last_used: AtomicU64::new(tick) });
        slots.insert(key.clone(), Arc::clone(&slot));
        slot
    }

    /// Drops both networks of a model.
    pub fn evict(&self, id: &ModelId) {
        self.lock().retain(|(model, _), _| model != id);
    }

    async fn load(&self, id: &ModelId, role: Role) -> Result<BatcherHandle, ServeError> {
        let record =
            self.store.model(id).await?.ok_or_else(|| ServeError::ModelNotFound(id.clone()))?;
        if !record.has_role(role) {
            return Err(ServeError::NetworkNotFound { id: id.clone(), role });
        }
        let prefix = model_prefix(id);
        let fail = |e: StorageError| ServeError::Load { id: id.clone(), reason: e.to_string() };
        let manifest =
            self.storage.get_bytes(&format!("{prefix}/{MANIFEST_FILE}")).await.map_err(fail)?;
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| ServeError::Load { id: id.clone(), reason: e.to_string() })?;
        let weights = self
            .storage
            .get_bytes(&format!("{prefix}/{}", role.weights_file()))
            .await
            .map_err(fail)?;

        let device = self.settings.device.clone();
        let handle =
            BatcherHandle::start(id, role, manifest, weights, device, self.settings.batch).await?;
        tracing::info!(model.id = %id, role = role.as_str(), "model loaded");
        Ok(handle)
    }
}
