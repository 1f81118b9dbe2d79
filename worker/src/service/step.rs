//! Multi-tenant steps (`ToWorker::ForwardBackwardMany`): the forward(_backward) requests of many
//! training runs, checked one by one, then run as one packed pass per base model
//! (`train::step_many`), each run through its own adapter into its own gradients. Every item is
//! answered as if it had come alone; a bad item fails alone. A lone `ForwardBackward` is the
//! one-item case.
//!
//! Memory: a pass's activations must fit in what the budget leaves free
//! (`Model::step_bytes_per_token`). Items that do not fit together run in several passes; an item
//! too big on its own is refused as a user error before anything is allocated.

use std::collections::{BTreeMap, BTreeSet};

use runtime::control::{FbRequest, FromWorker};

use super::error::ServiceError;
use super::memory::{refusal, Need};
use super::{convert, WorkerService};
use crate::loss::LossFn;
use crate::optim::TrainState;
use crate::train::{step_many, Datum, StepItem};

/// One item, checked and converted, waiting for its pass.
struct Prepared {
    /// Position in the request.
    index: usize,
    run: String,
    data: Vec<Datum>,
    loss: LossFn,
    backward: bool,
    /// Transient bytes its share of a pass needs.
    step_bytes: u64,
    tokens: usize,
}

/// Groups `items` in order into passes of at most `free_bytes` each (a pass closes when the next
/// item would overflow it); items bigger than `free_bytes` alone come back separately.
fn split_passes(items: Vec<Prepared>, free_bytes: u64) -> (Vec<Vec<Prepared>>, Vec<Prepared>) {
    let (mut passes, mut too_big) = (Vec::new(), Vec::new());
    let (mut pass, mut pass_bytes) = (Vec::new(), 0u64);
    for p in items {
        if p.step_bytes > free_bytes {
            too_big.push(p);
            continue;
        }
        if pass_bytes + p.step_bytes > free_bytes && !pass.is_empty() {
            passes.push(std::mem::take(&mut pass));
            pass_bytes = 0;
        }
        pass_bytes += p.step_bytes;
        pass.push(p);
    }
    if !pass.is_empty() {
        passes.push(pass);
    }
    (passes, too_big)
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
            for pass in self.passes(group, &mut replies) {
                self.run_pass(&base, pass, &mut replies);
            }
        }
        FromWorker::Each(replies.into_iter().map(|r| r.expect("every item was answered")).collect())
    }

    /// Splits one base model's items into passes whose activations fit the free budget; items too
    /// big alone are answered with the refusal.
    fn passes(&self, group: Vec<Prepared>, replies: &mut [Option<FromWorker>]) -> Vec<Vec<Prepared>> {
        let report = self.memory_report();
        let (Some(budget), Some(free)) = (report.budget_bytes, report.free_bytes) else {
            return vec![group];
        };
        let (passes, too_big) = split_passes(group, free);
        for p in too_big {
            let need = Need::Step { run: p.run.clone(), tokens: p.tokens, bytes: p.step_bytes };
            replies[p.index] = Some(refusal(need, budget, &report).into_reply());
        }
        passes
    }

    /// One packed pass over `group` (runs of base model `base`).
    fn run_pass(&mut self, base: &str, group: Vec<Prepared>, replies: &mut [Option<FromWorker>]) {
        let Some(served) = self.models.get(base) else {
            // Runs are only ever created on served models; answer rather than panic anyway.
            for p in &group {
                let served = self.models.keys().cloned().collect::<Vec<_>>().join(", ");
                let e = ServiceError::UnknownBaseModel { name: base.to_string(), served };
                replies[p.index] = Some(e.into_reply());
            }
            return;
        };
        let names: BTreeSet<&str> = group.iter().map(|p| p.run.as_str()).collect();
        let mut states: BTreeMap<&str, &mut TrainState> = self
            .runs
            .iter_mut()
            .filter(|(name, _)| names.contains(name.as_str()))
            .map(|(name, r)| (name.as_str(), &mut r.state))
            .collect();
        let mut step: Vec<StepItem<'_>> = Vec::with_capacity(group.len());
        for p in &group {
            let state = states.remove(p.run.as_str()).expect("prepare found the run, and each run is in one item");
            step.push(StepItem { state, data: &p.data, loss: &p.loss, backward: p.backward });
        }
        let results = step_many(&served.model, &mut step);
        for (p, r) in group.iter().zip(results) {
            replies[p.index] = Some(match r {
                Ok(out) => FromWorker::ForwardBackward(convert::outputs(&p.data, out)),
                Err(e) => ServiceError::from(e).into_reply(),
            });
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
        let tokens: usize = data.iter().map(|d| d.tokens.len()).sum();
        let step_bytes = tokens as u64 * model.step_bytes_per_token(r.state.lora.rank);
        Ok((base, Prepared { index, run, data, loss, backward: !forward_only, step_bytes, tokens }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn prepared(index: usize, step_bytes: u64) -> Prepared {
        let loss = LossFn::parse("cross_entropy", &BTreeMap::new()).expect("a known loss");
        Prepared { index, run: format!("r{index}"), data: Vec::new(), loss, backward: true, step_bytes, tokens: 1 }
    }

    fn indices(passes: &[Vec<Prepared>]) -> Vec<Vec<usize>> {
        passes.iter().map(|p| p.iter().map(|x| x.index).collect()).collect()
    }

    #[test]
    fn items_fill_passes_in_order_up_to_the_free_bytes_and_oversized_ones_are_set_aside() {
        let items = [40, 50, 20, 101, 30, 100, 1].iter().enumerate().map(|(i, &b)| prepared(i, b)).collect();
        let (passes, too_big) = split_passes(items, 100);
        assert_eq!(indices(&passes), vec![vec![0, 1], vec![2, 4], vec![5], vec![6]]);
        assert_eq!(too_big.iter().map(|p| p.index).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn everything_fits_in_one_pass_when_there_is_room() {
        let items = (0..5).map(|i| prepared(i, 10)).collect();
        let (passes, too_big) = split_passes(items, 50);
        assert_eq!(indices(&passes), vec![vec![0, 1, 2, 3, 4]]);
        assert!(too_big.is_empty());
    }
}
