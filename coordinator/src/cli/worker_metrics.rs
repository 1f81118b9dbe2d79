//! A worker process's own Prometheus metrics (`lathe worker --metrics-listen ADDR`, `GET /metrics`):
//! frames executed, its generation, whether it is serving, and its resident memory, read from
//! `/proc/self/statm` at each scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};

pub struct WorkerMetrics {
    registry: Registry,
    pub frames: IntCounter,
    pub generation: IntGauge,
    pub serving: IntGauge,
    resident_bytes: IntGauge,
}

impl WorkerMetrics {
    /// # Panics
    /// Never in practice: the definitions are valid and registered once.
    pub fn new() -> Self {
        let registry = Registry::new();
        let frames = IntCounter::new("lathe_worker_frames_total", "Control frames this worker executed")
            .expect("a valid metric definition");
        let generation = IntGauge::new(
            "lathe_worker_generation",
            "The placement generation this worker serves (0 before its Welcome)",
        )
        .expect("a valid metric definition");
        let serving = IntGauge::new("lathe_worker_serving", "1 while this worker is a member serving frames")
            .expect("a valid metric definition");
        let resident_bytes = IntGauge::new("lathe_worker_resident_bytes", "Resident memory of this worker process")
            .expect("a valid metric definition");
        for m in [&generation, &serving, &resident_bytes] {
            registry.register(Box::new(m.clone())).expect("registered once");
        }
        registry.register(Box::new(frames.clone())).expect("registered once");
        WorkerMetrics { registry, frames, generation, serving, resident_bytes }
    }

    pub fn render(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.resident_bytes.set(bytes as i64);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics::new()
    }
}

/// Resident set size from `/proc/self/statm` (its second field, in pages of 4 KiB).
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<WorkerMetrics>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-listen {addr}; pick a free address"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move { metrics.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the worker's metrics endpoint stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_frames_generation_serving_and_memory() {
        let m = WorkerMetrics::new();
        m.frames.inc_by(3);
        m.generation.set(7);
        m.serving.set(1);
        let text = m.render();
        assert!(text.contains("lathe_worker_frames_total 3"), "{text}");
        assert!(text.contains("lathe_worker_generation 7"), "{text}");
        assert!(text.contains("lathe_worker_serving 1"), "{text}");
        let rss = text.lines().find_map(|l| l.strip_prefix("lathe_worker_resident_bytes ")).unwrap_or("0");
        assert!(rss.parse::<u64>().unwrap_or(0) > 0, "{text}");
    }
}
