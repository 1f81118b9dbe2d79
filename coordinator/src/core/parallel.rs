//! Plan `DataParallel { replicas }`: a training run lives on R workers with identical state, and
//! its jobs become multi-call chains decided here.
//!
//! - create, load, optim_step and drop go to every replica (a *fan-out*): they change the state
//!   every replica must share; the job completes when all have answered (the first failure wins).
//! - a forward_backward of N datums is split into R contiguous parts and run as a *chain*:
//!   replica 0 runs part 0, adding its per-sequence gradients onto the run's running total; its
//!   gradient buffer is copied to replica 1 (`GetGrads` / `SetGrads`), which runs part 1 on top of
//!   it, and so on; the last replica's buffer is copied back to the others. The worker adds
//!   per-sequence gradients into the buffer in sequence order, so the result is exactly what one
//!   worker running all N datums computes (bit for bit on dense models; `worker/tests/dp_chain.rs`).
//!   Outputs are concatenated in datum order; `*:sum` metrics are added, `*:max`/`*:min` reduced,
//!   others taken from the first part. A forward-only request needs no gradients and skips the copies.
//! - saves, exports, snapshots and samplers read the state of replica 0 only.
//!
//! If a chain fails midway the replicas no longer agree; the gradient total from before the
//! chain (fetched from replica 0 first) is put back on every replica before the job fails.

use std::collections::{BTreeMap, VecDeque};

use runtime::control::{ErrorCategory, ForwardBackwardResult, FromWorker, GradBuffer, ToWorker};

use super::engine::{CallId, Command, CoordinatorCore, WorkerId};
use super::futures::Outcome;
use super::ids::RunId;
use super::jobs::{Action, Job, Purpose};

/// Whether a job changes state every replica must share.
pub(super) fn fans_out(job: &Job) -> bool {
    matches!(job.action, Action::Create { .. } | Action::Load { .. } | Action::Optim(_) | Action::Drop)
}

/// One call of a chain.
#[derive(Debug)]
enum Step {
    /// Fetch replica's gradient buffer (into `grads`; the first fetch also becomes `before`).
    Get(WorkerId),
    /// Put `grads` on the replica.
    Set(WorkerId),
    /// Run a part of the request on the replica.
    Part(WorkerId, ToWorker),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The same message to every replica at once.
    Fanout,
    /// Steps one after another.
    Chain,
}

/// A data-parallel job in flight.
#[derive(Debug)]
pub struct Chain {
    kind: Kind,
    job: Job,
    steps: VecDeque<Step>,
    /// Replies still expected (a fan-out sends several at once; a chain step one).
    waiting: usize,
    /// A fan-out's answers, in arrival order.
    answers: Vec<FromWorker>,
    grads: Option<GradBuffer>,
    /// The gradient total before the chain, to put back if it fails midway.
    before: Option<GradBuffer>,
    outputs: Vec<runtime::control::DatumOutput>,
    metrics: Vec<BTreeMap<String, f64>>,
    /// Every replica, for restoring `before`.
    group: Vec<WorkerId>,
    /// Set once the chain failed and `before` is being put back: the failure to report.
    failed: Option<FromWorker>,
}

impl Chain {
    fn new(kind: Kind, job: Job, steps: VecDeque<Step>, waiting: usize, group: Vec<WorkerId>) -> Chain {
        Chain {
            kind,
            job,
            steps,
            waiting,
            answers: vec![],
            grads: None,
            before: None,
            outputs: vec![],
            metrics: vec![],
            group,
            failed: None,
        }
    }
}

/// `n` datums in `parts` contiguous pieces of nearly equal size (empty pieces dropped).
fn split_points(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    (0..parts).map(|p| runtime::plan::balanced_range(n, parts, p)).filter(|r| !r.is_empty()).collect()
}

/// Merges the metrics of consecutive parts by their `name:reduction` suffix.
fn merge_metrics(parts: &[BTreeMap<String, f64>]) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for m in parts {
        for (k, v) in m {
            match out.get_mut(k) {
                None => {
                    out.insert(k.clone(), *v);
                }
                Some(acc) if k.ends_with(":sum") => *acc += v,
                Some(acc) if k.ends_with(":max") => *acc = acc.max(*v),
                Some(acc) if k.ends_with(":min") => *acc = acc.min(*v),
                Some(_) => {}
            }
        }
    }
    out
}

impl CoordinatorCore {
    /// The replicas of a data-parallel run, first one first.
    fn group_of(&self, run: &RunId) -> Vec<WorkerId> {
        let Some(live) = self.runs.get(run) else { return vec![] };
        live.worker.into_iter().chain(live.replicas.iter().copied()).collect()
    }

    /// Sends `body` to `worker` as one call of `run`'s chain.
    fn send_chain_call(&mut self, worker: WorkerId, run: &RunId, body: ToWorker, out: &mut Vec<Command>) -> bool {
        let Some(generation) = self.workers.get(&worker).map(|s| s.generation) else { return false };
        let call = CallId(self.next_call);
        self.next_call += 1;
        self.calls.insert(call, (worker, Purpose::Chain { run: run.clone() }));
        let envelope = runtime::control::Envelope { generation: generation.0, body };
        out.push(Command::Send { call, worker, envelope });
        true
    }

    /// Sends a state-changing job to every replica.
    pub(super) fn start_fanout(&mut self, run: RunId, job: Job, body: ToWorker, out: &mut Vec<Command>) {
        let group = self.group_of(&run);
        let mut sent = 0;
        for w in &group {
            if self.send_chain_call(*w, &run, body.clone(), out) {
                sent += 1;
            }
        }
        assert_eq!(sent, group.len(), "every replica of a placed run is a member");
        let chain = Chain::new(Kind::Fanout, job, VecDeque::new(), sent, group);
        if let Some(live) = self.runs.get_mut(&run) {
            live.chain = Some(chain);
        }
    }

    /// Starts a data-parallel forward_backward chain.
    pub(super) fn start_chain(&mut self, now_ms: u64, run: RunId, job: Job, out: &mut Vec<Command>) {
        let group = self.group_of(&run);
        let Action::ForwardBackward { data, loss_fn, loss_config, forward_only } = &job.action else {
            unreachable!("only forward_backward jobs are chained")
        };
        let parts = split_points(data.len(), group.len());
        let mut steps = VecDeque::new();
        if !forward_only {
            steps.push_back(Step::Get(group[0]));
        }
        for (i, range) in parts.iter().enumerate() {
            let w = group[i];
            if i > 0 && !forward_only {
                steps.push_back(Step::Set(w));
            }
            let body = ToWorker::ForwardBackward {
                run: run.as_str().to_string(),
                data: data[range.clone()].to_vec(),
                loss_fn: loss_fn.clone(),
                loss_config: loss_config.clone(),
                forward_only: *forward_only,
            };
            steps.push_back(Step::Part(w, body));
            if !forward_only {
                steps.push_back(Step::Get(w));
            }
        }
        if !forward_only {
            let last = group[parts.len().max(1) - 1];
            for w in group.iter().filter(|w| **w != last) {
                steps.push_back(Step::Set(*w));
            }
        }
        let chain = Chain::new(Kind::Chain, job, steps, 0, group);
        if let Some(live) = self.runs.get_mut(&run) {
            live.chain = Some(chain);
        }
        self.next_chain_step(now_ms, run, out);
    }

    fn next_chain_step(&mut self, now_ms: u64, run: RunId, out: &mut Vec<Command>) {
        let Some(chain) = self.runs.get_mut(&run).and_then(|l| l.chain.as_mut()) else { return };
        let Some(step) = chain.steps.pop_front() else {
            // All steps done: the concatenated outputs and merged metrics answer the request.
            let reply = FromWorker::ForwardBackward(ForwardBackwardResult {
                outputs: std::mem::take(&mut chain.outputs),
                metrics: merge_metrics(&chain.metrics),
            });
            self.end_chain(now_ms, run, reply, out);
            return;
        };
        let r = run.as_str().to_string();
        let (worker, body) = match step {
            Step::Get(w) => (w, ToWorker::GetGrads { run: r }),
            Step::Set(w) => {
                // Always set by the Get before it; an empty buffer would be refused by the worker.
                let grads = chain.grads.clone().unwrap_or(GradBuffer { values: Vec::new() });
                (w, ToWorker::SetGrads { run: r, grads })
            }
            Step::Part(w, body) => (w, body),
        };
        chain.waiting = 1;
        if !self.send_chain_call(worker, &run, body, out) {
            let failed = FromWorker::Failed {
                category: ErrorCategory::Server,
                message: format!("a replica of data-parallel run {run} is not a member any more"),
            };
            // No clean-up is possible without the replica; its loss marks the run lost.
            self.end_chain(now_ms, run, failed, out);
        }
    }

    /// One reply of a chain or fan-out.
    pub(super) fn chain_replied(&mut self, now_ms: u64, run: RunId, reply: FromWorker, out: &mut Vec<Command>) {
        let Some(chain) = self.runs.get_mut(&run).and_then(|l| l.chain.as_mut()) else { return };
        chain.waiting = chain.waiting.saturating_sub(1);
        if let Some(failure) = chain.failed.clone() {
            // Putting `before` back: once every replica answered, report the original failure.
            if chain.waiting == 0 {
                self.end_chain(now_ms, run, failure, out);
            }
            return;
        }
        match chain.kind {
            Kind::Fanout => {
                chain.answers.push(reply);
                if chain.waiting > 0 {
                    return;
                }
                let answers = std::mem::take(&mut chain.answers);
                let failed = answers.iter().filter(|a| matches!(a, FromWorker::Failed { .. })).count();
                if failed > 0 && failed < answers.len() {
                    // Some replicas changed state and some did not: they no longer agree.
                    if let Some(live) = self.runs.get_mut(&run) {
                        live.lost = Some(format!(
                            "training run lost: its data-parallel replicas disagree after a failed {}; create a \
                             new training client from your last checkpoint (save_state) to continue",
                            live.chain.as_ref().map_or("step", |c| c.job.action.kind())
                        ));
                    }
                }
                let answer = answers
                    .iter()
                    .find(|a| matches!(a, FromWorker::Failed { .. }))
                    .or(answers.first())
                    .cloned()
                    .unwrap_or(FromWorker::Done);
                self.end_chain(now_ms, run, answer, out);
            }
            Kind::Chain => {
                match reply {
                    FromWorker::Grads(g) => {
                        if chain.before.is_none() {
                            chain.before = Some(g.clone());
                        }
                        chain.grads = Some(g);
                    }
                    FromWorker::ForwardBackward(r) => {
                        chain.outputs.extend(r.outputs);
                        chain.metrics.push(r.metrics);
                    }
                    FromWorker::Done => {}
                    FromWorker::Failed { .. } => return self.chain_failed_at(now_ms, run, reply, out),
                    other => {
                        let failed = FromWorker::Failed {
                            category: ErrorCategory::Server,
                            message: format!(
                                "a replica answered {} in a data-parallel chain; a lathe bug",
                                other.kind()
                            ),
                        };
                        return self.chain_failed_at(now_ms, run, failed, out);
                    }
                }
                self.next_chain_step(now_ms, run, out);
            }
        }
    }

    /// A chain step failed: put the gradient total from before back on every replica, then fail.
    fn chain_failed_at(&mut self, now_ms: u64, run: RunId, failure: FromWorker, out: &mut Vec<Command>) {
        let Some(chain) = self.runs.get_mut(&run).and_then(|l| l.chain.as_mut()) else { return };
        let Some(before) = chain.before.clone() else {
            return self.end_chain(now_ms, run, failure, out);
        };
        chain.steps.clear();
        chain.failed = Some(failure.clone());
        let group = chain.group.clone();
        let mut sent = 0;
        for w in group {
            let body = ToWorker::SetGrads { run: run.as_str().to_string(), grads: before.clone() };
            if self.send_chain_call(w, &run, body, out) {
                sent += 1;
            }
        }
        if let Some(chain) = self.runs.get_mut(&run).and_then(|l| l.chain.as_mut()) {
            chain.waiting = sent;
        }
        if sent == 0 {
            self.end_chain(now_ms, run, failure, out);
        }
    }

    fn end_chain(&mut self, now_ms: u64, run: RunId, reply: FromWorker, out: &mut Vec<Command>) {
        let Some(chain) = self.runs.get_mut(&run).and_then(|l| l.chain.take()) else { return };
        let job = chain.job;
        if matches!(job.action, Action::ForwardBackward { .. }) {
            let n_data = match &job.action {
                Action::ForwardBackward { data, .. } => data.len(),
                _ => 0,
            };
            let outcome = match reply {
                FromWorker::ForwardBackward(r) if r.outputs.len() == n_data => Outcome::ForwardBackward(r),
                FromWorker::Failed { category, message } => Outcome::Failed { category, message },
                other => super::jobs::server(format!(
                    "a data-parallel forward_backward ended with {}; this is a lathe bug",
                    other.kind()
                )),
            };
            self.finish_job(now_ms, &run, job, outcome, out);
        } else {
            self.job_replied(now_ms, run, job, reply, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_contiguous_nearly_equal_and_never_empty() {
        assert_eq!(split_points(8, 2), vec![0..4, 4..8]);
        assert_eq!(split_points(5, 2), vec![0..3, 3..5]);
        assert_eq!(split_points(1, 4), vec![0..1]);
    }

    #[test]
    fn metrics_merge_by_their_reduction() {
        let a =
            BTreeMap::from([("loss:sum".to_string(), 1.5), ("x:max".to_string(), 2.0), ("y:mean".to_string(), 7.0)]);
        let b =
            BTreeMap::from([("loss:sum".to_string(), 2.0), ("x:max".to_string(), 3.0), ("y:mean".to_string(), 9.0)]);
        let m = merge_metrics(&[a, b]);
        assert_eq!(m["loss:sum"], 3.5);
        assert_eq!(m["x:max"], 3.0);
        assert_eq!(m["y:mean"], 7.0);
    }
}
