//! The coordinator's durable state (design §6): sessions, runs, the checkpoint catalogue, futures,
//! each run's journal of requests since its last snapshot, samplers, metadata and usage counters.
//!
//! The core decides *what* changes and describes it as [`StoreOp`]s; a [`Store`] makes a batch of
//! them durable, all or nothing, before the shell acknowledges anything that depends on it.
//! [`SqliteStore`] is the real one (`<data>/lathe.sqlite` + content-addressed payload files),
//! [`MemStore`] has the same semantics in memory for the core's tests and the simulator, and
//! [`GroupCommitter`] runs a store on its own thread so that concurrent batches share one fsync.
//!
//! The old JSON-lines journal ([`Journal`], [`Event`]) stays until the shell moves over; the SQLite
//! store imports a data directory that still has one.

mod group;
mod jsonl;
mod memory;
pub mod ops;
mod sqlite;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use group::{Done, GroupCommitter};
pub use jsonl::{Event, Journal};
pub use memory::MemStore;
pub use ops::{CheckpointRow, FutureRow, JournalRow, Loaded, RunRow, SamplerRow, SessionRow, StoreOp};
pub use sqlite::SqliteStore;

/// Durable storage behind the core. One writer: the methods take `&mut self`, and the shell owns
/// the store (directly at start, then through a [`GroupCommitter`]).
pub trait Store: Send + 'static {
    /// Everything committed so far.
    fn load(&mut self) -> Result<Loaded, StoreError>;

    /// Applies `ops` in order, atomically and durably: when this returns `Ok` the batch survives
    /// a crash or power loss; when it returns `Err` nothing of it was applied (which is what lets
    /// [`GroupCommitter`] retry the batches of a failed group one by one).
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}; check that the data directory is writable and its disk is not full")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "database {path}: {source}; if this persists, stop lathe, run `sqlite3 {path} 'PRAGMA integrity_check'` \
         and restore the data directory from a backup if it reports damage"
    )]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("database {path} is in journal mode {mode:?} and refused WAL; put the data directory on a local disk")]
    NoWal { path: PathBuf, mode: String },
    #[error(
        "database {path} has schema version {found}, newer than this build knows ({known}); run the lathe \
         release that wrote it (or a newer one)"
    )]
    SchemaTooNew { path: PathBuf, found: i64, known: i64 },
    #[error(
        "journal row (run {run}, seq_id {seq_id}) already exists, so the batch was not applied; a seq_id is \
         journaled once, so this is a bug in the coordinator: report it"
    )]
    DuplicateJournalRow { run: String, seq_id: u64 },
    #[error(
        "payload file {path} of journal row (run {run}, seq_id {seq_id}) is missing; restore the data \
         directory from a backup"
    )]
    PayloadMissing { path: PathBuf, run: String, seq_id: u64 },
    #[error(
        "payload file {path} is corrupt (its sha256 is {actual}, its name is the one it should have); restore \
         it from a backup"
    )]
    PayloadCorrupt { path: PathBuf, actual: String },
    #[error(
        "{what} {value} does not fit the store's 63-bit integers, so the batch was not applied; this is a bug \
         in the coordinator: report it"
    )]
    OutOfRange { what: &'static str, value: u64 },
    #[error("importing the old state journal {path}: {why}; fix the file or move it away to start without it")]
    Import { path: PathBuf, why: String },
    #[error(
        "{path} exists next to {db}, which was not imported from it; the journal is no longer read: move it \
         away (its state is lost) or start from a data directory without {db}"
    )]
    StrayJournal { path: PathBuf, db: PathBuf },
    #[error(
        "the store panicked ({why}), so nothing more is committed; restart the coordinator, which reloads what \
         was committed"
    )]
    Panicked { why: String },
    #[error("starting the store thread: {0}; the machine is out of threads or memory")]
    Thread(std::io::Error),
    #[error("the store thread has stopped; restart the coordinator, which reloads what was committed")]
    Stopped,
}

/// The store keeps integers as SQLite's signed 64-bit ones; both stores refuse a larger value
/// the same way, so the in-memory store cannot accept what the real one would not.
fn db_int(what: &'static str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

/// Checks every integer of an op fits ([`db_int`]), before anything of its batch is applied.
fn check_ints(op: &StoreOp) -> Result<(), StoreError> {
    match op {
        StoreOp::PutSession(s) => db_int("session created_ms", s.created_ms).map(drop),
        StoreOp::PutFuture(f) => {
            db_int("future created_ms", f.created_ms)?;
            if let Some(ms) = f.completed_ms {
                db_int("future completed_ms", ms)?;
            }
            if let Some(ms) = f.fetched_ms {
                db_int("future fetched_ms", ms)?;
            }
            Ok(())
        }
        StoreOp::AppendJournal(j) => db_int("journal seq_id", j.seq_id).map(drop),
        StoreOp::AddUsage { amount, .. } => db_int("usage amount", *amount).map(drop),
        // `through_seq_id` is only compared against, so a larger one means "everything".
        StoreOp::TruncateJournal { .. }
        | StoreOp::PutRun(_)
        | StoreOp::PutCheckpoint(_)
        | StoreOp::DeleteCheckpoint { .. }
        | StoreOp::DeleteFuture { .. }
        | StoreOp::PutSampler(_)
        | StoreOp::DeleteSampler { .. }
        | StoreOp::PutMeta { .. } => Ok(()),
    }
}

/// A usage counter after adding `amount`, or the error both stores give when it would not fit.
fn usage_sum(current: u64, amount: u64) -> Result<u64, StoreError> {
    match current.checked_add(amount) {
        Some(sum) if db_int("usage counter", sum).is_ok() => Ok(sum),
        _ => Err(StoreError::OutOfRange { what: "usage counter", value: current.saturating_add(amount) }),
    }
}
