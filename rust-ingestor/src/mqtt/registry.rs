//! The open connections of one server thread, by token, and the task that
//! looks their tokens up again every `VT_MQTT_AUTH_RECHECK_MS`: a disabled,
//! rotated or deleted device's connections are told to close within that
//! time plus one Redis round trip, whatever the token cache holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::auth::{self, Device};
use crate::state::AppState;

/// Digests per `HMGET`: short enough not to hold Redis up (docs/design.md, "Sharing Redis fairly").
const CHUNK: usize = 1000;

struct Entry {
    digest: [u8; 32],
    device: u64,
    close: Arc<Notify>,
}

#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    next: u64,
    sessions: HashMap<u64, Entry>,
}

/// A registered connection; dropping it unregisters.
pub struct Registered {
    registry: Registry,
    id: u64,
    /// Notified when the device may no longer send.
    pub close: Arc<Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.0.lock().unwrap_or_else(PoisonError::into_inner).sessions.remove(&self.id);
    }
}

impl Registry {
    pub fn register(&self, digest: [u8; 32], device: u64) -> Registered {
        let close = Arc::new(Notify::new());
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner.next += 1;
        let id = inner.next;
        inner.sessions.insert(id, Entry { digest, device, close: close.clone() });
        Registered { registry: self.clone(), id, close }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).sessions.len()
    }

    /// The distinct token digests of the open connections.
    fn digests(&self) -> Vec<[u8; 32]> {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut digests: Vec<[u8; 32]> = inner.sessions.values().map(|e| e.digest).collect();
        digests.sort_unstable();
        digests.dedup();
        digests
    }

    /// Tells every connection whose token no longer names its device as active to close.
    /// Returns how many were told.
    fn close_revoked(&self, now: &HashMap<[u8; 32], Option<Device>>) -> usize {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut told = 0;
        for entry in inner.sessions.values() {
            let Some(device) = now.get(&entry.digest) else { continue };
            if *device != Some(Device { id: entry.device, active: true }) {
                entry.close.notify_one();
                told += 1;
            }
        }
        told
    }
}

/// Looks up the tokens of this thread's connections every `VT_MQTT_AUTH_RECHECK_MS`.
/// A Redis failure leaves the connections open: it says nothing about the tokens.
pub async fn recheck_forever(state: AppState, registry: Registry) {
    let mut tick = tokio::time::interval(state.config.mqtt.auth_recheck);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        recheck(&state, &registry).await;
    }
}

pub async fn recheck(state: &AppState, registry: &Registry) -> usize {
    let mut now = HashMap::new();
    for chunk in registry.digests().chunks(CHUNK) {
        match auth::lookup_many(state, chunk).await {
            Ok(devices) => now.extend(chunk.iter().copied().zip(devices)),
            Err(e) => {
                state.redis_failed("token_lookup", &e);
                return 0;
            }
        }
    }
    registry.close_revoked(&now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_connections_of_revoked_tokens_are_told_to_close() {
        let registry = Registry::default();
        let kept = registry.register([1; 32], 7);
        let disabled = registry.register([2; 32], 8);
        let deleted = registry.register([3; 32], 9);
        let moved = registry.register([4; 32], 10);
        let unknown_now = registry.register([5; 32], 11);
        assert_eq!(registry.digests().len(), 5);
        let now = HashMap::from([
            ([1; 32], Some(Device { id: 7, active: true })),
            ([2; 32], Some(Device { id: 8, active: false })),
            ([3; 32], None),
            ([4; 32], Some(Device { id: 99, active: true })),
        ]);
        assert_eq!(registry.close_revoked(&now), 3);
        for told in [&disabled, &deleted, &moved] {
            tokio::time::timeout(std::time::Duration::from_millis(50), told.close.notified()).await.unwrap();
        }
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(20), kept.close.notified()).await;
        assert!(quiet.is_err(), "an active token keeps its connection");
        drop(unknown_now);
        drop(kept);
        assert_eq!(registry.len(), 3);
    }
}
