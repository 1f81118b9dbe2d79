//! `Journal`: the durable state of the coordinator as an append-only JSON-lines file
//! (`<data>/state.jsonl`): sessions, training runs, checkpoints, checkpoint deletions and TTL
//! changes. Every append is fsynced before the caller acknowledges the change; on start the file
//! is replayed in order. A torn last line (a crash mid-append) is ignored; any other bad line is
//! an error.
//!
//! This is the store of the coordinator before SQLite ([`super::SqliteStore`]); it stays while the
//! shell still writes it, and afterwards as the reader that imports an old data directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::catalog::{CheckpointRecord, RunRecord};
use crate::core::ids::CheckpointKind;
use crate::error::ServeError;

/// One durable change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Session { id: String, tenant: String, created_ms: u64 },
    Run(RunRecord),
    Checkpoint(CheckpointRecord),
    CheckpointDeleted { run: String, kind: CheckpointKind, name: String },
    CheckpointExpiry { run: String, kind: CheckpointKind, name: String, expires_ms: Option<u64> },
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) the journal and returns it with the events recorded so far.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Event>), ServeError> {
        let io = |source| ServeError::DataDir { path: path.to_path_buf(), source };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        let mut events = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let complete = line.ends_with('\n');
            match serde_json::from_str::<Event>(line.trim_end()) {
                Ok(e) => events.push(e),
                // Only the last line can be torn by a crash during an append.
                Err(_) if !complete && i + 1 == lines.len() => break,
                Err(e) => {
                    return Err(ServeError::Journal { path: path.to_path_buf(), line: i + 1, why: e.to_string() })
                }
            }
        }
        let valid_len: usize = lines.iter().take(events.len()).map(|l| l.len()).sum();
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        // Drop a torn tail so the next append starts on a fresh line.
        if valid_len < text.len() {
            file.set_len(valid_len as u64).map_err(io)?;
        }
        Ok((Journal { path: path.to_path_buf(), file }, events))
    }

    /// Appends one event durably (written and fsynced).
    pub fn append(&mut self, event: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lathe-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn events_survive_a_reopen_in_order() {
        let path = temp_dir("reopen").join("state.jsonl");
        let (mut j, events) = Journal::open(&path).unwrap();
        assert!(events.is_empty());
        let a = Event::Session { id: "sess-1".into(), tenant: "local".into(), created_ms: 5 };
        let b = Event::CheckpointDeleted { run: "r".into(), kind: CheckpointKind::Weights, name: "x".into() };
        j.append(&a).unwrap();
        j.append(&b).unwrap();
        drop(j);
        let (_, events) = Journal::open(&path).unwrap();
        assert_eq!(events, vec![a, b]);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_corrupt_middle_line_is_an_error() {
        let dir = temp_dir("torn");
        let path = dir.join("state.jsonl");
        let a = Event::Session { id: "sess-1".into(), tenant: "local".into(), created_ms: 5 };
        let good = format!("{}\n", serde_json::to_string(&a).unwrap());
        std::fs::write(&path, format!("{good}{{\"Sess")).unwrap();
        let (mut j, events) = Journal::open(&path).unwrap();
        assert_eq!(events, vec![a.clone()]);
        j.append(&a).unwrap();
        assert_eq!(Journal::open(&path).unwrap().1.len(), 2);
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, format!("garbage\n{good}")).unwrap();
        assert!(matches!(Journal::open(&bad), Err(ServeError::Journal { line: 1, .. })));
    }
}
