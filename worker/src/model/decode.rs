//! Generation support: `KvCache` (one sequence's keys after RoPE and values, per layer), the
//! prefill that runs a prompt through the training forward's layers and keeps its keys/values, and the
//! decode step that feeds one token per sequence against its cache.
//!
//! The decode step runs the same layer pieces as `forward` (`attn_in`, `attn_out_mlp`,
//! `final_forward`) on one row per sequence; attention runs with `lq = 1` over the cache, which
//! the backend contract makes bit-identical to that query's row in a full pass.

use kernels::Backend;

use super::acts::{FinalActs, LayerActs};
use super::lora::LoraView;
use super::tenants::{Adapters, Site};
use super::{Model, ModelError, PackedBatch};

/// One sequence's cached attention inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct KvCache {
    /// Tokens cached so far: the next token sits at this position.
    len: usize,
    keys: Vec<Vec<f32>>,   // (layers) × (len, nkv·hd), after k_norm and RoPE
    values: Vec<Vec<f32>>, // (layers) × (len, nkv·hd)
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<B: Backend> Model<B> {
    /// Runs `prompt` through the training forward's trunk and returns its cache and the logits `(V)` of its last token.
    ///
    /// # Errors
    /// `ModelError` for an empty prompt, an id ≥ vocab, or a prompt longer than
    /// `max_position_embeddings`.
    pub(crate) fn prefill(&self, prompt: &[u32], view: &LoraView<'_>) -> Result<(KvCache, Vec<f32>), ModelError> {
        // The targets are irrelevant here (only logits and keys/values are kept); any valid id will do.
        let mut targets = prompt.get(1..).unwrap_or_default().to_vec();
        targets.push(0);
        let batch = PackedBatch::new(&[(prompt, &targets)], 1)?;
        let (layers, h) = self.trunk(&batch, &Adapters::single(view.clone(), prompt.len(), 1))?;
        let (t, d) = (prompt.len(), self.dims);
        // Only the last token's logits are needed; the head is row-invariant, so computing that
        // one row gives the bits a full pass would.
        let last_row = Adapters::single(view.clone(), 1, 1);
        let mut fin = FinalActs::new(1, d, last_row.h_len(Site::LmHead));
        fin.x.copy_from_slice(&h[(t - 1) * d.hidden..]);
        let mut last = vec![0.0f32; d.vocab]; // (V)
        self.final_forward(&mut fin, &mut last, &last_row);
        let (keys, values) = layers.into_iter().map(|a| (a.k, a.v)).unzip();
        Ok((KvCache { len: t, keys, values }, last))
    }

    /// Feeds `tokens[s]` to sequence `s` at position `caches[s].len()`, appends its key/value to
    /// the cache, and returns the logits `(S, V)` of the fed tokens.
    ///
    /// # Errors
    /// `ModelError` for an id ≥ vocab or a cache already at `max_position_embeddings`.
    pub(crate) fn decode_step(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        view: &LoraView<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        assert_eq!(caches.len(), tokens.len(), "decode_step: one token per cache");
        assert!(!tokens.is_empty(), "decode_step: no sequences to feed");
        self.check_tokens(tokens)?;
        let max = self.config.max_position_embeddings;
        if let Some((seq, c)) = caches.iter().enumerate().find(|(_, c)| c.len >= max) {
            return Err(ModelError::SequenceTooLong { seq, len: c.len + 1, max });
        }
        let d = self.dims;
        let rows = tokens.len();
        let be = &self.backend;
        let positions: Vec<u32> = caches.iter().map(|c| u32::try_from(c.len).unwrap_or(u32::MAX)).collect(); // (S)
        let mut h = vec![0.0f32; rows * d.hidden]; // (S, H)
        be.embedding_forward(&mut h, &self.weights.embed_tokens, tokens, d.vocab, d.hidden);
        let mut tmp = vec![0.0f32; rows * d.hidden]; // (S, H)
        let qk_norm = self.config.family.has_qk_norm();
        // Every fed token is its own one-row sequence of the one adapter.
        let ad = Adapters::single(view.clone(), rows, rows);
        // One scratch set reused by every layer: all layers adapt the same projections at one rank.
        let any_dense = self.weights.layers.iter().any(|w| w.moe.is_none());
        let mut acts = LayerActs::new(rows, d, qk_norm, any_dense, ad.layer_h_lens(0));
        for (l, w) in self.weights.layers.iter().enumerate() {
            acts.x.copy_from_slice(&h);
            self.attn_in(w, (&ad, l), &mut acts, &positions);
            let (q, kv) = (d.q_dim, d.kv_dim);
            for (s, cache) in caches.iter_mut().enumerate() {
                let (keys, values) = (&mut cache.keys[l], &mut cache.values[l]);
                keys.extend_from_slice(&acts.k[s * kv..(s + 1) * kv]);
                values.extend_from_slice(&acts.v[s * kv..(s + 1) * kv]);
                let lk = keys.len() / kv;
                be.attention_forward(
                    &mut acts.attn[s * q..(s + 1) * q],
                    &mut acts.lse[s * d.heads..(s + 1) * d.heads],
                    &acts.q[s * q..(s + 1) * q],
                    keys,
                    values,
                    &[0, 1],
                    &[0, lk],
                    self.attn_dims(),
                    self.attn_scale(),
                );
            }
            self.attn_out_mlp(w, (&ad, l), &mut acts, &mut h, &mut tmp);
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
            assert_eq!(cache.keys[0].len(), cache.len * d.kv_dim, "decode_step: cache rows track its length");
        }
        let mut fin = FinalActs::new(rows, d, ad.h_len(Site::LmHead));
        fin.x = h;
        let mut logits = vec![0.0f32; rows * d.vocab]; // (S, V)
        self.final_forward(&mut fin, &mut logits, &ad);
        Ok(logits)
    }
}
