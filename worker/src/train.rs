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
use runtime::LoraConfig;
use thiserror::Error;

use crate::adapter::LoraWeights;
use crate::loss::{target_tokens, DatumLoss, LossFn, LossInputError, LossInputs, Metrics, Targets};
use crate::model::{Forward, Model, ModelError, PackedBatch, Tenant};
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
#[derive(Clone, Debug, Error, PartialEq)]
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

/// One training run's share of a multi-tenant step: its state, its datums and loss, and whether
/// to accumulate gradients (`forward_backward`) or only report (`forward`).
pub struct StepItem<'a> {
    pub state: &'a mut TrainState,
    pub data: &'a [Datum],
    pub loss: &'a LossFn,
    pub backward: bool,
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
        let item = StepItem { state: self, data, loss, backward: true };
        step_many(model, &mut [item]).pop().expect("one result per item")
    }

    /// Forward and loss over `data` without backward: the same outputs and metrics as
    /// [`Self::forward_backward`], and no gradient is accumulated.
    ///
    /// # Errors
    /// As [`Self::forward_backward`].
    pub fn forward<B: Backend>(&self, model: &Model<B>, data: &[Datum], loss: &LossFn) -> Result<FbOutput, TrainError> {
        let targets = validate(model, data, loss)?;
        check_adapter(model, self)?;
        let run = RunRef { lora: &self.lora, params: &self.params, data, targets: &targets };
        let (batch, fwd) = forward_pass(model, &[run])?;
        let mut dlogprobs = vec![0.0f32; fwd.logprobs.len()]; // (T, k_batch), unused without backward
        loss_pass(&batch, &fwd, 0..data.len(), data, &targets, loss, &mut dlogprobs)
    }
}

/// One multi-tenant step: the datums of every item packed into one batch on `model`, one forward
/// (each run's sequences through its own adapter), each run's loss on its own datums, and one
/// backward whose gradients go to each backward item's own state. Results are in item order.
///
/// Every run gets exactly what it would get stepped alone — outputs, metrics and gradients, bit
/// for bit — because every op is row-invariant and every LoRA reduction sees only its run's
/// sequences (see `model::Tenant`). An item whose request is malformed gets its error and changes
/// nothing; the others go ahead without it.
pub fn step_many<B: Backend>(model: &Model<B>, items: &mut [StepItem<'_>]) -> Vec<Result<FbOutput, TrainError>> {
    let mut results: Vec<Option<Result<FbOutput, TrainError>>> = Vec::with_capacity(items.len());
    let mut targets: Vec<Vec<Targets>> = Vec::with_capacity(items.len());
    for it in items.iter() {
        match validate(model, it.data, it.loss).and_then(|t| check_adapter(model, it.state).map(|()| t)) {
            Ok(t) => {
                targets.push(t);
                results.push(None);
            }
            Err(e) => {
                targets.push(Vec::new());
                results.push(Some(Err(e)));
            }
        }
    }
    let live: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_none()).collect();
    if !live.is_empty() {
        let outcome = run_live(model, items, &live, &targets);
        for (i, r) in live.iter().zip(outcome) {
            results[*i] = Some(r);
        }
    }
    results.into_iter().map(|r| r.expect("every item has a result")).collect()
}

/// What the forward pass reads of one run.
struct RunRef<'a> {
    lora: &'a LoraConfig,
    params: &'a LoraWeights,
    data: &'a [Datum],
    targets: &'a [Targets],
}

/// Packs the datums of `runs` (all validated) into one batch, targets widened to the largest k,
/// and runs the forward with each run's adapter on its own sequences.
fn forward_pass<B: Backend>(model: &Model<B>, runs: &[RunRef<'_>]) -> Result<(PackedBatch, Forward), TrainError> {
    let k_batch = runs.iter().flat_map(|r| r.targets.iter().map(|t| t.k)).max().ok_or(TrainError::NoData)?;
    let padded: Vec<Vec<u32>> = runs.iter().flat_map(|r| r.targets.iter().map(|t| pad_targets(t, k_batch))).collect();
    let tokens = runs.iter().flat_map(|r| r.data.iter().map(|d| &d.tokens[..]));
    let seqs: Vec<(&[u32], &[u32])> = tokens.zip(&padded).map(|(d, t)| (d, &t[..])).collect();
    let batch = PackedBatch::new(&seqs, k_batch)?;
    let tenants: Vec<Tenant<'_>> =
        runs.iter().map(|r| Tenant { seqs: r.data.len(), lora: Some((r.lora, r.params)) }).collect();
    let fwd = model.forward_tenants(&batch, &tenants)?;
    Ok((batch, fwd))
}

/// The packed pass over the items `live` (all validated), results in `live`'s order.
fn run_live<B: Backend>(
    model: &Model<B>,
    items: &mut [StepItem<'_>],
    live: &[usize],
    targets: &[Vec<Targets>],
) -> Vec<Result<FbOutput, TrainError>> {
    let counts: Vec<usize> = live.iter().map(|&i| items[i].data.len()).collect();
    let runs: Vec<RunRef<'_>> = live
        .iter()
        .map(|&i| {
            let it = &items[i];
            RunRef { lora: &it.state.lora, params: &it.state.params, data: it.data, targets: &targets[i] }
        })
        .collect();
    let pass = forward_pass(model, &runs);
    drop(runs);
    let (batch, fwd) = match pass {
        Ok(p) => p,
        Err(e) => return live.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut dlogprobs = vec![0.0f32; fwd.logprobs.len()]; // (T, k_batch)
    let mut outs = Vec::with_capacity(live.len());
    let mut first_seq = 0;
    for (&i, &n) in live.iter().zip(&counts) {
        let it = &items[i];
        let seq_range = first_seq..first_seq + n;
        first_seq = seq_range.end;
        outs.push(loss_pass(&batch, &fwd, seq_range, it.data, &targets[i], it.loss, &mut dlogprobs));
    }

    // Gradients only for backward items whose loss succeeded. Every other item's rows get a zero
    // upstream gradient and no gradient buffer: its rows never mix with another's, so leaving
    // it out of the backward changes nobody's gradients.
    let wants: Vec<bool> = live.iter().zip(&outs).map(|(&i, o)| items[i].backward && o.is_ok()).collect();
    if !wants.contains(&true) {
        return outs;
    }
    let k = batch.k;
    let mut seq = 0;
    for (&n, &w) in counts.iter().zip(&wants) {
        let rows = batch.cu_seqlens[seq]..batch.cu_seqlens[seq + n];
        if !w {
            dlogprobs[rows.start * k..rows.end * k].fill(0.0);
        }
        seq += n;
    }
    let mut tenants = Vec::with_capacity(live.len());
    let mut grads: Vec<Option<&mut LoraWeights>> = Vec::with_capacity(live.len());
    let mut wanted = wants.iter();
    for (i, it) in items.iter_mut().enumerate() {
        if !live.contains(&i) {
            continue;
        }
        let w = *wanted.next().expect("one flag per live item");
        let TrainState { lora, params, grads: g, .. } = &mut *it.state;
        tenants.push(Tenant { seqs: it.data.len(), lora: Some((&*lora, &*params)) });
        grads.push(if w { Some(g) } else { None });
    }
    if let Err(e) = model.backward_tenants(&fwd, &batch, &dlogprobs, &tenants, &mut grads) {
        // Backward checks before it adds anything, so every state is still unchanged.
        let e = TrainError::from(e);
        for (out, &w) in outs.iter_mut().zip(&wants) {
            if w {
                *out = Err(e.clone());
            }
        }
    }
    outs
}

/// `state`'s adapter must fit `model` (its sites and shapes).
fn check_adapter<B: Backend>(model: &Model<B>, state: &TrainState) -> Result<(), TrainError> {
    model.check_adapter(&state.lora, &state.params).map_err(TrainError::from)
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

/// Runs `loss` on each datum of one run (the batch's sequences `seqs`) over its slice of the
/// forward's logprobs, and writes the gradients into those rows of `dlogprobs (T, k_batch)`.
/// Metrics are this run's alone, MoE load balance over its own tokens.
fn loss_pass(
    batch: &PackedBatch,
    fwd: &Forward,
    seqs: std::ops::Range<usize>,
    data: &[Datum],
    targets: &[Targets],
    loss: &LossFn,
    dlogprobs: &mut [f32],
) -> Result<FbOutput, TrainError> {
    let k_batch = batch.k;
    assert_eq!(fwd.logprobs.len(), batch.num_tokens() * k_batch, "forward logprobs are (T, k)");
    assert_eq!(dlogprobs.len(), fwd.logprobs.len(), "dlogprobs are (T, k)");
    assert_eq!(seqs.len(), data.len(), "one sequence per datum");
    let mut output = FbOutput { logprobs: Vec::new(), elementwise_loss: Vec::new(), metrics: BTreeMap::new() };
    let mut metrics = Metrics::default();
    let mut grads = Vec::with_capacity(data.len());
    for (datum, ((d, t), seq)) in data.iter().zip(targets).zip(seqs.clone()).enumerate() {
        let rows = batch.seq_range(seq);
        assert_eq!(rows.len(), t.n);
        let mut lp = Vec::with_capacity(t.n * t.k); // (n, k)
        for row in rows.clone() {
            lp.extend_from_slice(&fwd.logprobs[row * k_batch..row * k_batch + t.k]);
        }
        let DatumLoss { elementwise, dlogprobs: dlp, metrics: m, .. } = loss.compute(datum, &lp, &d.loss_fn_inputs)?;
        grads.push((rows, dlp));
        metrics.merge(&m);
        output.logprobs.push(lp);
        output.elementwise_loss.push(elementwise);
    }
    // Written only once every datum's loss succeeded, so a failed run leaves its rows at zero.
    for ((rows, dlp), t) in grads.into_iter().zip(targets) {
        for (i, row) in rows.enumerate() {
            dlogprobs[row * k_batch..row * k_batch + t.k].copy_from_slice(&dlp[i * t.k..(i + 1) * t.k]);
        }
    }
    output.metrics = metrics.finish();
    // Load balance of every sparse MoE layer: the busiest and idlest expert's share of this run's
    // T·k routing assignments (1/E each when perfectly balanced). Reported, never enforced.
    let rows = batch.cu_seqlens[seqs.start]..batch.cu_seqlens[seqs.end];
    for (layer, fractions) in fwd.moe_expert_fractions_of(rows) {
        let max = fractions.iter().copied().fold(0.0f32, f32::max);
        let min = fractions.iter().copied().fold(1.0f32, f32::min);
        output.metrics.insert(format!("moe_layer{layer}_expert_frac_max:max"), f64::from(max));
        output.metrics.insert(format!("moe_layer{layer}_expert_frac_min:min"), f64::from(min));
    }
    assert!(output.metrics.contains_key("loss:sum"), "every loss reports loss:sum");
    Ok(output)
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
