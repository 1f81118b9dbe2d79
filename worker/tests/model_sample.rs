//! The sampler against the trainer: sampled logprobs equal a forward pass over prompt + sample
//! bit for bit, greedy follows the full pass's argmax, seeds reproduce, stop tokens end a sample.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use kernels::{Backend, CpuBackend, ReferenceBackend};
use model_common::{assert_bits_eq, lora_config, model, random_lora, tokens, ALL_FAMILIES};
use worker::model::{Model, ModelError, PackedBatch};
use worker::sample::{sample, SampleParams, StopReason};

fn params(max_tokens: usize, temperature: f32, top_k: i32, top_p: f32, seed: u64) -> SampleParams {
    SampleParams { max_tokens, temperature, top_k, top_p, seed, stop_token_ids: vec![] }
}

/// Forward over `prompt + sampled` and return the logprobs of the sampled tokens and the logits rows that predicted them.
fn trainer_view<B: Backend>(
    m: &Model<B>,
    lora: Option<(&runtime::LoraConfig, &worker::adapter::LoraWeights)>,
    prompt: &[u32],
    sampled: &[u32],
) -> (Vec<f32>, Vec<f32>) {
    let all: Vec<u32> = prompt.iter().chain(sampled).copied().collect();
    let mut targets = all[1..].to_vec();
    targets.push(0);
    let fwd = m.forward(&PackedBatch::new(&[(&all, &targets)], 1).unwrap(), lora).unwrap();
    let v = m.config().vocab_size;
    let rows = prompt.len() - 1..prompt.len() - 1 + sampled.len();
    (fwd.logprobs[rows.clone()].to_vec(), fwd.logits[rows.start * v..rows.end * v].to_vec())
}

fn check_sampled_logprobs<B: Backend + Copy>(backend: B) {
    for name in ALL_FAMILIES {
        let m = model(name, backend);
        let lcfg = lora_config();
        let lw = random_lora(m.config(), &lcfg, 4, 0.1);
        let prompt = tokens(5, 512, 9);
        let out = sample(&m, Some((&lcfg, &lw)), &prompt, &params(12, 0.9, 50, 0.95, 1), 3).unwrap();
        assert_eq!(out.len(), 3);
        for s in &out {
            assert_eq!(s.tokens.len(), 12, "{name}: no stop tokens, so every sample runs to max_tokens");
            assert_eq!(s.stop_reason, StopReason::Length);
            let (lp, _) = trainer_view(&m, Some((&lcfg, &lw)), &prompt, &s.tokens);
            assert_bits_eq(&s.logprobs, &lp, &format!("{name}: sampled vs trainer logprobs"));
        }
    }
}

#[test]
fn sampled_logprobs_equal_the_trainers_bit_for_bit_on_the_reference_backend() {
    check_sampled_logprobs(ReferenceBackend);
}

#[test]
fn sampled_logprobs_equal_the_trainers_bit_for_bit_on_the_cpu_backend() {
    check_sampled_logprobs(CpuBackend);
}

#[test]
fn greedy_follows_the_full_pass_argmax_and_top_k_one_is_greedy() {
    let m = model("tiny/llama3", ReferenceBackend);
    let prompt = tokens(4, 512, 2);
    let greedy = sample(&m, None, &prompt, &params(10, 0.0, -1, 1.0, 0), 2).unwrap();
    let top1 = sample(&m, None, &prompt, &params(10, 1.0, 1, 1.0, 99), 1).unwrap();
    assert_eq!(greedy[0].tokens, greedy[1].tokens, "greedy ignores the per-sample stream");
    assert_eq!(greedy[0].tokens, top1[0].tokens);
    let (_, logits) = trainer_view(&m, None, &prompt, &greedy[0].tokens);
    for (row, &tok) in logits.chunks(512).zip(&greedy[0].tokens) {
        let best = row.iter().enumerate().fold(0, |b, (i, &x)| if x > row[b] { i } else { b });
        assert_eq!(tok as usize, best);
    }
}

#[test]
fn the_same_seed_repeats_and_different_seeds_differ() {
    let m = model("tiny/qwen3", ReferenceBackend);
    let prompt = tokens(3, 512, 5);
    let a = sample(&m, None, &prompt, &params(16, 1.0, -1, 1.0, 42), 4).unwrap();
    let b = sample(&m, None, &prompt, &params(16, 1.0, -1, 1.0, 42), 4).unwrap();
    let c = sample(&m, None, &prompt, &params(16, 1.0, -1, 1.0, 43), 4).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.iter().map(|s| &s.tokens).collect::<Vec<_>>(), c.iter().map(|s| &s.tokens).collect::<Vec<_>>());
    assert_ne!(a[0].tokens, a[1].tokens, "samples of one request draw from different streams");
    // A sample does not depend on how many others decode beside it.
    let alone = sample(&m, None, &prompt, &params(16, 1.0, -1, 1.0, 42), 1).unwrap();
    assert_eq!(alone[0], a[0]);
}

#[test]
fn a_stop_token_ends_the_sample_and_is_included() {
    let m = model("tiny/qwen2", ReferenceBackend);
    let prompt = tokens(4, 512, 8);
    let free = sample(&m, None, &prompt, &params(8, 0.0, -1, 1.0, 0), 1).unwrap();
    let stop = free[0].tokens[3];
    let first = free[0].tokens.iter().position(|&t| t == stop).unwrap();
    let mut p = params(8, 0.0, -1, 1.0, 0);
    p.stop_token_ids = vec![stop];
    let out = sample(&m, None, &prompt, &p, 1).unwrap();
    assert_eq!(out[0].stop_reason, StopReason::Stop);
    assert_eq!(out[0].tokens, free[0].tokens[..=first].to_vec());
    assert_bits_eq(&out[0].logprobs, &free[0].logprobs[..=first], "logprobs up to the stop token");
}

#[test]
fn requests_the_model_cannot_serve_are_typed_errors() {
    let m = model("tiny/llama3", ReferenceBackend);
    let max = m.config().max_position_embeddings;
    let long = sample(&m, None, &tokens(10, 512, 1), &params(max - 9, 1.0, -1, 1.0, 0), 1).unwrap_err();
    assert_eq!(long, ModelError::SequenceTooLong { seq: 0, len: max + 1, max });
    let oov = sample(&m, None, &[3, 512], &params(2, 1.0, -1, 1.0, 0), 1).unwrap_err();
    assert_eq!(oov, ModelError::TokenOutOfVocab { index: 1, token: 512, vocab: 512 });
    assert_eq!(
        sample(&m, None, &[], &params(2, 1.0, -1, 1.0, 0), 1).unwrap_err(),
        ModelError::EmptySequence { seq: 0 }
    );
    let none = sample(&m, None, &[1, 2], &params(0, 1.0, -1, 1.0, 0), 2).unwrap();
    assert!(none.iter().all(|s| s.tokens.is_empty() && s.stop_reason == StopReason::Length));
}
