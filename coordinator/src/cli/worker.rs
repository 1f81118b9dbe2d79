//! `lathe worker`: one device's worker process. It holds its lease `/lathe/workers/<name>` in etcd
//! (TTL 3 s, kept alive every second), finds the coordinator's control address from the
//! coordinator's HTTP address (`GET /lathe/v1/control`), says hello, loads the models the Welcome
//! names, and then executes control frames in arrival order on one thread (the same
//! `WorkerService` as `lathe serve`), answering each with a frame of the same call number and
//! generation. It exits when its connection or its lease ends: a supervisor (systemd, the
//! chaos tests) starts a fresh one, which joins as a new member.
//!
//! `lathe serve --workers N` runs [`run_worker`] N times inside its own process, against an
//! in-memory lease store — the same path as the cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runtime::control::{Envelope, ErrorCategory, FromWorker, WorkerLink};
use runtime::lease::{worker_key, LeaseStore};
use runtime::transport::{self, Capacity, Frame, Hello, HelloReply, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use worker::service::WorkerService;

use super::serve::link::InProcessLink;
use super::serve::{budget, load_models};

/// The worker's lease: short enough that a dead worker is counted out within seconds.
pub const LEASE_TTL_MS: u64 = 3_000;

#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's HTTP address (its --listen), e.g. 127.0.0.1:8000.
    #[arg(long)]
    pub coordinator: SocketAddr,
    /// etcd client URL(s), comma-separated, e.g. http://127.0.0.1:2379.
    #[arg(long)]
    pub etcd: String,
    /// The device this worker owns: `cpu` (CUDA comes with the CUDA backend).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Memory budget in bytes for base models, runs and samplers (default: 90% of MemTotal).
    #[arg(long)]
    pub memory_bytes_max: Option<u64>,
    /// CPU threads for model math (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The name it registers under (default: worker-<host>-<pid>); unique per cluster.
    #[arg(long)]
    pub name: Option<String>,
    /// Serve this worker's own Prometheus metrics at http://ADDR/metrics (frames executed,
    /// generation, serving, resident memory).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Where a worker finds its coordinator.
pub enum Dial {
    /// The coordinator's HTTP address: ask it for the control address.
    Http(SocketAddr),
    /// The control address itself (in-process workers of `lathe serve --workers N`).
    Control(SocketAddr),
}

/// What one worker runs with.
pub struct WorkerOptions {
    pub name: String,
    pub device: String,
    pub memory_bytes_max: Option<u64>,
    pub cores: u32,
    /// Where to count what it does (None: not exposed).
    pub metrics: Option<Arc<super::worker_metrics::WorkerMetrics>>,
}

pub fn run(args: &WorkerArgs) -> Result<()> {
    if args.device != "cpu" {
        bail!("--device {}: this build drives the CPU only; use --device cpu", args.device);
    }
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("setting --threads")?;
    }
    let name = args.name.clone().unwrap_or_else(default_name);
    let options = WorkerOptions {
        name,
        device: args.device.clone(),
        memory_bytes_max: args.memory_bytes_max,
        cores: rayon::current_num_threads() as u32,
        metrics: args.metrics_listen.map(|_| Arc::new(super::worker_metrics::WorkerMetrics::new())),
    };
    let urls: Vec<String> = args.etcd.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        if let (Some(addr), Some(metrics)) = (args.metrics_listen, &options.metrics) {
            super::worker_metrics::serve(addr, Arc::clone(metrics)).await?;
        }
        let leases = runtime::lease::EtcdLeaseStore::connect(&urls)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.etcd))?;
        run_worker(options, Arc::new(leases), Dial::Http(args.coordinator)).await
    })
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let host = if host.is_empty() { "host".to_string() } else { host };
    format!("worker-{host}-{}", std::process::id())
}

/// Asks the coordinator's HTTP address for its control address (`GET /lathe/v1/control`). A
/// plain HTTP/1.1 request over a socket: this is the one HTTP call a worker makes.
async fn discover(http: SocketAddr) -> Result<SocketAddr> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(http))
        .await
        .with_context(|| format!("connecting to the coordinator at {http} timed out"))?
        .with_context(|| format!("connecting to the coordinator at {http}; is `lathe coordinator` running there?"))?;
    let request = format!("GET /lathe/v1/control HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut response))
        .await
        .context("the coordinator did not answer GET /lathe/v1/control within 5 s")??;
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body.trim())
        .with_context(|| format!("GET http://{http}/lathe/v1/control answered {:?}", text.lines().next()))?;
    let Some(control) = v.get("control").and_then(|c| c.as_str()) else {
        bail!(
            "the coordinator at {http} takes no workers: {}",
            v.get("detail").and_then(|d| d.as_str()).unwrap_or(body)
        );
    };
    control.parse().with_context(|| format!("the coordinator gave a bad control address {control:?}"))
}

/// One worker's life: lease, hello, models, then frames until the connection or the lease ends.
pub async fn run_worker(options: WorkerOptions, leases: Arc<dyn LeaseStore>, dial: Dial) -> Result<()> {
    let control = match dial {
        Dial::Http(http) => discover(http).await?,
        Dial::Control(addr) => addr,
    };
    let capacity =
        Capacity { device: options.device.clone(), cores: options.cores, memory_bytes_max: options.memory_bytes_max };
    let value = serde_json::to_vec(&serde_json::json!({
        "name": options.name, "device": capacity.device, "cores": capacity.cores,
        "memory_bytes_max": capacity.memory_bytes_max, "pid": std::process::id(),
    }))?;
    let lease = leases
        .hold(&worker_key(&options.name), value, LEASE_TTL_MS)
        .await
        .with_context(|| format!("taking the lease {}", worker_key(&options.name)))?;
    let mut stream = TcpStream::connect(control)
        .await
        .with_context(|| format!("connecting to the coordinator's control address {control}"))?;
    stream.set_nodelay(true)?;
    let limits = Limits::default();
    let hello = Hello {
        protocol: transport::PROTOCOL_VERSION,
        build: transport::build_version(),
        name: options.name.clone(),
        capacity,
    };
    let (worker, generation, models) = match transport::client_hello(&mut stream, &hello, &limits).await {
        Ok(HelloReply::Welcome { worker, generation, models }) => (worker, generation, models),
        Ok(HelloReply::Refused { message }) => bail!("the coordinator refused this worker: {message}"),
        Err(e) => return Err(e).context("the handshake with the coordinator failed"),
    };
    tracing::info!(worker, generation, name = %options.name, models = ?models, "welcomed; loading models");
    let budget = budget::choose(options.memory_bytes_max, std::fs::read_to_string("/proc/meminfo").ok().as_deref());
    let served = tokio::task::spawn_blocking(move || load_models(&models, &budget).map(|m| (m, budget)))
        .await
        .context("the model loading task failed")??;
    let (served, budget) = served;
    let mut service = WorkerService::new(generation, served).with_memory_budget(budget.bytes);
    if let Some(m) = &options.metrics {
        m.generation.set(generation as i64);
        m.serving.set(1);
    }
    let thread = format!("lathe-worker-{}", options.name);
    let link = InProcessLink::spawn(&thread, move |msg| service.handle(msg)).context("starting the worker thread")?;
    tracing::info!(worker, name = %options.name, "serving");
    let outcome = serve_frames(stream, Arc::new(link), &limits, &*lease, options.metrics.clone()).await;
    if let Some(m) = &options.metrics {
        m.serving.set(0);
    }
    let _ = lease.revoke().await;
    outcome
}

/// Executes frames in arrival order until the connection closes or the lease lapses.
async fn serve_frames(
    stream: TcpStream,
    link: Arc<dyn WorkerLink>,
    limits: &Limits,
    lease: &dyn runtime::lease::LeaseHandle,
    metrics: Option<Arc<super::worker_metrics::WorkerMetrics>>,
) -> Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let (outbox, mut replies) = tokio::sync::mpsc::unbounded_channel::<Frame>();
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = replies.recv().await {
            transport::write_frame(&mut writer, &frame).await?;
        }
        Ok::<(), transport::TransportError>(())
    });
    let mut lease_check = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        let frame = tokio::select! {
            _ = lease_check.tick() => {
                if !lease.is_alive() {
                    break Err(anyhow::anyhow!("this worker's lease lapsed; it is no longer a member (start a new worker)"));
                }
                continue;
            }
            frame = transport::read_frame(&mut reader, limits) => frame,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(transport::TransportError::Closed) => {
                break Err(anyhow::anyhow!(
                    "the coordinator closed the control connection (it counted this worker out, or it stopped); \
                     start a new worker to rejoin"
                ))
            }
            Err(e) => break Err(e).context("reading from the coordinator"),
        };
        let (call, generation) = (frame.call, frame.generation);
        if let Some(m) = &metrics {
            m.frames.inc();
        }
        let decoded = frame.decode::<Envelope>().map_err(|e| e.to_string()).and_then(|mut envelope| {
            envelope.put_body(&frame.body)?;
            Ok(envelope)
        });
        let reply = match decoded {
            Ok(envelope) => {
                // Queued on the worker thread now, so execution follows arrival order.
                link.call(envelope)
            }
            Err(e) => {
                let failed = FromWorker::Failed {
                    category: ErrorCategory::Server,
                    message: format!(
                        "the worker could not decode this message ({e}); coordinator and worker builds differ?"
                    ),
                };
                Box::pin(async move { failed })
            }
        };
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let mut reply = reply.await;
            let body = reply.take_body();
            match Frame::encode(generation, call, &reply, body) {
                Ok(f) => {
                    let _ = outbox.send(f);
                }
                Err(e) => tracing::error!(call, error = %e, "could not encode a reply"),
            }
        });
    };
    drop(outbox);
    writer_task.abort();
    result
}
