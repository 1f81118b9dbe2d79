//! Row-invariant `y (m, n) = x (m, k) · w (n, k)ᵀ` (or `+=`) by construction, with no padding:
//! every output `y[i, j]` is computed by one fixed chain that depends only on `x[i, ..]`,
//! `w[j, ..]` and `k`: eight lane-wise partial sums over the whole chunks of 8 in k order (an FMA
//! per chunk on AVX2), the reduction tree `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`,
//! then the `k mod 8` tail products added one by one in order, then `y = s` or `y = y + s`.
//! Register blocking (several rows of x against several rows of w) and the split into rayon tasks
//! only decide which chains run together, never how a chain computes, so a row's bits are the same
//! for any `m`, any position and any block shape; `m = 1` costs one matvec. k is never split.
//!
//! The kernel ([`Isa`]) is chosen once per process: AVX2 + FMA where the CPU has them, the
//! portable scalar block otherwise. The two give (slightly) different bits, so one process must
//! never mix them for the same tensor; [`matmul_nt`] always uses [`Isa::detected`].

use std::array;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::MatmulDims;

#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;

/// Lanes of one partial-sum vector (an AVX2 register of f32). Fixed: it is part of the chain.
pub const LANES: usize = 8;
/// Target size of the `w` panel one task sweeps (kept in L2 while rows of x stream past it).
const W_PANEL_FLOATS: usize = 32 * 1024;
/// Rows of x per task when m is large (a multiple of the 3-row register block).
const ROWS_PER_TASK: usize = 96;
/// Below this many multiply-adds (m·n·k) a call runs on the calling thread: a rayon fork-join
/// costs microseconds (far more when a core is busy elsewhere) and decode makes ~100 tiny calls
/// per step. Only scheduling changes; every chain is the same.
const SERIAL_BELOW_FMAS: usize = 256 * 1024;

/// The chains of a few rows of x against a contiguous panel of w rows, register-blocked inside;
/// every output by the same chain (module doc) whatever `R`, the panel or its place in a block.
pub(crate) trait DotKernel: Copy + Send + Sync {
    /// `sums (R, cols)[r, j]` = chain(`xs[r]`, `panel (cols, k)[j]`); every `xs[r]` has length k.
    fn rows_against_panel<const R: usize>(self, xs: &[&[f32]; R], panel: &[f32], sums: &mut [f32]);
}

/// Which block kernel computes the chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// `std::arch` AVX2 + FMA intrinsics (x86_64 CPUs that report both features).
    Avx2Fma,
    /// Plain scalar Rust with the same chain structure and unfused multiply-adds; runs anywhere.
    Portable,
}

impl Isa {
    /// The best kernel this CPU supports, detected on first use and fixed for the process.
    pub fn detected() -> Isa {
        static CHOSEN: OnceLock<Isa> = OnceLock::new();
        *CHOSEN.get_or_init(|| if Isa::Avx2Fma.is_supported() { Isa::Avx2Fma } else { Isa::Portable })
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => avx2::Avx2Fma::detect().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma => false,
        }
    }
}

/// `y (m, n) = x (m, k) · w (n, k)ᵀ`, or `+=` when `accumulate`, row-invariant (module doc),
/// with the process's kernel ([`Isa::detected`]).
pub fn matmul_nt(y: &mut [f32], x: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
    matmul_nt_on(Isa::detected(), y, x, w, d, accumulate);
}

/// [`matmul_nt`] on a chosen kernel (tests and benchmarks compare kernels). Panics if the CPU
/// does not support `isa`.
pub fn matmul_nt_on(isa: Isa, y: &mut [f32], x: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
    let MatmulDims { m, k, n } = d;
    assert!(y.len() == m * n && x.len() == m * k && w.len() == n * k, "dot_gemm: y (m, n), x (m, k), w (n, k)");
    match isa {
        Isa::Portable => run(portable::Portable, y, x, w, d, accumulate),
        Isa::Avx2Fma => {
            #[cfg(target_arch = "x86_64")]
            if let Some(kernel) = avx2::Avx2Fma::detect() {
                return run(kernel, y, x, w, d, accumulate);
            }
            panic!("dot_gemm: Isa::Avx2Fma requested on a CPU without AVX2 + FMA; use Isa::detected()");
        }
    }
}

/// Splits `y` into (rows, columns) rectangles, one rayon task each, and fills each by blocks.
fn run<K: DotKernel>(kernel: K, y: &mut [f32], x: &[f32], w: &[f32], d: MatmulDims, accumulate: bool) {
    let MatmulDims { m, k, n } = d;
    if m == 0 || n == 0 {
        return;
    }
    let cols_per_task = (W_PANEL_FLOATS / k.max(1) / LANES * LANES).clamp(LANES, 1024);
    let rows_per_task = if m <= ROWS_PER_TASK { m } else { ROWS_PER_TASK };
    let (row_tasks, col_tasks) = (m.div_ceil(rows_per_task), n.div_ceil(cols_per_task));
    let out = OutRows { ptr: y.as_mut_ptr(), m, n };
    // Column-panel-major order: neighbouring tasks share a w panel (the operand kept in cache).
    let task = |t: usize| {
        let (rt, ct) = (t % row_tasks, t / row_tasks);
        let rows = rt * rows_per_task..m.min((rt + 1) * rows_per_task);
        let cols = ct * cols_per_task..n.min((ct + 1) * cols_per_task);
        let mut sums = vec![0.0f32; 3 * cols.len()]; // (≤ 3, cols) one row group's results
        let panel = &w[cols.start * k..cols.end * k]; // (cols, k)
        let mut i = rows.start;
        while i < rows.end {
            let r = (rows.end - i).min(3);
            let sums = &mut sums[..r * cols.len()];
            match r {
                3 => kernel.rows_against_panel::<3>(&array::from_fn(|r| &x[(i + r) * k..][..k]), panel, sums),
                2 => kernel.rows_against_panel::<2>(&array::from_fn(|r| &x[(i + r) * k..][..k]), panel, sums),
                _ => kernel.rows_against_panel::<1>(&[&x[i * k..][..k]], panel, sums),
            }
            out.write_rows(i, cols.clone(), sums, accumulate);
            i += r;
        }
    };
    if m * n * k < SERIAL_BELOW_FMAS {
        (0..row_tasks * col_tasks).for_each(task);
    } else {
        (0..row_tasks * col_tasks).into_par_iter().for_each(task);
    }
}

/// `y`'s pointer shared by the tasks; each task writes only its own rectangle.
#[derive(Clone, Copy)]
struct OutRows {
    ptr: *mut f32, // (m, n)
    m: usize,
    n: usize,
}
// SAFETY: tasks write disjoint rectangles of `y` (see `run`), and `y` is mutably borrowed by
// `run` for the whole parallel loop, so it outlives every use and nothing else aliases it.
unsafe impl Send for OutRows {}
// SAFETY: as above; no element is touched by two threads.
unsafe impl Sync for OutRows {}

impl OutRows {
    /// `y[i + r, cols] = sums (r, cols)` (or `+=`) for each row `r` of `sums`.
    fn write_rows(self, i: usize, cols: Range<usize>, sums: &[f32], accumulate: bool) {
        let width = cols.len();
        assert!(width > 0 && sums.len().is_multiple_of(width), "write_rows: sums must be (rows, cols)");
        let rows = sums.len() / width;
        assert!(i + rows <= self.m && cols.end <= self.n, "write_rows: rows outside y");
        for (r, s) in sums.chunks_exact(width).enumerate() {
            // SAFETY: row i + r, columns `cols` lie inside (m, n) (asserted above) of a live
            // buffer, and belong to the calling task's rectangle alone (see `OutRows`), so this
            // is the only reference to them while it lives.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add((i + r) * self.n + cols.start), width) };
            if accumulate {
                dst.iter_mut().zip(s).for_each(|(d, s)| *d += *s);
            } else {
                dst.copy_from_slice(s);
            }
        }
    }
}
