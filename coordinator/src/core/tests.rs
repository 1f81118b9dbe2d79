//! Event-script tests of the core (TigerBeetle style): events at given times in, the exact
//! commands out. No socket, no file, no clock: the script plays the worker and the store.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use runtime::control::{
    BaseModelInfo, Datum, DatumOutput, ErrorCategory, ForwardBackwardResult, FromWorker, Tensor, TensorValues, ToWorker,
};
use serde_json::{json, Value};

use super::api::{Answer, ApiRequest, LoraRequest, QueueState, ReplyTo, SaveRequest, SequencedBody};
use super::engine::{
    CallId, Command, CoordinatorCore, CoreConfig, Event, Generation, SeededIds, Ticket, Timer, WorkerId,
};
use super::futures::Outcome;
use super::ids::TenantId;
use super::sessions::SESSION_EXPIRY_MS;
use crate::error::CoordinatorError;
use crate::store::{Loaded, MemStore, Store, StoreOp};

fn info(name: &str) -> BaseModelInfo {
    BaseModelInfo {
        name: name.into(),
        arch: "llama".into(),
        vocab_size: 100,
        max_context_length: 64,
        tokenizer_dir: None,
    }
}

fn config() -> CoreConfig {
    CoreConfig {
        models: BTreeMap::from([("tiny/llama3".to_string(), info("tiny/llama3"))]),
        data_dir: PathBuf::from("/data"),
        long_poll_ms: 1_000,
        tick_ms: 5_000,
        queue_limit: 3,
        retry_after_s: 2,
        samplers_resident_max: 2,
        sampler_idle_ms: 60_000,
        snapshot_every: 1,
        plan: runtime::plan::Plan::Single,
    }
}

/// A worker joining (its first admission gets generation 1).
fn joined(id: u64) -> Event {
    Event::WorkerJoined {
        worker: WorkerId(id),
        name: format!("w{id}"),
        capacity: crate::core::workers::WorkerCapacity { device: "cpu".into(), cores: 2, memory_bytes_max: None },
    }
}

/// The script: a core, a store it commits into, and the commands it has produced so far.
struct Script {
    core: CoordinatorCore,
    store: MemStore,
    next_reply: u64,
    /// Every reply, by token.
    replies: BTreeMap<u64, Result<Answer, CoordinatorError>>,
    /// Worker calls sent and not yet answered, in order, with the worker they went to.
    sent: Vec<(CallId, WorkerId, ToWorker)>,
    timers: Vec<(u64, Timer)>,
    /// Generations the core admitted workers under.
    generations: BTreeMap<WorkerId, Generation>,
    disconnected: Vec<WorkerId>,
}

impl Script {
    fn new() -> Script {
        Script::from_core(CoordinatorCore::new(config(), Box::new(SeededIds(7))), MemStore::default())
    }

    fn from_core(core: CoordinatorCore, store: MemStore) -> Script {
        let mut s = Script {
            core,
            store,
            next_reply: 1,
            replies: BTreeMap::new(),
            sent: vec![],
            timers: vec![],
            generations: BTreeMap::new(),
            disconnected: vec![],
        };
        s.event(0, joined(0));
        s
    }

    /// Feeds one event; commits what it persists (acknowledging it) and records the rest.
    fn event(&mut self, now: u64, event: Event) -> Vec<Command> {
        let commands = self.core.on_event(now, event);
        let mut all = commands.clone();
        for c in commands {
            match c {
                Command::Persist { ticket, ops } => {
                    self.store.commit(&ops).unwrap();
                    all.extend(self.event(now, Event::Stored { ticket, result: Ok(()) }));
                }
                Command::Reply { to, reply } => {
                    self.replies.insert(to.0, reply);
                }
                Command::Send { call, worker, envelope } => {
                    assert_eq!(Some(&Generation(envelope.generation)), self.generations.get(&worker), "stamped");
                    self.sent.push((call, worker, envelope.body))
                }
                Command::ArmTimer { at_ms, timer } => self.timers.push((at_ms, timer)),
                Command::RemoveDir { .. } => {}
                Command::Admit { worker, generation } => {
                    self.generations.insert(worker, generation);
                }
                Command::Disconnect { worker } => self.disconnected.push(worker),
            }
        }
        all
    }

    fn api(&mut self, now: u64, tenant: &str, request: ApiRequest) -> u64 {
        let to = self.next_reply;
        self.next_reply += 1;
        let tenant = TenantId::new(tenant).unwrap();
        self.event(now, Event::Api { reply: ReplyTo(to), tenant, request });
        to
    }

    fn json(&self, to: u64) -> Value {
        match self.replies.get(&to) {
            Some(Ok(Answer::Json(v))) => v.clone(),
            other => panic!("reply {to}: expected JSON, got {other:?}"),
        }
    }

    fn error(&self, to: u64) -> CoordinatorError {
        match self.replies.get(&to) {
            Some(Err(e)) => e.clone(),
            other => panic!("reply {to}: expected an error, got {other:?}"),
        }
    }

    /// Answers the oldest outstanding worker call with `f(message)`.
    fn worker(&mut self, now: u64, f: impl FnOnce(&ToWorker) -> FromWorker) -> ToWorker {
        assert!(!self.sent.is_empty(), "no worker call outstanding");
        let (call, worker, body) = self.sent.remove(0);
        let reply = f(&body);
        let generation = self.generations[&worker];
        self.event(now, Event::WorkerReplied { call, generation, reply });
        body
    }

    fn session(&mut self, now: u64, tenant: &str) -> String {
        let to = self.api(now, tenant, ApiRequest::CreateSession);
        self.json(to)["session_id"].as_str().unwrap().to_string()
    }

    fn create(&mut self, now: u64, tenant: &str, session: &str, seq: u64) -> (String, String) {
        let lora =
            LoraRequest { rank: 4, seed: Some(3), alpha: None, train_unembed: None, train_mlp: None, train_attn: None };
        let request = ApiRequest::CreateModel {
            session: session.into(),
            model_seq_id: seq,
            base_model: "tiny/llama3".into(),
            lora: Some(lora),
            user_metadata: None,
            idempotency_key: None,
        };
        let to = self.api(now, tenant, request);
        let v = self.json(to);
        (v["model_id"].as_str().unwrap().to_string(), v["request_id"].as_str().unwrap().to_string())
    }

    fn retrieve(&mut self, now: u64, tenant: &str, request: &str) -> u64 {
        self.api(now, tenant, ApiRequest::RetrieveFuture { request_id: request.into() })
    }
}

fn datum(tokens: &[u32]) -> Datum {
    let targets: Vec<i64> = tokens.iter().map(|&t| i64::from(t) + 1).collect();
    let n = targets.len();
    Datum {
        tokens: tokens.to_vec(),
        loss_fn_inputs: BTreeMap::from([(
            "target_tokens".to_string(),
            Tensor { shape: vec![n], values: TensorValues::I64(targets) },
        )]),
        provenance: None,
    }
}

fn fb(model: &str, seq: i64, tokens: &[u32]) -> ApiRequest {
    let req = runtime::wire::FbRequest {
        model_id: model.into(),
        seq_id: seq as i32,
        data: vec![datum(tokens)],
        loss_fn: "cross_entropy".into(),
        loss_config: BTreeMap::new(),
        loss_config_text: BTreeMap::new(),
        forward_only: false,
    };
    ApiRequest::Sequenced {
        model_id: model.into(),
        seq_id: seq,
        idempotency_key: None,
        body: SequencedBody::ForwardBackward(Ok(req)),
    }
}

fn optim(model: &str, seq: i64) -> ApiRequest {
    let adam = runtime::control::AdamConfig {
        learning_rate: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-12,
        weight_decay: 0.0,
        grad_clip_norm: 0.0,
    };
    ApiRequest::Sequenced {
        model_id: model.into(),
        seq_id: seq,
        idempotency_key: None,
        body: SequencedBody::Optim(Ok(adam)),
    }
}

/// A deterministic echo worker: each datum's logprobs are -(token)/100 for its targets.
fn echo(body: &ToWorker) -> FromWorker {
    let answer = |data: &[Datum]| {
        let outputs = data
            .iter()
            .map(|d| {
                let n = d.tokens.len();
                let lp: Vec<f32> = d.tokens.iter().map(|&t| -(t as f32) / 100.0).collect();
                DatumOutput {
                    logprobs: Tensor { shape: vec![n], values: TensorValues::F32(lp.clone()) },
                    elementwise_loss: Tensor { shape: vec![n], values: TensorValues::F32(lp) },
                }
            })
            .collect();
        FromWorker::ForwardBackward(ForwardBackwardResult {
            outputs,
            metrics: BTreeMap::from([("loss:sum".into(), 1.0)]),
        })
    };
    match body {
        ToWorker::ForwardBackward { data, .. } => answer(data),
        ToWorker::ForwardBackwardMany { items } => FromWorker::Each(items.iter().map(|i| answer(&i.data)).collect()),
        ToWorker::OptimStep { .. } => FromWorker::Optim { metrics: BTreeMap::new() },
        ToWorker::SaveState { .. } | ToWorker::ExportPeft { .. } => FromWorker::Saved { bytes: 10 },
        ToWorker::GetGrads { .. } => FromWorker::Grads(runtime::control::GradBuffer { values: vec![0.5, -1.0] }),
        _ => FromWorker::Done,
    }
}

fn run_of(body: &ToWorker) -> String {
    match body {
        ToWorker::ForwardBackward { run, .. } | ToWorker::OptimStep { run, .. } | ToWorker::CreateRun { run, .. } => {
            run.clone()
        }
        ToWorker::SaveState { run, .. } | ToWorker::DropRun { run } => run.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn the_first_event_arms_the_housekeeping_tick_and_a_session_is_acknowledged_only_once_durable() {
    let mut core = CoordinatorCore::new(config(), Box::new(SeededIds(7)));
    let out = core.on_event(0, joined(0));
    assert_eq!(
        out,
        vec![
            Command::ArmTimer { at_ms: 5_000, timer: Timer::Tick },
            Command::Admit { worker: WorkerId(0), generation: Generation(1) }
        ]
    );
    let tenant = TenantId::new("alice").unwrap();
    let out = core.on_event(10, Event::Api { reply: ReplyTo(1), tenant, request: ApiRequest::CreateSession });
    let [Command::Persist { ticket, ops }] = &out[..] else { panic!("expected one persist, got {out:?}") };
    assert!(matches!(&ops[..], [StoreOp::PutSession(row)] if row.id == "sess-1" && row.state == "active"));
    let out = core.on_event(11, Event::Stored { ticket: *ticket, result: Ok(()) });
    assert_eq!(out, vec![Command::Reply { to: ReplyTo(1), reply: Ok(Answer::Json(json!({"session_id": "sess-1"}))) }]);
    // A failed commit is answered as a server error, never as success.
    let tenant = TenantId::new("alice").unwrap();
    let out = core.on_event(12, Event::Api { reply: ReplyTo(2), tenant, request: ApiRequest::CreateSession });
    let [Command::Persist { ticket, .. }] = &out[..] else { panic!("{out:?}") };
    let out = core.on_event(13, Event::Stored { ticket: *ticket, result: Err("disk full".into()) });
    assert!(
        matches!(&out[..], [Command::Reply { to: ReplyTo(2), reply: Err(CoordinatorError::Internal(m)) }] if m.contains("disk full"))
    );
    let _ = Ticket(0);
}

#[test]
fn out_of_order_chunks_run_in_seq_order_and_retries_answer_the_original_request() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, create) = s.create(1, "alice", &session, 0);
    assert_eq!(run_of(&s.worker(2, echo)), model);
    // Chunks 3 and 2 arrive before 1: nothing runs until 1 is there.
    let r3 = s.api(3, "alice", fb(&model, 3, &[3]));
    let r2 = s.api(4, "alice", fb(&model, 2, &[2]));
    assert!(s.sent.is_empty(), "held behind seq 1: {:?}", s.sent);
    let r1 = s.api(5, "alice", fb(&model, 1, &[1]));
    // A retry of seq 2 (lost reply) answers the same request id and runs nothing.
    let retry = s.api(6, "alice", fb(&model, 2, &[2]));
    assert_eq!(s.json(retry)["request_id"], s.json(r2)["request_id"]);
    let mut order = Vec::new();
    while !s.sent.is_empty() {
        let body = s.worker(7, echo);
        if let ToWorker::ForwardBackward { data, .. } = body {
            order.push(data[0].tokens[0]);
        }
    }
    assert_eq!(order, vec![1, 2, 3], "one at a time, in seq_id order");
    for r in [r1, r2, r3] {
        let id = s.json(r)["request_id"].as_str().unwrap().to_string();
        let poll = s.retrieve(8, "alice", &id);
        assert!(matches!(s.replies[&poll], Ok(Answer::Outcome(Outcome::ForwardBackward(_)))));
    }
    let poll = s.retrieve(8, "alice", &create);
    assert!(matches!(&s.replies[&poll], Ok(Answer::Outcome(Outcome::Json(v))) if v["type"] == "create_model"));
}

#[test]
fn two_tenants_interleaved_share_a_step_and_never_see_each_other() {
    let mut s = Script::new();
    let a = s.session(0, "alice");
    let b = s.session(0, "bob");
    let (ma, _) = s.create(1, "alice", &a, 0);
    let (mb, _) = s.create(1, "bob", &b, 0);
    s.worker(2, echo);
    s.worker(2, echo);
    // alice's request goes alone; bob's and alice's next queue while it runs and share one step.
    let a1 = s.api(3, "alice", fb(&ma, 1, &[1]));
    let b1 = s.api(3, "bob", fb(&mb, 1, &[2]));
    assert!(matches!(s.sent[..], [(_, _, ToWorker::ForwardBackward { .. })]), "{:?}", s.sent);
    s.worker(4, echo);
    assert!(matches!(&s.sent[..], [(_, _, ToWorker::ForwardBackward { run, .. })] if *run == mb));
    let a2 = s.api(4, "alice", fb(&ma, 2, &[3]));
    let _ = s.api(4, "alice", optim(&ma, 3));
    s.worker(5, echo);
    let b2 = s.api(5, "bob", fb(&mb, 2, &[4]));
    // alice's fb 2 was sent while bob's was in flight... a step of one; bob's 2 joins the next.
    let kinds: Vec<String> = s.sent.iter().map(|(_, _, b)| run_of(b)).collect();
    assert!(kinds.contains(&ma), "{kinds:?}");
    while !s.sent.is_empty() {
        s.worker(6, echo);
    }
    // Tenant scoping: bob cannot poll alice's request, nor see her run.
    let id = s.json(a1)["request_id"].as_str().unwrap().to_string();
    let poll = s.retrieve(7, "bob", &id);
    assert!(matches!(s.error(poll), CoordinatorError::NotFound(_)));
    let info = s.api(7, "bob", ApiRequest::GetInfo { model_id: ma.clone() });
    assert!(matches!(s.error(info), CoordinatorError::NotFound(_)));
    for (tenant, r) in [("alice", a2), ("bob", b1), ("bob", b2)] {
        let id = s.json(r)["request_id"].as_str().unwrap().to_string();
        let poll = s.retrieve(8, tenant, &id);
        assert!(matches!(s.replies[&poll], Ok(Answer::Outcome(Outcome::ForwardBackward(_)))), "{tenant} {r}");
    }
}

#[test]
fn requests_waiting_together_become_one_multi_tenant_step() {
    let mut s = Script::new();
    let sessions: Vec<String> = (0..3).map(|_| s.session(0, "alice")).collect();
    let models: Vec<String> = sessions.iter().map(|sess| s.create(1, "alice", sess, 0).0).collect();
    while !s.sent.is_empty() {
        s.worker(2, echo);
    }
    for m in &models {
        s.api(3, "alice", fb(m, 1, &[1, 2]));
    }
    // The first goes alone; the other two wait for it and then go as one step (3 is the queue limit here).
    assert_eq!(s.sent.len(), 1);
    s.worker(4, echo);
    match &s.sent[..] {
        [(_, _, ToWorker::ForwardBackwardMany { items })] => {
            let runs: Vec<&str> = items.iter().map(|i| i.run.as_str()).collect();
            assert_eq!(runs, models[1..].iter().map(String::as_str).collect::<Vec<_>>());
        }
        other => panic!("expected one multi-tenant step, got {other:?}"),
    }
}

#[test]
fn a_pending_poll_waits_and_answers_try_again_at_its_deadline_or_the_result_when_done() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    let r = s.api(3, "alice", fb(&model, 1, &[1]));
    let id = s.json(r)["request_id"].as_str().unwrap().to_string();
    let p1 = s.retrieve(10, "alice", &id);
    assert!(!s.replies.contains_key(&p1), "held while pending");
    assert!(s.timers.contains(&(1_010, Timer::PollDeadline(ReplyTo(p1)))));
    s.event(1_010, Event::Timer(Timer::PollDeadline(ReplyTo(p1))));
    assert!(matches!(&s.replies[&p1], Ok(Answer::TryAgain { queue_state: QueueState::Active, .. })));
    let p2 = s.retrieve(1_020, "alice", &id);
    s.worker(1_030, echo);
    assert!(matches!(s.replies[&p2], Ok(Answer::Outcome(Outcome::ForwardBackward(_)))), "woken by the completion");
    // Its deadline firing later changes nothing.
    let before = s.replies.len();
    s.event(2_020, Event::Timer(Timer::PollDeadline(ReplyTo(p2))));
    assert_eq!(s.replies.len(), before);
}

#[test]
fn sessions_expire_without_heartbeats_and_their_runs_are_dropped() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    let hb = s.api(100_000, "alice", ApiRequest::Heartbeat { session: session.clone() });
    assert_eq!(s.json(hb), json!({}));
    s.event(100_000 + SESSION_EXPIRY_MS - 1, Event::Timer(Timer::Tick));
    assert!(s.sent.is_empty());
    s.event(100_000 + SESSION_EXPIRY_MS, Event::Timer(Timer::Tick));
    assert!(matches!(&s.sent[..], [(_, _, ToWorker::DropRun { run })] if *run == model), "{:?}", s.sent);
    let hb = s.api(100_000 + SESSION_EXPIRY_MS + 1, "alice", ApiRequest::Heartbeat { session: session.clone() });
    assert!(matches!(s.error(hb), CoordinatorError::Gone(_)));
    let late = s.api(100_000 + SESSION_EXPIRY_MS + 2, "alice", fb(&model, 1, &[1]));
    assert!(matches!(s.error(late), CoordinatorError::BadRequest(m) if m.contains("Expired")));
    let rows = s.store.load().unwrap().sessions;
    assert_eq!(rows[0].state, "expired", "the expiry is durable");
}

#[test]
fn a_checkpoint_past_its_ttl_is_deleted_durably_at_the_next_tick() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    let save = SaveRequest {
        path: Some("x".into()),
        overwrite: false,
        ttl_seconds: Some(3600),
        user_metadata: None,
        sampling_session_seq_id: None,
        kind: None,
        age_encryption_recipients: false,
    };
    let r = s.api(
        10,
        "alice",
        ApiRequest::Sequenced {
            model_id: model.clone(),
            seq_id: 1,
            idempotency_key: None,
            body: SequencedBody::SaveState(save),
        },
    );
    assert!(s.json(r)["request_id"].is_string());
    s.worker(11, echo);
    assert_eq!(s.store.load().unwrap().checkpoints.len(), 1);
    s.event(11 + 3_600_000 - 1, Event::Timer(Timer::Tick));
    assert_eq!(s.store.load().unwrap().checkpoints.len(), 1);
    let out = s.event(11 + 3_600_000, Event::Timer(Timer::Tick));
    assert!(out.iter().any(|c| matches!(c, Command::RemoveDir { dir } if dir.ends_with("weights/x"))), "{out:?}");
    assert!(s.store.load().unwrap().checkpoints.is_empty());
    let list = s.api(11 + 3_600_001, "alice", ApiRequest::ListRunCheckpoints { run: model });
    assert_eq!(s.json(list)["checkpoints"], json!([]));
}

#[test]
fn beyond_the_queue_limit_new_work_is_refused_with_retry_after_and_nothing_is_lost() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    let ok: Vec<u64> = (1..=3).map(|seq| s.api(3, "alice", fb(&model, seq, &[1]))).collect();
    let refused = s.api(3, "alice", fb(&model, 4, &[1]));
    assert!(matches!(s.error(refused), CoordinatorError::Busy { retry_after_s: 2, .. }));
    // The refused seq_id was not consumed: once the queue drains, the same request is accepted.
    while !s.sent.is_empty() {
        s.worker(4, echo);
    }
    let again = s.api(5, "alice", fb(&model, 4, &[1]));
    assert!(s.json(again)["request_id"].is_string());
    // Requests held behind a gap count against the limit, but the one filling the gap is never
    // refused (else the held ones could never drain).
    let held: Vec<u64> = [7, 8].iter().map(|&seq| s.api(6, "alice", fb(&model, seq, &[1]))).collect();
    let over = s.api(6, "alice", fb(&model, 9, &[1]));
    assert!(matches!(s.error(over), CoordinatorError::Busy { .. }));
    for seq in [5, 6] {
        let gap = s.api(6, "alice", fb(&model, seq, &[1]));
        assert!(s.json(gap)["request_id"].is_string(), "seq {seq} fills the gap: accepted over the limit");
    }
    while !s.sent.is_empty() {
        s.worker(7, echo);
    }
    for r in held {
        assert!(s.json(r)["request_id"].is_string());
    }
    for r in ok {
        assert!(s.json(r)["request_id"].is_string());
    }
}

#[test]
fn an_unset_lora_seed_is_drawn_from_the_id_source_and_recorded() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let lora = LoraRequest { rank: 4, seed: None, alpha: None, train_unembed: None, train_mlp: None, train_attn: None };
    let request = ApiRequest::CreateModel {
        session,
        model_seq_id: 0,
        base_model: "tiny/llama3".into(),
        lora: Some(lora),
        user_metadata: None,
        idempotency_key: None,
    };
    s.api(1, "alice", request);
    let ToWorker::CreateRun { lora, .. } = s.worker(2, echo) else { panic!("expected CreateRun") };
    assert_ne!(lora.seed, 0);
    let rows = s.store.load().unwrap().runs;
    let record: super::catalog::RunRecord = serde_json::from_str(&rows[0].record_json).unwrap();
    assert_eq!(record.lora.seed, lora.seed, "the drawn seed is durable, so a replay creates the same A");
}

#[test]
fn a_restart_rebuilds_the_run_from_its_snapshot_and_journal_and_finishes_what_was_acknowledged() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    s.api(3, "alice", fb(&model, 1, &[1]));
    s.worker(4, echo);
    s.api(5, "alice", optim(&model, 2));
    s.worker(6, echo);
    // After the optim step the run is snapshotted and its journal truncated.
    let ToWorker::SaveState { dir, optimizer: true, .. } = s.worker(7, echo) else { panic!("expected a snapshot") };
    assert!(dir.ends_with(format!("snapshots/{model}/2")));
    assert!(s.store.load().unwrap().journal.iter().all(|r| r.run != model || r.seq_id > 2));
    // Two more requests are acknowledged; the first finishes, the second is still queued: crash.
    let r3 = s.api(8, "alice", fb(&model, 3, &[3]));
    let r4 = s.api(8, "alice", fb(&model, 4, &[4]));
    s.worker(9, echo);
    let done = s.json(r3)["request_id"].as_str().unwrap().to_string();
    let pending = s.json(r4)["request_id"].as_str().unwrap().to_string();
    let loaded: Loaded = s.store.load().unwrap();
    // Usage: the two finished forward_backward requests of one token each and the optim step.
    assert_eq!(loaded.usage["alice"]["forward_backward_tokens"], 2);
    assert_eq!(loaded.usage["alice"]["optim_steps"], 1);

    let core = CoordinatorCore::restore(config(), Box::new(SeededIds(8)), &loaded, 20).unwrap();
    let mut t = Script::from_core(core, s.store.clone());
    // Rebuild: load the snapshot, replay seq 3 (its result is kept), then run seq 4 for real.
    let ToWorker::LoadState { dir: loaded_dir, optimizer: true, .. } = t.worker(21, echo) else {
        panic!("expected LoadState")
    };
    assert_eq!(loaded_dir, dir);
    let hb = t.api(21, "alice", ApiRequest::Heartbeat { session: session.clone() });
    assert_eq!(t.json(hb), json!({}), "the session survived the restart");
    let poll = t.retrieve(22, "alice", &pending);
    t.event(22 + 1_000, Event::Timer(Timer::PollDeadline(ReplyTo(poll))));
    assert!(matches!(&t.replies[&poll], Ok(Answer::TryAgain { queue_state: QueueState::PausedCapacity, .. })));
    let ToWorker::ForwardBackward { data, .. } = t.worker(1_030, echo) else { panic!("replay of seq 3") };
    assert_eq!(data[0].tokens, vec![3]);
    let ToWorker::ForwardBackward { data, .. } = t.worker(1_031, echo) else { panic!("seq 4") };
    assert_eq!(data[0].tokens, vec![4]);
    for id in [&done, &pending] {
        let poll = t.retrieve(1_040, "alice", id);
        assert!(matches!(t.replies[&poll], Ok(Answer::Outcome(Outcome::ForwardBackward(_)))), "{id}");
    }
    // The next seq_id is accepted, a retry of an old one answers the original id.
    let retry = t.api(1_050, "alice", fb(&model, 4, &[4]));
    assert_eq!(t.json(retry)["request_id"], json!(pending));
    let r5 = t.api(1_050, "alice", fb(&model, 5, &[5]));
    assert!(t.json(r5)["request_id"].is_string());
    // The replayed seq 3 is not counted twice; seq 4 ran once, for real.
    assert_eq!(t.store.load().unwrap().usage["alice"]["forward_backward_tokens"], 3);
}

#[test]
fn ephemeral_samplers_beyond_the_resident_limit_are_freed_and_rebuilt_on_use() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    let mut samplers = Vec::new();
    for seq in 1..=3 {
        let save = SaveRequest {
            path: None,
            overwrite: false,
            ttl_seconds: None,
            user_metadata: None,
            sampling_session_seq_id: Some(seq),
            kind: None,
            age_encryption_recipients: false,
        };
        let r = s.api(
            10 * seq,
            "alice",
            ApiRequest::Sequenced {
                model_id: model.clone(),
                seq_id: seq as i64,
                idempotency_key: None,
                body: SequencedBody::SaveForSampler(save),
            },
        );
        let id = s.json(r)["request_id"].as_str().unwrap().to_string();
        assert!(matches!(s.worker(10 * seq + 1, echo), ToWorker::SaveState { optimizer: false, .. }));
        assert!(matches!(s.worker(10 * seq + 2, echo), ToWorker::CreateSampler { .. }));
        let poll = s.retrieve(10 * seq + 3, "alice", &id);
        let Ok(Answer::Outcome(Outcome::Json(v))) = &s.replies[&poll] else { panic!("{:?}", s.replies[&poll]) };
        samplers.push(v["sampling_session_id"].as_str().unwrap().to_string());
    }
    // The limit is 2: making the third freed the least recently used (the first).
    assert!(
        s.sent.iter().any(|(_, _, b)| matches!(b, ToWorker::DropSampler { sampler } if *sampler == samplers[0])),
        "{:?}",
        s.sent
    );
    while !s.sent.is_empty() {
        s.worker(40, echo);
    }
    assert_eq!(s.core.resident_samplers(), 2);
    // Sampling from the freed one rebuilds it from its saved adapter first.
    let req: super::sampling::SampleRequestJson = serde_json::from_value(json!({
        "sampling_session_id": samplers[0], "seq_id": 1, "num_samples": 1,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 2, "temperature": 0.0}
    }))
    .unwrap();
    let r = s.api(50, "alice", ApiRequest::Sample { request: Box::new(req), idempotency_key: None });
    assert!(s.json(r)["request_id"].is_string());
    let ToWorker::CreateSampler { sampler, adapter, .. } = s.worker(51, echo) else { panic!("expected a rebuild") };
    assert_eq!(sampler, samplers[0]);
    assert!(
        matches!(adapter, runtime::control::SamplerAdapter::Dir(d) if d.ends_with(format!("samplers/{}", samplers[0])))
    );
    let mut saw_sample = false;
    while !s.sent.is_empty() {
        let body = s.worker(52, |b| match b {
            ToWorker::Sample(_) => FromWorker::Failed { category: ErrorCategory::User, message: "test".into() },
            other => echo(other),
        });
        saw_sample |= matches!(body, ToWorker::Sample(_));
    }
    assert!(saw_sample, "the sample ran once its sampler was back");
    assert!(s.core.resident_samplers() <= 2);
}

#[test]
fn provenance_spans_must_name_sequences_this_tenant_sampled() {
    use runtime::control::{Provenance, ProvenanceSpan, SpanSource};
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    let sampler = s.api(
        3,
        "alice",
        ApiRequest::CreateSampler {
            session: session.clone(),
            sampling_session_seq_id: 0,
            model_path: None,
            base_model: Some("tiny/llama3".into()),
        },
    );
    s.worker(4, echo);
    let sampler = s.json(sampler)["sampling_session_id"].as_str().unwrap().to_string();
    let req: super::sampling::SampleRequestJson = serde_json::from_value(json!({
        "sampling_session_id": sampler, "seq_id": 1, "num_samples": 2,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": 3, "temperature": 0.0}
    }))
    .unwrap();
    let r = s.api(5, "alice", ApiRequest::Sample { request: Box::new(req), idempotency_key: None });
    let ids: Vec<String> =
        s.json(r)["sample_sequence_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    s.worker(6, |_| {
        let seq = runtime::control::SampledSequence {
            tokens: vec![5, 6, 7],
            logprobs: vec![-0.1; 3],
            stop_reason: runtime::control::StopReason::Length,
            topk_logprobs: None,
        };
        FromWorker::Sampled(runtime::control::SampleResult {
            sequences: vec![seq.clone(), seq],
            prompt_logprobs: None,
            topk_prompt_logprobs: None,
        })
    });
    // A datum of 4 tokens: 2 from the prompt of sequence 1, 2 sampled; targets likewise.
    let with_spans = |sequence: &str, sampled_offset: u64| {
        let span =
            |source, offset, length| ProvenanceSpan { source, sequence_id: sequence.to_string(), offset, length };
        let tiling = vec![span(SpanSource::Prompt, 0, 2), span(SpanSource::Sampled, sampled_offset, 2)];
        let mut d = datum(&[1, 2, 5, 6]);
        d.provenance = Some(Provenance { model_input: tiling.clone(), loss_fn_inputs: tiling });
        d
    };
    let fb_with = |seq: i64, d: Datum| {
        let req = runtime::wire::FbRequest {
            model_id: model.clone(),
            seq_id: seq as i32,
            data: vec![d],
            loss_fn: "cross_entropy".into(),
            loss_config: BTreeMap::new(),
            loss_config_text: BTreeMap::new(),
            forward_only: false,
        };
        ApiRequest::Sequenced {
            model_id: model.clone(),
            seq_id: seq,
            idempotency_key: None,
            body: SequencedBody::ForwardBackward(Ok(req)),
        }
    };
    let cases = [
        (with_spans(&ids[1], 0), None),
        (with_spans("req-nope-1:0", 0), Some("is not a sequence this tenant sampled")),
        (with_spans(&format!("{}:2", ids[0].rsplit_once(':').unwrap().0), 0), Some("sampled 2 sequences")),
        (with_spans(&ids[0], 2), Some("past its 3 sampled tokens")),
    ];
    for (i, (d, refusal)) in cases.into_iter().enumerate() {
        let seq = i as i64 + 1;
        let r = s.api(10, "alice", fb_with(seq, d));
        let id = s.json(r)["request_id"].as_str().unwrap().to_string();
        while !s.sent.is_empty() {
            s.worker(11, echo);
        }
        let poll = s.retrieve(12, "alice", &id);
        match (refusal, &s.replies[&poll]) {
            (None, Ok(Answer::Outcome(Outcome::ForwardBackward(_)))) => {}
            (Some(why), Ok(Answer::Outcome(Outcome::Failed { category: ErrorCategory::User, message }))) => {
                assert!(message.contains(why), "case {i}: {message}");
            }
            (_, other) => panic!("case {i}: {other:?}"),
        }
    }
    // Another tenant cannot name alice's sequences.
    let bob = s.session(20, "bob");
    let (bob_model, _) = s.create(21, "bob", &bob, 0);
    s.worker(22, echo);
    let mut d = with_spans(&ids[0], 0);
    d.tokens = vec![1, 2, 5, 6];
    let req = runtime::wire::FbRequest {
        model_id: bob_model.clone(),
        seq_id: 1,
        data: vec![d],
        loss_fn: "cross_entropy".into(),
        loss_config: BTreeMap::new(),
        loss_config_text: BTreeMap::new(),
        forward_only: false,
    };
    let r = s.api(
        23,
        "bob",
        ApiRequest::Sequenced {
            model_id: bob_model,
            seq_id: 1,
            idempotency_key: None,
            body: SequencedBody::ForwardBackward(Ok(req)),
        },
    );
    let id = s.json(r)["request_id"].as_str().unwrap().to_string();
    let poll = s.retrieve(24, "bob", &id);
    assert!(
        matches!(&s.replies[&poll], Ok(Answer::Outcome(Outcome::Failed { category: ErrorCategory::User, message })) if message.contains("not a sequence this tenant sampled")),
        "{:?}",
        s.replies[&poll]
    );
}

#[test]
fn with_snapshots_every_two_steps_a_restart_replays_everything_since_the_last_one() {
    let cfg = CoreConfig { snapshot_every: 2, ..config() };
    let mut s = Script::from_core(CoordinatorCore::new(cfg.clone(), Box::new(SeededIds(7))), MemStore::default());
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    s.api(3, "alice", fb(&model, 1, &[1]));
    s.worker(4, echo);
    s.api(5, "alice", optim(&model, 2));
    s.worker(6, echo);
    assert!(s.sent.is_empty(), "no snapshot after the first step: {:?}", s.sent);
    s.api(7, "alice", fb(&model, 3, &[3]));
    s.worker(8, echo);
    let loaded = s.store.load().unwrap();
    let kinds: Vec<&str> = loaded.journal.iter().filter(|r| r.run == model).map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["create", "forward_backward", "optim_step", "forward_backward"]);

    // Crash here: the rebuild replays all four, in order, results kept.
    let core = CoordinatorCore::restore(cfg.clone(), Box::new(SeededIds(8)), &loaded, 20).unwrap();
    let mut t = Script::from_core(core, s.store.clone());
    let mut replayed = Vec::new();
    while !t.sent.is_empty() {
        replayed.push(match t.worker(21, echo) {
            ToWorker::CreateRun { .. } => "create".to_string(),
            ToWorker::ForwardBackward { data, .. } => format!("fb{}", data[0].tokens[0]),
            ToWorker::OptimStep { .. } => "optim".to_string(),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(replayed, ["create", "fb1", "optim", "fb3"]);
    // The second step is due for a snapshot, counted across the restart from the replayed one.
    t.api(30, "alice", optim(&model, 4));
    t.worker(31, echo);
    assert!(
        matches!(&t.sent[..], [(_, _, ToWorker::SaveState { dir, optimizer: true, .. })] if dir.ends_with(format!("snapshots/{model}/4"))),
        "{:?}",
        t.sent
    );
    t.worker(32, echo);
    assert!(t.store.load().unwrap().journal.iter().all(|r| r.run != model), "truncated through seq 4");
}

#[test]
fn inflight_samplers_and_encrypted_exports_are_refused_by_name_and_consume_their_seq_id() {
    let mut s = Script::new();
    let session = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &session, 0);
    s.worker(2, echo);
    let base = SaveRequest {
        path: None,
        overwrite: false,
        ttl_seconds: None,
        user_metadata: None,
        sampling_session_seq_id: Some(1),
        kind: Some("inflight".into()),
        age_encryption_recipients: false,
    };
    let external = SaveRequest { path: Some("x".into()), kind: None, age_encryption_recipients: true, ..base.clone() };
    let cases = [
        (SequencedBody::SaveForSampler(base), "kind=\"inflight\""),
        (SequencedBody::SaveExternal(external), "age_encryption_recipients"),
    ];
    for (seq, (body, named)) in cases.into_iter().enumerate() {
        let seq = seq as i64 + 1;
        let r = s.api(
            3,
            "alice",
            ApiRequest::Sequenced { model_id: model.clone(), seq_id: seq, idempotency_key: None, body },
        );
        let id = s.json(r)["request_id"].as_str().unwrap().to_string();
        let poll = s.retrieve(4, "alice", &id);
        match &s.replies[&poll] {
            Ok(Answer::Outcome(Outcome::Failed { category: ErrorCategory::User, message })) => {
                assert!(message.contains(named), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(s.sent.is_empty(), "nothing reached the worker: {:?}", s.sent);
    let next = s.api(5, "alice", optim(&model, 3));
    assert!(s.json(next)["request_id"].is_string(), "the refused requests consumed seq 1 and 2");
}

#[test]
fn runs_spread_over_workers_and_each_step_goes_to_the_worker_holding_its_runs() {
    let mut s = Script::new();
    s.event(0, joined(1));
    assert_eq!(s.generations[&WorkerId(1)], Generation(2), "each admission gets a fresh generation");
    let sessions: Vec<String> = (0..4).map(|_| s.session(0, "alice")).collect();
    let models: Vec<String> = sessions.iter().map(|sess| s.create(1, "alice", sess, 0).0).collect();
    // The least-loaded member takes each new run: 0, 1, 0, 1.
    let placed: Vec<WorkerId> = s.sent.iter().map(|(_, w, _)| *w).collect();
    assert_eq!(placed, vec![WorkerId(0), WorkerId(1), WorkerId(0), WorkerId(1)]);
    while !s.sent.is_empty() {
        s.worker(2, echo);
    }
    for m in &models {
        s.api(3, "alice", fb(m, 1, &[1, 2]));
    }
    // One step per worker in flight; a step never mixes runs of two workers.
    let first: Vec<(WorkerId, String)> = s.sent.iter().map(|(_, w, b)| (*w, run_of(b))).collect();
    assert_eq!(first, vec![(WorkerId(0), models[0].clone()), (WorkerId(1), models[1].clone())]);
    s.worker(4, echo);
    s.worker(4, echo);
    for (_, w, body) in &s.sent {
        let ToWorker::ForwardBackward { run, .. } = body else { panic!("expected lone steps, got {body:?}") };
        let expected = if run == &models[2] { WorkerId(0) } else { WorkerId(1) };
        assert_eq!(*w, expected, "{run}");
    }
}

#[test]
fn a_lost_worker_fails_what_it_ran_naming_it_and_its_late_replies_change_nothing() {
    let mut s = Script::new();
    s.event(0, joined(1));
    let a = s.session(0, "alice");
    let b = s.session(0, "alice");
    let (run_a, _) = s.create(1, "alice", &a, 0);
    let (run_b, _) = s.create(1, "alice", &b, 0);
    while !s.sent.is_empty() {
        s.worker(2, echo);
    }
    let fb_a = s.api(3, "alice", fb(&run_a, 1, &[1, 2]));
    let fb_b = s.api(3, "alice", fb(&run_b, 1, &[3]));
    let req_b = s.json(fb_b)["request_id"].as_str().unwrap().to_string();
    let req_a = s.json(fb_a)["request_id"].as_str().unwrap().to_string();
    // Worker 1 (run b's) is lost while its step is in flight.
    let (late_call, late_worker, _) = s.sent.iter().find(|(_, w, _)| *w == WorkerId(1)).cloned().unwrap();
    let late_generation = s.generations[&late_worker];
    s.sent.retain(|(_, w, _)| *w != WorkerId(1));
    s.event(4, Event::WorkerLost { worker: WorkerId(1) });
    assert_eq!(s.disconnected, vec![WorkerId(1)]);
    let poll = s.retrieve(5, "alice", &req_b);
    match &s.replies[&poll] {
        Ok(Answer::Outcome(Outcome::Failed { category: ErrorCategory::Server, message })) => {
            assert!(message.contains("worker w1 (id 1) was lost"), "{message}")
        }
        other => panic!("expected a server failure naming the worker, got {other:?}"),
    }
    // Its late answer, once it comes, is refused by generation and changes nothing.
    let late =
        s.event(6, Event::WorkerReplied { call: late_call, generation: late_generation, reply: FromWorker::Done });
    assert!(late.is_empty(), "{late:?}");
    // The run that lived there fails further work with what to do; the other run goes on.
    let next_b = s.api(7, "alice", optim(&run_b, 2));
    let next_b = s.json(next_b)["request_id"].as_str().unwrap().to_string();
    let poll = s.retrieve(8, "alice", &next_b);
    assert!(
        matches!(&s.replies[&poll], Ok(Answer::Outcome(Outcome::Failed { message, .. })) if message.contains("last checkpoint")),
        "{:?}",
        s.replies[&poll]
    );
    s.worker(9, echo);
    let poll = s.retrieve(10, "alice", &req_a);
    assert!(matches!(s.replies[&poll], Ok(Answer::Outcome(Outcome::ForwardBackward(_)))));
    // New runs go to the remaining member only.
    let c = s.session(11, "alice");
    s.create(12, "alice", &c, 0);
    assert!(s.sent.iter().all(|(_, w, _)| *w == WorkerId(0)), "{:?}", s.sent);
}

#[test]
fn a_reply_stamped_with_another_generation_is_refused_and_the_call_stays_outstanding() {
    let mut s = Script::new();
    let sess = s.session(0, "alice");
    s.create(1, "alice", &sess, 0);
    let (call, worker, body) = s.sent[0].clone();
    let generation = s.generations[&worker];
    let stale = Generation(generation.0 - 1);
    let out = s.event(2, Event::WorkerReplied { call, generation: stale, reply: echo(&body) });
    assert!(out.is_empty(), "a stale generation changes nothing: {out:?}");
    let out = s.event(3, Event::WorkerReplied { call, generation, reply: echo(&body) });
    assert!(!out.is_empty(), "the same reply with the worker's generation completes the call");
}

/// What a call was, for chain tests: its kind and the worker it went to.
fn call_kind(body: &ToWorker) -> String {
    match body {
        ToWorker::ForwardBackward { data, .. } => format!("fb{}", data.len()),
        ToWorker::GetGrads { .. } => "get".into(),
        ToWorker::SetGrads { .. } => "set".into(),
        ToWorker::CreateRun { .. } => "create".into(),
        ToWorker::OptimStep { .. } => "optim".into(),
        other => format!("{other:?}").chars().take(12).collect(),
    }
}

fn dp_script() -> Script {
    let cfg = CoreConfig { plan: runtime::plan::Plan::DataParallel { replicas: 2 }, ..config() };
    let mut s = Script::from_core(CoordinatorCore::new(cfg, Box::new(SeededIds(7))), MemStore::default());
    s.event(0, joined(1));
    s
}

#[test]
fn a_data_parallel_run_fans_out_its_state_and_chains_its_forward_backward_in_datum_order() {
    let mut s = dp_script();
    let sess = s.session(0, "alice");
    let (model, create) = s.create(1, "alice", &sess, 0);
    let fanout: Vec<(WorkerId, String)> = s.sent.iter().map(|(_, w, b)| (*w, call_kind(b))).collect();
    assert_eq!(fanout, vec![(WorkerId(0), "create".into()), (WorkerId(1), "create".into())]);
    s.worker(2, echo);
    let poll = s.retrieve(2, "alice", &create);
    assert!(!s.replies.contains_key(&poll), "the create waits for every replica");
    s.worker(2, echo);
    assert!(matches!(&s.replies[&poll], Ok(Answer::Outcome(Outcome::Json(v))) if v["type"] == "create_model"));

    let fb_reply = s.api(4, "alice", fb(&model, 1, &[1, 2]));
    let mut steps = vec![];
    while !s.sent.is_empty() {
        let (_, w, b) = s.sent[0].clone();
        steps.push((w.0, call_kind(&b)));
        s.worker(5, echo);
    }
    // One datum: replica 0 runs it, then the total goes to replica 1.
    assert_eq!(
        steps,
        vec![(0, "get".to_string()), (0, "fb1".into()), (0, "get".into()), (1, "set".into())],
        "{steps:?}"
    );
    let request = s.json(fb_reply)["request_id"].as_str().unwrap().to_string();
    let poll = s.retrieve(6, "alice", &request);
    assert!(matches!(s.replies[&poll], Ok(Answer::Outcome(Outcome::ForwardBackward(ref r))) if r.outputs.len() == 1));

    // An optim step goes to both replicas.
    s.api(7, "alice", optim(&model, 2));
    let optims: Vec<(u64, String)> = s.sent.iter().map(|(_, w, b)| (w.0, call_kind(b))).collect();
    assert_eq!(optims, vec![(0, "optim".to_string()), (1, "optim".into())]);
}

#[test]
fn a_failed_chain_part_puts_the_previous_gradient_total_back_on_every_replica() {
    let mut s = dp_script();
    let sess = s.session(0, "alice");
    let (model, _) = s.create(1, "alice", &sess, 0);
    s.worker(2, echo);
    s.worker(2, echo);
    let mut request = fb(&model, 1, &[1, 2]);
    if let ApiRequest::Sequenced { body: SequencedBody::ForwardBackward(Ok(req)), .. } = &mut request {
        let d = req.data[0].clone();
        req.data = vec![d.clone(), d.clone(), d];
    } else {
        panic!("fb() builds a sequenced forward_backward");
    }
    let reply = s.api(3, "alice", request);
    let request_id = s.json(reply)["request_id"].as_str().unwrap().to_string();
    let mut steps = vec![];
    while !s.sent.is_empty() {
        let (_, w, b) = s.sent[0].clone();
        let kind = call_kind(&b);
        steps.push((w.0, kind.clone()));
        if w == WorkerId(1) && kind.starts_with("fb") {
            s.worker(4, |_| FromWorker::Failed { category: ErrorCategory::User, message: "bad datum".into() });
        } else {
            s.worker(4, echo);
        }
    }
    assert_eq!(
        steps,
        vec![
            (0, "get".to_string()),
            (0, "fb2".into()),
            (0, "get".into()),
            (1, "set".into()),
            (1, "fb1".into()),
            (0, "set".into()),
            (1, "set".into()),
        ],
        "the total from before goes back to both replicas"
    );
    let poll = s.retrieve(5, "alice", &request_id);
    assert!(
        matches!(&s.replies[&poll], Ok(Answer::Outcome(Outcome::Failed { message, .. })) if message == "bad datum")
    );
}

#[test]
fn a_data_parallel_result_nobody_polled_yet_survives_the_next_tick() {
    // Late enough that a result stamped at time 0 would look more than a day old.
    const T: u64 = 2 * 24 * 3600 * 1000;
    let mut s = dp_script();
    let sess = s.session(T, "alice");
    let (model, _) = s.create(T, "alice", &sess, 0);
    s.worker(T, echo);
    s.worker(T, echo);
    let reply = s.api(T, "alice", fb(&model, 1, &[1, 2]));
    let request = s.json(reply)["request_id"].as_str().unwrap().to_string();
    while !s.sent.is_empty() {
        s.worker(T, echo);
    }
    s.event(T + 5_000, Event::Timer(Timer::Tick));
    let poll = s.retrieve(T + 5_001, "alice", &request);
    assert!(matches!(s.replies[&poll], Ok(Answer::Outcome(Outcome::ForwardBackward(_)))), "{:?}", s.replies[&poll]);
}
