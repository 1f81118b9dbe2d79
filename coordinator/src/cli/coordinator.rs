//! `lathe coordinator`: the service without workers of its own. It serves the Tinker API on
//! `--listen`, takes worker processes on a control port (workers find it at
//! `GET /lathe/v1/control`), and counts them in and out by their etcd leases.
//!
//! It needs each base model's shape (vocabulary, context length, tokenizer) to validate requests,
//! so it resolves the models too; today that loads their weights once at start and drops them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use runtime::clock::SystemClock;

use super::serve::{budget, init_logs, load_models, resolve, LogFormat};

#[derive(Clone, Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// HTTP address of the Tinker API (and of /metrics and the workers' discovery endpoint).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Address workers connect to (default: the --listen host, any free port).
    #[arg(long)]
    pub control_listen: Option<SocketAddr>,
    /// etcd client URL(s), comma-separated, e.g. http://127.0.0.1:2379.
    #[arg(long)]
    pub etcd: String,
    /// Where the state store, checkpoints and snapshots live (shared with the workers: they write
    /// checkpoints into the directories the coordinator names).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A model to serve (repeatable); workers load the same values. Default: as `lathe serve`.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// File mapping API keys to tenants. Without it: loopback only, any `tml-` key, one tenant.
    #[arg(long)]
    pub api_keys: Option<PathBuf>,
    /// Sharding plan: auto, single, dp=N, pp=N or ep=N. `single` (what `auto` picks in this build)
    /// places each run whole on one worker; `dp=N` runs each on N workers, its forward_backward
    /// split over them with gradients handed on in datum order (the result equals one worker's bit for
    /// bit on dense models). pp and ep are not implemented yet.
    #[arg(long, default_value = "auto")]
    pub plan: String,
    #[arg(long)]
    pub queue_limit: Option<usize>,
    #[arg(long, value_name = "K")]
    pub snapshot_every: Option<u64>,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
}

pub fn run(args: &CoordinatorArgs) -> Result<()> {
    init_logs(args.log_format, args.log_level);
    use runtime::plan::{Plan, PlanChoice};
    let plan = match PlanChoice::parse(&args.plan)? {
        PlanChoice::Auto | PlanChoice::Forced(Plan::Single) => Plan::Single,
        PlanChoice::Forced(plan @ Plan::DataParallel { .. }) => plan,
        PlanChoice::Forced(plan) => anyhow::bail!(
            "--plan {}: {plan:?} is not implemented yet; use --plan single (what auto picks) or dp=N",
            args.plan
        ),
    };
    let specs = if args.models.is_empty() { resolve::default_specs() } else { args.models.clone() };
    let infos: Vec<_> = load_models(&specs, &budget::choose(None, None))?.into_iter().map(|m| m.info).collect();
    let urls: Vec<String> = args.etcd.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lathe-coordinator")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let leases = runtime::lease::EtcdLeaseStore::connect(&urls)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.etcd))?;
        let control_addr = args.control_listen.unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 0));
        let listener = tokio::net::TcpListener::bind(control_addr)
            .await
            .with_context(|| format!("binding the control address {control_addr}; pick another with --control-listen"))?;
        let control = listener.local_addr()?;
        let plane = coordinator::control::ControlPlane { listener, leases: Arc::new(leases), models: specs.clone() };
        println!(
            "lathe coordinator at http://{} (control {control}, etcd {}); start workers with:\n  lathe worker --coordinator {} --etcd {}",
            args.listen, args.etcd, args.listen, args.etcd
        );
        let config = coordinator::ServeConfig {
            listen: args.listen,
            data_dir: args.data_dir.clone(),
            api_keys: args.api_keys.clone(),
            public_url: None,
            queue_limit: args.queue_limit,
            snapshot_every: args.snapshot_every,
            plan,
        };
        coordinator::serve(config, infos, coordinator::Workers::Remote(plane), Arc::new(SystemClock)).await?;
        Ok(())
    })
}
