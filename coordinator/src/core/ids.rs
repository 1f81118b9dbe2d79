//! Ids and names that reach file paths: checkpoint kinds, checkpoint names, run ids and
//! `tinker://<run>/<kind>/<name>` paths. A user-supplied name becomes a directory only after
//! [`validate_name`] (design §7: no separators, no dot-dot, bounded length).

use std::fmt;

/// Longest checkpoint name or run id accepted.
pub const NAME_LEN_MAX: usize = 128;

/// The three checkpoint kinds of Tinker paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum CheckpointKind {
    /// `save_state`: adapter + optimizer state; `checkpoint_type` "training".
    Weights,
    /// `save_weights_for_sampler`: adapter only; "sampler".
    SamplerWeights,
    /// `save_weights_external`: a PEFT adapter for download; "external".
    ExternalWeights,
}

impl CheckpointKind {
    pub const ALL: [CheckpointKind; 3] =
        [CheckpointKind::Weights, CheckpointKind::SamplerWeights, CheckpointKind::ExternalWeights];

    /// The path segment (`weights`, `sampler_weights`, `external_weights`).
    pub fn segment(self) -> &'static str {
        match self {
            CheckpointKind::Weights => "weights",
            CheckpointKind::SamplerWeights => "sampler_weights",
            CheckpointKind::ExternalWeights => "external_weights",
        }
    }

    /// The REST `checkpoint_type`.
    pub fn checkpoint_type(self) -> &'static str {
        match self {
            CheckpointKind::Weights => "training",
            CheckpointKind::SamplerWeights => "sampler",
            CheckpointKind::ExternalWeights => "external",
        }
    }

    pub fn from_segment(s: &str) -> Option<CheckpointKind> {
        CheckpointKind::ALL.into_iter().find(|k| k.segment() == s)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("name {0:?} is invalid: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with '.')")]
    BadName(String),
    #[error("run id {0:?} is invalid")]
    BadRunId(String),
    #[error("{kind} {id:?} is invalid (1 to 128 printable characters, no spaces or '/')")]
    BadId { kind: &'static str, id: String },
    #[error(
        "{0:?} is not a tinker path; expected tinker://<run id>/<weights|sampler_weights|external_weights>/<name>"
    )]
    BadPath(String),
}

/// Checks a checkpoint name is safe as one directory name.
pub fn validate_name(name: &str) -> Result<(), IdError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadName(name.to_string()))
    }
}

/// Checks a run id is safe as one directory name (`sess-1:train:0` style; ':' allowed).
pub fn validate_run_id(run: &str) -> Result<(), IdError> {
    let ok = !run.is_empty()
        && run.len() <= NAME_LEN_MAX
        && !run.starts_with('.')
        && run.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadRunId(run.to_string()))
    }
}

/// A parsed `tinker://<run>/<kind>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TinkerPath {
    pub run: String,
    pub kind: CheckpointKind,
    pub name: String,
}

impl TinkerPath {
    pub fn parse(path: &str) -> Result<TinkerPath, IdError> {
        let bad = || IdError::BadPath(path.to_string());
        let rest = path.strip_prefix("tinker://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [run, kind, name] = parts[..] else { return Err(bad()) };
        let kind = CheckpointKind::from_segment(kind).ok_or_else(bad)?;
        validate_run_id(run).map_err(|_| bad())?;
        validate_name(name).map_err(|_| bad())?;
        Ok(TinkerPath { run: run.to_string(), kind, name: name.to_string() })
    }

    /// The REST checkpoint id, `kind/name`.
    pub fn checkpoint_id(&self) -> String {
        format!("{}/{}", self.kind.segment(), self.name)
    }
}

impl fmt::Display for TinkerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tinker://{}/{}/{}", self.run, self.kind.segment(), self.name)
    }
}

/// A typed id: a validated string that cannot be confused with another kind of id. Each has one
/// constructor that checks it ([`TenantId::new`] and so on) and is rendered as the bare string.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let check: fn(&str) -> bool = $check;
                if check(&s) {
                    Ok($name(s))
                } else {
                    Err(IdError::BadId { kind: stringify!($name), id: s })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        // Maps keyed by the typed id can be looked up with the `&str` a request carried.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Printable ASCII without spaces, bounded: what every id that came from a client must be.
fn plain_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= NAME_LEN_MAX && s.bytes().all(|b| b.is_ascii_graphic())
}

fn run_id_ok(s: &str) -> bool {
    validate_run_id(s).is_ok()
}

fn name_ok(s: &str) -> bool {
    validate_name(s).is_ok()
}

string_id!(
    /// Who owns a resource (from the API keys file, or `local` in open mode).
    TenantId,
    plain_token
);
string_id!(
    /// A client session (`sess-<n>`).
    SessionId,
    run_id_ok
);
string_id!(
    /// A training run (`<session>:train:<n>`); safe as one directory name.
    RunId,
    run_id_ok
);
string_id!(
    /// A sampler (`<session>:sample:<n>`); safe as one directory name.
    SamplerId,
    run_id_ok
);
string_id!(
    /// An asynchronous request's future (`req-<prefix>-<n>`).
    RequestId,
    plain_token
);
string_id!(
    /// A checkpoint's user-chosen name; safe as one directory name.
    CheckpointName,
    name_ok
);

impl RunId {
    /// The run `model_seq_id` of a session: `<session>:train:<n>`.
    pub fn of_session(session: &SessionId, model_seq_id: u64) -> RunId {
        RunId(format!("{session}:train:{model_seq_id}"))
    }
}

impl SamplerId {
    /// The sampler `n` of a session: `<session>:sample:<n>`.
    pub fn of_session(session: &SessionId, n: &str) -> Result<SamplerId, IdError> {
        SamplerId::new(format!("{session}:sample:{n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tinker_paths_round_trip_with_colons_in_the_run_id() {
        let p = TinkerPath::parse("tinker://sess-1:train:0/weights/ckpt-1").unwrap();
        assert_eq!((p.run.as_str(), p.kind, p.name.as_str()), ("sess-1:train:0", CheckpointKind::Weights, "ckpt-1"));
        assert_eq!(p.to_string(), "tinker://sess-1:train:0/weights/ckpt-1");
        assert_eq!(p.checkpoint_id(), "weights/ckpt-1");
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "sess-1:train:0/weights/x",
            "tinker://sess-1/weights",
            "tinker://sess-1/blobs/x",
            "tinker://sess-1/weights/a/b",
            "tinker://sess-1/weights/..",
            "tinker://../weights/x",
            "tinker:///weights/x",
        ] {
            assert!(TinkerPath::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_cannot_escape_their_directory() {
        assert!(validate_name("ckpt-1.final_v2").is_ok());
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "a b", &"x".repeat(NAME_LEN_MAX + 1)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn typed_ids_validate_once_and_round_trip_through_serde() {
        let run = RunId::new("sess-1:train:0").unwrap();
        assert_eq!(run.as_str(), "sess-1:train:0");
        assert_eq!(serde_json::to_string(&run).unwrap(), "\"sess-1:train:0\"");
        assert_eq!(serde_json::from_str::<RunId>("\"sess-1:train:0\"").unwrap(), run);
        assert!(serde_json::from_str::<RunId>("\"../x\"").is_err());
        assert!(RunId::new("a/b").is_err() && TenantId::new("a b").is_err() && CheckpointName::new("..").is_err());
        let session = SessionId::new("sess-4").unwrap();
        assert_eq!(RunId::of_session(&session, 2).as_str(), "sess-4:train:2");
        assert_eq!(SamplerId::of_session(&session, "7").unwrap().as_str(), "sess-4:sample:7");
    }

    #[test]
    fn kinds_map_to_segments_and_checkpoint_types() {
        for k in CheckpointKind::ALL {
            assert_eq!(CheckpointKind::from_segment(k.segment()), Some(k));
        }
        assert_eq!(CheckpointKind::SamplerWeights.checkpoint_type(), "sampler");
        assert_eq!(CheckpointKind::from_segment("archive"), None);
    }
}
