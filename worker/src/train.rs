//! The training glue of one adapter: `forward_backward` packs a request's datums into one
//! `PackedBatch`, runs the model forward, the loss on each datum, and the backward once, adding
//! into the accumulated gradients; `forward` is the same without the backward. Every datum is
//! validated (and every loss computed) before any gradient is touched, so a rejected request
//! leaves the training state exactly as it was.
//!
//! A `forward_backward`'s loss is the plain sum over its datums; metrics are merged across datums
//! in request order (see `loss` for their meaning).

use std::collections::BTreeMap;

use kernels::Backend;
use thiserror::Error;

use crate::loss::{target_tokens, DatumLoss, LossFn, LossInputError, LossInputs, Metrics, Targets};
use crate::model::{Forward, Model, ModelError, PackedBatch};
use crate::optim::TrainState;

/// One training example: the model input tokens and the loss's inputs (`target_tokens` among them,
/// one row per input token). The HTTP layer maps Tinker's `Datum` / `TensorData` onto this.
#[derive(Clone, Debug, PartialEq)]
pub struct Datum {
    pub tokens: Vec<u32>, // (n)
    pub loss_fn_inputs: LossInputs,
}

/// The per-datum outputs of a `forward_backward` / `forward`, in request order.
#[derive(Clone, Debug, PartialEq)]
pub struct FbOutput {
    /// The learner's logprobs of each datum's `target_tokens`, `(n)` or `(n, k)` like them.
    pub logprobs: Vec<Vec<f32>>,
    /// Each datum's per-token loss, `(n)`.
    pub elementwise_loss: Vec<Vec<f32>>,
    /// `name:reduction` → value, always with `loss:sum`.
    pub metrics: BTreeMap<String, f64>,
}

/// A request that cannot be run. Everything except `Model` is the client's fault and names the
/// datum; `Model` is a mismatch between the adapter and the model, or a model-side limit.
#[derive(Debug, Error, PartialEq)]
pub enum TrainError {
    #[error("the request has no datums; send at least one")]
    NoData,
    #[error("datum {datum} has no model input tokens; every datum needs at least one")]
    EmptyDatum { datum: usize },
    #[error("datum {datum}: model input token {index} is {token}, not below the model's vocab_size {vocab}")]
    TokenOutOfVocab { datum: usize, index: usize, token: u32, vocab: usize },
    #[error("datum {datum}: target_tokens value {index} is {token}, not below the model's vocab_size {vocab}")]
    TargetOutOfVocab { datum: usize, index: usize, token: u32, vocab: usize },
    #[error("datum {datum} has {len} tokens, more than the model's max_position_embeddings {max}; shorten it")]
    TooLong { datum: usize, len: usize, max: usize },
    #[error(transparent)]
    Input(#[from] LossInputError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// What the loss pass over a forward produced: the outputs, and the upstream gradient of the
/// whole batch for backward.
struct LossPass {
    output: FbOutput,
    dlogprobs: Vec<f32>, // (T, k_batch)
}

impl TrainState {
    /// Forward, loss and backward over `data`, adding `d loss / d (A, B)` into `self.grads`.
    ///
    /// # Errors
    /// [`TrainError`] naming the datum for malformed data or loss inputs; `Model` when the adapter
    /// does not fit `model`. On error `self` is unchanged.
    pub fn forward_backward<B: Backend>(
        &mut self,
        model: &Model<B>,
        data: &[Datum],
        loss: &LossFn,
    ) -> Result<FbOutput, TrainError> {
        let (batch, fwd, pass) = self.forward_and_loss(model, data, loss)?;
        model.backward(&fwd, &batch, &pass.dlogprobs, (&self.lora, &self.params), &mut self.grads)?;
        Ok(pass.output)
    }

    /// Forward and loss over `data` without backward: the same outputs and metrics as
    /// [`Self::forward_backward`], and no gradient is accumulated.
    ///
    /// # Errors
    /// As [`Self::forward_backward`].
    pub fn forward<B: Backend>(&self, model: &Model<B>, data: &[Datum], loss: &LossFn) -> Result<FbOutput, TrainError> {
        Ok(self.forward_and_loss(model, data, loss)?.2.output)
    }

    fn forward_and_loss<B: Backend>(
        &self,
        model: &Model<B>,
        data: &[Datum],
        loss: &LossFn,
    ) -> Result<(PackedBatch, Forward, LossPass), TrainError> {
        let targets = validate(model, data, loss)?;
        let k_batch = targets.iter().map(|t| t.k).max().expect("validate rejects an empty request");
        let padded: Vec<Vec<u32>> = targets.iter().map(|t| pad_targets(t, k_batch)).collect();
        let seqs: Vec<(&[u32], &[u32])> = data.iter().zip(&padded).map(|(d, t)| (&d.tokens[..], &t[..])).collect();
        let batch = PackedBatch::new(&seqs, k_batch)?;
        let fwd = model.forward(&batch, Some((&self.lora, &self.params)))?;
        let pass = loss_pass(&batch, &fwd, data, &targets, loss)?;
        Ok((batch, fwd, pass))
    }
}

/// Checks every datum against the model and reads its targets.
fn validate<B: Backend>(model: &Model<B>, data: &[Datum], loss: &LossFn) -> Result<Vec<Targets>, TrainError> {
    if data.is_empty() {
        return Err(TrainError::NoData);
    }
    let vocab = model.config().vocab_size;
    let max = model.config().max_position_embeddings;
    let mut all = Vec::with_capacity(data.len());
    for (datum, d) in data.iter().enumerate() {
        if d.tokens.is_empty() {
            return Err(TrainError::EmptyDatum { datum });
        }
        if d.tokens.len() > max {
            return Err(TrainError::TooLong { datum, len: d.tokens.len(), max });
        }
        if let Some((index, &token)) = d.tokens.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return Err(TrainError::TokenOutOfVocab { datum, index, token, vocab });
        }
        let targets = target_tokens(datum, loss.name(), &d.loss_fn_inputs, d.tokens.len())?;
        if let Some((index, &token)) = targets.ids.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return Err(TrainError::TargetOutOfVocab { datum, index, token, vocab });
        }
        all.push(targets);
    }
    Ok(all)
}

/// `t.ids (n, k)` widened to `(n, k_batch)` with target 0 in the extra columns; their logprobs
/// are computed and ignored, and their upstream gradient is zero.
fn pad_targets(t: &Targets, k_batch: usize) -> Vec<u32> {
    assert!(t.k <= k_batch);
    let mut out = vec![0u32; t.n * k_batch]; // (n, k_batch)
    for row in 0..t.n {
        out[row * k_batch..row * k_batch + t.k].copy_from_slice(&t.ids[row * t.k..(row + 1) * t.k]);
    }
    out
}

/// Runs the loss on each datum's slice of the forward's logprobs and scatters the gradients.
fn loss_pass(
    batch: &PackedBatch,
    fwd: &Forward,
    data: &[Datum],
    targets: &[Targets],
    loss: &LossFn,
) -> Result<LossPass, TrainError> {
    let k_batch = batch.k;
    assert_eq!(fwd.logprobs.len(), batch.num_tokens() * k_batch, "forward logprobs are (T, k)");
    let mut dlogprobs = vec![0.0f32; fwd.logprobs.len()]; // (T, k_batch)
    let mut output = FbOutput { logprobs: Vec::new(), elementwise_loss: Vec::new(), metrics: BTreeMap::new() };
    let mut metrics = Metrics::default();
    for (datum, (d, t)) in data.iter().zip(targets).enumerate() {
        let rows = batch.seq_range(datum);
        assert_eq!(rows.len(), t.n);
        let mut lp = Vec::with_capacity(t.n * t.k); // (n, k)
        for row in rows.clone() {
            lp.extend_from_slice(&fwd.logprobs[row * k_batch..row * k_batch + t.k]);
        }
        let DatumLoss { elementwise, dlogprobs: dlp, metrics: m, .. } = loss.compute(datum, &lp, &d.loss_fn_inputs)?;
        for (i, row) in rows.enumerate() {
            dlogprobs[row * k_batch..row * k_batch + t.k].copy_from_slice(&dlp[i * t.k..(i + 1) * t.k]);
        }
        metrics.merge(&m);
        output.logprobs.push(lp);
        output.elementwise_loss.push(elementwise);
    }
    output.metrics = metrics.finish();
    // Load balance of every sparse MoE layer: the busiest and idlest expert's share of the T·k
    // routing assignments (1/E each when perfectly balanced). Reported, never enforced.
    for (layer, fractions) in fwd.moe_expert_fractions() {
        let max = fractions.iter().copied().fold(0.0f32, f32::max);
        let min = fractions.iter().copied().fold(1.0f32, f32::min);
        output.metrics.insert(format!("moe_layer{layer}_expert_frac_max:max"), f64::from(max));
        output.metrics.insert(format!("moe_layer{layer}_expert_frac_min:min"), f64::from(min));
    }
    assert!(output.metrics.contains_key("loss:sum"), "every loss reports loss:sum");
    Ok(LossPass { output, dlogprobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_widens_each_row_and_keeps_its_targets_first() {
        let t = Targets { ids: vec![1, 2, 3, 4], n: 2, k: 2 };
        assert_eq!(pad_targets(&t, 3), vec![1, 2, 0, 3, 4, 0]);
        assert_eq!(pad_targets(&t, 2), t.ids);
    }
}
