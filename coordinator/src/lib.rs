//! The lathe service library: HTTP API, sessions, futures, scheduling and placement.
//! It never does model math and never links the worker or kernels crates; only the `lathe`
//! binary (`src/main.rs`, `src/cli/`) composes them.
//!
//! Entry point: [`serve`] (binds, then [`serve_on`]). Decisions live in [`core`]
//! (`CoordinatorCore::on_event`, pure); `actor` is the ractor shell that feeds it events and carries
//! out its commands, `store` the durable state (SQLite), `http` the handlers that parse requests.

mod actor;
pub mod control;
pub mod core;
mod error;
mod http;
pub mod metrics;
mod state;
pub mod store;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ractor::Actor;
use runtime::clock::Clock;
use runtime::control::{BaseModelInfo, WorkerLink};
use tokio::net::TcpListener;

pub use error::{ApiError, CoordinatorError, ServeError};
pub use state::Tuning;

use crate::actor::{CoordinatorActor, CoordinatorMsg, ShellArgs};
use crate::core::engine::{CoordinatorCore, CoreConfig, IdSource, SeededIds, WorkerId};
use crate::core::workers::WorkerCapacity;

/// Worker generations of one coordinator lifetime are `lifetime << 20 | n`: they grow across
/// restarts (the lifetime counter is durable) and within one (n counts admissions).
const GENERATION_SHIFT: u32 = 20;
use crate::core::tenants::Tenants;
use crate::store::{GroupCommitter, SqliteStore, Store};

/// How `lathe serve` (or a test) runs the coordinator.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    /// Holds `lathe.sqlite` (+ `payloads/`), snapshots, the URL-signing key and `runs/<run>/<kind>/<name>/` checkpoints.
    pub data_dir: PathBuf,
    /// `tml-key tenant` lines; without it any `tml-` key is tenant "local" (loopback only).
    pub api_keys: Option<PathBuf>,
    /// Base URL clients reach this server at (for download links); default `http://<listen>`.
    pub public_url: Option<String>,
    /// Most unfinished forward_backward + sample requests per base model before 429 (default 4096).
    pub queue_limit: Option<usize>,
    /// Snapshot runs every this many optim steps (default 10).
    pub snapshot_every: Option<u64>,
    /// How runs are spread over workers: `Single`, or `DataParallel` (worker processes only).
    pub plan: runtime::plan::Plan,
}

/// Where the coordinator's workers come from.
pub enum Workers {
    /// One worker in this process behind a link (`lathe serve` without `--workers`, tests).
    InProcess(Arc<dyn WorkerLink>),
    /// Worker processes (or `lathe serve --workers N` tasks) that connect to the control listener
    /// and hold leases in `leases`.
    Remote(control::ControlPlane),
}

/// Binds `config.listen` and serves until Ctrl-C.
pub async fn serve(
    config: ServeConfig,
    models: Vec<BaseModelInfo>,
    workers: Workers,
    clock: Arc<dyn Clock>,
) -> Result<(), ServeError> {
    if config.api_keys.is_none() && !config.listen.ip().is_loopback() {
        return Err(ServeError::OpenModeNotLoopback { addr: config.listen });
    }
    let mut tuning = Tuning::standard();
    if let Some(limit) = config.queue_limit {
        tuning.queue_limit = limit;
    }
    if let Some(k) = config.snapshot_every {
        tuning.snapshot_every = k.max(1);
    }
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let shutdown = async {
        // Without a signal handler the server runs until the process is killed, which is fine.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = serve_with(listener, config, models, workers, clock, tuning) => r,
        () = shutdown => Ok(()),
    }
}

/// Serves on an already bound listener (tests bind port 0) with one in-process worker, until the
/// future is dropped.
pub async fn serve_on(
    listener: TcpListener,
    config: ServeConfig,
    models: Vec<BaseModelInfo>,
    link: Arc<dyn WorkerLink>,
    clock: Arc<dyn Clock>,
    tuning: Tuning,
) -> Result<(), ServeError> {
    serve_with(listener, config, models, Workers::InProcess(link), clock, tuning).await
}

/// Serves on an already bound listener with the given workers, until the future is dropped.
pub async fn serve_with(
    listener: TcpListener,
    config: ServeConfig,
    models: Vec<BaseModelInfo>,
    workers: Workers,
    clock: Arc<dyn Clock>,
    tuning: Tuning,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    if models.is_empty() {
        return Err(ServeError::NoModels);
    }
    let tenants = match &config.api_keys {
        None => Tenants::Open,
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ServeError::ReadKeys { path: path.clone(), source })?;
            Tenants::parse(&text).map_err(|source| ServeError::KeysFile { path: path.clone(), source })?
        }
    };
    let data_io = |source| ServeError::DataDir { path: config.data_dir.clone(), source };
    std::fs::create_dir_all(config.data_dir.join("runs")).map_err(data_io)?;
    let url_secret = load_or_create_secret(&config.data_dir.join("url_signing.key"))?;
    let models: BTreeMap<String, BaseModelInfo> = models.into_iter().map(|m| (m.name.clone(), m)).collect();

    // State from before (or a migrated state.jsonl), and this lifetime's placement generation.
    let mut store = SqliteStore::open(&config.data_dir).map_err(ServeError::Store)?;
    let loaded = store.load().map_err(ServeError::Store)?;
    let generation = loaded.meta.get("generation").and_then(|g| g.parse::<u64>().ok()).map_or(1, |g| g + 1);
    store.commit(&[actor::meta_op("generation", generation.to_string())]).map_err(ServeError::Store)?;
    let core_config = CoreConfig {
        models: models.clone(),
        data_dir: config.data_dir.clone(),
        long_poll_ms: tuning.long_poll.as_millis() as u64,
        tick_ms: tuning.tick.as_millis() as u64,
        queue_limit: tuning.queue_limit,
        retry_after_s: tuning.retry_after_s,
        samplers_resident_max: tuning.samplers_resident_max,
        sampler_idle_ms: tuning.sampler_idle.as_millis() as u64,
        snapshot_every: tuning.snapshot_every.max(1),
        plan: config.plan,
    };
    let ids: Box<dyn IdSource> = Box::new(SeededIds(os_seed(&config.data_dir)?));
    let core = CoordinatorCore::restore(core_config, ids, &loaded, clock.now_ms())
        .map_err(ServeError::Restore)?
        .with_generation_base(generation << GENERATION_SHIFT);
    let store = GroupCommitter::spawn(Box::new(store)).map_err(ServeError::Store)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let args = ShellArgs { core, store, clock: Arc::clone(&clock), metrics: Arc::clone(&metrics) };
    let (actor, handle) =
        Actor::spawn(None, CoordinatorActor, args).await.map_err(|e| ServeError::Actor(e.to_string()))?;
    let control_addr = match workers {
        Workers::InProcess(link) => {
            let capacity = WorkerCapacity { device: "cpu".into(), cores: 0, memory_bytes_max: None };
            let (admitted, _) = tokio::sync::oneshot::channel();
            let up =
                CoordinatorMsg::WorkerUp { worker: WorkerId(0), name: "in-process".into(), capacity, link, admitted };
            actor.send_message(up).map_err(|e| ServeError::Actor(e.to_string()))?;
            None
        }
        Workers::Remote(plane) => Some(plane.start(actor.clone(), Arc::clone(&metrics)).await?),
    };
    let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{local}"));
    let app = Arc::new(http::Http {
        tenants,
        models,
        clock,
        public_url: public_url.trim_end_matches('/').to_string(),
        url_secret,
        tuning,
        data_dir: config.data_dir.clone(),
        actor: actor.clone(),
        metrics,
        control_addr,
    });
    let served = axum::serve(listener, http::router(app)).await.map_err(ServeError::Serve);
    actor.stop(None);
    let _ = handle.await;
    served
}

/// The seed of the core's id source (run seeds, request id prefixes): injected from the OS here.
fn os_seed(data_dir: &Path) -> Result<u64, ServeError> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| ServeError::DataDir { path: data_dir.to_path_buf(), source })?;
    Ok(u64::from_le_bytes(bytes))
}

/// The HMAC key of download URLs: 32 bytes from the OS, created once and kept in the data dir
/// so URLs stay valid across restarts. (The one use of OS randomness: a secret must be unguessable.)
fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, ServeError> {
    let io = |source| ServeError::DataDir { path: path.to_path_buf(), source };
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(bytes),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut secret = vec![0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut secret)).map_err(io)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &secret).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(secret)
}
