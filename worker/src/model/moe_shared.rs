//! The shared factors of a sparse layer's expert LoRA sites (gate_proj's and up_proj's A, down_proj's
//! B: one matrix that every expert of the layer uses) reduced per sequence, like every other
//! weight gradient (the `kernels::Backend` contract).
//!
//! Why a buffer per sequence: a sequence's rows reach several experts, and each expert's backward
//! runs on the rows of every sequence routed to it. Adding each expert's reduction straight into
//! the gradient would order the additions expert by expert across the whole pass, so the result
//! would depend on which sequences share the pass: a request split over consecutive passes, or
//! over the replicas of a data-parallel chain, would round differently from one pass. Instead each
//! expert adds each sequence's contribution into that sequence's own sum (experts in order), and
//! only after the last expert are the sums added into the gradient, sequences in order. A sum
//! depends on its sequence alone, so passes over consecutive sequences add exactly what one does.
//!
//! Memory: one sum of the shared factor's size per sequence of a tenant with gradients, for one
//! layer at a time (`Model::step_bytes_per_token` counts it per token, a sequence having at least
//! one).

use super::backward::{GradTargets, Segments};
use super::tenants::SitePart;

/// The expert slot whose shared factor is B (down_proj: `B (H, r)` maps every expert's rank-space
/// output back to the hidden size); the other slots (gate_proj, up_proj) share A `(r, H)`.
pub(crate) const SHARED_B_SLOT: usize = 2;

/// One tenant's sums at one slot: `values (seqs, len)`, row `s` the sum of its sequence `s`.
struct SeqSums {
    span: usize,
    len: usize,
    values: Vec<f32>,
}

/// A sparse layer's shared-factor sums, per expert slot (gate, up, down) and tenant with gradients.
pub(crate) struct SharedSums {
    slots: [Vec<SeqSums>; 3],
}

impl SharedSums {
    /// Zeroed sums for every tenant that takes gradients and adapts the slot's site.
    pub fn new(parts: &[Vec<SitePart<'_>>; 3], gt: &GradTargets<'_, '_>, seg: &Segments<'_>) -> Self {
        let slots = std::array::from_fn(|slot| {
            parts[slot]
                .iter()
                .filter(|part| gt.grads[part.span].is_some())
                .map(|part| {
                    let len = if slot == SHARED_B_SLOT { part.pair.b.len() } else { part.pair.a.len() };
                    let seqs = seg.tenants[part.span].len() - 1;
                    SeqSums { span: part.span, len, values: vec![0.0; seqs * len] }
                })
                .collect()
        });
        SharedSums { slots }
    }

    /// The sum of tenant `span`'s sequence `seq` (numbered within the tenant) at `slot`.
    ///
    /// # Panics
    /// When the tenant takes no gradients or does not adapt the slot (no sum was made for it).
    pub fn seq_mut(&mut self, slot: usize, span: usize, seq: usize) -> &mut [f32] {
        let sums = self.slots[slot].iter_mut().find(|s| s.span == span).expect("a sum for every tenant with gradients");
        &mut sums.values[seq * sums.len..(seq + 1) * sums.len]
    }

    /// Adds every sequence's sum into its tenant's shared factor gradient at `paths[slot]`,
    /// sequences in order.
    pub fn add_into(self, gt: &mut GradTargets<'_, '_>, paths: [&str; 3]) {
        for (slot, tenants) in self.slots.into_iter().enumerate() {
            for sums in tenants {
                let grads = gt.grads[sums.span].as_deref_mut().expect("sums are made only for tenants with gradients");
                let pair = grads.get_mut(paths[slot]).expect("gradient sites were checked against the adapter's");
                let shared = if slot == SHARED_B_SLOT { &mut pair.b } else { &mut pair.a };
                assert_eq!(shared.len(), sums.len, "a sum has its shared factor's size");
                for seq in sums.values.chunks_exact(sums.len) {
                    for (g, s) in shared.iter_mut().zip(seq) {
                        *g += *s;
                    }
                }
            }
        }
    }
}
