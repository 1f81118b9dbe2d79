//! Row-invariant dense products on top of the `gemm` crate. gemm picks its kernel, blocking and
//! k-chunking from the problem size (m, n, k), so calling it on "all m rows" would make a row's
//! bits depend on how many rows share the call. Here every call has the same shape: rows come in
//! tiles of exactly [`TILE_ROWS`] (the last tile zero-padded through a scratch copy with the same
//! strides) and columns in fixed chunks of [`CHUNK_COLS`] at fixed offsets, with k always whole.
//! A row's result therefore depends only on that row, `cols` and `inner`, never on `m` or the
//! row's position. This file owns the only `unsafe` gemm calls of the CPU backend.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Rows per gemm call. Fixed: changing it changes results (not their invariance).
pub const TILE_ROWS: usize = 64;
/// Output columns per gemm call (the last chunk of a row may be narrower, at a fixed offset).
pub const CHUNK_COLS: usize = 256;

/// A raw pointer that may cross rayon threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the pointer is only dereferenced (by gemm) on disjoint (tile, chunk) rectangles, see
// `row_tiled_gemm`; the buffer outlives the parallel loop because the loop borrows it.
unsafe impl Send for SharedMut {}
// SAFETY: as above; no two threads touch the same element.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer. A method (not `.0`) so closures capture the whole `Send` wrapper.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// The right operand `R (inner, cols)`, read at `data[p·row_stride + c·col_stride]`.
#[derive(Clone, Copy)]
pub struct Rhs<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `dst (m, cols) = lhs (m, inner) · R`, or `+=` when `accumulate`, row-invariant (module doc).
/// Parallel over (row tile, column chunk) pairs; each gemm call runs single-threaded.
pub fn row_tiled_gemm(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: Rhs<'_>,
    m: usize,
    inner: usize,
    cols: usize,
    accumulate: bool,
) {
    assert_eq!(dst.len(), m * cols, "row_tiled_gemm: dst must be (m, cols)");
    assert_eq!(lhs.len(), m * inner, "row_tiled_gemm: lhs must be (m, inner)");
    if m == 0 || cols == 0 {
        return;
    }
    if inner > 0 {
        let last = (inner - 1) * rhs.row_stride + (cols - 1) * rhs.col_stride;
        assert!(last < rhs.data.len(), "row_tiled_gemm: rhs is too short for (inner, cols) with its strides");
    }
    let full_tiles = m / TILE_ROWS;
    let tail_rows = m - full_tiles * TILE_ROWS;
    // The zero-padded last tile: lhs rows (TILE_ROWS, inner) and dst rows (TILE_ROWS, cols),
    // the same strides as the real buffers so gemm sees an identical problem.
    let mut lhs_tail = vec![0.0f32; if tail_rows > 0 { TILE_ROWS * inner } else { 0 }];
    let mut dst_tail = vec![0.0f32; if tail_rows > 0 { TILE_ROWS * cols } else { 0 }];
    if tail_rows > 0 {
        let at = full_tiles * TILE_ROWS;
        lhs_tail[..tail_rows * inner].copy_from_slice(&lhs[at * inner..]);
        if accumulate {
            dst_tail[..tail_rows * cols].copy_from_slice(&dst[at * cols..]);
        }
    }
    let tiles = full_tiles + usize::from(tail_rows > 0);
    let chunks = cols.div_ceil(CHUNK_COLS);
    let (dst_main, dst_pad) = (SharedMut(dst.as_mut_ptr()), SharedMut(dst_tail.as_mut_ptr()));
    let lhs_tail_ref = &lhs_tail;
    (0..tiles * chunks).into_par_iter().for_each(|item| {
        let (tile, chunk) = (item / chunks, item % chunks);
        let col0 = chunk * CHUNK_COLS;
        let width = CHUNK_COLS.min(cols - col0);
        let (dst_base, lhs_tile) = if tile < full_tiles {
            (
                dst_main.ptr().wrapping_add(tile * TILE_ROWS * cols),
                &lhs[tile * TILE_ROWS * inner..][..TILE_ROWS * inner],
            )
        } else {
            (dst_pad.ptr(), &lhs_tail_ref[..])
        };
        // SAFETY: dst_base points at a (TILE_ROWS, cols) block of a live buffer (a full tile of
        // `dst` or `dst_tail`); this item writes only its columns col0..col0 + width, disjoint
        // from every other item. lhs_tile is (TILE_ROWS, inner) by construction and rhs was
        // bounds-checked above for (inner, cols). The rhs and lhs are only read.
        unsafe {
            gemm(
                TILE_ROWS,
                width,
                inner,
                dst_base.wrapping_add(col0),
                1,
                cols as isize,
                accumulate,
                lhs_tile.as_ptr(),
                1,
                inner as isize,
                rhs.data.as_ptr().wrapping_add(col0 * rhs.col_stride),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
    if tail_rows > 0 {
        dst[full_tiles * TILE_ROWS * cols..].copy_from_slice(&dst_tail[..tail_rows * cols]);
    }
}

/// `out (n, k) = dy (ms, n)ᵀ · x (ms, k)`, overwritten: one segment's weight gradient. Parallel
/// over fixed (CHUNK_COLS × CHUNK_COLS) rectangles of `out`, each reducing over all `ms` rows in
/// one single-threaded gemm call, so the result is a function of this segment alone.
pub fn gemm_tn(out: &mut [f32], dy: &[f32], x: &[f32], ms: usize, n: usize, k: usize) {
    assert_eq!(out.len(), n * k, "gemm_tn: out must be (n, k)");
    assert_eq!(dy.len(), ms * n, "gemm_tn: dy must be (ms, n)");
    assert_eq!(x.len(), ms * k, "gemm_tn: x must be (ms, k)");
    if n == 0 || k == 0 {
        return;
    }
    let (row_chunks, col_chunks) = (n.div_ceil(CHUNK_COLS), k.div_ceil(CHUNK_COLS));
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..row_chunks * col_chunks).into_par_iter().for_each(|item| {
        let (o0, c0) = ((item / col_chunks) * CHUNK_COLS, (item % col_chunks) * CHUNK_COLS);
        let (rows, width) = (CHUNK_COLS.min(n - o0), CHUNK_COLS.min(k - c0));
        // SAFETY: out is (n, k) and this item writes only rows o0..o0 + rows, columns
        // c0..c0 + width, disjoint from every other item. dy is read as dyᵀ (n, ms) from column
        // o0 (stride n between its rows ms), x as (ms, k) from column c0; both lengths were
        // asserted above, and with ms = 0 gemm reads nothing and writes zeros.
        unsafe {
            gemm(
                rows,
                width,
                ms,
                out_ptr.ptr().wrapping_add(o0 * k + c0),
                1,
                k as isize,
                false,
                dy.as_ptr().wrapping_add(o0),
                n as isize,
                1,
                x.as_ptr().wrapping_add(c0),
                1,
                k as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_tile_row_equals_the_same_row_in_a_full_tile() {
        // Row 0 of a 1-row call (tail tile) vs row 0 of a 2·TILE_ROWS-row call (full tile).
        let (inner, cols) = (37, 300);
        let lhs: Vec<f32> = (0..2 * TILE_ROWS * inner).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5).collect();
        let w: Vec<f32> = (0..cols * inner).map(|i| ((i * 104_729) % 1000) as f32 / 991.0 - 0.5).collect();
        let rhs = Rhs { data: &w, row_stride: 1, col_stride: inner };
        let mut one = vec![0.0f32; cols];
        row_tiled_gemm(&mut one, &lhs[..inner], rhs, 1, inner, cols, false);
        let mut many = vec![0.0f32; 2 * TILE_ROWS * cols];
        row_tiled_gemm(&mut many, &lhs, rhs, 2 * TILE_ROWS, inner, cols, false);
        assert!(one.iter().zip(&many[..cols]).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(one.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn gemm_tn_matches_a_naive_transposed_product() {
        let (ms, n, k) = (5, 300, 270);
        let dy: Vec<f32> = (0..ms * n).map(|i| ((i * 31) % 17) as f32 - 8.0).collect();
        let x: Vec<f32> = (0..ms * k).map(|i| ((i * 13) % 11) as f32 - 5.0).collect();
        let mut out = vec![f32::NAN; n * k];
        gemm_tn(&mut out, &dy, &x, ms, n, k);
        for o in 0..n {
            for c in 0..k {
                let want: f32 = (0..ms).map(|i| dy[i * n + o] * x[i * k + c]).sum();
                assert_eq!(out[o * k + c], want, "({o}, {c})"); // small integers: exact
            }
        }
    }
}
