//! Scenarios every `LeaseStore` must pass, run against `MemLeaseStore` and against a real etcd, so
//! that the fake the simulator trusts behaves like the real thing.

use std::collections::BTreeSet;

use tokio::sync::mpsc;
use tokio::time::{timeout, Duration};

use super::{LeaseError, LeaseEvent, LeaseStore};

/// How long to wait for an event that must come, and for silence where none may.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Waits {
    pub(crate) event_ms: u64,
    pub(crate) quiet_ms: u64,
}

/// The TTL the scenarios hold keys under: etcd 3.4's minimum is about 2 s; 3 s as design §6 suggests.
const TTL_MS: u64 = 3_000;

pub(crate) async fn next_event(events: &mut mpsc::Receiver<LeaseEvent>, wait_ms: u64) -> LeaseEvent {
    match timeout(Duration::from_millis(wait_ms), events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the watch closed while an event was expected"),
        Err(_) => panic!("no event within {wait_ms} ms"),
    }
}

pub(crate) async fn expect_put(events: &mut mpsc::Receiver<LeaseEvent>, key: &str, value: &[u8], wait_ms: u64) {
    let want = LeaseEvent::Put { key: key.to_string(), value: value.to_vec() };
    assert_eq!(next_event(events, wait_ms).await, want);
}

pub(crate) async fn expect_delete(events: &mut mpsc::Receiver<LeaseEvent>, key: &str, wait_ms: u64) {
    assert_eq!(next_event(events, wait_ms).await, LeaseEvent::Delete { key: key.to_string() });
}

pub(crate) async fn expect_quiet(events: &mut mpsc::Receiver<LeaseEvent>, quiet_ms: u64) {
    match timeout(Duration::from_millis(quiet_ms), events.recv()).await {
        Err(_) => {}
        Ok(Some(event)) => panic!("unexpected event {event:?}"),
        Ok(None) => panic!("the watch closed unexpectedly"),
    }
}

/// hold → Put; revoke → Delete; drop → Delete well within the TTL (the handle revokes on drop).
pub(crate) async fn hold_then_revoke_then_drop(store: &dyn LeaseStore, waits: Waits) {
    let (snapshot, mut events) = store.watch("/c/").await.unwrap();
    assert!(snapshot.is_empty());

    let a = store.hold("/c/a", b"va".to_vec(), TTL_MS).await.unwrap();
    expect_put(&mut events, "/c/a", b"va", waits.event_ms).await;
    assert_eq!(a.key(), "/c/a");
    assert!(a.ttl_ms() >= TTL_MS, "granted {} ms", a.ttl_ms());
    assert!(a.is_alive());
    assert_eq!(store.get("/c/a").await.unwrap(), Some(b"va".to_vec()));

    a.revoke().await.unwrap();
    expect_delete(&mut events, "/c/a", waits.event_ms).await;
    assert!(!a.is_alive());
    assert_eq!(a.lost_error(), None, "a revoke is not a loss");
    a.ended().await;
    assert_eq!(store.get("/c/a").await.unwrap(), None);
    a.revoke().await.unwrap(); // a second revoke is not an error
    drop(a);

    let b = store.hold("/c/b", b"vb".to_vec(), TTL_MS).await.unwrap();
    expect_put(&mut events, "/c/b", b"vb", waits.event_ms).await;
    drop(b);
    expect_delete(&mut events, "/c/b", (TTL_MS / 2).min(waits.event_ms)).await;
    expect_quiet(&mut events, waits.quiet_ms).await;
}

/// Keys present before the watch arrive in the snapshot, later ones as events; a writer running
/// while the watch starts shows every key exactly once across the two.
pub(crate) async fn snapshot_then_stream(store: &dyn LeaseStore, waits: Waits) {
    store.put("/other/x", b"3".to_vec()).await.unwrap();
    let before = store.hold("/s/before-leased", b"1".to_vec(), TTL_MS).await.unwrap();
    // The last change before the watch is under the prefix, so a stream that starts one revision
    // early repeats it.
    store.put("/s/before-plain", b"2".to_vec()).await.unwrap();

    let (snapshot, mut events) = store.watch("/s/").await.unwrap();
    let want = vec![("/s/before-leased".to_string(), b"1".to_vec()), ("/s/before-plain".to_string(), b"2".to_vec())];
    assert_eq!(snapshot, want, "sorted by key, nothing outside the prefix");

    store.put("/other/y", b"4".to_vec()).await.unwrap();
    store.put("/s/after", b"5".to_vec()).await.unwrap();
    before.revoke().await.unwrap();
    expect_put(&mut events, "/s/after", b"5", waits.event_ms).await;
    expect_delete(&mut events, "/s/before-leased", waits.event_ms).await;
    expect_quiet(&mut events, waits.quiet_ms).await;

    // A writer racing the watch's start: whatever the interleaving, snapshot ∪ events holds each key once.
    let keys: Vec<String> = (0..50).map(|i| format!("/race/{i:03}")).collect();
    let writer = async {
        for key in &keys {
            store.put(key, key.as_bytes().to_vec()).await.unwrap();
        }
    };
    let ((), watched) = tokio::join!(writer, store.watch("/race/"));
    let (snapshot, mut events) = watched.unwrap();
    let mut seen: BTreeSet<String> = snapshot.into_iter().map(|(key, _)| key).collect();
    let from_snapshot = seen.len();
    while seen.len() < keys.len() {
        let event = next_event(&mut events, waits.event_ms).await;
        let LeaseEvent::Put { key, value } = event else { panic!("unexpected {event:?}") };
        assert_eq!(value, key.as_bytes());
        assert!(seen.insert(key.clone()), "{key} seen twice");
    }
    assert_eq!(seen, keys.iter().cloned().collect::<BTreeSet<_>>());
    expect_quiet(&mut events, waits.quiet_ms).await;
    // Not an assertion, a hint when reading test output: how the race fell this time.
    eprintln!("snapshot_then_stream: race split {from_snapshot} snapshot / {} events", keys.len() - from_snapshot);
}

/// Holding a key that exists moves it to the new lease: the old lease's end deletes nothing.
pub(crate) async fn replaced_key_outlives_old_lease(store: &dyn LeaseStore, waits: Waits) {
    let (_, mut events) = store.watch("/r/").await.unwrap();
    let first = store.hold("/r/k", b"1".to_vec(), TTL_MS).await.unwrap();
    expect_put(&mut events, "/r/k", b"1", waits.event_ms).await;
    let second = store.hold("/r/k", b"2".to_vec(), TTL_MS).await.unwrap();
    expect_put(&mut events, "/r/k", b"2", waits.event_ms).await;

    first.revoke().await.unwrap();
    drop(first);
    expect_quiet(&mut events, waits.quiet_ms).await;
    assert_eq!(store.get("/r/k").await.unwrap(), Some(b"2".to_vec()));
    assert!(second.is_alive());

    second.revoke().await.unwrap();
    expect_delete(&mut events, "/r/k", waits.event_ms).await;
}

/// Plain keys have no lease; putting over a held key detaches it from its lease.
pub(crate) async fn plain_put_get(store: &dyn LeaseStore, waits: Waits) {
    assert_eq!(store.get("/p/missing").await.unwrap(), None);
    let (_, mut events) = store.watch("/p/").await.unwrap();
    store.put("/p/addr", b"10.0.0.1:7000".to_vec()).await.unwrap();
    expect_put(&mut events, "/p/addr", b"10.0.0.1:7000", waits.event_ms).await;
    assert_eq!(store.get("/p/addr").await.unwrap(), Some(b"10.0.0.1:7000".to_vec()));

    let held = store.hold("/p/k", b"leased".to_vec(), TTL_MS).await.unwrap();
    expect_put(&mut events, "/p/k", b"leased", waits.event_ms).await;
    store.put("/p/k", b"plain".to_vec()).await.unwrap();
    expect_put(&mut events, "/p/k", b"plain", waits.event_ms).await;
    held.revoke().await.unwrap();
    expect_quiet(&mut events, waits.quiet_ms).await;
    assert_eq!(store.get("/p/k").await.unwrap(), Some(b"plain".to_vec()));
}

pub(crate) async fn zero_ttl_is_refused(store: &dyn LeaseStore) {
    let refused = store.hold("/z/k", vec![], 0).await.err();
    assert_eq!(refused, Some(LeaseError::InvalidTtl { ttl_ms: 0 }));
    assert_eq!(store.get("/z/k").await.unwrap(), None);
}
