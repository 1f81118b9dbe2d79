//! The core's handling of API requests about sessions and training runs: create a session, beat,
//! finish; create a run (fresh or from a checkpoint); and every request ordered by a run's
//! `seq_id` (forward_backward, optim_step, save_*, load). A request that fails validation still
//! consumes its `seq_id` and fails its future with category `user` (design §4); synchronous
//! errors are for what has no `seq_id` to consume.

use runtime::control::BaseModelInfo;
use runtime::lora::LORA_ALPHA_DEFAULT;
use runtime::wire::FbRequest as WireFbRequest;
use runtime::LoraConfig;
use serde_json::json;

use super::api::{Answer, ApiRequest, LoraRequest, ReplyTo, SaveRequest, SequencedBody};
use super::catalog::RunRecord;
use super::engine::{Command, CoordinatorCore, ReplySlot};
use super::ids::{CheckpointKind, CheckpointName, RequestId, RunId, SamplerId, SessionId, TenantId, TinkerPath};
use super::jobs::{run_row, Action, Job, LiveRun};
use super::sequencer::Submitted;
use super::sessions::{SessionRefusal, SessionState};
use crate::error::{invalid, CoordinatorError};
use crate::store::{JournalRow, SessionRow, StoreOp};

/// Shortest and longest checkpoint TTL the SDK documents.
const TTL_SECONDS_MIN: i64 = 3600;
const TTL_SECONDS_MAX: i64 = 10 * 365 * 24 * 3600;

pub(super) fn ttl_ms(ttl_seconds: Option<i64>) -> Result<Option<u64>, CoordinatorError> {
    match ttl_seconds {
        None => Ok(None),
        Some(s) if (TTL_SECONDS_MIN..=TTL_SECONDS_MAX).contains(&s) => Ok(Some(s as u64 * 1000)),
        Some(s) => Err(invalid(format!(
            "ttl_seconds: {s} is not in {TTL_SECONDS_MIN}..={TTL_SECONDS_MAX} (or null for no expiry)"
        ))),
    }
}

/// Maps a refused session to its error.
pub(super) fn session_error(id: &str, refusal: SessionRefusal) -> CoordinatorError {
    match refusal {
        SessionRefusal::Unknown => CoordinatorError::NotFound(format!("session {id} not found")),
        SessionRefusal::Gone(state) => {
            CoordinatorError::Gone(format!("session {id} is {state:?}; create a new ServiceClient to continue"))
        }
    }
}

pub(super) fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Active => "active",
        SessionState::Finished => "finished",
        SessionState::Expired => "expired",
    }
}

fn idem_slot(tenant: &TenantId, key: &str) -> ReplySlot {
    ReplySlot::Idempotency { tenant: tenant.clone(), key: key.to_string() }
}

/// Checks a decoded forward_backward against the run's base model.
fn check_forward_backward(info: Option<&BaseModelInfo>, req: &WireFbRequest) -> Result<(), CoordinatorError> {
    let info = info.ok_or(invalid("the run's base model is no longer served"))?;
    if let Some(key) = req.loss_config_text.keys().next() {
        return Err(invalid(format!(
            "loss_fn_config_v2[{key:?}] is text; custom server-side losses are not supported"
        )));
    }
    for (i, d) in req.data.iter().enumerate() {
        if d.tokens.len() > info.max_context_length {
            return Err(invalid(format!(
                "data[{i}].model_input has {} tokens, above {}'s context length {}",
                d.tokens.len(),
                info.name,
                info.max_context_length
            )));
        }
        if let Some(t) = d.tokens.iter().find(|&&t| t as usize >= info.vocab_size) {
            return Err(invalid(format!(
                "data[{i}].model_input: token {t} is not below the vocabulary size {}",
                info.vocab_size
            )));
        }
    }
    Ok(())
}

/// Checks that every sequence a datum's provenance spans name is one this tenant sampled here:
/// `<sample request id>:<i>` with `i` below the request's sample count and, once sampled, each
/// sampled span within that sequence's tokens.
fn check_provenance(
    futures: &super::futures::Futures,
    tenant: &TenantId,
    data: &[runtime::control::Datum],
) -> Result<(), CoordinatorError> {
    use runtime::control::SpanSource;
    for (i, d) in data.iter().enumerate() {
        let Some(p) = &d.provenance else { continue };
        runtime::wire::spans::validate(d).map_err(|e| invalid(format!("data[{i}].{e}")))?;
        for (field, spans) in [("model_input_spans", &p.model_input), ("loss_fn_input_spans", &p.loss_fn_inputs)] {
            for (j, span) in spans.iter().enumerate() {
                let at = format!("data[{i}].{field}[{j}].sequence_id {:?}", span.sequence_id);
                let unknown = || {
                    format!(
                        "{at} is not a sequence this tenant sampled here (sample_sequence_ids look like \
                         <request id>:<n>, and a sample's results are kept 10 minutes after they are fetched)"
                    )
                };
                let (request, n) = span.sequence_id.rsplit_once(':').ok_or_else(|| invalid(unknown()))?;
                let n: usize = n.parse().map_err(|_| invalid(unknown()))?;
                match futures.outcome_of(tenant, request) {
                    None => return Err(invalid(unknown())),
                    Some(Some(super::futures::Outcome::Sample(r))) => {
                        let seq = r.sequences.get(n).ok_or_else(|| {
                            invalid(format!("{at}: that request sampled {} sequences", r.sequences.len()))
                        })?;
                        if span.source == SpanSource::Sampled && span.offset + span.length > seq.tokens.len() as u64 {
                            return Err(invalid(format!(
                                "{at}: offset {} + length {} is past its {} sampled tokens",
                                span.offset,
                                span.length,
                                seq.tokens.len()
                            )));
                        }
                    }
                    Some(Some(super::futures::Outcome::Failed { .. })) => {
                        return Err(invalid(format!("{at} names a sample request that failed")))
                    }
                    Some(Some(_)) => return Err(invalid(unknown())),
                    // Still sampling: nothing to compare the lengths with yet.
                    Some(None) => {}
                }
            }
        }
    }
    Ok(())
}

impl CoordinatorCore {
    pub(super) fn on_api(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        tenant: TenantId,
        request: ApiRequest,
        out: &mut Vec<Command>,
    ) {
        match request {
            ApiRequest::CreateSession => {
                let id = self.sessions.create(&tenant, now_ms);
                let row = self.session_row(id.as_str(), now_ms);
                let reply = Command::Reply { to, reply: Ok(Answer::Json(json!({ "session_id": id.as_str() }))) };
                self.persist(vec![row], vec![reply], out);
            }
            ApiRequest::Heartbeat { session } => {
                let r = self.sessions.heartbeat(&tenant, &session, now_ms);
                self.reply(to, r.map(|()| Answer::Json(json!({}))).map_err(|e| session_error(&session, e)), out);
            }
            ApiRequest::FinishSession { session } => match self.sessions.finish(&tenant, &session) {
                Ok(ended) => {
                    let mut ops = vec![self.session_row(&session, now_ms)];
                    self.end_session(now_ms, &ended.runs, &ended.samplers, &mut ops, out);
                    let reply = Command::Reply { to, reply: Ok(Answer::Json(json!({}))) };
                    self.persist(ops, vec![reply], out);
                }
                Err(e) => self.reply(to, Err(session_error(&session, e)), out),
            },
            ApiRequest::CreateModel { session, model_seq_id, base_model, lora, user_metadata, idempotency_key } => {
                let r = self.create_model(now_ms, &tenant, &session, model_seq_id, &base_model, lora, user_metadata);
                self.answer_create(now_ms, to, &tenant, idempotency_key, r, out);
            }
            ApiRequest::CreateFromState {
                session,
                model_seq_id,
                path,
                optimizer,
                base_model,
                user_metadata,
                idempotency_key,
            } => {
                let r = self.create_from_state(
                    now_ms,
                    &tenant,
                    &session,
                    model_seq_id,
                    &path,
                    optimizer,
                    base_model,
                    user_metadata,
                );
                self.answer_create(now_ms, to, &tenant, idempotency_key, r, out);
            }
            ApiRequest::GetInfo { model_id } => {
                let r = self.get_info(&tenant, &model_id);
                self.reply(to, r, out);
            }
            ApiRequest::Sequenced { model_id, seq_id, idempotency_key, body } => {
                self.submit_sequenced(now_ms, to, &tenant, &model_id, seq_id, idempotency_key, body, out)
            }
            ApiRequest::RetrieveFuture { request_id } => self.retrieve(now_ms, to, &tenant, &request_id, out),
            other => self.on_api_rest(now_ms, to, tenant, other, out),
        }
    }

    pub(super) fn session_row(&self, id: &str, now_ms: u64) -> StoreOp {
        let (tenant, created_ms, state) = match self.sessions.describe(id) {
            Some((tenant, created_ms, state)) => (tenant.as_str().to_string(), created_ms, state),
            None => (String::new(), now_ms, SessionState::Expired),
        };
        StoreOp::PutSession(SessionRow { id: id.to_string(), tenant, created_ms, state: state_name(state).to_string() })
    }

    /// The reply of a create (fresh or from state): `Ok((request, run, ops))` to persist first.
    fn answer_create(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        tenant: &TenantId,
        idempotency_key: Option<String>,
        r: Result<Created, CoordinatorError>,
        out: &mut Vec<Command>,
    ) {
        match r {
            Ok(Created::Retry(reply)) => self.reply(to, Ok(Answer::Json(reply)), out),
            Ok(Created::New { request, run, ops }) => {
                let reply = json!({"request_id": request.as_str(), "model_id": run.as_str()});
                self.remember(&request, ReplySlot::Create(run.clone()), &reply);
                if let Some(k) = idempotency_key {
                    self.remember(&request, idem_slot(tenant, &k), &reply);
                }
                let answer = Command::Reply { to, reply: Ok(Answer::Json(reply)) };
                self.persist(ops, vec![answer], out);
                self.pump(now_ms, &run, out);
            }
            Err(e) => self.reply(to, Err(e), out),
        }
    }

    /// Registers a new live run whose first job (seq 0) is `first`.
    fn new_run(&mut self, now_ms: u64, record: RunRecord, first: Action) -> Created {
        let id = record.id.clone();
        let tenant = record.tenant.clone();
        let session = record.session_id.clone();
        assert!(!self.runs.contains_key(&id), "run {id} is created once");
        let request = self.new_future(&tenant, Some(&id), now_ms);
        let payload = serde_json::to_vec(&first).unwrap_or_default();
        let mut ops = vec![run_row(&record)];
        ops.push(StoreOp::AppendJournal(JournalRow {
            run: id.as_str().to_string(),
            seq_id: 0,
            request_id: request.as_str().to_string(),
            kind: first.kind().to_string(),
            payload,
        }));
        if let Some(row) = self.futures.row(request.as_str()) {
            ops.push(StoreOp::PutFuture(row));
        }
        self.sessions.add_run(&record.session_id, &id);
        let mut live = LiveRun::new(tenant, session, record.base_model.clone(), 1);
        live.queue.push_back(Job {
            request: Some(request.clone()),
            seq_id: Some(0),
            action: first,
            replay_only: false,
            stage: 0,
        });
        self.catalog.add_run(record);
        self.runs.insert(id.clone(), live);
        let _ = now_ms;
        Created::New { request, run: id, ops }
    }

    /// Creates a future for `tenant`, tied to `run` when it is a run's request.
    pub(super) fn new_future(&mut self, tenant: &TenantId, run: Option<&RunId>, now_ms: u64) -> RequestId {
        self.futures.create_at(tenant, run, now_ms)
    }

    /// A retry of a create answers the original reply; anything else is a new run or an error.
    fn existing_create(&self, run_id: &RunId, model_seq_id: u64) -> Option<Result<Created, CoordinatorError>> {
        if !self.catalog.run_exists(run_id.as_str()) {
            return None;
        }
        Some(match self.replies.get(&ReplySlot::Create(run_id.clone())) {
            Some(reply) => Ok(Created::Retry(reply.clone())),
            None => Err(CoordinatorError::BadRequest(format!(
                "model_seq_id {model_seq_id} of this session is already used"
            ))),
        })
    }

    fn active_session(&self, tenant: &TenantId, session: &str) -> Result<SessionId, CoordinatorError> {
        self.sessions.check_active(tenant, session).map_err(|r| session_error(session, r))?;
        SessionId::new(session).map_err(|e| CoordinatorError::BadRequest(e.to_string()))
    }

    fn model_info(&self, name: &str) -> Result<&BaseModelInfo, CoordinatorError> {
        self.config.models.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.models.keys().map(String::as_str).collect();
            CoordinatorError::BadRequest(format!("base model {name:?} is not served here; choose one of {known:?}"))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn create_model(
        &mut self,
        now_ms: u64,
        tenant: &TenantId,
        session: &str,
        model_seq_id: u64,
        base_model: &str,
        lora: Option<LoraRequest>,
        user_metadata: Option<serde_json::Value>,
    ) -> Result<Created, CoordinatorError> {
        let info_name = self.model_info(base_model)?.name.clone();
        let lora = lora.ok_or_else(|| {
            CoordinatorError::BadRequest("lora_config is required (lathe trains LoRA adapters)".into())
        })?;
        let session_id = self.active_session(tenant, session)?;
        let run_id = RunId::of_session(&session_id, model_seq_id);
        if let Some(r) = self.existing_create(&run_id, model_seq_id) {
            return r;
        }
        // An absent seed is drawn here and recorded with the run, so replays initialise the same A.
        let seed = lora.seed.unwrap_or_else(|| self.ids.next_u64() >> 1);
        let lora = LoraConfig::new(
            lora.rank,
            lora.alpha.unwrap_or(LORA_ALPHA_DEFAULT),
            seed,
            lora.train_attn.unwrap_or(true),
            lora.train_mlp.unwrap_or(true),
            lora.train_unembed.unwrap_or(true),
        )
        .map_err(|e| CoordinatorError::BadRequest(format!("lora_config: {e}")))?;
        let record = RunRecord {
            id: run_id.clone(),
            tenant: tenant.clone(),
            session_id: session_id.clone(),
            base_model: info_name.clone(),
            lora: lora.clone(),
            created_ms: now_ms,
            last_request_ms: now_ms,
            user_metadata,
            snapshot: None,
        };
        Ok(self.new_run(now_ms, record, Action::Create { base_model: info_name, lora }))
    }

    /// The source of a load: a training checkpoint the tenant owns.
    fn load_source(&self, tenant: &TenantId, path: &str) -> Result<(TinkerPath, RunRecord), CoordinatorError> {
        let p = TinkerPath::parse(path).map_err(|e| invalid(format!("path: {e}")))?;
        if p.kind != CheckpointKind::Weights {
            return Err(invalid(format!(
                "path {p}: only tinker://<run>/weights/<name> checkpoints (save_state) can be loaded"
            )));
        }
        self.catalog
            .checkpoint(tenant, &p)
            .ok_or_else(|| CoordinatorError::NotFound(format!("checkpoint {p} not found")))?;
        let run = self
            .catalog
            .run(tenant, &p.run)
            .cloned()
            .ok_or_else(|| CoordinatorError::NotFound(format!("training run {} not found", p.run)))?;
        Ok((p, run))
    }

    #[allow(clippy::too_many_arguments)]
    fn create_from_state(
        &mut self,
        now_ms: u64,
        tenant: &TenantId,
        session: &str,
        model_seq_id: u64,
        path: &str,
        optimizer: bool,
        base_model: Option<String>,
        user_metadata: Option<serde_json::Value>,
    ) -> Result<Created, CoordinatorError> {
        let session_id = self.active_session(tenant, session)?;
        let run_id = RunId::of_session(&session_id, model_seq_id);
        if let Some(r) = self.existing_create(&run_id, model_seq_id) {
            return r;
        }
        let (source, source_run) = self.load_source(tenant, path)?;
        if let Some(base) = base_model.filter(|b| *b != source_run.base_model) {
            let have = &source_run.base_model;
            return Err(CoordinatorError::BadRequest(format!(
                "base_model {base:?} differs from the checkpoint's {have:?}"
            )));
        }
        let record = RunRecord {
            id: run_id.clone(),
            tenant: tenant.clone(),
            session_id: session_id.clone(),
            base_model: source_run.base_model.clone(),
            lora: source_run.lora.clone(),
            created_ms: now_ms,
            last_request_ms: now_ms,
            user_metadata,
            snapshot: None,
        };
        let dir = self.checkpoint_dir(&source);
        Ok(self.new_run(now_ms, record, Action::Load { path: source.to_string(), dir, optimizer }))
    }

    fn get_info(&self, tenant: &TenantId, model_id: &str) -> Result<Answer, CoordinatorError> {
        let run = self
            .catalog
            .run(tenant, model_id)
            .ok_or_else(|| CoordinatorError::NotFound(format!("training run {model_id} not found")))?;
        let mut model_data = json!({"model_name": run.base_model});
        if let Some(info) = self.config.models.get(&run.base_model) {
            model_data["arch"] = json!(info.arch);
            if let Some(dir) = &info.tokenizer_dir {
                model_data["tokenizer_id"] = json!(dir.to_string_lossy());
            }
        }
        Ok(Answer::Json(json!({
            "model_id": run.id, "model_data": model_data, "is_lora": true, "lora_rank": run.lora.rank,
            "model_name": run.base_model, "optimizer_config": {"type": "adamw"}, "type": "get_info"
        })))
    }

    /// Validates a sequenced request's body into the job it becomes (or the user error it fails with).
    fn sequenced_action(
        &mut self,
        tenant: &TenantId,
        run: &RunRecord,
        seq_id: u64,
        body: SequencedBody,
    ) -> Result<Action, CoordinatorError> {
        match body {
            SequencedBody::ForwardBackward(req) => {
                let req = req?;
                check_forward_backward(self.config.models.get(&run.base_model), &req)?;
                check_provenance(&self.futures, tenant, &req.data)?;
                Ok(Action::ForwardBackward {
                    data: req.data,
                    loss_fn: req.loss_fn,
                    loss_config: req.loss_config,
                    forward_only: req.forward_only,
                })
            }
            SequencedBody::Optim(adam) => Ok(Action::Optim(adam?)),
            SequencedBody::SaveState(req) => save_action(&req, CheckpointKind::Weights),
            SequencedBody::SaveExternal(req) => save_action(&req, CheckpointKind::ExternalWeights),
            SequencedBody::SaveForSampler(req) => match req.path {
                Some(_) => save_action(&req, CheckpointKind::SamplerWeights),
                None => {
                    refuse_unsupported(&req)?;
                    let session = run.session_id.clone();
                    let n = req.sampling_session_seq_id.map_or(format!("{}-{}", run.id, seq_id), |n| n.to_string());
                    let sampler = SamplerId::of_session(&session, &n).map_err(|e| invalid(e.to_string()))?;
                    Ok(Action::EphemeralSampler { sampler, session })
                }
            },
            SequencedBody::Load { path, optimizer } => {
                let (source, source_run) = self.load_source(tenant, &path)?;
                if source_run.base_model != run.base_model
                    || source_run.lora.rank != run.lora.rank
                    || source_run.lora.alpha != run.lora.alpha
                    || source_run.lora.train_attn != run.lora.train_attn
                    || source_run.lora.train_mlp != run.lora.train_mlp
                    || source_run.lora.train_unembed != run.lora.train_unembed
                {
                    return Err(invalid(format!(
                        "checkpoint {source} has a different base model or LoRA config than {}",
                        run.id
                    )));
                }
                let dir = self.checkpoint_dir(&source);
                Ok(Action::Load { path: source.to_string(), dir, optimizer })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn submit_sequenced(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        tenant: &TenantId,
        model_id: &str,
        seq_id: i64,
        idempotency_key: Option<String>,
        body: SequencedBody,
        out: &mut Vec<Command>,
    ) {
        match self.accept_sequenced(now_ms, tenant, model_id, seq_id, idempotency_key, body) {
            Ok(Accepted::Retry(reply)) => self.reply(to, Ok(Answer::Json(reply)), out),
            Ok(Accepted::New { reply, ops, run }) => {
                let answer = Command::Reply { to, reply: Ok(Answer::Json(reply)) };
                self.persist(ops, vec![answer], out);
                self.pump(now_ms, &run, out);
            }
            Err(e) => self.reply(to, Err(e), out),
        }
    }

    fn accept_sequenced(
        &mut self,
        now_ms: u64,
        tenant: &TenantId,
        model_id: &str,
        seq_id: i64,
        idempotency_key: Option<String>,
        body: SequencedBody,
    ) -> Result<Accepted, CoordinatorError> {
        let idem = idempotency_key.map(|k| idem_slot(tenant, &k));
        if let Some(reply) = idem.as_ref().and_then(|k| self.replies.get(k)) {
            return Ok(Accepted::Retry(reply.clone()));
        }
        let record = self
            .catalog
            .run(tenant, model_id)
            .cloned()
            .ok_or_else(|| CoordinatorError::NotFound(format!("training run {model_id} not found")))?;
        self.sessions.check_active(tenant, record.session_id.as_str()).map_err(|r| {
            CoordinatorError::BadRequest(format!(
                "training run {model_id}: {}",
                session_error(record.session_id.as_str(), r)
            ))
        })?;
        let seq_id =
            u64::try_from(seq_id).map_err(|_| CoordinatorError::BadRequest(format!("seq_id {seq_id} is negative")))?;
        let run = RunId::new(model_id).map_err(|e| CoordinatorError::BadRequest(e.to_string()))?;
        let live = self.runs.get(&run).ok_or_else(|| {
            CoordinatorError::BadRequest(format!(
                "training run {model_id} is not loaded (its session ended); create a training client from one of its checkpoints"
            ))
        })?;
        if let Some(original) = live.sequencer.seen(seq_id) {
            return Ok(Accepted::Retry(json!({"request_id": original, "model_id": model_id})));
        }
        if seq_id < live.sequencer.first_seq_id() {
            let first = live.sequencer.first_seq_id();
            return Err(CoordinatorError::BadRequest(format!(
                "seq_id {seq_id} is below this run's first seq_id {first}"
            )));
        }
        let is_step = matches!(body, SequencedBody::ForwardBackward(_));
        // The request that fills the run's gap is never refused: held requests above it count
        // against the limit and could otherwise never drain.
        let fills_gap = live.sequencer.held_count() > 0 && seq_id == live.sequencer.next_seq_id();
        if is_step && !fills_gap {
            self.check_queue_limit(&record.base_model)?;
        }
        let action =
            self.sequenced_action(tenant, &record, seq_id, body).unwrap_or_else(|e| Action::Reject(e.to_string()));
        let request = self.new_future(tenant, Some(&run), now_ms);
        if is_step {
            self.count_queued(&request, &record.base_model);
        }
        let payload = serde_json::to_vec(&action).unwrap_or_default();
        let mut ops = vec![StoreOp::AppendJournal(JournalRow {
            run: run.as_str().to_string(),
            seq_id,
            request_id: request.as_str().to_string(),
            kind: action.kind().to_string(),
            payload,
        })];
        if let Some(row) = self.futures.row(request.as_str()) {
            ops.push(StoreOp::PutFuture(row));
        }
        let job = Job { request: Some(request.clone()), seq_id: Some(seq_id), action, replay_only: false, stage: 0 };
        let live = self.runs.get_mut(&run).unwrap_or_else(|| unreachable!("checked live above"));
        match live.sequencer.submit(seq_id, request.as_str(), job) {
            Submitted::Accepted(jobs) => live.queue.extend(jobs),
            Submitted::Duplicate(_) | Submitted::TooOld { .. } => unreachable!("seen and first_seq_id were checked"),
        }
        let reply = json!({"request_id": request.as_str(), "model_id": model_id});
        if let Some(k) = idem {
            self.remember(&request, k, &reply);
        }
        Ok(Accepted::New { reply, ops, run })
    }

    /// Backpressure: refuses new forward_backward / sample work on a base model beyond its limit.
    pub(super) fn check_queue_limit(&self, base_model: &str) -> Result<(), CoordinatorError> {
        let n = self.queued.get(base_model).copied().unwrap_or(0);
        if n >= self.config.queue_limit {
            return Err(CoordinatorError::Busy {
                message: format!(
                    "{base_model} has {n} unfinished requests queued (limit {}); retry after {} s",
                    self.config.queue_limit, self.config.retry_after_s
                ),
                retry_after_s: self.config.retry_after_s,
            });
        }
        Ok(())
    }

    pub(super) fn count_queued(&mut self, request: &RequestId, base_model: &str) {
        *self.queued.entry(base_model.to_string()).or_default() += 1;
        self.queued_of.insert(request.clone(), base_model.to_string());
    }

    /// Drops an ending session's runs (after their queued work) and samplers from worker memory.
    pub(super) fn end_session(
        &mut self,
        now_ms: u64,
        runs: &[RunId],
        samplers: &[SamplerId],
        ops: &mut Vec<StoreOp>,
        out: &mut Vec<Command>,
    ) {
        for id in runs {
            if let Some(live) = self.runs.get_mut(id) {
                live.queue.push_back(Job {
                    request: None,
                    seq_id: None,
                    action: Action::Drop,
                    replay_only: false,
                    stage: 0,
                });
                if let Some(dir) = live.snapshot_dir.clone() {
                    out.push(Command::RemoveDir { dir });
                }
                self.pump(now_ms, id, out);
            }
        }
        for id in samplers {
            self.drop_sampler(id, ops, out);
        }
    }

    /// Deletes a checkpoint's catalogue entry (durably) and its files.
    pub(super) fn delete_checkpoint(&mut self, path: &TinkerPath, ops: &mut Vec<StoreOp>, out: &mut Vec<Command>) {
        ops.push(StoreOp::DeleteCheckpoint {
            run: path.run.clone(),
            kind: path.kind.segment().to_string(),
            name: path.name.clone(),
        });
        self.catalog.remove_checkpoint(path);
        out.push(Command::RemoveDir { dir: self.checkpoint_dir(path) });
    }
}

/// What lathe does not do, refused by name rather than ignored.
fn refuse_unsupported(req: &SaveRequest) -> Result<(), CoordinatorError> {
    match req.kind.as_deref() {
        None | Some("snapshot") => {}
        Some("inflight") => {
            return Err(invalid(
                "kind=\"inflight\" sampling clients (weights that follow the run as it trains) are not \
                        supported; use kind=\"snapshot\" (the default) and make a new sampling client after each \
                        step",
            ))
        }
        Some(other) => return Err(invalid(format!("kind {other:?} is not a sampling client kind; use \"snapshot\""))),
    }
    if req.age_encryption_recipients {
        return Err(invalid(
            "age_encryption_recipients: lathe does not encrypt exports; leave it unset and encrypt the \
                    downloaded files yourself (the download URLs are signed and expire)",
        ));
    }
    Ok(())
}

fn save_action(req: &SaveRequest, kind: CheckpointKind) -> Result<Action, CoordinatorError> {
    refuse_unsupported(req)?;
    let name = req.path.clone().ok_or(invalid("path (the checkpoint name) is required"))?;
    let name = CheckpointName::new(name).map_err(|e| invalid(format!("path: {e}")))?;
    Ok(Action::Save {
        kind,
        name,
        overwrite: req.overwrite,
        ttl_ms: ttl_ms(req.ttl_seconds)?,
        user_metadata: req.user_metadata.clone(),
    })
}

/// A create request's result before it is answered.
pub(super) enum Created {
    Retry(serde_json::Value),
    New { request: RequestId, run: RunId, ops: Vec<StoreOp> },
}

enum Accepted {
    Retry(serde_json::Value),
    New { reply: serde_json::Value, ops: Vec<StoreOp>, run: RunId },
}
