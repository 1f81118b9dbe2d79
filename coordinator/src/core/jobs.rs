//! The work of training runs: each live run's queue of released jobs (one in flight at a time),
//! the multi-tenant step scheduler (forward_backward requests of different runs waiting together
//! go to the worker as one `ForwardBackwardMany`), and what each worker reply means — the
//! future's outcome, catalogue changes, snapshots after every optim step.
//!
//! Policy of the step scheduler: no added latency. A lone request goes as it is; while a step is
//! in flight new ones queue, and when it is answered everything queued (up to [`STEP_ITEMS_MAX`]
//! requests or [`STEP_TOKENS_MAX`] tokens) becomes the next step. A run never has two jobs in
//! flight, so a step never holds two requests of one run.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use runtime::control::{
    AdamConfig, Datum, ErrorCategory, FbRequest, ForwardBackwardResult, FromWorker, SamplerAdapter, ToWorker,
};
use runtime::LoraConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::ReplyTo;
use super::catalog::CheckpointRecord;
use super::engine::{Command, CoordinatorCore, WorkerId, STEP_ITEMS_MAX, STEP_TOKENS_MAX};
use super::futures::Outcome;
use super::ids::{CheckpointKind, CheckpointName, RequestId, RunId, SamplerId, SessionId, TenantId, TinkerPath};
use super::sequencer::Sequencer;
use crate::store::{CheckpointRow, RunRow, SamplerRow, StoreOp};

/// What one job of a run does. Serialised into the journal (the payload of its row), so a
/// restarted coordinator replays exactly what was accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Failed validation; it still consumed its `seq_id`. Completes as a user error.
    Reject(String),
    Create {
        base_model: String,
        lora: LoraConfig,
    },
    /// Load a `save_state` directory (a new run's first job, or a load into a live run).
    Load {
        path: String,
        dir: PathBuf,
        optimizer: bool,
    },
    ForwardBackward {
        data: Vec<Datum>,
        loss_fn: String,
        loss_config: BTreeMap<String, f64>,
        forward_only: bool,
    },
    Optim(AdamConfig),
    Save {
        kind: CheckpointKind,
        name: CheckpointName,
        overwrite: bool,
        ttl_ms: Option<u64>,
        user_metadata: Option<serde_json::Value>,
    },
    /// `save_weights_and_get_sampling_client`: the current adapter saved for a sampler (so the
    /// sampler can be freed and rebuilt), then the sampler made from it.
    EphemeralSampler {
        sampler: SamplerId,
        session: SessionId,
    },
    /// Internal: save adapter + optimizer state after an optim step (journal truncation point).
    Snapshot {
        through_seq_id: u64,
        dir: PathBuf,
    },
    /// Internal: free the run's worker memory (its session ended).
    Drop,
}

impl Action {
    /// The journal row's kind column (for operators reading the table).
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Reject(_) => "reject",
            Action::Create { .. } => "create",
            Action::Load { .. } => "load",
            Action::ForwardBackward { .. } => "forward_backward",
            Action::Optim(_) => "optim_step",
            Action::Save { .. } => "save",
            Action::EphemeralSampler { .. } => "sampler",
            Action::Snapshot { .. } => "snapshot",
            Action::Drop => "drop",
        }
    }
}

/// One released request of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// None for internal jobs (snapshots, drops).
    pub request: Option<RequestId>,
    pub seq_id: Option<u64>,
    pub action: Action,
    /// Replayed after a restart although its future already holds a result: run it for its
    /// effect on the run's state, but leave the result alone.
    pub replay_only: bool,
    /// Which worker call of a multi-call action comes next (EphemeralSampler: save, then create).
    pub stage: u8,
}

/// A training run whose state is in worker memory.
#[derive(Debug)]
pub struct LiveRun {
    pub tenant: TenantId,
    pub session: SessionId,
    pub base_model: String,
    pub sequencer: Sequencer<Job>,
    pub queue: VecDeque<Job>,
    pub busy: bool,
    /// Jobs of a recovery replay still to run (their futures report `paused_capacity`).
    pub replaying: usize,
    /// The last snapshot's directory (replaced by the next one).
    pub snapshot_dir: Option<PathBuf>,
    /// The worker its state lives on (None: not placed yet); under `DataParallel` the first replica.
    pub worker: Option<WorkerId>,
    /// Under `DataParallel`, the other replicas (each holds the same state); empty otherwise.
    pub replicas: Vec<WorkerId>,
    /// A data-parallel job in flight (a chain of forward_backward parts, or a fan-out).
    pub chain: Option<super::parallel::Chain>,
    /// Why it can no longer run (its worker was lost): every job fails with this.
    pub lost: Option<String>,
    /// Successful optim steps since the last snapshot.
    pub optims_since_snapshot: u64,
}

impl LiveRun {
    pub fn new(tenant: TenantId, session: SessionId, base_model: String, first_seq_id: u64) -> Self {
        LiveRun {
            tenant,
            session,
            base_model,
            sequencer: Sequencer::new(first_seq_id),
            queue: VecDeque::new(),
            busy: false,
            replaying: 0,
            snapshot_dir: None,
            optims_since_snapshot: 0,
            worker: None,
            replicas: Vec::new(),
            chain: None,
            lost: None,
        }
    }

    /// Whether `request` is one of this run's queued jobs.
    pub fn waits_for(&self, request: &RequestId) -> bool {
        self.queue.iter().any(|j| j.request.as_ref() == Some(request))
    }
}

/// A sampler: what it samples from and whether it is in worker memory now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerRecord {
    pub tenant: TenantId,
    pub session: SessionId,
    pub base_model: String,
    /// The checkpoint it was made from (GET /samplers reports it).
    pub model_path: Option<String>,
    /// Where its adapter is on disk (None: the base model alone). Rebuilt from here when freed.
    pub adapter_dir: Option<PathBuf>,
    #[serde(skip)]
    pub resident: bool,
}

/// Why a worker call was made: what its reply completes.
#[derive(Debug)]
pub enum Purpose {
    Job {
        run: RunId,
        job: Job,
    },
    Step {
        worker: WorkerId,
        items: Vec<(RunId, Job)>,
    },
    /// A sampler being put in worker memory: made by create_sampling_session (answer it and record
    /// the sampler), or rebuilt after it was freed (then send the samples that waited for it).
    Sampler {
        sampler: SamplerId,
        create: Option<(ReplyTo, SamplerRecord)>,
    },
    Sample {
        request: RequestId,
    },
    Memory {
        reply: ReplyTo,
        tenant: TenantId,
    },
    /// One call of a data-parallel run's chain or fan-out (`parallel.rs`).
    Chain {
        run: RunId,
    },
    /// Fire and forget (freeing memory): failures are only logged by the shell.
    Forget,
}

pub(super) fn user(message: impl Into<String>) -> Outcome {
    Outcome::Failed { category: ErrorCategory::User, message: message.into() }
}

pub(super) fn server(message: impl Into<String>) -> Outcome {
    Outcome::Failed { category: ErrorCategory::Server, message: message.into() }
}

fn failed(reply: FromWorker) -> Outcome {
    match reply {
        FromWorker::Failed { category, message } => Outcome::Failed { category, message },
        other => {
            server(format!("worker answered {} to a request; this is a lathe bug, please report it", other.kind()))
        }
    }
}

fn tokens_of(action: &Action) -> usize {
    match action {
        Action::ForwardBackward { data, .. } => data.iter().map(|d| d.tokens.len()).sum(),
        _ => 0,
    }
}

impl CoordinatorCore {
    /// Starts the next job of every run that can take one, and the next step.
    pub(super) fn pump_all(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let runs: Vec<RunId> = self.runs.keys().cloned().collect();
        for run in runs {
            self.pump(now_ms, &run, out);
        }
        self.pump_steps(out);
        // Samplers freed (or lost with a restart) whose samples wait: rebuild them.
        let waiting: Vec<SamplerId> = self.rebuilding.keys().cloned().collect();
        for sampler in waiting {
            let in_flight =
                self.calls.values().any(|(_, p)| matches!(p, Purpose::Sampler { sampler: s, .. } if *s == sampler));
            if in_flight {
                continue;
            }
            if let Some(record) = self.samplers.get(&sampler) {
                let body = super::samplers::build_message(&sampler, record);
                self.send(body, Purpose::Sampler { sampler, create: None }, out);
            }
        }
    }

    /// Starts the run's next job if it has none in flight.
    pub(super) fn pump(&mut self, now_ms: u64, run: &RunId, out: &mut Vec<Command>) {
        let Some(live) = self.runs.get(run) else { return };
        if live.busy || live.queue.is_empty() {
            return;
        }
        if let Some(why) = live.lost.clone() {
            // Nothing of a lost run can run; its jobs fail one by one, in order.
            let Some(live) = self.runs.get_mut(run) else { return };
            let Some(job) = live.queue.pop_front() else { return };
            live.busy = true;
            self.finish_job(now_ms, run, job, server(why), out);
            return;
        }
        if self.place_run(run).is_none() {
            return;
        }
        let Some(live) = self.runs.get_mut(run) else { return };
        let Some(job) = live.queue.pop_front() else { return };
        live.busy = true;
        // A replayed request that already finished and does not change the run's state (a save,
        // a sampler, a rejection) is not redone.
        if job.replay_only
            && matches!(job.action, Action::Save { .. } | Action::EphemeralSampler { .. } | Action::Reject(_))
        {
            self.finish_job(now_ms, run, job, Outcome::Json(json!({})), out);
            return;
        }
        if let Action::Save { kind, name, overwrite: false, .. } = &job.action {
            let path = TinkerPath { run: run.as_str().to_string(), kind: *kind, name: name.as_str().to_string() };
            let tenant = live.tenant.clone();
            if self.catalog.checkpoint(&tenant, &path).is_some() && !job.replay_only {
                let outcome =
                    user(format!("checkpoint {path} already exists; pass overwrite=True or choose another name"));
                self.finish_job(now_ms, run, job, outcome, out);
                return;
            }
        }
        self.catalog.touch_run(run.as_str(), now_ms);
        match &job.action {
            Action::ForwardBackward { .. } if self.runs.get(run).is_some_and(|l| !l.replicas.is_empty()) => {
                self.start_chain(now_ms, run.clone(), job, out);
            }
            Action::ForwardBackward { .. } => {
                self.step_queue.push_back((run.clone(), job));
                self.pump_steps(out);
            }
            Action::Reject(message) => {
                let outcome = user(message.clone());
                self.finish_job(now_ms, run, job, outcome, out);
            }
            _ => self.send_job(run.clone(), job, out),
        }
    }

    /// The worker message of a (non-forward) job at its stage, sent to the run's worker; a
    /// data-parallel run's state-changing jobs go to every replica instead (`parallel.rs`).
    pub(super) fn send_job(&mut self, run: RunId, job: Job, out: &mut Vec<Command>) {
        if self.runs.get(&run).is_some_and(|l| !l.replicas.is_empty()) && super::parallel::fans_out(&job) {
            let body = self.job_body(&run, &job, out);
            self.start_fanout(run, job, body, out);
            return;
        }
        let body = self.job_body(&run, &job, out);
        self.send(body, Purpose::Job { run, job }, out);
    }

    /// The worker message of a (non-forward) job at its stage.
    pub(super) fn job_body(&mut self, run: &RunId, job: &Job, out: &mut Vec<Command>) -> ToWorker {
        let r = run.as_str().to_string();
        let body = match &job.action {
            Action::Create { base_model, lora } => {
                ToWorker::CreateRun { run: r, base_model: base_model.clone(), lora: lora.clone() }
            }
            Action::Load { dir, optimizer, .. } => {
                ToWorker::LoadState { run: r, dir: dir.clone(), optimizer: *optimizer }
            }
            Action::Optim(adam) => ToWorker::OptimStep { run: r, adam: *adam },
            Action::Save { kind: CheckpointKind::Weights, name, .. } => {
                let dir = self.checkpoint_dir(&TinkerPath {
                    run: r.clone(),
                    kind: CheckpointKind::Weights,
                    name: name.as_str().to_string(),
                });
                out.push(Command::RemoveDir { dir: dir.clone() });
                ToWorker::SaveState { run: r, dir, optimizer: true }
            }
            Action::Save { kind, name, .. } => {
                let dir =
                    self.checkpoint_dir(&TinkerPath { run: r.clone(), kind: *kind, name: name.as_str().to_string() });
                out.push(Command::RemoveDir { dir: dir.clone() });
                ToWorker::ExportPeft { run: r, dir }
            }
            Action::EphemeralSampler { sampler, .. } if job.stage == 0 => {
                let dir = self.sampler_dir(sampler);
                out.push(Command::RemoveDir { dir: dir.clone() });
                ToWorker::SaveState { run: r, dir, optimizer: false }
            }
            Action::EphemeralSampler { sampler, .. } => {
                let base_model = self.runs.get(run).map(|l| l.base_model.clone()).unwrap_or_default();
                let adapter = SamplerAdapter::Dir(self.sampler_dir(sampler));
                ToWorker::CreateSampler { sampler: sampler.as_str().to_string(), base_model, adapter }
            }
            Action::Snapshot { dir, .. } => {
                out.push(Command::RemoveDir { dir: dir.clone() });
                ToWorker::SaveState { run: r, dir: dir.clone(), optimizer: true }
            }
            Action::Drop => ToWorker::DropRun { run: r },
            Action::ForwardBackward { .. } | Action::Reject(_) => {
                unreachable!("forward_backward goes through steps and rejects finish at once")
            }
        };
        body
    }

    pub(super) fn sampler_dir(&self, sampler: &SamplerId) -> PathBuf {
        self.config.data_dir.join("samplers").join(sampler.as_str())
    }

    /// Sends the next multi-tenant step if none is in flight.
    pub(super) fn pump_steps(&mut self, out: &mut Vec<Command>) {
        let idle: Vec<WorkerId> = self.workers.keys().copied().filter(|w| !self.steps_in_flight.contains(w)).collect();
        for worker in idle {
            self.pump_step_on(worker, out);
        }
    }

    /// Packs the queued forward_backward requests of runs placed on `worker` (in queue order, up
    /// to the step limits) into one step and sends it.
    fn pump_step_on(&mut self, worker: WorkerId, out: &mut Vec<Command>) {
        let mut items = Vec::new();
        let mut kept = VecDeque::new();
        let mut tokens = 0usize;
        while let Some((run, job)) = self.step_queue.pop_front() {
            let here = self.runs.get(&run).is_some_and(|l| l.worker == Some(worker));
            let more = tokens_of(&job.action);
            let full = !items.is_empty() && (items.len() >= STEP_ITEMS_MAX || tokens + more > STEP_TOKENS_MAX);
            if here && !full {
                tokens += more;
                items.push((run, job));
            } else {
                kept.push_back((run, job));
            }
        }
        self.step_queue = kept;
        if items.is_empty() {
            return;
        }
        let requests: Vec<FbRequest> = items
            .iter()
            .map(|(run, job)| match &job.action {
                Action::ForwardBackward { data, loss_fn, loss_config, forward_only } => FbRequest {
                    run: run.as_str().to_string(),
                    data: data.clone(),
                    loss_fn: loss_fn.clone(),
                    loss_config: loss_config.clone(),
                    forward_only: *forward_only,
                },
                _ => unreachable!("only forward_backward jobs enter the step queue"),
            })
            .collect();
        let body = if requests.len() == 1 {
            let FbRequest { run, data, loss_fn, loss_config, forward_only } =
                requests.into_iter().next().expect("one request");
            ToWorker::ForwardBackward { run, data, loss_fn, loss_config, forward_only }
        } else {
            ToWorker::ForwardBackwardMany { items: requests }
        };
        let first = items[0].0.clone();
        assert_eq!(self.place_run(&first), Some(worker), "a step only holds runs placed on its worker");
        if self.send(body, Purpose::Step { worker, items }, out) {
            self.steps_in_flight.insert(worker);
        }
    }

    /// Routes a worker reply to what it completes.
    pub(super) fn on_worker_reply(&mut self, now_ms: u64, purpose: Purpose, reply: FromWorker, out: &mut Vec<Command>) {
        match purpose {
            Purpose::Job { run, job } => self.job_replied(now_ms, run, job, reply, out),
            Purpose::Step { worker, items } => {
                self.steps_in_flight.remove(&worker);
                let n = items.len();
                let answers: Vec<FromWorker> = match reply {
                    FromWorker::Each(each) if each.len() == n => each,
                    FromWorker::Failed { category, message } => {
                        (0..n).map(|_| FromWorker::Failed { category, message: message.clone() }).collect()
                    }
                    single if n == 1 => vec![single],
                    other => {
                        let message = format!(
                            "worker answered a {n}-request step with {}; this is a lathe bug, please report it",
                            other.kind()
                        );
                        (0..n)
                            .map(|_| FromWorker::Failed { category: ErrorCategory::Server, message: message.clone() })
                            .collect()
                    }
                };
                for ((run, job), answer) in items.into_iter().zip(answers) {
                    let n_data = match &job.action {
                        Action::ForwardBackward { data, .. } => data.len(),
                        _ => 0,
                    };
                    let outcome = match answer {
                        FromWorker::ForwardBackward(r) if r.outputs.len() == n_data => Outcome::ForwardBackward(r),
                        FromWorker::ForwardBackward(ForwardBackwardResult { outputs, .. }) => server(format!(
                            "worker returned {} outputs for {n_data} datums; this is a lathe bug",
                            outputs.len()
                        )),
                        other => failed(other),
                    };
                    self.finish_job(now_ms, &run, job, outcome, out);
                }
                self.pump_steps(out);
            }
            Purpose::Sampler { sampler, create } => {
                let result = reply_ok(&reply);
                self.sampler_built(now_ms, sampler, create, result, out);
            }
            Purpose::Sample { request } => {
                let outcome = match reply {
                    FromWorker::Sampled(r) => {
                        let tokens: usize = r.sequences.iter().map(|q| q.tokens.len()).sum();
                        if let Some(tenant) = self.futures.tenant_of(request.as_str()) {
                            let op = StoreOp::AddUsage {
                                tenant: tenant.to_string(),
                                counter: "sampled_tokens".into(),
                                amount: tokens as u64,
                            };
                            self.persist(vec![op], vec![], out);
                        }
                        Outcome::Sample(r)
                    }
                    other => failed(other),
                };
                self.complete(now_ms, &request, outcome, out);
            }
            Purpose::Memory { reply: to, tenant } => match reply {
                FromWorker::Memory(mut report) => {
                    report.runs.retain(|run, _| self.catalog.run(&tenant, run).is_some());
                    report.samplers.retain(|s, _| self.samplers.get(s.as_str()).is_some_and(|r| r.tenant == tenant));
                    self.reply(to, Ok(super::api::Answer::Memory(report)), out);
                }
                FromWorker::Failed { message, .. } => self.reply(
                    to,
                    Err(crate::error::CoordinatorError::Internal(format!(
                        "the worker could not report its memory: {message}"
                    ))),
                    out,
                ),
                other => self.reply(
                    to,
                    Err(crate::error::CoordinatorError::Internal(format!(
                        "the worker answered the memory request with {}; this is a lathe bug",
                        other.kind()
                    ))),
                    out,
                ),
            },
            Purpose::Chain { run } => self.chain_replied(now_ms, run, reply, out),
            Purpose::Forget => {}
        }
    }

    /// A non-step job's reply.
    pub(super) fn job_replied(
        &mut self,
        now_ms: u64,
        run: RunId,
        mut job: Job,
        reply: FromWorker,
        out: &mut Vec<Command>,
    ) {
        let outcome = match (&job.action, reply) {
            (Action::Create { .. }, FromWorker::Done) => {
                Outcome::Json(json!({"model_id": run.as_str(), "type": "create_model"}))
            }
            (Action::Load { path, .. }, FromWorker::Done) => {
                Outcome::Json(json!({"path": path, "model_id": run.as_str(), "type": "load_weights"}))
            }
            (Action::Optim(_), FromWorker::Optim { metrics }) => Outcome::Json(json!({ "metrics": metrics })),
            (Action::Save { .. }, FromWorker::Saved { bytes }) => self.saved(now_ms, &run, &job, bytes, out),
            (Action::EphemeralSampler { .. }, FromWorker::Saved { .. }) if job.stage == 0 => {
                job.stage = 1;
                self.send_job(run, job, out);
                return;
            }
            (Action::EphemeralSampler { sampler, session }, FromWorker::Done) => {
                let Some(live) = self.runs.get(&run) else { return };
                let record = SamplerRecord {
                    tenant: live.tenant.clone(),
                    session: session.clone(),
                    base_model: live.base_model.clone(),
                    model_path: None,
                    adapter_dir: Some(self.sampler_dir(sampler)),
                    resident: true,
                };
                let sampler = sampler.clone();
                self.add_sampler(now_ms, sampler.clone(), record, out);
                Outcome::Json(
                    json!({"path": null, "sampling_session_id": sampler.as_str(), "type": "save_weights_for_sampler"}),
                )
            }
            (Action::Snapshot { through_seq_id, dir }, FromWorker::Saved { .. }) => {
                let (through, dir) = (*through_seq_id, dir.clone());
                self.snapshotted(&run, through, dir, out);
                Outcome::Json(json!({}))
            }
            (Action::Drop, FromWorker::Done) => Outcome::Json(json!({})),
            (_, other) => failed(other),
        };
        self.finish_job(now_ms, &run, job, outcome, out);
    }

    /// A job is done: complete its future (unless replayed), schedule a snapshot after a
    /// successful optim step, and start the run's next job.
    pub(super) fn finish_job(&mut self, now_ms: u64, run: &RunId, job: Job, outcome: Outcome, out: &mut Vec<Command>) {
        let ok = !matches!(outcome, Outcome::Failed { .. });
        let is_drop = matches!(job.action, Action::Drop);
        if ok && !job.replay_only {
            let usage = match &job.action {
                Action::ForwardBackward { data, .. } => {
                    Some(("forward_backward_tokens", tokens_of(&job.action).max(data.len())))
                }
                Action::Optim(_) => Some(("optim_steps", 1)),
                _ => None,
            };
            if let (Some((counter, amount)), Some(live)) = (usage, self.runs.get(run)) {
                let op = StoreOp::AddUsage {
                    tenant: live.tenant.as_str().to_string(),
                    counter: counter.into(),
                    amount: amount as u64,
                };
                self.persist(vec![op], vec![], out);
            }
        }
        if let (Some(request), false) = (&job.request, job.replay_only) {
            self.complete(now_ms, request, outcome, out);
        }
        let Some(live) = self.runs.get_mut(run) else { return };
        live.busy = false;
        if live.replaying > 0 && job.request.is_some() {
            live.replaying -= 1;
        }
        if is_drop {
            self.runs.remove(run);
            return;
        }
        // Every `snapshot_every` optim steps the run's state is snapshotted, so a restart replays at
        // most the requests since then (the journal is truncated at the snapshot).
        if let (true, Action::Optim(_)) = (ok, &job.action) {
            live.optims_since_snapshot += 1;
        }
        let due = live.optims_since_snapshot >= self.config.snapshot_every;
        if let (true, true, Action::Optim(_), Some(seq)) = (ok, due, &job.action, job.seq_id) {
            live.optims_since_snapshot = 0;
            let dir = self.config.data_dir.join("snapshots").join(run.as_str()).join(seq.to_string());
            let snapshot = Job {
                request: None,
                seq_id: None,
                action: Action::Snapshot { through_seq_id: seq, dir },
                replay_only: false,
                stage: 0,
            };
            live.queue.push_front(snapshot);
        }
        self.pump(now_ms, run, out);
    }

    /// A snapshot is on disk: record it, truncate the journal, drop the previous one.
    fn snapshotted(&mut self, run: &RunId, through_seq_id: u64, dir: PathBuf, out: &mut Vec<Command>) {
        let Some(live) = self.runs.get_mut(run) else { return };
        let previous = live.snapshot_dir.replace(dir.clone());
        let mut ops = Vec::new();
        if let Some(record) = self.catalog.run_mut(run.as_str()) {
            record.snapshot = Some(super::catalog::SnapshotRef { through_seq_id, dir });
            ops.push(run_row(record));
        }
        ops.push(StoreOp::TruncateJournal { run: run.as_str().to_string(), through_seq_id });
        self.persist(ops, vec![], out);
        if let Some(previous) = previous {
            out.push(Command::RemoveDir { dir: previous });
        }
    }

    /// A checkpoint was written: catalogue it durably and answer.
    fn saved(&mut self, now_ms: u64, run: &RunId, job: &Job, size_bytes: u64, out: &mut Vec<Command>) -> Outcome {
        let Action::Save { kind, name, ttl_ms, user_metadata, .. } = &job.action else {
            unreachable!("saved() is called for save jobs")
        };
        let Some(tenant) = self.catalog.run_tenant(run.as_str()) else {
            return server(format!("training run {run} vanished from the catalogue; this is a lathe bug"));
        };
        let record = CheckpointRecord {
            run: run.clone(),
            kind: *kind,
            name: name.clone(),
            tenant,
            created_ms: now_ms,
            size_bytes,
            expires_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
            user_metadata: user_metadata.clone(),
        };
        let row = checkpoint_row(&record);
        self.persist(vec![row], vec![], out);
        let p = record.path().to_string();
        self.catalog.add_checkpoint(record);
        match kind {
            CheckpointKind::Weights => Outcome::Json(json!({"path": p, "type": "save_weights"})),
            CheckpointKind::SamplerWeights => Outcome::Json(json!({"path": p, "type": "save_weights_for_sampler"})),
            CheckpointKind::ExternalWeights => Outcome::Json(json!({"path": p, "size_bytes": size_bytes})),
        }
    }
}

fn reply_ok(reply: &FromWorker) -> Result<(), (ErrorCategory, String)> {
    match reply {
        FromWorker::Done => Ok(()),
        FromWorker::Failed { category, message } => Err((*category, message.clone())),
        other => {
            Err((ErrorCategory::Server, format!("worker answered {} to CreateSampler; a lathe bug", other.kind())))
        }
    }
}

pub(super) fn run_row(record: &super::catalog::RunRecord) -> StoreOp {
    StoreOp::PutRun(RunRow {
        id: record.id.as_str().to_string(),
        tenant: record.tenant.as_str().to_string(),
        record_json: serde_json::to_string(record).unwrap_or_default(),
    })
}

pub(super) fn checkpoint_row(record: &CheckpointRecord) -> StoreOp {
    StoreOp::PutCheckpoint(CheckpointRow {
        run: record.run.as_str().to_string(),
        kind: record.kind.segment().to_string(),
        name: record.name.as_str().to_string(),
        tenant: record.tenant.as_str().to_string(),
        record_json: serde_json::to_string(record).unwrap_or_default(),
    })
}

pub(super) fn sampler_row(id: &SamplerId, record: &SamplerRecord) -> StoreOp {
    StoreOp::PutSampler(SamplerRow {
        id: id.as_str().to_string(),
        tenant: record.tenant.as_str().to_string(),
        record_json: serde_json::to_string(record).unwrap_or_default(),
    })
}
