//! Encoding a worker's [`SampleResult`] as the protobuf `SampleResponse` the SDK's
//! `deserialize_sample_response` reads: tokens int32 LE, logprobs float32 LE (always sent, one per
//! token), prompt logprobs float32 LE with NaN where not computed, and top-k alternatives as dense
//! `(length, k)` matrices padded with the SDK's sentinel cell.

use prost::Message;

use crate::control::{SampleResult, SampledSequence, StopReason, TopK};

use super::le;
use super::proto;

/// Logprob of an empty top-k cell (with token id 0); the SDK trims such cells and reads a row
/// that starts with one as `None` (`tinker.types.topk_logprobs.MASK_LOGPROB`).
pub const TOPK_EMPTY_LOGPROB: f32 = -99999.0;

pub fn encode_sample_response(result: &SampleResult) -> Vec<u8> {
    let msg = proto::SampleResponse {
        sequences: result.sequences.iter().map(sequence).collect(),
        prompt_logprobs: result.prompt_logprobs.as_ref().map(|lp| le::write_f32(lp.iter().copied())),
        topk_prompt_logprobs: result.topk_prompt_logprobs.as_deref().map(topk),
        prompt_cache_hit_tokens: 0,
        target_prompt_logprobs: None,
        prompt_alt_tokens: None,
    };
    msg.encode_to_vec()
}

fn sequence(seq: &SampledSequence) -> proto::SampledSequence {
    assert_eq!(seq.logprobs.len(), seq.tokens.len(), "one logprob per sampled token");
    if let Some(rows) = &seq.topk_logprobs {
        assert_eq!(rows.len(), seq.tokens.len(), "one top-k row per sampled token");
    }
    let stop_reason = match seq.stop_reason {
        StopReason::Stop => proto::StopReason::Stop,
        StopReason::Length => proto::StopReason::Length,
    };
    proto::SampledSequence {
        stop_reason: stop_reason as i32,
        tokens: le::write_i32(seq.tokens.iter().map(|&t| token_i32(t))),
        logprobs: Some(le::write_f32(seq.logprobs.iter().copied())),
        topk_sampled_logprobs: seq.topk_logprobs.as_deref().map(topk),
    }
}

/// Rows padded to the widest row (at least 1, so that requested-but-empty rows read as `None`
/// rather than the whole matrix reading as absent).
fn topk(rows: &[TopK]) -> proto::TopkLogprobs {
    let k = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut token_ids = Vec::with_capacity(rows.len() * k); // (length, k)
    let mut logprobs = Vec::with_capacity(rows.len() * k); // (length, k)
    for row in rows {
        let padding = std::iter::repeat_n((0, TOPK_EMPTY_LOGPROB), k - row.len());
        for (token, logprob) in row.iter().map(|&(t, lp)| (token_i32(t), lp)).chain(padding) {
            token_ids.push(token);
            logprobs.push(logprob);
        }
    }
    assert_eq!(token_ids.len(), rows.len() * k, "every row is padded to k cells");
    proto::TopkLogprobs {
        token_ids: le::write_i32(token_ids),
        logprobs: le::write_f32(logprobs),
        k: u32::try_from(k).expect("k fits in u32"),
        length: u32::try_from(rows.len()).expect("a row count fits in u32"),
    }
}

fn token_i32(token: u32) -> i32 {
    i32::try_from(token).expect("token ids are below the vocabulary size, far under 2^31")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(result: &SampleResult) -> proto::SampleResponse {
        proto::SampleResponse::decode(encode_sample_response(result).as_slice()).unwrap()
    }

    fn sequence(tokens: Vec<u32>, topk: Option<Vec<TopK>>) -> SampledSequence {
        let logprobs = vec![-0.5; tokens.len()];
        SampledSequence { tokens, logprobs, stop_reason: StopReason::Length, topk_logprobs: topk }
    }

    #[test]
    fn tokens_logprobs_and_stop_reason_are_packed_little_endian() {
        let result = SampleResult {
            sequences: vec![sequence(vec![7, 300], None)],
            prompt_logprobs: None,
            topk_prompt_logprobs: None,
        };
        let msg = decode(&result);
        let seq = &msg.sequences[0];
        assert_eq!(seq.stop_reason, proto::StopReason::Length as i32);
        assert_eq!(le::read_i32(&seq.tokens).unwrap(), vec![7, 300]);
        assert_eq!(le::read_f32(seq.logprobs.as_deref().unwrap()).unwrap(), vec![-0.5, -0.5]);
        assert_eq!((seq.topk_sampled_logprobs.as_ref(), msg.prompt_logprobs.as_ref()), (None, None));
        assert_eq!(msg.topk_prompt_logprobs, None);
    }

    #[test]
    fn top_k_rows_pad_to_the_widest_row_with_the_sdk_sentinel() {
        let rows = vec![vec![(5, -0.1), (6, -0.2)], vec![(9, -0.3)], vec![]];
        let result = SampleResult {
            sequences: vec![sequence(vec![5, 9, 1], Some(rows))],
            prompt_logprobs: Some(vec![f32::NAN, -1.0]),
            topk_prompt_logprobs: Some(vec![vec![], vec![]]),
        };
        let msg = decode(&result);
        let topk = msg.sequences[0].topk_sampled_logprobs.as_ref().unwrap();
        assert_eq!((topk.k, topk.length), (2, 3));
        assert_eq!(le::read_i32(&topk.token_ids).unwrap(), vec![5, 6, 9, 0, 0, 0]);
        let e = TOPK_EMPTY_LOGPROB;
        assert_eq!(le::read_f32(&topk.logprobs).unwrap(), vec![-0.1, -0.2, -0.3, e, e, e]);
        // Requested but all-empty rows still give k = 1, so the SDK sees [None, None], not "absent".
        let prompt_topk = msg.topk_prompt_logprobs.as_ref().unwrap();
        assert_eq!((prompt_topk.k, prompt_topk.length), (1, 2));
        let prompt = le::read_f32(msg.prompt_logprobs.as_deref().unwrap()).unwrap();
        assert!(prompt[0].is_nan() && prompt[1] == -1.0);
    }

    #[test]
    #[should_panic(expected = "one top-k row per sampled token")]
    fn a_top_k_row_count_that_differs_from_the_tokens_is_a_programmer_error() {
        let result = SampleResult {
            sequences: vec![sequence(vec![1, 2], Some(vec![vec![]]))],
            prompt_logprobs: None,
            topk_prompt_logprobs: None,
        };
        encode_sample_response(&result);
    }
}
