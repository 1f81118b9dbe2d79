//! `MemStore`: the [`Store`] semantics in memory, for the core's tests and the simulator.
//!
//! Clones share one state, the way two opens of one data directory would: a simulated coordinator
//! crash drops the core and its store, and the restarted core loads from a clone kept aside.
//! A batch is applied op by op with an undo log; an op that fails rolls the batch back, so a
//! commit is all or nothing as in SQLite, without copying the tables per commit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::ops::{CheckpointRow, FutureRow, JournalRow, Loaded, RunRow, SamplerRow, SessionRow, StoreOp};
use super::{check_ints, usage_sum, Store, StoreError};

#[derive(Clone, Debug, Default)]
pub struct MemStore {
    tables: Arc<Mutex<Tables>>,
}

#[derive(Debug, Default)]
struct Tables {
    sessions: BTreeMap<String, SessionRow>,
    runs: BTreeMap<String, RunRow>,
    /// (run, kind, name)
    checkpoints: BTreeMap<(String, String, String), CheckpointRow>,
    futures: BTreeMap<String, FutureRow>,
    /// (run, seq_id)
    journal: BTreeMap<(String, u64), JournalRow>,
    samplers: BTreeMap<String, SamplerRow>,
    meta: BTreeMap<String, String>,
    /// (tenant, counter)
    usage: BTreeMap<(String, String), u64>,
}

/// Puts one key of one table back as it was before an op changed it.
type Undo = Box<dyn FnOnce(&mut Tables)>;

/// Which table an op changes; a plain fn so that an undo entry can find the table again.
type Table<K, V> = fn(&mut Tables) -> &mut BTreeMap<K, V>;

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Tables>, StoreError> {
        // Poisoned only if a commit panicked half way; its undo log never ran, so the tables
        // cannot be trusted.
        self.tables
            .lock()
            .map_err(|_| StoreError::Panicked { why: "an earlier commit on this MemStore panicked".into() })
    }
}

impl Store for MemStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let t = self.lock()?;
        let mut usage: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((tenant, counter), amount) in &t.usage {
            usage.entry(tenant.clone()).or_default().insert(counter.clone(), *amount);
        }
        // BTreeMap iteration is in key order, which is the order `Loaded` promises.
        Ok(Loaded {
            sessions: t.sessions.values().cloned().collect(),
            runs: t.runs.values().cloned().collect(),
            checkpoints: t.checkpoints.values().cloned().collect(),
            futures: t.futures.values().cloned().collect(),
            journal: t.journal.values().cloned().collect(),
            samplers: t.samplers.values().cloned().collect(),
            meta: t.meta.clone(),
            usage,
        })
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut t = self.lock()?;
        let mut undo: Vec<Undo> = Vec::new();
        for op in ops {
            if let Err(e) = apply(&mut t, &mut undo, op) {
                for u in undo.into_iter().rev() {
                    u(&mut t);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

fn apply(t: &mut Tables, undo: &mut Vec<Undo>, op: &StoreOp) -> Result<(), StoreError> {
    check_ints(op)?;
    match op {
        StoreOp::PutSession(s) => set(t, undo, |t| &mut t.sessions, s.id.clone(), Some(s.clone())),
        StoreOp::PutRun(r) => set(t, undo, |t| &mut t.runs, r.id.clone(), Some(r.clone())),
        StoreOp::PutCheckpoint(c) => {
            let key = (c.run.clone(), c.kind.clone(), c.name.clone());
            set(t, undo, |t| &mut t.checkpoints, key, Some(c.clone()));
        }
        StoreOp::DeleteCheckpoint { run, kind, name } => {
            set(t, undo, |t| &mut t.checkpoints, (run.clone(), kind.clone(), name.clone()), None);
        }
        StoreOp::PutFuture(f) => set(t, undo, |t| &mut t.futures, f.request_id.clone(), Some(f.clone())),
        StoreOp::DeleteFuture { request_id } => set(t, undo, |t| &mut t.futures, request_id.clone(), None),
        StoreOp::AppendJournal(j) => {
            let key = (j.run.clone(), j.seq_id);
            if t.journal.contains_key(&key) {
                return Err(StoreError::DuplicateJournalRow { run: j.run.clone(), seq_id: j.seq_id });
            }
            set(t, undo, |t| &mut t.journal, key, Some(j.clone()));
        }
        StoreOp::TruncateJournal { run, through_seq_id } => {
            let keys: Vec<(String, u64)> =
                t.journal.range((run.clone(), 0)..=(run.clone(), *through_seq_id)).map(|(k, _)| k.clone()).collect();
            for key in keys {
                set(t, undo, |t| &mut t.journal, key, None);
            }
        }
        StoreOp::PutSampler(s) => set(t, undo, |t| &mut t.samplers, s.id.clone(), Some(s.clone())),
        StoreOp::DeleteSampler { sampler } => set(t, undo, |t| &mut t.samplers, sampler.clone(), None),
        StoreOp::PutMeta { key, value } => set(t, undo, |t| &mut t.meta, key.clone(), Some(value.clone())),
        StoreOp::AddUsage { tenant, counter, amount } => {
            let key = (tenant.clone(), counter.clone());
            let sum = usage_sum(t.usage.get(&key).copied().unwrap_or(0), *amount)?;
            set(t, undo, |t| &mut t.usage, key, Some(sum));
        }
    }
    Ok(())
}

/// Sets (`Some`) or removes (`None`) one key and records how to put it back.
fn set<K, V>(t: &mut Tables, undo: &mut Vec<Undo>, table: Table<K, V>, key: K, value: Option<V>)
where
    K: Ord + Clone + 'static,
    V: 'static,
{
    let map = table(t);
    let old = match value {
        Some(v) => map.insert(key.clone(), v),
        None => map.remove(&key),
    };
    undo.push(Box::new(move |t| {
        let map = table(t);
        match old {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
    }));
}
