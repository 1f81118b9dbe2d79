//! Coordinator↔worker control frames over a byte stream (TCP in production, any
//! `AsyncRead + AsyncWrite` in tests).
//!
//! A [`Frame`] is a small bincode-2 header naming the message plus a raw body (tensor bytes,
//! copied verbatim, never encoded per element), and every frame carries the placement
//! generation (design §2, fencing). The layout is documented in [`frame`]; the worker's first
//! frame is a [`Hello`] that the coordinator answers with a [`HelloReply`] ([`handshake`]).
//!
//! Everything read from the network is hostile until checked: lengths are compared with
//! [`Limits`] before anything is allocated, and no input makes these functions panic.
//!
//! Files: `frame.rs` (layout, pure encode/decode), `stream.rs` (async read/write of frames),
//! `tcp.rs` (socket set-up), `handshake.rs`, `bench.rs` (loopback figures for `lathe bench`),
//! `error.rs`.

pub mod bench;
mod error;
mod frame;
mod handshake;
mod stream;
mod tcp;

#[cfg(test)]
mod tests;

pub use error::TransportError;
pub use frame::{decode_frame, encode_frame, Frame, MAGIC, PREFIX_BYTES};
pub use handshake::{check_hello, client_hello, send_hello_reply, server_hello, Capacity, Hello, HelloReply};
pub use stream::{read_frame, read_frame_into, write_frame};
pub use tcp::{connect, tune};

/// The wire protocol's version: bumped whenever the frame layout or any message that travels in
/// a frame changes shape (bincode is not self-describing, so any change breaks old peers).
pub const PROTOCOL_VERSION: u32 = 1;

/// This build's version string as peers compare it, e.g. `lathe 0.1.0 (protocol 1)`.
///
/// The coordinator and its workers must run the same build, not merely the same protocol
/// number: the messages' shapes follow the code, and a forgotten `PROTOCOL_VERSION` bump must not
/// turn into garbled tensors.
pub fn build_version() -> String {
    format!("lathe {} (protocol {})", env!("CARGO_PKG_VERSION"), PROTOCOL_VERSION)
}

/// The most a peer may make us allocate for one frame. Checked against the fixed prefix, before
/// any header or body buffer exists.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bincode header accepted.
    pub header_bytes_max: usize,
    /// Largest raw body accepted (one tensor message).
    pub body_bytes_max: u64,
}

impl Default for Limits {
    /// 64 MiB of header (a forward_backward of many long datums is encoded there) and 2 GiB of
    /// body (the largest single tensor message a shard sends).
    fn default() -> Self {
        Limits { header_bytes_max: 64 << 20, body_bytes_max: 2 << 30 }
    }
}
