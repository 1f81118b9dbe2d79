//! `SqliteStore`: the [`Store`] in `<data>/lathe.sqlite` (design §6), with journal payloads as
//! content-addressed files `<data>/payloads/<sha256 hex>`.
//!
//! Durability: WAL mode with `synchronous=FULL`, so a commit returns after its WAL frames are
//! fsynced. A batch's payload files are written (tmp, fsync, rename) and their directory fsynced
//! *before* the transaction that references them commits, so a committed row never points at a
//! file that a crash could lose. Payloads a truncation frees are deleted after the commit; a crash
//! in between, or a failed commit after its payloads were written, leaves unreferenced files that
//! the next open sweeps.
//!
//! Schema: `PRAGMA user_version` counts the [`MIGRATIONS`] applied; open applies the missing ones
//! in order, in one transaction, and refuses a database newer than this build. A new database in
//! a data directory that still has the old `state.jsonl` imports it in that same transaction.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

use super::jsonl::{Event, Journal};
use super::ops::{CheckpointRow, FutureRow, JournalRow, Loaded, RunRow, SamplerRow, SessionRow, StoreOp};
use super::{check_ints, usage_sum, Store, StoreError};
use crate::core::catalog::{CheckpointRecord, RunRecord};
use crate::core::ids::CheckpointKind;

pub const DB_FILE: &str = "lathe.sqlite";
const PAYLOADS_DIR: &str = "payloads";
const OLD_JOURNAL: &str = "state.jsonl";
const OLD_JOURNAL_DONE: &str = "state.jsonl.migrated";
/// `store_meta` key set by the transaction that imported `state.jsonl`: a crash before the rename
/// finds the file still there and only finishes the rename.
const IMPORTED_KEY: &str = "imported_state_jsonl";

/// `MIGRATIONS[v]` takes the schema from version `v` to `v + 1`. Append only; never edit one that
/// has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema. Upserts replace whole rows; text keys sort bytewise (BINARY collation),
    // which is the order `Loaded` promises. `store_meta` is the store's own bookkeeping, apart from
    // the core's `meta`.
    "
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_ms INTEGER NOT NULL, state TEXT NOT NULL
    ) STRICT;
    CREATE INDEX sessions_tenant ON sessions (tenant);
    CREATE TABLE runs (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, record_json TEXT NOT NULL) STRICT;
    CREATE INDEX runs_tenant ON runs (tenant);
    CREATE TABLE checkpoints (
        run TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, tenant TEXT NOT NULL,
        record_json TEXT NOT NULL, PRIMARY KEY (run, kind, name)
    ) STRICT;
    CREATE INDEX checkpoints_tenant ON checkpoints (tenant);
    CREATE TABLE futures (
        request_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, run TEXT, created_ms INTEGER NOT NULL,
        idempotency_key TEXT, outcome_json TEXT, completed_ms INTEGER, fetched_ms INTEGER
    ) STRICT;
    CREATE INDEX futures_tenant ON futures (tenant, idempotency_key);
    CREATE INDEX futures_run ON futures (run);
    CREATE TABLE journal (
        run TEXT NOT NULL, seq_id INTEGER NOT NULL, request_id TEXT NOT NULL, kind TEXT NOT NULL,
        payload_sha256 TEXT NOT NULL, PRIMARY KEY (run, seq_id)
    ) STRICT;
    CREATE INDEX journal_payload ON journal (payload_sha256);
    CREATE TABLE samplers (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, record_json TEXT NOT NULL) STRICT;
    CREATE INDEX samplers_tenant ON samplers (tenant);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    CREATE TABLE usage (
        tenant TEXT NOT NULL, counter TEXT NOT NULL, amount INTEGER NOT NULL, PRIMARY KEY (tenant, counter)
    ) STRICT;
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    ",
];

#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    db_path: PathBuf,
    payloads_dir: PathBuf,
}

impl SqliteStore {
    /// Opens (creating) the store of a data directory: applies missing migrations, imports an old
    /// `state.jsonl` into a new database, and deletes payload files nothing references.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let payloads_dir = data_dir.join(PAYLOADS_DIR);
        fs::create_dir_all(&payloads_dir).map_err(io("creating", &payloads_dir))?;
        let db_path = data_dir.join(DB_FILE);
        let conn = Connection::open(&db_path).map_err(sql(&db_path))?;
        // WAL: a commit is an append to the log, and readers never block the writer.
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(sql(&db_path))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path: db_path, mode });
        }
        // FULL: fsync the WAL at every commit, so an acknowledged write survives power loss
        // (NORMAL would fsync only at checkpoints).
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql(&db_path))?;
        let mut store = SqliteStore { conn, db_path, payloads_dir };
        store.migrate(data_dir)?;
        store.sweep_payloads()?;
        Ok(store)
    }

    fn migrate(&mut self, data_dir: &Path) -> Result<(), StoreError> {
        let db = self.db_path.clone();
        let known = MIGRATIONS.len() as i64;
        let found: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql(&db))?;
        if found > known {
            return Err(StoreError::SchemaTooNew { path: db, found, known });
        }
        let old_journal = data_dir.join(OLD_JOURNAL);
        let has_old_journal = old_journal.try_exists().map_err(io("looking for", &old_journal))?;
        if found < known {
            let tx = self.conn.transaction().map_err(sql(&db))?;
            for (v, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
                tx.execute_batch(step).map_err(sql(&db))?;
                tx.pragma_update(None, "user_version", v as i64 + 1).map_err(sql(&db))?;
            }
            if found == 0 && has_old_journal {
                let ops = import_ops(&old_journal)?;
                apply(&tx, &db, &ops, &[])?;
                tx.execute("INSERT INTO store_meta (key, value) VALUES (?1, '1')", [IMPORTED_KEY]).map_err(sql(&db))?;
            }
            tx.commit().map_err(sql(&db))?;
            // The database file may be new: make its directory entry durable too.
            sync_dir(data_dir)?;
        }
        if has_old_journal {
            let imported: Option<String> = self
                .conn
                .query_row("SELECT value FROM store_meta WHERE key = ?1", [IMPORTED_KEY], |r| r.get(0))
                .optional()
                .map_err(sql(&db))?;
            if imported.is_none() {
                return Err(StoreError::StrayJournal { path: old_journal, db });
            }
            let done = data_dir.join(OLD_JOURNAL_DONE);
            fs::rename(&old_journal, &done).map_err(io("renaming", &old_journal))?;
            sync_dir(data_dir)?;
        }
        Ok(())
    }

    /// Deletes payload files no journal row references, and tmp files of interrupted writes.
    /// Only names this store writes are touched.
    fn sweep_payloads(&mut self) -> Result<(), StoreError> {
        let db = &self.db_path;
        let mut referenced = HashSet::new();
        let mut stmt = self.conn.prepare("SELECT DISTINCT payload_sha256 FROM journal").map_err(sql(db))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(sql(db))?;
        for hash in rows {
            referenced.insert(hash.map_err(sql(db))?);
        }
        let dir = &self.payloads_dir;
        for entry in fs::read_dir(dir).map_err(io("listing", dir))? {
            let entry = entry.map_err(io("listing", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stem = name.strip_suffix(".tmp").unwrap_or(name);
            if !is_sha256_hex(stem) || (stem.len() == name.len() && referenced.contains(name)) {
                continue;
            }
            let path = entry.path();
            fs::remove_file(&path).map_err(io("deleting", &path))?;
        }
        Ok(())
    }

    /// Writes the payload file of every journal row in `ops` that is not there yet, then fsyncs
    /// the directory. Returns the rows' hashes, in the order of their ops.
    fn write_payloads(&self, ops: &[StoreOp]) -> Result<Vec<String>, StoreError> {
        let mut hashes = Vec::new();
        for op in ops {
            let StoreOp::AppendJournal(row) = op else { continue };
            let hash = sha256_hex(&row.payload);
            let path = self.payloads_dir.join(&hash);
            // Same name, same bytes: a file is renamed into place only complete and fsynced.
            if !path.try_exists().map_err(io("looking for", &path))? {
                let tmp = self.payloads_dir.join(format!("{hash}.tmp"));
                let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
                f.write_all(&row.payload).map_err(io("writing", &tmp))?;
                f.sync_all().map_err(io("syncing", &tmp))?;
                fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
            }
            hashes.push(hash);
        }
        // Even when every file existed: one written by a commit that failed before this fsync may
        // not be durable yet.
        if !hashes.is_empty() {
            sync_dir(&self.payloads_dir)?;
        }
        Ok(hashes)
    }

    /// Deletes the payload files of `hashes` that no row references any more. Runs after the
    /// commit, so a failure here cannot undo it: what is left is swept at the next open.
    fn delete_unreferenced(&self, hashes: &BTreeSet<String>) {
        for hash in hashes {
            let referenced =
                self.conn.query_row("SELECT EXISTS (SELECT 1 FROM journal WHERE payload_sha256 = ?1)", [hash], |r| {
                    r.get::<_, bool>(0)
                });
            if let Ok(false) = referenced {
                let _ = fs::remove_file(self.payloads_dir.join(hash));
            }
        }
    }

    fn read_payload(&self, hash: &str, run: &str, seq_id: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.payloads_dir.join(hash);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::PayloadMissing { path, run: run.to_string(), seq_id })
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let actual = sha256_hex(&bytes);
        if actual != hash {
            return Err(StoreError::PayloadCorrupt { path, actual });
        }
        Ok(bytes)
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let db = self.db_path.clone();
        let c = &self.conn;
        let sessions = select(c, &db, "SELECT id, tenant, created_ms, state FROM sessions ORDER BY id", |r| {
            Ok(SessionRow { id: r.get(0)?, tenant: r.get(1)?, created_ms: r.get(2)?, state: r.get(3)? })
        })?;
        let runs = select(c, &db, "SELECT id, tenant, record_json FROM runs ORDER BY id", |r| {
            Ok(RunRow { id: r.get(0)?, tenant: r.get(1)?, record_json: r.get(2)? })
        })?;
        let checkpoints = select(
            c,
            &db,
            "SELECT run, kind, name, tenant, record_json FROM checkpoints ORDER BY run, kind, name",
            |r| {
                Ok(CheckpointRow {
                    run: r.get(0)?,
                    kind: r.get(1)?,
                    name: r.get(2)?,
                    tenant: r.get(3)?,
                    record_json: r.get(4)?,
                })
            },
        )?;
        let futures = select(
            c,
            &db,
            "SELECT request_id, tenant, run, created_ms, idempotency_key, outcome_json, completed_ms, fetched_ms \
             FROM futures ORDER BY request_id",
            |r| {
                Ok(FutureRow {
                    request_id: r.get(0)?,
                    tenant: r.get(1)?,
                    run: r.get(2)?,
                    created_ms: r.get(3)?,
                    idempotency_key: r.get(4)?,
                    outcome_json: r.get(5)?,
                    completed_ms: r.get(6)?,
                    fetched_ms: r.get(7)?,
                })
            },
        )?;
        let index = select(
            c,
            &db,
            "SELECT run, seq_id, request_id, kind, payload_sha256 FROM journal ORDER BY run, seq_id",
            |r| {
                let row = JournalRow {
                    run: r.get(0)?,
                    seq_id: r.get(1)?,
                    request_id: r.get(2)?,
                    kind: r.get(3)?,
                    payload: vec![],
                };
                Ok((row, r.get::<_, String>(4)?))
            },
        )?;
        let samplers = select(c, &db, "SELECT id, tenant, record_json FROM samplers ORDER BY id", |r| {
            Ok(SamplerRow { id: r.get(0)?, tenant: r.get(1)?, record_json: r.get(2)? })
        })?;
        let meta = select(c, &db, "SELECT key, value FROM meta", |r| Ok((r.get(0)?, r.get(1)?)))?;
        let counters = select(c, &db, "SELECT tenant, counter, amount FROM usage", |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, u64>(2)?))
        })?;
        let mut journal = Vec::with_capacity(index.len());
        for (mut row, hash) in index {
            row.payload = self.read_payload(&hash, &row.run, row.seq_id)?;
            journal.push(row);
        }
        let mut usage: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (tenant, counter, amount) in counters {
            usage.entry(tenant).or_default().insert(counter, amount);
        }
        Ok(Loaded { sessions, runs, checkpoints, futures, journal, samplers, meta: meta.into_iter().collect(), usage })
    }

    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        // Refuse an out-of-range integer before any payload file is written.
        for op in ops {
            check_ints(op)?;
        }
        let hashes = self.write_payloads(ops)?;
        let db = self.db_path.clone();
        let tx = self.conn.transaction().map_err(sql(&db))?;
        // On an error `tx` is dropped, which rolls the whole batch back.
        let freed = apply(&tx, &db, ops, &hashes)?;
        tx.commit().map_err(sql(&db))?;
        self.delete_unreferenced(&freed);
        Ok(())
    }
}

/// Applies `ops` inside `tx`. `hashes` are the payload hashes of the `AppendJournal` ops, in
/// order. Returns the hashes of the journal rows truncation deleted.
fn apply(tx: &Transaction<'_>, db: &Path, ops: &[StoreOp], hashes: &[String]) -> Result<BTreeSet<String>, StoreError> {
    let sql = sql(db);
    let mut hashes = hashes.iter();
    let mut freed = BTreeSet::new();
    for op in ops {
        match op {
            StoreOp::PutSession(s) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO sessions (id, tenant, created_ms, state) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut st| st.execute(params![s.id, s.tenant, s.created_ms, s.state]))
                .map_err(&sql)?;
            }
            StoreOp::PutRun(r) => {
                tx.prepare_cached("INSERT OR REPLACE INTO runs (id, tenant, record_json) VALUES (?1, ?2, ?3)")
                    .and_then(|mut st| st.execute(params![r.id, r.tenant, r.record_json]))
                    .map_err(&sql)?;
            }
            StoreOp::PutCheckpoint(c) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO checkpoints (run, kind, name, tenant, record_json) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut st| st.execute(params![c.run, c.kind, c.name, c.tenant, c.record_json]))
                .map_err(&sql)?;
            }
            StoreOp::DeleteCheckpoint { run, kind, name } => {
                tx.prepare_cached("DELETE FROM checkpoints WHERE run = ?1 AND kind = ?2 AND name = ?3")
                    .and_then(|mut st| st.execute(params![run, kind, name]))
                    .map_err(&sql)?;
            }
            StoreOp::PutFuture(f) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO futures (request_id, tenant, run, created_ms, idempotency_key, \
                     outcome_json, completed_ms, fetched_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        f.request_id,
                        f.tenant,
                        f.run,
                        f.created_ms,
                        f.idempotency_key,
                        f.outcome_json,
                        f.completed_ms,
                        f.fetched_ms
                    ])
                })
                .map_err(&sql)?;
            }
            StoreOp::DeleteFuture { request_id } => {
                tx.prepare_cached("DELETE FROM futures WHERE request_id = ?1")
                    .and_then(|mut st| st.execute([request_id]))
                    .map_err(&sql)?;
            }
            StoreOp::AppendJournal(j) => {
                let Some(hash) = hashes.next() else {
                    // `commit` hashes every AppendJournal op; the import has none.
                    unreachable!("a journal row without its payload hash");
                };
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO journal (run, seq_id, request_id, kind, payload_sha256) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .and_then(|mut st| st.execute(params![j.run, j.seq_id, j.request_id, j.kind, hash]));
                match inserted {
                    Ok(_) => {}
                    // The primary key (run, seq_id) is the table's only constraint a row can break.
                    Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::ConstraintViolation => {
                        return Err(StoreError::DuplicateJournalRow { run: j.run.clone(), seq_id: j.seq_id });
                    }
                    Err(e) => return Err(sql(e)),
                }
            }
            StoreOp::TruncateJournal { run, through_seq_id } => {
                let through = i64::try_from(*through_seq_id).unwrap_or(i64::MAX);
                let mut st = tx
                    .prepare_cached("SELECT DISTINCT payload_sha256 FROM journal WHERE run = ?1 AND seq_id <= ?2")
                    .map_err(&sql)?;
                let rows = st.query_map(params![run, through], |r| r.get::<_, String>(0)).map_err(&sql)?;
                for hash in rows {
                    freed.insert(hash.map_err(&sql)?);
                }
                tx.prepare_cached("DELETE FROM journal WHERE run = ?1 AND seq_id <= ?2")
                    .and_then(|mut st| st.execute(params![run, through]))
                    .map_err(&sql)?;
            }
            StoreOp::PutSampler(s) => {
                tx.prepare_cached("INSERT OR REPLACE INTO samplers (id, tenant, record_json) VALUES (?1, ?2, ?3)")
                    .and_then(|mut st| st.execute(params![s.id, s.tenant, s.record_json]))
                    .map_err(&sql)?;
            }
            StoreOp::DeleteSampler { sampler } => {
                tx.prepare_cached("DELETE FROM samplers WHERE id = ?1")
                    .and_then(|mut st| st.execute([sampler]))
                    .map_err(&sql)?;
            }
            StoreOp::PutMeta { key, value } => {
                tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
                    .and_then(|mut st| st.execute([key, value]))
                    .map_err(&sql)?;
            }
            StoreOp::AddUsage { tenant, counter, amount } => {
                // Summed here, not in SQL: SQLite turns an overflowing integer sum into a float.
                let current: Option<u64> = tx
                    .prepare_cached("SELECT amount FROM usage WHERE tenant = ?1 AND counter = ?2")
                    .and_then(|mut st| st.query_row([tenant, counter], |r| r.get(0)).optional())
                    .map_err(&sql)?;
                let sum = usage_sum(current.unwrap_or(0), *amount)?;
                tx.prepare_cached("INSERT OR REPLACE INTO usage (tenant, counter, amount) VALUES (?1, ?2, ?3)")
                    .and_then(|mut st| st.execute(params![tenant, counter, sum]))
                    .map_err(&sql)?;
            }
        }
    }
    Ok(freed)
}

/// The final state of an old `state.jsonl`, replayed in order, as the ops that recreate it.
/// Sessions come back `"expired"`, as the old coordinator restored them: what an active session
/// held lived in memory only.
fn import_ops(path: &Path) -> Result<Vec<StoreOp>, StoreError> {
    let fail = |why: String| StoreError::Import { path: path.to_path_buf(), why };
    let (_, events) = Journal::open(path).map_err(|e| fail(e.to_string()))?;
    let mut sessions: BTreeMap<String, SessionRow> = BTreeMap::new();
    let mut runs: BTreeMap<String, RunRecord> = BTreeMap::new();
    let mut checkpoints: BTreeMap<(String, CheckpointKind, String), CheckpointRecord> = BTreeMap::new();
    for event in events {
        match event {
            Event::Session { id, tenant, created_ms } => {
                let row = SessionRow { id: id.clone(), tenant, created_ms, state: "expired".into() };
                sessions.insert(id, row);
            }
            Event::Run(r) => {
                runs.insert(r.id.as_str().to_string(), r);
            }
            Event::Checkpoint(c) => {
                checkpoints.insert((c.run.as_str().to_string(), c.kind, c.name.as_str().to_string()), c);
            }
            Event::CheckpointDeleted { run, kind, name } => {
                checkpoints.remove(&(run, kind, name));
            }
            Event::CheckpointExpiry { run, kind, name, expires_ms } => {
                // As the old catalogue did: an expiry for a checkpoint that is gone changes nothing.
                if let Some(c) = checkpoints.get_mut(&(run, kind, name)) {
                    c.expires_ms = expires_ms;
                }
            }
        }
    }
    let json = |v: Result<String, serde_json::Error>| v.map_err(|e| fail(e.to_string()));
    let mut ops: Vec<StoreOp> = sessions.into_values().map(StoreOp::PutSession).collect();
    for r in runs.into_values() {
        ops.push(StoreOp::PutRun(RunRow {
            id: r.id.as_str().to_string(),
            tenant: r.tenant.as_str().to_string(),
            record_json: json(serde_json::to_string(&r))?,
        }));
    }
    for c in checkpoints.into_values() {
        ops.push(StoreOp::PutCheckpoint(CheckpointRow {
            run: c.run.as_str().to_string(),
            kind: c.kind.segment().to_string(),
            name: c.name.as_str().to_string(),
            tenant: c.tenant.as_str().to_string(),
            record_json: json(serde_json::to_string(&c))?,
        }));
    }
    Ok(ops)
}

fn select<T>(
    conn: &Connection,
    db: &Path,
    query: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut st = conn.prepare(query).map_err(sql(db))?;
    let rows = st.query_map([], row).map_err(sql(db))?;
    rows.collect::<rusqlite::Result<Vec<T>>>().map_err(sql(db))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn is_sha256_hex(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes renames and creations in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing", dir))
}

fn io(op: &'static str, path: &Path) -> impl Fn(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path: path.clone(), source }
}

fn sql(db: &Path) -> impl Fn(rusqlite::Error) -> StoreError {
    let path = db.to_path_buf();
    move |source| StoreError::Sqlite { path: path.clone(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    /// The durability settings the module promises are in force on the store's own connection,
    /// and a new database is at the latest schema.
    #[test]
    fn the_store_runs_in_wal_mode_with_full_sync_at_the_latest_schema() {
        let st = SqliteStore::open(&temp_dir("pragmas")).unwrap();
        let mode: String = st.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        let synchronous: i64 = st.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).unwrap();
        let version: i64 = st.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(synchronous, 2, "2 is FULL");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
