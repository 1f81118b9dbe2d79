//! Loading a HF `tokenizer.json` with the `tokenizers` crate, from a file, a model directory or
//! JSON text (the GGUF loader builds the text itself).

use std::path::Path;
use std::str::FromStr;

use tokenizers::Tokenizer;

use super::error::LoadError;

/// Loads `path`: a `tokenizer.json` file, or a directory containing one.
///
/// # Errors
/// `LoadError::Io` when the file cannot be read, `LoadError::Tokenizer` (wrapped with the path)
/// when the `tokenizers` crate rejects it.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| LoadError::io("read", &file, e))?;
    tokenizer_from_json(&text).map_err(|e| e.in_file(file))
}

/// Parses `tokenizer.json` text.
///
/// # Errors
/// `LoadError::Tokenizer` with the `tokenizers` crate's reason.
pub fn tokenizer_from_json(text: &str) -> Result<Tokenizer, LoadError> {
    Tokenizer::from_str(text).map_err(|e| LoadError::Tokenizer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_a_tokenizer_error() {
        assert!(matches!(tokenizer_from_json("{\"model\": 3}"), Err(LoadError::Tokenizer(_))));
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = load_tokenizer(Path::new("/nonexistent/lathe/tokenizer.json")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/lathe/tokenizer.json"), "{err}");
    }
}
