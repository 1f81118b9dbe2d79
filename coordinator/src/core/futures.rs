//! `Futures`: the table behind `retrieve_future`. Every asynchronous request gets an id here at
//! submission; its entry is pending until the worker answers, then holds the result or failure.
//! Results stay until fetched and for a while after (a 404 on a poll is fatal to the SDK), and
//! unfetched ones for a day. It also maps `X-Idempotency-Key`s to the request they first created.
//! Pure bookkeeping: time is the `now_ms` argument.

use std::collections::HashMap;

use runtime::control::{ErrorCategory, ForwardBackwardResult, SampleResult};
use serde::{Deserialize, Serialize};

use super::ids::{RequestId, RunId, TenantId};
use crate::error::CoordinatorError;
use crate::store::FutureRow;

/// How long a result stays after its first fetch (the SDK may re-poll after a lost reply).
pub const RETAIN_AFTER_FETCH_MS: u64 = 10 * 60 * 1000;
/// How long an unfetched result stays.
pub const RETAIN_UNFETCHED_MS: u64 = 24 * 60 * 60 * 1000;

/// A finished request's result, before encoding for the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// A JSON result model (CreateModelResponse, OptimStepResponse, SaveWeightsResponse, …).
    Json(serde_json::Value),
    /// Encoded as protobuf `ForwardBackwardOutput`.
    ForwardBackward(ForwardBackwardResult),
    /// Encoded as protobuf `SampleResponse`.
    Sample(SampleResult),
    /// HTTP 200 `{"error", "category"}`.
    Failed { category: ErrorCategory, message: String },
}

#[derive(Debug)]
struct Entry {
    tenant: TenantId,
    run: Option<RunId>,
    created_ms: u64,
    outcome: Option<Outcome>,
    completed_ms: Option<u64>,
    fetched_ms: Option<u64>,
    idempotency_key: Option<String>,
}

/// What a poll finds.
#[derive(Debug, PartialEq)]
pub enum Poll {
    Pending,
    Ready(Outcome),
    /// No such request for this tenant (never existed, purged, or someone else's).
    Unknown,
}

/// Request id → state, tenant-scoped.
#[derive(Debug)]
pub struct Futures {
    /// Distinguishes ids across coordinator restarts (ids are never reused).
    id_prefix: String,
    next: u64,
    entries: HashMap<RequestId, Entry>,
    /// (tenant, idempotency key) → request id.
    by_key: HashMap<(TenantId, String), RequestId>,
}

impl Futures {
    pub fn new(id_prefix: &str) -> Self {
        assert!(
            RequestId::new(format!("req-{id_prefix}-1")).is_ok(),
            "request id prefix {id_prefix:?} does not make valid request ids"
        );
        Futures { id_prefix: id_prefix.to_string(), next: 1, entries: HashMap::new(), by_key: HashMap::new() }
    }

    /// The request id an idempotency key already created, if any.
    pub fn by_idempotency_key(&self, tenant: &TenantId, key: &str) -> Option<RequestId> {
        self.by_key.get(&(tenant.clone(), key.to_string())).cloned()
    }

    /// Creates a pending request of `run` (if it is a run's) at `now_ms` and returns its id.
    pub fn create_at(&mut self, tenant: &TenantId, run: Option<&RunId>, now_ms: u64) -> RequestId {
        let id = self.create(tenant, None);
        if let Some(e) = self.entries.get_mut(&id) {
            e.run = run.cloned();
            e.created_ms = now_ms;
        }
        id
    }

    /// The durable form of a request's state.
    pub fn row(&self, request_id: &str) -> Option<FutureRow> {
        let e = self.entries.get(request_id)?;
        Some(FutureRow {
            request_id: request_id.to_string(),
            tenant: e.tenant.to_string(),
            run: e.run.as_ref().map(RunId::to_string),
            created_ms: e.created_ms,
            idempotency_key: e.idempotency_key.clone(),
            outcome_json: e.outcome.as_ref().and_then(|o| serde_json::to_string(o).ok()),
            completed_ms: e.completed_ms,
            fetched_ms: e.fetched_ms,
        })
    }

    /// Re-adds a request recorded before a restart. Ids of this prefix are never reissued.
    pub fn restore(&mut self, row: &FutureRow) -> Result<(), CoordinatorError> {
        let bad = |e: &dyn std::fmt::Display| CoordinatorError::Internal(e.to_string());
        let outcome = match &row.outcome_json {
            Some(text) => Some(serde_json::from_str::<Outcome>(text).map_err(|e| bad(&e))?),
            None => None,
        };
        let id = RequestId::new(row.request_id.clone()).map_err(|e| bad(&e))?;
        let tenant = TenantId::new(row.tenant.clone()).map_err(|e| bad(&e))?;
        let run = row.run.clone().map(RunId::new).transpose().map_err(|e| bad(&e))?;
        let entry = Entry {
            tenant: tenant.clone(),
            run,
            created_ms: row.created_ms,
            outcome,
            completed_ms: row.completed_ms,
            fetched_ms: row.fetched_ms,
            idempotency_key: row.idempotency_key.clone(),
        };
        if let Some(key) = &row.idempotency_key {
            self.by_key.insert((tenant, key.clone()), id.clone());
        }
        self.entries.insert(id, entry);
        Ok(())
    }

    /// Ids of requests without a result yet, in id order.
    pub fn pending_ids(&self) -> Vec<RequestId> {
        let mut ids: Vec<RequestId> =
            self.entries.iter().filter(|(_, e)| e.outcome.is_none()).map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    }

    /// A request of `tenant` (None: unknown to this tenant), with its outcome once it has one.
    pub fn outcome_of(&self, tenant: &TenantId, request_id: &str) -> Option<Option<&Outcome>> {
        self.entries.get(request_id).filter(|e| e.tenant == *tenant).map(|e| e.outcome.as_ref())
    }

    /// The tenant a request belongs to.
    pub fn tenant_of(&self, request_id: &str) -> Option<TenantId> {
        self.entries.get(request_id).map(|e| e.tenant.clone())
    }

    /// Whether a request has a result.
    pub fn is_done(&self, request_id: &str) -> bool {
        self.entries.get(request_id).is_some_and(|e| e.outcome.is_some())
    }

    /// Creates a pending request and returns its id.
    pub fn create(&mut self, tenant: &TenantId, idempotency_key: Option<&str>) -> RequestId {
        let id = RequestId::new(format!("req-{}-{}", self.id_prefix, self.next))
            .expect("the prefix is checked in Futures::new and a counter is printable");
        self.next += 1;
        if let Some(key) = idempotency_key {
            let previous = self.by_key.insert((tenant.clone(), key.to_string()), id.clone());
            assert!(previous.is_none(), "idempotency key reused; callers check by_idempotency_key first");
        }
        let entry = Entry {
            tenant: tenant.clone(),
            run: None,
            created_ms: 0,
            outcome: None,
            completed_ms: None,
            fetched_ms: None,
            idempotency_key: idempotency_key.map(str::to_string),
        };
        self.entries.insert(id.clone(), entry);
        id
    }

    /// Records a request's result; later completions of the same id are ignored (first wins).
    /// True when this call recorded it.
    pub fn complete(&mut self, request_id: &str, outcome: Outcome, now_ms: u64) -> bool {
        match self.entries.get_mut(request_id) {
            Some(entry) if entry.outcome.is_none() => {
                entry.outcome = Some(outcome);
                entry.completed_ms = Some(now_ms);
                true
            }
            _ => false,
        }
    }

    /// Like [`Futures::poll`] for a caller that already checked the tenant (a waiting long poll).
    pub fn poll_any(&mut self, request_id: &str, now_ms: u64) -> Poll {
        let tenant = match self.entries.get(request_id) {
            Some(e) => e.tenant.clone(),
            None => return Poll::Unknown,
        };
        self.poll(&tenant, request_id, now_ms)
    }

    /// Looks a request up for `tenant`; a ready result is marked fetched.
    pub fn poll(&mut self, tenant: &TenantId, request_id: &str, now_ms: u64) -> Poll {
        match self.entries.get_mut(request_id) {
            Some(entry) if entry.tenant == *tenant => match &entry.outcome {
                None => Poll::Pending,
                Some(outcome) => {
                    entry.fetched_ms.get_or_insert(now_ms);
                    Poll::Ready(outcome.clone())
                }
            },
            _ => Poll::Unknown,
        }
    }

    /// Drops results fetched long enough ago and results nobody fetched for a day; returns their ids.
    pub fn purge(&mut self, now_ms: u64) -> Vec<RequestId> {
        let expired: Vec<RequestId> = self
            .entries
            .iter()
            .filter(|(_, e)| match (e.completed_ms, e.fetched_ms) {
                (_, Some(f)) => now_ms.saturating_sub(f) > RETAIN_AFTER_FETCH_MS,
                (Some(c), None) => now_ms.saturating_sub(c) > RETAIN_UNFETCHED_MS,
                (None, None) => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            let entry = self.entries.remove(id).expect("id was just listed");
            if let Some(key) = entry.idempotency_key {
                self.by_key.remove(&(entry.tenant, key));
            }
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn ok() -> Outcome {
        Outcome::Json(serde_json::json!({"ok": true}))
    }

    #[test]
    fn a_request_is_pending_until_completed_then_ready() {
        let mut f = Futures::new("t");
        let id = f.create(&t("alice"), None);
        assert_eq!(f.poll(&t("alice"), id.as_str(), 0), Poll::Pending);
        f.complete(id.as_str(), ok(), 5);
        assert_eq!(f.poll(&t("alice"), id.as_str(), 6), Poll::Ready(ok()));
    }

    #[test]
    fn another_tenant_cannot_see_a_request() {
        let mut f = Futures::new("t");
        let id = f.create(&t("alice"), None);
        f.complete(id.as_str(), ok(), 5);
        assert_eq!(f.poll(&t("bob"), id.as_str(), 6), Poll::Unknown);
        assert_eq!(f.poll(&t("alice"), "req-t-999", 6), Poll::Unknown);
    }

    #[test]
    fn the_first_completion_wins() {
        let mut f = Futures::new("t");
        let id = f.create(&t("alice"), None);
        f.complete(id.as_str(), ok(), 1);
        f.complete(id.as_str(), Outcome::Failed { category: ErrorCategory::Server, message: "late".into() }, 2);
        assert_eq!(f.poll(&t("alice"), id.as_str(), 3), Poll::Ready(ok()));
    }

    #[test]
    fn results_stay_until_fetched_and_a_while_after() {
        let mut f = Futures::new("t");
        let fetched = f.create(&t("alice"), Some("key-1"));
        let unfetched = f.create(&t("alice"), None);
        let pending = f.create(&t("alice"), None);
        f.complete(fetched.as_str(), ok(), 0);
        f.complete(unfetched.as_str(), ok(), 0);
        assert_eq!(f.poll(&t("alice"), fetched.as_str(), 1_000), Poll::Ready(ok()));
        assert!(f.purge(1_000 + RETAIN_AFTER_FETCH_MS).is_empty());
        assert_eq!(f.purge(1_001 + RETAIN_AFTER_FETCH_MS), vec![fetched.clone()]);
        assert_eq!(f.poll(&t("alice"), fetched.as_str(), 0), Poll::Unknown);
        assert_eq!(f.by_idempotency_key(&t("alice"), "key-1"), None);
        assert_eq!(f.purge(RETAIN_UNFETCHED_MS + 1), vec![unfetched.clone()]);
        assert_eq!(f.poll(&t("alice"), pending.as_str(), RETAIN_UNFETCHED_MS * 9), Poll::Pending);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn an_idempotency_key_maps_to_its_first_request_per_tenant() {
        let mut f = Futures::new("t");
        let id = f.create(&t("alice"), Some("k"));
        assert_eq!(f.by_idempotency_key(&t("alice"), "k"), Some(id.clone()));
        assert_eq!(f.by_idempotency_key(&t("bob"), "k"), None);
        let other = f.create(&t("bob"), Some("k"));
        assert_ne!(id, other);
    }
}
