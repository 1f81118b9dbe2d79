//! `MemLeaseStore`: the in-memory twin of etcd, for `lathe serve` with in-process workers, the tests
//! and the simulator. It reads no clock of its own: a lease lives while its handle does (an
//! in-process holder cannot miss a keep-alive), [`MemLeaseStore::expire`] ends one at once (a lost
//! worker), and [`MemLeaseStore::tick`] ends those whose holder stopped renewing more than a TTL ago,
//! by the injected [`Clock`].
//!
//! Every change and its watch notification happen under one lock, so a watch's snapshot and its
//! stream can neither miss nor repeat a change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use super::life::Life;
use super::{BoxFuture, LeaseError, LeaseEvent, LeaseHandle, LeaseStore, WatchStart, WATCH_CHANNEL_CAPACITY};
use crate::clock::Clock;

/// Cloning shares the store.
#[derive(Clone)]
pub struct MemLeaseStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct State {
    keys: BTreeMap<String, Entry>,
    leases: HashMap<u64, LeaseRecord>,
    watchers: Vec<Watcher>,
    lease_id_next: u64,
}

struct Entry {
    value: Vec<u8>,
    /// The lease that owns the key; None for a plain put.
    lease_id: Option<u64>,
}

struct LeaseRecord {
    key: String,
    ttl_ms: u64,
    /// False once the holder stopped renewing; `tick` then ends the lease a TTL after `stopped_at_ms`.
    renewing: bool,
    stopped_at_ms: u64,
    life: Arc<Life>,
}

struct Watcher {
    prefix: String,
    events: mpsc::Sender<LeaseEvent>,
}

impl MemLeaseStore {
    /// `clock` is read only by `stop_keepalive` and `tick`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemLeaseStore { shared: Arc::new(Shared { state: Mutex::new(State::default()), clock }) }
    }

    /// Ends the lease that owns `key` now, as if its holder vanished: the key is deleted, watchers
    /// see a Delete, and the handle reports the loss. Returns false if no lease owns `key`.
    pub fn expire(&self, key: &str) -> bool {
        let mut state = self.shared.lock();
        let Some(lease_id) = state.keys.get(key).and_then(|entry| entry.lease_id) else {
            return false;
        };
        let why = "expired by MemLeaseStore::expire (a lost holder)".to_string();
        state.end_lease(lease_id, Some(LeaseError::Lost { key: key.to_string(), why }))
    }

    /// Ends every lease whose holder stopped renewing at least a TTL ago by the clock; returns
    /// their keys. Live handles renew implicitly, so only `stop_keepalive`ed leases can lapse here.
    pub fn tick(&self) -> Vec<String> {
        let now_ms = self.shared.clock.now_ms();
        let mut state = self.shared.lock();
        let mut due: Vec<(u64, String)> = state
            .leases
            .iter()
            .filter(|(_, lease)| !lease.renewing && lease.stopped_at_ms.saturating_add(lease.ttl_ms) <= now_ms)
            .map(|(&lease_id, lease)| (lease_id, lease.key.clone()))
            .collect();
        // Lease order, so that a simulator run replays identically (HashMap order is random).
        due.sort();
        for (lease_id, key) in &due {
            let why = "not renewed within its TTL".to_string();
            state.end_lease(*lease_id, Some(LeaseError::Lost { key: key.clone(), why }));
        }
        due.into_iter().map(|(_, key)| key).collect()
    }
}

impl Shared {
    /// A panic while holding the lock leaves no change half-made (each change is a few map
    /// operations that cannot panic), so a poisoned lock's state is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn set(&mut self, key: &str, value: Vec<u8>, lease_id: Option<u64>) {
        self.keys.insert(key.to_string(), Entry { value: value.clone(), lease_id });
        self.notify(LeaseEvent::Put { key: key.to_string(), value });
    }

    /// Ends a lease and deletes its key if the lease still owns it; returns false if the lease had
    /// already ended.
    fn end_lease(&mut self, lease_id: u64, error: Option<LeaseError>) -> bool {
        let Some(lease) = self.leases.remove(&lease_id) else {
            return false;
        };
        lease.life.end(error);
        let owned = self.keys.get(&lease.key).is_some_and(|entry| entry.lease_id == Some(lease_id));
        if owned {
            self.keys.remove(&lease.key);
            self.notify(LeaseEvent::Delete { key: lease.key });
        }
        true
    }

    /// A watcher that is full or gone is dropped: its reader sees the buffered events, then a
    /// closed channel, and must watch again. Dropping an event silently would break the promise.
    fn notify(&mut self, event: LeaseEvent) {
        let mut kept = Vec::with_capacity(self.watchers.len());
        for watcher in self.watchers.drain(..) {
            if !event.key().starts_with(&watcher.prefix) || watcher.events.try_send(event.clone()).is_ok() {
                kept.push(watcher);
            }
        }
        self.watchers = kept;
    }
}

impl LeaseStore for MemLeaseStore {
    fn hold(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> BoxFuture<'_, Result<Box<dyn LeaseHandle>, LeaseError>> {
        let key = key.to_string();
        Box::pin(async move {
            if ttl_ms == 0 {
                return Err(LeaseError::InvalidTtl { ttl_ms });
            }
            let life = Arc::new(Life::new());
            let mut state = self.shared.lock();
            let lease_id = state.lease_id_next;
            state.lease_id_next += 1;
            let lease = LeaseRecord { key: key.clone(), ttl_ms, renewing: true, stopped_at_ms: 0, life: life.clone() };
            state.leases.insert(lease_id, lease);
            state.set(&key, value, Some(lease_id));
            drop(state);
            let handle = MemHandle { shared: self.shared.clone(), lease_id, key, ttl_ms, life };
            Ok(Box::new(handle) as Box<dyn LeaseHandle>)
        })
    }

    fn watch(&self, prefix: &str) -> BoxFuture<'_, Result<WatchStart, LeaseError>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let (events_tx, events_rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
            let mut state = self.shared.lock();
            let snapshot: Vec<(String, Vec<u8>)> = state
                .keys
                .range(prefix.clone()..)
                .take_while(|(key, _)| key.starts_with(&prefix))
                .map(|(key, entry)| (key.clone(), entry.value.clone()))
                .collect();
            state.watchers.push(Watcher { prefix, events: events_tx });
            Ok((snapshot, events_rx))
        })
    }

    fn put(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<(), LeaseError>> {
        let key = key.to_string();
        Box::pin(async move {
            self.shared.lock().set(&key, value, None);
            Ok(())
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, LeaseError>> {
        let key = key.to_string();
        Box::pin(async move { Ok(self.shared.lock().keys.get(&key).map(|entry| entry.value.clone())) })
    }
}

struct MemHandle {
    shared: Arc<Shared>,
    lease_id: u64,
    key: String,
    ttl_ms: u64,
    life: Arc<Life>,
}

impl LeaseHandle for MemHandle {
    fn key(&self) -> &str {
        &self.key
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    fn is_alive(&self) -> bool {
        self.life.is_alive()
    }

    fn lost_error(&self) -> Option<LeaseError> {
        self.life.lost_error()
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.life.ended())
    }

    fn revoke(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        Box::pin(async move {
            self.shared.lock().end_lease(self.lease_id, None);
            Ok(())
        })
    }

    fn stop_keepalive(&self) {
        let now_ms = self.shared.clock.now_ms();
        let mut state = self.shared.lock();
        if let Some(lease) = state.leases.get_mut(&self.lease_id) {
            lease.renewing = false;
            lease.stopped_at_ms = now_ms;
        }
        self.life.end(None);
    }
}

impl Drop for MemHandle {
    /// A dropped handle ends its lease at once, unless its keep-alive was stopped: then, as with a
    /// dead holder, the key stays until `tick` finds its TTL run out.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if state.leases.get(&self.lease_id).is_some_and(|lease| lease.renewing) {
            state.end_lease(self.lease_id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conformance;
    use super::*;
    use crate::clock::ManualClock;

    /// The in-memory store delivers events before the call that caused them returns; the waits
    /// only bound a broken test.
    const QUIET_MS: u64 = 20;
    const WAITS: conformance::Waits = conformance::Waits { event_ms: 100, quiet_ms: QUIET_MS };

    fn store() -> (MemLeaseStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_000));
        (MemLeaseStore::new(clock.clone()), clock)
    }

    #[tokio::test]
    async fn conformance_hold_revoke_drop() {
        conformance::hold_then_revoke_then_drop(&store().0, WAITS).await;
    }

    #[tokio::test]
    async fn conformance_snapshot_then_stream() {
        conformance::snapshot_then_stream(&store().0, WAITS).await;
    }

    #[tokio::test]
    async fn conformance_replaced_key_outlives_old_lease() {
        conformance::replaced_key_outlives_old_lease(&store().0, WAITS).await;
    }

    #[tokio::test]
    async fn conformance_plain_put_get() {
        conformance::plain_put_get(&store().0, WAITS).await;
    }

    #[tokio::test]
    async fn conformance_zero_ttl_is_refused() {
        conformance::zero_ttl_is_refused(&store().0).await;
    }

    #[tokio::test]
    async fn a_stopped_keepalive_lapses_after_the_ttl_by_the_clock() {
        let (store, clock) = store();
        let (_, mut events) = store.watch("/w/").await.unwrap();
        let handle = store.hold("/w/a", b"a".to_vec(), 3_000).await.unwrap();
        conformance::expect_put(&mut events, "/w/a", b"a", QUIET_MS).await;

        handle.stop_keepalive();
        assert!(!handle.is_alive());
        drop(handle); // a dead holder's handle going away must not delete the key early
        clock.advance_ms(2_999);
        assert_eq!(store.tick(), Vec::<String>::new());
        assert_eq!(store.get("/w/a").await.unwrap(), Some(b"a".to_vec()));
        conformance::expect_quiet(&mut events, QUIET_MS).await;

        clock.advance_ms(1);
        assert_eq!(store.tick(), vec!["/w/a".to_string()]);
        conformance::expect_delete(&mut events, "/w/a", QUIET_MS).await;
        assert_eq!(store.get("/w/a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn live_handles_never_lapse_by_the_clock() {
        let (store, clock) = store();
        let handle = store.hold("/w/a", b"a".to_vec(), 3_000).await.unwrap();
        clock.advance_ms(60_000);
        assert!(store.tick().is_empty());
        assert!(handle.is_alive());
        assert_eq!(store.get("/w/a").await.unwrap(), Some(b"a".to_vec()));
    }

    #[tokio::test]
    async fn expire_deletes_at_once_and_tells_the_holder() {
        let (store, _) = store();
        let (_, mut events) = store.watch("/w/").await.unwrap();
        let handle = store.hold("/w/a", b"a".to_vec(), 3_000).await.unwrap();
        conformance::expect_put(&mut events, "/w/a", b"a", QUIET_MS).await;

        assert!(store.expire("/w/a"));
        conformance::expect_delete(&mut events, "/w/a", QUIET_MS).await;
        handle.ended().await;
        assert!(!handle.is_alive());
        assert!(matches!(handle.lost_error(), Some(LeaseError::Lost { key, .. }) if key == "/w/a"));
        assert!(!store.expire("/w/a"), "nothing owns the key any more");
        handle.revoke().await.unwrap(); // revoking an ended lease is not an error
        drop(handle);
        conformance::expect_quiet(&mut events, QUIET_MS).await;
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_closed_not_starved() {
        let (store, _) = store();
        let (_, mut events) = store.watch("/w/").await.unwrap();
        let count = WATCH_CHANNEL_CAPACITY + 1;
        for i in 0..count {
            store.put(&format!("/w/{i:05}"), vec![]).await.unwrap();
        }
        let mut seen = 0;
        loop {
            let received = tokio::time::timeout(std::time::Duration::from_millis(100), events.recv()).await;
            let Some(event) = received.expect("a watcher that fell behind must be closed") else { break };
            assert_eq!(event.key(), format!("/w/{seen:05}"), "events arrive in order, none skipped");
            seen += 1;
        }
        assert_eq!(seen, WATCH_CHANNEL_CAPACITY, "the buffered events, then a closed channel");
    }
}
