//! `CoordinatorCore`: every decision of the coordinator in one place, as a pure state machine.
//! `on_event(now_ms, Event) -> Vec<Command>`: no I/O, no clock, no randomness of its own (seeds and
//! id prefixes come from an injected [`IdSource`]). The actor shell (`crate::actor`) feeds it
//! events — API requests, worker replies, timers, store results, worker membership — and carries
//! out its commands in order: reply, send to a worker, persist, arm a timer, remove a directory.
//!
//! Durability rule: a reply that acknowledges something (a session, a run, an accepted request) is
//! held until the store has committed the ops that record it ([`Command::Persist`] then
//! [`Event::Stored`]); so nothing a client was told is lost by a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;

use runtime::control::{BaseModelInfo, Envelope, FromWorker};
use serde::{Deserialize, Serialize};

use super::api::{Answer, ApiRequest, QueueState, Reply, ReplyTo};
use super::catalog::Catalog;
use super::futures::{Futures, Outcome, Poll};
use super::ids::{RequestId, RunId, SamplerId, TenantId, TinkerPath};
use super::jobs::{Job, LiveRun, Purpose, SamplerRecord};
use super::sessions::Sessions;
use super::workers::{WorkerCapacity, WorkerSlot};
use crate::error::CoordinatorError;
use crate::store::StoreOp;

/// A worker process (or the in-process worker of `lathe serve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub u64);

/// A placement generation: every message to a worker carries it, replies from older ones are
/// dropped (fencing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Generation(pub u64);

/// One outstanding worker call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// One batch of store ops awaiting commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Where seeds and id prefixes come from: the shell injects OS entropy, tests a fixed sequence.
pub trait IdSource: Send {
    fn next_u64(&mut self) -> u64;
}

/// splitmix64 from a seed: deterministic ids for tests and the simulator.
#[derive(Clone, Debug)]
pub struct SeededIds(pub u64);

impl IdSource for SeededIds {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Timers the core arms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Housekeeping: session expiry, checkpoint TTLs, future retention, idle samplers.
    Tick,
    /// A long poll's deadline: answer `try_again` if its future is still pending.
    PollDeadline(ReplyTo),
}

/// Inputs of the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Api {
        reply: ReplyTo,
        tenant: TenantId,
        request: ApiRequest,
    },
    WorkerReplied {
        call: CallId,
        generation: Generation,
        reply: FromWorker,
    },
    Timer(Timer),
    /// A worker finished its handshake and holds its lease; the core admits it with
    /// [`Command::Admit`].
    WorkerJoined {
        worker: WorkerId,
        name: String,
        capacity: WorkerCapacity,
    },
    WorkerLost {
        worker: WorkerId,
    },
    Stored {
        ticket: Ticket,
        result: Result<(), String>,
    },
    /// The shell's handling of a request panicked: fail what it was for, with category `server`.
    Panicked {
        reply: Option<ReplyTo>,
        call: Option<CallId>,
        what: String,
    },
}

/// Outputs of the core, carried out in order by the shell.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Reply {
        to: ReplyTo,
        reply: Reply,
    },
    Send {
        call: CallId,
        worker: WorkerId,
        envelope: Envelope,
    },
    Persist {
        ticket: Ticket,
        ops: Vec<StoreOp>,
    },
    ArmTimer {
        at_ms: u64,
        timer: Timer,
    },
    /// Admits a joined worker: the shell tells it its generation (the handshake's Welcome).
    Admit {
        worker: WorkerId,
        generation: Generation,
    },
    /// Drops a lost worker's link; anything it still sends is ignored.
    Disconnect {
        worker: WorkerId,
    },
    /// Deletes a directory tree the core no longer needs (a deleted checkpoint, an old snapshot,
    /// a checkpoint about to be overwritten). Missing is fine.
    RemoveDir {
        dir: PathBuf,
    },
}

/// Limits and timings of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub models: BTreeMap<String, BaseModelInfo>,
    /// Checkpoints under `<data>/runs`, snapshots under `<data>/snapshots`, sampler adapters
    /// under `<data>/samplers` (paths are values here; the worker writes them).
    pub data_dir: PathBuf,
    pub long_poll_ms: u64,
    pub tick_ms: u64,
    /// Most unfinished forward_backward + sample requests per base model before 429.
    pub queue_limit: usize,
    /// Seconds a 429 asks the client to wait.
    pub retry_after_s: u64,
    /// Most samplers kept in worker memory; the least recently used beyond it are freed.
    pub samplers_resident_max: usize,
    /// A sampler unused this long is freed from worker memory (rebuilt on its next use).
    pub sampler_idle_ms: u64,
    /// Snapshot a run's adapter + optimizer state every this many optim steps (>= 1).
    pub snapshot_every: u64,
    /// How each run is spread over workers (`Single` or `DataParallel` so far).
    pub plan: runtime::plan::Plan,
}

/// Most requests packed into one multi-tenant step.
pub const STEP_ITEMS_MAX: usize = 64;
/// Most model input tokens packed into one step (the first request always goes, however long).
pub const STEP_TOKENS_MAX: usize = 65_536;

/// What a retried submission is recognised by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReplySlot {
    /// The SDK's `X-Idempotency-Key` header, scoped to the tenant that sent it.
    Idempotency { tenant: TenantId, key: String },
    /// `create_model` for the run its `model_seq_id` names.
    Create(RunId),
    /// A sample request by its sampler's own `seq_id`.
    Sample { sampler: SamplerId, seq_id: u64 },
}

/// The coordinator's whole state.
pub struct CoordinatorCore {
    pub(super) config: CoreConfig,
    pub(super) ids: Box<dyn IdSource>,
    pub(super) sessions: Sessions,
    pub(super) catalog: Catalog,
    pub(super) futures: Futures,
    /// Training runs whose adapter lives (or is being rebuilt) in worker memory.
    pub(super) runs: BTreeMap<RunId, LiveRun>,
    pub(super) samplers: BTreeMap<SamplerId, SamplerRecord>,
    /// Submission replies by slot so retries get the same answer; forgotten with their request's
    /// future.
    pub(super) replies: HashMap<ReplySlot, serde_json::Value>,
    pub(super) reply_slots: HashMap<RequestId, Vec<ReplySlot>>,
    /// Long polls waiting on a pending future.
    pub(super) polls: HashMap<RequestId, Vec<ReplyTo>>,
    pub(super) poll_of: HashMap<ReplyTo, RequestId>,
    /// Member workers and their generations (see `workers`).
    pub(super) workers: BTreeMap<WorkerId, WorkerSlot>,
    pub(super) next_generation: u64,
    /// Where each resident sampler lives.
    pub(super) sampler_worker: BTreeMap<SamplerId, WorkerId>,
    /// Outstanding worker calls: the worker they went to and what their reply completes.
    pub(super) calls: HashMap<CallId, (WorkerId, Purpose)>,
    pub(super) next_call: u64,
    /// forward_backward requests waiting for the next multi-tenant step, in release order.
    pub(super) step_queue: VecDeque<(RunId, Job)>,
    /// Workers with a multi-tenant step in flight (one at a time each).
    pub(super) steps_in_flight: BTreeSet<WorkerId>,
    /// Unfinished forward_backward + sample requests per base model (backpressure).
    pub(super) queued: BTreeMap<String, usize>,
    pub(super) queued_of: HashMap<RequestId, String>,
    /// Replies held until their ops are durable.
    pub(super) held: BTreeMap<Ticket, Vec<Command>>,
    pub(super) next_ticket: u64,
    /// Sampler use order for the resident set: sampler → last use.
    pub(super) sampler_last_use_ms: BTreeMap<SamplerId, u64>,
    /// Per sampler, how many sample requests it has journaled (their journal seq ids).
    pub(super) sample_seq: BTreeMap<SamplerId, u64>,
    /// Samples waiting for their freed sampler to be rebuilt in worker memory.
    pub(super) rebuilding: BTreeMap<SamplerId, Vec<(RequestId, runtime::control::SampleRequest)>>,
    pub(super) tick_armed: bool,
    /// Commands decided while rebuilding from the store, emitted with the first event.
    pub(super) startup: Vec<Command>,
}

impl CoordinatorCore {
    /// An empty coordinator (no state from before). `request_prefix` keeps request ids unique across
    /// coordinator lifetimes.
    pub fn new(config: CoreConfig, mut ids: Box<dyn IdSource>) -> Self {
        assert!(!config.models.is_empty(), "a coordinator serves at least one base model");
        assert!(config.long_poll_ms > 0 && config.tick_ms > 0, "timings must be positive");
        assert!(config.snapshot_every >= 1, "snapshot_every counts optim steps, at least 1");
        let prefix = format!("{:x}", ids.next_u64() & 0xffff_ffff);
        CoordinatorCore {
            config,
            ids,
            sessions: Sessions::new(),
            catalog: Catalog::new(),
            futures: Futures::new(&prefix),
            runs: BTreeMap::new(),
            samplers: BTreeMap::new(),
            replies: HashMap::new(),
            reply_slots: HashMap::new(),
            polls: HashMap::new(),
            poll_of: HashMap::new(),
            workers: BTreeMap::new(),
            next_generation: 0,
            sampler_worker: BTreeMap::new(),
            calls: HashMap::new(),
            next_call: 1,
            step_queue: VecDeque::new(),
            steps_in_flight: BTreeSet::new(),
            queued: BTreeMap::new(),
            queued_of: HashMap::new(),
            held: BTreeMap::new(),
            next_ticket: 1,
            sampler_last_use_ms: BTreeMap::new(),
            sample_seq: BTreeMap::new(),
            rebuilding: BTreeMap::new(),
            tick_armed: false,
            startup: Vec::new(),
        }
    }

    /// Starts this lifetime's worker generations above `base` (see the shell), so a worker never
    /// sees a generation older than one it served before a restart.
    pub fn with_generation_base(mut self, base: u64) -> Self {
        self.next_generation = self.next_generation.max(base);
        self
    }

    /// The one entry point.
    pub fn on_event(&mut self, now_ms: u64, event: Event) -> Vec<Command> {
        let mut out = std::mem::take(&mut self.startup);
        if !self.tick_armed {
            self.tick_armed = true;
            out.push(Command::ArmTimer { at_ms: now_ms + self.config.tick_ms, timer: Timer::Tick });
        }
        match event {
            Event::Api { reply, tenant, request } => self.on_api(now_ms, reply, tenant, request, &mut out),
            Event::WorkerReplied { call, generation, reply } => {
                if self.call_generation(call) != Some(generation) {
                    // Fencing: an answer from an older placement (or a lost worker) changes nothing.
                    return out;
                }
                if let Some((_, purpose)) = self.calls.remove(&call) {
                    self.on_worker_reply(now_ms, purpose, reply, &mut out);
                }
            }
            Event::Timer(Timer::Tick) => {
                self.tick(now_ms, &mut out);
                out.push(Command::ArmTimer { at_ms: now_ms + self.config.tick_ms, timer: Timer::Tick });
            }
            Event::Timer(Timer::PollDeadline(to)) => self.poll_deadline(to, &mut out),
            Event::WorkerJoined { worker, name, capacity } => {
                self.worker_joined(now_ms, worker, name, capacity, &mut out)
            }
            Event::WorkerLost { worker } => self.worker_lost(now_ms, worker, &mut out),
            Event::Stored { ticket, result } => self.on_stored(ticket, result, &mut out),
            Event::Panicked { reply, call, what } => {
                let message = format!("lathe failed while handling this request ({what}); this is a lathe bug");
                if let Some(to) = reply {
                    out.push(Command::Reply { to, reply: Err(CoordinatorError::Internal(message.clone())) });
                }
                if let Some(call) = call {
                    if let Some((_, purpose)) = self.calls.remove(&call) {
                        let failed = FromWorker::Failed { category: runtime::control::ErrorCategory::Server, message };
                        self.on_worker_reply(now_ms, purpose, failed, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Answers an API request now.
    pub(super) fn reply(&self, to: ReplyTo, reply: Reply, out: &mut Vec<Command>) {
        out.push(Command::Reply { to, reply });
    }

    /// Persists `ops`, holding `then` (replies) until they are durable.
    pub(super) fn persist(&mut self, ops: Vec<StoreOp>, then: Vec<Command>, out: &mut Vec<Command>) {
        if ops.is_empty() {
            out.extend(then);
            return;
        }
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        out.push(Command::Persist { ticket, ops });
        if !then.is_empty() {
            self.held.insert(ticket, then);
        }
    }

    fn on_stored(&mut self, ticket: Ticket, result: Result<(), String>, out: &mut Vec<Command>) {
        let Some(held) = self.held.remove(&ticket) else { return };
        match result {
            Ok(()) => out.extend(held),
            Err(why) => {
                for c in held {
                    if let Command::Reply { to, .. } = c {
                        let message = format!(
                            "lathe could not record this request durably ({why}); it was not acknowledged, \
                             retry it once the data directory is writable"
                        );
                        out.push(Command::Reply { to, reply: Err(CoordinatorError::Internal(message)) });
                    }
                }
            }
        }
    }

    /// Records a finished request, persists its result and answers the polls waiting on it.
    pub(super) fn complete(&mut self, now_ms: u64, request: &RequestId, outcome: Outcome, out: &mut Vec<Command>) {
        if let Some(model) = self.queued_of.remove(request) {
            if let Some(n) = self.queued.get_mut(&model) {
                *n = n.saturating_sub(1);
            }
        }
        if !self.futures.complete(request.as_str(), outcome.clone(), now_ms) {
            return;
        }
        if let Some(row) = self.futures.row(request.as_str()) {
            self.persist(vec![StoreOp::PutFuture(row)], vec![], out);
        }
        for to in self.polls.remove(request).unwrap_or_default() {
            self.poll_of.remove(&to);
            if let Poll::Ready(o) = self.futures.poll_any(request.as_str(), now_ms) {
                out.push(Command::Reply { to, reply: Ok(Answer::Outcome(o)) });
            }
        }
    }

    pub(super) fn retrieve(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        tenant: &TenantId,
        request_id: &str,
        out: &mut Vec<Command>,
    ) {
        match self.futures.poll(tenant, request_id, now_ms) {
            Poll::Ready(o) => self.reply(to, Ok(Answer::Outcome(o)), out),
            Poll::Unknown => self.reply(
                to,
                Err(CoordinatorError::NotFound(format!(
                    "request {request_id} not found (unknown, someone else's, or its result expired)"
                ))),
                out,
            ),
            Poll::Pending => {
                let Ok(id) = RequestId::new(request_id) else { return };
                self.polls.entry(id.clone()).or_default().push(to);
                self.poll_of.insert(to, id);
                out.push(Command::ArmTimer {
                    at_ms: now_ms + self.config.long_poll_ms,
                    timer: Timer::PollDeadline(to),
                });
            }
        }
    }

    fn poll_deadline(&mut self, to: ReplyTo, out: &mut Vec<Command>) {
        let Some(request) = self.poll_of.remove(&to) else { return };
        if let Some(waiting) = self.polls.get_mut(&request) {
            waiting.retain(|w| *w != to);
            if waiting.is_empty() {
                self.polls.remove(&request);
            }
        }
        let queue_state = self.queue_state(&request);
        out.push(Command::Reply { to, reply: Ok(Answer::TryAgain { request_id: request, queue_state }) });
    }

    /// What a pending request waits on: its run being rebuilt, no worker, or nothing.
    fn queue_state(&self, request: &RequestId) -> QueueState {
        if self.workers.is_empty() {
            return QueueState::PausedCapacity;
        }
        let recovering = self.runs.values().any(|r| r.replaying > 0 && r.waits_for(request));
        if recovering {
            QueueState::PausedCapacity
        } else {
            QueueState::Active
        }
    }

    /// Remembers a submission reply under `slot`, so a retry gets the same answer.
    pub(super) fn remember(&mut self, request: &RequestId, slot: ReplySlot, reply: &serde_json::Value) {
        self.reply_slots.entry(request.clone()).or_default().push(slot.clone());
        self.replies.insert(slot, reply.clone());
    }

    pub(super) fn checkpoint_dir(&self, path: &TinkerPath) -> PathBuf {
        self.config.data_dir.join("runs").join(&path.run).join(path.kind.segment()).join(&path.name)
    }

    /// Periodic housekeeping at `now_ms`.
    fn tick(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let mut ops = Vec::new();
        for ended in self.sessions.expire(now_ms) {
            if let Some(id) = &ended.session_id {
                ops.push(self.session_row(id.as_str(), now_ms));
            }
            self.end_session(now_ms, &ended.runs, &ended.samplers, &mut ops, out);
        }
        for path in self.catalog.expired(now_ms) {
            self.delete_checkpoint(&path, &mut ops, out);
        }
        for id in self.futures.purge(now_ms) {
            for slot in self.reply_slots.remove(&id).unwrap_or_default() {
                self.replies.remove(&slot);
            }
            ops.push(StoreOp::DeleteFuture { request_id: id.to_string() });
        }
        self.free_idle_samplers(now_ms, out);
        self.persist(ops, vec![], out);
    }

    /// Housekeeping for tests and the simulator: how many long polls wait.
    pub fn polls_waiting(&self) -> usize {
        self.poll_of.len()
    }

    /// How many training runs are in worker memory (or being rebuilt).
    pub fn live_runs(&self) -> usize {
        self.runs.len()
    }

    /// Samplers currently in worker memory.
    pub fn resident_samplers(&self) -> usize {
        self.samplers.values().filter(|s| s.resident).count()
    }
}
