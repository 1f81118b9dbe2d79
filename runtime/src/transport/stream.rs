//! Writing and reading whole frames on an async byte stream.

use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::TransportError;
use super::frame::{parse_prefix, prefix_of, Frame, Prefix, PREFIX_BYTES};
use super::Limits;

/// Writes `f` and flushes it.
///
/// Prefix, header and body go out as one vectored write (looped until all is written), so a
/// 64 MiB body is never copied into a staging buffer and a small control frame is one syscall.
///
/// # Errors
/// `Io` when the stream fails, `Oversize` for a hand-built frame whose header exceeds `u32::MAX`.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), TransportError> {
    let prefix = prefix_of(f)?;
    let mut parts = [IoSlice::new(&prefix), IoSlice::new(&f.header), IoSlice::new(&f.body)];
    let mut rest: &mut [IoSlice<'_>] = &mut parts;
    while !rest.is_empty() {
        let written_bytes = w.write_vectored(rest).await?;
        if written_bytes == 0 {
            return Err(TransportError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut rest, written_bytes);
    }
    w.flush().await?;
    Ok(())
}

/// Reads one frame.
///
/// The prefix is checked against `limits` before the header or body buffer is allocated, and
/// those buffers are filled without being zeroed first.
///
/// # Errors
/// `Closed` when the stream ends exactly between frames; `Truncated` when it ends inside one;
/// `BadMagic` or `Oversize` for a prefix that cannot be accepted; `Io` when the stream fails.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Frame, TransportError> {
    let mut frame = Frame { generation: 0, call: 0, header: Vec::new(), body: Vec::new() };
    read_frame_into(r, limits, &mut frame).await?;
    Ok(frame)
}

/// [`read_frame`] into an existing frame, reusing its buffers: a receiver of many large bodies
/// then stops paying for fresh memory (page faults) on every frame. On error `frame` holds
/// whatever was read so far.
///
/// # Errors
/// As [`read_frame`].
pub async fn read_frame_into<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
    frame: &mut Frame,
) -> Result<(), TransportError> {
    let prefix = read_prefix(r, limits).await?;
    frame.generation = prefix.generation;
    frame.call = prefix.call;
    read_part(r, &mut frame.header, prefix.header_bytes, "header").await?;
    read_part(r, &mut frame.body, prefix.body_bytes, "body").await?;
    Ok(())
}

/// Reads the 32-byte prefix, judging it after every read: a peer that sends a wrong magic or an
/// oversize length and then waits is refused at once, not left waiting for the rest.
async fn read_prefix<R: AsyncRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Prefix, TransportError> {
    let mut buf = [0u8; PREFIX_BYTES];
    let mut got_bytes = 0;
    loop {
        let n = r.read(&mut buf[got_bytes..]).await?;
        if n == 0 {
            if got_bytes == 0 {
                return Err(TransportError::Closed);
            }
            return Err(TransportError::Truncated {
                what: "prefix",
                got_bytes: got_bytes as u64,
                want_bytes: PREFIX_BYTES as u64,
            });
        }
        got_bytes += n;
        if let Some(prefix) = parse_prefix(&buf[..got_bytes], limits)? {
            return Ok(prefix);
        }
    }
}

/// Replaces `out` with exactly the next `len_bytes` bytes (`len_bytes` already checked against
/// the limits).
async fn read_part<R: AsyncRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
    len_bytes: usize,
    what: &'static str,
) -> Result<(), TransportError> {
    out.clear();
    out.reserve(len_bytes);
    // `take` stops the reads at this part's end, so none of the next frame is consumed.
    let mut part = r.take(len_bytes as u64);
    while out.len() < len_bytes {
        if part.read_buf(out).await? == 0 {
            return Err(TransportError::Truncated { what, got_bytes: out.len() as u64, want_bytes: len_bytes as u64 });
        }
    }
    Ok(())
}
