//! Worker membership (design §6). A worker holds `/lathe/workers/<name>` under a lease that it keeps
//! alive every TTL/3; the coordinator watches the prefix and reads a Delete as "that worker is gone".
//!
//! One trait, two stores, the same promises:
//! - [`EtcdLeaseStore`] for deployments, [`MemLeaseStore`] for `lathe serve` with in-process workers,
//!   the tests and the simulator (it makes a lease lapse without real time).
//! - A held key exists while its lease lives. The lease ends on [`LeaseHandle::revoke`], on dropping
//!   the handle, or once nobody renewed it for a TTL ([`LeaseHandle::stop_keepalive`] simulates a
//!   holder that died).
//! - [`LeaseStore::watch`] returns a snapshot and a stream that together miss no change and repeat
//!   none. A closed stream means the watch ended (the store went away, the etcd stream broke, or the
//!   watcher fell [`WATCH_CHANNEL_CAPACITY`] events behind): watch again and reconcile against the
//!   new snapshot.
//!
//! This module logs nothing: errors are returned or recorded on the handle ([`LeaseHandle::lost_error`]),
//! and whoever handles them logs.

mod etcd;
mod etcd_keepalive;
mod life;
mod mem;

#[cfg(test)]
mod conformance;

use std::future::Future;
use std::pin::Pin;

use thiserror::Error;
use tokio::sync::mpsc;

pub use etcd::EtcdLeaseStore;
pub use mem::MemLeaseStore;

/// Where workers register; one key per worker, see [`worker_key`].
pub const WORKERS_PREFIX: &str = "/lathe/workers/";

/// Events a watch buffers for a slow reader. The in-memory store closes a watch that falls this far
/// behind instead of dropping events; etcd's forwarding task waits instead (etcd buffers server-side).
pub const WATCH_CHANNEL_CAPACITY: usize = 1024;

/// A boxed future, so that [`LeaseStore`] stays object-safe (`Arc<dyn LeaseStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What [`LeaseStore::watch`] returns: the keys under the prefix now (sorted by key) and every later change.
pub type WatchStart = (Vec<(String, Vec<u8>)>, mpsc::Receiver<LeaseEvent>);

/// One change under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl LeaseEvent {
    pub fn key(&self) -> &str {
        match self {
            LeaseEvent::Put { key, .. } | LeaseEvent::Delete { key } => key,
        }
    }
}

/// Everything that goes wrong with membership. Messages say what to do where there is something to do.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error(
        "cannot reach etcd at {url}: {source_message}. Is etcd running at {url}? \
         Start one with `etcd --listen-client-urls {url} --advertise-client-urls {url}` (Debian: apt-get install etcd-server)"
    )]
    Connect { url: String, source_message: String },
    /// An etcd request failed after connecting; the message names the request.
    #[error("etcd request failed: {0}")]
    Etcd(String),
    /// The store or its connection went away. Neither store returns it today: for a watch, a closed
    /// channel says this; for a held key, `Lost` does.
    #[error("the lease store is closed")]
    Closed,
    /// The lease ended without being revoked: the holder must assume its key is deleted.
    #[error("lost the lease on `{key}`: {why}; its key must be assumed deleted")]
    Lost { key: String, why: String },
    #[error("lease TTL must be at least 1 ms, got {ttl_ms} ms")]
    InvalidTtl { ttl_ms: u64 },
}

/// A held key. Dropping it (or calling `revoke`) stops the keep-alive and deletes the key.
pub trait LeaseHandle: Send + Sync {
    fn key(&self) -> &str;

    /// The TTL the store granted (etcd rounds up to whole seconds).
    fn ttl_ms(&self) -> u64;

    /// Whether this handle still holds the lease: false after `revoke`, `stop_keepalive`, or once
    /// the lease was lost.
    fn is_alive(&self) -> bool;

    /// Why the lease was lost, if it ended by itself rather than through this handle.
    fn lost_error(&self) -> Option<LeaseError>;

    /// Resolves once `is_alive` turns false, so a worker can stop serving when its lease goes.
    fn ended(&self) -> BoxFuture<'_, ()>;

    /// Ends the lease now; its key is deleted. Revoking a lease that already ended is not an error.
    fn revoke(&self) -> BoxFuture<'_, Result<(), LeaseError>>;

    /// Stops renewing without revoking, as a holder that died or froze would: the key stays until
    /// its TTL runs out, and dropping the handle afterwards does not delete it. For fault injection.
    fn stop_keepalive(&self);
}

/// Keys under leases, and watches on key prefixes.
pub trait LeaseStore: Send + Sync + 'static {
    /// Puts `key = value` under a new lease of `ttl_ms` and keeps it alive every TTL/3 until the
    /// handle is dropped or revoked. Holding a key that exists replaces it; the older lease then no
    /// longer owns the key, and its end deletes nothing (as in etcd).
    fn hold(&self, key: &str, value: Vec<u8>, ttl_ms: u64) -> BoxFuture<'_, Result<Box<dyn LeaseHandle>, LeaseError>>;

    /// The keys under `prefix` now, plus a stream of later changes; no change between the snapshot
    /// and the stream is lost.
    fn watch(&self, prefix: &str) -> BoxFuture<'_, Result<WatchStart, LeaseError>>;

    /// Puts `key = value` without a lease (it stays until overwritten); detaches the key from any lease.
    fn put(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<(), LeaseError>>;

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, LeaseError>>;
}

/// The membership key of a worker: `/lathe/workers/<name>`. The name must be non-empty and contain
/// no `/`, so that every key directly under the prefix names exactly one worker.
pub fn worker_key(worker_name: &str) -> String {
    assert!(!worker_name.is_empty(), "worker name must not be empty");
    assert!(!worker_name.contains('/'), "worker name `{worker_name}` must not contain '/'");
    format!("{WORKERS_PREFIX}{worker_name}")
}

/// The worker name in a membership key, or None if `key` is not one.
pub fn worker_name_of(key: &str) -> Option<&str> {
    key.strip_prefix(WORKERS_PREFIX).filter(|name| !name.is_empty() && !name.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_keys_round_trip() {
        assert_eq!(worker_key("gpu-0"), "/lathe/workers/gpu-0");
        assert_eq!(worker_name_of(&worker_key("gpu-0")), Some("gpu-0"));
        assert_eq!(worker_name_of("/lathe/workers/"), None);
        assert_eq!(worker_name_of("/lathe/workers/a/b"), None);
        assert_eq!(worker_name_of("/lathe/coordinator"), None);
    }

    #[test]
    #[should_panic(expected = "must not contain")]
    fn worker_key_refuses_nested_names() {
        worker_key("a/b");
    }

    #[test]
    fn connect_error_names_the_url_and_the_fix() {
        let e = LeaseError::Connect { url: "http://127.0.0.1:1".into(), source_message: "refused".into() };
        let msg = e.to_string();
        assert!(msg.contains("http://127.0.0.1:1: refused"), "{msg}");
        assert!(msg.contains("Is etcd running at http://127.0.0.1:1?"), "{msg}");
        assert!(msg.contains("--listen-client-urls http://127.0.0.1:1"), "{msg}");
    }
}
