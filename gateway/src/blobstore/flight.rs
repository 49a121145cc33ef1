//! One fetch per digest at a time, so concurrent requests for a blob not
//! yet stored fetch it once.

use std::sync::Arc;

use super::BlobStore;
use super::digest::BlobDigest;

impl BlobStore {
    /// A lock per digest: holders of the same digest's lock run one at a
    /// time, so the second of two concurrent fetches finds the blob stored.
    pub async fn flight(&self, digest: &BlobDigest) -> FlightGuard<'_> {
        let lock = self
            .flights
            .lock()
            .expect("flights lock")
            .entry(digest.clone())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        FlightGuard {
            store: self,
            digest: digest.clone(),
            lock,
            _guard: guard,
        }
    }
}

/// Held while a digest is being fetched; see [`BlobStore::flight`].
pub struct FlightGuard<'a> {
    store: &'a BlobStore,
    digest: BlobDigest,
    lock: Arc<tokio::sync::Mutex<()>>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut flights = self.store.flights.lock().expect("flights lock");
        // The map's copy, ours and the guard's: nobody else is waiting.
        if Arc::strong_count(&self.lock) <= 3 {
            flights.remove(&self.digest);
        }
    }
}
