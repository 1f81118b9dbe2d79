//! `Model::step_bytes_per_token` bounds what a forward_backward really holds: for every family
//! (MoE included) its forward share, `forward_bytes_per_token`, is exactly what a forward saves,
//! and the whole bound is not so loose that the memory budget would refuse steps that fit (it is
//! within 2× of the forward's bytes, backward's scratch being the rest).
#![allow(clippy::unwrap_used)]

mod model_common;

use kernels::CpuBackend;
use model_common::{lora_config, model, random_lora, tokens, ALL_FAMILIES};
use worker::model::PackedBatch;

#[test]
fn the_per_token_step_bound_covers_what_a_forward_saves() {
    for name in ALL_FAMILIES {
        let m = model(name, CpuBackend);
        let vocab = m.config().vocab_size;
        let lcfg = lora_config();
        let lw = random_lora(m.config(), &lcfg, 3, 0.1);
        let lens = [7usize, 20, 1, 12];
        let seqs: Vec<(Vec<u32>, Vec<u32>)> =
            lens.iter().zip(1u64..).map(|(&n, s)| (tokens(n, vocab, s), tokens(n, vocab, 50 + s))).collect();
        let refs: Vec<(&[u32], &[u32])> = seqs.iter().map(|(t, g)| (&t[..], &g[..])).collect();
        let batch = PackedBatch::new(&refs, 1).unwrap();
        let fwd = m.forward(&batch, Some((&lcfg, &lw))).unwrap();
        let t = batch.num_tokens() as u64;
        let bound = t * m.step_bytes_per_token(lcfg.rank);
        let saved = fwd.saved_bytes();
        assert_eq!(saved, t * m.forward_bytes_per_token(lcfg.rank, 1), "{name}: forward bytes per token");
        assert!(saved <= bound, "{name}: a forward of {t} tokens saves {saved} bytes, above the bound {bound}");
        assert!(bound <= 2 * saved, "{name}: the bound {bound} is more than twice the forward's {saved} bytes");
    }
}
