//! Stop strings: a sample ends once the decoded text of its tokens contains any of them. Text is
//! decoded with special tokens kept, so a stop string such as `<|im_end|>` matches its token.
//! The token that completes the match is kept in the output, like a stop token.

use tokenizers::Tokenizer;

/// A stop rule over one tokenizer. A decode failure stops the sample and is kept for the caller
/// to report (a sample must not run on with its stop strings unchecked).
pub(super) struct StopStrings<'a> {
    tokenizer: &'a Tokenizer,
    strings: &'a [String],
    pub decode_error: Option<String>,
}

impl<'a> StopStrings<'a> {
    pub fn new(tokenizer: &'a Tokenizer, strings: &'a [String]) -> Self {
        assert!(strings.iter().all(|s| !s.is_empty()), "empty stop strings are rejected before sampling");
        StopStrings { tokenizer, strings, decode_error: None }
    }

    /// Whether `tokens` (one sample's output so far) contain a stop string.
    pub fn hit(&mut self, tokens: &[u32]) -> bool {
        if self.strings.is_empty() {
            return false;
        }
        match self.tokenizer.decode(tokens, false) {
            Ok(text) => self.strings.iter().any(|s| text.contains(s.as_str())),
            Err(e) => {
                self.decode_error = Some(e.to_string());
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tokenizer_from_json;

    /// A word-level tokenizer: id i is the word `w{i}`, decoded words joined by spaces.
    pub(crate) fn words(n: usize) -> Tokenizer {
        let vocab: Vec<String> = (0..n).map(|i| format!("\"w{i}\": {i}")).collect();
        let json = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{{"type":"WhitespaceSplit"}},"post_processor":null,"decoder":null,
            "model":{{"type":"WordLevel","vocab":{{{}}},"unk_token":"w0"}}}}"#,
            vocab.join(",")
        );
        tokenizer_from_json(&json).unwrap()
    }

    #[test]
    fn a_stop_string_matches_across_token_boundaries_only_once_complete() {
        let tok = words(20);
        let strings = vec!["w3 w1".to_string()];
        let mut stop = StopStrings::new(&tok, &strings);
        assert!(!stop.hit(&[7, 3]));
        assert!(!stop.hit(&[7, 3, 2]));
        assert!(stop.hit(&[7, 3, 12]), "`w3 w12` contains `w3 w1`");
        assert!(stop.decode_error.is_none());
        let none: Vec<String> = Vec::new();
        assert!(!StopStrings::new(&tok, &none).hit(&[3, 1]));
    }
}
