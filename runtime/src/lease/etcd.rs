//! `EtcdLeaseStore`: membership on a real etcd (v3 API, no TLS). Holding a key is lease_grant, then
//! a put attached to the lease, then a keep-alive task (etcd_keepalive.rs). A watch is a `get` of the
//! prefix and a watch starting at that get's revision + 1, so that the snapshot and the stream meet
//! exactly: no change is missed and none is seen twice.
//!
//! Needs a tokio runtime (it spawns the keep-alive and watch-forwarding tasks).

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchStream};
use tokio::sync::mpsc;

use super::etcd_keepalive::{revoke_lease, EtcdHandle, KeepAlive};
use super::{BoxFuture, LeaseError, LeaseEvent, LeaseHandle, LeaseStore, WatchStart, WATCH_CHANNEL_CAPACITY};

/// `connect` gives up after this long, so an absent etcd is an error, not a hang. Under 5 s so that
/// `lathe` reports it before a human gives up on it.
const CONNECT_PROBE_MS: u64 = 4_000;
/// Per TCP connection attempt, inside the probe.
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Every unary request gets this deadline: with no live endpoint, tonic's balanced channel would
/// otherwise wait forever for one. Streams (watch, keep-alive) are bounded only while they open.
pub(super) const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// HTTP/2 pings on open streams, so that a watch on a vanished etcd ends instead of hanging. etcd
/// refuses pings more often than every 5 s (`--grpc-keepalive-min-time`) by closing the connection.
const HTTP2_PING_INTERVAL_MS: u64 = 10_000;
const HTTP2_PING_TIMEOUT_MS: u64 = 5_000;

pub struct EtcdLeaseStore {
    client: Client,
}

impl EtcdLeaseStore {
    /// Connects to the etcd cluster at `urls` (e.g. `http://127.0.0.1:2379`) and checks that it
    /// answers, within [`CONNECT_PROBE_MS`]. `urls` must not be empty.
    pub async fn connect(urls: &[String]) -> Result<Self, LeaseError> {
        assert!(!urls.is_empty(), "EtcdLeaseStore::connect needs at least one URL");
        let url = urls.join(",");
        let connect_error = |source_message: String| LeaseError::Connect { url: url.clone(), source_message };
        let options =
            ConnectOptions::new().with_connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS)).with_keep_alive(
                Duration::from_millis(HTTP2_PING_INTERVAL_MS),
                Duration::from_millis(HTTP2_PING_TIMEOUT_MS),
            );
        let probe = async {
            let mut client = Client::connect(urls, Some(options)).await?;
            // Client::connect sends nothing; a status request makes an absent etcd fail here, named.
            client.status().await?;
            Ok::<Client, etcd_client::Error>(client)
        };
        match tokio::time::timeout(Duration::from_millis(CONNECT_PROBE_MS), probe).await {
            Ok(Ok(client)) => Ok(EtcdLeaseStore { client }),
            Ok(Err(e)) => Err(connect_error(e.to_string())),
            Err(_) => Err(connect_error(format!("no answer within {CONNECT_PROBE_MS} ms"))),
        }
    }

    async fn hold_inner(&self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<Box<dyn LeaseHandle>, LeaseError> {
        if ttl_ms == 0 {
            return Err(LeaseError::InvalidTtl { ttl_ms });
        }
        let mut client = self.client.clone();
        // etcd counts leases in whole seconds; rounding up never makes a lease shorter than asked.
        let ttl_s_asked = i64::try_from(ttl_ms.div_ceil(1_000)).map_err(|_| LeaseError::InvalidTtl { ttl_ms })?;
        // The TTL runs from the grant, so the local deadline starts before the request is sent.
        let granted_at = tokio::time::Instant::now();
        let grant = bounded("lease_grant", client.lease_grant(ttl_s_asked, None)).await?;
        let lease_id = grant.id();
        // etcd may grant more than asked (its minimum TTL); the deadline must use what it granted.
        let ttl_s_granted = u64::try_from(grant.ttl()).unwrap_or(0);
        if ttl_s_granted == 0 {
            let _ = revoke_lease(client.clone(), lease_id).await;
            return Err(LeaseError::Etcd(format!("lease_grant: etcd granted a TTL of {} s", grant.ttl())));
        }
        let ttl_ms_granted = ttl_s_granted.saturating_mul(1_000);
        let attach = async {
            bounded("put", client.put(key.clone(), value, Some(PutOptions::new().with_lease(lease_id)))).await?;
            bounded("lease_keep_alive", client.lease_keep_alive(lease_id)).await
        };
        let channel = match attach.await {
            Ok(channel) => channel,
            Err(e) => {
                // Best effort: an orphaned lease would otherwise keep a key (or nothing) for a TTL.
                let _ = revoke_lease(client.clone(), lease_id).await;
                return Err(e);
            }
        };
        let keep_alive = KeepAlive::new(client, lease_id, key, ttl_ms_granted);
        let deadline = granted_at + Duration::from_millis(ttl_ms_granted);
        Ok(Box::new(EtcdHandle::spawn(keep_alive, channel, deadline)))
    }

    async fn watch_inner(&self, prefix: String) -> Result<WatchStart, LeaseError> {
        let (snapshot, revision) = self.snapshot(&prefix).await?;
        let events = self.changes_after(prefix, revision).await?;
        Ok((snapshot, events))
    }

    /// The keys under `prefix` and the store's revision when they were read: everything up to that
    /// revision is in the snapshot.
    async fn snapshot(&self, prefix: &str) -> Result<(Vec<(String, Vec<u8>)>, i64), LeaseError> {
        let mut client = self.client.clone();
        let got = bounded("get", client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let revision = got.header().map(|header| header.revision()).ok_or_else(|| {
            LeaseError::Etcd(format!("get {prefix}: the answer has no header, so no revision to watch from"))
        })?;
        let snapshot =
            got.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect();
        Ok((snapshot, revision))
    }

    /// Every change under `prefix` after `revision`, including those made before this call.
    async fn changes_after(&self, prefix: String, revision: i64) -> Result<mpsc::Receiver<LeaseEvent>, LeaseError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let stream = bounded("watch", client.watch(prefix, Some(options))).await?;
        let (events_tx, events_rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        tokio::spawn(forward_watch(stream, events_tx));
        Ok(events_rx)
    }
}

/// Copies watch events into the channel until the stream ends, fails or is cancelled (e.g. its
/// revision was compacted), or the reader goes away. Returning drops the sender, which closes the
/// reader's channel: its signal to watch again.
async fn forward_watch(mut stream: WatchStream, events: mpsc::Sender<LeaseEvent>) {
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            // Dropping the stream (by returning) cancels the watch on etcd.
            () = events.closed() => return,
        };
        let Ok(Some(response)) = message else { return };
        if response.canceled() {
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let event = match event.event_type() {
                EventType::Put => LeaseEvent::Put { key, value: kv.value().to_vec() },
                EventType::Delete => LeaseEvent::Delete { key },
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// Runs one etcd request under [`REQUEST_TIMEOUT_MS`], naming it in the error.
pub(super) async fn bounded<T>(
    request: &'static str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(LeaseError::Etcd(format!("{request}: {e}"))),
        Err(_) => Err(LeaseError::Etcd(format!("{request}: no answer within {REQUEST_TIMEOUT_MS} ms"))),
    }
}

impl LeaseStore for EtcdLeaseStore {
    fn hold(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> BoxFuture<'_, Result<Box<dyn LeaseHandle>, LeaseError>> {
        Box::pin(self.hold_inner(key.to_string(), value, ttl_ms))
    }

    fn watch(&self, prefix: &str) -> BoxFuture<'_, Result<WatchStart, LeaseError>> {
        Box::pin(self.watch_inner(prefix.to_string()))
    }

    fn put(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<(), LeaseError>> {
        let key = key.to_string();
        let mut client = self.client.clone();
        Box::pin(async move {
            bounded("put", client.put(key, value, None)).await?;
            Ok(())
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, LeaseError>> {
        let key = key.to_string();
        let mut client = self.client.clone();
        Box::pin(async move {
            let got = bounded("get", client.get(key, None)).await?;
            Ok(got.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::conformance::{self, Waits};
    use super::*;
    use crate::testing::{etcd_or_skip, EtcdServer};

    /// A local etcd answers in milliseconds; the event wait only bounds a broken test on a loaded machine.
    const WAITS: Waits = Waits { event_ms: 5_000, quiet_ms: 300 };
    const TTL_MS: u64 = 3_000;

    async fn start(test_name: &str) -> Option<(EtcdServer, EtcdLeaseStore)> {
        let server = etcd_or_skip(test_name)?;
        let store = EtcdLeaseStore::connect(&[server.url().to_string()]).await.unwrap();
        Some((server, store))
    }

    #[tokio::test]
    async fn conformance_hold_revoke_drop() {
        let Some((_etcd, store)) = start("conformance_hold_revoke_drop").await else { return };
        conformance::hold_then_revoke_then_drop(&store, WAITS).await;
    }

    #[tokio::test]
    async fn conformance_snapshot_then_stream() {
        let Some((_etcd, store)) = start("conformance_snapshot_then_stream").await else { return };
        conformance::snapshot_then_stream(&store, WAITS).await;
    }

    /// The gap a racing writer can only sometimes hit, made certain: a change after the snapshot
    /// but before the watch exists still arrives, once.
    #[tokio::test]
    async fn a_change_between_snapshot_and_watch_arrives_once() {
        let Some((_etcd, store)) = start("a_change_between_snapshot_and_watch_arrives_once").await else { return };
        store.put("/g/before", b"0".to_vec()).await.unwrap();
        let (snapshot, revision) = store.snapshot("/g/").await.unwrap();
        assert_eq!(snapshot, vec![("/g/before".to_string(), b"0".to_vec())]);
        store.put("/g/between", b"1".to_vec()).await.unwrap();
        let mut events = store.changes_after("/g/".to_string(), revision).await.unwrap();
        conformance::expect_put(&mut events, "/g/between", b"1", WAITS.event_ms).await;
        conformance::expect_quiet(&mut events, WAITS.quiet_ms).await;
    }

    #[tokio::test]
    async fn conformance_replaced_key_outlives_old_lease() {
        let Some((_etcd, store)) = start("conformance_replaced_key_outlives_old_lease").await else { return };
        conformance::replaced_key_outlives_old_lease(&store, WAITS).await;
    }

    #[tokio::test]
    async fn conformance_plain_put_get() {
        let Some((_etcd, store)) = start("conformance_plain_put_get").await else { return };
        conformance::plain_put_get(&store, WAITS).await;
    }

    #[tokio::test]
    async fn conformance_zero_ttl_is_refused() {
        let Some((_etcd, store)) = start("conformance_zero_ttl_is_refused").await else { return };
        conformance::zero_ttl_is_refused(&store).await;
    }

    /// The keep-alive holds keys past their TTL; once it stops (dead workers), etcd deletes each key
    /// within 2 × TTL, and not at once: dropping a dead holder's handle (w1) must not revoke its
    /// lease, and stop_keepalive alone (w0's handle lives on) must stop the renewals.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // measures a real etcd's expiry
    async fn dead_holders_lapse_within_two_ttls() {
        let Some((_etcd, store)) = start("dead_holders_lapse_within_two_ttls").await else { return };
        let (_, mut events) = store.watch("/lathe/workers/").await.unwrap();
        let w0 = store.hold(&crate::lease::worker_key("w0"), b"w0".to_vec(), TTL_MS).await.unwrap();
        let w1 = store.hold(&crate::lease::worker_key("w1"), b"w1".to_vec(), TTL_MS).await.unwrap();
        assert_eq!(w0.ttl_ms(), TTL_MS);
        conformance::expect_put(&mut events, "/lathe/workers/w0", b"w0", WAITS.event_ms).await;
        conformance::expect_put(&mut events, "/lathe/workers/w1", b"w1", WAITS.event_ms).await;
        conformance::expect_quiet(&mut events, TTL_MS + 1_500).await;
        assert!(w0.is_alive(), "kept alive past its TTL: {:?}", w0.lost_error());
        assert!(w1.is_alive(), "kept alive past its TTL: {:?}", w1.lost_error());

        w0.stop_keepalive();
        w1.stop_keepalive();
        let stopped_at = Instant::now();
        drop(w1);
        let mut lapsed = Vec::new();
        while lapsed.len() < 2 {
            let event = conformance::next_event(&mut events, 2 * TTL_MS).await;
            let LeaseEvent::Delete { key } = event else { panic!("unexpected {event:?}") };
            lapsed.push((key, stopped_at.elapsed().as_millis() as u64));
        }
        drop(w0);
        lapsed.sort();
        eprintln!(
            "dead_holders_lapse_within_two_ttls: TTL {TTL_MS} ms, Delete seen after the keep-alive stopped: {lapsed:?}"
        );
        for (key, lapse_ms) in lapsed {
            assert!(lapse_ms <= 2 * TTL_MS, "{key}: {lapse_ms} ms");
            // The last keep-alive was at most TTL/3 before the stop, and etcd checks expiry every 500 ms.
            assert!(lapse_ms >= TTL_MS - TTL_MS / 3 - 500, "{key} deleted after {lapse_ms} ms: revoked, not lapsed?");
        }
    }

    /// A lease that etcd ends by itself (here: revoked by another client) is reported lost.
    #[tokio::test]
    async fn a_lease_ended_elsewhere_is_reported_lost() {
        let Some((etcd, store)) = start("a_lease_ended_elsewhere_is_reported_lost").await else { return };
        let handle = store.hold("/lathe/workers/w0", vec![], TTL_MS).await.unwrap();
        let mut other = Client::connect([etcd.url()], None).await.unwrap();
        for lease in other.leases().await.unwrap().leases() {
            other.lease_revoke(lease.id()).await.unwrap();
        }
        tokio::time::timeout(Duration::from_millis(2 * TTL_MS), handle.ended()).await.unwrap();
        let lost = handle.lost_error();
        assert!(matches!(&lost, Some(LeaseError::Lost { why, .. }) if why.contains("expired")), "{lost:?}");
        handle.revoke().await.unwrap(); // gone already: not an error
    }

    /// When etcd goes away, the holder learns it lost its lease within about a TTL, and the
    /// watcher's channel closes (its signal to watch again elsewhere).
    #[tokio::test]
    async fn etcd_going_away_ends_leases_and_closes_watches() {
        let Some((etcd, store)) = start("etcd_going_away_ends_leases_and_closes_watches").await else { return };
        let (_, mut events) = store.watch("/lathe/workers/").await.unwrap();
        let handle = store.hold("/lathe/workers/w0", vec![], TTL_MS).await.unwrap();
        conformance::expect_put(&mut events, "/lathe/workers/w0", b"", WAITS.event_ms).await;
        drop(etcd);

        let closed = tokio::time::timeout(Duration::from_millis(WAITS.event_ms), events.recv()).await;
        assert_eq!(closed, Ok(None), "the watch channel must close");
        tokio::time::timeout(Duration::from_millis(2 * TTL_MS), handle.ended()).await.unwrap();
        let lost = handle.lost_error();
        assert!(matches!(&lost, Some(LeaseError::Lost { why, .. }) if why.contains("TTL")), "{lost:?}");
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // measures how long connect takes to give up
    async fn connecting_to_nothing_fails_fast_naming_the_url() {
        // A port that was free a moment ago; nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let connected =
            tokio::time::timeout(Duration::from_secs(6), EtcdLeaseStore::connect(std::slice::from_ref(&url))).await;
        let took_ms = started.elapsed().as_millis();
        let Ok(Err(error)) = connected else { panic!("connect to {url} must fail within 5 s, took {took_ms} ms") };
        assert!(took_ms <= 5_000, "{took_ms} ms");
        assert!(matches!(&error, LeaseError::Connect { url: named, .. } if *named == url), "{error:?}");
        eprintln!("connecting_to_nothing_fails_fast_naming_the_url: {took_ms} ms: {error}");
    }
}
