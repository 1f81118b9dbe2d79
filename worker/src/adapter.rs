//! LoRA adapter state: which modules carry an adapter ("sites"), and the per-site A/B pairs used
//! for parameters, gradients and both Adam moments alike.
//!
//! A site is named by its HF module path (`model.layers.3.self_attn.q_proj`, `lm_head`); its PEFT
//! key is `base_model.model.<path>.lora_{A,B}.weight`. `A` is `(rank, d_in)`, `B` is `(d_out, rank)`,
//! the layer computes `y = x·Wᵀ + (alpha/rank)·(x·Aᵀ)·Bᵀ`.
//!
//! Qwen3-MoE experts use the shared-outer layout: one site per projection and layer
//! (`model.layers.N.mlp.experts.gate_proj`), its hidden-side factor shared by all `E` experts and
//! the other stacked per expert, expert-major. For gate/up, `A (rank, H)` is shared and
//! `B (E·I_moe, rank)` stacks `B_e (I_moe, rank)`; for down, `A (E·rank·I_moe)` stacks
//! `A_e (rank, I_moe)` and `B (H, rank)` is shared. The site's `d_in`/`d_out` count the stacked
//! side as `E·I_moe`, so `|A| = rank·d_in` and `|B| = d_out·rank` hold for every site alike.

use std::collections::BTreeMap;

use runtime::{LoraConfig, ModelConfig};

use crate::tensor::{HostTensor, WeightMap};

/// One adapted module's geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoraSite {
    /// HF module path, e.g. `model.layers.0.mlp.down_proj`.
    pub path: String,
    pub d_in: usize,
    pub d_out: usize,
}

/// The projections of one decoder layer that LoRA may adapt, in forward order.
pub const ATTN_PROJ: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];
pub const MLP_PROJ: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Every site a model adapts under `lora`, in a canonical order: layer by layer, attention then
/// MLP, then `lm_head`. A Qwen3-MoE layer's MLP sites are its expert sites (see the module doc);
/// the router (`mlp.gate`) is never adapted.
pub fn lora_sites(config: &ModelConfig, lora: &LoraConfig) -> Vec<LoraSite> {
    let h = config.hidden_size;
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    let mut sites = Vec::new();
    for layer in 0..config.num_hidden_layers {
        if lora.train_attn {
            for (name, d_in, d_out) in [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h)] {
                sites.push(LoraSite { path: format!("model.layers.{layer}.self_attn.{name}"), d_in, d_out });
            }
        }
        if lora.train_mlp {
            let (module, i) = mlp_module(config, layer);
            for (name, d_in, d_out) in [("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)] {
                sites.push(LoraSite { path: format!("model.layers.{layer}.{module}.{name}"), d_in, d_out });
            }
        }
    }
    if lora.train_unembed {
        sites.push(LoraSite { path: "lm_head".into(), d_in: h, d_out: config.vocab_size });
    }
    sites
}

/// The module holding layer `layer`'s MLP projections and their (stacked) intermediate width:
/// `("mlp.experts", E·I_moe)` for a Qwen3-MoE sparse layer, `("mlp", I)` otherwise.
pub fn mlp_module(config: &ModelConfig, layer: usize) -> (&'static str, usize) {
    match &config.moe {
        Some(moe) if moe.is_moe_layer(layer) => ("mlp.experts", moe.num_experts * moe.moe_intermediate_size),
        _ => ("mlp", config.intermediate_size),
    }
}

/// The PEFT safetensors keys of a site: `(lora_A key, lora_B key)`.
pub fn peft_keys(path: &str) -> (String, String) {
    (format!("base_model.model.{path}.lora_A.weight"), format!("base_model.model.{path}.lora_B.weight"))
}

/// Which factor of a site a stored tensor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    A,
    B,
}

/// One stored tensor of a site: its safetensors key and shape, and the values of the site's factor
/// it holds (`factor[range]`, row-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteTensor {
    pub key: String,
    pub shape: [usize; 2],
    pub factor: Factor,
    pub range: std::ops::Range<usize>,
}

/// The tensors lathe stores for `site` at `rank`: the two PEFT keys of [`peft_keys`] for an ordinary
/// site; for a MoE expert site (`…mlp.experts.{gate,up,down}_proj`) the shared factor under the
/// site's own key (no expert index) and each expert's factor under `…mlp.experts.E.<proj>…`.
pub fn site_tensors(config: &ModelConfig, site: &LoraSite, rank: usize) -> Vec<SiteTensor> {
    let (ka, kb) = peft_keys(&site.path);
    let experts = config.moe.as_ref().map_or(0, |m| m.num_experts);
    let expert_site = site.path.rsplit_once('.').filter(|(module, _)| module.ends_with(".mlp.experts"));
    let Some((module, proj)) = expert_site.filter(|_| experts > 0) else {
        return vec![
            SiteTensor { key: ka, shape: [rank, site.d_in], factor: Factor::A, range: 0..rank * site.d_in },
            SiteTensor { key: kb, shape: [site.d_out, rank], factor: Factor::B, range: 0..site.d_out * rank },
        ];
    };
    let key = |e: usize, f: &str| format!("base_model.model.{module}.{e}.{proj}.lora_{f}.weight");
    if proj == "down_proj" {
        let im = site.d_in / experts;
        let mut out: Vec<SiteTensor> = (0..experts)
            .map(|e| SiteTensor {
                key: key(e, "A"),
                shape: [rank, im],
                factor: Factor::A,
                range: e * rank * im..(e + 1) * rank * im,
            })
            .collect();
        out.push(SiteTensor { key: kb, shape: [site.d_out, rank], factor: Factor::B, range: 0..site.d_out * rank });
        out
    } else {
        let im = site.d_out / experts;
        let mut out =
            vec![SiteTensor { key: ka, shape: [rank, site.d_in], factor: Factor::A, range: 0..rank * site.d_in }];
        out.extend((0..experts).map(|e| SiteTensor {
            key: key(e, "B"),
            shape: [im, rank],
            factor: Factor::B,
            range: e * im * rank..(e + 1) * im * rank,
        }));
        out
    }
}

/// `weights` as a standard PEFT adapter for `config`: every ordinary site under its [`peft_keys`];
/// every MoE expert site expanded to one plain LoRA per expert (`…mlp.experts.E.<proj>.lora_{A,B}`),
/// the shared factor copied into each expert, so PEFT applies `s·B_e·A_e` to expert `E` exactly as
/// lathe does. (Lathe's own checkpoints keep the stacked site tensors instead.)
pub fn peft_tensors(config: &ModelConfig, weights: &LoraWeights) -> WeightMap {
    let mut map = WeightMap::default();
    for (path, pair) in &weights.sites {
        let site = LoraSite { path: path.clone(), d_in: pair.d_in, d_out: pair.d_out };
        let tensors = site_tensors(config, &site, pair.rank);
        let (shared, per_expert): (Vec<_>, Vec<_>) = tensors.iter().partition(|t| !is_expert_key(&t.key));
        if per_expert.is_empty() {
            for t in tensors {
                map.insert(t.key, HostTensor::new(t.shape.to_vec(), pair.factor(t.factor)[t.range].to_vec()));
            }
            continue;
        }
        let shared = shared.first().expect("an expert site stores one shared factor");
        let (module, proj) = path.rsplit_once('.').expect("an expert site path has a module and a projection");
        for (e, t) in per_expert.iter().enumerate() {
            let key = |f: &str| format!("base_model.model.{module}.{e}.{proj}.lora_{f}.weight");
            let own = HostTensor::new(t.shape.to_vec(), pair.factor(t.factor)[t.range.clone()].to_vec());
            let copy =
                HostTensor::new(shared.shape.to_vec(), pair.factor(shared.factor)[shared.range.clone()].to_vec());
            let (a, b) = if t.factor == Factor::A { (own, copy) } else { (copy, own) };
            map.insert(key("A"), a);
            map.insert(key("B"), b);
        }
    }
    map
}

/// The inverse of [`peft_tensors`] for MoE expert sites: rewrites the per-expert PEFT keys of every
/// expert site in `map` into the stacked pair lathe stores under [`peft_keys`] of the site path, so
/// a standard export loads back. Other sites are left as they are.
///
/// # Errors
/// A message naming the site when an expert's tensor is missing or misshapen, or when the
/// experts' copies of the shared factor differ (an adapter lathe's shared-outer layout cannot hold).
pub fn stack_peft_experts(
    config: &ModelConfig,
    sites: &[LoraSite],
    rank: usize,
    map: &mut WeightMap,
) -> Result<(), String> {
    for site in sites {
        let tensors = site_tensors(config, site, rank);
        let experts = tensors.iter().filter(|t| is_expert_key(&t.key)).count();
        if experts == 0 {
            continue;
        }
        let Some((module, proj)) = site.path.rsplit_once('.') else { continue };
        let expert_key = |e: usize, f: Factor| {
            let f = if f == Factor::A { "A" } else { "B" };
            format!("base_model.model.{module}.{e}.{proj}.lora_{f}.weight")
        };
        let mut a = vec![0.0f32; rank * site.d_in]; // (rank, d_in)
        let mut b = vec![0.0f32; site.d_out * rank]; // (d_out, rank)
        for t in &tensors {
            let shared = !is_expert_key(&t.key);
            // The shared factor was copied into every expert; read expert 0's copy.
            let src = if shared { expert_key(0, t.factor) } else { t.key.clone() };
            let data = match map.tensors.get(&src) {
                Some(h) if h.shape == t.shape => h.data.clone(),
                Some(h) => return Err(format!("`{src}` has shape {:?}, expected {:?}", h.shape, t.shape)),
                None => return Err(format!("`{src}` is missing for expert site `{}`", site.path)),
            };
            if shared {
                for e in 1..experts {
                    if map.tensors.get(&expert_key(e, t.factor)).map(|h| &h.data) != Some(&data) {
                        return Err(format!(
                            "the experts of `{}` hold different {:?} factors; lathe shares that factor across experts",
                            site.path, t.factor
                        ));
                    }
                }
            }
            let dst = if t.factor == Factor::A { &mut a } else { &mut b };
            dst[t.range.clone()].copy_from_slice(&data);
        }
        for e in 0..experts {
            map.tensors.remove(&expert_key(e, Factor::A));
            map.tensors.remove(&expert_key(e, Factor::B));
        }
        let (key_a, key_b) = peft_keys(&site.path);
        map.insert(key_a, HostTensor::new(vec![rank, site.d_in], a));
        map.insert(key_b, HostTensor::new(vec![site.d_out, rank], b));
    }
    Ok(())
}

/// Whether a stored key names one expert's factor (`…mlp.experts.<E>.<proj>…`).
fn is_expert_key(key: &str) -> bool {
    key.split_once(".mlp.experts.")
        .and_then(|(_, rest)| rest.split('.').next())
        .is_some_and(|e| e.parse::<usize>().is_ok())
}

/// One site's pair of factors (or their gradients, or an Adam moment of them).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraPair {
    pub d_in: usize,
    pub d_out: usize,
    pub rank: usize,
    pub a: Vec<f32>, // (rank, d_in)
    pub b: Vec<f32>, // (d_out, rank)
}

impl LoraPair {
    /// The values of one factor.
    pub fn factor(&self, f: Factor) -> &[f32] {
        match f {
            Factor::A => &self.a,
            Factor::B => &self.b,
        }
    }

    /// The values of one factor, mutably.
    pub fn factor_mut(&mut self, f: Factor) -> &mut [f32] {
        match f {
            Factor::A => &mut self.a,
            Factor::B => &mut self.b,
        }
    }

    pub fn zeros(d_in: usize, d_out: usize, rank: usize) -> Self {
        LoraPair { d_in, d_out, rank, a: vec![0.0; rank * d_in], b: vec![0.0; d_out * rank] }
    }
}

/// A full set of pairs keyed by site path. Used for parameters, gradients and Adam moments, so
/// that every elementwise pass walks them in the same (sorted) order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraWeights {
    pub sites: BTreeMap<String, LoraPair>,
}

impl LoraWeights {
    /// All-zero pairs for `sites` at `rank`.
    pub fn zeros(sites: &[LoraSite], rank: usize) -> Self {
        let sites = sites.iter().map(|s| (s.path.clone(), LoraPair::zeros(s.d_in, s.d_out, rank))).collect();
        LoraWeights { sites }
    }

    /// Zeros with the same sites and shapes as `self`.
    pub fn zeros_like(&self) -> Self {
        let sites = self.sites.iter().map(|(k, p)| (k.clone(), LoraPair::zeros(p.d_in, p.d_out, p.rank))).collect();
        LoraWeights { sites }
    }

    pub fn get(&self, path: &str) -> Option<&LoraPair> {
        self.sites.get(path)
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut LoraPair> {
        self.sites.get_mut(path)
    }

    /// Number of f32 values across all pairs.
    pub fn numel(&self) -> usize {
        self.sites.values().map(|p| p.a.len() + p.b.len()).sum()
    }

    /// Sets every value to zero, keeping shapes.
    pub fn fill_zero(&mut self) {
        for p in self.sites.values_mut() {
            p.a.fill(0.0);
            p.b.fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiny::tiny_model;

    fn covered(tensors: &[SiteTensor], f: Factor, len: usize) -> bool {
        let mut ranges: Vec<_> = tensors.iter().filter(|t| t.factor == f).map(|t| t.range.clone()).collect();
        ranges.sort_by_key(|r| r.start);
        let tiles = ranges.windows(2).all(|w| w[0].end == w[1].start);
        let sized = tensors.iter().all(|t| t.shape[0] * t.shape[1] == t.range.len());
        tiles && sized && ranges.first().map(|r| r.start) == Some(0) && ranges.last().map(|r| r.end) == Some(len)
    }

    #[test]
    fn expert_sites_store_one_shared_factor_and_one_factor_per_expert() {
        let (config, _) = tiny_model("tiny/qwen3-moe", 0).unwrap();
        let lora = LoraConfig::new(4, 8.0, 0, true, true, true).unwrap();
        let sites = lora_sites(&config, &lora);
        let site = |p: &str| sites.iter().find(|s| s.path == p).unwrap().clone();
        let p = "base_model.model.model.layers.0.mlp.experts";

        let gate = site_tensors(&config, &site("model.layers.0.mlp.experts.gate_proj"), 4);
        assert_eq!(gate.len(), 5);
        assert_eq!((gate[0].key.as_str(), gate[0].shape), (&*format!("{p}.gate_proj.lora_A.weight"), [4, 64]));
        assert_eq!((gate[3].key.as_str(), gate[3].shape), (&*format!("{p}.2.gate_proj.lora_B.weight"), [32, 4]));
        assert!(covered(&gate, Factor::A, 4 * 64) && covered(&gate, Factor::B, 128 * 4));

        let down = site_tensors(&config, &site("model.layers.0.mlp.experts.down_proj"), 4);
        assert_eq!(down.len(), 5);
        assert_eq!((down[1].key.as_str(), down[1].shape), (&*format!("{p}.1.down_proj.lora_A.weight"), [4, 32]));
        assert_eq!((down[4].key.as_str(), down[4].shape), (&*format!("{p}.down_proj.lora_B.weight"), [64, 4]));
        assert!(covered(&down, Factor::A, 4 * 128) && covered(&down, Factor::B, 64 * 4));

        let dense = site_tensors(&config, &site("model.layers.1.mlp.down_proj"), 4);
        let keys: Vec<_> = dense.iter().map(|t| t.key.clone()).collect();
        let (ka, kb) = peft_keys("model.layers.1.mlp.down_proj");
        assert_eq!(keys, vec![ka, kb]);
        assert_eq!((dense[0].shape, dense[1].shape), ([4, 96], [64, 4]));
        let total: usize = sites.iter().map(|s| site_tensors(&config, s, 4).len()).sum();
        assert_eq!(total, 62, "the fixture's count: 24 attention, 6 dense MLP, 2 lm_head, 15 per MoE layer");
    }

    #[test]
    fn peft_export_expands_expert_sites_copying_the_shared_factor_into_every_expert() {
        let (config, _) = tiny_model("tiny/qwen3-moe", 0).unwrap();
        let lora = LoraConfig::new(4, 8.0, 0, true, true, true).unwrap();
        let mut w = LoraWeights::zeros(&lora_sites(&config, &lora), 4);
        for (i, pair) in w.sites.values_mut().enumerate() {
            for (j, x) in pair.a.iter_mut().chain(pair.b.iter_mut()).enumerate() {
                *x = (i * 1000 + j) as f32;
            }
        }
        let map = peft_tensors(&config, &w);
        // 24 attention + 6 dense MLP + 2 lm_head + 2 MoE layers × 3 projections × 4 experts × 2 factors.
        assert_eq!(map.tensors.len(), 80);
        let p = "base_model.model.model.layers.2.mlp.experts";
        let gate = w.get("model.layers.2.mlp.experts.gate_proj").unwrap();
        assert_eq!(map.tensors[&format!("{p}.3.gate_proj.lora_A.weight")].data, gate.a, "shared A copied");
        let b3 = &map.tensors[&format!("{p}.3.gate_proj.lora_B.weight")];
        assert_eq!((b3.shape.as_slice(), &b3.data[..]), (&[32, 4][..], &gate.b[3 * 128..4 * 128]));
        let down = w.get("model.layers.2.mlp.experts.down_proj").unwrap();
        assert_eq!(map.tensors[&format!("{p}.0.down_proj.lora_B.weight")].data, down.b, "shared B copied");
        let a1 = &map.tensors[&format!("{p}.1.down_proj.lora_A.weight")];
        assert_eq!((a1.shape.as_slice(), &a1.data[..]), (&[4, 32][..], &down.a[128..256]));
        assert!(!map.tensors.keys().any(|k| k.contains("experts.gate_proj") || k.contains("experts.down_proj")));
        let (ka, _) = peft_keys("model.layers.1.mlp.up_proj");
        assert_eq!(map.tensors[&ka].data, w.get("model.layers.1.mlp.up_proj").unwrap().a);
    }
}
