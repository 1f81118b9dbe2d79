//! The first exchange on a worker's connection: the worker says who it is and what it can hold
//! (`Hello`), the coordinator admits it (`Welcome`) or turns it away (`Refused`).
//!
//! Both frames use generation 0 and call 0: no placement exists for the worker yet.
//!
//! `Hello` keeps `protocol` and `build` as its first two fields in every protocol version, so a
//! coordinator can still name an incompatible worker's build when the rest of its `Hello` no
//! longer decodes.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::TransportError;
use super::frame::Frame;
use super::stream::{read_frame, write_frame};
use super::{build_version, Limits, PROTOCOL_VERSION};

/// What a worker offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// The compute device, e.g. `cpu` or `cuda:0 NVIDIA H200`.
    pub device: String,
    pub cores: u32,
    /// The worker's memory budget (`--memory-bytes-max`); `None` when it runs without one.
    pub memory_bytes_max: Option<u64>,
}

/// The worker's first frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the worker's build. Always the first field (see the module doc).
    pub protocol: u32,
    /// [`build_version`] of the worker's build. Always the second field.
    pub build: String,
    /// The worker's name for logs and errors (e.g. its host name).
    pub name: String,
    pub capacity: Capacity,
}

impl Hello {
    /// A `Hello` from this build.
    pub fn ours(name: String, capacity: Capacity) -> Hello {
        Hello { protocol: PROTOCOL_VERSION, build: build_version(), name, capacity }
    }
}

/// The coordinator's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HelloReply {
    /// Admitted: the id the coordinator gave this worker, the current placement generation and
    /// the base models the worker is to serve.
    Welcome { worker: u64, generation: u64, models: Vec<String> },
    /// Turned away; `message` says why and what to do.
    Refused { message: String },
}

/// The generation and call id of both handshake frames.
const HANDSHAKE_GENERATION: u64 = 0;
const HANDSHAKE_CALL: u64 = 0;

/// The coordinator's check: `Ok`, or the refusal message naming both versions and what to do.
///
/// Builds must match exactly, not only protocols (see [`build_version`]).
pub fn check_hello(hello: &Hello, ours: &str) -> Result<(), String> {
    if hello.protocol == PROTOCOL_VERSION && hello.build == ours {
        return Ok(());
    }
    Err(format!(
        "worker `{}` runs {} (protocol {}) but this coordinator runs {} (protocol {}): \
         start the worker from the same lathe build as the coordinator",
        hello.name, hello.build, hello.protocol, ours, PROTOCOL_VERSION
    ))
}

/// The worker's side: sends `hello`, then reads the coordinator's reply.
///
/// # Errors
/// `Refused` with the coordinator's message when it turned the worker away; any frame error
/// (`Closed`, `Truncated`, `Decode`, …) when the reply is not a handshake reply.
pub async fn client_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    hello: &Hello,
    limits: &Limits,
) -> Result<HelloReply, TransportError> {
    write_frame(s, &Frame::encode(HANDSHAKE_GENERATION, HANDSHAKE_CALL, hello, Vec::new())?).await?;
    let frame = read_frame(s, limits).await?;
    expect_handshake_frame(&frame, "a HelloReply frame")?;
    match frame.decode::<HelloReply>()? {
        HelloReply::Refused { message } => Err(TransportError::Refused(message)),
        welcome => Ok(welcome),
    }
}

/// The coordinator's side: reads the worker's `Hello` (then [`check_hello`] and
/// [`send_hello_reply`]).
///
/// # Errors
/// `VersionMismatch` when the `Hello` does not decode but its leading `protocol` and `build` do
/// and name another protocol (so the refusal can name the worker's build); otherwise any frame
/// error, or `UnexpectedFrame` for a frame that is not a handshake frame.
pub async fn server_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    limits: &Limits,
) -> Result<Hello, TransportError> {
    let frame = read_frame(s, limits).await?;
    expect_handshake_frame(&frame, "a Hello frame")?;
    match frame.decode::<Hello>() {
        Ok(hello) => Ok(hello),
        Err(e) => match frame.decode_leading::<HelloLeading>() {
            Ok(lead) if lead.protocol != PROTOCOL_VERSION => {
                Err(TransportError::VersionMismatch { ours: build_version(), theirs: lead.build })
            }
            _ => Err(e),
        },
    }
}

/// The coordinator's answer to [`server_hello`]'s `Hello`.
///
/// # Errors
/// `Io` when the stream fails.
pub async fn send_hello_reply<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    reply: &HelloReply,
) -> Result<(), TransportError> {
    write_frame(s, &Frame::encode(HANDSHAKE_GENERATION, HANDSHAKE_CALL, reply, Vec::new())?).await
}

/// The part of a `Hello` that every protocol version shares.
#[derive(Deserialize)]
struct HelloLeading {
    protocol: u32,
    build: String,
}

fn expect_handshake_frame(frame: &Frame, expected: &'static str) -> Result<(), TransportError> {
    if frame.generation == HANDSHAKE_GENERATION && frame.call == HANDSHAKE_CALL && frame.body.is_empty() {
        return Ok(());
    }
    Err(TransportError::UnexpectedFrame {
        expected,
        generation: frame.generation,
        call: frame.call,
        body_bytes: frame.body.len() as u64,
    })
}
