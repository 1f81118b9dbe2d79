//! `Real`: the small float trait the reference kernels are generic over, so the very same naive
//! code runs in f32 (the `ReferenceBackend`) and in f64 (the finite-difference gradchecks).
//! It owns only the handful of operations those kernels use; it must never grow into a numeric
//! tower.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A float the reference kernels can compute in: implemented for `f32` and `f64` only.
pub trait Real:
    Copy
    + Debug
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Widens or keeps an f32 (exact for both implementors).
    fn from_f32(x: f32) -> Self;
    /// Rounds an f64 to this type (exact for f64).
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    /// The larger of two values; `self` when they compare equal.
    fn max(self, other: Self) -> Self {
        if other > self {
            other
        } else {
            self
        }
    }
    /// A count converted to this type (row lengths, dimensions).
    fn from_usize(n: usize) -> Self {
        Self::from_f64(n as f64)
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f32(x: f32) -> Self {
        f64::from(x)
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

#[cfg(test)]
mod tests {
    use super::Real;

    #[test]
    fn max_prefers_the_larger_value_and_keeps_self_on_ties() {
        assert_eq!(Real::max(1.0f32, 2.0), 2.0);
        assert_eq!(Real::max(3.0f64, -2.0), 3.0);
        assert_eq!(Real::max(0.0f32, -0.0).to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn conversions_round_trip_through_f64_for_f32_values() {
        let x = 0.1f32;
        assert_eq!(f32::from_f64(x.to_f64()), x);
        assert_eq!(f64::from_f32(x), f64::from(x));
        assert_eq!(f32::from_usize(7), 7.0);
    }
}
