//! `BatchingLink`: the coordinator's multi-tenant step scheduler, as a `WorkerLink` in front of
//! the real one. `ForwardBackward` requests of different training runs that wait at the same time
//! go to the worker as one `ForwardBackwardMany` (one packed pass per base model); every other
//! message passes straight through.
//!
//! Policy: no added latency. A lone request is sent as it is. While the worker is busy with a
//! step, new requests queue; when it answers, everything queued (up to `ITEMS_MAX` items or
//! `TOKENS_MAX` tokens) becomes the next step. Each run has at most one request in flight (its
//! executor waits for the answer), so a step never holds two requests of one run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use runtime::control::{Envelope, ErrorCategory, FbRequest, FromWorker, ToWorker, WorkerLink};
use tokio::sync::{mpsc, oneshot};

/// Most requests packed into one step.
pub const ITEMS_MAX: usize = 64;
/// Most model input tokens packed into one step (the first request always goes, however long).
pub const TOKENS_MAX: usize = 65_536;

/// A queued forward(_backward) request: its generation, its body, and where its answer goes.
struct Waiting {
    generation: u64,
    request: FbRequest,
    reply: oneshot::Sender<FromWorker>,
}

/// A `WorkerLink` that batches concurrent `ForwardBackward` requests into multi-tenant steps.
pub struct BatchingLink {
    inner: Arc<dyn WorkerLink>,
    queue: mpsc::UnboundedSender<Waiting>,
}

impl BatchingLink {
    /// Starts the step loop on the current tokio runtime; it ends when the link is dropped.
    pub fn spawn(inner: Arc<dyn WorkerLink>) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(step_loop(Arc::clone(&inner), waiting));
        BatchingLink { inner, queue }
    }
}

impl WorkerLink for BatchingLink {
    fn call(&self, msg: Envelope) -> Pin<Box<dyn Future<Output = FromWorker> + Send>> {
        let Envelope { generation, body } = msg;
        let ToWorker::ForwardBackward { run, data, loss_fn, loss_config, forward_only } = body else {
            return self.inner.call(Envelope { generation, body });
        };
        let (reply, answer) = oneshot::channel();
        let request = FbRequest { run, data, loss_fn, loss_config, forward_only };
        let queued = self.queue.send(Waiting { generation, request, reply }).is_ok();
        Box::pin(async move {
            if !queued {
                return stopped();
            }
            answer.await.unwrap_or_else(|_| stopped())
        })
    }
}

fn stopped() -> FromWorker {
    FromWorker::Failed {
        category: ErrorCategory::Server,
        message: "the step scheduler has stopped; restart `lathe serve`".to_string(),
    }
}

/// Takes the next step's requests: the first to arrive, then whatever else is already queued
/// with the same generation, within the limits. A request that does not fit is handed back as
/// the first of the following step.
fn take_step(first: Waiting, waiting: &mut mpsc::UnboundedReceiver<Waiting>) -> (Vec<Waiting>, Option<Waiting>) {
    let mut tokens: usize = first.request.data.iter().map(|d| d.tokens.len()).sum();
    let mut step = vec![first];
    while step.len() < ITEMS_MAX {
        let Ok(next) = waiting.try_recv() else { break };
        let more: usize = next.request.data.iter().map(|d| d.tokens.len()).sum();
        if next.generation != step[0].generation || tokens + more > TOKENS_MAX {
            return (step, Some(next));
        }
        tokens += more;
        step.push(next);
    }
    (step, None)
}

async fn step_loop(inner: Arc<dyn WorkerLink>, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let mut carried: Option<Waiting> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match waiting.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let (step, rest) = take_step(first, &mut waiting);
        carried = rest;
        run_step(inner.as_ref(), step).await;
    }
}

/// Sends one step and hands each request its answer.
async fn run_step(inner: &dyn WorkerLink, mut step: Vec<Waiting>) {
    let generation = step[0].generation;
    if step.len() == 1 {
        let Waiting { request, reply, .. } = step.remove(0);
        let FbRequest { run, data, loss_fn, loss_config, forward_only } = request;
        let body = ToWorker::ForwardBackward { run, data, loss_fn, loss_config, forward_only };
        // The caller may have gone away (client disconnected); nothing to do then.
        let _ = reply.send(inner.call(Envelope { generation, body }).await);
        return;
    }
    let (items, replies): (Vec<FbRequest>, Vec<oneshot::Sender<FromWorker>>) =
        step.into_iter().map(|w| (w.request, w.reply)).unzip();
    let n = items.len();
    let answer = inner.call(Envelope { generation, body: ToWorker::ForwardBackwardMany { items } }).await;
    match answer {
        FromWorker::Each(each) if each.len() == n => {
            for (reply, a) in replies.into_iter().zip(each) {
                let _ = reply.send(a);
            }
        }
        // The whole step failed (stale generation, worker gone): every request gets that answer.
        FromWorker::Failed { category, message } => {
            for reply in replies {
                let _ = reply.send(FromWorker::Failed { category, message: message.clone() });
            }
        }
        other => {
            let message = format!(
                "worker answered a {n}-request step with {}; this is a lathe bug, please report it",
                other.kind()
            );
            for reply in replies {
                let _ = reply.send(FromWorker::Failed { category: ErrorCategory::Server, message: message.clone() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use runtime::control::{Datum, ForwardBackwardResult};

    /// A fake worker that records what it was sent and answers every item with its run name in
    /// the metrics, holding the first call until released so that later requests queue up.
    struct Recorder {
        seen: Arc<Mutex<Vec<Vec<String>>>>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    fn answer(run: &str) -> FromWorker {
        let metrics = BTreeMap::from([(format!("{run}:sum"), 1.0)]);
        FromWorker::ForwardBackward(ForwardBackwardResult { outputs: Vec::new(), metrics })
    }

    impl WorkerLink for Recorder {
        fn call(&self, msg: Envelope) -> Pin<Box<dyn Future<Output = FromWorker> + Send>> {
            let (seen, gate) = (Arc::clone(&self.seen), Arc::clone(&self.gate));
            Box::pin(async move {
                if matches!(msg.body, ToWorker::ForwardBackward { .. } | ToWorker::ForwardBackwardMany { .. }) {
                    gate.acquire().await.expect("the semaphore is never closed").forget();
                }
                match msg.body {
                    ToWorker::ForwardBackward { run, .. } => {
                        seen.lock().expect("test lock").push(vec![run.clone()]);
                        answer(&run)
                    }
                    ToWorker::ForwardBackwardMany { items } => {
                        let runs: Vec<String> = items.iter().map(|i| i.run.clone()).collect();
                        seen.lock().expect("test lock").push(runs.clone());
                        FromWorker::Each(runs.iter().map(|r| answer(r)).collect())
                    }
                    _ => FromWorker::Done,
                }
            })
        }
    }

    fn fb(run: &str) -> Envelope {
        let datum = Datum { tokens: vec![1, 2, 3], loss_fn_inputs: BTreeMap::new() };
        let body = ToWorker::ForwardBackward {
            run: run.into(),
            data: vec![datum],
            loss_fn: "cross_entropy".into(),
            loss_config: BTreeMap::new(),
            forward_only: false,
        };
        Envelope { generation: 0, body }
    }

    #[tokio::test]
    async fn requests_waiting_together_become_one_step_and_each_gets_its_own_answer() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let link = BatchingLink::spawn(Arc::new(Recorder { seen: Arc::clone(&seen), gate: Arc::clone(&gate) }));
        // The first request goes alone and holds the worker; the next three queue behind it.
        let first = link.call(fb("r0"));
        let first = tokio::spawn(first);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = ["r1", "r2", "r3"].iter().map(|r| tokio::spawn(link.call(fb(r)))).collect();
        // Non-forward messages bypass the queue.
        assert_eq!(link.call(Envelope { generation: 0, body: ToWorker::Memory }).await, FromWorker::Done);
        gate.add_permits(1);
        assert_eq!(first.await.expect("task"), answer("r0"));
        gate.add_permits(1);
        for (task, run) in rest.into_iter().zip(["r1", "r2", "r3"]) {
            assert_eq!(task.await.expect("task"), answer(run), "{run} got another run's answer");
        }
        let seen = seen.lock().expect("test lock").clone();
        assert_eq!(seen, vec![vec!["r0".to_string()], vec!["r1".into(), "r2".into(), "r3".into()]]);
    }
}
