//! LoRA initialisation as PEFT does it: `A` from `nn.init.kaiming_uniform_(a=√5)`, which for an
//! `(rank, d_in)` weight is `U(-1/√d_in, 1/√d_in)`, and `B` zero, so a fresh adapter leaves the
//! base model's output unchanged. Each site draws from its own `Rng::derive(seed, path)` stream:
//! the values of one site never depend on which other sites exist.
//!
//! The values are lathe's own (PEFT's come from torch's generator); only the distribution matches.

use runtime::LoraConfig;

use crate::adapter::{LoraPair, LoraSite, LoraWeights};
use crate::rng::Rng;

/// A fresh adapter for `sites` at `lora.rank`, seeded by `lora.seed`.
pub fn init_lora(sites: &[LoraSite], lora: &LoraConfig) -> LoraWeights {
    assert!(lora.rank >= 1, "LoraConfig::new guarantees rank ≥ 1");
    let mut weights = LoraWeights::default();
    for site in sites {
        assert!(site.d_in >= 1 && site.d_out >= 1, "site `{}` has an empty dimension", site.path);
        let mut pair = LoraPair::zeros(site.d_in, site.d_out, lora.rank);
        // kaiming_uniform_(a=√5): gain = √(2 / (1 + a²)) = √(1/3), bound = gain·√(3 / fan_in) = 1/√fan_in.
        let bound = 1.0 / (site.d_in as f32).sqrt();
        let mut rng = Rng::derive(lora.seed, &site.path);
        for value in pair.a.iter_mut() {
            *value = rng.uniform_f32(-bound, bound); // (rank, d_in), row-major draw order
        }
        let previous = weights.sites.insert(site.path.clone(), pair);
        assert!(previous.is_none(), "site `{}` listed twice", site.path);
    }
    assert_eq!(weights.sites.len(), sites.len());
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(path: &str, d_in: usize, d_out: usize) -> LoraSite {
        LoraSite { path: path.into(), d_in, d_out }
    }

    fn config(seed: u64) -> LoraConfig {
        LoraConfig::new(4, 32.0, seed, true, true, false).unwrap()
    }

    #[test]
    fn a_is_uniform_within_one_over_root_fan_in_and_b_is_zero() {
        let w = init_lora(&[site("model.layers.0.mlp.down_proj", 400, 16)], &config(3));
        let pair = &w.sites["model.layers.0.mlp.down_proj"];
        assert_eq!((pair.a.len(), pair.b.len()), (4 * 400, 16 * 4));
        let bound = 1.0 / 20.0;
        assert!(pair.a.iter().all(|x| (-bound..bound).contains(x)));
        assert!(pair.b.iter().all(|&x| x == 0.0));
        // U(-b, b) has mean 0 and variance b²/3; 1600 draws pin both within a few standard errors.
        let n = pair.a.len() as f64;
        let mean = pair.a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = pair.a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n;
        let b = f64::from(bound);
        assert!(mean.abs() < 4.0 * b / (3.0 * n).sqrt(), "mean {mean}");
        assert!((var / (b * b / 3.0) - 1.0).abs() < 0.1, "variance {var}");
    }

    #[test]
    fn the_same_seed_gives_the_same_adapter_and_sites_do_not_shift_each_other() {
        let q = site("model.layers.0.self_attn.q_proj", 8, 8);
        let k = site("model.layers.0.self_attn.k_proj", 8, 4);
        let both = init_lora(&[q.clone(), k.clone()], &config(7));
        assert_eq!(both, init_lora(&[q.clone(), k.clone()], &config(7)));
        assert_eq!(both.sites[&q.path], init_lora(std::slice::from_ref(&q), &config(7)).sites[&q.path]);
        assert_ne!(both.sites[&q.path].a, both.sites[&k.path].a);
        assert_ne!(both, init_lora(&[q, k], &config(8)));
    }
}
