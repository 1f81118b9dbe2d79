//! `Catalog`: the durable facts: training runs (owner, base model, LoRA config) and checkpoints
//! (path, size, expiry). Every lookup takes the caller's tenant and finds nothing of anyone
//! else's. TTL expiry is a pure function of `now_ms`; deleting the files is the caller's job.

use std::collections::BTreeMap;

use runtime::LoraConfig;
use serde::{Deserialize, Serialize};

use super::ids::{CheckpointKind, CheckpointName, RunId, SessionId, TenantId, TinkerPath};

/// A training run as the catalogue remembers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub tenant: TenantId,
    pub session_id: SessionId,
    pub base_model: String,
    pub lora: LoraConfig,
    pub created_ms: u64,
    pub last_request_ms: u64,
    pub user_metadata: Option<serde_json::Value>,
    /// The run's last snapshot (adapter + optimizer state after an optim step): where a restart
    /// rebuilds it from before replaying the journal rows above `through_seq_id`.
    #[serde(default)]
    pub snapshot: Option<SnapshotRef>,
}

/// Where a run's last snapshot is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub through_seq_id: u64,
    pub dir: std::path::PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub run: RunId,
    pub kind: CheckpointKind,
    pub name: CheckpointName,
    pub tenant: TenantId,
    pub created_ms: u64,
    pub size_bytes: u64,
    pub expires_ms: Option<u64>,
    pub user_metadata: Option<serde_json::Value>,
}

impl CheckpointRecord {
    pub fn path(&self) -> TinkerPath {
        TinkerPath { run: self.run.as_str().to_string(), kind: self.kind, name: self.name.as_str().to_string() }
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    runs: BTreeMap<RunId, RunRecord>,
    checkpoints: BTreeMap<TinkerPath, CheckpointRecord>,
}

impl Catalog {
    pub fn new() -> Self {
        Catalog::default()
    }

    /// Adds (or, on replay, replaces) a run.
    pub fn add_run(&mut self, run: RunRecord) {
        self.runs.insert(run.id.clone(), run);
    }

    pub fn run(&self, tenant: &TenantId, id: &str) -> Option<&RunRecord> {
        self.runs.get(id).filter(|r| r.tenant == *tenant)
    }

    /// Every run of every tenant (for recovery).
    pub fn all_runs(&self) -> impl Iterator<Item = &RunRecord> {
        self.runs.values()
    }

    pub fn run_mut(&mut self, id: &str) -> Option<&mut RunRecord> {
        self.runs.get_mut(id)
    }

    /// Whether any tenant has a run with this id (ids are global even though lookups are scoped).
    pub fn run_exists(&self, id: &str) -> bool {
        self.runs.contains_key(id)
    }

    /// The owner of a run, for code that already holds a run id it checked.
    pub fn run_tenant(&self, id: &str) -> Option<TenantId> {
        self.runs.get(id).map(|r| r.tenant.clone())
    }

    pub fn touch_run(&mut self, id: &str, now_ms: u64) {
        if let Some(r) = self.runs.get_mut(id) {
            r.last_request_ms = r.last_request_ms.max(now_ms);
        }
    }

    /// The tenant's runs, oldest first.
    pub fn runs_of(&self, tenant: &TenantId) -> Vec<&RunRecord> {
        let mut runs: Vec<&RunRecord> = self.runs.values().filter(|r| r.tenant == *tenant).collect();
        runs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        runs
    }

    /// Adds a checkpoint, replacing one at the same path (`overwrite`).
    pub fn add_checkpoint(&mut self, c: CheckpointRecord) {
        self.checkpoints.insert(c.path(), c);
    }

    pub fn checkpoint(&self, tenant: &TenantId, path: &TinkerPath) -> Option<&CheckpointRecord> {
        self.checkpoints.get(path).filter(|c| c.tenant == *tenant)
    }

    pub fn remove_checkpoint(&mut self, path: &TinkerPath) -> Option<CheckpointRecord> {
        self.checkpoints.remove(path)
    }

    /// Sets or clears a checkpoint's expiry; false when there is no such checkpoint.
    pub fn set_expiry(&mut self, path: &TinkerPath, expires_ms: Option<u64>) -> bool {
        match self.checkpoints.get_mut(path) {
            Some(c) => {
                c.expires_ms = expires_ms;
                true
            }
            None => false,
        }
    }

    /// The tenant's checkpoints of one run, oldest first.
    pub fn checkpoints_of_run(&self, tenant: &TenantId, run: &str) -> Vec<&CheckpointRecord> {
        let mut v: Vec<&CheckpointRecord> =
            self.checkpoints.values().filter(|c| c.tenant == *tenant && c.run.as_str() == run).collect();
        v.sort_by_key(|c| (c.created_ms, c.path()));
        v
    }

    /// All of the tenant's checkpoints, newest first.
    pub fn checkpoints_of(&self, tenant: &TenantId) -> Vec<&CheckpointRecord> {
        let mut v: Vec<&CheckpointRecord> = self.checkpoints.values().filter(|c| c.tenant == *tenant).collect();
        v.sort_by_key(|c| (std::cmp::Reverse(c.created_ms), c.path()));
        v
    }

    /// The newest checkpoint of `kind` of a run.
    pub fn last_checkpoint(&self, tenant: &TenantId, run: &str, kind: CheckpointKind) -> Option<&CheckpointRecord> {
        self.checkpoints_of_run(tenant, run).into_iter().rfind(|c| c.kind == kind)
    }

    /// Checkpoints whose TTL has run out at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Vec<TinkerPath> {
        self.checkpoints.values().filter(|c| c.expires_ms.is_some_and(|e| e <= now_ms)).map(|c| c.path()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn run(id: &str, tenant: &str, at: u64) -> RunRecord {
        RunRecord {
            id: RunId::new(id).unwrap(),
            tenant: t(tenant),
            session_id: SessionId::new("sess-1").unwrap(),
            base_model: "tiny/llama3".into(),
            lora: LoraConfig::new(8, 32.0, 0, true, true, true).unwrap(),
            created_ms: at,
            last_request_ms: at,
            user_metadata: None,
            snapshot: None,
        }
    }

    fn ckpt(run: &str, kind: CheckpointKind, name: &str, tenant: &str, at: u64) -> CheckpointRecord {
        CheckpointRecord {
            run: RunId::new(run).unwrap(),
            kind,
            name: CheckpointName::new(name).unwrap(),
            tenant: t(tenant),
            created_ms: at,
            size_bytes: 10,
            expires_ms: None,
            user_metadata: None,
        }
    }

    #[test]
    fn runs_and_checkpoints_are_scoped_to_their_tenant() {
        let mut c = Catalog::new();
        c.add_run(run("a:train:0", "alice", 1));
        c.add_checkpoint(ckpt("a:train:0", CheckpointKind::Weights, "x", "alice", 2));
        let path = TinkerPath::parse("tinker://a:train:0/weights/x").unwrap();
        assert!(c.run(&t("alice"), "a:train:0").is_some());
        assert!(c.run(&t("bob"), "a:train:0").is_none());
        assert!(c.checkpoint(&t("bob"), &path).is_none());
        assert!(c.runs_of(&t("bob")).is_empty() && c.checkpoints_of(&t("bob")).is_empty());
        assert_eq!(c.checkpoints_of_run(&t("alice"), "a:train:0").len(), 1);
    }

    #[test]
    fn ttl_expiry_lists_only_checkpoints_past_their_deadline() {
        let mut c = Catalog::new();
        c.add_checkpoint(ckpt("r", CheckpointKind::ExternalWeights, "x", "alice", 0));
        c.add_checkpoint(ckpt("r", CheckpointKind::Weights, "y", "alice", 0));
        let x = TinkerPath::parse("tinker://r/external_weights/x").unwrap();
        assert!(c.set_expiry(&x, Some(3_600_000)));
        assert!(c.expired(3_599_999).is_empty());
        assert_eq!(c.expired(3_600_000), vec![x.clone()]);
        assert!(c.set_expiry(&x, None));
        assert!(c.expired(u64::MAX).is_empty());
        assert!(!c.set_expiry(&TinkerPath::parse("tinker://r/weights/nope").unwrap(), None));
    }

    #[test]
    fn the_last_checkpoint_of_a_kind_is_the_newest() {
        let mut c = Catalog::new();
        c.add_checkpoint(ckpt("r", CheckpointKind::Weights, "old", "alice", 1));
        c.add_checkpoint(ckpt("r", CheckpointKind::Weights, "new", "alice", 5));
        c.add_checkpoint(ckpt("r", CheckpointKind::SamplerWeights, "s", "alice", 9));
        assert_eq!(c.last_checkpoint(&t("alice"), "r", CheckpointKind::Weights).unwrap().name.as_str(), "new");
        assert_eq!(c.checkpoints_of(&t("alice"))[0].name.as_str(), "s");
    }
}
