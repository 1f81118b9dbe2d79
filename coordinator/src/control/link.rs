//! `TcpWorkerLink`: the coordinator's `WorkerLink` to a worker process over one TCP connection.
//! Calls are multiplexed by a link-local call number: `call` queues a frame (header: the bincode
//! `Envelope`) and waits for the reply frame with the same number. A writer task drains the queue;
//! the reader loop completes waiting calls. Frames queue until the handshake's Welcome has gone
//! out, so the core may send as soon as it admits the worker.
//!
//! Fencing: a reply frame stamped with another generation than the link's (a worker that came
//! back from a stop or a partition) is refused and logged. When the link closes — the shell
//! dropped it (the worker was lost), or the connection failed — every waiting call fails with
//! category `server` naming the worker, and the worker is counted out.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use runtime::control::{Envelope, ErrorCategory, FromWorker, WorkerLink};
use runtime::transport::{self, Frame, Limits};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};

use super::Shared;
use crate::core::engine::WorkerId;

struct Inner {
    shared: Arc<Shared>,
    worker: WorkerId,
    name: String,
    limits: Limits,
    pending: Mutex<HashMap<u64, oneshot::Sender<FromWorker>>>,
    next_call: AtomicU64,
    outbox: mpsc::UnboundedSender<Frame>,
    outbox_rx: Mutex<Option<mpsc::UnboundedReceiver<Frame>>>,
    shutdown: Notify,
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<FromWorker>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed_reply(&self) -> FromWorker {
        FromWorker::Failed {
            category: ErrorCategory::Server,
            message: format!(
                "the connection to worker {} (id {}) closed before it answered; retry the request",
                self.name, self.worker.0
            ),
        }
    }
}

/// The accept task's side of a link: runs the connection.
#[derive(Clone)]
pub struct TcpWorkerLink {
    inner: Arc<Inner>,
}

/// The shell's side: dropping it (the core disconnected the worker) closes the connection.
pub struct LinkHandle {
    inner: Arc<Inner>,
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        // notify_one keeps a permit if the reader is not waiting yet, so the close is never missed.
        self.inner.shutdown.notify_one();
    }
}

impl TcpWorkerLink {
    pub(crate) fn new(shared: Arc<Shared>, worker: WorkerId, name: String, limits: Limits) -> Self {
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let inner = Inner {
            shared,
            worker,
            name,
            limits,
            pending: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            outbox,
            outbox_rx: Mutex::new(Some(outbox_rx)),
            shutdown: Notify::new(),
        };
        TcpWorkerLink { inner: Arc::new(inner) }
    }

    /// The handle the shell keeps.
    pub(crate) fn handle(&self) -> LinkHandle {
        LinkHandle { inner: Arc::clone(&self.inner) }
    }

    /// Runs the connection until it fails or the shell drops its handle; then fails what waits.
    pub(crate) async fn run(self, mut reader: OwnedReadHalf, mut writer: OwnedWriteHalf, generation: u64) {
        let inner = self.inner;
        let Some(mut outbox) = inner.outbox_rx.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let writer_task = tokio::spawn(async move {
            while let Some(frame) = outbox.recv().await {
                transport::write_frame(&mut writer, &frame).await?;
            }
            Ok::<(), transport::TransportError>(())
        });
        let why = loop {
            let frame = tokio::select! {
                () = inner.shutdown.notified() => break "the coordinator dropped the worker".to_string(),
                frame = transport::read_frame(&mut reader, &inner.limits) => frame,
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => break format!("the connection failed: {e}"),
            };
            if frame.generation != generation {
                tracing::warn!(
                    worker = inner.worker.0,
                    frame_generation = frame.generation,
                    generation,
                    "refused a frame of another generation"
                );
                continue;
            }
            let reply = match frame.decode::<FromWorker>() {
                Ok(mut r) => match r.put_body(&frame.body) {
                    Ok(()) => r,
                    Err(e) => break format!("the worker sent a frame whose body does not fit it: {e}"),
                },
                Err(e) => break format!("the worker sent a frame that does not decode: {e}"),
            };
            let waiter = inner.pending().remove(&frame.call);
            match waiter {
                Some(tx) => {
                    let _ = tx.send(reply);
                }
                None => tracing::warn!(worker = inner.worker.0, call = frame.call, "a reply to no call; ignored"),
            }
        };
        writer_task.abort();
        tracing::warn!(worker = inner.worker.0, name = %inner.name, why, "worker link closed");
        let waiting: Vec<_> = inner.pending().drain().map(|(_, tx)| tx).collect();
        for tx in waiting {
            let _ = tx.send(inner.closed_reply());
        }
        inner.shared.lose(&inner.name, inner.worker, false);
    }
}

impl WorkerLink for LinkHandle {
    fn call(&self, msg: Envelope) -> Pin<Box<dyn Future<Output = FromWorker> + Send>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let call = inner.next_call.fetch_add(1, Ordering::SeqCst);
            let mut msg = msg;
            let body = msg.take_body();
            let frame = match Frame::encode(msg.generation, call, &msg, body) {
                Ok(f) => f,
                Err(e) => {
                    return FromWorker::Failed {
                        category: ErrorCategory::Server,
                        message: format!("lathe could not encode a message for the worker ({e}); this is a lathe bug"),
                    }
                }
            };
            let (tx, rx) = oneshot::channel();
            inner.pending().insert(call, tx);
            if inner.outbox.send(frame).is_err() {
                inner.pending().remove(&call);
                return inner.closed_reply();
            }
            rx.await.unwrap_or_else(|_| inner.closed_reply())
        })
    }
}
