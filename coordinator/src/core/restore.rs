//! Rebuilding the core from what the store holds after a restart (or a crash). Sessions come back
//! in the state they had (an active one gets a fresh expiry period, so its client's heartbeats
//! resume); the catalogue, futures and samplers come back as they were; and every live run is
//! queued to be rebuilt in worker memory: its last snapshot (or its first request) and then every
//! journaled request after it, in `seq_id` order. Requests whose futures already hold results run
//! again only for their effect on the run's state (`replay_only`); the others complete their
//! futures as if nothing had happened. Pending samples are re-sent once their sampler is rebuilt.

use std::collections::BTreeMap;

use super::catalog::{CheckpointRecord, RunRecord};
use super::engine::{CoordinatorCore, CoreConfig, IdSource, ReplySlot};
use super::futures::Outcome;
use super::ids::{RequestId, RunId, SamplerId, SessionId, TenantId};
use super::jobs::{server, Action, Job, LiveRun, SamplerRecord};
use super::sequencer::Submitted;
use super::sessions::SessionState;
use crate::error::CoordinatorError;
use crate::store::{JournalRow, Loaded};

fn corrupt(what: &str, id: &str, e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Internal(format!(
        "the store's {what} {id} cannot be read ({e}); restore the data directory from a backup or move it away"
    ))
}

fn session_state(s: &str) -> SessionState {
    match s {
        "active" => SessionState::Active,
        "finished" => SessionState::Finished,
        _ => SessionState::Expired,
    }
}

impl CoordinatorCore {
    /// A core holding everything in `loaded`, with its live runs queued for rebuilding (they start
    /// once a worker joins).
    pub fn restore(
        config: CoreConfig,
        ids: Box<dyn IdSource>,
        loaded: &Loaded,
        now_ms: u64,
    ) -> Result<CoordinatorCore, CoordinatorError> {
        let mut core = CoordinatorCore::new(config, ids);
        for s in &loaded.sessions {
            let id = SessionId::new(s.id.clone()).map_err(|e| corrupt("session", &s.id, e))?;
            let tenant = TenantId::new(s.tenant.clone()).map_err(|e| corrupt("session", &s.id, e))?;
            core.sessions.restore_as(&id, &tenant, s.created_ms, session_state(&s.state), now_ms);
        }
        for r in &loaded.runs {
            let record: RunRecord = serde_json::from_str(&r.record_json).map_err(|e| corrupt("run", &r.id, e))?;
            core.catalog.add_run(record);
        }
        for c in &loaded.checkpoints {
            let record: CheckpointRecord =
                serde_json::from_str(&c.record_json).map_err(|e| corrupt("checkpoint", &c.name, e))?;
            core.catalog.add_checkpoint(record);
        }
        for f in &loaded.futures {
            core.futures.restore(f).map_err(|e| corrupt("future", &f.request_id, e))?;
        }
        for s in &loaded.samplers {
            let record: SamplerRecord =
                serde_json::from_str(&s.record_json).map_err(|e| corrupt("sampler", &s.id, e))?;
            let id = SamplerId::new(s.id.clone()).map_err(|e| corrupt("sampler", &s.id, e))?;
            if core.sessions.check_active(&record.tenant, record.session.as_str()).is_ok() {
                core.sessions.add_sampler(&record.session, &id);
            }
            core.samplers.insert(id, SamplerRecord { resident: false, ..record });
        }
        let mut by_run: BTreeMap<&str, Vec<&JournalRow>> = BTreeMap::new();
        for row in &loaded.journal {
            by_run.entry(row.run.as_str()).or_default().push(row);
        }
        let mut requeued: Vec<RequestId> = Vec::new();
        for (key, rows) in by_run {
            match key.strip_suffix("#samples") {
                Some(sampler) => core.restore_samples(now_ms, sampler, &rows, &mut requeued)?,
                None => core.restore_run(key, &rows, &mut requeued)?,
            }
        }
        // Runs with a snapshot but no journal rows since it still need rebuilding.
        let snapshotted: Vec<RunRecord> = core
            .catalog
            .all_runs()
            .filter(|r| r.snapshot.is_some())
            .filter(|r| !core.runs.contains_key(&r.id))
            .cloned()
            .collect();
        for record in snapshotted {
            core.restore_run(record.id.as_str(), &[], &mut requeued)?;
        }
        // A pending request that nothing will run (its run is no longer loaded) fails now rather
        // than leaving its client polling forever.
        let mut out = Vec::new();
        for request in core.futures.pending_ids() {
            if !requeued.contains(&request) {
                let outcome = server("lathe restarted and this request's run or sampler is no longer loaded; create a new client from a checkpoint");
                core.complete(now_ms, &request, outcome, &mut out);
            }
        }
        // Their results are durable once the first event's commands run.
        core.startup = out;
        Ok(core)
    }

    fn restore_run(
        &mut self,
        run: &str,
        rows: &[&JournalRow],
        requeued: &mut Vec<RequestId>,
    ) -> Result<(), CoordinatorError> {
        let Some(record) = self.catalog.run_mut(run).map(|r| r.clone()) else { return Ok(()) };
        if self.sessions.check_active(&record.tenant, record.session_id.as_str()).is_err() {
            return Ok(());
        }
        let id = RunId::new(run).map_err(|e| corrupt("run", run, e))?;
        let tenant = record.tenant.clone();
        let session = record.session_id.clone();
        let first_seq = record.snapshot.as_ref().map_or(0, |s| s.through_seq_id + 1);
        let mut live = LiveRun::new(tenant, session, record.base_model.clone(), first_seq);
        if let Some(s) = &record.snapshot {
            let action = Action::Load { path: String::new(), dir: s.dir.clone(), optimizer: true };
            live.queue.push_back(Job { request: None, seq_id: None, action, replay_only: true, stage: 0 });
            live.snapshot_dir = Some(s.dir.clone());
        }
        for row in rows.iter().filter(|r| r.seq_id >= first_seq) {
            let action: Action = serde_json::from_slice(&row.payload).map_err(|e| corrupt("journal row of", run, e))?;
            let request = RequestId::new(row.request_id.clone()).map_err(|e| corrupt("journal row of", run, e))?;
            let replay_only = self.futures.is_done(request.as_str());
            if !replay_only {
                requeued.push(request.clone());
                if matches!(action, Action::ForwardBackward { .. }) {
                    self.count_queued(&request, &record.base_model);
                }
            }
            let job = Job { request: Some(request.clone()), seq_id: Some(row.seq_id), action, replay_only, stage: 0 };
            match live.sequencer.submit(row.seq_id, request.as_str(), job) {
                Submitted::Accepted(jobs) => live.queue.extend(jobs),
                Submitted::Duplicate(_) | Submitted::TooOld { .. } => {
                    return Err(corrupt("journal of", run, format!("seq_id {} recorded twice", row.seq_id)))
                }
            }
            if row.seq_id == 0 {
                let reply = serde_json::json!({"request_id": request.as_str(), "model_id": run});
                self.remember(&request, ReplySlot::Create(id.clone()), &reply);
            }
        }
        // The sequencer of a fresh run starts at 1 (seq 0 is its create).
        if first_seq == 0 && live.sequencer.next_seq_id() == 0 {
            // No create row: nothing can rebuild this run.
            return Ok(());
        }
        live.replaying = live.queue.iter().filter(|j| j.request.is_some()).count();
        self.sessions.add_run(&record.session_id, &id);
        self.runs.insert(id, live);
        Ok(())
    }

    fn restore_samples(
        &mut self,
        now_ms: u64,
        sampler: &str,
        rows: &[&JournalRow],
        requeued: &mut Vec<RequestId>,
    ) -> Result<(), CoordinatorError> {
        let id = SamplerId::new(sampler).map_err(|e| corrupt("sampler", sampler, e))?;
        let last = rows.iter().map(|r| r.seq_id).max().unwrap_or(0);
        self.sample_seq.insert(id.clone(), last);
        if !self.samplers.contains_key(&id) {
            return Ok(());
        }
        let base = self.samplers.get(&id).map(|s| s.base_model.clone()).unwrap_or_default();
        for row in rows {
            let request = RequestId::new(row.request_id.clone()).map_err(|e| corrupt("sample of", sampler, e))?;
            if self.futures.is_done(request.as_str()) {
                continue;
            }
            let body = serde_json::from_slice(&row.payload).map_err(|e| corrupt("sample of", sampler, e))?;
            requeued.push(request.clone());
            self.count_queued(&request, &base);
            self.rebuilding.entry(id.clone()).or_default().push((request, body));
        }
        let _ = (now_ms, Outcome::Json(serde_json::Value::Null));
        Ok(())
    }
}
