//! The worker's memory budget for `lathe serve`: `--memory-bytes-max`, or by default 90% of the
//! machine's memory (`MemTotal` in `/proc/meminfo`), or none where that cannot be read; and the
//! startup check that the base models alone fit in it.

use anyhow::{bail, Result};

/// The default budget's share of the machine's memory, in percent.
const DEFAULT_PERCENT_OF_MEM_TOTAL: u64 = 90;

const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// The budget in force and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    /// `None`: no budget.
    pub bytes: Option<u64>,
    /// How it was chosen, for the startup log.
    pub origin: String,
}

/// The budget from the flag, else from `meminfo` (the text of `/proc/meminfo`, `None` when it
/// could not be read).
pub fn choose(flag_bytes: Option<u64>, meminfo: Option<&str>) -> Budget {
    if let Some(bytes) = flag_bytes {
        return Budget { bytes: Some(bytes), origin: "--memory-bytes-max".into() };
    }
    match meminfo.and_then(mem_total_bytes) {
        Some(total) => Budget {
            bytes: Some(total / 100 * DEFAULT_PERCENT_OF_MEM_TOTAL),
            origin: format!("{DEFAULT_PERCENT_OF_MEM_TOTAL}% of MemTotal {}", mib(total)),
        },
        None => Budget {
            bytes: None,
            origin: "MemTotal could not be read from /proc/meminfo; pass --memory-bytes-max to set one".into(),
        },
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes (the file gives kB, meaning KiB).
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib * 1024)
}

/// Fails when the base models loaded so far, `(name, weight bytes)`, exceed the budget.
///
/// # Errors
/// Naming each model's size, the budget and what to do.
pub fn check_base_fits(models: &[(String, u64)], budget: &Budget) -> Result<()> {
    let Some(budget_bytes) = budget.bytes else {
        return Ok(());
    };
    let total: u64 = models.iter().map(|(_, b)| b).sum();
    if total > budget_bytes {
        let each: Vec<String> = models.iter().map(|(name, b)| format!("{name} {}", mib(*b))).collect();
        bail!(
            "the base models alone need {} ({}), more than the worker's memory budget of {} ({}); serve fewer or \
             smaller models (--model), or pass a larger --memory-bytes-max",
            mib(total),
            each.join(", "),
            mib(budget_bytes),
            budget.origin
        );
    }
    Ok(())
}

/// The startup log line: the budget, its origin, and what the base models take of it.
pub fn describe(budget: &Budget, base_bytes: u64) -> String {
    match budget.bytes {
        Some(b) => format!(
            "memory budget: {} ({}); base models use {}, {} free for training runs and samplers",
            mib(b),
            budget.origin,
            mib(base_bytes),
            mib(b.saturating_sub(base_bytes))
        ),
        None => format!("memory budget: none ({}); base models use {}", budget.origin, mib(base_bytes)),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / BYTES_PER_MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n";

    #[test]
    fn the_default_budget_is_ninety_percent_of_mem_total_in_bytes() {
        assert_eq!(mem_total_bytes(MEMINFO), Some(24_576_000 * 1024));
        let b = choose(None, Some(MEMINFO));
        // 24576000 KiB = 25165824000 B; / 100 · 90 = 22649241600 B.
        assert_eq!(b.bytes, Some(22_649_241_600));
        assert!(b.origin.contains("90% of MemTotal 24000.0 MiB"), "{}", b.origin);
    }

    #[test]
    fn the_flag_wins_and_an_unreadable_meminfo_means_no_budget() {
        assert_eq!(choose(Some(123), Some(MEMINFO)).bytes, Some(123));
        assert_eq!(choose(None, None).bytes, None);
        assert_eq!(choose(None, Some("MemFree: 5 kB\n")).bytes, None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: 5 pages\n"), None);
    }

    #[test]
    fn base_models_beyond_the_budget_fail_naming_sizes_and_the_flag() {
        let models = vec![("a".to_string(), 3 << 20), ("b".to_string(), 2 << 20)];
        let budget = Budget { bytes: Some(5 << 20), origin: "--memory-bytes-max".into() };
        assert!(check_base_fits(&models, &budget).is_ok(), "exactly full is allowed");
        let small = Budget { bytes: Some((5 << 20) - 1), ..budget };
        let err = check_base_fits(&models, &small).unwrap_err().to_string();
        for want in ["need 5.0 MiB (a 3.0 MiB, b 2.0 MiB)", "budget of 5.0 MiB (--memory-bytes-max)", "--model"] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
        assert!(check_base_fits(&models, &Budget { bytes: None, origin: String::new() }).is_ok());
    }

    #[test]
    fn the_startup_line_gives_budget_origin_and_what_is_left() {
        let b = Budget { bytes: Some(10 << 20), origin: "--memory-bytes-max".into() };
        assert_eq!(
            describe(&b, 4 << 20),
            "memory budget: 10.0 MiB (--memory-bytes-max); base models use 4.0 MiB, 6.0 MiB free for training runs \
             and samplers"
        );
        assert!(describe(&Budget { bytes: None, origin: "x".into() }, 0).starts_with("memory budget: none (x)"));
    }
}
