//! `App`: the running service's shared state. The pure core's tables sit behind one mutex
//! (`Shared`), next to what the shell needs: the worker link, the clock, the journal, the data
//! directory, and each live training run's sequencer plus the queue feeding its executor.
//! Locks are held only for bookkeeping, never across an await.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use runtime::clock::Clock;
use runtime::control::{BaseModelInfo, Envelope, FromWorker, ToWorker, WorkerLink};
use tokio::sync::{mpsc, Notify};

use crate::core::catalog::Catalog;
use crate::core::futures::{Futures, Outcome};
use crate::core::ids::TinkerPath;
use crate::core::sequencer::Sequencer;
use crate::core::sessions::Sessions;
use crate::core::tenants::Tenants;
use crate::exec::Job;
use crate::store::{Event, Journal};

/// The placement generation of the in-process worker (no re-placement yet).
pub const GENERATION: u64 = 0;

/// Timing knobs of the shell (tests shorten them).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// How long `retrieve_future` holds a pending poll before answering try_again (SDK timeout: 45 s).
    pub long_poll: Duration,
    /// How often session expiry, checkpoint TTLs and future retention are checked.
    pub tick: Duration,
    /// Lifetime of signed download URLs, in ms.
    pub download_url_ttl_ms: u64,
    /// Largest request body, before and after decompression.
    pub body_bytes_max: usize,
}

impl Tuning {
    pub fn standard() -> Self {
        Tuning {
            long_poll: Duration::from_secs(25),
            tick: Duration::from_secs(5),
            download_url_ttl_ms: 3_600_000,
            body_bytes_max: 256 << 20,
        }
    }
}

/// A training run whose adapter is in worker memory.
pub struct LiveRun {
    pub sequencer: Sequencer<Job>,
    pub queue: mpsc::UnboundedSender<Job>,
}

/// A sampler (sampling session) in worker memory.
#[derive(Clone, Debug)]
pub struct SamplerRecord {
    pub tenant: String,
    pub session_id: String,
    pub base_model: String,
    pub model_path: Option<TinkerPath>,
}

/// Everything mutable, behind one lock.
pub struct Shared {
    pub sessions: Sessions,
    pub futures: Futures,
    pub catalog: Catalog,
    pub live: HashMap<String, LiveRun>,
    pub samplers: HashMap<String, SamplerRecord>,
    /// Replies of submissions, for answering retries identically: "idem:<tenant>:<key>",
    /// "create:<run>", "sample:<sampler>:<seq>" → reply JSON.
    pub replies: HashMap<String, serde_json::Value>,
    /// request id → its slots in `replies`, forgotten together with the request's future.
    pub reply_slots: HashMap<String, Vec<String>>,
    pub journal: Journal,
}

pub struct App {
    pub tenants: Tenants,
    pub models: BTreeMap<String, BaseModelInfo>,
    pub link: Arc<dyn WorkerLink>,
    pub clock: Arc<dyn Clock>,
    pub data_dir: PathBuf,
    /// Base of download URLs (`http://host:port`, no trailing slash).
    pub public_url: String,
    pub url_secret: Vec<u8>,
    pub tuning: Tuning,
    pub shared: Mutex<Shared>,
    /// Woken whenever a future completes (long polls re-check).
    pub completed: Notify,
}

impl App {
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock is a bug already reported; keep serving the rest.
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Sends one control message to the worker.
    pub async fn call(&self, body: ToWorker) -> FromWorker {
        self.link.call(Envelope { generation: GENERATION, body }).await
    }

    /// Records a finished request and wakes long polls.
    pub fn complete(&self, request_id: &str, outcome: Outcome) {
        let now = self.now_ms();
        self.lock().futures.complete(request_id, outcome, now);
        self.completed.notify_waiters();
    }

    /// The directory of a checkpoint: `<data>/runs/<run>/<kind>/<name>`.
    pub fn checkpoint_dir(&self, path: &TinkerPath) -> PathBuf {
        self.data_dir.join("runs").join(&path.run).join(path.kind.segment()).join(&path.name)
    }
}

impl Shared {
    /// Remembers the reply of `request_id` under `slot`, so a retry gets the same answer.
    pub fn remember(&mut self, request_id: &str, slot: String, reply: &serde_json::Value) {
        self.reply_slots.entry(request_id.to_string()).or_default().push(slot.clone());
        self.replies.insert(slot, reply.clone());
    }

    /// Forgets every remembered reply of a request whose future was purged.
    pub fn forget(&mut self, request_id: &str) {
        for slot in self.reply_slots.remove(request_id).unwrap_or_default() {
            self.replies.remove(&slot);
        }
    }

    /// Appends to the journal; a failed write is a server error the caller reports.
    pub fn record(&mut self, event: &Event) -> Result<(), String> {
        self.journal
            .append(event)
            .map_err(|e| format!("could not write the state journal {}: {e}", self.journal.path().display()))
    }
}
