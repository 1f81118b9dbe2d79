//! What the store holds, as plain data: the rows of each table, [`StoreOp`] (one durable change,
//! built by the core) and [`Loaded`] (everything read back at start). No I/O here.
//!
//! The store does not interpret the records the core owns (runs, checkpoints, samplers, future
//! outcomes): they travel as JSON text, next to the few columns the store indexes (id, tenant, run).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A session. `state` is the core's own spelling of its state (the import of an old journal writes
/// `"expired"`: a restarted coordinator has lost what an active session held in memory).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: String,
    pub tenant: String,
    pub created_ms: u64,
    pub state: String,
}

/// A training run: the core's record as JSON, with its id and tenant indexed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    pub id: String,
    pub tenant: String,
    pub record_json: String,
}

/// A checkpoint, keyed by (run, kind, name). `kind` is the path segment
/// (`CheckpointKind::segment`: `weights`, `sampler_weights`, `external_weights`), as the import of
/// an old journal writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub run: String,
    pub kind: String,
    pub name: String,
    pub tenant: String,
    pub record_json: String,
}

/// A future (one API request's result), keyed by request id. `outcome_json` is `None` while the
/// request is pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FutureRow {
    pub request_id: String,
    pub tenant: String,
    pub run: Option<String>,
    pub created_ms: u64,
    pub idempotency_key: Option<String>,
    pub outcome_json: Option<String>,
    pub completed_ms: Option<u64>,
    pub fetched_ms: Option<u64>,
}

/// One acknowledged request of a run, kept for replay until the run's next snapshot. The SQLite
/// store keeps `payload` as a content-addressed file and only its hash in the row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRow {
    pub run: String,
    pub seq_id: u64,
    pub request_id: String,
    pub kind: String,
    pub payload: Vec<u8>,
}

/// A sampling client: the core's record as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerRow {
    pub id: String,
    pub tenant: String,
    pub record_json: String,
}

/// One durable change. A batch of them is committed atomically ([`super::Store::commit`]).
/// Deleting what does not exist is not an error: deletes are idempotent, like the upserts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreOp {
    /// Upsert by id.
    PutSession(SessionRow),
    /// Upsert by id.
    PutRun(RunRow),
    /// Upsert by (run, kind, name).
    PutCheckpoint(CheckpointRow),
    DeleteCheckpoint {
        run: String,
        kind: String,
        name: String,
    },
    /// Upsert by request id.
    PutFuture(FutureRow),
    DeleteFuture {
        request_id: String,
    },
    /// Insert; a row with the same (run, seq_id) already there is an error
    /// ([`super::StoreError::DuplicateJournalRow`]), since a seq_id is acknowledged once.
    AppendJournal(JournalRow),
    /// Deletes the run's rows with `seq_id <= through_seq_id` (they are in a snapshot now), and
    /// the payloads no remaining row references.
    TruncateJournal {
        run: String,
        through_seq_id: u64,
    },
    /// Upsert by id.
    PutSampler(SamplerRow),
    DeleteSampler {
        sampler: String,
    },
    /// Upsert by key.
    PutMeta {
        key: String,
        value: String,
    },
    /// Adds `amount` to the tenant's counter (which starts at 0).
    AddUsage {
        tenant: String,
        counter: String,
        amount: u64,
    },
}

/// Everything the store holds, read back at start. Every list is sorted by its key (byte order of
/// the strings), so two stores holding the same rows load equal values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// By id.
    pub sessions: Vec<SessionRow>,
    /// By id.
    pub runs: Vec<RunRow>,
    /// By (run, kind, name).
    pub checkpoints: Vec<CheckpointRow>,
    /// By request id.
    pub futures: Vec<FutureRow>,
    /// By (run, seq_id), payloads included.
    pub journal: Vec<JournalRow>,
    /// By id.
    pub samplers: Vec<SamplerRow>,
    pub meta: BTreeMap<String, String>,
    /// tenant -> counter -> amount.
    pub usage: BTreeMap<String, BTreeMap<String, u64>>,
}
