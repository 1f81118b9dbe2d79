//! The one error type of `runtime::transport`.

use thiserror::Error;

/// Why a frame could not be sent, received or understood, or why a handshake failed.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("transport i/o failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stream is not speaking this protocol (or lost its framing).
    #[error("frame does not start with the magic {expected:?}: found {found:?}")]
    BadMagic { expected: [u8; 4], found: Vec<u8> },
    /// A length in the prefix is over its limit; refused before anything was allocated.
    #[error("frame {what} of {len} bytes is over the limit of {max} bytes")]
    Oversize { what: &'static str, len: u64, max: u64 },
    /// The peer closed the stream in the middle of a frame.
    #[error("stream ended inside a frame's {what}: got {got_bytes} of {want_bytes} bytes")]
    Truncated { what: &'static str, got_bytes: u64, want_bytes: u64 },
    /// The header is not a valid bincode encoding of the expected message.
    #[error("frame header does not decode: {0}")]
    Decode(String),
    #[error("message does not encode: {0}")]
    Encode(String),
    /// The peers run different builds; `ours` and `theirs` are [`super::build_version`] strings.
    #[error("peer runs {theirs}, this process runs {ours}; run the same lathe build on both")]
    VersionMismatch { ours: String, theirs: String },
    /// The coordinator turned the worker away; the message says why and what to do.
    #[error("coordinator refused this worker: {0}")]
    Refused(String),
    /// A well-formed frame that does not belong at this point of the conversation.
    #[error("expected {expected}, got a frame of generation {generation}, call {call} with a {body_bytes}-byte body")]
    UnexpectedFrame { expected: &'static str, generation: u64, call: u64, body_bytes: u64 },
    /// The peer closed the stream cleanly, between frames.
    #[error("peer closed the connection")]
    Closed,
}
