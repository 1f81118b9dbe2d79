//! One worker connection: handshake, lease check, admission, then the link.

use std::net::SocketAddr;
use std::sync::Arc;

use runtime::transport::{self, HelloReply, Limits};
use tokio::net::TcpStream;

use super::link::TcpWorkerLink;
use super::{Shared, LEASE_WAIT};
use crate::actor::CoordinatorMsg;
use crate::core::engine::WorkerId;
use crate::core::workers::WorkerCapacity;

/// Admits the worker on `stream`, or refuses it with a message saying why and what to do.
pub(crate) async fn admit(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let hello = match transport::server_hello(&mut stream, &limits).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "a connection to the control port did not say hello; closed");
            return;
        }
    };
    let refuse = |message: String| HelloReply::Refused { message };
    if let Err(message) = transport::check_hello(&hello, &transport::build_version()) {
        tracing::warn!(peer = %peer, name = %hello.name, %message, "worker refused");
        let _ = transport::send_hello_reply(&mut stream, &refuse(message)).await;
        return;
    }
    let name = hello.name.clone();
    // Membership means holding a lease: wait (bounded) until the watch has seen this worker's.
    let deadline = tokio::time::Instant::now() + LEASE_WAIT;
    let worker = loop {
        let waiting = shared.lease_seen.notified();
        // Decided under the lock, acted on after it (the guard must not live across an await).
        let decision = {
            let mut m = shared.members();
            if m.admitted.contains_key(&name) {
                Err(format!(
                    "a worker named {name:?} is already a member; give each worker its own --name (or stop the other)"
                ))
            } else if m.leased.contains_key(&name) {
                m.next_worker += 1;
                let id = WorkerId(m.next_worker);
                m.admitted.insert(name.clone(), id);
                Ok(Some(id))
            } else {
                Ok(None)
            }
        };
        match decision {
            Err(message) => {
                let _ = transport::send_hello_reply(&mut stream, &refuse(message)).await;
                return;
            }
            Ok(Some(id)) => break id,
            Ok(None) => {}
        }
        if tokio::time::timeout_at(deadline, waiting).await.is_err() {
            let message = format!(
                "no lease for worker {name:?} at {}{name} after {} s; start the worker with the same --etcd as \
                 the coordinator",
                runtime::lease::WORKERS_PREFIX,
                LEASE_WAIT.as_secs()
            );
            let _ = transport::send_hello_reply(&mut stream, &refuse(message)).await;
            return;
        }
    };
    let capacity = WorkerCapacity {
        device: hello.capacity.device.clone(),
        cores: hello.capacity.cores,
        memory_bytes_max: hello.capacity.memory_bytes_max,
    };
    let (admitted, generation) = tokio::sync::oneshot::channel();
    let link = TcpWorkerLink::new(Arc::clone(&shared), worker, name.clone(), limits);
    let up = CoordinatorMsg::WorkerUp { worker, name: name.clone(), capacity, link: Arc::new(link.handle()), admitted };
    if shared.actor.send_message(up).is_err() {
        return;
    }
    let Ok(generation) = generation.await else {
        shared.lose(&name, worker, false);
        return;
    };
    let welcome = HelloReply::Welcome { worker: worker.0, generation: generation.0, models: shared.models.clone() };
    if let Err(e) = transport::send_hello_reply(&mut stream, &welcome).await {
        tracing::warn!(worker = worker.0, error = %e, "could not welcome a worker");
        shared.lose(&name, worker, false);
        return;
    }
    tracing::info!(worker = worker.0, name = %name, generation = generation.0, peer = %peer, "worker welcomed");
    let (reader, writer) = stream.into_split();
    link.run(reader, writer, generation.0).await;
}
