//! `Model`: a decoder (Llama 3, Qwen2, Qwen3, Qwen3-MoE) over one backend — construction with every
//! weight shape checked, and the training forward over a packed batch (embed → layers → final
//! norm → unembedding → log-softmax gathered at the targets), saving activations for backward.

use kernels::rope::{Llama3Scaling, RopeTable};
use kernels::{AttnDims, Backend};
use runtime::{LoraConfig, ModelConfig, RopeScaling};

use super::acts::{FinalActs, Forward, LayerActs};
use super::lora::{check_shapes, LoraView, SitePaths, DOWN, GATE};
use super::tenants::{Adapters, Site, Tenant};
use super::weights::{DenseWeights, Dims};
use super::{ModelError, PackedBatch};
use crate::adapter::LoraWeights;
use crate::tensor::WeightMap;

/// A decoder model with frozen base weights on backend `B`.
pub struct Model<B: Backend> {
    pub(crate) config: ModelConfig,
    pub(crate) backend: B,
    pub(crate) weights: DenseWeights,
    pub(crate) dims: Dims,
    pub(crate) rope: RopeTable,
    pub(crate) paths: SitePaths,
}

impl<B: Backend> Model<B> {
    /// Builds the model, taking every tensor `config` calls for out of `weights`.
    ///
    /// # Errors
    /// `ModelError::Config` for a config that breaks the model's relations, `ModelError::Weight`
    /// naming a missing or misshapen tensor.
    pub fn new(config: ModelConfig, mut weights: WeightMap, backend: B) -> Result<Self, ModelError> {
        config.validate()?;
        let dense = DenseWeights::take(&config, &mut weights)?;
        let scaling = config.rope_scaling.map(|s| match s {
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                Llama3Scaling { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }
            }
        });
        let rope = RopeTable::new(config.head_dim, config.rope_theta, scaling, config.max_position_embeddings);
        let paths = SitePaths::new(&config);
        let dims = Dims::new(&config);
        Ok(Model { config, backend, weights: dense, dims, rope, paths })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Forward over a packed batch; with `lora` the adapter is applied (`y += scale·x·Aᵀ·Bᵀ`).
    ///
    /// # Errors
    /// `ModelError` for a token or target id ≥ vocab, a sequence longer than
    /// `max_position_embeddings`, or an adapter that does not fit this model.
    pub fn forward(
        &self,
        batch: &PackedBatch,
        lora: Option<(&LoraConfig, &LoraWeights)>,
    ) -> Result<Forward, ModelError> {
        self.forward_tenants(batch, &[Tenant { seqs: batch.num_seqs(), lora }])
    }

    /// Forward over a packed batch shared by `tenants`: each tenant's sequences get its own
    /// adapter (or none); the base model runs once over all of them. Every tenant's logprobs equal,
    /// bit for bit, those of a forward over its sequences alone.
    ///
    /// # Errors
    /// As [`Self::forward`], and `ModelError::Tenants` when the tenants do not cover the batch's
    /// sequences exactly.
    pub fn forward_tenants(&self, batch: &PackedBatch, tenants: &[Tenant<'_>]) -> Result<Forward, ModelError> {
        let ad = self.adapters(batch, tenants)?;
        let (layers, h) = self.trunk(batch, &ad)?;
        let d = self.dims;
        let t = batch.num_tokens();
        let mut fin = FinalActs::new(t, d, ad.h_len(Site::LmHead));
        fin.x = h;
        let mut logits = vec![0.0f32; t * d.vocab]; // (T, V)
        self.final_forward(&mut fin, &mut logits, &ad);
        let mut logprobs = vec![0.0f32; t * batch.k]; // (T, k)
        let be = &self.backend;
        be.logsoftmax_gather_forward(&mut logprobs, &mut fin.lse, &logits, &batch.targets, t, d.vocab, batch.k);
        let tenants = ad.spans.iter().map(|s| (s.seqs.clone(), s.view.present)).collect();
        Ok(Forward { logprobs, logits, layers, fin, cu_seqlens: batch.cu_seqlens.clone(), tenants })
    }

    /// Embedding and every decoder layer: the saved layer activations and the final residual
    /// stream `(T, H)`, which the final norm and unembedding read.
    pub(crate) fn trunk(
        &self,
        batch: &PackedBatch,
        ad: &Adapters<'_>,
    ) -> Result<(Vec<LayerActs>, Vec<f32>), ModelError> {
        self.check_batch(batch)?;
        let d = self.dims;
        let t = batch.num_tokens();
        let be = &self.backend;
        let qk_norm = self.config.family.has_qk_norm();

        let mut h = vec![0.0f32; t * d.hidden]; // (T, H) the residual stream
        be.embedding_forward(&mut h, &self.weights.embed_tokens, &batch.tokens, d.vocab, d.hidden);
        let mut tmp = vec![0.0f32; t * d.hidden]; // (T, H)
        let mut layers = Vec::with_capacity(self.weights.layers.len());
        for (l, w) in self.weights.layers.iter().enumerate() {
            let dense_mlp = w.moe.is_none();
            let mut h_lens = ad.layer_h_lens(l);
            if !dense_mlp {
                // A sparse layer's expert sites keep their x·Aᵀ with each expert.
                h_lens[GATE..=DOWN].fill(0);
            }
            let mut acts = LayerActs::new(t, d, qk_norm, dense_mlp, h_lens);
            acts.x.copy_from_slice(&h);
            self.attn_in(w, (ad, l), &mut acts, &batch.positions);
            let cu = &batch.cu_seqlens;
            be.attention_forward(
                &mut acts.attn,
                &mut acts.lse,
                &acts.q,
                &acts.k,
                &acts.v,
                cu,
                cu,
                self.attn_dims(),
                self.attn_scale(),
            );
            self.attn_out_mlp(w, (ad, l), &mut acts, &mut h, &mut tmp);
            layers.push(acts);
        }

        assert_eq!(layers.len(), self.config.num_hidden_layers, "one activation set per layer");
        Ok((layers, h))
    }

    /// Checks that `weights` holds exactly the adapter sites `lora` trains on this model, each at
    /// its shape.
    ///
    /// # Errors
    /// `ModelError::LoraMismatch` describing the first difference.
    pub fn check_adapter(&self, lora: &LoraConfig, weights: &LoraWeights) -> Result<(), ModelError> {
        check_shapes(&self.config, lora, weights, "adapter")
    }

    /// Attention geometry for the backend's attention ops.
    pub(crate) fn attn_dims(&self) -> AttnDims {
        AttnDims { heads: self.dims.heads, kv_heads: self.dims.kv_heads, head_dim: self.dims.head_dim }
    }

    /// `head_dim^-0.5`, rounded once to f32 as transformers' `self.scaling` is when it meets an f32 tensor.
    pub(crate) fn attn_scale(&self) -> f32 {
        (self.dims.head_dim as f64).powf(-0.5) as f32
    }

    /// The adapter resolved against this model, or the empty view.
    pub(crate) fn lora_view<'a>(
        &self,
        lora: Option<(&LoraConfig, &'a LoraWeights)>,
    ) -> Result<LoraView<'a>, ModelError> {
        match lora {
            Some((c, w)) => LoraView::new(&self.config, &self.paths, c, w),
            None => Ok(LoraView::none(self.config.num_hidden_layers)),
        }
    }

    /// Checks what `PackedBatch::new` could not: ids against the vocab, lengths against positions.
    fn check_batch(&self, batch: &PackedBatch) -> Result<(), ModelError> {
        let vocab = self.dims.vocab;
        self.check_tokens(&batch.tokens)?;
        if let Some((index, &target)) = batch.targets.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return Err(ModelError::TargetOutOfVocab { index, target, vocab });
        }
        let max = self.config.max_position_embeddings;
        for s in 0..batch.num_seqs() {
            let len = batch.seq_range(s).len();
            if len > max {
                return Err(ModelError::SequenceTooLong { seq: s, len, max });
            }
        }
        assert!(batch.positions.iter().all(|&p| (p as usize) < max), "positions restart at 0 in every sequence");
        Ok(())
    }

    /// Every id in `tokens` must be a row of the embedding.
    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        let vocab = self.dims.vocab;
        match tokens.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            Some((index, &token)) => Err(ModelError::TokenOutOfVocab { index, token, vocab }),
            None => Ok(()),
        }
    }
}
