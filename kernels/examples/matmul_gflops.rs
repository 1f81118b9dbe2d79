//! Throughput probe for the CPU backend's matmul_nt (and the reference, on a small shape, for
//! scale): prints GFLOP/s per shape. Run with `cargo run -p kernels --release --example
//! matmul_gflops`. Inputs are deterministic; only the wall clock varies between runs.

use std::time::Instant;

use kernels::{Backend, CpuBackend, LinearOps, MatmulDims};

fn fill(n: usize, seed: u64) -> Vec<f32> {
    // A tiny LCG: inputs need no statistical quality here, only to be non-trivial and fixed.
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

#[allow(clippy::disallowed_methods)] // a binary's main may read the wall clock
fn main() {
    let backend = CpuBackend;
    for (m, k, n, reps) in [(512, 1024, 3072, 10), (1, 1024, 3072, 50), (64, 1024, 3072, 20), (300, 2048, 2048, 10)] {
        let d = MatmulDims { m, k, n };
        let (x, w) = (fill(m * k, 1), fill(n * k, 2));
        let mut y = vec![0.0f32; m * n];
        backend.matmul_nt(&mut y, &x, &w, d, false); // warm-up
        let start = Instant::now();
        for _ in 0..reps {
            backend.matmul_nt(&mut y, &x, &w, d, false);
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        let gflops = 2.0 * (m * k * n) as f64 / secs / 1e9;
        println!("{} matmul_nt m={m} k={k} n={n}: {:.3} ms, {gflops:.1} GFLOP/s", backend.name(), secs * 1e3);
    }
}
