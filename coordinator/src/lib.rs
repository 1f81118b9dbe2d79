//! The lathe service library: HTTP API, sessions, futures, scheduling and placement.
//! It never does model math and never links the worker or kernels crates; only the `lathe`
//! binary (`src/main.rs`, `src/cli/`) composes them.
//!
//! Entry point: [`serve`] (binds, then [`serve_on`]). Decisions live in [`core`] (pure);
//! `state`, `exec`, `store` and `http` are the shell that feeds it and carries out its results.

mod batching;
pub mod core;
mod error;
mod exec;
mod http;
mod state;
mod store;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use runtime::clock::Clock;
use runtime::control::{BaseModelInfo, WorkerLink};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use error::{ApiError, ServeError};
pub use state::Tuning;

use crate::core::catalog::Catalog;
use crate::core::futures::Futures;
use crate::core::sessions::Sessions;
use crate::core::tenants::Tenants;
use crate::state::{App, Shared};
use crate::store::{Event, Journal};

/// How `lathe serve` (or a test) runs the coordinator.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: std::net::SocketAddr,
    /// Holds `state.jsonl`, the URL-signing key and `runs/<run>/<kind>/<name>/` checkpoints.
    pub data_dir: PathBuf,
    /// `tml-key tenant` lines; without it any `tml-` key is tenant "local" (loopback only).
    pub api_keys: Option<PathBuf>,
    /// Base URL clients reach this server at (for download links); default `http://<listen>`.
    pub public_url: Option<String>,
}

/// Binds `config.listen` and serves until Ctrl-C.
pub async fn serve(
    config: ServeConfig,
    models: Vec<BaseModelInfo>,
    link: Arc<dyn WorkerLink>,
    clock: Arc<dyn Clock>,
) -> Result<(), ServeError> {
    if config.api_keys.is_none() && !config.listen.ip().is_loopback() {
        return Err(ServeError::OpenModeNotLoopback { addr: config.listen });
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
        r = serve_on(listener, config, models, link, clock, Tuning::standard()) => r,
        () = shutdown => Ok(()),
    }
}

/// Serves on an already bound listener (tests bind port 0) until the future is dropped.
pub async fn serve_on(
    listener: TcpListener,
    config: ServeConfig,
    models: Vec<BaseModelInfo>,
    link: Arc<dyn WorkerLink>,
    clock: Arc<dyn Clock>,
    tuning: Tuning,
) -> Result<(), ServeError> {
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    // Concurrent forward_backward requests of different runs share multi-tenant steps.
    let link: Arc<dyn WorkerLink> = Arc::new(batching::BatchingLink::spawn(link));
    let app = Arc::new(build_app(&config, local, models, link, clock, tuning)?);
    let ticker = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(app.tuning.tick);
            loop {
                every.tick().await;
                exec::tick(&app);
            }
        })
    };
    let served = axum::serve(listener, http::router(app)).await.map_err(ServeError::Serve);
    ticker.abort();
    served
}

fn build_app(
    config: &ServeConfig,
    local: std::net::SocketAddr,
    models: Vec<BaseModelInfo>,
    link: Arc<dyn WorkerLink>,
    clock: Arc<dyn Clock>,
    tuning: Tuning,
) -> Result<App, ServeError> {
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
    let (journal, events) = Journal::open(&config.data_dir.join("state.jsonl"))?;
    let now = clock.now_ms();
    let mut sessions = Sessions::new();
    let mut catalog = Catalog::new();
    replay(events, now, &mut sessions, &mut catalog);
    let shared = Shared {
        sessions,
        // Request ids from different coordinator lifetimes never collide.
        futures: Futures::new(&format!("{now:x}")),
        catalog,
        live: Default::default(),
        samplers: Default::default(),
        replies: Default::default(),
        reply_slots: Default::default(),
        journal,
    };
    let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{local}"));
    Ok(App {
        tenants,
        models: models.into_iter().map(|m| (m.name.clone(), m)).collect::<BTreeMap<_, _>>(),
        link,
        clock,
        data_dir: config.data_dir.clone(),
        public_url: public_url.trim_end_matches('/').to_string(),
        url_secret,
        tuning,
        shared: Mutex::new(shared),
        completed: Notify::new(),
    })
}

/// Rebuilds sessions and the catalogue from the journal. Sessions come back expired: the
/// adapters they held in memory are gone with the old process; checkpoints remain.
fn replay(events: Vec<Event>, now: u64, sessions: &mut Sessions, catalog: &mut Catalog) {
    for e in events {
        match e {
            Event::Session { id, tenant, .. } => sessions.restore(&id, &tenant, now),
            Event::Run(r) => catalog.add_run(r),
            Event::Checkpoint(c) => catalog.add_checkpoint(c),
            Event::CheckpointDeleted { run, kind, name } => {
                catalog.remove_checkpoint(&core::ids::TinkerPath { run, kind, name });
            }
            Event::CheckpointExpiry { run, kind, name, expires_ms } => {
                catalog.set_expiry(&core::ids::TinkerPath { run, kind, name }, expires_ms);
            }
        }
    }
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
