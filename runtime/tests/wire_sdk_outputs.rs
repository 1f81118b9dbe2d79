//! lathe → SDK: encodes fixed forward_backward and sample results and compares them with the
//! committed bytes in runtime/tests/wire/rust_*.bin, which gen_vectors.py decodes with the tinker
//! 0.38.0 SDK's own deserializers and checks against `rust_outputs.json` (what the SDK must see,
//! written here: NaN prompt logprobs and empty top-k rows as `null`, as the SDK reports them).
//!
//! After an intended encoding change: `LATHE_BLESS_WIRE=1 cargo test -p runtime --test
//! wire_sdk_outputs`, then `/work/sdk-venv/bin/python runtime/tests/wire/gen_vectors.py --check`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

use std::collections::BTreeMap;
use std::path::PathBuf;

use runtime::control::{
    DatumOutput, ForwardBackwardResult, SampleResult, SampledSequence, StopReason, Tensor, TensorValues, TopK,
};
use runtime::wire;
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire")
}

fn f32_tensor(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor { shape: shape.to_vec(), values: TensorValues::F32(values.to_vec()) }
}

/// Three datums whose layouts go (N) → (N, K) → (N): three ArrayRecords on the wire.
fn fb_result() -> ForwardBackwardResult {
    let outputs = vec![
        DatumOutput {
            logprobs: f32_tensor(&[3], &[-0.1, -2.75, -1e-7]),
            elementwise_loss: f32_tensor(&[3], &[0.0, 2.75, 1e-7]),
        },
        DatumOutput {
            logprobs: f32_tensor(&[2, 2], &[-0.5, -1.5, -3.0, -0.125]),
            elementwise_loss: f32_tensor(&[2], &[0.8, 1.1]),
        },
        DatumOutput { logprobs: f32_tensor(&[1], &[-9.5]), elementwise_loss: f32_tensor(&[1], &[-0.0]) },
    ];
    let metrics = BTreeMap::from([("loss:sum".to_owned(), 4.9500001), ("clip_frac:mean".to_owned(), 0.25)]);
    ForwardBackwardResult { outputs, metrics }
}

fn fb_result_without_datums() -> ForwardBackwardResult {
    ForwardBackwardResult { outputs: vec![], metrics: BTreeMap::from([("loss:sum".to_owned(), 0.0)]) }
}

/// Everything turned on: top-k rows of uneven width (and an empty one), prompt logprobs with NaN.
fn sample_result() -> SampleResult {
    let topk: Vec<TopK> = vec![vec![(5, -0.1), (7, -2.5)], vec![(9, -0.3)], vec![]];
    SampleResult {
        sequences: vec![
            SampledSequence {
                tokens: vec![5, 9, 2],
                logprobs: vec![-0.1, -0.3, -4.0],
                stop_reason: StopReason::Stop,
                topk_logprobs: Some(topk),
            },
            SampledSequence {
                tokens: vec![100, 49151],
                logprobs: vec![-1.25, -0.0625],
                stop_reason: StopReason::Length,
                topk_logprobs: None,
            },
        ],
        prompt_logprobs: Some(vec![f32::NAN, f32::NAN, -0.25, -7.5]),
        topk_prompt_logprobs: Some(vec![vec![], vec![], vec![(3, -0.5)], vec![(4, -0.75), (8, -1.0), (0, -1.5)]]),
    }
}

/// Nothing optional: the SDK must report the prompt fields as absent.
fn plain_sample_result() -> SampleResult {
    SampleResult {
        sequences: vec![SampledSequence {
            tokens: vec![0],
            logprobs: vec![-0.5],
            stop_reason: StopReason::Length,
            topk_logprobs: None,
        }],
        prompt_logprobs: None,
        topk_prompt_logprobs: None,
    }
}

fn tensor_view(tensor: &Tensor) -> Value {
    let (dtype, values) = match &tensor.values {
        TensorValues::F32(v) => ("float32", v.iter().map(|&x| json!(f64::from(x))).collect::<Vec<_>>()),
        TensorValues::I64(v) => ("int64", v.iter().map(|&x| json!(x)).collect()),
    };
    json!({"dtype": dtype, "shape": tensor.shape, "values": values})
}

/// What `deserialize_forward_backward_output` must return.
fn fb_view(file: &str, result: &ForwardBackwardResult) -> Value {
    let outputs: Vec<Value> = result
        .outputs
        .iter()
        .map(|o| json!({"logprobs": tensor_view(&o.logprobs), "elementwise_loss": tensor_view(&o.elementwise_loss)}))
        .collect();
    json!({"file": file, "loss_fn_output_type": "ArrayRecord", "metrics": result.metrics, "outputs": outputs})
}

fn float_or_null(x: f32) -> Value {
    if x.is_nan() {
        Value::Null
    } else {
        json!(f64::from(x))
    }
}

fn topk_view(rows: &Option<Vec<TopK>>) -> Value {
    let Some(rows) = rows else { return Value::Null };
    rows.iter()
        .map(
            |row| {
                if row.is_empty() {
                    Value::Null
                } else {
                    row.iter().map(|&(t, lp)| json!([t, f64::from(lp)])).collect()
                }
            },
        )
        .collect()
}

/// What `deserialize_sample_response` must return (sequence ids are stamped later by the client).
fn sample_view(file: &str, result: &SampleResult) -> Value {
    let sequences: Vec<Value> = result
        .sequences
        .iter()
        .map(|s| {
            json!({
                "tokens": s.tokens,
                "logprobs": s.logprobs.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                "stop_reason": match s.stop_reason { StopReason::Stop => "stop", StopReason::Length => "length" },
                "topk_logprobs": topk_view(&s.topk_logprobs),
            })
        })
        .collect();
    let prompt = result.prompt_logprobs.as_ref().map(|lp| lp.iter().map(|&x| float_or_null(x)).collect::<Vec<_>>());
    json!({
        "file": file,
        "sequences": sequences,
        "prompt_logprobs": prompt,
        "topk_prompt_logprobs": topk_view(&result.topk_prompt_logprobs),
    })
}

#[test]
fn encoded_results_match_the_committed_bytes_the_sdk_decoded() {
    let fb_cases = [("rust_fb_output.bin", fb_result()), ("rust_fb_output_empty.bin", fb_result_without_datums())];
    let sample_cases =
        [("rust_sample_response.bin", sample_result()), ("rust_sample_response_plain.bin", plain_sample_result())];
    let mut encoded: Vec<(&str, Vec<u8>)> = Vec::new();
    for (file, result) in &fb_cases {
        encoded.push((file, wire::encode_forward_backward_output(result)));
    }
    for (file, result) in &sample_cases {
        encoded.push((file, wire::encode_sample_response(result)));
    }
    let expected = json!({
        "writer": "runtime/tests/wire_sdk_outputs.rs",
        "forward_backward_outputs": fb_cases.iter().map(|(f, r)| fb_view(f, r)).collect::<Vec<_>>(),
        "sample_responses": sample_cases.iter().map(|(f, r)| sample_view(f, r)).collect::<Vec<_>>(),
    });
    let expected_text = serde_json::to_string_pretty(&expected).unwrap() + "\n";
    let dir = fixtures();
    if std::env::var_os("LATHE_BLESS_WIRE").is_some() {
        for (file, bytes) in &encoded {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
        std::fs::write(dir.join("rust_outputs.json"), &expected_text).unwrap();
    }
    for (file, bytes) in &encoded {
        let committed = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e} (bless it first)"));
        assert_eq!(&committed, bytes, "{file} differs from what the SDK checked; re-bless and re-run gen_vectors.py");
    }
    let committed = std::fs::read_to_string(dir.join("rust_outputs.json")).unwrap();
    assert_eq!(committed, expected_text, "rust_outputs.json is stale; re-bless and re-run gen_vectors.py");
}
