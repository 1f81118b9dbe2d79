//! One suite that both stores pass (`both_stores!` runs each case against `SqliteStore` and
//! `MemStore`), then what only the SQLite store has: payload files, schema versions and the import
//! of an old `state.jsonl`.

use std::path::{Path, PathBuf};

use super::*;
use crate::core::catalog::{CheckpointRecord, RunRecord};

/// A store under test, and how to reopen it: the SQLite store reopens its directory; the memory
/// store is replaced by a clone, which shares its state as a reopen shares the disk.
trait Subject {
    fn store(&mut self) -> &mut dyn Store;
    fn reopen(&mut self);
}

struct Sqlite {
    dir: PathBuf,
    store: Option<SqliteStore>,
}

impl Sqlite {
    fn open(dir: PathBuf) -> Sqlite {
        let store = Some(SqliteStore::open(&dir).unwrap());
        Sqlite { dir, store }
    }
}

impl Subject for Sqlite {
    fn store(&mut self) -> &mut dyn Store {
        self.store.as_mut().unwrap()
    }
    fn reopen(&mut self) {
        self.store = None;
        self.store = Some(SqliteStore::open(&self.dir).unwrap());
    }
}

struct Mem(MemStore);

impl Subject for Mem {
    fn store(&mut self) -> &mut dyn Store {
        &mut self.0
    }
    fn reopen(&mut self) {
        self.0 = self.0.clone();
    }
}

pub(super) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lathe-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) fn session(id: &str, tenant: &str, state: &str) -> StoreOp {
    StoreOp::PutSession(SessionRow { id: id.into(), tenant: tenant.into(), created_ms: 7, state: state.into() })
}

fn run(id: &str, tenant: &str, json: &str) -> StoreOp {
    StoreOp::PutRun(RunRow { id: id.into(), tenant: tenant.into(), record_json: json.into() })
}

fn checkpoint(run: &str, kind: &str, name: &str, json: &str) -> StoreOp {
    StoreOp::PutCheckpoint(CheckpointRow {
        run: run.into(),
        kind: kind.into(),
        name: name.into(),
        tenant: "t".into(),
        record_json: json.into(),
    })
}

fn future(id: &str, outcome: Option<&str>) -> StoreOp {
    StoreOp::PutFuture(FutureRow {
        request_id: id.into(),
        tenant: "t".into(),
        run: Some("r1".into()),
        created_ms: 10,
        idempotency_key: Some(format!("key-{id}")),
        outcome_json: outcome.map(str::to_string),
        completed_ms: outcome.map(|_| 20),
        fetched_ms: None,
    })
}

fn sampler(id: &str, json: &str) -> StoreOp {
    StoreOp::PutSampler(SamplerRow { id: id.into(), tenant: "t".into(), record_json: json.into() })
}

pub(super) fn journal_row(run: &str, seq_id: u64, payload: Vec<u8>) -> JournalRow {
    JournalRow {
        run: run.into(),
        seq_id,
        request_id: format!("req-{run}-{seq_id}"),
        kind: "forward_backward".into(),
        payload,
    }
}

pub(super) fn append(run: &str, seq_id: u64, payload: Vec<u8>) -> StoreOp {
    StoreOp::AppendJournal(journal_row(run, seq_id, payload))
}

/// Deterministic bytes that differ per `seed` (a token batch stand-in).
pub(super) fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn usage(tenant: &str, counter: &str, amount: u64) -> StoreOp {
    StoreOp::AddUsage { tenant: tenant.into(), counter: counter.into(), amount }
}

fn journal_keys(loaded: &Loaded) -> Vec<(String, u64)> {
    loaded.journal.iter().map(|j| (j.run.clone(), j.seq_id)).collect()
}

macro_rules! both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite_store {
            $(
                #[test]
                fn $case() {
                    let dir = super::temp_dir(concat!("suite-", stringify!($case)));
                    super::$case(&mut super::Sqlite::open(dir));
                }
            )*
        }
        mod mem_store {
            $(
                #[test]
                fn $case() {
                    super::$case(&mut super::Mem(super::MemStore::new()));
                }
            )*
        }
    };
}

both_stores!(
    upserts_replace_rows_by_key,
    deletes_remove_one_row_and_tolerate_absent_ones,
    journal_loads_by_run_then_seq_id_with_payloads,
    truncation_drops_only_that_runs_rows_through_seq_id,
    a_duplicate_journal_row_leaves_nothing_of_its_batch,
    usage_counters_add_up_per_tenant_and_counter,
    an_out_of_range_integer_fails_its_batch,
    a_reopened_store_loads_everything_committed,
);

/// Every Put is an upsert on its key: the second write of a key replaces the row, other keys stay.
fn upserts_replace_rows_by_key(s: &mut dyn Subject) {
    let st = s.store();
    assert_eq!(st.load().unwrap(), Loaded::default(), "a new store is empty");
    st.commit(&[
        session("sess-1", "t", "active"),
        session("sess-2", "u", "active"),
        run("r1", "t", r#"{"v":1}"#),
        checkpoint("r1", "weights", "a", r#"{"v":1}"#),
        checkpoint("r1", "sampler_weights", "a", r#"{"v":1}"#),
        future("req-1", None),
        sampler("s1", r#"{"v":1}"#),
        StoreOp::PutMeta { key: "k".into(), value: "1".into() },
    ])
    .unwrap();
    st.commit(&[
        session("sess-1", "t", "finished"),
        run("r1", "t", r#"{"v":2}"#),
        checkpoint("r1", "weights", "a", r#"{"v":2}"#),
        future("req-1", Some(r#"{"ok":true}"#)),
        sampler("s1", r#"{"v":2}"#),
        StoreOp::PutMeta { key: "k".into(), value: "2".into() },
    ])
    .unwrap();
    let l = st.load().unwrap();
    let states: Vec<(&str, &str)> = l.sessions.iter().map(|s| (s.id.as_str(), s.state.as_str())).collect();
    assert_eq!(states, [("sess-1", "finished"), ("sess-2", "active")]);
    assert_eq!(l.runs, [RunRow { id: "r1".into(), tenant: "t".into(), record_json: r#"{"v":2}"#.into() }]);
    let cps: Vec<(&str, &str)> = l.checkpoints.iter().map(|c| (c.kind.as_str(), c.record_json.as_str())).collect();
    assert_eq!(cps, [("sampler_weights", r#"{"v":1}"#), ("weights", r#"{"v":2}"#)], "keyed by (run, kind, name)");
    let StoreOp::PutFuture(done) = future("req-1", Some(r#"{"ok":true}"#)) else { unreachable!() };
    assert_eq!(l.futures, [done]);
    assert_eq!(l.samplers.len(), 1);
    assert_eq!(l.samplers[0].record_json, r#"{"v":2}"#);
    assert_eq!(l.meta.get("k").map(String::as_str), Some("2"));
}

/// A delete removes exactly its key; deleting what is not there is not an error.
fn deletes_remove_one_row_and_tolerate_absent_ones(s: &mut dyn Subject) {
    let st = s.store();
    st.commit(&[
        checkpoint("r1", "weights", "a", "{}"),
        checkpoint("r1", "weights", "b", "{}"),
        checkpoint("r2", "weights", "a", "{}"),
        future("req-1", None),
        future("req-2", None),
        sampler("s1", "{}"),
        sampler("s2", "{}"),
    ])
    .unwrap();
    st.commit(&[
        StoreOp::DeleteCheckpoint { run: "r1".into(), kind: "weights".into(), name: "a".into() },
        StoreOp::DeleteFuture { request_id: "req-2".into() },
        StoreOp::DeleteSampler { sampler: "s1".into() },
        // Absent keys:
        StoreOp::DeleteCheckpoint { run: "r9".into(), kind: "weights".into(), name: "a".into() },
        StoreOp::DeleteFuture { request_id: "req-9".into() },
        StoreOp::DeleteSampler { sampler: "s9".into() },
    ])
    .unwrap();
    let l = st.load().unwrap();
    let cps: Vec<(&str, &str)> = l.checkpoints.iter().map(|c| (c.run.as_str(), c.name.as_str())).collect();
    assert_eq!(cps, [("r1", "b"), ("r2", "a")]);
    assert_eq!(l.futures.iter().map(|f| f.request_id.as_str()).collect::<Vec<_>>(), ["req-1"]);
    assert_eq!(l.samplers.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s2"]);
}

/// Rows appended out of order, over several commits, load sorted by (run, seq_id) with their
/// payloads byte for byte: an empty one, a 1 MiB one, and one shared by two rows.
fn journal_loads_by_run_then_seq_id_with_payloads(s: &mut dyn Subject) {
    let st = s.store();
    let big = bytes(1, 1 << 20);
    st.commit(&[append("r2", 1, bytes(2, 100)), append("r1", 3, big.clone())]).unwrap();
    st.commit(&[append("r1", 1, vec![]), append("r1", 2, bytes(2, 100)), append("r1", 10, bytes(3, 5))]).unwrap();
    let l = st.load().unwrap();
    let keys = journal_keys(&l);
    let want: Vec<(String, u64)> =
        [("r1", 1), ("r1", 2), ("r1", 3), ("r1", 10), ("r2", 1)].iter().map(|(r, q)| (r.to_string(), *q)).collect();
    assert_eq!(keys, want, "seq_id orders numerically (10 after 3), runs bytewise");
    assert_eq!(l.journal[0], journal_row("r1", 1, vec![]));
    assert_eq!(l.journal[1].payload, bytes(2, 100));
    assert_eq!(l.journal[2].payload, big);
    assert_eq!(l.journal[4].payload, bytes(2, 100));
    assert_eq!(l.journal[4].request_id, "req-r2-1");
    assert_eq!(l.journal[4].kind, "forward_backward");
}

/// Truncation deletes the run's rows with seq_id <= the bound and nothing else; a row of another
/// run that shares a payload with a truncated one still loads it.
fn truncation_drops_only_that_runs_rows_through_seq_id(s: &mut dyn Subject) {
    let st = s.store();
    let shared = bytes(9, 64);
    st.commit(&[
        append("a", 1, shared.clone()),
        append("a", 2, bytes(2, 8)),
        append("a", 3, bytes(3, 8)),
        append("a", 4, bytes(4, 8)),
        append("b", 1, shared.clone()),
        append("b", 5, bytes(5, 8)),
    ])
    .unwrap();
    st.commit(&[StoreOp::TruncateJournal { run: "a".into(), through_seq_id: 3 }]).unwrap();
    let l = st.load().unwrap();
    let want: Vec<(String, u64)> = [("a", 4), ("b", 1), ("b", 5)].iter().map(|(r, q)| (r.to_string(), *q)).collect();
    assert_eq!(journal_keys(&l), want);
    assert_eq!(l.journal[1].payload, shared);
    // Truncating past the end, or a run with no rows, is fine; u64::MAX means everything.
    st.commit(&[
        StoreOp::TruncateJournal { run: "b".into(), through_seq_id: u64::MAX },
        StoreOp::TruncateJournal { run: "zz".into(), through_seq_id: 3 },
    ])
    .unwrap();
    assert_eq!(journal_keys(&st.load().unwrap()), [("a".to_string(), 4)]);
}

/// A batch is all or nothing: a duplicate journal row (of an earlier commit, or twice in one
/// batch) fails the batch with an error naming the row, and none of the batch's other ops
/// (upserts, deletes, usage, other rows, a truncation) is applied.
fn a_duplicate_journal_row_leaves_nothing_of_its_batch(s: &mut dyn Subject) {
    let st = s.store();
    st.commit(&[append("r1", 1, bytes(1, 16)), session("sess-1", "t", "active"), usage("t", "tokens", 5)]).unwrap();
    let before = st.load().unwrap();
    let batches = [
        vec![
            session("sess-1", "t", "finished"),
            session("sess-2", "t", "active"),
            usage("t", "tokens", 1),
            append("r1", 2, bytes(2, 16)),
            StoreOp::TruncateJournal { run: "r1".into(), through_seq_id: 1 },
            append("r1", 2, bytes(3, 16)),
        ],
        vec![StoreOp::PutMeta { key: "k".into(), value: "v".into() }, append("r1", 1, bytes(4, 16))],
    ];
    for batch in &batches {
        match st.commit(batch) {
            Err(StoreError::DuplicateJournalRow { run, seq_id }) => assert!(run == "r1" && seq_id >= 1),
            other => panic!("expected a duplicate row error, got {other:?}"),
        }
        assert_eq!(st.load().unwrap(), before, "nothing of the failed batch is applied");
    }
    // The store still works after a failed batch.
    st.commit(&[append("r1", 2, bytes(2, 16))]).unwrap();
    assert_eq!(st.load().unwrap().journal.len(), 2);
}

/// Usage adds up per (tenant, counter), from 0.
fn usage_counters_add_up_per_tenant_and_counter(s: &mut dyn Subject) {
    let st = s.store();
    st.commit(&[usage("t", "tokens", 5), usage("t", "tokens", 7), usage("t", "steps", 1)]).unwrap();
    st.commit(&[usage("u", "tokens", 2), usage("t", "tokens", 0)]).unwrap();
    let l = st.load().unwrap();
    let flat: Vec<(&str, &str, u64)> = l
        .usage
        .iter()
        .flat_map(|(t, counters)| counters.iter().map(move |(c, n)| (t.as_str(), c.as_str(), *n)))
        .collect();
    assert_eq!(flat, [("t", "steps", 1), ("t", "tokens", 12), ("u", "tokens", 2)]);
}

/// Integers are kept as SQLite's signed 64-bit ones; a larger value (or a usage sum that would
/// become one) fails its batch in both stores the same way.
fn an_out_of_range_integer_fails_its_batch(s: &mut dyn Subject) {
    let st = s.store();
    let too_big = i64::MAX as u64 + 1;
    st.commit(&[usage("t", "tokens", i64::MAX as u64 - 1)]).unwrap();
    let before = st.load().unwrap();
    let bad_session = StoreOp::PutSession(SessionRow {
        id: "sess-1".into(),
        tenant: "t".into(),
        created_ms: too_big,
        state: "active".into(),
    });
    let bad = [
        vec![session("sess-0", "t", "active"), bad_session],
        vec![append("r", too_big, vec![1])],
        vec![append("r", 1, vec![1]), usage("t", "tokens", 2)],
        vec![usage("t", "tokens", u64::MAX)],
    ];
    for batch in &bad {
        assert!(matches!(st.commit(batch), Err(StoreError::OutOfRange { .. })), "{batch:?}");
        assert_eq!(st.load().unwrap(), before);
    }
    st.commit(&[usage("t", "tokens", 1)]).unwrap();
    assert_eq!(st.load().unwrap().usage["t"]["tokens"], i64::MAX as u64);
}

/// What was committed is what a reopened store loads, every table at once.
fn a_reopened_store_loads_everything_committed(s: &mut dyn Subject) {
    let ops = scripted_ops();
    for batch in &ops {
        s.store().commit(batch).unwrap();
    }
    let before = s.store().load().unwrap();
    assert!(!before.sessions.is_empty() && !before.journal.is_empty() && !before.usage.is_empty());
    s.reopen();
    assert_eq!(s.store().load().unwrap(), before);
}

/// A history touching every table and op, in several batches.
fn scripted_ops() -> Vec<Vec<StoreOp>> {
    vec![
        vec![session("sess-1", "t", "active"), run("r1", "t", r#"{"run":1}"#), future("req-1", None)],
        vec![append("r1", 1, bytes(1, 300)), append("r1", 2, bytes(2, 300)), usage("t", "tokens", 600)],
        vec![
            future("req-1", Some(r#"{"loss":1.5}"#)),
            checkpoint("r1", "weights", "step-2", r#"{"ck":2}"#),
            StoreOp::TruncateJournal { run: "r1".into(), through_seq_id: 1 },
            sampler("s1", r#"{"sampler":1}"#),
            StoreOp::PutMeta { key: "id_counter".into(), value: "17".into() },
        ],
        vec![
            append("r1", 3, bytes(3, 10)),
            append("s1#samples", 1, bytes(1, 300)),
            StoreOp::DeleteSampler { sampler: "s1".into() },
            sampler("s2", r#"{"sampler":2}"#),
            session("sess-2", "u", "active"),
            usage("u", "samples", 3),
            usage("t", "tokens", 10),
        ],
    ]
}

/// Goal: the memory store is a faithful stand-in. Method: the same history through both; the
/// loads are equal.
#[test]
fn both_stores_load_equal_values_after_the_same_history() {
    let mut sqlite = SqliteStore::open(&temp_dir("equal")).unwrap();
    let mut mem = MemStore::new();
    for batch in scripted_ops() {
        sqlite.commit(&batch).unwrap();
        mem.commit(&batch).unwrap();
        assert_eq!(sqlite.load().unwrap(), mem.load().unwrap());
    }
}

fn payload_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("payloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Payloads are files named by their sha256, written once however many rows share them, and
/// deleted when truncation leaves no row referencing them.
#[test]
fn payload_files_are_content_addressed_and_freed_by_truncation() {
    let dir = temp_dir("payload-files");
    let mut st = SqliteStore::open(&dir).unwrap();
    let (shared, own) = (bytes(1, 50), bytes(2, 50));
    st.commit(&[append("a", 1, shared.clone()), append("a", 2, own.clone()), append("b", 1, shared.clone())]).unwrap();
    let mut want = vec![sha256_hex(&shared), sha256_hex(&own)];
    want.sort();
    assert_eq!(payload_files(&dir), want);
    assert_eq!(std::fs::read(dir.join("payloads").join(sha256_hex(&own))).unwrap(), own);
    st.commit(&[StoreOp::TruncateJournal { run: "a".into(), through_seq_id: 2 }]).unwrap();
    assert_eq!(payload_files(&dir), [sha256_hex(&shared)], "b:1 still references the shared payload");
    st.commit(&[StoreOp::TruncateJournal { run: "b".into(), through_seq_id: 1 }]).unwrap();
    assert!(payload_files(&dir).is_empty());
}

/// A changed payload file fails the load with an error naming the file; so does a missing one,
/// naming its row too.
#[test]
fn a_tampered_or_missing_payload_file_is_reported_by_name() {
    let dir = temp_dir("tampered");
    let payload = bytes(1, 40);
    let file = dir.join("payloads").join(sha256_hex(&payload));
    let mut st = SqliteStore::open(&dir).unwrap();
    st.commit(&[append("r1", 4, payload.clone())]).unwrap();
    let mut changed = payload.clone();
    changed[7] ^= 1;
    std::fs::write(&file, &changed).unwrap();
    let err = st.load().unwrap_err();
    assert!(
        matches!(&err, StoreError::PayloadCorrupt { path, actual } if *path == file && *actual == sha256_hex(&changed))
    );
    assert!(err.to_string().contains(&file.display().to_string()), "{err}");
    std::fs::remove_file(&file).unwrap();
    let err = st.load().unwrap_err();
    assert!(
        matches!(&err, StoreError::PayloadMissing { path, run, seq_id: 4 } if *path == file && run == "r1"),
        "{err}"
    );
}

/// Files a failed commit wrote (its payloads go to disk before the transaction) and tmp files of
/// an interrupted write are deleted at the next open; files that are not the store's stay.
#[test]
fn unreferenced_payload_files_are_swept_at_open() {
    let dir = temp_dir("sweep");
    let mut st = SqliteStore::open(&dir).unwrap();
    st.commit(&[append("r", 1, bytes(1, 10))]).unwrap();
    let orphan = bytes(2, 10);
    assert!(st.commit(&[append("r", 2, orphan.clone()), append("r", 1, bytes(3, 10))]).is_err());
    let tmp = format!("{}.tmp", sha256_hex(&bytes(4, 10)));
    std::fs::write(dir.join("payloads").join(&tmp), b"torn").unwrap();
    std::fs::write(dir.join("payloads").join("notes.txt"), b"mine").unwrap();
    assert!(payload_files(&dir).contains(&sha256_hex(&orphan)));
    drop(st);
    let mut st = SqliteStore::open(&dir).unwrap();
    let mut want = vec![sha256_hex(&bytes(1, 10)), "notes.txt".to_string()];
    want.sort();
    assert_eq!(payload_files(&dir), want);
    assert_eq!(st.load().unwrap().journal.len(), 1);
}

/// A database written by a newer build is refused, naming both versions, and left untouched.
#[test]
fn a_database_with_a_newer_schema_is_refused() {
    let dir = temp_dir("newer");
    drop(SqliteStore::open(&dir).unwrap());
    let conn = rusqlite::Connection::open(dir.join("lathe.sqlite")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, known: 1, .. }), "{err}");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

/// An old journal, written by hand the way the JSON-lines store wrote it: two sessions, two runs,
/// three checkpoints of which one is deleted and one gets an expiry (and an expiry for a
/// checkpoint that no longer exists), then a torn last line.
const OLD_JOURNAL: &str = r#"{"Session":{"id":"sess-1","tenant":"local","created_ms":5}}
{"Session":{"id":"sess-2","tenant":"acme","created_ms":6}}
{"Run":{"id":"sess-1:train:0","tenant":"local","session_id":"sess-1","base_model":"tiny/llama","lora":{"rank":8,"alpha":32.0,"seed":3,"train_attn":true,"train_mlp":true,"train_unembed":false},"created_ms":10,"last_request_ms":10,"user_metadata":null}}
{"Run":{"id":"sess-2:train:0","tenant":"acme","session_id":"sess-2","base_model":"tiny/llama","lora":{"rank":4,"alpha":8.0,"seed":1,"train_attn":true,"train_mlp":false,"train_unembed":false},"created_ms":11,"last_request_ms":11,"user_metadata":{"who":"me"}}}
{"Checkpoint":{"run":"sess-1:train:0","kind":"Weights","name":"step-1","tenant":"local","created_ms":20,"size_bytes":100,"expires_ms":null,"user_metadata":null}}
{"Checkpoint":{"run":"sess-1:train:0","kind":"SamplerWeights","name":"step-1","tenant":"local","created_ms":21,"size_bytes":50,"expires_ms":null,"user_metadata":null}}
{"Checkpoint":{"run":"sess-2:train:0","kind":"ExternalWeights","name":"final","tenant":"acme","created_ms":22,"size_bytes":70,"expires_ms":null,"user_metadata":null}}
{"CheckpointDeleted":{"run":"sess-1:train:0","kind":"SamplerWeights","name":"step-1"}}
{"CheckpointExpiry":{"run":"sess-1:train:0","kind":"Weights","name":"step-1","expires_ms":9000}}
{"CheckpointExpiry":{"run":"sess-1:train:0","kind":"SamplerWeights","name":"step-1","expires_ms":1}}
{"Session":{"id":"sess-3","ten"#;

/// Goal: an old data directory keeps its sessions, runs and checkpoints. Method: open a store on
/// a directory holding only a hand-written `state.jsonl`; the replayed state is in the database,
/// the journal is renamed, and a second open neither re-imports nor complains.
#[test]
fn an_old_state_jsonl_is_imported_once_and_renamed() {
    let dir = temp_dir("import");
    std::fs::write(dir.join("state.jsonl"), OLD_JOURNAL).unwrap();
    let mut st = SqliteStore::open(&dir).unwrap();
    assert!(!dir.join("state.jsonl").exists());
    assert!(dir.join("state.jsonl.migrated").exists());
    let l = st.load().unwrap();
    let sessions: Vec<(&str, &str, u64, &str)> =
        l.sessions.iter().map(|s| (s.id.as_str(), s.tenant.as_str(), s.created_ms, s.state.as_str())).collect();
    assert_eq!(sessions, [("sess-1", "local", 5, "expired"), ("sess-2", "acme", 6, "expired")]);
    assert_eq!(l.runs.len(), 2);
    let run: RunRecord = serde_json::from_str(&l.runs[1].record_json).unwrap();
    assert_eq!((l.runs[1].id.as_str(), l.runs[1].tenant.as_str()), ("sess-2:train:0", "acme"));
    assert_eq!(
        (run.id.as_str(), run.lora.rank, run.user_metadata),
        ("sess-2:train:0", 4, Some(serde_json::json!({"who": "me"})))
    );
    let cps: Vec<(&str, &str, &str, &str)> =
        l.checkpoints.iter().map(|c| (c.run.as_str(), c.kind.as_str(), c.name.as_str(), c.tenant.as_str())).collect();
    assert_eq!(
        cps,
        [("sess-1:train:0", "weights", "step-1", "local"), ("sess-2:train:0", "external_weights", "final", "acme")]
    );
    let step1: CheckpointRecord = serde_json::from_str(&l.checkpoints[0].record_json).unwrap();
    assert_eq!((step1.expires_ms, step1.size_bytes), (Some(9000), 100));
    assert!(l.futures.is_empty() && l.journal.is_empty() && l.samplers.is_empty());
    drop(st);
    let mut st = SqliteStore::open(&dir).unwrap();
    assert_eq!(st.load().unwrap(), l);
}

/// A crash after the import committed but before the rename: the next open sees the journal
/// still there, knows it was imported, and only finishes the rename.
#[test]
fn an_import_interrupted_before_the_rename_is_finished_at_the_next_open() {
    let dir = temp_dir("import-crash");
    std::fs::write(dir.join("state.jsonl"), OLD_JOURNAL).unwrap();
    let l = SqliteStore::open(&dir).unwrap().load().unwrap();
    std::fs::rename(dir.join("state.jsonl.migrated"), dir.join("state.jsonl")).unwrap();
    let mut st = SqliteStore::open(&dir).unwrap();
    assert!(!dir.join("state.jsonl").exists() && dir.join("state.jsonl.migrated").exists());
    assert_eq!(st.load().unwrap(), l);
}

/// A `state.jsonl` that appears beside a database that was not imported from it is refused
/// rather than ignored (its state would silently be lost) or merged.
#[test]
fn a_state_jsonl_beside_a_database_not_imported_from_it_is_refused() {
    let dir = temp_dir("stray");
    drop(SqliteStore::open(&dir).unwrap());
    std::fs::write(dir.join("state.jsonl"), OLD_JOURNAL).unwrap();
    let err = SqliteStore::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::StrayJournal { .. }), "{err}");
    assert!(dir.join("state.jsonl").exists());
}

/// A corrupt old journal is an import error naming the file, and the database stays new (the
/// next open, after the file is fixed, imports it).
#[test]
fn a_corrupt_old_journal_fails_the_import_and_imports_once_fixed() {
    let dir = temp_dir("import-corrupt");
    std::fs::write(dir.join("state.jsonl"), format!("garbage\n{OLD_JOURNAL}")).unwrap();
    let err = SqliteStore::open(&dir).unwrap_err();
    assert!(matches!(&err, StoreError::Import { path, .. } if path.ends_with("state.jsonl")), "{err}");
    std::fs::write(dir.join("state.jsonl"), OLD_JOURNAL).unwrap();
    assert_eq!(SqliteStore::open(&dir).unwrap().load().unwrap().runs.len(), 2);
}
