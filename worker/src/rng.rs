//! A small seeded random number generator (SplitMix64 seeding xoshiro256**), so that every random
//! draw in lathe (LoRA init, tiny models, sampling) is a pure function of a seed the caller passes.
//! No ambient randomness exists in this crate.

/// xoshiro256** — fast, 256-bit state, good statistical quality; not cryptographic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// Seeds the state with SplitMix64 (the seeding xoshiro's authors recommend), so that nearby
    /// seeds give unrelated streams.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let state = [next(), next(), next(), next()];
        Rng { state }
    }

    /// A stream derived from this seed and a label, e.g. one per LoRA site, so that adding a site
    /// does not shift every other site's values.
    pub fn derive(seed: u64, label: &str) -> Self {
        // FNV-1a over the label, mixed into the seed.
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for b in label.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        Rng::new(seed ^ h.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform_f32(&mut self, lo: f32, hi: f32) -> f32 {
        assert!(lo < hi, "empty interval [{lo}, {hi})");
        let x = lo as f64 + (hi as f64 - lo as f64) * self.next_f64();
        // Rounding to f32 can land on `hi`; step back inside the interval.
        let x = x as f32;
        if x >= hi {
            lo.max(hi - (hi - lo) * f32::EPSILON)
        } else {
            x
        }
    }

    /// Standard normal (Box–Muller; one of the pair is discarded for simplicity).
    pub fn normal_f32(&mut self) -> f32 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]: ln is finite
        let u2 = self.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_stream_and_different_seeds_differ() {
        let a: Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let c: Vec<u64> = (0..4).scan(Rng::new(8), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(Rng::derive(7, "x").next_u64(), Rng::derive(7, "y").next_u64());
    }

    #[test]
    fn uniform_stays_in_range_and_normal_has_unit_scale() {
        let mut r = Rng::new(1);
        let mut sum_sq = 0.0f64;
        for _ in 0..20_000 {
            let u = r.uniform_f32(-0.5, 0.5);
            assert!((-0.5..0.5).contains(&u));
            let n = r.normal_f32() as f64;
            sum_sq += n * n;
        }
        let var = sum_sq / 20_000.0;
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
