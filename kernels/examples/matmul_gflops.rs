//! Throughput probe for the CPU backend's row-invariant products: GFLOP/s per shape of
//! `matmul_nt` through the old path (gemm on zero-padded 64-row tiles) and the new one (the
//! dot-product kernel, AVX2 and portable), and of `matmul_nn` through the backend. Run with
//! `cargo run -p kernels --release --example matmul_gflops`. Inputs are deterministic; only the
//! wall clock varies between runs, so read the numbers next to the machine's load (`uptime`).

use std::time::Instant;

use kernels::cpu::dot_gemm::{self, Isa};
use kernels::cpu::tiled_gemm::{row_tiled_gemm, Rhs};
use kernels::{CpuBackend, LinearOps, MatmulDims};

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

/// Seconds per call of `f`, after one warm-up call, over at least `min_s` and 3 calls.
#[allow(clippy::disallowed_methods)] // a benchmark binary may read the wall clock
fn time_per_call(min_s: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut calls) = (Instant::now(), 0u32);
    while calls < 3 || start.elapsed().as_secs_f64() < min_s {
        f();
        calls += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(calls)
}

fn main() {
    let only: Vec<String> = std::env::args().skip(1).collect(); // optional filter: path names
    let shapes = [
        (1, 576, 1536),
        (1, 1024, 3072),
        (64, 1024, 3072),
        (512, 1024, 3072),
        (4096, 256, 768),
        (8, 256, 768),
        (8, 256, 4096),
        (4096, 32, 768),
        (4096, 256, 32),
        (8, 32, 768),
        (8, 256, 32),
    ];
    for (m, k, n) in shapes {
        let d = MatmulDims { m, k, n };
        let (x, w, dy) = (fill(m * k, 1), fill(n * k, 2), fill(m * n, 3));
        let (mut y, mut dx) = (vec![0.0f32; m * n], vec![0.0f32; m * k]);
        let flop = 2.0 * (m * k * n) as f64;
        let report = |path: &str, secs: f64| {
            println!("{path:>14} m={m:<5} k={k:<5} n={n:<5} {:9.3} ms {:6.1} GFLOP/s", secs * 1e3, flop / secs / 1e9);
        };
        let wanted = |path: &str| only.is_empty() || only.iter().any(|o| o == path);
        if wanted("nt_tiled_gemm") {
            let rhs = Rhs { data: &w, row_stride: 1, col_stride: k };
            report("nt_tiled_gemm", time_per_call(0.5, || row_tiled_gemm(&mut y, &x, rhs, m, k, n, false)));
        }
        if wanted("nt_dot_avx2") && Isa::Avx2Fma.is_supported() {
            let f = || dot_gemm::matmul_nt_on(Isa::Avx2Fma, &mut y, &x, &w, d, false);
            report("nt_dot_avx2", time_per_call(0.5, f));
        }
        if wanted("nt_dot_portable") {
            let f = || dot_gemm::matmul_nt_on(Isa::Portable, &mut y, &x, &w, d, false);
            report("nt_dot_portable", time_per_call(0.5, f));
        }
        if wanted("nn_backend") {
            report("nn_backend", time_per_call(0.5, || CpuBackend.matmul_nn(&mut dx, &dy, &w, d, false)));
        }
    }
}
