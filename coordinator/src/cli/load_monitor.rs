//! Measures how much CPU *other* processes used while a benchmark ran, so that every benchmark
//! line says how noisy the shared machine was (the same `other_procs_cores` the PyTorch baseline
//! script reports). Linux `/proc` only; elsewhere it reports `None`.

use std::time::Instant;

/// Jiffies per second for `/proc` counters (USER_HZ is 100 on every Linux we run on).
const USER_HZ: f64 = 100.0;

pub struct LoadMonitor {
    start_busy: Option<u64>,
    start_self: Option<u64>,
    start: Instant,
}

impl LoadMonitor {
    /// Starts a measurement window. The wall clock is read here, in the binary, on purpose.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Self {
        LoadMonitor { start_busy: system_busy_jiffies(), start_self: self_jiffies(), start: Instant::now() }
    }

    /// Seconds since `start`.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Cores' worth of CPU used by other processes since `start` (0.0 = the machine was ours).
    pub fn other_cores(&self) -> Option<f64> {
        let busy = system_busy_jiffies()?.checked_sub(self.start_busy?)?;
        let mine = self_jiffies()?.checked_sub(self.start_self?)?;
        let elapsed = self.elapsed_s();
        if elapsed <= 0.0 {
            return None;
        }
        let other = busy.saturating_sub(mine) as f64 / USER_HZ / elapsed;
        Some((other * 100.0).round() / 100.0)
    }
}

/// Busy jiffies of the whole machine: every column of the `cpu` line except idle and iowait.
fn system_busy_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 8 {
        return None;
    }
    Some(v.iter().sum::<u64>() - v[3] - v[4])
}

/// utime + stime of this process, in jiffies.
fn self_jiffies() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
