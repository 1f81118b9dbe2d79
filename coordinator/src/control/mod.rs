//! The control plane of a coordinator with worker processes: a TCP listener workers connect to,
//! the handshake that admits them, one [`TcpWorkerLink`] per admitted worker, and the watch on
//! the workers' etcd leases. It turns all of it into messages for the coordinator actor — a
//! worker is a member from its admission until its lease ends or its connection closes,
//! whichever comes first — and decides nothing itself.
//!
//! Admission: the worker sends `Hello` (build version, name, capacity); a different build is
//! refused with both versions named; otherwise the plane waits (bounded) until the worker's lease
//! `/lathe/workers/<name>` is visible, so membership always means "holds a lease", then asks the
//! core to admit it and answers `Welcome { worker, generation, models }`.

mod accept;
mod link;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;
use runtime::lease::{LeaseEvent, LeaseStore, WORKERS_PREFIX};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use link::TcpWorkerLink;

use crate::actor::CoordinatorMsg;
use crate::core::engine::{Event, WorkerId};
use crate::error::ServeError;
use crate::metrics::Metrics;

/// How long a connected worker may take to show its lease before it is refused.
const LEASE_WAIT: Duration = Duration::from_secs(10);

/// What `lathe coordinator` (or `lathe serve --workers N`) gives the coordinator.
pub struct ControlPlane {
    pub listener: TcpListener,
    pub leases: Arc<dyn LeaseStore>,
    /// The `--model` values workers load (each resolves them on its own machine).
    pub models: Vec<String>,
}

/// Who holds a lease and who is admitted, shared by the accept loop and the lease watcher.
#[derive(Default)]
pub(crate) struct Membership {
    /// Worker names with a lease now.
    leased: BTreeMap<String, ()>,
    /// Admitted workers by name.
    admitted: BTreeMap<String, WorkerId>,
    next_worker: u64,
}

pub(crate) struct Shared {
    pub membership: Mutex<Membership>,
    pub lease_seen: Notify,
    pub actor: ActorRef<CoordinatorMsg>,
    pub metrics: Arc<Metrics>,
    pub models: Vec<String>,
}

impl Shared {
    /// The membership table; a poisoned lock (a panic elsewhere while holding it) is still usable,
    /// since every update leaves it consistent.
    fn members(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `worker` (named `name`) out, once; `lease_ended` says why (for the metric).
    pub(crate) fn lose(&self, name: &str, worker: WorkerId, lease_ended: bool) {
        let removed = {
            let mut m = self.members();
            if m.admitted.get(name) == Some(&worker) {
                m.admitted.remove(name);
                true
            } else {
                false
            }
        };
        if removed {
            if lease_ended {
                self.metrics.lease_expired();
            }
            tracing::warn!(worker = worker.0, name, lease_ended, "worker counted out");
            let _ = self.actor.send_message(CoordinatorMsg::Event(Event::WorkerLost { worker }));
        }
    }
}

impl ControlPlane {
    /// Starts the lease watcher and the accept loop; returns the control address workers dial.
    pub async fn start(self, actor: ActorRef<CoordinatorMsg>, metrics: Arc<Metrics>) -> Result<SocketAddr, ServeError> {
        let addr = self.listener.local_addr().map_err(ServeError::Serve)?;
        let (snapshot, mut events) = self
            .leases
            .watch(WORKERS_PREFIX)
            .await
            .map_err(|e| ServeError::Actor(format!("watching worker leases: {e}")))?;
        let shared = Arc::new(Shared {
            membership: Mutex::new(Membership::default()),
            lease_seen: Notify::new(),
            actor,
            metrics,
            models: self.models,
        });
        {
            let mut m = shared.members();
            for (key, _) in snapshot {
                if let Some(name) = key.strip_prefix(WORKERS_PREFIX) {
                    m.leased.insert(name.to_string(), ());
                }
            }
        }
        let watcher = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    LeaseEvent::Put { key, .. } => {
                        if let Some(name) = key.strip_prefix(WORKERS_PREFIX) {
                            watcher.members().leased.insert(name.to_string(), ());
                            watcher.lease_seen.notify_waiters();
                        }
                    }
                    LeaseEvent::Delete { key } => {
                        let Some(name) = key.strip_prefix(WORKERS_PREFIX) else { continue };
                        let admitted = {
                            let mut m = watcher.members();
                            m.leased.remove(name);
                            m.admitted.get(name).copied()
                        };
                        if let Some(worker) = admitted {
                            watcher.lose(name, worker, true);
                        }
                    }
                }
            }
            tracing::error!("the worker lease watch ended; membership changes are no longer seen");
        });
        let listener = self.listener;
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let shared = Arc::clone(&shared);
                        tokio::spawn(async move { accept::admit(shared, stream, peer).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a worker connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(addr)
    }
}
