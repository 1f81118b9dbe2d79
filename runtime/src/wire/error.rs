//! `WireError`: everything that can be wrong with bytes a client sent. Every variant is the
//! caller's fault (Tinker category `user`); the message says what was wrong and what to send
//! instead. It owns no decoding logic.

/// A request body that lathe cannot accept.
///
/// How the coordinator answers depends on whether the request's `seq_id` is known
/// ([`WireError::request_seq`]): a request whose envelope parsed still consumes its `seq_id` and
/// fails its future with category `user` (design §4); the others have no `seq_id` and are a
/// synchronous 4xx.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("Content-Encoding {encoding:?} is not supported; send the body uncompressed or as zstd")]
    UnsupportedEncoding { encoding: String },

    #[error("the zstd body could not be decompressed ({reason}); send valid zstd frames or an uncompressed body")]
    Zstd { reason: String },

    #[error("the request body is larger than {max_bytes} bytes once decompressed; split it into smaller calls")]
    TooLarge { max_bytes: usize },

    #[error("the body is not a tinker_public.{message} protobuf ({source}); send what the tinker SDK sends")]
    Protobuf {
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },

    /// A well-formed message with a bad value; `field` is a path such as
    /// `data[1].loss_fn_inputs["weights"]`.
    #[error("forward_backward for model {model_id:?} (seq_id {seq_id}): {field} {problem}")]
    Invalid { model_id: String, seq_id: i32, field: String, problem: String },
}

impl WireError {
    /// The `(model_id, seq_id)` of the request this error belongs to, when the envelope parsed far
    /// enough to know them.
    pub fn request_seq(&self) -> Option<(&str, i32)> {
        match self {
            WireError::Invalid { model_id, seq_id, .. } => Some((model_id.as_str(), *seq_id)),
            _ => None,
        }
    }
}

/// What is wrong with one value, before the caller knows where the value sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem(pub(crate) String);

impl Problem {
    pub(crate) fn new(text: impl Into<String>) -> Problem {
        Problem(text.into())
    }
}

/// Where in a request decoding happens, to turn a [`Problem`] into a [`WireError::Invalid`].
pub(crate) struct RequestAt<'a> {
    pub(crate) model_id: &'a str,
    pub(crate) seq_id: i32,
}

impl RequestAt<'_> {
    pub(crate) fn invalid(&self, field: impl Into<String>, problem: Problem) -> WireError {
        WireError::Invalid {
            model_id: self.model_id.to_owned(),
            seq_id: self.seq_id,
            field: field.into(),
            problem: problem.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_field_names_the_request_the_field_and_the_problem() {
        let at = RequestAt { model_id: "s:train:0", seq_id: 7 };
        let error = at.invalid("data[1].loss_fn_inputs[\"weights\"]", Problem::new("holds NaN at index 3"));
        let expected = "forward_backward for model \"s:train:0\" (seq_id 7): ";
        assert_eq!(error.to_string(), format!("{expected}data[1].loss_fn_inputs[\"weights\"] holds NaN at index 3"));
        assert_eq!(error.request_seq(), Some(("s:train:0", 7)));
    }

    #[test]
    fn errors_found_before_the_envelope_parsed_have_no_seq_id() {
        let error = WireError::TooLarge { max_bytes: 10 };
        assert_eq!(error.request_seq(), None);
        assert!(error.to_string().contains("larger than 10 bytes"));
    }
}
