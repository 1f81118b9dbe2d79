//! Batch invariance (design §3): a sequence's logprobs and its LoRA gradient are bit-identical
//! whether it runs alone or packed between other sequences whose loss weights are zero.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod model_common;

use kernels::{Backend, CpuBackend, ReferenceBackend};
use model_common::{assert_bits_eq, lora_config, model, random_lora, tokens, ALL_FAMILIES};
use worker::model::PackedBatch;
use worker::rng::Rng;

/// Sequence 1 of lengths `lens` alone vs packed between sequences 0 and 2.
fn check_family<B: Backend>(name: &str, backend: B, lens: [usize; 3]) {
    let m = model(name, backend);
    let vocab = m.config().vocab_size;
    let lcfg = lora_config();
    let lw = random_lora(m.config(), &lcfg, 11, 0.1);
    let seqs: Vec<(Vec<u32>, Vec<u32>)> =
        lens.iter().zip(1u64..).map(|(&len, s)| (tokens(len, vocab, s), tokens(len, vocab, 100 + s))).collect();
    let mut rng = Rng::new(5);
    let w1: Vec<f32> = (0..lens[1]).map(|_| rng.normal_f32()).collect(); // loss weights of seq 1

    // Sequence 1 alone.
    let alone = PackedBatch::new(&[(&seqs[1].0, &seqs[1].1)], 1).unwrap();
    let fwd_alone = m.forward(&alone, Some((&lcfg, &lw))).unwrap();
    let mut g_alone = lw.zeros_like();
    m.backward(&fwd_alone, &alone, &w1, (&lcfg, &lw), &mut g_alone).unwrap();

    // Sequence 1 between sequences 0 and 2, whose weights are zero.
    let refs: Vec<(&[u32], &[u32])> = seqs.iter().map(|(t, g)| (&t[..], &g[..])).collect();
    let packed = PackedBatch::new(&refs, 1).unwrap();
    let fwd_packed = m.forward(&packed, Some((&lcfg, &lw))).unwrap();
    let r = packed.seq_range(1);
    assert_bits_eq(&fwd_packed.logprobs[r.clone()], &fwd_alone.logprobs, &format!("{name}: logprobs"));
    let v = vocab;
    assert_bits_eq(&fwd_packed.logits[r.start * v..r.end * v], &fwd_alone.logits, &format!("{name}: logits"));
    let mut dlp = vec![0.0f32; packed.num_tokens()];
    dlp[r].copy_from_slice(&w1);
    let mut g_packed = lw.zeros_like();
    m.backward(&fwd_packed, &packed, &dlp, (&lcfg, &lw), &mut g_packed).unwrap();

    for (path, ga) in &g_alone.sites {
        let gp = &g_packed.sites[path];
        assert_bits_eq(&gp.a, &ga.a, &format!("{name}: grad A of {path}"));
        assert_bits_eq(&gp.b, &ga.b, &format!("{name}: grad B of {path}"));
        // The gradient reaches every site of every layer.
        assert!(ga.a.iter().any(|&x| x != 0.0) && ga.b.iter().any(|&x| x != 0.0), "{name}: {path} got no gradient");
    }
    let layers = m.config().num_hidden_layers;
    assert_eq!(g_alone.sites.len(), layers * 7 + 1, "{name}: every projection of every layer plus lm_head");
}

#[test]
fn reference_backend_gives_a_sequence_the_same_bits_alone_and_packed() {
    for name in ALL_FAMILIES {
        check_family(name, ReferenceBackend, [5, 9, 3]);
    }
}

#[test]
fn cpu_backend_gives_a_sequence_the_same_bits_alone_and_packed() {
    for name in ALL_FAMILIES {
        check_family(name, CpuBackend, [5, 9, 3]);
    }
}

#[test]
fn cpu_backend_keeps_invariance_when_packs_are_long_enough_to_tile() {
    // 198 rows: well past any small-m fast path in the CPU matmuls.
    check_family("tiny/llama3", CpuBackend, [61, 100, 37]);
    check_family("tiny/qwen3", CpuBackend, [3, 130, 65]);
    check_family("tiny/qwen3-moe", CpuBackend, [40, 120, 70]);
}

#[test]
fn first_sequence_of_a_pack_matches_its_own_forward_without_lora() {
    let m = model("tiny/qwen3", ReferenceBackend);
    let (a, b) = (tokens(6, 512, 1), tokens(4, 512, 2));
    let (ta, tb) = (tokens(6, 512, 3), tokens(4, 512, 4));
    let alone = m.forward(&PackedBatch::new(&[(&a, &ta)], 1).unwrap(), None).unwrap();
    let packed = m.forward(&PackedBatch::new(&[(&a, &ta), (&b, &tb)], 1).unwrap(), None).unwrap();
    assert_bits_eq(&packed.logprobs[..6], &alone.logprobs, "qwen3 base logprobs");
}
