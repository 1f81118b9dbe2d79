//! The core's answers to the catalogue (REST) requests: training runs, checkpoints, weights info,
//! TTLs and deletes, export directories; plus samplers, sampling and the memory report, which the
//! dispatcher routes here. Every lookup is scoped to the caller's tenant.

use runtime::control::ToWorker;
use serde_json::{json, Value};

use super::api::{Answer, ApiRequest, ReplyTo};
use super::catalog::{CheckpointRecord, RunRecord};
use super::engine::{Command, CoordinatorCore};
use super::ids::{CheckpointKind, TenantId, TinkerPath};
use super::jobs::{checkpoint_row, Purpose};
use super::time::iso8601_ms;
use crate::error::CoordinatorError;

fn page<T>(items: Vec<T>, limit: Option<usize>, offset: Option<usize>, limit_default: usize) -> (Vec<T>, Value) {
    let total = items.len();
    let limit = limit.unwrap_or(limit_default);
    let offset = offset.unwrap_or(0);
    let page = items.into_iter().skip(offset).take(limit).collect();
    (page, json!({"offset": offset, "limit": limit, "total_count": total}))
}

pub(super) fn checkpoint_json(c: &CheckpointRecord) -> Value {
    let path = c.path();
    json!({
        "checkpoint_id": path.checkpoint_id(), "checkpoint_type": c.kind.checkpoint_type(),
        "time": iso8601_ms(c.created_ms), "tinker_path": path.to_string(), "size_bytes": c.size_bytes,
        "public": false, "expires_at": c.expires_ms.map(iso8601_ms), "user_metadata": c.user_metadata,
    })
}

impl CoordinatorCore {
    fn run_json(&self, r: &RunRecord) -> Value {
        let last = |kind| self.catalog.last_checkpoint(&r.tenant, r.id.as_str(), kind).map(checkpoint_json);
        json!({
            "training_run_id": r.id, "base_model": r.base_model, "model_owner": r.tenant, "is_lora": true,
            "corrupted": false, "lora_rank": r.lora.rank, "last_request_time": iso8601_ms(r.last_request_ms),
            "last_checkpoint": last(CheckpointKind::Weights),
            "last_sampler_checkpoint": last(CheckpointKind::SamplerWeights),
            "user_metadata": r.user_metadata,
        })
    }

    fn run_of(&self, tenant: &TenantId, run: &str) -> Result<&RunRecord, CoordinatorError> {
        self.catalog.run(tenant, run).ok_or_else(|| CoordinatorError::NotFound(format!("training run {run} not found")))
    }

    /// The checkpoint a REST path names, if the tenant owns it.
    fn owned_checkpoint(
        &self,
        tenant: &TenantId,
        run: String,
        kind: &str,
        name: String,
    ) -> Result<TinkerPath, CoordinatorError> {
        let kind = CheckpointKind::from_segment(kind).ok_or_else(|| {
            CoordinatorError::BadRequest(format!(
                "checkpoint kind {kind:?} is not weights, sampler_weights or external_weights"
            ))
        })?;
        let p = TinkerPath { run, kind, name };
        self.catalog
            .checkpoint(tenant, &p)
            .ok_or_else(|| CoordinatorError::NotFound(format!("checkpoint {p} not found")))?;
        Ok(p)
    }

    pub(super) fn on_api_rest(
        &mut self,
        now_ms: u64,
        to: ReplyTo,
        tenant: TenantId,
        request: ApiRequest,
        out: &mut Vec<Command>,
    ) {
        let reply = match request {
            ApiRequest::CreateSampler { session, sampling_session_seq_id, model_path, base_model } => {
                return self.create_sampler(
                    to,
                    &tenant,
                    &session,
                    sampling_session_seq_id,
                    model_path,
                    base_model,
                    out,
                );
            }
            ApiRequest::Sample { request, idempotency_key } => {
                return self.sample(now_ms, to, &tenant, *request, idempotency_key, out);
            }
            ApiRequest::Memory => {
                if !self.send(ToWorker::Memory, Purpose::Memory { reply: to, tenant }, out) {
                    self.reply(to, Err(super::samplers::no_worker()), out);
                }
                return;
            }
            ApiRequest::GetSampler { sampler } => self.get_sampler(&tenant, &sampler),
            ApiRequest::ListRuns { limit, offset } => {
                let (runs, cursor) = page(self.catalog.runs_of(&tenant), limit, offset, 20);
                let runs: Vec<Value> = runs.into_iter().map(|r| self.run_json(r)).collect();
                Ok(Answer::Json(json!({"training_runs": runs, "cursor": cursor})))
            }
            ApiRequest::GetRun { run } => self.run_of(&tenant, &run).map(|r| Answer::Json(self.run_json(r))),
            ApiRequest::ListRunCheckpoints { run } => self.run_of(&tenant, &run).map(|_| {
                let list: Vec<Value> =
                    self.catalog.checkpoints_of_run(&tenant, &run).into_iter().map(checkpoint_json).collect();
                Answer::Json(json!({ "checkpoints": list }))
            }),
            ApiRequest::ListCheckpoints { limit, offset } => {
                let (list, cursor) = page(self.catalog.checkpoints_of(&tenant), limit, offset, 100);
                let list: Vec<Value> = list.into_iter().map(checkpoint_json).collect();
                Ok(Answer::Json(json!({"checkpoints": list, "cursor": cursor})))
            }
            ApiRequest::WeightsInfo { tinker_path } => (|| {
                let p = TinkerPath::parse(&tinker_path).map_err(|e| CoordinatorError::BadRequest(e.to_string()))?;
                self.catalog
                    .checkpoint(&tenant, &p)
                    .ok_or_else(|| CoordinatorError::NotFound(format!("checkpoint {p} not found")))?;
                let r = self.run_of(&tenant, &p.run)?;
                Ok(Answer::Json(json!({
                    "base_model": r.base_model, "is_lora": true, "lora_rank": r.lora.rank, "train_mlp": r.lora.train_mlp,
                    "train_attn": r.lora.train_attn, "train_unembed": r.lora.train_unembed,
                })))
            })(),
            ApiRequest::DeleteCheckpoint { run, kind, name } => {
                match self.owned_checkpoint(&tenant, run, &kind, name) {
                    Ok(p) => {
                        let mut ops = Vec::new();
                        self.delete_checkpoint(&p, &mut ops, out);
                        let reply = Command::Reply { to, reply: Ok(Answer::Json(json!({}))) };
                        return self.persist(ops, vec![reply], out);
                    }
                    Err(e) => Err(e),
                }
            }
            ApiRequest::SetTtl { run, kind, name, ttl_seconds } => {
                let r = self.owned_checkpoint(&tenant, run, &kind, name).and_then(|p| {
                    let expires_ms = match ttl_seconds {
                        None => None,
                        Some(s) if s > 0 => Some(now_ms.saturating_add(s as u64 * 1000)),
                        Some(s) => {
                            return Err(CoordinatorError::BadRequest(format!(
                                "ttl_seconds: {s} must be positive, or null for no expiry"
                            )))
                        }
                    };
                    Ok((p, expires_ms))
                });
                match r {
                    Ok((p, expires_ms)) => {
                        self.catalog.set_expiry(&p, expires_ms);
                        let ops: Vec<_> =
                            self.catalog.checkpoint(&tenant, &p).map(checkpoint_row).into_iter().collect();
                        let reply = Command::Reply { to, reply: Ok(Answer::Json(json!({}))) };
                        return self.persist(ops, vec![reply], out);
                    }
                    Err(e) => Err(e),
                }
            }
            ApiRequest::ExternalWeights { run, kind, name } => {
                if kind != CheckpointKind::ExternalWeights.segment() {
                    Err(CoordinatorError::BadRequest(
                        "only tinker://<run>/external_weights/<name> exports have download URLs".into(),
                    ))
                } else {
                    self.owned_checkpoint(&tenant, run, &kind, name).map(|p| {
                        let dir = self.checkpoint_dir(&p);
                        Answer::ExportDir { path: p, dir }
                    })
                }
            }
            other => unreachable!("on_api routes {other:?} itself"),
        };
        self.reply(to, reply, out);
    }
}
