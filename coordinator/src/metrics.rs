//! The coordinator's Prometheus metrics (text exposition at `GET /metrics`). The shell sets them
//! from what the core decided; nothing here decides anything. Later issues add the rest of the
//! operators' view (step latency, queue depths, tokens per second).

use prometheus::{Encoder, IntCounter, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Workers by state: `live` (members the core places work on).
    workers: IntGaugeVec,
    /// Workers counted out because their etcd lease ended without them leaving.
    lease_expirations: IntCounter,
}

impl Metrics {
    /// # Panics
    /// Never in practice: the names below are valid and registered once per registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let workers =
            IntGaugeVec::new(Opts::new("lathe_workers", "Workers known to the coordinator, by state"), &["state"])
                .expect("a valid metric definition");
        let lease_expirations = IntCounter::new(
            "lathe_worker_lease_expirations_total",
            "Workers counted out because their lease expired (killed, stopped or partitioned)",
        )
        .expect("a valid metric definition");
        registry.register(Box::new(workers.clone())).expect("registered once");
        registry.register(Box::new(lease_expirations.clone())).expect("registered once");
        workers.with_label_values(&["live"]).set(0);
        Metrics { registry, workers, lease_expirations }
    }

    pub fn set_workers(&self, live: usize) {
        self.workers.with_label_values(&["live"]).set(live as i64);
    }

    pub fn lease_expired(&self) {
        self.lease_expirations.inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_live_workers_and_lease_expirations() {
        let m = Metrics::new();
        m.set_workers(2);
        m.lease_expired();
        let text = m.render();
        assert!(text.contains("lathe_workers{state=\"live\"} 2"), "{text}");
        assert!(text.contains("lathe_worker_lease_expirations_total 1"), "{text}");
        m.set_workers(1);
        assert!(m.render().contains("lathe_workers{state=\"live\"} 1"));
    }
}
