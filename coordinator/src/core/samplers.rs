//! Samplers and their lifecycle. A sampler is a record (tenant, session, base model, where its
//! adapter is on disk) plus, while resident, a copy in worker memory. Resident samplers are bounded:
//! beyond `samplers_resident_max` the least recently used is freed, and one idle for
//! `sampler_idle_ms` is freed at the next tick. A freed sampler that is used again is rebuilt from
//! its adapter directory first — never an error — so an RL loop that makes a sampler per step runs
//! in bounded memory. Samples are not ordered by `seq_id`; a retried `(sampler, seq_id)` or
//! idempotency key answers the original request.

use runtime::control::{ErrorCategory, SampleRequest, SamplerAdapter, ToWorker};
use serde_json::json;

use super::api::{Answer, ReplyTo};
use super::engine::{Command, CoordinatorCore, ReplySlot};
use super::ids::{RequestId, SamplerId, TenantId, TinkerPath};
use super::jobs::{sampler_row, Purpose, SamplerRecord};
use super::sampling::{to_control, ModelLimits, SampleRequestJson};
use crate::error::CoordinatorError;
use crate::store::{JournalRow, StoreOp};

/// A default seed that differs per (sampler, seq_id) but never depends on ambient randomness.
pub fn default_seed(sampler: &str, seq_id: u64) -> u64 {
    // FNV-1a over the sampler id and seq_id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sampler.bytes().chain(seq_id.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The journal "run" of a sampler's sample requests (kept apart from training runs' rows).
pub(super) fn sample_journal_key(sampler: &SamplerId) -> String {
    format!("{sampler}#samples")
}

impl CoordinatorCore {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_sampler(
        &mut self,
        to: ReplyTo,
        tenant: &TenantId,
        session: &str,
        seq: u64,
        model_path: Option<String>,
        base_model: Option<String>,
        out: &mut Vec<Command>,
    ) {
        let r = (|| {
            let session_id = self.active_session_id(tenant, session)?;
            let sampler = SamplerId::of_session(&session_id, &seq.to_string())
                .map_err(|e| CoordinatorError::BadRequest(e.to_string()))?;
            if self.samplers.get(&sampler).is_some_and(|s| s.tenant == *tenant) {
                return Ok(Err(sampler));
            }
            let (base_model, adapter_dir, model_path) = match model_path {
                Some(path) => {
                    let p = TinkerPath::parse(&path)
                        .map_err(|e| CoordinatorError::BadRequest(format!("model_path: {e}")))?;
                    self.catalog
                        .checkpoint(tenant, &p)
                        .ok_or_else(|| CoordinatorError::NotFound(format!("checkpoint {p} not found")))?;
                    let run = self
                        .catalog
                        .run(tenant, &p.run)
                        .ok_or_else(|| CoordinatorError::NotFound(format!("training run {} not found", p.run)))?;
                    if let Some(base) = base_model.as_ref().filter(|b| **b != run.base_model) {
                        return Err(CoordinatorError::BadRequest(format!(
                            "base_model {base:?} differs from the checkpoint's {:?}",
                            run.base_model
                        )));
                    }
                    (run.base_model.clone(), Some(self.checkpoint_dir(&p)), Some(p.to_string()))
                }
                None => {
                    let base = base_model
                        .ok_or_else(|| CoordinatorError::BadRequest("give model_path or base_model".into()))?;
                    if !self.config.models.contains_key(&base) {
                        let known: Vec<&String> = self.config.models.keys().collect();
                        return Err(CoordinatorError::BadRequest(format!(
                            "base model {base:?} is not served here; choose one of {known:?}"
                        )));
                    }
                    (base, None, None)
                }
            };
            let record = SamplerRecord {
                tenant: tenant.clone(),
                session: session_id,
                base_model,
                model_path,
                adapter_dir,
                resident: true,
            };
            Ok(Ok((sampler, record)))
        })();
        match r {
            Ok(Err(existing)) => {
                self.reply(to, Ok(Answer::Json(json!({ "sampling_session_id": existing.as_str() }))), out)
            }
            Ok(Ok((sampler, record))) => {
                let body = build_message(&sampler, &record);
                if !self.send(body, Purpose::Sampler { sampler, create: Some((to, record)) }, out) {
                    self.reply(to, Err(no_worker()), out);
                }
            }
            Err(e) => self.reply(to, Err(e), out),
        }
    }

    fn active_session_id(&self, tenant: &TenantId, session: &str) -> Result<super::ids::SessionId, CoordinatorError> {
        self.sessions.check_active(tenant, session).map_err(|r| super::front::session_error(session, r))?;
        super::ids::SessionId::new(session).map_err(|e| CoordinatorError::BadRequest(e.to_string()))
    }

    /// A sampler is in worker memory (made or rebuilt).
    pub(super) fn sampler_built(
        &mut self,
        now_ms: u64,
        sampler: SamplerId,
        create: Option<(ReplyTo, SamplerRecord)>,
        result: Result<(), (ErrorCategory, String)>,
        out: &mut Vec<Command>,
    ) {
        match (create, result) {
            (Some((to, record)), Ok(())) => {
                let ops = self.add_sampler(now_ms, sampler.clone(), record, out);
                let reply =
                    Command::Reply { to, reply: Ok(Answer::Json(json!({ "sampling_session_id": sampler.as_str() }))) };
                self.persist(ops, vec![reply], out);
            }
            (Some((to, _)), Err((category, message))) => {
                let e = match category {
                    ErrorCategory::User => CoordinatorError::BadRequest(message),
                    ErrorCategory::Server => CoordinatorError::Internal(message),
                };
                self.reply(to, Err(e), out);
            }
            (None, Ok(())) => {
                if let Some(r) = self.samplers.get_mut(&sampler) {
                    r.resident = true;
                }
                self.sampler_last_use_ms.insert(sampler.clone(), now_ms);
                for (request, body) in self.rebuilding.remove(&sampler).unwrap_or_default() {
                    self.send(ToWorker::Sample(body), Purpose::Sample { request }, out);
                }
                self.evict_beyond_max(&sampler, out);
            }
            (None, Err((category, message))) => {
                let message = format!("sampler {sampler} could not be rebuilt in worker memory: {message}");
                for (request, _) in self.rebuilding.remove(&sampler).unwrap_or_default() {
                    let outcome = super::futures::Outcome::Failed { category, message: message.clone() };
                    self.complete(now_ms, &request, outcome, out);
                }
            }
        }
    }

    /// Records a new resident sampler; returns the ops that make it durable.
    pub(super) fn add_sampler(
        &mut self,
        now_ms: u64,
        sampler: SamplerId,
        record: SamplerRecord,
        out: &mut Vec<Command>,
    ) -> Vec<StoreOp> {
        let ops = vec![sampler_row(&sampler, &record)];
        if self.sessions.check_active(&record.tenant, record.session.as_str()).is_ok() {
            self.sessions.add_sampler(&record.session, &sampler);
        }
        self.samplers.insert(sampler.clone(), SamplerRecord { resident: true, ..record });
        self.sampler_last_use_ms.insert(sampler.clone(), now_ms);
        self.evict_beyond_max(&sampler, out);
        ops
    }

    /// Frees the least recently used resident samplers beyond the limit (never `keep`).
    fn evict_beyond_max(&mut self, keep: &SamplerId, out: &mut Vec<Command>) {
        loop {
            let resident: Vec<(&SamplerId, u64)> = self
                .samplers
                .iter()
                .filter(|(id, r)| r.resident && *id != keep && !self.rebuilding.contains_key(*id))
                .map(|(id, _)| (id, self.sampler_last_use_ms.get(id).copied().unwrap_or(0)))
                .collect();
            if resident.len() < self.config.samplers_resident_max {
                return;
            }
            let Some((oldest, _)) = resident.iter().min_by_key(|(id, t)| (*t, (*id).clone())) else { return };
            let oldest = (*oldest).clone();
            self.free_sampler(&oldest, out);
        }
    }

    /// Takes a sampler out of worker memory; its record stays, so it can be rebuilt.
    fn free_sampler(&mut self, sampler: &SamplerId, out: &mut Vec<Command>) {
        if let Some(r) = self.samplers.get_mut(sampler) {
            if r.resident {
                r.resident = false;
                self.send(ToWorker::DropSampler { sampler: sampler.as_str().to_string() }, Purpose::Forget, out);
            }
        }
    }

    pub(super) fn free_idle_samplers(&mut self, now_ms: u64, out: &mut Vec<Command>) {
        let idle: Vec<SamplerId> = self
            .samplers
            .iter()
            .filter(|(id, r)| {
                r.resident
                    && !self.rebuilding.contains_key(*id)
                    && now_ms.saturating_sub(self.sampler_last_use_ms.get(*id).copied().unwrap_or(0))
                        >= self.config.sampler_idle_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in idle {
            self.free_sampler(&id, out);
        }
    }

    /// Forgets a sampler (its session ended): memory, record and an ephemeral adapter copy.
    pub(super) fn drop_sampler(&mut self, sampler: &SamplerId, ops: &mut Vec<StoreOp>, out: &mut Vec<Command>) {
        self.free_sampler(sampler, out);
        if let Some(r) = self.samplers.remove(sampler) {
            ops.push(StoreOp::DeleteSampler { sampler: sampler.as_str().to_string() });
            if r.model_path.is_none() {
                if let Some(dir) = r.adapter_dir {
                    out.push(Command::RemoveDir { dir });
                }
            }
        }
        self.sampler_last_use_ms.remove(sampler);
    }

    pub(super) fn get_sampler(&self, tenant: &TenantId, sampler: &str) -> Result<Answer, CoordinatorError> {
        let s = SamplerId::new(sampler)
            .ok()
            .and_then(|id| self.samplers.get(&id))
            .filter(|s| s.tenant == *tenant)
            .ok_or_else(|| CoordinatorError::NotFound(format!("sampler {sampler} not found")))?;
        let mut reply = json!({"sampler_id": sampler, "base_model": s.base_model});
        if let Some(p) = &s.model_path {
            reply["model_path"] = json!(p);
        }
        Ok(Answer::Json(reply))
    }

    pub(super) fn sample(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        tenant: &TenantId,
        req: SampleRequestJson,
        idempotency_key: Option<String>,
        out: &mut Vec<Command>,
    ) {
        match self.accept_sample(now_ms, tenant, req, idempotency_key, out) {
            Ok((reply, ops)) => {
                let answer = Command::Reply { to, reply: Ok(Answer::Json(reply)) };
                self.persist(ops, vec![answer], out);
            }
            Err(e) => self.reply(to, Err(e), out),
        }
    }

    fn accept_sample(
        &mut self,
        now_ms: u64,
        tenant: &TenantId,
        req: SampleRequestJson,
        idempotency_key: Option<String>,
        out: &mut Vec<Command>,
    ) -> Result<(serde_json::Value, Vec<StoreOp>), CoordinatorError> {
        let sampler_name = req.sampling_session_id.clone().ok_or_else(|| {
            CoordinatorError::BadRequest(
                "sampling_session_id is required; create a sampling client first (create_sampling_session)".into(),
            )
        })?;
        let seq_id = req.seq_id.unwrap_or(0);
        let not_found =
            || CoordinatorError::NotFound(format!("sampler {sampler_name} not found (unknown, or its session ended)"));
        let sampler = SamplerId::new(sampler_name.clone()).map_err(|_| not_found())?;
        let idem = idempotency_key.map(|key| ReplySlot::Idempotency { tenant: tenant.clone(), key });
        let slot = ReplySlot::Sample { sampler: sampler.clone(), seq_id };
        for key in idem.iter().chain([&slot]) {
            if let Some(reply) = self.replies.get(key) {
                return Ok((reply.clone(), vec![]));
            }
        }
        let record = self.samplers.get(&sampler).filter(|s| s.tenant == *tenant).cloned().ok_or_else(not_found)?;
        self.sessions
            .check_active(tenant, record.session.as_str())
            .map_err(|r| super::front::session_error(record.session.as_str(), r))?;
        let info = self
            .config
            .models
            .get(&record.base_model)
            .ok_or_else(|| CoordinatorError::Internal("the sampler's base model is no longer served".into()))?;
        let limits = ModelLimits { vocab_size: info.vocab_size, max_context_length: info.max_context_length };
        self.check_queue_limit(&record.base_model)?;
        let request = self.new_future(tenant, None, now_ms);
        let num_samples = req.num_samples.unwrap_or(1);
        let ids: Vec<String> = (0..num_samples).map(|i| format!("{request}:{i}")).collect();
        let reply = json!({"request_id": request.as_str(), "sample_sequence_ids": ids});
        for key in idem.into_iter().chain([slot]) {
            self.remember(&request, key, &reply);
        }
        let mut ops = Vec::new();
        if let Some(row) = self.futures.row(request.as_str()) {
            ops.push(StoreOp::PutFuture(row));
        }
        match to_control(&req, sampler.as_str(), limits, default_seed(sampler.as_str(), seq_id)) {
            Ok(control) => {
                self.count_queued(&request, &record.base_model);
                // Journaled, so a sample acknowledged before a crash still runs after the restart.
                let n = self.sample_seq.entry(sampler.clone()).or_insert(0);
                *n += 1;
                ops.push(StoreOp::AppendJournal(JournalRow {
                    run: sample_journal_key(&sampler),
                    seq_id: *n,
                    request_id: request.as_str().to_string(),
                    kind: "sample".into(),
                    payload: serde_json::to_vec(&control).unwrap_or_default(),
                }));
                self.dispatch_sample(now_ms, sampler, request, control, out);
            }
            Err(message) => {
                let outcome =
                    super::futures::Outcome::Failed { category: ErrorCategory::User, message: message.to_string() };
                self.complete(now_ms, &request, outcome, out);
            }
        }
        Ok((reply, ops))
    }

    /// Sends a sample to its sampler, rebuilding the sampler first when it was freed.
    pub(super) fn dispatch_sample(
        &mut self,
        now_ms: u64,
        sampler: SamplerId,
        request: RequestId,
        control: SampleRequest,
        out: &mut Vec<Command>,
    ) {
        let Some(record) = self.samplers.get(&sampler).cloned() else {
            let outcome = super::jobs::server(format!("sampler {sampler} is gone"));
            self.complete(now_ms, &request, outcome, out);
            return;
        };
        self.sampler_last_use_ms.insert(sampler.clone(), now_ms);
        if record.resident {
            if !self.send(ToWorker::Sample(control.clone()), Purpose::Sample { request: request.clone() }, out) {
                self.rebuilding.entry(sampler).or_default().push((request, control));
            }
            return;
        }
        let first = !self.rebuilding.contains_key(&sampler);
        self.rebuilding.entry(sampler.clone()).or_default().push((request, control));
        if first {
            let body = build_message(&sampler, &record);
            self.send(body, Purpose::Sampler { sampler, create: None }, out);
        }
    }
}

pub(super) fn build_message(sampler: &SamplerId, record: &SamplerRecord) -> ToWorker {
    let adapter = match &record.adapter_dir {
        Some(dir) => SamplerAdapter::Dir(dir.clone()),
        None => SamplerAdapter::None,
    };
    ToWorker::CreateSampler { sampler: sampler.as_str().to_string(), base_model: record.base_model.clone(), adapter }
}

pub(super) fn no_worker() -> CoordinatorError {
    CoordinatorError::Internal("no worker is placed right now (it is restarting); retry in a few seconds".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_seeds_differ_per_sampler_and_seq_id_and_repeat_exactly() {
        assert_eq!(default_seed("s:sample:0", 1), default_seed("s:sample:0", 1));
        assert_ne!(default_seed("s:sample:0", 1), default_seed("s:sample:0", 2));
        assert_ne!(default_seed("s:sample:0", 1), default_seed("s:sample:1", 1));
    }
}
