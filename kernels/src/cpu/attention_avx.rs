//! AVX copies of attention's row kernels. Each `#[target_feature(enable = "avx")]` function here
//! inlines the very same row function of `attention` (and its `dot`/`axpy` helpers), so the
//! compiler may use 8-wide registers but the arithmetic is unchanged: Rust never reassociates or
//! fuses float operations, so every lane does the scalar code's multiply and add in its order and
//! the bits match the portable path. `lanes4` is the one hand-written loop (four dot products at
//! once, separate multiply and add). Only code here executes AVX instructions, and only after
//! [`Avx::detect`] has proved the CPU has them.

use super::attention::{dkdv_row_of, dq_row_of, forward_row, Bwd, Fwd};

/// Proof that the running CPU has AVX: only [`Avx::detect`] makes one.
#[derive(Clone, Copy, Debug)]
pub struct Avx(());

impl Avx {
    /// `Some` exactly when the CPU supports AVX (never off x86-64).
    pub fn detect() -> Option<Avx> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") {
            return Some(Avx(()));
        }
        None
    }

    pub fn forward_row(self, x: &Fwd<'_>, row: usize, out_row: &mut [f32], lse_row: &mut [f32]) {
        // SAFETY: `self` exists only if `detect` found AVX on this CPU, which is all the callee needs.
        unsafe { avx::forward_row(x, row, out_row, lse_row) }
    }

    pub fn dq_row(self, x: &Bwd<'_>, row: usize, dq_row: &mut [f32]) {
        // SAFETY: as in `forward_row`.
        unsafe { avx::dq_row(x, row, dq_row) }
    }

    pub fn dkdv_row(self, x: &Bwd<'_>, key: usize, dk_row: &mut [f32], dv_row: &mut [f32]) {
        // SAFETY: as in `forward_row`.
        unsafe { avx::dkdv_row(x, key, dk_row, dv_row) }
    }

    /// The eight lane sums of `a · b[k]` over the whole chunks of 8 (`a.len() - a.len() % 8`
    /// values), for each of the four `b[k]`.
    pub fn lanes4(self, a: &[f32], b: [&[f32]; 4]) -> [[f32; 8]; 4] {
        assert!(b.iter().all(|bk| bk.len() == a.len()), "lanes4: lengths differ");
        // SAFETY: as in `forward_row`; the lengths the callee reads within were just checked.
        unsafe { avx::lanes4(a, b) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::{_mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps};

    use super::{dkdv_row_of, dq_row_of, forward_row as forward_row_of, Bwd, Fwd};

    #[target_feature(enable = "avx")]
    pub fn forward_row(x: &Fwd<'_>, row: usize, out_row: &mut [f32], lse_row: &mut [f32]) {
        forward_row_of(x, row, out_row, lse_row);
    }

    #[target_feature(enable = "avx")]
    pub fn dq_row(x: &Bwd<'_>, row: usize, dq_row: &mut [f32]) {
        dq_row_of(x, row, dq_row);
    }

    #[target_feature(enable = "avx")]
    pub fn dkdv_row(x: &Bwd<'_>, key: usize, dk_row: &mut [f32], dv_row: &mut [f32]) {
        dkdv_row_of(x, key, dk_row, dv_row);
    }

    #[target_feature(enable = "avx")]
    pub fn lanes4(a: &[f32], b: [&[f32]; 4]) -> [[f32; 8]; 4] {
        let body = a.len() - a.len() % 8;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c < body {
            // SAFETY: c + 8 ≤ body ≤ a.len(), so eight floats are readable at a[c].
            let x = unsafe { _mm256_loadu_ps(a.as_ptr().add(c)) };
            for (acc_k, bk) in acc.iter_mut().zip(&b) {
                // SAFETY: every b[k] is as long as `a` (checked by `Avx::lanes4`), so eight floats are readable at c.
                let y = unsafe { _mm256_loadu_ps(bk.as_ptr().add(c)) };
                *acc_k = _mm256_add_ps(*acc_k, _mm256_mul_ps(x, y));
            }
            c += 8;
        }
        let mut out = [[0.0f32; 8]; 4];
        for (o, acc_k) in out.iter_mut().zip(&acc) {
            // SAFETY: `o` is eight writable floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *acc_k) };
        }
        out
    }
}

/// Off x86-64 there is no `Avx` value, so these are never called; they keep the methods above
/// compiling.
#[cfg(not(target_arch = "x86_64"))]
mod avx {
    use super::{dkdv_row_of, dq_row_of, forward_row as forward_row_of, Bwd, Fwd};

    pub unsafe fn forward_row(x: &Fwd<'_>, row: usize, out_row: &mut [f32], lse_row: &mut [f32]) {
        forward_row_of(x, row, out_row, lse_row);
    }

    pub unsafe fn dq_row(x: &Bwd<'_>, row: usize, dq_row: &mut [f32]) {
        dq_row_of(x, row, dq_row);
    }

    pub unsafe fn dkdv_row(x: &Bwd<'_>, key: usize, dk_row: &mut [f32], dv_row: &mut [f32]) {
        dkdv_row_of(x, key, dk_row, dv_row);
    }

    pub unsafe fn lanes4(_a: &[f32], _b: [&[f32]; 4]) -> [[f32; 8]; 4] {
        unreachable!("no Avx value exists off x86-64")
    }
}
