//! Prompt scoring for `Sample` requests: the logprob of every prompt token given the tokens before
//! it (NaN at position 0 and before the `last_n` suffix), and optionally the top-k alternatives at
//! each scored position. Computed by the training forward, so a prompt logprob equals the
//! trainer's logprob of that token bit for bit (what `compute_logprobs` clients rely on).

use kernels::Backend;
use runtime::LoraConfig;

use crate::adapter::LoraWeights;
use crate::model::{Model, ModelError, PackedBatch};
use crate::sample::top_k_logprobs;

/// One prompt's scores, one entry per prompt position.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PromptScores {
    /// `log p(prompt[j] | prompt[..j])`, NaN where not scored.
    pub logprobs: Vec<f32>, // (n)
    /// Top-k alternatives at each position, empty where not scored or `topk` is 0.
    pub topk: Vec<Vec<(u32, f32)>>, // (n) × (k)
}

/// Scores `prompt` under the model (with `lora` if given). With `last_n`, only positions
/// `≥ len - last_n` are scored; position 0 never is.
///
/// # Errors
/// `ModelError` for an empty prompt, an id ≥ vocab, a prompt longer than the context, or an
/// adapter that does not fit.
pub(super) fn score_prompt<B: Backend>(
    model: &Model<B>,
    lora: Option<(&LoraConfig, &LoraWeights)>,
    prompt: &[u32],
    last_n: Option<usize>,
    topk: usize,
) -> Result<PromptScores, ModelError> {
    let n = prompt.len();
    let first = last_n.map_or(1, |last| n.saturating_sub(last)).max(1);
    let mut scores = PromptScores { logprobs: vec![f32::NAN; n], topk: vec![Vec::new(); n] };
    if first >= n {
        return Ok(scores);
    }
    let mut targets = prompt[1..].to_vec(); // (n) position j predicts prompt[j + 1]
    targets.push(0);
    let fwd = model.forward(&PackedBatch::new(&[(prompt, &targets)], 1)?, lora)?;
    let vocab = model.config().vocab_size;
    for j in first..n {
        scores.logprobs[j] = fwd.logprobs[j - 1];
        if topk > 0 {
            let row = &fwd.logits[(j - 1) * vocab..j * vocab];
            scores.topk[j] = top_k_logprobs(model.backend(), row, topk);
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use kernels::ReferenceBackend;

    use super::*;
    use crate::tiny::tiny_model;

    fn model() -> Model<ReferenceBackend> {
        let (config, weights) = tiny_model("tiny/llama3", 1).unwrap();
        Model::new(config, weights, ReferenceBackend).unwrap()
    }

    #[test]
    fn position_zero_and_positions_before_last_n_are_nan_and_the_rest_are_scored() {
        let m = model();
        let prompt = [5u32, 9, 14, 200, 3];
        let all = score_prompt(&m, None, &prompt, None, 2).unwrap();
        assert!(all.logprobs[0].is_nan() && all.topk[0].is_empty());
        assert!(all.logprobs[1..].iter().all(|x| x.is_finite() && *x < 0.0), "{:?}", all.logprobs);
        assert!(all.topk[1..].iter().all(|row| row.len() == 2 && row[0].1 >= row[1].1));
        // The best alternative is at least as likely as the actual token.
        assert!((1..5).all(|j| all.topk[j][0].1 >= all.logprobs[j]));
        let last2 = score_prompt(&m, None, &prompt, Some(2), 0).unwrap();
        assert!(last2.logprobs[..3].iter().all(|x| x.is_nan()));
        assert_eq!(
            last2.logprobs[3..].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            all.logprobs[3..].iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        assert!(last2.topk.iter().all(Vec::is_empty));
        let none = score_prompt(&m, None, &prompt, Some(0), 1).unwrap();
        assert!(none.logprobs.iter().all(|x| x.is_nan()));
    }
}
