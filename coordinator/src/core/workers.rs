//! Workers and placement: which workers are members (joined, not lost), where each training run
//! and resident sampler lives, and which worker a control message goes to. Membership changes
//! arrive as events (the shell turns etcd lease puts/deletes and control connections into them);
//! every decision here is a pure function of the core's state.
//!
//! Plan `Single` (this placement): every worker serves every base model; a training run
//! lives whole on one worker (the one with the fewest runs when it is first placed) and all its
//! requests go there; a sampler lives on the worker that built it (its run's, for a live-run
//! adapter; otherwise the one with the fewest resident samplers). A lost worker fails what it was
//! running with category `server`, naming the worker; its runs stay lost (recovery onto another
//! worker is the next step), its samplers are rebuilt elsewhere from their saved adapters on next use.

use std::collections::BTreeMap;

use runtime::control::{ErrorCategory, FromWorker, SamplerAdapter, ToWorker};
use serde::{Deserialize, Serialize};

use super::engine::{CallId, Command, CoordinatorCore, Generation, WorkerId};
use super::ids::{RunId, SamplerId};
use super::jobs::Purpose;

/// What a worker said about itself when it joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCapacity {
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub cores: u32,
    /// Its memory budget for base models, runs and samplers (None: unlimited).
    pub memory_bytes_max: Option<u64>,
}

/// A member worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSlot {
    /// The name it registered under (`/lathe/workers/<name>`), for messages and metrics.
    pub name: String,
    pub capacity: WorkerCapacity,
    /// Stamped on every message to it; its replies must carry it.
    pub generation: Generation,
}

/// The member with the fewest of something, lowest id first on ties.
fn least_loaded(workers: &BTreeMap<WorkerId, WorkerSlot>, load: impl Fn(WorkerId) -> usize) -> Option<WorkerId> {
    workers.keys().copied().min_by_key(|w| (load(*w), *w))
}

impl CoordinatorCore {
    /// A worker finished its handshake: admit it under a fresh generation.
    pub(super) fn worker_joined(
        &mut self,
        now_ms: u64,
        worker: WorkerId,
        name: String,
        capacity: WorkerCapacity,
        out: &mut Vec<Command>,
    ) {
        if self.workers.contains_key(&worker) {
            return;
        }
        self.next_generation += 1;
        let generation = Generation(self.next_generation);
        self.workers.insert(worker, WorkerSlot { name, capacity, generation });
        out.push(Command::Admit { worker, generation });
        self.pump_all(now_ms, out);
    }

    /// A worker is gone (lease expired, connection closed): fail what it was running, forget
    /// what lived on it, and tell the shell to drop its link.
    pub(super) fn worker_lost(&mut self, now_ms: u64, worker: WorkerId, out: &mut Vec<Command>) {
        let Some(slot) = self.workers.remove(&worker) else { return };
        let why = format!(
            "worker {} (id {}) was lost while running this request (its lease expired or its connection \
             closed); retry it — a training run that lived there must be reloaded from its last checkpoint",
            slot.name, worker.0
        );
        out.push(Command::Disconnect { worker });
        self.steps_in_flight.remove(&worker);
        for live in self.runs.values_mut().filter(|r| r.worker == Some(worker) || r.replicas.contains(&worker)) {
            live.lost = Some(format!(
                "training run lost: it lived on worker {} (id {}), which was lost; create a new training \
                 client from your last checkpoint (save_state) to continue",
                slot.name, worker.0
            ));
        }
        let gone: Vec<SamplerId> =
            self.sampler_worker.iter().filter(|(_, w)| **w == worker).map(|(s, _)| s.clone()).collect();
        for s in gone {
            self.sampler_worker.remove(&s);
            if let Some(r) = self.samplers.get_mut(&s) {
                r.resident = false;
            }
        }
        let calls: Vec<CallId> = self.calls.iter().filter(|(_, (w, _))| *w == worker).map(|(c, _)| *c).collect();
        for call in calls {
            if let Some((_, purpose)) = self.calls.remove(&call) {
                let failed = FromWorker::Failed { category: ErrorCategory::Server, message: why.clone() };
                self.on_worker_reply(now_ms, purpose, failed, out);
            }
        }
        self.pump_all(now_ms, out);
    }

    /// The generation a reply from `call` must carry (None: the call is unknown or its worker gone).
    pub(super) fn call_generation(&self, call: CallId) -> Option<Generation> {
        let (worker, _) = self.calls.get(&call)?;
        self.workers.get(worker).map(|s| s.generation)
    }

    /// Places `run` if it is not placed yet: on the member with the fewest runs, or under
    /// `DataParallel { replicas }` on that many distinct members, fewest runs first (it waits
    /// until enough have joined). Returns the run's (first) worker.
    pub(super) fn place_run(&mut self, run: &RunId) -> Option<WorkerId> {
        if let Some(w) = self.runs.get(run).and_then(|l| l.worker) {
            return Some(w);
        }
        let want = match self.config.plan {
            runtime::plan::Plan::DataParallel { replicas } => replicas,
            _ => 1,
        };
        if self.workers.len() < want {
            return None;
        }
        let load = |w: WorkerId| self.runs.values().filter(|r| r.worker == Some(w) || r.replicas.contains(&w)).count();
        let mut members: Vec<WorkerId> = self.workers.keys().copied().collect();
        members.sort_by_key(|w| (load(*w), *w));
        members.truncate(want);
        let live = self.runs.get_mut(run)?;
        live.worker = members.first().copied();
        live.replicas = members.split_off(1.min(members.len()));
        live.worker
    }

    /// Where a control message goes under the current placement (None: no member can take it).
    fn route(&mut self, body: &ToWorker) -> Option<WorkerId> {
        let of_run = |core: &mut Self, run: &str| RunId::new(run).ok().and_then(|r| core.place_run(&r));
        match body {
            ToWorker::CreateRun { run, .. }
            | ToWorker::DropRun { run }
            | ToWorker::ForwardBackward { run, .. }
            | ToWorker::OptimStep { run, .. }
            | ToWorker::SaveState { run, .. }
            | ToWorker::LoadState { run, .. }
            | ToWorker::ExportPeft { run, .. }
            | ToWorker::GetGrads { run }
            | ToWorker::SetGrads { run, .. } => of_run(self, run),
            ToWorker::ForwardBackwardMany { items } => of_run(self, &items.first()?.run),
            ToWorker::CreateSampler { sampler, adapter, .. } => {
                let w = match adapter {
                    SamplerAdapter::LiveRun(run) => of_run(self, run)?,
                    SamplerAdapter::None | SamplerAdapter::Dir(_) => {
                        let placed = &self.sampler_worker;
                        least_loaded(&self.workers, |w| placed.values().filter(|p| **p == w).count())?
                    }
                };
                if let Ok(id) = SamplerId::new(sampler.clone()) {
                    self.sampler_worker.insert(id, w);
                }
                Some(w)
            }
            ToWorker::Sample(req) => self.sampler_worker.get(req.sampler.as_str()).copied(),
            ToWorker::DropSampler { sampler } => self.sampler_worker.remove(sampler.as_str()),
            ToWorker::Memory => self.workers.keys().next().copied(),
        }
    }

    /// Sends one control message to the worker placement picks. False (and nothing sent) when no
    /// member can take it; the caller keeps the work waiting or fails it.
    pub(super) fn send(&mut self, body: ToWorker, purpose: Purpose, out: &mut Vec<Command>) -> bool {
        let Some(worker) = self.route(&body) else { return false };
        let Some(generation) = self.workers.get(&worker).map(|s| s.generation) else { return false };
        let call = CallId(self.next_call);
        self.next_call += 1;
        self.calls.insert(call, (worker, purpose));
        let envelope = runtime::control::Envelope { generation: generation.0, body };
        out.push(Command::Send { call, worker, envelope });
        true
    }

    /// Members, for views and metrics.
    pub fn workers(&self) -> &BTreeMap<WorkerId, WorkerSlot> {
        &self.workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str) -> WorkerSlot {
        WorkerSlot {
            name: name.into(),
            capacity: WorkerCapacity { device: "cpu".into(), cores: 2, memory_bytes_max: None },
            generation: Generation(1),
        }
    }

    #[test]
    fn the_least_loaded_member_wins_and_ties_go_to_the_lowest_id() {
        let workers: BTreeMap<WorkerId, WorkerSlot> =
            [(WorkerId(3), slot("c")), (WorkerId(1), slot("a")), (WorkerId(2), slot("b"))].into_iter().collect();
        assert_eq!(least_loaded(&workers, |_| 0), Some(WorkerId(1)));
        assert_eq!(least_loaded(&workers, |w| if w == WorkerId(1) { 5 } else { 1 }), Some(WorkerId(2)));
        assert_eq!(least_loaded(&BTreeMap::new(), |_| 0), None);
    }
}
