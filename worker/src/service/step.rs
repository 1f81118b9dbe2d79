//! Multi-tenant steps (`ToWorker::ForwardBackwardMany`): the forward(_backward) requests of many
//! training runs, checked one by one, then run as one packed pass per base model
//! (`train::step_many`), each run through its own adapter into its own gradients. Every item is
//! answered as if it had come alone; a bad item fails alone.

use std::collections::{BTreeMap, BTreeSet};

use runtime::control::{FbRequest, FromWorker};

use super::error::ServiceError;
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
}

impl WorkerService {
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
            let Some(served) = self.models.get(&base) else {
                // Runs are only ever created on served models; answer rather than panic anyway.
                for p in &group {
                    let served = self.models.keys().cloned().collect::<Vec<_>>().join(", ");
                    let e = ServiceError::UnknownBaseModel { name: base.clone(), served };
                    replies[p.index] = Some(e.into_reply());
                }
                continue;
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
        FromWorker::Each(replies.into_iter().map(|r| r.expect("every item was answered")).collect())
    }

    /// Checks that `item`'s run exists and converts its loss and data; returns the run's base model.
    fn prepare(&self, index: usize, item: FbRequest) -> Result<(String, Prepared), ServiceError> {
        let FbRequest { run, data, loss_fn, loss_config, forward_only } = item;
        let r = self.runs.get(&run).ok_or_else(|| ServiceError::UnknownRun { run: run.clone() })?;
        let loss = LossFn::parse(&loss_fn, &loss_config)?;
        let data = data.into_iter().enumerate().map(|(i, d)| convert::datum(i, d)).collect::<Result<Vec<_>, _>>()?;
        let base = r.base_model.clone();
        Ok((base, Prepared { index, run, data, loss, backward: !forward_only }))
    }
}
