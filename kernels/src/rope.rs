//! RoPE frequency tables, including Llama-3 `rope_scaling`, computed as transformers does in f32:
//! `inv_freq[i] = 1 / θ^((2i)/head_dim)` with the power in f32, the Llama-3 three-branch rescale
//! in f32, then `cos`/`sin` of `position · inv_freq` in f32. It owns the tables only; the rotation
//! itself is [`crate::RopeOps`].

/// Llama-3 frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: u32,
}

/// `cos`/`sin` tables `(positions_max, head_dim / 2)` for [`crate::RopeOps`].
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub head_dim: usize,
    pub positions_max: usize,
    pub cos: Vec<f32>, // (positions_max, head_dim / 2)
    pub sin: Vec<f32>, // (positions_max, head_dim / 2)
}

/// The `head_dim / 2` inverse frequencies, Llama-3-rescaled when `scaling` is given.
///
/// Panics when `head_dim` is odd or zero, `theta ≤ 0`, or the scaling's factors are degenerate
/// (`factor ≤ 0` or `high_freq_factor ≤ low_freq_factor`): a config the loader must reject first.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: Option<Llama3Scaling>) -> Vec<f32> {
    assert!(head_dim > 0 && head_dim.is_multiple_of(2), "inv_freq: head_dim {head_dim} must be even and positive");
    assert!(theta > 0.0, "inv_freq: rope theta {theta} must be positive");
    let base: Vec<f32> = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect(); // (head_dim / 2)
    let Some(s) = scaling else {
        return base;
    };
    assert!(s.factor > 0.0, "inv_freq: llama3 factor {} must be positive", s.factor);
    assert!(s.high_freq_factor > s.low_freq_factor, "inv_freq: llama3 high_freq_factor must exceed low_freq_factor");
    let orig = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = orig / s.low_freq_factor;
    let high_freq_wavelen = orig / s.high_freq_factor;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let scaled: Vec<f32> = base
        .iter()
        .map(|&f| {
            let wavelen = two_pi / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / s.factor
            } else {
                let smooth = (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect();
    assert_eq!(scaled.len(), head_dim / 2, "inv_freq: one frequency per rotated pair");
    scaled
}

impl RopeTable {
    /// Tables for positions `0..positions_max`: `cos[p, i] = cos(p as f32 · inv_freq[i])`, likewise sin.
    pub fn new(head_dim: usize, theta: f32, scaling: Option<Llama3Scaling>, positions_max: usize) -> RopeTable {
        let freqs = inv_freq(head_dim, theta, scaling); // (head_dim / 2)
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(positions_max * half);
        let mut sin = Vec::with_capacity(positions_max * half);
        for p in 0..positions_max {
            for &f in &freqs {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        assert_eq!(cos.len(), positions_max * half, "RopeTable: cos must be (positions_max, head_dim / 2)");
        RopeTable { head_dim, positions_max, cos, sin }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3_TINY: Llama3Scaling = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };

    #[test]
    fn unscaled_frequencies_follow_theta_to_the_minus_two_i_over_d() {
        let f = inv_freq(8, 10000.0, None);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[1], 1.0 / 10000.0f32.powf(0.25));
        assert!((f[3] as f64 - 10000f64.powf(-0.75)).abs() < 1e-9);
    }

    #[test]
    fn llama3_scaling_keeps_high_scales_low_and_smooths_the_middle() {
        // head_dim 16, θ = 5e5, orig 64: wavelengths span all three branches (design note §1.4).
        let base = inv_freq(16, 5e5, None);
        let scaled = inv_freq(16, 5e5, Some(LLAMA3_TINY));
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        let (mut kept, mut scaled_down, mut smoothed) = (0, 0, 0);
        for (&f, &g) in base.iter().zip(&scaled) {
            let wavelen = two_pi / f;
            if wavelen < 16.0 {
                assert_eq!(g, f);
                kept += 1;
            } else if wavelen > 64.0 {
                assert_eq!(g, f / 8.0);
                scaled_down += 1;
            } else {
                assert!(g < f && g > f / 8.0, "a smoothed frequency lies between f/factor and f");
                smoothed += 1;
            }
        }
        assert!(kept > 0 && scaled_down > 0 && smoothed > 0, "{kept} {scaled_down} {smoothed}");
    }

    #[test]
    fn table_rows_are_cos_and_sin_of_position_times_frequency() {
        let t = RopeTable::new(4, 100.0, None, 3);
        let f = inv_freq(4, 100.0, None);
        assert_eq!((t.cos.len(), t.sin.len()), (6, 6));
        assert_eq!(&t.cos[0..2], &[1.0, 1.0]);
        assert_eq!(t.cos[2 * 2 + 1], (2.0f32 * f[1]).cos());
        assert_eq!(t.sin[2 * 2 + 1], (2.0f32 * f[1]).sin());
    }
}
