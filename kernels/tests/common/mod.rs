//! Test support shared by the gradcheck and conformance suites: a small seeded RNG (no `rand`
//! dependency, no ambient randomness) and the f64 central-difference gradient checker. Each test
//! binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

/// SplitMix64: a tiny, well-mixed, seeded generator. Tests pass one in explicitly.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)`, 53 bits of mantissa.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// `n` values uniform in `[-scale, scale)`, in f64.
    pub fn vec_f64(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }

    /// `n` values uniform in `[-scale, scale)`, rounded to f32.
    pub fn vec_f32(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.uniform() * scale) as f32).collect()
    }

    /// `n` ids uniform in `0..below`.
    pub fn ids(&mut self, n: usize, below: u32) -> Vec<u32> {
        (0..n).map(|_| (self.next_u64() % u64::from(below)) as u32).collect()
    }
}

/// Finite-difference step: central differences have O(h²) truncation and O(ε/h) rounding error,
/// both far below 1e-6 relative at h = 1e-5 in f64 for inputs of order 1.
pub const STEP: f64 = 1e-5;
/// The gradcheck acceptance bound on relative error.
pub const REL_TOL: f64 = 1e-6;
/// Below this magnitude a gradient entry is compared absolutely (relative error of a value that
/// should be ~0 is meaningless); `REL_TOL · FLOOR` is then the absolute bound.
pub const FLOOR: f64 = 1e-3;

/// The largest relative error between `analytic` and the central difference of `loss` with
/// respect to each entry of `input` (restored afterwards).
pub fn max_rel_error(analytic: &[f64], input: &mut [f64], mut loss: impl FnMut(&[f64]) -> f64) -> f64 {
    assert_eq!(analytic.len(), input.len(), "one analytic gradient entry per input entry");
    let mut worst = 0.0f64;
    for i in 0..input.len() {
        let saved = input[i];
        input[i] = saved + STEP;
        let up = loss(input);
        input[i] = saved - STEP;
        let down = loss(input);
        input[i] = saved;
        let numeric = (up - down) / (2.0 * STEP);
        let err = (analytic[i] - numeric).abs() / analytic[i].abs().max(numeric.abs()).max(FLOOR);
        worst = worst.max(err);
    }
    worst
}

/// Asserts `analytic` matches finite differences of `loss` in `input`, and is not all zero (a
/// check against a gradient that vanished would prove nothing).
pub fn assert_gradient(what: &str, analytic: &[f64], input: &mut [f64], loss: impl FnMut(&[f64]) -> f64) {
    let norm = analytic.iter().map(|g| g * g).sum::<f64>().sqrt();
    assert!(norm > 1e-3, "{what}: analytic gradient is (nearly) zero, norm {norm:e}; the check would be vacuous");
    let err = max_rel_error(analytic, input, loss);
    assert!(err <= REL_TOL, "{what}: max relative error {err:e} exceeds {REL_TOL:e}");
}

/// `Σ c_i · y_i`: the scalar loss whose gradient with respect to `y` is `c`.
pub fn dot(c: &[f64], y: &[f64]) -> f64 {
    assert_eq!(c.len(), y.len(), "dot: lengths differ");
    c.iter().zip(y).map(|(a, b)| a * b).sum()
}
