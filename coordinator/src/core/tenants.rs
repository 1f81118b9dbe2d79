//! `Tenants`: API key → tenant. With a keys file (`tml-key tenant` per line, `#` comments) only
//! listed keys are accepted; in open mode any `tml-` key is the single tenant [`LOCAL_TENANT`].

use std::collections::HashMap;

/// The tenant of every key in open mode.
pub const LOCAL_TENANT: &str = "local";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeysFileError {
    #[error("API keys file line {line}: expected `tml-<key> <tenant>`, got {text:?}")]
    Malformed { line: usize, text: String },
    #[error("API keys file line {line}: key does not start with `tml-` (the tinker SDK refuses such keys)")]
    BadPrefix { line: usize },
    #[error("API keys file line {line}: key listed twice")]
    Duplicate { line: usize },
    #[error("API keys file lists no keys; add `tml-<key> <tenant>` lines")]
    Empty,
}

/// Why a key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing X-API-Key header; set TINKER_API_KEY to a tml- key")]
    Missing,
    #[error("API key must start with `tml-`")]
    BadPrefix,
    #[error("unknown API key")]
    Unknown,
}

#[derive(Debug, Clone)]
pub enum Tenants {
    /// Any `tml-` key is [`LOCAL_TENANT`].
    Open,
    Keys(HashMap<String, String>),
}

impl Tenants {
    /// Parses a keys file's text.
    pub fn parse(text: &str) -> Result<Tenants, KeysFileError> {
        let mut keys = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let body = raw.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let parts: Vec<&str> = body.split_whitespace().collect();
            let [key, tenant] = parts[..] else {
                return Err(KeysFileError::Malformed { line, text: raw.to_string() });
            };
            if !key.starts_with("tml-") {
                return Err(KeysFileError::BadPrefix { line });
            }
            if keys.insert(key.to_string(), tenant.to_string()).is_some() {
                return Err(KeysFileError::Duplicate { line });
            }
        }
        if keys.is_empty() {
            return Err(KeysFileError::Empty);
        }
        Ok(Tenants::Keys(keys))
    }

    /// The tenant a request's `X-API-Key` belongs to.
    pub fn tenant_of(&self, key: Option<&str>) -> Result<String, AuthError> {
        let key = key.ok_or(AuthError::Missing)?;
        if !key.starts_with("tml-") {
            return Err(AuthError::BadPrefix);
        }
        match self {
            Tenants::Open => Ok(LOCAL_TENANT.to_string()),
            Tenants::Keys(keys) => keys.get(key).cloned().ok_or(AuthError::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mode_accepts_any_tml_key_as_the_local_tenant() {
        assert_eq!(Tenants::Open.tenant_of(Some("tml-anything")), Ok("local".to_string()));
        assert_eq!(Tenants::Open.tenant_of(Some("sk-nope")), Err(AuthError::BadPrefix));
        assert_eq!(Tenants::Open.tenant_of(None), Err(AuthError::Missing));
    }

    #[test]
    fn a_keys_file_maps_keys_to_tenants_and_refuses_others() {
        let t = Tenants::parse("# team keys\ntml-a alice\n\n  tml-b   bob  # ops\n").unwrap();
        assert_eq!(t.tenant_of(Some("tml-a")), Ok("alice".to_string()));
        assert_eq!(t.tenant_of(Some("tml-b")), Ok("bob".to_string()));
        assert_eq!(t.tenant_of(Some("tml-c")), Err(AuthError::Unknown));
    }

    #[test]
    fn malformed_keys_files_name_the_line() {
        assert_eq!(Tenants::parse("tml-a\n").unwrap_err(), KeysFileError::Malformed { line: 1, text: "tml-a".into() });
        assert_eq!(
            Tenants::parse("x\nkey alice\n").unwrap_err(),
            KeysFileError::Malformed { line: 1, text: "x".into() }
        );
        assert_eq!(Tenants::parse("#\nkey alice\n").unwrap_err(), KeysFileError::BadPrefix { line: 2 });
        assert_eq!(Tenants::parse("tml-a x\ntml-a y\n").unwrap_err(), KeysFileError::Duplicate { line: 2 });
        assert_eq!(Tenants::parse("# nothing\n").unwrap_err(), KeysFileError::Empty);
    }
}
