//! `lathe serve`: the whole service in one process. Resolves and loads the models, starts the
//! worker on its own thread behind an in-process `WorkerLink`, prints how to reach it, and runs
//! the coordinator's HTTP API until the process is stopped. Without `--api-keys` it only binds a
//! loopback address and accepts any `tml-` key as one local tenant.

pub mod budget;
pub mod link;
pub mod resolve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kernels::CpuBackend;
use runtime::clock::SystemClock;
use worker::model::Model;
use worker::service::{ServedModel, WorkerService};

use self::link::InProcessLink;
use self::resolve::{Resolved, Spec};
use super::catalog;

/// The worker's starting placement generation. The worker refuses only generations older than the
/// one it serves, so starting at 0 accepts whatever generation the coordinator stamps.
const GENERATION: u64 = 0;

#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Without --api-keys only loopback addresses are allowed.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// A model to serve (repeatable): a name from `lathe models`, `tiny/llama3`, a .gguf file or an
    /// HF directory, or NAME=PATH. Default: HuggingFaceTB/SmolLM2-135M-Instruct, tiny/llama3, tiny/qwen3,
    /// tiny/qwen3-moe.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Where runs, checkpoints and exports live; a restart with the same directory keeps them.
    /// Default: $LATHE_DATA, else ~/.local/share/lathe.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// File mapping API keys to tenants. Without it: loopback only, any `tml-` key, one tenant.
    #[arg(long)]
    pub api_keys: Option<PathBuf>,
    /// The base URL clients reach this server at, used in signed download URLs
    /// (default: http://<listen address>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// The worker's memory budget in bytes: base models, training runs (adapter, gradients, Adam
    /// state) and samplers together; a create_model beyond it fails with a user error.
    /// Default: 90% of MemTotal in /proc/meminfo (no budget where that cannot be read).
    #[arg(long)]
    pub memory_bytes_max: Option<u64>,
    /// Most unfinished forward_backward + sample requests per base model; beyond it new ones get 429
    /// with retry-after (the SDK backs off and retries).
    #[arg(long)]
    pub queue_limit: Option<usize>,
    /// Snapshot each training run's adapter and optimizer state every K optim steps (default 10); a
    /// crash or restart replays the requests since the last snapshot.
    #[arg(long, value_name = "K")]
    pub snapshot_every: Option<u64>,
    /// Log lines as human-readable text or as one JSON object per line (for log shippers). Every
    /// line names the ids involved: tenant, session, run, sampler, request, generation.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Least severe log level shown: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
    /// Run N workers in this process, each with its own copy of the models, through the same
    /// control plane as `lathe coordinator` + `lathe worker` (TCP frames on loopback, an in-memory
    /// lease store). Without it one worker runs in-process behind a direct link.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the process's log subscriber (stderr). A second install (tests) is ignored.
pub fn init_logs(format: LogFormat, level: tracing::Level) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A panic anywhere (an HTTP handler task, the worker thread, the store thread) is logged as an
    // error line before the default report, so it never passes silently in a log shipper.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(thread, location, panic = %info, "panic");
        default_hook(info);
    }));
}

pub fn run(args: &ServeArgs) -> Result<()> {
    init_logs(args.log_format, args.log_level);
    check_exposure(args.listen, args.api_keys.is_some())?;
    if let Some(keys) = &args.api_keys {
        if !keys.is_file() {
            bail!("--api-keys {}: no such file; create it or leave the flag out to serve on loopback", keys.display());
        }
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}; pass a writable --data-dir", data_dir.display()))?;

    let specs = if args.models.is_empty() { resolve::default_specs() } else { args.models.clone() };
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let budget = budget::choose(args.memory_bytes_max, meminfo.as_deref());
    let served = load_models(&specs, &budget)?;
    let infos: Vec<_> = served.iter().map(|m| m.info.clone()).collect();
    let names: Vec<String> = infos.iter().map(|m| m.name.clone()).collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lathe-http")
        .build()
        .context("starting the async runtime")?;
    let (workers, memory_line) = match args.workers {
        None => {
            let mut service = WorkerService::new(GENERATION, served).with_memory_budget(budget.bytes);
            let memory_line = budget::describe(&budget, service.memory_report().base_bytes);
            let link = InProcessLink::spawn("lathe-worker", move |msg| service.handle(msg))
                .context("starting the worker thread")?;
            (coordinator::Workers::InProcess(Arc::new(link)), memory_line)
        }
        Some(n) => {
            if n == 0 {
                bail!("--workers 0: give at least one worker");
            }
            let memory_line = format!("{n} in-process workers, each: {}", budget::describe(&budget, 0));
            drop(served);
            (runtime.block_on(in_process_workers(n, &specs, args.memory_bytes_max))?, memory_line)
        }
    };

    let base_url = args.public_url.clone().unwrap_or_else(|| format!("http://{}", args.listen));
    print!("{}", banner(&base_url, args.api_keys.is_some(), &names, &data_dir, &memory_line));

    let config = coordinator::ServeConfig {
        listen: args.listen,
        data_dir,
        api_keys: args.api_keys.clone(),
        public_url: args.public_url.clone(),
        queue_limit: args.queue_limit,
        snapshot_every: args.snapshot_every,
        plan: runtime::plan::Plan::Single,
    };
    runtime.block_on(coordinator::serve(config, infos, workers, Arc::new(SystemClock)))?;
    Ok(())
}

/// `--workers N`: a control plane on a loopback port with an in-memory lease store, and N worker
/// tasks that join it exactly as worker processes do.
async fn in_process_workers(n: usize, specs: &[String], memory_bytes_max: Option<u64>) -> Result<coordinator::Workers> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the control port")?;
    let control = listener.local_addr()?;
    let leases: Arc<dyn runtime::lease::LeaseStore> =
        Arc::new(runtime::lease::MemLeaseStore::new(Arc::new(SystemClock)));
    for i in 0..n {
        let options = super::worker::WorkerOptions {
            name: format!("local-{i}"),
            device: "cpu".into(),
            memory_bytes_max,
            cores: rayon::current_num_threads() as u32,
            metrics: None,
        };
        let leases = Arc::clone(&leases);
        tokio::spawn(async move {
            let dial = super::worker::Dial::Control(control);
            if let Err(e) = super::worker::run_worker(options, leases, dial).await {
                tracing::error!(worker = i, error = %format!("{e:#}"), "an in-process worker stopped");
            }
        });
    }
    Ok(coordinator::Workers::Remote(coordinator::control::ControlPlane { listener, leases, models: specs.to_vec() }))
}

/// Resolves and loads `specs`, checking after each that the base models fit `budget`.
pub fn load_models(specs: &[String], budget: &budget::Budget) -> Result<Vec<ServedModel>> {
    let specs: Vec<Spec> = specs.iter().map(|s| resolve::parse_spec(s)).collect::<Result<_>>()?;
    let hf_cache = catalog::models_dir().join("hf");
    let mut served = Vec::with_capacity(specs.len());
    let mut base_bytes = Vec::with_capacity(specs.len());
    for spec in &specs {
        let model = into_served(resolve::load(spec, &hf_cache)?)?;
        if served.iter().any(|m: &ServedModel| m.info.name == model.info.name) {
            bail!(
                "model `{}` is given twice; use NAME=PATH to serve a second copy under another name",
                model.info.name
            );
        }
        // Checked after each model, so a list that cannot fit stops at the first model too many.
        base_bytes.push((model.info.name.clone(), model.model.weight_bytes()));
        budget::check_base_fits(&base_bytes, budget)?;
        served.push(model);
    }
    Ok(served)
}

fn into_served(r: Resolved) -> Result<ServedModel> {
    let tokenizer = match &r.tokenizer_json {
        Some(text) => Some(worker::load::tokenizer_from_json(text)?),
        None => None,
    };
    let model = Model::new(r.config, r.weights, CpuBackend)
        .with_context(|| format!("building model `{}` from its weights", r.info.name))?;
    Ok(ServedModel { info: r.info, model, tokenizer })
}

/// Refuses to expose a keyless server beyond this machine.
fn check_exposure(listen: SocketAddr, has_keys: bool) -> Result<()> {
    if !has_keys && !listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {listen} without --api-keys: a keyless server accepts any `tml-` key, so it \
             only binds loopback (e.g. --listen 127.0.0.1:{}); pass --api-keys FILE to serve other hosts",
            listen.port()
        );
    }
    Ok(())
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LATHE_DATA") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local").join("share").join("lathe")
}

/// What `lathe serve` prints on start: the URL, the key policy, the models, the data directory, the
/// memory budget line and an SDK snippet.
fn banner(base_url: &str, keyed: bool, models: &[String], data_dir: &std::path::Path, memory: &str) -> String {
    let key_line = if keyed {
        "API keys: from --api-keys; each key acts for its tenant only".to_string()
    } else {
        "API keys: none configured, so any key starting with `tml-` is accepted, all as one local tenant \
         (loopback only)"
            .to_string()
    };
    let first = models.first().map(String::as_str).unwrap_or("tiny/llama3");
    format!(
        "lathe serving the Tinker API at {base_url}\n\
         {key_line}\n\
         models: {}\n\
         data: {}\n\
         {memory}\n\
         \n\
         Use it from the official SDK (pip install tinker==0.38.0):\n\
         \x20 export TINKER_BASE_URL={base_url}\n\
         \x20 export TINKER_API_KEY=tml-local\n\
         \n\
         \x20 import tinker\n\
         \x20 from tinker import types\n\
         \x20 sc = tinker.ServiceClient()\n\
         \x20 tc = sc.create_lora_training_client(base_model=\"{first}\", rank=8).result()\n\
         \x20 s = tc.save_weights_and_get_sampling_client().result()\n\
         \x20 print(s.sample(types.ModelInput.from_ints([1, 2, 3]), 1, types.SamplingParams(max_tokens=8)).result())\n",
        models.join(", "),
        data_dir.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyless_server_may_bind_loopback_only() {
        assert!(check_exposure("127.0.0.1:8000".parse().unwrap(), false).is_ok());
        assert!(check_exposure("[::1]:8000".parse().unwrap(), false).is_ok());
        let err = check_exposure("0.0.0.0:8000".parse().unwrap(), false).unwrap_err().to_string();
        assert!(err.contains("--api-keys"), "{err}");
        assert!(err.contains("127.0.0.1:8000"), "{err}");
        assert!(check_exposure("0.0.0.0:8000".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn the_banner_names_the_url_the_key_policy_and_a_served_model() {
        let models = vec!["tiny/llama3".to_string(), "tiny/qwen3".to_string()];
        let text = banner("http://127.0.0.1:9", false, &models, std::path::Path::new("/d"), "memory budget: 1.0 MiB");
        assert!(text.contains("at http://127.0.0.1:9\n"), "{text}");
        assert!(text.contains("export TINKER_BASE_URL=http://127.0.0.1:9"), "{text}");
        assert!(text.contains("export TINKER_API_KEY=tml-"), "{text}");
        assert!(text.contains("any key starting with `tml-` is accepted"), "{text}");
        assert!(text.contains("base_model=\"tiny/llama3\", rank=8).result()"), "{text}");
        assert!(text.contains("models: tiny/llama3, tiny/qwen3"), "{text}");
        assert!(text.contains("data: /d\nmemory budget: 1.0 MiB\n"), "{text}");
        let keyed = banner("http://h:1", true, &models, std::path::Path::new("/d"), "");
        assert!(!keyed.contains("any key starting"), "{keyed}");
    }
}
