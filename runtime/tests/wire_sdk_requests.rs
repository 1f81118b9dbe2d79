//! Decodes request bodies that the official tinker 0.38.0 SDK produced (runtime/tests/wire/*.bin,
//! made by gen_vectors.py through the SDK's own `forward_backward` request path) and checks every
//! decoded value against `sdk_vectors.json`; also re-encodes messages with every proto field set
//! to prove the hand-written prost structs match the SDK's descriptor byte for byte.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message;
use runtime::control::{Provenance, ProvenanceSpan, SpanSource, Tensor, TensorValues};
use runtime::wire::{self, proto, FbRequest, WireError};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire")
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn vectors() -> Value {
    let text = std::fs::read_to_string(fixtures().join("sdk_vectors.json")).unwrap();
    let vectors: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(vectors["tinker_version"], "0.38.0");
    vectors
}

/// Decompresses `.zst` fixtures the way the coordinator will (Content-Encoding: zstd).
fn decode_fixture(name: &str) -> Result<FbRequest, WireError> {
    let body = read_fixture(name);
    let encoding = name.ends_with(".zst").then_some("zstd");
    let plain = wire::maybe_decompress(encoding, &body, 1 << 20).unwrap();
    wire::decode_forward_backward(&plain)
}

fn as_f32(value: &Value) -> f32 {
    let wide = value.as_f64().unwrap();
    let narrow = wide as f32;
    assert_eq!(f64::from(narrow), wide, "the generator writes exact float32 values");
    narrow
}

fn check_tensor(where_: &str, got: &Tensor, want: &Value) {
    let shape: Vec<usize> = want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    assert_eq!(got.shape, shape, "{where_} shape");
    let values = want["values"].as_array().unwrap();
    match (&got.values, want["dtype"].as_str().unwrap()) {
        (TensorValues::F32(got), "float32") => {
            let want: Vec<f32> = values.iter().map(as_f32).collect();
            let (got_bits, want_bits): (Vec<u32>, Vec<u32>) =
                (got.iter().map(|v| v.to_bits()).collect(), want.iter().map(|v| v.to_bits()).collect());
            assert_eq!(got_bits, want_bits, "{where_} float32 values {got:?} vs {want:?}");
        }
        (TensorValues::I64(got), "int64") => {
            let want: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(got, &want, "{where_} int64 values");
        }
        (got, dtype) => panic!("{where_}: decoded {got:?}, expected dtype {dtype}"),
    }
}

/// Checks every field of the decoded request against the generator's expectations; returns how
/// many tensors were compared.
fn check_request_vector(name: &str) -> usize {
    let vectors = vectors();
    let want = &vectors["requests"][name];
    assert!(want.is_object(), "{name} is in sdk_vectors.json");
    let got = decode_fixture(name).unwrap();
    assert_eq!(got.model_id, want["model_id"].as_str().unwrap());
    assert_eq!(i64::from(got.seq_id), want["seq_id"].as_i64().unwrap());
    assert_eq!(got.loss_fn, want["loss_fn"].as_str().unwrap());
    assert_eq!(got.forward_only, want["forward_only"].as_bool().unwrap());
    let config: BTreeMap<String, f64> =
        want["loss_config"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap())).collect();
    assert_eq!(got.loss_config, config);
    let text: BTreeMap<String, String> = want["loss_config_text"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(got.loss_config_text, text);
    let want_data = want["data"].as_array().unwrap();
    assert_eq!(got.data.len(), want_data.len(), "{name} datum count");
    let mut tensors = 0;
    for (i, (datum, want_datum)) in got.data.iter().zip(want_data).enumerate() {
        let tokens: Vec<u32> =
            want_datum["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
        assert_eq!(datum.tokens, tokens, "{name} data[{i}] tokens");
        let want_inputs = want_datum["loss_fn_inputs"].as_object().unwrap();
        let names: Vec<&String> = datum.loss_fn_inputs.keys().collect();
        assert_eq!(names, want_inputs.keys().collect::<Vec<_>>(), "{name} data[{i}] input names");
        for (input, want_tensor) in want_inputs {
            check_tensor(&format!("{name} data[{i}].{input}"), &datum.loss_fn_inputs[input], want_tensor);
            tensors += 1;
        }
        check_provenance(&format!("{name} data[{i}]"), datum.provenance.as_ref(), &want_datum["provenance"]);
    }
    tensors
}

/// `want` is absent (JSON null) for a datum without spans, else both lists as the SDK built them.
fn check_provenance(where_: &str, got: Option<&Provenance>, want: &Value) {
    let Some(got) = got else {
        assert!(want.is_null(), "{where_}: provenance {want} was not decoded");
        return;
    };
    assert!(want.is_object(), "{where_}: decoded provenance {got:?} that the SDK did not send");
    for (spans, key) in [(&got.model_input, "model_input"), (&got.loss_fn_inputs, "loss_fn_inputs")] {
        let want_spans = want[key].as_array().unwrap();
        assert_eq!(spans.len(), want_spans.len(), "{where_} {key} spans");
        for (j, (span, w)) in spans.iter().zip(want_spans).enumerate() {
            let source = match w["source"].as_str().unwrap() {
                "prompt" => SpanSource::Prompt,
                "sampled" => SpanSource::Sampled,
                other => panic!("{where_}: unknown span source {other}"),
            };
            let expected = ProvenanceSpan {
                source,
                sequence_id: w["sequence_id"].as_str().unwrap().to_owned(),
                offset: w["offset"].as_u64().unwrap(),
                length: w["length"].as_u64().unwrap(),
            };
            assert_eq!(span, &expected, "{where_} {key}[{j}]");
        }
    }
}

#[test]
fn the_sdks_cross_entropy_request_decodes_to_every_token_target_and_weight() {
    assert_eq!(check_request_vector("fb_cross_entropy.bin"), 4);
}

#[test]
fn the_sdks_ppo_request_keeps_its_clip_config_and_per_token_clip_inputs() {
    assert_eq!(check_request_vector("fb_ppo.bin"), 5);
}

#[test]
fn a_forward_only_request_keeps_text_config_apart_from_numbers() {
    assert_eq!(check_request_vector("fb_forward_text_config.bin"), 1);
}

#[test]
fn sparse_csr_targets_and_weights_expand_to_the_dense_matrices_with_zeros() {
    assert_eq!(check_request_vector("fb_sparse.bin"), 4);
}

#[test]
fn int32_and_bfloat16_tensors_with_empty_shapes_widen_to_one_dimensional_int64_and_float32() {
    assert_eq!(check_request_vector("fb_widened_dtypes.bin"), 2);
}

#[test]
fn a_zstd_body_compressed_by_the_sdk_decompresses_and_decodes() {
    assert_eq!(check_request_vector("fb_zstd.zst"), 8);
}

/// tinker-cookbook's RL loops attach provenance to every datum they build from samples: the
/// spans the SDK wrote must come out on the decoded datums, in order, kind by kind, and name the
/// sequences they cite (which the coordinator checks against what the tenant sampled).
#[test]
fn the_sdks_rl_datums_keep_their_provenance_spans_and_name_their_sequences() {
    assert_eq!(check_request_vector("fb_provenance.bin"), 9);
    let decoded = decode_fixture("fb_provenance.bin").unwrap();
    let ids = |i: usize| wire::spans::sequence_ids(&decoded.data[i]).into_iter().collect::<Vec<_>>();
    assert_eq!((ids(0), ids(1), ids(2)), (vec!["seq-7"], vec![], vec!["a", "b", "c"]));
    assert!(decoded.data.iter().all(|d| wire::spans::validate(d).is_ok()));
}

#[test]
fn the_zstd_cap_is_exact_at_the_decompressed_length() {
    let vectors = vectors();
    let len = vectors["requests"]["fb_zstd.zst"]["decompressed_len"].as_u64().unwrap() as usize;
    let body = read_fixture("fb_zstd.zst");
    assert_eq!(wire::maybe_decompress(Some("zstd"), &body, len).unwrap().len(), len);
    let error = wire::maybe_decompress(Some("zstd"), &body, len - 1).unwrap_err();
    assert!(matches!(error, WireError::TooLarge { max_bytes } if max_bytes == len - 1), "{error}");
}

#[test]
fn bad_sdk_requests_fail_naming_the_datum_and_field_and_keep_their_seq_id() {
    let vectors = vectors();
    let errors = vectors["errors"].as_object().unwrap();
    assert_eq!(errors.len(), 4);
    for (name, want) in errors {
        let error = decode_fixture(name).unwrap_err();
        let seq = want["seq"].as_array().unwrap();
        let (model_id, seq_id) = error.request_seq().unwrap_or_else(|| panic!("{name}: {error} has no seq"));
        assert_eq!(model_id, seq[0].as_str().unwrap(), "{name}");
        assert_eq!(i64::from(seq_id), seq[1].as_i64().unwrap(), "{name}");
        let message = error.to_string();
        for part in want["contains"].as_array().unwrap() {
            assert!(message.contains(part.as_str().unwrap()), "{name}: {message:?} lacks {part}");
        }
    }
}

fn re_encodes_identically<M: Message + Default>(name: &str) -> M {
    let bytes = read_fixture(name);
    let msg = M::decode(bytes.as_slice()).unwrap();
    assert_eq!(msg.encode_to_vec(), bytes, "{name}: a field was dropped or re-encoded differently");
    msg
}

#[test]
fn messages_with_every_field_set_round_trip_byte_for_byte() {
    let vectors = vectors();
    let names: Vec<&str> = vectors["round_trips"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(names.len(), 5);
    for name in names {
        match name {
            "rt_fb_request.bin" => {
                let msg: proto::ForwardBackwardRequest = re_encodes_identically(name);
                assert_eq!(msg.seq_id, -3);
                assert_eq!(msg.data[0].model_input.len(), 3);
                let image = match &msg.data[0].model_input[1].chunk {
                    Some(proto::chunk::Chunk::Image(image)) => image,
                    other => panic!("chunk 1 is an image, got {other:?}"),
                };
                assert_eq!((image.expected_tokens, image.format.as_str()), (Some(0), "jpeg"));
                assert_eq!(msg.data[0].loss_fn_input_spans.len(), 1);
            }
            "rt_sample_response.bin" => {
                let msg: proto::SampleResponse = re_encodes_identically(name);
                assert_eq!(msg.prompt_cache_hit_tokens, 3);
                assert_eq!(msg.prompt_logprobs, Some(vec![]));
                assert_eq!(msg.sequences[0].stop_reason, proto::StopReason::Length as i32);
                assert_eq!(msg.sequences[0].logprobs, Some(vec![]));
                assert_eq!(msg.sequences[1].logprobs, None);
            }
            "rt_fb_output.bin" => {
                let msg: proto::ForwardBackwardOutput = re_encodes_identically(name);
                assert_eq!(msg.metrics["loss:sum"], -1.5);
                assert_eq!(msg.loss_fn_outputs[0].fields["logprobs"].trailing_shape, vec![1]);
            }
            "rt_sampling_params_strs.bin" => {
                let msg: proto::SamplingParams = re_encodes_identically(name);
                assert_eq!((msg.max_tokens, msg.seed, msg.top_k), (Some(0), Some(u64::MAX), Some(-1)));
            }
            "rt_sampling_params_tokens.bin" => {
                let msg: proto::SamplingParams = re_encodes_identically(name);
                let expected = proto::sampling_params::Stop::StopTokens(proto::StopTokens { values: vec![2, -7] });
                assert_eq!(msg.stop, Some(expected));
            }
            other => panic!("no round-trip check for {other}"),
        }
    }
}
