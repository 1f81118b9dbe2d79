//! Everything a caller can get wrong is a typed `ModelError` with a message naming the problem,
//! never a panic: bad ids, over-long sequences, missing or misshapen tensors, mismatched adapters
//! and a backward handed the wrong forward.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use kernels::ReferenceBackend;
use model_common::{lora_config, model, random_lora, tokens};
use runtime::{Family, LoraConfig};
use worker::model::{Model, ModelError, PackedBatch};
use worker::tensor::{HostTensor, WeightError};
use worker::tiny::tiny_model;

#[test]
fn ids_outside_the_vocab_and_over_long_sequences_are_refused() {
    let m = model("tiny/llama3", ReferenceBackend);
    let bad_token = PackedBatch::new(&[(&[1, 2], &[2, 3]), (&[4, 600], &[5, 6])], 1).unwrap();
    assert_eq!(
        m.forward(&bad_token, None).unwrap_err(),
        ModelError::TokenOutOfVocab { index: 3, token: 600, vocab: 512 }
    );
    let bad_target = PackedBatch::new(&[(&[1, 2], &[2, 512])], 1).unwrap();
    assert_eq!(
        m.forward(&bad_target, None).unwrap_err(),
        ModelError::TargetOutOfVocab { index: 1, target: 512, vocab: 512 }
    );
    let long = tokens(257, 512, 1);
    let batch = PackedBatch::new(&[(&[1], &[1]), (&long, &long)], 1).unwrap();
    let err = m.forward(&batch, None).unwrap_err();
    assert_eq!(err, ModelError::SequenceTooLong { seq: 1, len: 257, max: 256 });
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let (config, mut weights) = tiny_model("tiny/qwen3", 0).unwrap();
    weights.tensors.remove("model.layers.1.self_attn.k_norm.weight");
    let err = Model::new(config.clone(), weights, ReferenceBackend).err().unwrap();
    assert_eq!(err, ModelError::Weight(WeightError::Missing { name: "model.layers.1.self_attn.k_norm.weight".into() }));
    assert!(err.to_string().contains("model.layers.1.self_attn.k_norm.weight"));

    let (_, mut weights) = tiny_model("tiny/qwen3", 0).unwrap();
    // A head_dim-confused q_proj: (hidden, hidden) instead of (heads·head_dim, hidden).
    weights.insert("model.layers.0.self_attn.q_proj.weight", HostTensor::zeros(vec![64, 64]));
    let err = Model::new(config, weights, ReferenceBackend).err().unwrap().to_string();
    assert!(err.contains("model.layers.0.self_attn.q_proj.weight") && err.contains("[96, 64]"), "{err}");
}

#[test]
fn a_checkpoint_without_lm_head_is_tied_and_moe_is_not_a_dense_family() {
    let (mut config, mut weights) = tiny_model("tiny/llama3", 0).unwrap();
    let lm = weights.tensors.remove("lm_head.weight").unwrap();
    let untied_flag_but_no_head = Model::new(config.clone(), weights.clone(), ReferenceBackend).unwrap();
    weights.insert("lm_head.weight", lm);
    config.tie_word_embeddings = true;
    let tied_flag = Model::new(config.clone(), weights, ReferenceBackend).unwrap();
    let batch = PackedBatch::new(&[(&[1, 2, 3], &[2, 3, 4])], 1).unwrap();
    assert_eq!(
        untied_flag_but_no_head.forward(&batch, None).unwrap().logits,
        tied_flag.forward(&batch, None).unwrap().logits,
        "both unembed with embed_tokens"
    );
    let (mut config, weights) = tiny_model("tiny/qwen3", 0).unwrap();
    config.family = Family::Qwen3Moe;
    let err = Model::new(config, weights, ReferenceBackend).err().unwrap();
    assert_eq!(err, ModelError::UnsupportedFamily { family: "qwen3_moe" });
}

#[test]
fn adapters_and_gradients_must_fit_the_model_and_backward_its_forward() {
    let m = model("tiny/qwen2", ReferenceBackend);
    let lcfg = lora_config();
    let lw = random_lora(m.config(), &lcfg, 1, 0.1);
    let batch = PackedBatch::new(&[(&[1, 2, 3], &[2, 3, 4])], 1).unwrap();
    let other = PackedBatch::new(&[(&[1, 2], &[2, 3]), (&[3], &[4])], 1).unwrap();

    let rank8 = LoraConfig::new(8, 8.0, 0, true, true, true).unwrap();
    assert!(matches!(m.forward(&batch, Some((&rank8, &lw))), Err(ModelError::LoraMismatch { .. })));
    let no_unembed = LoraConfig::new(4, 8.0, 0, true, true, false).unwrap();
    let err = m.forward(&batch, Some((&no_unembed, &lw))).unwrap_err().to_string();
    assert!(err.contains("lm_head"), "{err}");

    let fwd = m.forward(&batch, Some((&lcfg, &lw))).unwrap();
    let mut grads = lw.zeros_like();
    assert_eq!(
        m.backward(&fwd, &other, &[0.0; 3], (&lcfg, &lw), &mut grads).unwrap_err(),
        ModelError::ForwardMismatch { forward: vec![0, 3], batch: vec![0, 2, 3] }
    );
    assert_eq!(
        m.backward(&fwd, &batch, &[0.0; 2], (&lcfg, &lw), &mut grads).unwrap_err(),
        ModelError::GradientLength { got: 2, expected: 3 }
    );
    let base_fwd = m.forward(&batch, None).unwrap();
    assert_eq!(
        m.backward(&base_fwd, &batch, &[0.0; 3], (&lcfg, &lw), &mut grads).unwrap_err(),
        ModelError::ForwardWithoutLora
    );
    grads.sites.remove("lm_head");
    assert!(matches!(
        m.backward(&fwd, &batch, &[0.0; 3], (&lcfg, &lw), &mut grads),
        Err(ModelError::LoraMismatch { .. })
    ));
}

#[test]
fn k_targets_per_token_gather_each_column() {
    let m = model("tiny/llama3", ReferenceBackend);
    let one = m.forward(&PackedBatch::new(&[(&[5, 6, 7], &[8, 9, 10])], 1).unwrap(), None).unwrap();
    let two = m.forward(&PackedBatch::new(&[(&[5, 6, 7], &[8, 11, 9, 12, 10, 13])], 2).unwrap(), None).unwrap();
    assert_eq!(two.logprobs.len(), 6);
    assert_eq!(
        [two.logprobs[0], two.logprobs[2], two.logprobs[4]],
        [one.logprobs[0], one.logprobs[1], one.logprobs[2]]
    );
    let v = 512;
    let lse1 = {
        let row = &one.logits[v..2 * v];
        let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        mx + row.iter().map(|&z| (z as f64 - mx).exp()).sum::<f64>().ln()
    };
    assert!((two.logprobs[3] as f64 - (one.logits[v + 12] as f64 - lse1)).abs() < 1e-5);
}
