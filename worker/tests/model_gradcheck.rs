//! The dense model against an independent brute-force twin written here in f64 straight from
//! sharding-and-formats.md §1 (embed → [norm → q/k/v (+bias, +LoRA) → q/k norm → RoPE → causal GQA
//! → o + residual → norm → SwiGLU MLP + residual] × L → norm → unembed): logprobs must agree to
//! f32 accuracy, and the f32 backward's LoRA gradients must match f64 central differences of
//! `loss = Σ -w·logprob`.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use kernels::ReferenceBackend;
use model_common::{lora_config, random_lora, tokens, FAMILIES};
use runtime::{LoraConfig, ModelConfig, RopeScaling};
use worker::adapter::LoraWeights;
use worker::model::{Model, PackedBatch};
use worker::rng::Rng;
use worker::tensor::WeightMap;
use worker::tiny::tiny_model;

/// The f64 twin: weights and adapter upcast once.
struct Twin<'a> {
    c: &'a ModelConfig,
    w: &'a WeightMap,
    lora: &'a LoraWeights,
    scale: f64,
}

fn rmsnorm(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let dim = w.len();
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(dim).zip(out.chunks_mut(dim)) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / dim as f64 + eps).sqrt();
        for j in 0..dim {
            o[j] = row[j] * r * w[j] as f64;
        }
    }
    out
}

impl Twin<'_> {
    fn t(&self, name: &str) -> &[f32] {
        &self.w.tensors[name].data
    }

    /// `x (rows, d_in) · Wᵀ (+ b) + scale·(x·Aᵀ)·Bᵀ` for the module at `path`.
    fn linear(&self, x: &[f64], path: &str, weight: &str, d_out: usize) -> Vec<f64> {
        let w = self.t(weight);
        let d_in = w.len() / d_out;
        let bias = self.w.tensors.get(&format!("{path}.bias")).map(|t| &t.data);
        let pair = self.lora.get(path);
        let rows = x.len() / d_in;
        let mut y = vec![0.0; rows * d_out];
        for r in 0..rows {
            let xr = &x[r * d_in..(r + 1) * d_in];
            for o in 0..d_out {
                let mut acc: f64 = (0..d_in).map(|i| xr[i] * w[o * d_in + i] as f64).sum();
                if let Some(b) = bias {
                    acc += b[o] as f64;
                }
                y[r * d_out + o] = acc;
            }
            if let Some(p) = pair {
                let h: Vec<f64> =
                    (0..p.rank).map(|k| (0..d_in).map(|i| xr[i] * p.a[k * d_in + i] as f64).sum::<f64>()).collect();
                for o in 0..d_out {
                    let acc: f64 = (0..p.rank).map(|k| h[k] * p.b[o * p.rank + k] as f64).sum();
                    y[r * d_out + o] += self.scale * acc;
                }
            }
        }
        y
    }

    fn inv_freq(&self) -> Vec<f64> {
        let d = self.c.head_dim;
        let theta = self.c.rope_theta as f64;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / theta.powf((2 * i) as f64 / d as f64);
                match self.c.rope_scaling {
                    None => f,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    }) => {
                        let (factor, lo, hi) = (factor as f64, low_freq_factor as f64, high_freq_factor as f64);
                        let orig = original_max_position_embeddings as f64;
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < orig / hi {
                            f
                        } else if wl > orig / lo {
                            f / factor
                        } else {
                            let s = (orig / wl - lo) / (hi - lo);
                            (1.0 - s) * f / factor + s * f
                        }
                    }
                }
            })
            .collect()
    }

    /// Rotates `x (T, heads, hd)` in place, token `t` at position `t`.
    fn rope(&self, x: &mut [f64], heads: usize) {
        let hd = self.c.head_dim;
        let half = hd / 2;
        let freqs = self.inv_freq();
        for (t, tok) in x.chunks_mut(heads * hd).enumerate() {
            for head in tok.chunks_mut(hd) {
                for j in 0..half {
                    let (c, s) = ((t as f64 * freqs[j]).cos(), (t as f64 * freqs[j]).sin());
                    let (x1, x2) = (head[j], head[j + half]);
                    head[j] = x1 * c - x2 * s;
                    head[j + half] = x2 * c + x1 * s;
                }
            }
        }
    }

    /// Log-softmax rows `(T, V)` of one sequence.
    fn logprobs(&self, ids: &[u32]) -> Vec<f64> {
        let c = self.c;
        let (h, nh, nkv, hd, v) =
            (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size);
        let eps = c.rms_norm_eps as f64;
        let t_len = ids.len();
        let embed = self.t("model.embed_tokens.weight");
        let mut x: Vec<f64> = ids
            .iter()
            .flat_map(|&id| embed[id as usize * h..(id as usize + 1) * h].iter().map(|&e| e as f64))
            .collect();
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let a = rmsnorm(&x, self.t(&format!("{p}.input_layernorm.weight")), eps);
            let proj = |name: &str, d_out| {
                self.linear(&a, &format!("{p}.self_attn.{name}"), &format!("{p}.self_attn.{name}.weight"), d_out)
            };
            let (mut q, mut k, vv) = (proj("q_proj", nh * hd), proj("k_proj", nkv * hd), proj("v_proj", nkv * hd));
            if let Some(qn) = self.w.tensors.get(&format!("{p}.self_attn.q_norm.weight")) {
                q = rmsnorm(&q, &qn.data, eps);
                k = rmsnorm(&k, self.t(&format!("{p}.self_attn.k_norm.weight")), eps);
            }
            self.rope(&mut q, nh);
            self.rope(&mut k, nkv);
            let mut attn = vec![0.0; t_len * nh * hd];
            let scale = 1.0 / (hd as f64).sqrt();
            for i in 0..t_len {
                for head in 0..nh {
                    let kvh = head / (nh / nkv);
                    let qi = &q[(i * nh + head) * hd..(i * nh + head + 1) * hd];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| (0..hd).map(|e| qi[e] * k[(j * nkv + kvh) * hd + e]).sum::<f64>() * scale)
                        .collect();
                    let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = scores.iter().map(|s| (s - mx).exp()).sum();
                    for j in 0..=i {
                        let pj = (scores[j] - mx).exp() / z;
                        for e in 0..hd {
                            attn[(i * nh + head) * hd + e] += pj * vv[(j * nkv + kvh) * hd + e];
                        }
                    }
                }
            }
            let o = self.linear(&attn, &format!("{p}.self_attn.o_proj"), &format!("{p}.self_attn.o_proj.weight"), h);
            x.iter_mut().zip(&o).for_each(|(xi, oi)| *xi += oi);
            let m = rmsnorm(&x, self.t(&format!("{p}.post_attention_layernorm.weight")), eps);
            let i_size = c.intermediate_size;
            let mlp = |name: &str, inp: &[f64], d_out| {
                self.linear(inp, &format!("{p}.mlp.{name}"), &format!("{p}.mlp.{name}.weight"), d_out)
            };
            let (g, u) = (mlp("gate_proj", &m, i_size), mlp("up_proj", &m, i_size));
            let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = mlp("down_proj", &act, h);
            x.iter_mut().zip(&down).for_each(|(xi, di)| *xi += di);
        }
        let hf = rmsnorm(&x, self.t("model.norm.weight"), eps);
        let head = if self.w.contains("lm_head.weight") && !c.tie_word_embeddings {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        let logits = self.linear(&hf, "lm_head", head, v);
        let mut out = vec![0.0; t_len * v];
        for (row, o) in logits.chunks(v).zip(out.chunks_mut(v)) {
            let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + row.iter().map(|z| (z - mx).exp()).sum::<f64>().ln();
            for (oj, zj) in o.iter_mut().zip(row) {
                *oj = zj - lse;
            }
        }
        out
    }

    /// `Σ_s Σ_t -w·logprob[target]` over the sequences.
    fn loss(&self, seqs: &[(Vec<u32>, Vec<u32>, Vec<f32>)]) -> f64 {
        let v = self.c.vocab_size;
        let mut loss = 0.0;
        for (ids, targets, w) in seqs {
            let lp = self.logprobs(ids);
            for t in 0..ids.len() {
                loss -= w[t] as f64 * lp[t * v + targets[t] as usize];
            }
        }
        loss
    }
}

fn sequences(vocab: usize) -> Vec<(Vec<u32>, Vec<u32>, Vec<f32>)> {
    let mut rng = Rng::new(77);
    [(7usize, 1u64), (4, 2)]
        .iter()
        .map(|&(len, s)| {
            (tokens(len, vocab, s), tokens(len, vocab, 50 + s), (0..len).map(|_| rng.normal_f32()).collect())
        })
        .collect()
}

fn check(name: &str, lcfg: &LoraConfig) {
    let (config, weights) = tiny_model(name, 3).unwrap();
    let m = Model::new(config.clone(), weights.clone(), ReferenceBackend).unwrap();
    let lw = random_lora(&config, lcfg, 21, 0.1);
    let seqs = sequences(config.vocab_size);
    let refs: Vec<(&[u32], &[u32])> = seqs.iter().map(|(t, g, _)| (&t[..], &g[..])).collect();
    let batch = PackedBatch::new(&refs, 1).unwrap();
    let fwd = m.forward(&batch, Some((lcfg, &lw))).unwrap();

    // Forward: every logprob within f32 accuracy of the f64 twin.
    let twin = Twin { c: &config, w: &weights, lora: &lw, scale: lcfg.scale() as f64 };
    let v = config.vocab_size;
    let mut worst = 0.0f64;
    for (s, (ids, targets, _)) in seqs.iter().enumerate() {
        let lp = twin.logprobs(ids);
        for (t, &tgt) in targets.iter().enumerate() {
            let got = fwd.logprobs[batch.seq_range(s).start + t] as f64;
            worst = worst.max((got - lp[t * v + tgt as usize]).abs());
        }
    }
    assert!(worst < 2e-5, "{name}: logprobs differ from the f64 twin by {worst}");

    // Backward: LoRA gradients against central differences of the f64 loss.
    let dlp: Vec<f32> = seqs.iter().flat_map(|(_, _, w)| w.iter().map(|x| -x)).collect();
    let mut grads = lw.zeros_like();
    m.backward(&fwd, &batch, &dlp, (lcfg, &lw), &mut grads).unwrap();
    let mut rng = Rng::new(8);
    let mut checked = 0;
    for (path, g) in &grads.sites {
        for which in ["A", "B"] {
            for _ in 0..2 {
                let len = if which == "A" { g.a.len() } else { g.b.len() };
                let idx = (rng.next_u64() % len as u64) as usize;
                let analytic = if which == "A" { g.a[idx] } else { g.b[idx] } as f64;
                let eval = |delta: f32| {
                    let mut lp = lw.clone();
                    let pair = lp.get_mut(path).unwrap();
                    let x = if which == "A" { &mut pair.a[idx] } else { &mut pair.b[idx] };
                    *x += delta;
                    let moved = *x - (*x - delta); // the step actually taken in f32
                    (Twin { c: &config, w: &weights, lora: &lp, scale: lcfg.scale() as f64 }.loss(&seqs), moved as f64)
                };
                let eps = 1e-3f32;
                let ((up, du), (down, dd)) = (eval(eps), eval(-eps));
                let numeric = (up - down) / (du - dd);
                let err = (numeric - analytic).abs();
                assert!(
                    err <= 1e-3 * numeric.abs().max(analytic.abs()) + 2e-5,
                    "{name}: d loss / d {path}.{which}[{idx}]: backward {analytic}, finite difference {numeric}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, grads.sites.len() * 4);
}

#[test]
fn every_family_matches_the_f64_twin_in_logprobs_and_lora_gradients() {
    for name in FAMILIES {
        check(name, &lora_config());
    }
}

#[test]
fn attention_only_and_mlp_only_adapters_match_the_twin_on_their_sites() {
    let attn = LoraConfig::new(2, 4.0, 0, true, false, false).unwrap();
    let mlp = LoraConfig::new(3, 32.0, 0, false, true, false).unwrap();
    check("tiny/llama3", &attn);
    check("tiny/qwen3", &mlp);
}
