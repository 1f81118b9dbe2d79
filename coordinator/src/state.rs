//! `Tuning`: the timing and size knobs of the service (tests shorten them).

use std::time::Duration;

/// Timing knobs of the shell and limits of the core.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// How long `retrieve_future` holds a pending poll before answering try_again (SDK timeout: 45 s).
    pub long_poll: Duration,
    /// How often session expiry, checkpoint TTLs, future retention and idle samplers are checked.
    pub tick: Duration,
    /// Lifetime of signed download URLs, in ms.
    pub download_url_ttl_ms: u64,
    /// Largest request body, before and after decompression.
    pub body_bytes_max: usize,
    /// Most unfinished forward_backward + sample requests per base model before 429.
    pub queue_limit: usize,
    /// Seconds a 429 asks the client to wait.
    pub retry_after_s: u64,
    /// Most samplers kept in worker memory at once (least recently used beyond it are freed).
    pub samplers_resident_max: usize,
    /// A sampler unused this long is freed from worker memory (and rebuilt if used again).
    pub sampler_idle: Duration,
    /// Snapshot each run's adapter + optimizer state every this many optim steps; a restart replays
    /// the requests since the last snapshot.
    pub snapshot_every: u64,
}

impl Tuning {
    pub fn standard() -> Self {
        Tuning {
            long_poll: Duration::from_secs(25),
            tick: Duration::from_secs(5),
            download_url_ttl_ms: 3_600_000,
            body_bytes_max: 256 << 20,
            queue_limit: 4096,
            retry_after_s: 1,
            samplers_resident_max: 8,
            sampler_idle: Duration::from_secs(120),
            // Measured on SmolLM2 rank 32 (adapter + Adam state 137 MB): a snapshot adds ~0.35 s to a
            // 0.56 s one-datum step; every 10 steps that is ~6%, and a restart replays at most 10 steps.
            snapshot_every: 10,
        }
    }
}
