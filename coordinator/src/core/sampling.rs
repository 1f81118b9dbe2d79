//! Tinker `SampleRequest` (JSON) → the control protocol's `SampleRequest`, validated. Anything
//! lathe cannot honour (images, `target_prompt_logprobs`, `prompt_alt_tokens_k > 0`,
//! `record_stability_info`) is refused naming the field, because the SDK checks some of these
//! results and would otherwise blame the server ("server may predate this feature").

use crate::error::{invalid, CoordinatorError};
use runtime::control::{SampleRequest, SamplingConfig, StopConditions};
use serde::Deserialize;
use serde_json::Value;

/// Most samples per request.
pub const NUM_SAMPLES_MAX: usize = 128;
/// Most top-k alternatives per position.
pub const TOPK_MAX: usize = 64;

/// The JSON body of `POST /api/v1/asample`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SampleRequestJson {
    pub num_samples: Option<usize>,
    pub prompt: ModelInputJson,
    pub sampling_params: SamplingParamsJson,
    pub sampling_session_id: Option<String>,
    pub seq_id: Option<u64>,
    pub base_model: Option<String>,
    pub model_path: Option<String>,
    #[serde(default)]
    pub prompt_logprobs: Option<bool>,
    pub topk_prompt_logprobs: Option<usize>,
    pub topk_sample_logprobs: Option<usize>,
    pub target_prompt_logprobs: Option<Value>,
    pub prompt_alt_tokens_k: Option<i64>,
    pub prompt_logprobs_last_n: Option<usize>,
    pub record_stability_info: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ModelInputJson {
    pub chunks: Vec<Value>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SamplingParamsJson {
    pub max_tokens: Option<i64>,
    pub seed: Option<Value>,
    pub stop: Option<Value>,
    pub temperature: Option<f64>,
    pub top_k: Option<i64>,
    pub top_p: Option<f64>,
}

/// What the target model allows.
#[derive(Clone, Copy, Debug)]
pub struct ModelLimits {
    pub vocab_size: usize,
    pub max_context_length: usize,
}

/// Concatenates `encoded_text` chunks into token ids; `field` names the input in errors.
pub fn prompt_tokens(chunks: &[Value], limits: ModelLimits, field: &str) -> Result<Vec<u32>, CoordinatorError> {
    let mut tokens = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = chunk.get("type").and_then(Value::as_str).unwrap_or("encoded_text");
        if kind != "encoded_text" {
            return Err(invalid(format!(
                "{field}.chunks[{i}]: chunk type {kind:?} is not supported (text models only)"
            )));
        }
        let list = chunk
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(format!("{field}.chunks[{i}].tokens: expected a list of token ids")))?;
        for t in list {
            let id = t.as_u64().filter(|&id| (id as usize) < limits.vocab_size).ok_or_else(|| {
                invalid({
                    format!(
                        "{field}.chunks[{i}].tokens: {t} is not a token id below the vocabulary size {}",
                        limits.vocab_size
                    )
                })
            })?;
            tokens.push(id as u32);
        }
    }
    if tokens.is_empty() {
        return Err(invalid(format!("{field}: the prompt is empty; give at least one token")));
    }
    Ok(tokens)
}

fn stop_conditions(stop: Option<&Value>) -> Result<StopConditions, CoordinatorError> {
    let mut out = StopConditions { token_ids: vec![], strings: vec![], eos: true };
    match stop {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => out.strings.push(s.clone()),
        Some(Value::Array(items)) if items.is_empty() => out.eos = false,
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) if out.token_ids.is_empty() => out.strings.push(s.clone()),
                    Value::Number(n) if out.strings.is_empty() => {
                        let id = n
                            .as_u64()
                            .and_then(|v| u32::try_from(v).ok())
                            .ok_or_else(|| invalid(format!("sampling_params.stop: {n} is not a token id")))?;
                        out.token_ids.push(id);
                    }
                    _ => {
                        return Err(invalid(
                            "sampling_params.stop: give a string, a list of strings or a list of token ids",
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(invalid("sampling_params.stop: give a string, a list of strings or a list of token ids"))
        }
    }
    Ok(out)
}

fn sampling_config(
    p: &SamplingParamsJson,
    prompt_len: usize,
    limits: ModelLimits,
    default_seed: u64,
) -> Result<SamplingConfig, CoordinatorError> {
    let room = limits.max_context_length.saturating_sub(prompt_len);
    let max_tokens = p.max_tokens.ok_or(invalid("sampling_params.max_tokens is required"))?;
    if max_tokens < 1 || max_tokens as usize > room {
        return Err(invalid(format!(
            "sampling_params.max_tokens: {max_tokens} is not in 1..={room} \
             (context {} minus a {prompt_len}-token prompt)",
            limits.max_context_length
        )));
    }
    let temperature = p.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(invalid(format!("sampling_params.temperature: {temperature} is not a finite number >= 0")));
    }
    let top_k = p.top_k.unwrap_or(-1);
    if !(top_k == -1 || (1..=i64::from(i32::MAX)).contains(&top_k)) {
        return Err(invalid(format!("sampling_params.top_k: {top_k} is not -1 (off) or a positive count")));
    }
    let top_p = p.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(format!("sampling_params.top_p: {top_p} is not in (0, 1]")));
    }
    let seed = match &p.seed {
        None | Some(Value::Null) => default_seed,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u,
            // Two's complement keeps distinct negative seeds distinct.
            (None, Some(i)) => i as u64,
            _ => return Err(invalid(format!("sampling_params.seed: {n} is not a 64-bit integer"))),
        },
        Some(other) => return Err(invalid(format!("sampling_params.seed: {other} is not an integer"))),
    };
    Ok(SamplingConfig {
        max_tokens: max_tokens as usize,
        temperature: temperature as f32,
        top_k: top_k as i32,
        top_p: top_p as f32,
        seed,
        stop: stop_conditions(p.stop.as_ref())?,
    })
}

/// Validates a sample request for `sampler`. `default_seed` is used when the client gave none.
pub fn to_control(
    req: &SampleRequestJson,
    sampler: &str,
    limits: ModelLimits,
    default_seed: u64,
) -> Result<SampleRequest, CoordinatorError> {
    if req.target_prompt_logprobs.is_some() {
        return Err(invalid("target_prompt_logprobs is not supported by lathe; leave it unset"));
    }
    if req.prompt_alt_tokens_k.unwrap_or(0) != 0 {
        return Err(invalid("prompt_alt_tokens_k is not supported by lathe; use 0"));
    }
    if req.record_stability_info.unwrap_or(false) {
        return Err(invalid("record_stability_info is not supported by lathe; use false"));
    }
    let num_samples = req.num_samples.unwrap_or(1);
    if !(1..=NUM_SAMPLES_MAX).contains(&num_samples) {
        return Err(invalid(format!("num_samples: {num_samples} is not in 1..={NUM_SAMPLES_MAX}")));
    }
    let prompt = prompt_tokens(&req.prompt.chunks, limits, "prompt")?;
    let topk_prompt_logprobs = req.topk_prompt_logprobs.unwrap_or(0);
    let topk_sample_logprobs = req.topk_sample_logprobs.unwrap_or(0);
    for (name, k) in [("topk_prompt_logprobs", topk_prompt_logprobs), ("topk_sample_logprobs", topk_sample_logprobs)] {
        if k > TOPK_MAX {
            return Err(invalid(format!("{name}: {k} is above the maximum {TOPK_MAX}")));
        }
    }
    if req.prompt_logprobs_last_n == Some(0) {
        return Err(invalid("prompt_logprobs_last_n: 0 scores nothing; leave it unset or give a positive count"));
    }
    let params = sampling_config(&req.sampling_params, prompt.len(), limits, default_seed)?;
    let out = SampleRequest {
        sampler: sampler.to_string(),
        prompt,
        num_samples,
        params,
        prompt_logprobs: req.prompt_logprobs.unwrap_or(false),
        prompt_logprobs_last_n: req.prompt_logprobs_last_n,
        topk_prompt_logprobs,
        topk_sample_logprobs,
    };
    assert!(!out.prompt.is_empty() && out.num_samples >= 1);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: ModelLimits = ModelLimits { vocab_size: 100, max_context_length: 64 };

    fn parse(v: Value) -> SampleRequestJson {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        let chunks = json!([{"tokens":[1,2],"type":"encoded_text"},{"tokens":[3],"type":"encoded_text"}]);
        json!({"num_samples":2,"prompt":{"chunks":chunks},
               "sampling_params":{"max_tokens":4,"seed":42,"stop":["\n"],"temperature":0.7,"top_k":50,"top_p":0.9},
               "sampling_session_id":"s:sample:0","seq_id":0,"prompt_logprobs":true,"topk_prompt_logprobs":2,
               "topk_sample_logprobs":2,"prompt_alt_tokens_k":0,"record_stability_info":false,"type":"sample"})
    }

    #[test]
    fn the_sdk_request_shape_converts_field_by_field() {
        let r = to_control(&parse(base()), "s:sample:0", LIMITS, 7).unwrap();
        assert_eq!(r.prompt, vec![1, 2, 3]);
        assert_eq!(r.num_samples, 2);
        assert_eq!((r.params.max_tokens, r.params.seed, r.params.top_k), (4, 42, 50));
        assert_eq!((r.params.temperature, r.params.top_p), (0.7, 0.9));
        assert_eq!(r.params.stop, StopConditions { token_ids: vec![], strings: vec!["\n".into()], eos: true });
        assert!(r.prompt_logprobs);
        assert_eq!((r.topk_prompt_logprobs, r.topk_sample_logprobs), (2, 2));
    }

    #[test]
    fn stop_forms_map_to_strings_token_ids_or_no_stopping_at_all() {
        assert_eq!(stop_conditions(None).unwrap(), StopConditions { token_ids: vec![], strings: vec![], eos: true });
        assert!(!stop_conditions(Some(&json!([]))).unwrap().eos);
        assert_eq!(stop_conditions(Some(&json!([5, 6]))).unwrap().token_ids, vec![5, 6]);
        assert_eq!(stop_conditions(Some(&json!("END"))).unwrap().strings, vec!["END".to_string()]);
        assert!(stop_conditions(Some(&json!(["a", 3]))).is_err());
        assert!(stop_conditions(Some(&json!(3))).is_err());
    }

    #[test]
    fn unsupported_fields_are_refused_naming_the_field() {
        for (field, value) in [
            ("target_prompt_logprobs", json!({"data":[1],"dtype":"int64"})),
            ("prompt_alt_tokens_k", json!(2)),
            ("record_stability_info", json!(true)),
        ] {
            let mut v = base();
            v[field] = value;
            let err = to_control(&parse(v), "s", LIMITS, 0).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let mut v = base();
        v["prompt"]["chunks"][0] = json!({"type":"image","data":"","format":"png"});
        assert!(to_control(&parse(v), "s", LIMITS, 0).unwrap_err().to_string().contains("image"));
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_field() {
        for (path, value, field) in [
            ("max_tokens", json!(0), "max_tokens"),
            ("max_tokens", json!(62), "max_tokens"),
            ("temperature", json!(-1.0), "temperature"),
            ("top_k", json!(0), "top_k"),
            ("top_p", json!(0.0), "top_p"),
        ] {
            let mut v = base();
            v["sampling_params"][path] = value;
            let err = to_control(&parse(v), "s", LIMITS, 0).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let mut v = base();
        v["prompt"]["chunks"][0]["tokens"] = json!([100]);
        assert!(to_control(&parse(v), "s", LIMITS, 0).unwrap_err().to_string().contains("vocabulary"));
        let mut v = base();
        v["sampling_params"].as_object_mut().unwrap().remove("max_tokens");
        assert!(to_control(&parse(v), "s", LIMITS, 0).unwrap_err().to_string().contains("max_tokens"));
    }

    #[test]
    fn a_missing_seed_uses_the_default_and_negative_seeds_stay_distinct() {
        let mut v = base();
        v["sampling_params"].as_object_mut().unwrap().remove("seed");
        assert_eq!(to_control(&parse(v), "s", LIMITS, 7).unwrap().params.seed, 7);
        let mut v = base();
        v["sampling_params"]["seed"] = json!(-1);
        assert_eq!(to_control(&parse(v), "s", LIMITS, 7).unwrap().params.seed, u64::MAX);
    }
}
