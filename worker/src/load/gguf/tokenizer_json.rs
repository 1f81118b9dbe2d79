//! A HF `tokenizer.json` and `tokenizer_config.json` built from a GGUF's `tokenizer.ggml.*`
//! metadata (byte-level BPE only, `tokenizer.ggml.model == "gpt2"`).
//!
//! Vocabulary from `tokenizer.ggml.tokens`, merges from `tokenizer.ggml.merges`, added tokens
//! from `tokenizer.ggml.token_type` (3 = control and 2 = unknown are special, 4 = user-defined is
//! a plain added token). The pre-tokenizer follows `tokenizer.ggml.pre`: `smollm` adds the
//! individual-digit split the original SmolLM2 tokenizer has; `qwen2` and `llama-bpe` use their
//! HF split regexes; `gpt2`/`default` use the GPT-2 regex of the ByteLevel pre-tokenizer.

use serde_json::{json, Map, Value};

use super::super::error::LoadError;
use super::value::GgufMetadata;

/// The split regex of the HF Qwen2 tokenizer.
const QWEN2_REGEX: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// The split regex of the HF Llama 3 tokenizer.
const LLAMA3_REGEX: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// ggml token types.
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The tokenizer files of a GGUF model, as HF writes them.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTokenizerFiles {
    /// `tokenizer.json` text.
    pub tokenizer_json: String,
    /// `tokenizer_config.json` content.
    pub tokenizer_config: Value,
    pub chat_template: Option<String>,
}

/// Builds the tokenizer files; `model_max_length` goes into `tokenizer_config.json`.
///
/// # Errors
/// `GgufTokenizer` when the metadata is not a byte-level BPE tokenizer lathe can rebuild (another
/// `tokenizer.ggml.model`, an unknown `tokenizer.ggml.pre`, malformed merges, token types that
/// do not match the vocabulary, special token ids out of range); `GgufKeyType` for mistyped keys.
pub fn build(meta: &GgufMetadata, model_max_length: usize) -> Result<GgufTokenizerFiles, LoadError> {
    let err = |m: String| LoadError::GgufTokenizer(m);
    let model = meta.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) tokenizers can be rebuilt"
        )));
    }
    let tokens = meta
        .opt_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| LoadError::GgufMissingKey { key: "tokenizer.ggml.tokens".into() })?;
    let merges = meta
        .opt_str_array("tokenizer.ggml.merges")?
        .ok_or_else(|| LoadError::GgufMissingKey { key: "tokenizer.ggml.merges".into() })?;
    let types = meta.opt_int_array("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(err(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        // A repeated token string keeps its first id, as llama.cpp's lookup does.
        vocab.entry(token.to_string()).or_insert(Value::from(id));
        if matches!(ty, TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED) {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == TOKEN_TYPE_USER_DEFINED, "special": ty != TOKEN_TYPE_USER_DEFINED,
            }));
        }
    }
    let merge_pairs = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok(json!([a, b])),
            _ => Err(err(format!("merge `{m}` is not two tokens separated by one space"))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let pre = meta.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": use_regex})
    };
    let split =
        |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}),
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]})
        }
        "gpt2" | "default" => byte_level(true),
        other => {
            return Err(err(format!(
                "tokenizer.ggml.pre `{other}` is not supported (supported: smollm, qwen2, llama-bpe, gpt2, default)"
            )))
        }
    };

    let token_at = |key: &str| -> Result<Option<String>, LoadError> {
        match meta.opt_usize(key)? {
            None => Ok(None),
            Some(id) => tokens
                .get(id)
                .map(|t| Some(t.to_string()))
                .ok_or_else(|| err(format!("{key} = {id} is outside the {}-token vocabulary", tokens.len()))),
        }
    };
    let bos = token_at("tokenizer.ggml.bos_token_id")?;
    let eos = token_at("tokenizer.ggml.eos_token_id")?;
    let pad = token_at("tokenizer.ggml.padding_token_id")?;
    let unk = token_at("tokenizer.ggml.unknown_token_id")?;
    let add_bos = meta.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = meta.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let byte_level_post =
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post_processor = match (&bos, add_bos) {
        (Some(bos_token), true) => {
            let bos_id = meta.get_usize("tokenizer.ggml.bos_token_id")?;
            let special = |seq: &str| json!({"Sequence": {"id": seq, "type_id": 0}});
            let bos_piece = json!({"SpecialToken": {"id": bos_token, "type_id": 0}});
            json!({"type": "Sequence", "processors": [byte_level_post, {
                "type": "TemplateProcessing",
                "single": [bos_piece, special("A")],
                "pair": [bos_piece, special("A"), bos_piece, special("B")],
                "special_tokens": {bos_token: {"id": bos_token, "ids": [bos_id], "tokens": [bos_token]}},
            }]})
        }
        _ => byte_level_post,
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": matches!(pre, "llama-bpe" | "llama3"),
            "vocab": vocab, "merges": merge_pairs,
        },
    });

    let chat_template = match meta.opt_str("tokenizer.chat_template")? {
        Some(t) => Some(t.to_string()),
        None => meta.opt_str("tokenizer.ggml.chat_template")?.map(str::to_string),
    };
    let added_decoder: Map<String, Value> = tokenizer["added_tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    let mut entry = t.clone();
                    let id = entry.as_object_mut().and_then(|o| o.remove("id")).unwrap_or(Value::Null);
                    (id.to_string(), entry)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tokenizer_config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "added_tokens_decoder": added_decoder,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "clean_up_tokenization_spaces": false,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    if let (Some(t), Some(obj)) = (&chat_template, tokenizer_config.as_object_mut()) {
        obj.insert("chat_template".into(), Value::from(t.as_str()));
    }
    Ok(GgufTokenizerFiles { tokenizer_json: tokenizer.to_string(), tokenizer_config, chat_template })
}

#[cfg(test)]
mod tests {
    use super::super::super::tokenizer::tokenizer_from_json;
    use super::super::value::GgufValue;
    use super::*;

    /// A toy byte-level vocabulary: two control tokens, the letters of "hello", "Ġ", digits, and
    /// merges that build "he", "ll", "hell", "hello".
    fn toy_meta(pre: &str) -> GgufMetadata {
        let tokens = ["<s>", "</s>", "h", "e", "l", "o", "Ġ", "1", "2", "he", "ll", "hell", "hello", "12"];
        let types = [3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let merges = ["h e", "l l", "he ll", "hell o", "1 2"];
        let strs = |v: &[&str]| GgufValue::Array(v.iter().map(|s| GgufValue::Str(s.to_string())).collect());
        let mut m = GgufMetadata::default();
        m.values.insert("tokenizer.ggml.model".into(), GgufValue::Str("gpt2".into()));
        m.values.insert("tokenizer.ggml.pre".into(), GgufValue::Str(pre.into()));
        m.values.insert("tokenizer.ggml.tokens".into(), strs(&tokens));
        m.values.insert("tokenizer.ggml.merges".into(), strs(&merges));
        m.values.insert(
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(types.iter().map(|&t| GgufValue::I32(t)).collect()),
        );
        m.values.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(0));
        m.values.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(1));
        m.values.insert("tokenizer.chat_template".into(), GgufValue::Str("{{ messages }}".into()));
        m
    }

    #[test]
    fn toy_vocabulary_encodes_with_merges_and_control_tokens() {
        let files = build(&toy_meta("gpt2"), 128).unwrap();
        let tok = tokenizer_from_json(&files.tokenizer_json).unwrap();
        let enc = tok.encode("hello hello</s>", false).unwrap();
        assert_eq!(enc.get_ids(), &[12, 6, 12, 1]);
        assert_eq!(tok.decode(&[12, 6, 12], false).unwrap(), "hello hello");
        assert_eq!(files.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(files.tokenizer_config["eos_token"], "</s>");
        assert_eq!(files.tokenizer_config["bos_token"], "<s>");
        assert_eq!(files.tokenizer_config["added_tokens_decoder"]["1"]["content"], "</s>");
    }

    #[test]
    fn smollm_pre_tokenizer_splits_digits_individually() {
        let gpt2 = tokenizer_from_json(&build(&toy_meta("gpt2"), 128).unwrap().tokenizer_json).unwrap();
        let smollm = tokenizer_from_json(&build(&toy_meta("smollm"), 128).unwrap().tokenizer_json).unwrap();
        assert_eq!(gpt2.encode("12", false).unwrap().get_ids(), &[13]);
        assert_eq!(smollm.encode("12", false).unwrap().get_ids(), &[7, 8]);
    }

    #[test]
    fn add_bos_token_prepends_bos() {
        let mut m = toy_meta("gpt2");
        m.values.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true));
        let tok = tokenizer_from_json(&build(&m, 128).unwrap().tokenizer_json).unwrap();
        assert_eq!(tok.encode("hello", true).unwrap().get_ids(), &[0, 12]);
        assert_eq!(tok.encode("hello", false).unwrap().get_ids(), &[12]);
    }

    #[test]
    fn unsupported_tokenizers_are_refused_with_the_reason() {
        let mut m = toy_meta("gpt2");
        m.values.insert("tokenizer.ggml.model".into(), GgufValue::Str("llama".into()));
        assert!(build(&m, 1).unwrap_err().to_string().contains("only byte-level BPE"));
        let err = build(&toy_meta("deepseek-coder"), 1).unwrap_err().to_string();
        assert!(err.contains("deepseek-coder"), "{err}");
        let mut m = toy_meta("gpt2");
        m.values.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(99));
        assert!(build(&m, 1).unwrap_err().to_string().contains("outside the 14-token vocabulary"));
        let mut m = toy_meta("gpt2");
        m.values.insert("tokenizer.ggml.merges".into(), GgufValue::Array(vec![GgufValue::Str("hel".into())]));
        assert!(build(&m, 1).unwrap_err().to_string().contains("merge `hel`"));
    }
}
