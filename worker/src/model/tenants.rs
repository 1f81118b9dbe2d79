//! Many adapters over one batch (multi-tenant steps, design §3): the batch's sequences are split
//! into consecutive spans, one per tenant (a training run), and every adapted projection runs one
//! base matmul over all rows, then applies each span's own LoRA pair to that span's rows alone —
//! a grouped GEMM over segments. A single-adapter forward is the one-span case.
//!
//! Why a tenant's results cannot depend on its neighbours: the base ops are row-invariant, each
//! span's LoRA ops see exactly the rows (and, in backward, the per-sequence segments) they would
//! see in a batch of their own, and each span's gradients go to that tenant's buffers only.

use std::ops::Range;

use runtime::LoraConfig;

use super::lora::{LoraView, LM_HEAD, PROJS};
use super::{Model, ModelError, PackedBatch};
use crate::adapter::{LoraPair, LoraWeights};
use kernels::Backend;

/// One tenant of a multi-adapter batch: the next `seqs` sequences of the batch use `lora`
/// (`None`: the base model alone).
#[derive(Clone, Copy, Debug)]
pub struct Tenant<'a> {
    pub seqs: usize,
    pub lora: Option<(&'a LoraConfig, &'a LoraWeights)>,
}

/// One tenant resolved against the batch: its token rows, its sequences, its adapter.
#[derive(Clone, Debug)]
pub(crate) struct Span<'a> {
    pub rows: Range<usize>,
    pub seqs: Range<usize>,
    pub view: LoraView<'a>,
}

/// Every tenant of one batch, spans in batch order covering all rows.
#[derive(Clone, Debug)]
pub(crate) struct Adapters<'a> {
    pub spans: Vec<Span<'a>>,
}

/// An adaptable site: projection `proj` of decoder layer `layer`, or the unembedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Site {
    Proj { layer: usize, proj: usize },
    LmHead,
}

/// Where one span's adapter applies at one site: its rows, its pair and scale, and its slice of
/// the site's saved `x·Aᵀ` buffer (spans with a pair here, laid end to end, each `(rows, rank)`).
#[derive(Clone, Debug)]
pub(crate) struct SitePart<'a> {
    pub span: usize,
    pub rows: Range<usize>,
    pub pair: &'a LoraPair,
    pub scale: f32,
    pub h: Range<usize>,
}

impl<'a> Adapters<'a> {
    /// One adapter (or none) over `rows` rows forming `seqs` sequences.
    pub fn single(view: LoraView<'a>, rows: usize, seqs: usize) -> Self {
        Adapters { spans: vec![Span { rows: 0..rows, seqs: 0..seqs, view }] }
    }

    /// Span `span`'s pair at `site`, if it adapts it.
    pub fn pair(&self, span: usize, site: Site) -> Option<&'a LoraPair> {
        let view = &self.spans[span].view;
        match site {
            Site::Proj { layer, proj } => view.layers[layer][proj],
            Site::LmHead => view.lm_head,
        }
    }

    /// The spans adapting `site`, in batch order, with their `x·Aᵀ` slices.
    pub fn parts(&self, site: Site) -> Vec<SitePart<'a>> {
        let mut h_at = 0;
        let mut parts = Vec::new();
        for (span, s) in self.spans.iter().enumerate() {
            if let Some(pair) = self.pair(span, site) {
                let len = s.rows.len() * pair.rank;
                parts.push(SitePart { span, rows: s.rows.clone(), pair, scale: s.view.scale, h: h_at..h_at + len });
                h_at += len;
            }
        }
        parts
    }

    /// Length of `site`'s saved `x·Aᵀ` buffer: Σ rows·rank over the spans adapting it.
    pub fn h_len(&self, site: Site) -> usize {
        self.parts(site).last().map_or(0, |p| p.h.end)
    }

    /// The `x·Aᵀ` lengths of a layer's projections, for its activation buffers.
    pub fn layer_h_lens(&self, layer: usize) -> [usize; PROJS] {
        std::array::from_fn(|proj| self.h_len(Site::Proj { layer, proj }))
    }
}

/// `parts` of a site moved onto a gathered subset of the batch's rows (an expert's tokens,
/// ascending): each part keeps the gathered positions of its own rows, and its `x·Aᵀ` slice is
/// re-laid for those positions. Parts left with no rows are dropped.
pub(crate) fn gather_parts<'a>(parts: &[SitePart<'a>], gathered: &[usize]) -> Vec<SitePart<'a>> {
    let mut h_at = 0;
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let start = gathered.partition_point(|&r| r < p.rows.start);
        let end = gathered.partition_point(|&r| r < p.rows.end);
        if start == end {
            continue;
        }
        let len = (end - start) * p.pair.rank;
        out.push(SitePart { span: p.span, rows: start..end, pair: p.pair, scale: p.scale, h: h_at..h_at + len });
        h_at += len;
    }
    out
}

impl<B: Backend> Model<B> {
    /// Resolves `tenants` against `batch`: consecutive sequences, every one covered once, each
    /// adapter checked against this model.
    ///
    /// # Errors
    /// `ModelError::Tenants` when the tenants' sequence counts are 0 or do not add up to the
    /// batch's; `ModelError::LoraMismatch` for an adapter that does not fit.
    pub(crate) fn adapters<'a>(&self, batch: &PackedBatch, tenants: &[Tenant<'a>]) -> Result<Adapters<'a>, ModelError> {
        let counts: Vec<usize> = tenants.iter().map(|t| t.seqs).collect();
        if tenants.is_empty() || counts.contains(&0) || counts.iter().sum::<usize>() != batch.num_seqs() {
            return Err(ModelError::Tenants { counts, seqs: batch.num_seqs() });
        }
        let mut spans = Vec::with_capacity(tenants.len());
        let mut seq = 0;
        for t in tenants {
            let seqs = seq..seq + t.seqs;
            let rows = batch.cu_seqlens[seqs.start]..batch.cu_seqlens[seqs.end];
            spans.push(Span { rows, seqs: seqs.clone(), view: self.lora_view(t.lora)? });
            seq = seqs.end;
        }
        Ok(Adapters { spans })
    }
}

/// The site's path for gradient lookup: a layer projection's HF module path, or `lm_head`.
pub(crate) fn site_path(paths: &super::lora::SitePaths, site: Site) -> &str {
    match site {
        Site::Proj { layer, proj } => &paths.layers[layer][proj],
        Site::LmHead => LM_HEAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::LoraPair;

    #[test]
    fn gathered_parts_keep_each_spans_rows_and_relay_their_slices() {
        let (p2, p3) = (LoraPair::zeros(4, 4, 2), LoraPair::zeros(4, 4, 3));
        let parts = vec![
            SitePart { span: 0, rows: 0..3, pair: &p2, scale: 1.0, h: 0..6 },
            SitePart { span: 1, rows: 3..5, pair: &p2, scale: 1.0, h: 6..10 },
            SitePart { span: 2, rows: 5..9, pair: &p3, scale: 0.5, h: 10..22 },
        ];
        // Rows 1 and 2 of span 0, none of span 1, rows 6 and 8 of span 2.
        let got = gather_parts(&parts, &[1, 2, 6, 8]);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].span, got[0].rows.clone(), got[0].h.clone()), (0, 0..2, 0..4));
        assert_eq!((got[1].span, got[1].rows.clone(), got[1].h.clone()), (2, 2..4, 4..10));
    }
}
