//! The loopback bench helpers: a quick check that they run, and the figures themselves
//! (`cargo test -p runtime --release -- --ignored --nocapture transport_bench`).

use crate::transport::bench::{loopback_rtt, loopback_throughput, loopback_throughput_with, Receive};

/// Goal: the helpers complete and report sane numbers. Method: tiny runs, no speed asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_helpers_report_positive_figures() {
    let t = loopback_throughput(1 << 16, 3).await.expect("throughput");
    assert_eq!((t.body_bytes, t.reps), (1 << 16, 3));
    assert!(t.gigabytes_per_s_min > 0.0 && t.gigabytes_per_s_min <= t.gigabytes_per_s_median);
    assert!(t.gigabytes_per_s_median <= t.gigabytes_per_s_max);
    let r = loopback_rtt(20).await.expect("rtt");
    assert!(r.rtt_us_median > 0.0 && r.rtt_us_median <= r.rtt_us_p99);
}

/// Prints the 64 MiB throughput (both receive paths) and the control-frame round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release with --nocapture"]
async fn transport_bench_loopback() {
    for bytes in [1usize << 20, 8 << 20, 64 << 20] {
        for receive in [Receive::Fresh, Receive::Reused] {
            let t = loopback_throughput_with(bytes, 20, receive).await.expect("throughput");
            println!(
                "transport_bench throughput body={} MiB receive={receive:?} reps={}: median {:.2} GB/s (min {:.2}, max {:.2})",
                bytes >> 20,
                t.reps,
                t.gigabytes_per_s_median,
                t.gigabytes_per_s_min,
                t.gigabytes_per_s_max
            );
        }
    }
    let r = loopback_rtt(2000).await.expect("rtt");
    println!(
        "transport_bench rtt empty control frame reps={}: median {:.1} us, p99 {:.1} us",
        r.reps, r.rtt_us_median, r.rtt_us_p99
    );
}
