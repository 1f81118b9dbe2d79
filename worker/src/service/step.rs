//! Multi-tenant steps (`ToWorker::ForwardBackwardMany`): the forward(_backward) requests of many
//! training runs, checked one by one, then run as packed passes per base model
//! (`train::step_pass`), each run through its own adapter into its own gradients. Every item is
//! answered as if it had come alone; a bad item fails alone. A lone `ForwardBackward` is the
//! one-item case.
//!
//! Memory: a pass's activations must fit in what the budget leaves free
//! (`Model::step_bytes_per_token`). Items that do not fit together run in separate passes. An item
//! too big for one pass on its own is split: consecutive pieces of its datums run as consecutive
//! passes of their own, adding into the same gradients and the same running statistics, so its
//! reply and gradients are what one pass would give (see `train` for why that is exact). While a
//! split forward_backward runs, a copy of its run's gradients is held, and counted, so that a piece
//! failing after earlier pieces added theirs can put the run back exactly as it was. Only a datum
//! too big on its own is refused, as a user error, before anything is allocated.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use runtime::control::{FbRequest, FromWorker};

use super::error::ServiceError;
use super::memory::{refusal, weights_bytes, Need};
use super::{convert, WorkerService};
use crate::adapter::LoraWeights;
use crate::loss::LossFn;
use crate::optim::TrainState;
use crate::train::{step_pass, Datum, FbPartial, PassItem, StepItem};

/// One item, checked and converted, waiting for its passes.
struct Prepared {
    /// Position in the request.
    index: usize,
    run: String,
    data: Vec<Datum>,
    loss: LossFn,
    backward: bool,
    /// Transient bytes each datum's share of a pass needs, `(datums)`.
    datum_bytes: Vec<u64>,
    /// What a copy of the run's gradients holds (kept while a split forward_backward runs).
    grads_bytes: u64,
}

impl Prepared {
    /// The bytes held besides the activations while this item runs split: the gradient copy,
    /// which only a forward_backward needs (a forward adds no gradients).
    fn split_reserve_bytes(&self) -> u64 {
        if self.backward {
            self.grads_bytes
        } else {
            0
        }
    }
}

/// Datums `datums` of the group's item `item`: that item's share of one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Piece {
    item: usize,
    datums: Range<usize>,
}

/// How one base model's items run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// The passes in order. An item split into pieces has each piece in a pass of its own, and its
    /// pieces in consecutive passes, in datum order.
    passes: Vec<Vec<Piece>>,
    /// `(item, datum)`: items refused because their datum `datum` alone does not fit.
    refused: Vec<(usize, usize)>,
}

/// What planning reads of one item.
struct Sizes<'a> {
    datum_bytes: &'a [u64],
    split_reserve_bytes: u64,
}

/// Plans `items`, in order, into passes of at most `free_bytes` each: an item that fits joins the
/// open pass (which closes first when the item would overflow it); an item that does not is split
/// greedily into pieces that each fit next to its `split_reserve_bytes`; an item with a datum that
/// cannot fit even alone is refused.
fn plan(items: &[Sizes<'_>], free_bytes: u64) -> Plan {
    let mut plan = Plan::default();
    let (mut pass, mut pass_bytes) = (Vec::new(), 0u64);
    for (item, s) in items.iter().enumerate() {
        let total = s.datum_bytes.iter().fold(0u64, |t, &b| t.saturating_add(b));
        let n = s.datum_bytes.len();
        if total <= free_bytes {
            if pass_bytes.saturating_add(total) > free_bytes && !pass.is_empty() {
                plan.passes.push(std::mem::take(&mut pass));
                pass_bytes = 0;
            }
            pass_bytes += total;
            pass.push(Piece { item, datums: 0..n });
            continue;
        }
        let room = free_bytes.saturating_sub(s.split_reserve_bytes);
        if let Some(datum) = s.datum_bytes.iter().position(|&b| b > room) {
            plan.refused.push((item, datum));
            continue;
        }
        if !pass.is_empty() {
            plan.passes.push(std::mem::take(&mut pass));
            pass_bytes = 0;
        }
        let (mut start, mut bytes) = (0, 0u64);
        for (d, &b) in s.datum_bytes.iter().enumerate() {
            if bytes + b > room && d > start {
                plan.passes.push(vec![Piece { item, datums: start..d }]);
                (start, bytes) = (d, 0);
            }
            bytes += b;
        }
        plan.passes.push(vec![Piece { item, datums: start..n }]);
    }
    if !pass.is_empty() {
        plan.passes.push(pass);
    }
    plan
}

/// One item's progress through its passes.
#[derive(Default)]
struct Progress {
    acc: FbPartial,
    /// The run's gradients before the item's first piece, while a split forward_backward runs.
    grads_before: Option<LoraWeights>,
    failed: Option<ServiceError>,
}

impl WorkerService {
    /// One run's `ForwardBackward`: the one-item step.
    pub(super) fn forward_backward_one(&mut self, item: FbRequest) -> FromWorker {
        match self.forward_backward_many(vec![item]) {
            FromWorker::Each(mut replies) if replies.len() == 1 => replies.remove(0),
            other => other,
        }
    }

    pub(super) fn forward_backward_many(&mut self, items: Vec<FbRequest>) -> FromWorker {
        let mut replies: Vec<Option<FromWorker>> = vec![None; items.len()];
        let mut by_base: BTreeMap<String, Vec<Prepared>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (index, item) in items.into_iter().enumerate() {
            if !seen.insert(item.run.clone()) {
                replies[index] = Some(ServiceError::RunTwiceInStep { run: item.run }.into_reply());
                continue;
            }
            match self.prepare(index, item) {
                Ok((base, p)) => by_base.entry(base).or_default().push(p),
                Err(e) => replies[index] = Some(e.into_reply()),
            }
        }
        for (base, group) in by_base {
            self.run_group(&base, group, &mut replies);
        }
        FromWorker::Each(replies.into_iter().map(|r| r.expect("every item was answered")).collect())
    }

    /// Plans one base model's items against the free budget, refuses those with a datum too big
    /// alone, runs the passes, and answers every item.
    fn run_group(&mut self, base: &str, group: Vec<Prepared>, replies: &mut [Option<FromWorker>]) {
        let report = self.memory_report();
        let sizes: Vec<Sizes<'_>> = group
            .iter()
            .map(|p| Sizes { datum_bytes: &p.datum_bytes, split_reserve_bytes: p.split_reserve_bytes() })
            .collect();
        let plan = plan(&sizes, report.free_bytes.unwrap_or(u64::MAX));
        let mut refused = vec![false; group.len()];
        for &(item, datum) in &plan.refused {
            let p = &group[item];
            let need = Need::Step {
                run: p.run.clone(),
                datum,
                tokens: p.data[datum].tokens.len(),
                bytes: p.datum_bytes[datum],
                gradient_copy_bytes: if p.data.len() > 1 { p.split_reserve_bytes() } else { 0 },
            };
            // Only a budget refuses: without one everything fits.
            replies[p.index] = Some(refusal(need, report.budget_bytes.unwrap_or(u64::MAX), &report).into_reply());
            refused[item] = true;
        }
        let mut progress: Vec<Progress> = group.iter().map(|_| Progress::default()).collect();
        for pass in &plan.passes {
            self.run_pass(base, &group, pass, &mut progress);
        }
        for ((p, prog), refused) in group.iter().zip(progress).zip(refused) {
            if refused {
                continue;
            }
            replies[p.index] = Some(match prog.failed {
                Some(e) => e.into_reply(),
                None => {
                    assert_eq!(prog.acc.datums(), p.data.len(), "every datum of an item that did not fail ran");
                    FromWorker::ForwardBackward(convert::outputs(&p.data, prog.acc.finish()))
                }
            });
        }
    }

    /// One packed pass over `pass`'s pieces of `group` (runs of base model `base`); an item that
    /// already failed in an earlier pass skips the rest of its pieces.
    fn run_pass(&mut self, base: &str, group: &[Prepared], pass: &[Piece], progress: &mut [Progress]) {
        let Some(served) = self.models.get(base) else {
            // Runs are only ever created on served models; answer rather than panic anyway.
            let served = self.models.keys().cloned().collect::<Vec<_>>().join(", ");
            for piece in pass {
                let e = ServiceError::UnknownBaseModel { name: base.to_string(), served: served.clone() };
                progress[piece.item].failed.get_or_insert(e);
            }
            return;
        };
        let pieces: Vec<&Piece> = pass.iter().filter(|piece| progress[piece.item].failed.is_none()).collect();
        let names: BTreeSet<&str> = pieces.iter().map(|piece| group[piece.item].run.as_str()).collect();
        assert_eq!(names.len(), pieces.len(), "a run has at most one piece in a pass");
        let mut states: BTreeMap<&str, &mut TrainState> = self
            .runs
            .iter_mut()
            .filter(|(name, _)| names.contains(name.as_str()))
            .map(|(name, r)| (name.as_str(), &mut r.state))
            .collect();
        let mut steps: Vec<StepItem<'_>> = Vec::with_capacity(pieces.len());
        for piece in &pieces {
            let p = &group[piece.item];
            let state = states.remove(p.run.as_str()).expect("prepare found the run, and each run is in one item");
            let split = piece.datums.len() < p.data.len();
            if split && piece.datums.start == 0 && p.backward {
                progress[piece.item].grads_before = Some(state.grads.clone());
            }
            steps.push(StepItem { state, data: &p.data[piece.datums.clone()], loss: &p.loss, backward: p.backward });
        }
        // Pieces come in item order, one per item at most, so the accumulators line up with them.
        assert!(pieces.windows(2).all(|w| w[0].item < w[1].item), "a pass lists its items in order");
        let in_pass: BTreeSet<usize> = pieces.iter().map(|piece| piece.item).collect();
        let accs = progress.iter_mut().enumerate().filter(|(i, _)| in_pass.contains(i)).map(|(_, p)| &mut p.acc);
        let mut items: Vec<PassItem<'_, '_>> = steps
            .iter_mut()
            .zip(accs)
            .zip(&pieces)
            .map(|((step, acc), piece)| PassItem { step, first_datum: piece.datums.start, acc })
            .collect();
        let results = step_pass(&served.model, &mut items);
        drop(items);
        drop(steps);
        for (piece, result) in pieces.iter().zip(results) {
            let (p, prog) = (&group[piece.item], &mut progress[piece.item]);
            match result {
                Ok(()) if piece.datums.end == p.data.len() => prog.grads_before = None,
                Ok(()) => {}
                Err(e) => {
                    prog.failed = Some(ServiceError::from(e));
                    if let Some(grads) = prog.grads_before.take() {
                        // Earlier pieces added their gradients: put the run back as it was.
                        let run = self.runs.get_mut(&p.run).expect("the run stepped in this pass");
                        run.state.grads = grads;
                    }
                }
            }
        }
    }

    /// Checks that `item`'s run exists and converts its loss and data; returns the run's base model.
    fn prepare(&self, index: usize, item: FbRequest) -> Result<(String, Prepared), ServiceError> {
        let FbRequest { run, data, loss_fn, loss_config, forward_only } = item;
        let r = self.runs.get(&run).ok_or_else(|| ServiceError::UnknownRun { run: run.clone() })?;
        let loss = LossFn::parse(&loss_fn, &loss_config)?;
        let data = data.into_iter().enumerate().map(|(i, d)| convert::datum(i, d)).collect::<Result<Vec<_>, _>>()?;
        let base = r.base_model.clone();
        let model = &super::served(&self.models, &base)?.model;
        let per_token = model.step_bytes_per_token(r.state.lora.rank);
        let datum_bytes = data.iter().map(|d| d.tokens.len() as u64 * per_token).collect();
        let grads_bytes = weights_bytes(&r.state.grads);
        Ok((base, Prepared { index, run, data, loss, backward: !forward_only, datum_bytes, grads_bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(datum_bytes: &[Vec<u64>], reserve: u64) -> Vec<Sizes<'_>> {
        datum_bytes.iter().map(|d| Sizes { datum_bytes: d, split_reserve_bytes: reserve }).collect()
    }

    fn pieces(plan: &Plan) -> Vec<Vec<(usize, Range<usize>)>> {
        plan.passes.iter().map(|pass| pass.iter().map(|p| (p.item, p.datums.clone())).collect()).collect()
    }

    #[test]
    fn items_fill_passes_in_order_up_to_the_free_bytes() {
        let items = [40, 50, 20, 30, 100, 1].map(|b| vec![b]).to_vec();
        let planned = plan(&sizes(&items, 0), 100);
        let want = vec![vec![(0, 0..1), (1, 0..1)], vec![(2, 0..1), (3, 0..1)], vec![(4, 0..1)], vec![(5, 0..1)]];
        assert_eq!(pieces(&planned), want);
        assert!(planned.refused.is_empty());
        let everything = plan(&sizes(&vec![vec![10, 10]; 5], 0), 100);
        assert_eq!(pieces(&everything), vec![(0..5).map(|i| (i, 0..2)).collect::<Vec<_>>()]);
    }

    #[test]
    fn an_item_too_big_for_one_pass_is_split_at_datum_boundaries_into_passes_of_its_own() {
        // Item 1 (150 bytes) does not fit 100: pieces of at most 100 - 20 (its gradient copy).
        let items = vec![vec![30], vec![40, 40, 30, 40], vec![10]];
        let planned = plan(&sizes(&items, 20), 100);
        assert_eq!(pieces(&planned), vec![vec![(0, 0..1)], vec![(1, 0..2)], vec![(1, 2..4)], vec![(2, 0..1)]]);
        assert!(planned.refused.is_empty());
    }

    #[test]
    fn only_an_item_with_a_datum_too_big_alone_is_refused() {
        // Item 1 (110) must split, and its second datum (90) fits 100 but not next to its gradient
        // copy (20); item 2's 101 fits nowhere. Item 3 is too big as a whole only.
        let items = vec![vec![5], vec![20, 90], vec![101], vec![60, 60]];
        let planned = plan(&sizes(&items, 20), 100);
        assert_eq!(planned.refused, vec![(1, 1), (2, 0)]);
        assert_eq!(pieces(&planned), vec![vec![(0, 0..1)], vec![(3, 0..1)], vec![(3, 1..2)]]);
    }
}
