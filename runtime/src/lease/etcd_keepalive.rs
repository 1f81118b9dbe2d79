//! The handle of a lease held on etcd, and the task that keeps that lease alive every TTL/3.
//!
//! The task tracks a local deadline: the send time of the last acknowledged keep-alive plus the TTL
//! etcd then granted. etcd received that keep-alive after it was sent, so its own expiry is never
//! earlier than the deadline: a holder that has passed the deadline without an answer gives the
//! lease up no later than etcd deletes its key. That is the safe direction for fencing.
//! Transient failures (a broken keep-alive stream, an unreachable member) are retried every TTL/3
//! until the deadline.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::etcd::REQUEST_TIMEOUT_MS;
use super::life::Life;
use super::{BoxFuture, LeaseError, LeaseHandle};

/// An open keep-alive stream: requests go through the keeper, answers come on the stream.
pub(super) type Channel = (LeaseKeeper, LeaseKeepAliveStream);

/// What the keep-alive task and the handle share.
#[derive(Clone)]
pub(super) struct KeepAlive {
    client: Client,
    lease_id: i64,
    key: String,
    ttl_ms: u64,
    life: Arc<Life>,
}

impl KeepAlive {
    pub(super) fn new(client: Client, lease_id: i64, key: String, ttl_ms: u64) -> Self {
        assert!(ttl_ms >= 1_000, "etcd grants whole seconds, got {ttl_ms} ms");
        KeepAlive { client, lease_id, key, ttl_ms, life: Arc::new(Life::new()) }
    }

    fn lose(&self, why: String) {
        self.life.end(Some(LeaseError::Lost { key: self.key.clone(), why }));
    }

    async fn run(mut self, channel: Channel, mut deadline: Instant) {
        let interval = Duration::from_millis(self.ttl_ms / 3);
        let mut channel = Some(channel);
        loop {
            tokio::time::sleep(interval).await;
            // The deadline alone decides loss, whether the requests hang (no live endpoint) or fail fast.
            let mut last_error = None;
            let renewal = self.renew_with_retries(&mut channel, interval, &mut last_error);
            match tokio::time::timeout_at(deadline, renewal).await {
                Ok((sent_at, Renewed::For { ttl_s })) => deadline = sent_at + Duration::from_secs(ttl_s),
                Ok((_, Renewed::Gone)) => return self.lose("etcd reports the lease expired".to_string()),
                Err(_) => {
                    let ttl_ms = self.ttl_ms;
                    return self.lose(match last_error {
                        Some(e) => format!("no keep-alive acknowledged within its {ttl_ms} ms TTL (last error: {e})"),
                        None => format!("no keep-alive acknowledged within its {ttl_ms} ms TTL"),
                    });
                }
            }
        }
    }

    /// Renews, retrying every `interval` after a failure, until a round gets an answer; returns
    /// when that round's request was sent, since etcd's TTL runs from about then.
    async fn renew_with_retries(
        &mut self,
        channel: &mut Option<Channel>,
        interval: Duration,
        last_error: &mut Option<String>,
    ) -> (Instant, Renewed) {
        loop {
            let sent_at = Instant::now();
            match self.renew(channel).await {
                Ok(renewed) => return (sent_at, renewed),
                Err(e) => *last_error = Some(e),
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// One keep-alive round trip, reopening the stream first if the last round broke it.
    async fn renew(&mut self, channel: &mut Option<Channel>) -> Result<Renewed, String> {
        let (mut keeper, mut answers) = match channel.take() {
            Some(open) => open,
            None => self.client.lease_keep_alive(self.lease_id).await.map_err(|e| e.to_string())?,
        };
        keeper.keep_alive().await.map_err(|e| e.to_string())?;
        let renewed = match answers.message().await {
            Ok(Some(answer)) if answer.ttl() > 0 => Renewed::For { ttl_s: u64::try_from(answer.ttl()).unwrap_or(0) },
            Ok(Some(_)) => Renewed::Gone,
            Ok(None) => return Err("etcd closed the keep-alive stream".to_string()),
            Err(e) => return Err(e.to_string()),
        };
        *channel = Some((keeper, answers));
        Ok(renewed)
    }
}

/// gRPC's NOT_FOUND, which etcd answers for a lease it does not know.
const GRPC_NOT_FOUND: i32 = 5;

/// Revokes a lease; one that is already gone (expired, or revoked before) counts as revoked, since
/// its keys are deleted either way.
pub(super) async fn revoke_lease(mut client: Client, lease_id: i64) -> Result<(), LeaseError> {
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    match tokio::time::timeout(timeout, client.lease_revoke(lease_id)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(etcd_client::Error::GRpcStatus(status))) if i32::from(status.code()) == GRPC_NOT_FOUND => Ok(()),
        Ok(Err(e)) => Err(LeaseError::Etcd(format!("lease_revoke: {e}"))),
        Err(_) => Err(LeaseError::Etcd(format!("lease_revoke: no answer within {REQUEST_TIMEOUT_MS} ms"))),
    }
}

enum Renewed {
    /// etcd extended the lease by `ttl_s` from when it got the request.
    For { ttl_s: u64 },
    /// etcd no longer knows the lease (TTL 0): it expired or was revoked elsewhere.
    Gone,
}

pub(super) struct EtcdHandle {
    shared: KeepAlive,
    task: JoinHandle<()>,
}

impl EtcdHandle {
    pub(super) fn spawn(keep_alive: KeepAlive, channel: Channel, deadline: Instant) -> Self {
        let task = tokio::spawn(keep_alive.clone().run(channel, deadline));
        EtcdHandle { shared: keep_alive, task }
    }
}

impl LeaseHandle for EtcdHandle {
    fn key(&self) -> &str {
        &self.shared.key
    }

    fn ttl_ms(&self) -> u64 {
        self.shared.ttl_ms
    }

    fn is_alive(&self) -> bool {
        self.shared.life.is_alive()
    }

    fn lost_error(&self) -> Option<LeaseError> {
        self.shared.life.lost_error()
    }

    fn ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shared.life.ended())
    }

    fn revoke(&self) -> BoxFuture<'_, Result<(), LeaseError>> {
        self.task.abort();
        self.shared.life.end(None);
        Box::pin(revoke_lease(self.shared.client.clone(), self.shared.lease_id))
    }

    fn stop_keepalive(&self) {
        self.task.abort();
        self.shared.life.end(None);
    }
}

impl Drop for EtcdHandle {
    /// Stops the keep-alive and, if the lease was still held, revokes it in the background so the
    /// key goes now rather than a TTL later. Without a runtime (one shutting down) the TTL does it;
    /// a failed revoke likewise only leaves the key to its TTL, so its error is not kept.
    fn drop(&mut self) {
        self.task.abort();
        if !self.shared.life.end(None) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let revoke = revoke_lease(self.shared.client.clone(), self.shared.lease_id);
        runtime.spawn(async move {
            let _ = revoke.await;
        });
    }
}
