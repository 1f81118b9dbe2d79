//! One frame on the wire, and the pure (no I/O) halves of writing and reading it.
//!
//! # Layout
//!
//! All integers little-endian. A 32-byte fixed prefix, then the header, then the body:
//!
//! | offset | size | field        | meaning                                              |
//! |-------:|-----:|--------------|------------------------------------------------------|
//! | 0      | 4    | `magic`      | `b"LTH1"`: this protocol, and a framing sanity check  |
//! | 4      | 4    | `header_len` | bytes of header that follow the prefix                |
//! | 8      | 8    | `body_len`   | bytes of body that follow the header                  |
//! | 16     | 8    | `generation` | placement generation the frame belongs to (fencing)  |
//! | 24     | 8    | `call`       | call id pairing a reply with its request              |
//! | 32     | h    | header       | bincode 2 (serde, standard config) encoding of the message |
//! | 32+h   | b    | body         | raw bytes (tensor data), copied verbatim             |
//!
//! Lengths come first so that a reader can refuse an oversize frame from the first 16 bytes,
//! before it has allocated anything (see [`Limits`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::TransportError;
use super::Limits;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"LTH1";

/// Bytes of the fixed prefix: magic, header_len, body_len, generation, call.
pub const PREFIX_BYTES: usize = 32;

/// One frame: a bincode-2 header naming what it is, plus raw bytes (tensor data, copied verbatim,
/// no per-element encoding). Every frame carries the placement generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub generation: u64,
    pub call: u64,
    pub header: Vec<u8>,
    pub body: Vec<u8>,
}

impl Frame {
    /// Encodes `msg` as the header of a new frame.
    ///
    /// # Errors
    /// `Encode` when serde refuses the message (e.g. a path that is not UTF-8), `Oversize` when
    /// the header would not fit the prefix's 32-bit length.
    pub fn encode<T: Serialize>(generation: u64, call: u64, msg: &T, body: Vec<u8>) -> Result<Frame, TransportError> {
        let header = bincode::serde::encode_to_vec(msg, bincode::config::standard())
            .map_err(|e| TransportError::Encode(e.to_string()))?;
        if u32::try_from(header.len()).is_err() {
            return Err(TransportError::Oversize { what: "header", len: header.len() as u64, max: u32::MAX as u64 });
        }
        Ok(Frame { generation, call, header, body })
    }

    /// Decodes the header as a `T`; the whole header must be one `T`.
    ///
    /// # Errors
    /// `Decode` when the header is not exactly one valid `T`, including when it claims a string or
    /// sequence longer than the header could hold (refused before that memory is allocated).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, TransportError> {
        let (msg, used_bytes) = decode_bounded::<T>(&self.header)?;
        if used_bytes != self.header.len() {
            return Err(TransportError::Decode(format!(
                "{} bytes left over after the message ({} of {} used)",
                self.header.len() - used_bytes,
                used_bytes,
                self.header.len()
            )));
        }
        Ok(msg)
    }

    /// Decodes a `T` from the start of the header and ignores the rest: for reading the fields
    /// that a newer or older message shares with ours (the handshake's version fields).
    pub(super) fn decode_leading<T: DeserializeOwned>(&self) -> Result<T, TransportError> {
        decode_bounded::<T>(&self.header).map(|(msg, _)| msg)
    }
}

/// Bincode 2 allocates a string's buffer from the length it reads, before checking that the
/// bytes are there, unless a limit is configured: then every decoded value is first charged its
/// in-memory size (a string its length, a u64 8 bytes even when it took 1 byte on the wire)
/// against that limit. A valid header of `n` bytes is charged at most 16·n (a u128 in a one-byte
/// varint), so the limit is 16 × the header's size class: it passes every valid header and stops
/// a 20-byte header claiming a terabyte string. The limit is a const generic, hence a ladder of
/// size classes (×16 apart: few copies of the decoder, at most 256·n bytes for hostile input).
const CHARGE_PER_HEADER_BYTE_MAX: usize = 16;

fn decode_bounded<T: DeserializeOwned>(header: &[u8]) -> Result<(T, usize), TransportError> {
    macro_rules! ladder {
        ($($class_bytes:expr),+) => {
            $(
                if header.len() <= $class_bytes {
                    return decode_with_limit::<T, { ($class_bytes as usize).saturating_mul(CHARGE_PER_HEADER_BYTE_MAX) }>(header);
                }
            )+
        };
    }
    ladder!(1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 26, 1 << 30);
    // Anything longer: the prefix's u32 length caps a header at 4 GiB.
    decode_with_limit::<T, { (u32::MAX as usize).saturating_mul(CHARGE_PER_HEADER_BYTE_MAX) }>(header)
}

fn decode_with_limit<T: DeserializeOwned, const CHARGE_BYTES_MAX: usize>(
    header: &[u8],
) -> Result<(T, usize), TransportError> {
    let config = bincode::config::standard().with_limit::<CHARGE_BYTES_MAX>();
    bincode::serde::decode_from_slice(header, config).map_err(|e| match e {
        bincode::error::DecodeError::LimitExceeded => {
            TransportError::Decode(format!("the {}-byte header claims more data than it holds", header.len()))
        }
        other => TransportError::Decode(other.to_string()),
    })
}

/// The prefix's fields, checked against the limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Prefix {
    pub header_bytes: usize,
    pub body_bytes: usize,
    pub generation: u64,
    pub call: u64,
}

impl Prefix {
    /// Prefix plus header plus body.
    ///
    /// # Errors
    /// `Oversize` when the sum does not fit this machine's address space (32-bit targets only).
    pub fn frame_bytes(&self) -> Result<usize, TransportError> {
        PREFIX_BYTES.checked_add(self.header_bytes).and_then(|n| n.checked_add(self.body_bytes)).ok_or_else(|| {
            let len = (PREFIX_BYTES as u64).saturating_add(self.header_bytes as u64);
            TransportError::Oversize {
                what: "frame",
                len: len.saturating_add(self.body_bytes as u64),
                max: usize::MAX as u64,
            }
        })
    }
}

/// Checks as much of a prefix as `buf` holds and returns it once all 32 bytes are there.
///
/// Each field is judged as soon as its bytes have arrived, so a peer announcing a huge body is
/// refused after 16 bytes rather than after a full prefix.
pub(super) fn parse_prefix(buf: &[u8], limits: &Limits) -> Result<Option<Prefix>, TransportError> {
    let magic_got = &buf[..buf.len().min(MAGIC.len())];
    if magic_got != &MAGIC[..magic_got.len()] {
        return Err(TransportError::BadMagic { expected: MAGIC, found: magic_got.to_vec() });
    }
    let Some(header_len) = le_u32(buf, 4) else { return Ok(None) };
    if header_len as u64 > limits.header_bytes_max as u64 {
        return Err(TransportError::Oversize {
            what: "header",
            len: header_len as u64,
            max: limits.header_bytes_max as u64,
        });
    }
    let Some(body_len) = le_u64(buf, 8) else { return Ok(None) };
    // A body must also fit this machine's address space (only ever binding on 32-bit targets).
    let body_max = limits.body_bytes_max.min(usize::MAX as u64);
    if body_len > body_max {
        return Err(TransportError::Oversize { what: "body", len: body_len, max: body_max });
    }
    let (Some(generation), Some(call)) = (le_u64(buf, 16), le_u64(buf, 24)) else { return Ok(None) };
    // Both conversions hold: header_len <= header_bytes_max (a usize), body_len <= usize::MAX.
    Ok(Some(Prefix { header_bytes: header_len as usize, body_bytes: body_len as usize, generation, call }))
}

fn le_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
}

fn le_u64(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
}

/// The 32-byte prefix of `f`.
///
/// # Errors
/// `Oversize` when the header is longer than a u32 can say (only a hand-built `Frame`;
/// [`Frame::encode`] refuses such headers).
pub(super) fn prefix_of(f: &Frame) -> Result<[u8; PREFIX_BYTES], TransportError> {
    let header_len = u32::try_from(f.header.len()).map_err(|_| TransportError::Oversize {
        what: "header",
        len: f.header.len() as u64,
        max: u32::MAX as u64,
    })?;
    let mut prefix = [0u8; PREFIX_BYTES];
    prefix[0..4].copy_from_slice(&MAGIC);
    prefix[4..8].copy_from_slice(&header_len.to_le_bytes());
    prefix[8..16].copy_from_slice(&(f.body.len() as u64).to_le_bytes());
    prefix[16..24].copy_from_slice(&f.generation.to_le_bytes());
    prefix[24..32].copy_from_slice(&f.call.to_le_bytes());
    Ok(prefix)
}

/// The frame's bytes in one buffer (for tests, fuzzing and in-memory transports; sockets use
/// [`super::write_frame`], which does not copy the body).
///
/// # Panics
/// When the header is longer than `u32::MAX` bytes, which only a hand-built `Frame` can be.
pub fn encode_frame(f: &Frame) -> Vec<u8> {
    let prefix = match prefix_of(f) {
        Ok(p) => p,
        Err(e) => panic!("encode_frame: {e} (build frames with Frame::encode)"),
    };
    let mut out = Vec::with_capacity(PREFIX_BYTES + f.header.len() + f.body.len());
    out.extend_from_slice(&prefix);
    out.extend_from_slice(&f.header);
    out.extend_from_slice(&f.body);
    out
}

/// Decodes the frame at the start of `buf`: `Ok(Some((frame, bytes_used)))`, `Ok(None)` when
/// `buf` is a valid beginning that needs more bytes, `Err` when it cannot become a valid frame.
/// Allocates only once the whole frame is in `buf`, and then no more than the limits allow.
pub fn decode_frame(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, TransportError> {
    let Some(prefix) = parse_prefix(buf, limits)? else { return Ok(None) };
    let frame_bytes = prefix.frame_bytes()?;
    let Some(rest) = buf.get(PREFIX_BYTES..frame_bytes) else { return Ok(None) };
    let (header, body) = rest.split_at(prefix.header_bytes);
    let frame =
        Frame { generation: prefix.generation, call: prefix.call, header: header.to_vec(), body: body.to_vec() };
    Ok(Some((frame, frame_bytes)))
}
