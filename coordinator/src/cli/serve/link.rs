//! `InProcessLink`: the coordinator's `WorkerLink` to a worker living in this process. The worker
//! runs on one dedicated OS thread that takes requests from a channel in arrival order, so model
//! math never blocks the async executor; each reply goes back through a oneshot channel. A panic
//! while handling one request is reported as a server error for that request, and the thread goes
//! on serving the next.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc;

use runtime::control::{Envelope, ErrorCategory, FromWorker, WorkerLink};
use tokio::sync::oneshot;

type Job = (Envelope, oneshot::Sender<FromWorker>);

/// A `WorkerLink` to a handler on its own thread. Dropping the link closes the channel, and the
/// thread ends once it has answered what was already queued.
pub struct InProcessLink {
    jobs: mpsc::Sender<Job>,
}

impl InProcessLink {
    /// Starts the worker thread, named `thread_name`, running `handler` once per request.
    ///
    /// # Errors
    /// When the OS refuses to start a thread.
    pub fn spawn<H>(thread_name: &str, mut handler: H) -> std::io::Result<Self>
    where
        H: FnMut(Envelope) -> FromWorker + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name(thread_name.to_string()).spawn(move || {
            while let Ok((msg, reply)) = queue.recv() {
                let out = catch_unwind(AssertUnwindSafe(|| handler(msg))).unwrap_or_else(|payload| {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".to_string());
                    FromWorker::Failed {
                        category: ErrorCategory::Server,
                        message: format!("the worker panicked on this request ({what}); this is a lathe bug"),
                    }
                });
                // The caller may have gone away (client disconnected); nothing to do then.
                let _ = reply.send(out);
            }
        })?;
        Ok(InProcessLink { jobs })
    }
}

fn worker_gone() -> FromWorker {
    FromWorker::Failed {
        category: ErrorCategory::Server,
        message: "the in-process worker thread has stopped; restart `lathe serve`".to_string(),
    }
}

impl WorkerLink for InProcessLink {
    fn call(&self, msg: Envelope) -> Pin<Box<dyn Future<Output = FromWorker> + Send>> {
        let (reply, answer) = oneshot::channel();
        let queued = self.jobs.send((msg, reply)).is_ok();
        Box::pin(async move {
            if !queued {
                return worker_gone();
            }
            answer.await.unwrap_or_else(|_| worker_gone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::control::ToWorker;

    fn drop_run(run: &str) -> Envelope {
        Envelope { generation: 7, body: ToWorker::DropRun { run: run.to_string() } }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn requests_reach_the_handler_in_order_and_replies_come_back() {
        let mut seen = Vec::new();
        let link = InProcessLink::spawn("test-worker", move |env: Envelope| {
            let ToWorker::DropRun { run } = env.body else { panic!("unexpected body") };
            seen.push(run.clone());
            FromWorker::Saved { bytes: seen.len() as u64 * 10 + run.len() as u64 }
        })
        .unwrap();
        let first = link.call(drop_run("a"));
        let second = link.call(drop_run("bbb"));
        assert_eq!(block_on(second), FromWorker::Saved { bytes: 23 });
        assert_eq!(block_on(first), FromWorker::Saved { bytes: 11 });
    }

    #[test]
    fn a_panicking_request_is_a_server_error_and_the_worker_keeps_serving() {
        let link = InProcessLink::spawn("test-worker", |env: Envelope| match env.body {
            ToWorker::DropRun { run } if run == "boom" => panic!("kaboom"),
            _ => FromWorker::Done,
        })
        .unwrap();
        match block_on(link.call(drop_run("boom"))) {
            FromWorker::Failed { category, message } => {
                assert_eq!(category, ErrorCategory::Server);
                assert!(message.contains("kaboom"), "{message}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(block_on(link.call(drop_run("fine"))), FromWorker::Done);
    }
}
