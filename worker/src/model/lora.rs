//! Resolving a `LoraWeights` against the model: which projection of which layer carries which
//! pair, checked once per call so that the layer loop indexes arrays instead of hashing paths.
//! Only reads adapters; gradients are looked up by the same paths in `backward`.

use runtime::{LoraConfig, ModelConfig};

use super::ModelError;
use crate::adapter::{lora_sites, mlp_module, LoraPair, LoraWeights, ATTN_PROJ, MLP_PROJ};

/// Index of each adaptable projection within a layer, in forward order.
pub(crate) const Q: usize = 0;
pub(crate) const K: usize = 1;
pub(crate) const V: usize = 2;
pub(crate) const O: usize = 3;
pub(crate) const GATE: usize = 4;
pub(crate) const UP: usize = 5;
pub(crate) const DOWN: usize = 6;
pub(crate) const PROJS: usize = 7;

/// HF module paths of every adaptable projection: `(layers, 7)` plus `lm_head`. A MoE layer's
/// MLP entries are its expert sites (`mlp.experts.gate_proj`, …).
#[derive(Clone, Debug)]
pub(crate) struct SitePaths {
    pub layers: Vec<[String; PROJS]>,
}

impl SitePaths {
    pub fn new(config: &ModelConfig) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|l| {
                let (mlp, _) = mlp_module(config, l);
                std::array::from_fn(|p| {
                    if p < ATTN_PROJ.len() {
                        format!("model.layers.{l}.self_attn.{}", ATTN_PROJ[p])
                    } else {
                        format!("model.layers.{l}.{mlp}.{}", MLP_PROJ[p - ATTN_PROJ.len()])
                    }
                })
            })
            .collect();
        SitePaths { layers }
    }
}

pub(crate) const LM_HEAD: &str = "lm_head";

/// The adapter pairs of one forward, by (layer, projection).
#[derive(Clone, Debug)]
pub(crate) struct LoraView<'a> {
    pub scale: f32,
    pub layers: Vec<[Option<&'a LoraPair>; PROJS]>,
    pub lm_head: Option<&'a LoraPair>,
    /// Whether an adapter was given at all.
    pub present: bool,
}

impl<'a> LoraView<'a> {
    /// No adapter: every projection is the base layer alone.
    pub fn none(num_layers: usize) -> Self {
        LoraView { scale: 0.0, layers: vec![[None; PROJS]; num_layers], lm_head: None, present: false }
    }

    /// Resolves `weights` against the sites `lora` trains on `config`.
    ///
    /// # Errors
    /// `ModelError::LoraMismatch` when a site is missing, has the wrong shape or rank, or the
    /// adapter has a site this config does not train.
    pub fn new(
        config: &ModelConfig,
        paths: &SitePaths,
        lora: &LoraConfig,
        weights: &'a LoraWeights,
    ) -> Result<Self, ModelError> {
        check_shapes(config, lora, weights, "adapter")?;
        let get = |path: &str, on: bool| if on { weights.get(path) } else { None };
        let layers = paths
            .layers
            .iter()
            .map(|ps| std::array::from_fn(|p| get(&ps[p], if p <= O { lora.train_attn } else { lora.train_mlp })))
            .collect();
        Ok(LoraView { scale: lora.scale(), layers, lm_head: get(LM_HEAD, lora.train_unembed), present: true })
    }
}

/// Checks that `weights` holds exactly the sites of `lora` on `config`, each `(rank, d_in)` /
/// `(d_out, rank)`. `what` names the buffer in the error (`adapter`, `gradient`).
///
/// # Errors
/// `ModelError::LoraMismatch` describing the first difference.
pub(crate) fn check_shapes(
    config: &ModelConfig,
    lora: &LoraConfig,
    weights: &LoraWeights,
    what: &str,
) -> Result<(), ModelError> {
    let sites = lora_sites(config, lora);
    let mismatch = |why: String| Err(ModelError::LoraMismatch { why });
    for site in &sites {
        let Some(pair) = weights.get(&site.path) else {
            return mismatch(format!("{what} has no pair for site `{}`", site.path));
        };
        let want = (site.d_in, site.d_out, lora.rank, lora.rank * site.d_in, site.d_out * lora.rank);
        let got = (pair.d_in, pair.d_out, pair.rank, pair.a.len(), pair.b.len());
        if want != got {
            return mismatch(format!(
                "{what} site `{}` is (d_in, d_out, rank, |A|, |B|) = {got:?}, expected {want:?}",
                site.path
            ));
        }
    }
    if weights.sites.len() != sites.len() {
        let extra = weights.sites.keys().find(|k| !sites.iter().any(|s| &s.path == *k));
        return mismatch(format!(
            "{what} has {} sites but the LoRA config trains {} (first unexpected: {extra:?})",
            weights.sites.len(),
            sites.len()
        ));
    }
    Ok(())
}
