//! The Tinker protobuf wire: the `tinker_public` messages the official SDK (0.38.0) sends and
//! expects, and their conversion to and from lathe's control types. Protobuf carries
//! `forward_backward` requests (optionally zstd-compressed) and the results of forward(_backward)
//! and sampling; everything else on the HTTP API is JSON and lives with the coordinator.
//!
//! Decoding is bounds-checked throughout and reports a [`WireError`] naming the datum and field;
//! encoding takes results the worker produced and treats inconsistencies as programmer errors.

mod compress;
mod error;
mod fb_output;
mod fb_request;
mod le;
pub mod proto;
mod sample_response;
pub mod spans;
mod tensor;

pub use compress::maybe_decompress;
pub use error::WireError;
pub use fb_output::encode_forward_backward_output;
pub use fb_request::{decode_forward_backward, FbRequest};
pub use sample_response::{encode_sample_response, TOPK_EMPTY_LOGPROB};
pub use tensor::MAX_TENSOR_ELEMENTS;
