//! Qwen3-MoE (`tiny/qwen3-moe`: layers 0 and 2 sparse, layer 1 dense): every LoRA gradient,
//! expert sites and the attention sites whose input gradient crosses the routers included,
//! against central finite differences of the model's own loss summed in f64; routing load
//! metrics; and the expert-site geometry of the shared-outer layout.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use kernels::ReferenceBackend;
use model_common::{lora_config, model, random_lora, tokens};
use runtime::LoraConfig;
use worker::adapter::{lora_sites, LoraWeights};
use worker::model::{Model, PackedBatch};
use worker::rng::Rng;

const MOE: &str = "tiny/qwen3-moe";

/// Two sequences with per-token loss weights.
fn batch_and_weights(vocab: usize) -> (PackedBatch, Vec<f32>) {
    let (a, b) = (tokens(7, vocab, 1), tokens(5, vocab, 2));
    let (ta, tb) = (tokens(7, vocab, 3), tokens(5, vocab, 4));
    let batch = PackedBatch::new(&[(&a, &ta), (&b, &tb)], 1).unwrap();
    let mut rng = Rng::new(9);
    let w = (0..batch.num_tokens()).map(|_| rng.normal_f32()).collect();
    (batch, w)
}

/// `Σ_t w_t · logprob_t`, summed in f64.
fn loss(m: &Model<ReferenceBackend>, batch: &PackedBatch, lcfg: &LoraConfig, lw: &LoraWeights, w: &[f32]) -> f64 {
    let fwd = m.forward(batch, Some((lcfg, lw))).unwrap();
    fwd.logprobs.iter().zip(w).map(|(&lp, &wt)| f64::from(lp) * f64::from(wt)).sum()
}

#[test]
fn every_lora_gradient_matches_finite_differences_of_the_loss() {
    let m = model(MOE, ReferenceBackend);
    let lcfg = lora_config();
    let lw = random_lora(m.config(), &lcfg, 11, 0.1);
    let (batch, w) = batch_and_weights(m.config().vocab_size);
    let fwd = m.forward(&batch, Some((&lcfg, &lw))).unwrap();
    let mut grads = lw.zeros_like();
    m.backward(&fwd, &batch, &w, (&lcfg, &lw), &mut grads).unwrap();

    // A unit step along the site's own gradient plus a random unit direction: the derivative is
    // large against the f32 forward's rounding, and the random half catches a misdirected gradient.
    // The step is sized for a first-order loss change of about 0.01: large against rounding, small
    // enough that no token's top-k choice flips (a flip is a jump the gradient does not see).
    let mut checked = 0;
    for (path, g) in &grads.sites {
        let mut rng = Rng::derive(17, path);
        let gv: Vec<f32> = g.a.iter().chain(&g.b).copied().collect();
        let rv: Vec<f32> = gv.iter().map(|_| rng.normal_f32()).collect();
        let norm = |x: &[f32]| x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32;
        let (gn, rn) = (norm(&gv), norm(&rv));
        let v: Vec<f32> = gv.iter().zip(&rv).map(|(&x, &r)| x / gn + r / rn).collect();
        let (va, vb) = v.split_at(g.a.len());
        let analytic: f64 = g.a.iter().zip(va).chain(g.b.iter().zip(vb)).map(|(&x, &y)| f64::from(x * y)).sum();
        let eps = (0.01 / analytic.abs()).min(0.03) as f32;
        let shifted = |sign: f32| {
            let mut p = lw.clone();
            let pair = p.get_mut(path).unwrap();
            pair.a.iter_mut().zip(va).for_each(|(x, v)| *x += sign * eps * v);
            pair.b.iter_mut().zip(vb).for_each(|(x, v)| *x += sign * eps * v);
            loss(&m, &batch, &lcfg, &p, &w)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * f64::from(eps));
        let err = (numeric - analytic).abs();
        assert!(err <= 2e-3 * analytic.abs(), "{path}: analytic {analytic} vs finite difference {numeric}");
        assert!(analytic.abs() > 1e-3, "{path}: the gradient is (near) zero, so the check says nothing");
        checked += 1;
    }
    assert_eq!(checked, 3 * 7 + 1, "every projection of every layer plus lm_head");
}

#[test]
fn sparse_layers_report_expert_fractions_and_the_dense_layer_none() {
    let m = model(MOE, ReferenceBackend);
    let (batch, _) = batch_and_weights(m.config().vocab_size);
    let fwd = m.forward(&batch, None).unwrap();
    let fr = fwd.moe_expert_fractions();
    assert_eq!(fr.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![0, 2]);
    for (l, f) in &fr {
        assert_eq!(f.len(), 4, "layer {l}: one fraction per expert");
        assert!((f.iter().sum::<f32>() - 1.0).abs() < 1e-6, "layer {l}: fractions {f:?} do not sum to 1");
        // Top-2 of 4: no expert can take more than half of the assignments (one per token).
        assert!(f.iter().all(|&x| (0.0..=0.5).contains(&x)), "layer {l}: {f:?}");
    }
}

#[test]
fn expert_sites_use_the_shared_outer_layout_and_the_router_is_never_adapted() {
    let m = model(MOE, ReferenceBackend);
    let sites = lora_sites(m.config(), &lora_config());
    let site = |p: &str| sites.iter().find(|s| s.path == p).unwrap();
    // E = 4 experts of I_moe = 32: the stacked side is 128 wide.
    assert_eq!(
        (site("model.layers.0.mlp.experts.gate_proj").d_in, site("model.layers.0.mlp.experts.gate_proj").d_out),
        (64, 128)
    );
    assert_eq!(
        (site("model.layers.2.mlp.experts.down_proj").d_in, site("model.layers.2.mlp.experts.down_proj").d_out),
        (128, 64)
    );
    assert_eq!((site("model.layers.1.mlp.up_proj").d_in, site("model.layers.1.mlp.up_proj").d_out), (64, 96));
    assert!(sites.iter().all(|s| !s.path.ends_with("mlp.gate")), "the router is frozen");
}

#[test]
fn a_zero_adapter_leaves_the_moe_logits_unchanged() {
    let m = model(MOE, ReferenceBackend);
    let lcfg = lora_config();
    let zero = random_lora(m.config(), &lcfg, 1, 0.0);
    let (batch, _) = batch_and_weights(m.config().vocab_size);
    let base = m.forward(&batch, None).unwrap();
    let with = m.forward(&batch, Some((&lcfg, &zero))).unwrap();
    assert_eq!(base.logits, with.logits);
    let other = m.forward(&batch, Some((&lcfg, &random_lora(m.config(), &lcfg, 1, 0.1)))).unwrap();
    assert_ne!(base.logits, other.logits, "a nonzero adapter changes the logits");
}
