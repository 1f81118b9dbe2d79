//! GGUF tensor names → HF transformers names (llama.cpp's `blk.N.attn_q` → `model.layers.N.self_attn.q_proj`).

use super::super::error::LoadError;

/// What a GGUF tensor becomes on the HF side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfName {
    pub name: String,
    /// The layer index for `blk.N.*` tensors.
    pub layer: Option<usize>,
}

/// Maps a GGUF tensor name to its HF name.
///
/// # Errors
/// `GgufTensorName` for a name lathe does not know (rather than silently dropping a weight),
/// including `rope_freqs.weight` (Llama 3 rope scaling baked into the file) and MoE expert tensors.
pub fn hf_name(gguf: &str) -> Result<HfName, LoadError> {
    let unknown = |why: &str| LoadError::GgufTensorName { tensor: gguf.to_string(), why: why.to_string() };
    let top =
        match gguf {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            "rope_freqs.weight" => return Err(unknown(
                "Llama-3 rope scaling stored as a frequency tensor is not supported; use the HF safetensors checkpoint",
            )),
            _ => None,
        };
    if let Some(name) = top {
        return Ok(HfName { name: name.to_string(), layer: None });
    }
    let rest = gguf.strip_prefix("blk.").ok_or_else(|| unknown("not a known top-level tensor or `blk.N.*`"))?;
    let (layer, suffix) = rest.split_once('.').ok_or_else(|| unknown("`blk.` without a layer index"))?;
    let layer: usize = layer.parse().map_err(|_| unknown("layer index is not a number"))?;
    let (module, kind) = suffix.rsplit_once('.').ok_or_else(|| unknown("no `.weight`/`.bias` suffix"))?;
    if kind != "weight" && kind != "bias" {
        return Err(unknown("suffix is neither `.weight` nor `.bias`"));
    }
    let hf_module = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return Err(unknown("unknown layer module (MoE GGUFs are not supported yet)")),
    };
    Ok(HfName { name: format!("model.layers.{layer}.{hf_module}.{kind}"), layer: Some(layer) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_to_transformers_names() {
        let cases = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
            ("blk.3.attn_k.bias", "model.layers.3.self_attn.k_proj.bias"),
            ("blk.12.attn_output.weight", "model.layers.12.self_attn.o_proj.weight"),
            ("blk.1.attn_k_norm.weight", "model.layers.1.self_attn.k_norm.weight"),
            ("blk.2.attn_norm.weight", "model.layers.2.input_layernorm.weight"),
            ("blk.2.ffn_norm.weight", "model.layers.2.post_attention_layernorm.weight"),
            ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"),
        ];
        for (g, h) in cases {
            assert_eq!(hf_name(g).unwrap().name, h, "{g}");
        }
        assert_eq!(hf_name("blk.29.ffn_up.weight").unwrap().layer, Some(29));
    }

    #[test]
    fn unknown_names_are_errors_not_silently_dropped() {
        for bad in
            ["rope_freqs.weight", "blk.x.attn_q.weight", "blk.0.ffn_gate_exps.weight", "blk.0.attn_q.scale", "foo"]
        {
            assert!(matches!(hf_name(bad), Err(LoadError::GgufTensorName { .. })), "{bad}");
        }
    }
}
