//! The training glue of one adapter: `forward_backward` packs a request's datums into one
//! `PackedBatch`, runs the model forward, the loss on each datum, and the backward once, adding
//! into the accumulated gradients; `forward` is the same without the backward. Every datum is
//! validated (and every loss computed) before any gradient is touched, so a rejected request
//! leaves the training state exactly as it was.
//!
//! A `forward_backward`'s loss is the plain sum over its datums; metrics are merged across datums
//! in request order (see `loss` for their meaning).
//!
//! A request may also run as several passes over consecutive pieces of its datums ([`step_pass`],
//! used when one pass would not fit the memory budget): each pass adds its datums' gradients into
//! the same buffers and its statistics into the same running totals ([`FbPartial`]). Weight
//! gradients are reduced per sequence and added into the buffers in sequence order (a MoE layer's
//! shared expert factors too, through per-sequence sums: `model/moe_shared.rs`), and metrics are
//! merged datum by datum, so the pieces give exactly what one pass gives. The same holds across
//! workers: a data-parallel chain whose replicas continue each other's gradient buffers
//! (`ToWorker::GetGrads` / `SetGrads`) performs the very additions of one worker.

use std::collections::BTreeMap;

use kernels::Backend;
use runtime::LoraConfig;
use thiserror::Error;

use crate::adapter::LoraWeights;
use crate::loss::{target_tokens, DatumLoss, LossFn, LossInputError, LossInputs, Metrics, Targets};
use crate::model::{expert_fractions, Forward, Model, ModelError, PackedBatch, Tenant};
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

/// One training run's share of one pass of a request that may span several: its [`StepItem`],
/// whose datums are datums `first_datum..` of the request (errors name them by that number), and
/// what the request's earlier passes produced, which this pass extends.
pub struct PassItem<'s, 'a> {
    pub step: &'s mut StepItem<'a>,
    pub first_datum: usize,
    pub acc: &'s mut FbPartial,
}

/// MoE routing counts: `(layer, assignments per expert (E), all assignments)` per sparse layer.
type MoeCounts = Vec<(usize, Vec<usize>, usize)>;

/// What a request's datums have produced so far, not yet reduced: per-datum outputs in datum
/// order, every metric's partial statistic, and each sparse MoE layer's routing counts. Carried
/// from pass to pass of a request split over several ([`step_pass`]), it reduces
/// ([`FbPartial::finish`]) to exactly the [`FbOutput`] of one pass: sums continue the same running
/// total datum by datum, means keep total and count apart, and MoE fractions are taken from
/// integer counts only at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FbPartial {
    logprobs: Vec<Vec<f32>>,
    elementwise_loss: Vec<Vec<f32>>,
    metrics: Metrics,
    moe: MoeCounts,
}

/// What one pass adds to an item's [`FbPartial`]: its datums' outputs, the running metrics after
/// them, and the routing counts of its rows. Committed only once the whole pass succeeded.
struct PassOutput {
    logprobs: Vec<Vec<f32>>,
    elementwise_loss: Vec<Vec<f32>>,
    metrics: Metrics,
    moe: MoeCounts,
}

impl FbPartial {
    /// The number of datums accumulated.
    pub fn datums(&self) -> usize {
        self.logprobs.len()
    }

    /// Reduces to the reply: metrics to `name:reduction` values and routing counts to each MoE
    /// layer's load balance, the busiest and idlest expert's share of the request's `T·k`
    /// assignments (1/E each when perfectly balanced; reported, never enforced).
    ///
    /// # Panics
    /// When no datum was accumulated (there is no `loss:sum` to report).
    pub fn finish(self) -> FbOutput {
        let mut metrics = self.metrics.finish();
        for (layer, counts, assignments) in &self.moe {
            let fractions = expert_fractions(counts, *assignments);
            let max = fractions.iter().copied().fold(0.0f32, f32::max);
            let min = fractions.iter().copied().fold(1.0f32, f32::min);
            metrics.insert(format!("moe_layer{layer}_expert_frac_max:max"), f64::from(max));
            metrics.insert(format!("moe_layer{layer}_expert_frac_min:min"), f64::from(min));
        }
        assert!(metrics.contains_key("loss:sum"), "every loss reports loss:sum");
        FbOutput { logprobs: self.logprobs, elementwise_loss: self.elementwise_loss, metrics }
    }

    fn commit(&mut self, pass: PassOutput) {
        self.logprobs.extend(pass.logprobs);
        self.elementwise_loss.extend(pass.elementwise_loss);
        self.metrics = pass.metrics;
        if self.moe.is_empty() {
            self.moe = pass.moe;
            return;
        }
        assert_eq!(self.moe.len(), pass.moe.len(), "every pass of a request runs on the same model");
        for ((layer, counts, assignments), (l, c, a)) in self.moe.iter_mut().zip(pass.moe) {
            assert!(*layer == l && counts.len() == c.len(), "every pass of a request runs on the same model");
            counts.iter_mut().zip(c).for_each(|(total, c)| *total += c);
            *assignments += a;
        }
    }
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
        let targets = validate(model, data, loss, 0)?;
        check_adapter(model, self)?;
        let run = RunRef { lora: &self.lora, params: &self.params, data, targets: &targets };
        let (batch, fwd) = forward_pass(model, &[run])?;
        let mut dlogprobs = vec![0.0f32; fwd.logprobs.len()]; // (T, k_batch), unused without backward
        let mut acc = FbPartial::default();
        let piece = LossPiece { seqs: 0..data.len(), data, targets: &targets, loss, first_datum: 0 };
        acc.commit(loss_pass(&batch, &fwd, &piece, &acc.metrics, &mut dlogprobs)?);
        Ok(acc.finish())
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
    let mut accs = vec![FbPartial::default(); items.len()];
    let mut pass: Vec<PassItem<'_, '_>> =
        items.iter_mut().zip(&mut accs).map(|(step, acc)| PassItem { step, first_datum: 0, acc }).collect();
    let results = step_pass(model, &mut pass);
    drop(pass);
    results.into_iter().zip(accs).map(|(r, acc)| r.map(|()| acc.finish())).collect()
}

/// One pass of a multi-tenant step, as [`step_many`] describes, except that each item's outputs
/// and statistics extend its `acc` rather than being reduced, so a request can run as several
/// passes over consecutive pieces of its datums, in order, with the same result as one pass (see
/// the module doc). An item that fails leaves its state and its `acc` unchanged.
pub fn step_pass<B: Backend>(model: &Model<B>, items: &mut [PassItem<'_, '_>]) -> Vec<Result<(), TrainError>> {
    let mut results: Vec<Option<Result<(), TrainError>>> = Vec::with_capacity(items.len());
    let mut targets: Vec<Vec<Targets>> = Vec::with_capacity(items.len());
    for it in items.iter() {
        let (step, first) = (&*it.step, it.first_datum);
        match validate(model, step.data, step.loss, first).and_then(|t| check_adapter(model, step.state).map(|()| t)) {
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

/// The packed pass over the items `live` (all validated), results in `live`'s order; each
/// successful item's outputs are committed to its `acc`.
fn run_live<B: Backend>(
    model: &Model<B>,
    items: &mut [PassItem<'_, '_>],
    live: &[usize],
    targets: &[Vec<Targets>],
) -> Vec<Result<(), TrainError>> {
    let counts: Vec<usize> = live.iter().map(|&i| items[i].step.data.len()).collect();
    let runs: Vec<RunRef<'_>> = live
        .iter()
        .map(|&i| {
            let it = &*items[i].step;
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
        let seqs = first_seq..first_seq + n;
        first_seq = seqs.end;
        let piece = LossPiece {
            seqs,
            data: it.step.data,
            targets: &targets[i],
            loss: it.step.loss,
            first_datum: it.first_datum,
        };
        outs.push(loss_pass(&batch, &fwd, &piece, &it.acc.metrics, &mut dlogprobs));
    }

    // Gradients only for backward items whose loss succeeded. Every other item's rows get a zero
    // upstream gradient and no gradient buffer: its rows never mix with another's, so leaving
    // it out of the backward changes nobody's gradients.
    let wants: Vec<bool> = live.iter().zip(&outs).map(|(&i, o)| items[i].step.backward && o.is_ok()).collect();
    if !wants.contains(&true) {
        return commit(items, live, outs);
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
        let StepItem { state, data, .. } = &mut *it.step;
        let TrainState { lora, params, grads: g, .. } = &mut **state;
        tenants.push(Tenant { seqs: data.len(), lora: Some((&*lora, &*params)) });
        grads.push(if w { Some(g) } else { None });
    }
    let backward = model.backward_tenants(&fwd, &batch, &dlogprobs, &tenants, &mut grads);
    drop((tenants, grads));
    if let Err(e) = backward {
        // Backward checks before it adds anything, so every state is still unchanged.
        let e = TrainError::from(e);
        for (out, &w) in outs.iter_mut().zip(&wants) {
            if w {
                *out = Err(e.clone());
            }
        }
    }
    commit(items, live, outs)
}

/// Commits each successful pass output to its item's `acc`; failed items keep theirs unchanged.
fn commit(
    items: &mut [PassItem<'_, '_>],
    live: &[usize],
    outs: Vec<Result<PassOutput, TrainError>>,
) -> Vec<Result<(), TrainError>> {
    live.iter().zip(outs).map(|(&i, out)| out.map(|pass| items[i].acc.commit(pass))).collect()
}

/// `state`'s adapter must fit `model` (its sites and shapes).
fn check_adapter<B: Backend>(model: &Model<B>, state: &TrainState) -> Result<(), TrainError> {
    model.check_adapter(&state.lora, &state.params).map_err(TrainError::from)
}

/// Checks every datum against the model and reads its targets; `data` are the request's datums
/// `first_datum..`, which is how errors number them.
fn validate<B: Backend>(
    model: &Model<B>,
    data: &[Datum],
    loss: &LossFn,
    first_datum: usize,
) -> Result<Vec<Targets>, TrainError> {
    if data.is_empty() {
        return Err(TrainError::NoData);
    }
    let vocab = model.config().vocab_size;
    let max = model.config().max_position_embeddings;
    let mut all = Vec::with_capacity(data.len());
    for (datum, d) in (first_datum..).zip(data) {
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

/// One run's datums in a pass: the batch's sequences `seqs`, which are datums `first_datum..` of
/// its request.
struct LossPiece<'a> {
    seqs: std::ops::Range<usize>,
    data: &'a [Datum],
    targets: &'a [Targets],
    loss: &'a LossFn,
    first_datum: usize,
}

/// Runs the loss on each datum of one run's `piece` over its slice of the forward's logprobs, and
/// writes the gradients into those rows of `dlogprobs (T, k_batch)`. Each datum's statistics are
/// merged, in order, into a copy of `metrics`, the running totals of the request's earlier
/// passes (empty for the first). MoE routing counts are over this run's own rows.
fn loss_pass(
    batch: &PackedBatch,
    fwd: &Forward,
    piece: &LossPiece<'_>,
    metrics: &Metrics,
    dlogprobs: &mut [f32],
) -> Result<PassOutput, TrainError> {
    let LossPiece { seqs, data, targets, loss, first_datum } = piece;
    let k_batch = batch.k;
    assert_eq!(fwd.logprobs.len(), batch.num_tokens() * k_batch, "forward logprobs are (T, k)");
    assert_eq!(dlogprobs.len(), fwd.logprobs.len(), "dlogprobs are (T, k)");
    assert_eq!(seqs.len(), data.len(), "one sequence per datum");
    let mut output =
        PassOutput { logprobs: Vec::new(), elementwise_loss: Vec::new(), metrics: metrics.clone(), moe: Vec::new() };
    let mut grads = Vec::with_capacity(data.len());
    for (datum, ((d, t), seq)) in (*first_datum..).zip(data.iter().zip(targets.iter()).zip(seqs.clone())) {
        let rows = batch.seq_range(seq);
        assert_eq!(rows.len(), t.n);
        let mut lp = Vec::with_capacity(t.n * t.k); // (n, k)
        for row in rows.clone() {
            lp.extend_from_slice(&fwd.logprobs[row * k_batch..row * k_batch + t.k]);
        }
        let DatumLoss { elementwise, dlogprobs: dlp, metrics: m, .. } = loss.compute(datum, &lp, &d.loss_fn_inputs)?;
        grads.push((rows, dlp));
        output.metrics.merge(&m);
        output.logprobs.push(lp);
        output.elementwise_loss.push(elementwise);
    }
    // Written only once every datum's loss succeeded, so a failed run leaves its rows at zero.
    for ((rows, dlp), t) in grads.into_iter().zip(targets.iter()) {
        for (i, row) in rows.enumerate() {
            dlogprobs[row * k_batch..row * k_batch + t.k].copy_from_slice(&dlp[i * t.k..(i + 1) * t.k]);
        }
    }
    output.moe = fwd.moe_expert_counts_of(batch.cu_seqlens[seqs.start]..batch.cu_seqlens[seqs.end]);
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
