//! Gradient hand-off between the replicas of a data-parallel chain (`ToWorker::GetGrads` /
//! `ToWorker::SetGrads`): a run's accumulated gradients read out as one flat [`GradBuffer`], or
//! replaced by one.
//!
//! Why this is enough for an exact chain: `forward_backward` adds each sequence's weight gradient
//! into the run's buffer in sequence order (see `train`), so replica `i + 1` continuing from
//! replica `i`'s buffer over the next datums performs the very additions one worker would over
//! all of them. The copy itself is the f32 bits, untouched.
//!
//! Layout (documented on [`GradBuffer`]): sites in ascending path order, which is the order of
//! `LoraWeights::sites` (a `BTreeMap`), A then B per site, row-major. It depends only on the
//! run's base model and LoRA config, so replicas made by the same `CreateRun` share it.

use runtime::control::{FromWorker, GradBuffer};

use super::error::ServiceError;
use super::WorkerService;
use crate::adapter::LoraWeights;

impl WorkerService {
    /// `GetGrads`: the run's accumulated gradients, flattened.
    pub(super) fn get_grads(&self, run: &str) -> Result<FromWorker, ServiceError> {
        let r = self.runs.get(run).ok_or_else(|| ServiceError::UnknownRun { run: run.to_string() })?;
        Ok(FromWorker::Grads(GradBuffer { values: flatten(&r.state.grads) }))
    }

    /// `SetGrads`: replaces the run's accumulated gradients. The length is checked before anything
    /// is written, so a refused buffer leaves the run exactly as it was.
    pub(super) fn set_grads(&mut self, run: &str, grads: &GradBuffer) -> Result<FromWorker, ServiceError> {
        let r = self.runs.get_mut(run).ok_or_else(|| ServiceError::UnknownRun { run: run.to_string() })?;
        let want = r.state.grads.numel();
        if grads.values.len() != want {
            return Err(ServiceError::GradBufferLength { run: run.to_string(), got: grads.values.len(), want });
        }
        overwrite(&mut r.state.grads, &grads.values);
        Ok(FromWorker::Done)
    }
}

/// Every value of `w`, sites in map order, A then B each.
fn flatten(w: &LoraWeights) -> Vec<f32> {
    let mut values = Vec::with_capacity(w.numel());
    for pair in w.sites.values() {
        values.extend_from_slice(&pair.a);
        values.extend_from_slice(&pair.b);
    }
    values
}

/// The inverse of [`flatten`], in place.
///
/// # Panics
/// When `values` does not hold exactly `w.numel()` values (the caller checks first).
fn overwrite(w: &mut LoraWeights, values: &[f32]) {
    assert_eq!(values.len(), w.numel(), "a gradient buffer holds exactly the run's values");
    let mut rest = values;
    for pair in w.sites.values_mut() {
        for factor in [&mut pair.a, &mut pair.b] {
            let (head, tail) = rest.split_at(factor.len());
            factor.copy_from_slice(head);
            rest = tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::LoraPair;

    /// Two sites whose names sort opposite to insertion, with distinct values everywhere.
    fn weights() -> LoraWeights {
        let mut w = LoraWeights::default();
        w.sites.insert("z".into(), LoraPair::zeros(3, 2, 1));
        w.sites.insert("a".into(), LoraPair::zeros(2, 1, 2));
        let mut next = 0.0f32;
        for pair in w.sites.values_mut() {
            for x in pair.a.iter_mut().chain(pair.b.iter_mut()) {
                next += 1.0;
                *x = next;
            }
        }
        w
    }

    #[test]
    fn the_flat_layout_is_sites_in_path_order_a_then_b() {
        let w = weights();
        let a = w.get("a").unwrap();
        let z = w.get("z").unwrap();
        let want: Vec<f32> = [&a.a, &a.b, &z.a, &z.b].into_iter().flatten().copied().collect();
        assert_eq!(flatten(&w), want);
        assert_eq!(want, (1..=11).map(|i| i as f32).collect::<Vec<_>>(), "filled in map order");
    }

    #[test]
    fn overwriting_with_a_flattened_buffer_gives_back_the_same_bits() {
        let src = weights();
        let mut dst = src.zeros_like();
        overwrite(&mut dst, &flatten(&src));
        assert_eq!(dst, src);
    }
}
