//! The standard PEFT LoRA adapter format, both ways: `adapter_config.json` (a PEFT `LoraConfig`)
//! and `adapter_model.safetensors` (keys `base_model.model.<module path>.lora_{A,B}.weight`,
//! `A (rank, d_in)`, `B (d_out, rank)`, f32). lathe's training checkpoints embed the same two
//! files, so any checkpoint directory is also a PEFT adapter.
//!
//! Reading accepts only what lathe can apply exactly: plain LoRA (no DoRA, no rsLoRA, no per-module
//! rank or alpha), with attention projections adapted all together or not at all, MLP likewise.

use std::path::Path;

use runtime::LoraConfig;
use serde_json::{json, Value};

use super::error::ServiceError;
use crate::adapter::{peft_keys, LoraPair, LoraSite, LoraWeights, ATTN_PROJ, MLP_PROJ};
use crate::load::load_safetensors_file;
use crate::tensor::{HostTensor, WeightMap};

pub(super) const ADAPTER_CONFIG: &str = "adapter_config.json";
pub(super) const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const LM_HEAD: &str = "lm_head";

/// The module names an adapter under `lora` adapts, sorted (as PEFT writes them).
pub(super) fn target_modules(lora: &LoraConfig) -> Vec<&'static str> {
    let mut names = Vec::new();
    if lora.train_attn {
        names.extend(ATTN_PROJ);
    }
    if lora.train_mlp {
        names.extend(MLP_PROJ);
    }
    if lora.train_unembed {
        names.push(LM_HEAD);
    }
    names.sort_unstable();
    names
}

/// A PEFT `adapter_config.json` for `lora` on `base_model`.
pub(super) fn adapter_config(base_model: &str, lora: &LoraConfig) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": target_modules(lora),
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

/// Every pair of `weights` as PEFT-keyed tensors, each key prefixed by `prefix` (`""` for the
/// adapter, `m.` / `v.` for Adam moments).
pub(super) fn adapter_tensors(weights: &LoraWeights, prefix: &str) -> WeightMap {
    let mut map = WeightMap::default();
    for (path, pair) in &weights.sites {
        let (a_key, b_key) = peft_keys(path);
        map.insert(format!("{prefix}{a_key}"), HostTensor::new(vec![pair.rank, pair.d_in], pair.a.clone()));
        map.insert(format!("{prefix}{b_key}"), HostTensor::new(vec![pair.d_out, pair.rank], pair.b.clone()));
    }
    map
}

/// Reads `dir/file` as a safetensors file.
pub(super) fn read_tensors(dir: &Path, file: &str) -> Result<WeightMap, ServiceError> {
    load_safetensors_file(&dir.join(file)).map_err(|source| ServiceError::CheckpointFile { dir: dir.into(), source })
}

/// Takes the pairs of `sites` at `rank` out of `map` (keys prefixed by `prefix`). Every tensor of
/// `map` under `prefix` must be used, and every value must be finite.
///
/// # Errors
/// `ServiceError::Checkpoint` naming `file` and the first missing, misshapen, unexpected or
/// non-finite tensor.
pub(super) fn weights_from_tensors(
    map: &mut WeightMap,
    prefix: &str,
    sites: &[LoraSite],
    rank: usize,
    dir: &Path,
    file: &str,
) -> Result<LoraWeights, ServiceError> {
    let mut weights = LoraWeights::default();
    for site in sites {
        let (a_key, b_key) = peft_keys(&site.path);
        let mut take = |key: String, shape: [usize; 2]| match map.tensors.remove(&key) {
            Some(t) if t.shape == shape => Ok(t.data),
            Some(t) => Err(ServiceError::checkpoint(
                dir,
                format!(
                    "{file}: tensor `{key}` has shape {:?}, expected {shape:?}; was it saved with another rank or \
                     base model?",
                    t.shape
                ),
            )),
            None => Err(ServiceError::checkpoint(
                dir,
                format!("{file} has no tensor `{key}`; was it saved for another base model or LoRA config?"),
            )),
        };
        let a = take(format!("{prefix}{a_key}"), [rank, site.d_in])?;
        let b = take(format!("{prefix}{b_key}"), [site.d_out, rank])?;
        weights.sites.insert(site.path.clone(), LoraPair { d_in: site.d_in, d_out: site.d_out, rank, a, b });
    }
    if let Some(extra) = map.tensors.keys().find(|k| k.starts_with(prefix)) {
        return Err(ServiceError::checkpoint(
            dir,
            format!("{file} has tensor `{extra}`, which the adapter's config does not adapt; the files disagree"),
        ));
    }
    if let Some(path) = weights.sites.iter().find(|(_, p)| !p.a.iter().chain(&p.b).all(|x| x.is_finite())).map(|s| s.0)
    {
        return Err(ServiceError::checkpoint(
            dir,
            format!("{file}: the tensors of `{path}` hold NaN or infinite values; the file is corrupt"),
        ));
    }
    Ok(weights)
}

/// What an `adapter_config.json` describes, once checked.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct PeftConfig {
    pub lora: LoraConfig,
    pub base_model: Option<String>,
}

/// Parses and checks a PEFT `adapter_config.json`.
///
/// # Errors
/// `ServiceError::Checkpoint` naming the field lathe cannot honour.
pub(super) fn parse_adapter_config(dir: &Path, text: &str) -> Result<PeftConfig, ServiceError> {
    let bad = |why: String| ServiceError::checkpoint(dir, format!("{ADAPTER_CONFIG}: {why}"));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    let field = |name: &str| obj.get(name).filter(|x| !x.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => return Err(bad(format!("peft_type is {other:?}; only \"LORA\" adapters can be loaded"))),
    }
    for flag in ["use_dora", "use_rslora", "fan_in_fan_out"] {
        if field(flag).and_then(Value::as_bool).unwrap_or(false) {
            return Err(bad(format!("`{flag}` is true; lathe applies plain LoRA only")));
        }
    }
    for pattern in ["rank_pattern", "alpha_pattern"] {
        if field(pattern).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return Err(bad(format!("`{pattern}` is not empty; lathe needs one rank and alpha for every module")));
        }
    }
    if let Some(bias) = field("bias").and_then(Value::as_str).filter(|b| *b != "none") {
        return Err(bad(format!("bias is \"{bias}\"; only \"none\" is supported")));
    }
    let rank = field("r").and_then(Value::as_u64).ok_or_else(|| bad("`r` is missing or not an integer".into()))?;
    let alpha = field("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("`lora_alpha` is missing or not a number".into()))?;
    let names: Vec<&str> = field("target_modules")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_str).collect())
        .ok_or_else(|| bad("`target_modules` must be a list of module names".into()))?;
    let (train_attn, train_mlp, train_unembed) = targets(&names).map_err(bad)?;
    let rank = usize::try_from(rank).map_err(|_| bad(format!("`r` = {rank} is too large")))?;
    let lora =
        LoraConfig::new(rank, alpha as f32, 0, train_attn, train_mlp, train_unembed).map_err(|e| bad(e.to_string()))?;
    let base_model = field("base_model_name_or_path").and_then(Value::as_str).map(str::to_string);
    Ok(PeftConfig { lora, base_model })
}

/// `(train_attn, train_mlp, train_unembed)` from PEFT target module names.
fn targets(names: &[&str]) -> Result<(bool, bool, bool), String> {
    if let Some(unknown) = names.iter().find(|n| !(ATTN_PROJ.contains(n) || MLP_PROJ.contains(n) || **n == LM_HEAD)) {
        return Err(format!(
            "target module `{unknown}` is not one lathe adapts (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, \
             down_proj, lm_head)"
        ));
    }
    let group = |set: &[&str], what: &str| {
        let present = set.iter().filter(|p| names.contains(p)).count();
        match present {
            0 => Ok(false),
            n if n == set.len() => Ok(true),
            _ => Err(format!(
                "target_modules adapts only some {what} projections ({}); lathe adapts all of {} together",
                set.iter().filter(|p| names.contains(p)).copied().collect::<Vec<_>>().join(", "),
                set.join(", ")
            )),
        }
    };
    Ok((group(&ATTN_PROJ, "attention")?, group(&MLP_PROJ, "MLP")?, names.contains(&LM_HEAD)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(attn: bool, mlp: bool, unembed: bool) -> LoraConfig {
        LoraConfig::new(4, 16.0, 3, attn, mlp, unembed).unwrap()
    }

    #[test]
    fn a_written_adapter_config_parses_back_to_the_same_config_except_the_seed() {
        for (a, m, u) in [(true, true, false), (true, false, true), (false, true, false), (true, true, true)] {
            let config = lora(a, m, u);
            let text = adapter_config("tiny/llama3", &config).to_string();
            let parsed = parse_adapter_config(Path::new("/x"), &text).unwrap();
            assert_eq!(parsed.lora, LoraConfig { seed: 0, ..config });
            assert_eq!(parsed.base_model.as_deref(), Some("tiny/llama3"));
        }
    }

    #[test]
    fn target_modules_are_sorted_and_name_exactly_the_adapted_modules() {
        assert_eq!(target_modules(&lora(false, true, true)), vec!["down_proj", "gate_proj", "lm_head", "up_proj"]);
        assert_eq!(target_modules(&lora(true, false, false)), vec!["k_proj", "o_proj", "q_proj", "v_proj"]);
    }

    #[test]
    fn adapters_lathe_cannot_apply_exactly_are_rejected_naming_the_field() {
        let base = adapter_config("m", &lora(true, true, false));
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            parse_adapter_config(Path::new("/ckpt"), &v.to_string()).unwrap_err().to_string()
        };
        assert!(with("use_dora", json!(true)).contains("use_dora"));
        assert!(with("rank_pattern", json!({"q_proj": 8})).contains("rank_pattern"));
        assert!(with("peft_type", json!("IA3")).contains("peft_type"));
        assert!(with("target_modules", json!(["q_proj", "v_proj"])).contains("only some attention"));
        assert!(with("target_modules", json!(["embed_tokens"])).contains("embed_tokens"));
        assert!(with("r", json!(0)).contains("rank"));
        let err = parse_adapter_config(Path::new("/ckpt"), "{not json").unwrap_err().to_string();
        assert!(err.contains("/ckpt") && err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn tensors_round_trip_and_strays_or_wrong_shapes_are_named() {
        let sites = vec![LoraSite { path: "lm_head".into(), d_in: 3, d_out: 5 }];
        let mut w = LoraWeights::zeros(&sites, 2);
        w.sites.get_mut("lm_head").unwrap().a[1] = 0.5;
        let dir = Path::new("/ckpt");
        let mut map = adapter_tensors(&w, "m.");
        assert_eq!(weights_from_tensors(&mut map, "m.", &sites, 2, dir, "f").unwrap(), w);
        let mut map = adapter_tensors(&w, "");
        let err = weights_from_tensors(&mut map, "", &sites, 4, dir, "f").unwrap_err().to_string();
        assert!(err.contains("lora_A.weight") && err.contains("[4, 3]"), "{err}");
        let mut map = adapter_tensors(&w, "");
        map.insert("base_model.model.x.lora_A.weight", HostTensor::zeros(vec![1]));
        let err = weights_from_tensors(&mut map, "", &sites, 2, dir, "f").unwrap_err().to_string();
        assert!(err.contains("base_model.model.x.lora_A.weight"), "{err}");
    }
}
