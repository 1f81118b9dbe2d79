//! Generation with a KV cache: prefill the prompt once with the training forward, then decode one
//! token per step for every live sample, each against its own cache. Token choice (temperature,
//! top-k, top-p) draws only from a per-sample `Rng` derived from `SampleParams::seed`.
//!
//! Each returned logprob is the model's temperature-1 log-softmax at the sampled token, computed
//! by the backend's `logsoftmax_gather_forward` on a logits row that is bit-identical to the full
//! pass's (row invariance), so it equals the trainer's logprob for that token bit for bit. The
//! optional top-k alternatives per sampled token come from the same op on the same row.
//!
//! Besides stop token ids, [`sample_with`] takes a caller's stop rule (the worker service uses it
//! for stop strings, which need a tokenizer this module knows nothing about).

use kernels::Backend;
use runtime::LoraConfig;

use crate::adapter::LoraWeights;
use crate::model::{KvCache, Model, ModelError};
use crate::rng::Rng;

/// How to choose tokens. No `Default`: callers name every value.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleParams {
    pub max_tokens: usize,
    /// 0 = greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; −1 = off (1 = greedy).
    pub top_k: i32,
    /// Keep the smallest most-likely set whose probability reaches `top_p`; 1 = off.
    pub top_p: f32,
    pub seed: u64,
    /// Generation ends after emitting any of these (the stop token is included in the output).
    pub stop_token_ids: Vec<u32>,
}

/// Why a sample ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was emitted.
    Stop,
    /// `max_tokens` were emitted.
    Length,
}

/// One generated continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledSequence {
    pub tokens: Vec<u32>,   // (n)
    pub logprobs: Vec<f32>, // (n) temperature-1 logprob of each sampled token
    pub stop_reason: StopReason,
    /// Per sampled token, its top-k alternatives `(id, temperature-1 logprob)`, best first; empty
    /// when no alternatives were asked for.
    pub topk_logprobs: Vec<Vec<(u32, f32)>>, // (n) × (k)
}

impl SampleParams {
    /// # Errors
    /// `ModelError::SampleParams` naming the first unusable field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field, why: String| Err(ModelError::SampleParams { field, why });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", format!("{} is not a finite number ≥ 0", self.temperature));
        }
        if self.top_k == 0 || self.top_k < -1 {
            return bad("top_k", format!("{} must be −1 (off) or ≥ 1", self.top_k));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        Ok(())
    }

    fn greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// Generates `num_samples` continuations of `prompt`, sample `i` drawing from
/// `Rng::derive(seed, "sample/{i}")`.
///
/// # Errors
/// `ModelError` for invalid params, an empty prompt, an id ≥ vocab, a prompt plus `max_tokens`
/// longer than `max_position_embeddings`, or an adapter that does not fit the model.
pub fn sample<B: Backend>(
    model: &Model<B>,
    lora: Option<(&LoraConfig, &LoraWeights)>,
    prompt: &[u32],
    params: &SampleParams,
    num_samples: usize,
) -> Result<Vec<SampledSequence>, ModelError> {
    sample_with(model, lora, prompt, params, num_samples, 0, |_| false)
}

/// [`sample`] with `topk` alternatives per sampled token (0 = none) and a caller's stop rule:
/// after each sampled token that is not a stop token, `stop_when(tokens so far)` is asked, and
/// `true` ends that sample with [`StopReason::Stop`] (the token is kept). It is called in sample
/// order within each step, so a stateful rule sees one sample's growth at a time.
///
/// # Errors
/// As [`sample`].
pub fn sample_with<B: Backend>(
    model: &Model<B>,
    lora: Option<(&LoraConfig, &LoraWeights)>,
    prompt: &[u32],
    params: &SampleParams,
    num_samples: usize,
    topk: usize,
    mut stop_when: impl FnMut(&[u32]) -> bool,
) -> Result<Vec<SampledSequence>, ModelError> {
    params.validate()?;
    if prompt.is_empty() {
        return Err(ModelError::EmptySequence { seq: 0 });
    }
    let max = model.config().max_position_embeddings;
    if prompt.len() + params.max_tokens > max {
        return Err(ModelError::SequenceTooLong { seq: 0, len: prompt.len() + params.max_tokens, max });
    }
    let view = model.lora_view(lora)?;
    let mut out: Vec<SampledSequence> = (0..num_samples)
        .map(|_| SampledSequence {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            stop_reason: StopReason::Length,
            topk_logprobs: Vec::new(),
        })
        .collect();
    if num_samples == 0 || params.max_tokens == 0 {
        model.check_tokens(prompt)?;
        return Ok(out);
    }
    let (prompt_cache, prompt_logits) = model.prefill(prompt, &view)?; // logits (V)
    let vocab = prompt_logits.len();
    let mut rngs: Vec<Rng> = (0..num_samples).map(|i| Rng::derive(params.seed, &format!("sample/{i}"))).collect();
    let mut caches: Vec<KvCache> = vec![prompt_cache; num_samples];
    let mut live: Vec<usize> = (0..num_samples).collect();
    let mut logits: Vec<f32> = Vec::new(); // (live, V) from the last decode step
    for step in 0..params.max_tokens {
        let mut fed = Vec::with_capacity(live.len());
        for (row, &i) in live.iter().enumerate() {
            let row_logits = if step == 0 { &prompt_logits[..] } else { &logits[row * vocab..(row + 1) * vocab] };
            let token = choose(row_logits, params, &mut rngs[i]);
            let seq = &mut out[i];
            seq.tokens.push(token);
            seq.logprobs.push(logprob(model.backend(), row_logits, token));
            if topk > 0 {
                seq.topk_logprobs.push(top_k_logprobs(model.backend(), row_logits, topk));
            }
            if params.stop_token_ids.contains(&token) || stop_when(&seq.tokens) {
                seq.stop_reason = StopReason::Stop;
            } else if seq.tokens.len() < params.max_tokens {
                fed.push((i, token));
            }
        }
        if fed.is_empty() {
            break;
        }
        live = fed.iter().map(|&(i, _)| i).collect();
        let tokens: Vec<u32> = fed.iter().map(|&(_, t)| t).collect();
        let mut live_caches: Vec<&mut KvCache> =
            caches.iter_mut().enumerate().filter(|(i, _)| live.binary_search(i).is_ok()).map(|(_, c)| c).collect();
        logits = model.decode_step(&mut live_caches, &tokens, &view)?;
    }
    assert!(out.iter().all(|s| s.tokens.len() == s.logprobs.len() && s.tokens.len() <= params.max_tokens));
    assert!(out.iter().all(|s| topk == 0 || s.topk_logprobs.len() == s.tokens.len()));
    Ok(out)
}

/// The `k` most likely ids of `logits (V)` (ties: lower id first; NaN logits never chosen; fewer
/// than `k` when the row has fewer non-NaN entries) with their temperature-1 logprobs, best first,
/// computed by the trainer's `logsoftmax_gather_forward` on the row.
pub fn top_k_logprobs<B: Backend>(backend: &B, logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    assert!(!logits.is_empty(), "top_k_logprobs: empty vocabulary");
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let mut ids: Vec<u32> = (0..logits.len() as u32).filter(|&id| !logits[id as usize].is_nan()).collect();
    let k = k.min(ids.len());
    if k == 0 {
        return Vec::new();
    }
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_logit);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_logit);
    let mut lp = vec![0.0f32; k]; // (1, k)
    let mut lse = [0.0f32];
    backend.logsoftmax_gather_forward(&mut lp, &mut lse, logits, &ids, 1, logits.len(), k);
    ids.into_iter().zip(lp).collect()
}

/// The temperature-1 log-softmax of `logits (V)` at `token`, by the trainer's own op.
fn logprob<B: Backend>(backend: &B, logits: &[f32], token: u32) -> f32 {
    let (mut lp, mut lse) = ([0.0f32], [0.0f32]);
    backend.logsoftmax_gather_forward(&mut lp, &mut lse, logits, &[token], 1, logits.len(), 1);
    lp[0]
}

/// Picks the next token from `logits (V)`.
fn choose(logits: &[f32], params: &SampleParams, rng: &mut Rng) -> u32 {
    assert!(!logits.is_empty(), "choose: empty vocabulary");
    if params.greedy() {
        return argmax(logits);
    }
    // Candidates in descending logit order (ties: lower id first), cut to top-k, weighted in f64.
    let max = logits.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max) as f64;
    let inv_t = 1.0 / params.temperature as f64;
    let weight = |id: u32| {
        let l = logits[id as usize];
        if l.is_nan() {
            0.0
        } else {
            ((l as f64 - max) * inv_t).exp()
        }
    };
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let mut cand: Vec<u32> = (0..logits.len() as u32).collect();
    let top_k = usize::try_from(params.top_k).unwrap_or(usize::MAX).min(cand.len());
    if top_k < cand.len() {
        cand.select_nth_unstable_by(top_k - 1, by_logit);
        cand.truncate(top_k);
        cand.sort_unstable_by(by_logit);
    }
    if params.top_p < 1.0 {
        if top_k == logits.len() {
            cand.sort_unstable_by(by_logit);
        }
        let total: f64 = cand.iter().map(|&id| weight(id)).sum();
        let mut cum = 0.0;
        let mut keep = cand.len();
        for (n, &id) in cand.iter().enumerate() {
            cum += weight(id);
            if cum >= params.top_p as f64 * total {
                keep = n + 1;
                break;
            }
        }
        cand.truncate(keep);
    }
    let total: f64 = cand.iter().map(|&id| weight(id)).sum();
    let mut u = rng.next_f64() * total;
    for &id in &cand {
        u -= weight(id);
        if u < 0.0 {
            return id;
        }
    }
    // Rounding left a sliver of mass at the end: the last candidate with weight takes it.
    cand.iter().rev().copied().find(|&id| weight(id) > 0.0).unwrap_or(cand[0])
}

/// The lowest id among the largest logits (NaNs never win).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || (logits[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    u32::try_from(best).expect("vocab sizes fit in u32 token ids")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: i32, top_p: f32) -> SampleParams {
        SampleParams { max_tokens: 4, temperature, top_k, top_p, seed: 0, stop_token_ids: vec![] }
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima_and_skips_nan() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, -2.0]), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_draw_to_the_head_of_the_distribution() {
        let logits = [0.0f32, 5.0, 4.9, -3.0, 4.8, 1.0];
        let mut rng = Rng::new(9);
        let mut seen = [0usize; 6];
        for _ in 0..2000 {
            seen[choose(&logits, &params(1.0, 2, 1.0), &mut rng) as usize] += 1;
        }
        assert!(seen[1] > 0 && seen[2] > 0, "{seen:?}");
        assert_eq!(seen[0] + seen[3] + seen[4] + seen[5], 0, "{seen:?}");
        // p(1) ≈ 0.35 of the mass: top_p 0.3 keeps token 1 alone.
        for _ in 0..200 {
            assert_eq!(choose(&logits, &params(1.0, -1, 0.3), &mut rng), 1);
        }
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // p = 1/4, 3/4
        let mut rng = Rng::new(2);
        let ones = (0..20_000).filter(|_| choose(&logits, &params(1.0, -1, 1.0), &mut rng) == 1).count();
        let p = ones as f64 / 20_000.0;
        assert!((p - 0.75).abs() < 0.015, "p(1) = {p}");
    }

    #[test]
    fn top_k_logprobs_are_the_best_ids_in_order_with_their_log_softmax() {
        let be = kernels::ReferenceBackend;
        let logits = [1.0f32, 3.0, 0.5, 3.0, -2.0];
        let top = top_k_logprobs(&be, &logits, 3);
        let ids: Vec<u32> = top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![1, 3, 0], "ties go to the lower id");
        let lse = logits.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        for &(id, lp) in &top {
            assert!((f64::from(lp) - (f64::from(logits[id as usize]) - lse)).abs() < 1e-6, "{top:?}");
        }
        assert_eq!(top_k_logprobs(&be, &logits, 9).len(), 5, "k is cut to the vocabulary");
        let with_nan = [1.0f32, f32::NAN, 0.0];
        let ids: Vec<u32> = top_k_logprobs(&be, &with_nan, 3).iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![0, 2], "NaN logits are never alternatives");
    }

    #[test]
    fn invalid_params_name_the_field() {
        assert!(params(-1.0, -1, 1.0).validate().unwrap_err().to_string().contains("temperature"));
        assert!(params(1.0, 0, 1.0).validate().unwrap_err().to_string().contains("top_k"));
        assert!(params(1.0, -1, 0.0).validate().unwrap_err().to_string().contains("top_p"));
        assert!(params(0.0, -1, 1.0).validate().is_ok());
    }
}
