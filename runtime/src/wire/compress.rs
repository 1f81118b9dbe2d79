//! Request body content codings: identity, and zstd (what the SDK sends when `/client/config`
//! sets `proto_compress_fwdbwd`). Decompression is capped so that a small body cannot expand
//! into unbounded memory.

use std::io::Read;

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::StreamingDecoder;

use super::error::WireError;

/// The body as sent, decompressed per `content_encoding` (`None`/`identity` or `zstd`, any case),
/// and never longer than `max_bytes`.
pub fn maybe_decompress(content_encoding: Option<&str>, body: &[u8], max_bytes: usize) -> Result<Vec<u8>, WireError> {
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    let out = match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > max_bytes {
                return Err(WireError::TooLarge { max_bytes });
            }
            body.to_vec()
        }
        Some("zstd") => zstd(body, max_bytes)?,
        Some(_) => {
            return Err(WireError::UnsupportedEncoding { encoding: content_encoding.unwrap_or_default().to_owned() })
        }
    };
    assert!(out.len() <= max_bytes, "the cap holds");
    Ok(out)
}

/// Decodes every frame in `body` (skippable frames skipped), verifying content checksums.
fn zstd(body: &[u8], max_bytes: usize) -> Result<Vec<u8>, WireError> {
    let zstd_error = |reason: String| WireError::Zstd { reason };
    if body.is_empty() {
        return Err(zstd_error("the body is empty".to_owned()));
    }
    let mut input = body;
    let mut out = Vec::new();
    while !input.is_empty() {
        let mut decoder = match StreamingDecoder::new(&mut input) {
            Ok(decoder) => decoder,
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                input = input.get(length..).ok_or_else(|| zstd_error("a skippable frame is truncated".to_owned()))?;
                continue;
            }
            Err(e) => return Err(zstd_error(e.to_string())),
        };
        let room = max_bytes - out.len();
        // Read one byte past the room, so that reaching it means "too large", not "exactly full".
        (&mut decoder).take(room as u64 + 1).read_to_end(&mut out).map_err(|e| zstd_error(e.to_string()))?;
        if out.len() > max_bytes {
            return Err(WireError::TooLarge { max_bytes });
        }
        let frame = &decoder.decoder;
        if let (Some(sent), Some(computed)) = (frame.get_checksum_from_data(), frame.get_calculated_checksum()) {
            if sent != computed {
                return Err(zstd_error(format!("content checksum {sent:#010x} != computed {computed:#010x}")));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    fn zstd_frame(data: &[u8]) -> Vec<u8> {
        compress_to_vec(data, CompressionLevel::Fastest)
    }

    #[test]
    fn identity_bodies_pass_through_under_the_cap() {
        assert_eq!(maybe_decompress(None, b"abc", 3).unwrap(), b"abc");
        assert_eq!(maybe_decompress(Some(" Identity "), b"abc", 3).unwrap(), b"abc");
        assert!(matches!(maybe_decompress(None, b"abcd", 3), Err(WireError::TooLarge { max_bytes: 3 })));
    }

    #[test]
    fn other_encodings_are_rejected_by_name() {
        let error = maybe_decompress(Some("gzip"), b"abc", 10).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Content-Encoding \"gzip\" is not supported; send the body uncompressed or as zstd"
        );
    }

    #[test]
    fn zstd_frames_decode_and_concatenate_around_skippable_frames() {
        let data: Vec<u8> = (0..5000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut body = zstd_frame(&data[..7000]);
        // A skippable frame: magic 0x184D2A5?, little-endian length, payload.
        body.extend([0x50, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 9, 9, 9]);
        body.extend(zstd_frame(&data[7000..]));
        assert_eq!(maybe_decompress(Some("ZSTD"), &body, data.len()).unwrap(), data);
    }

    #[test]
    fn zstd_output_past_the_cap_is_refused() {
        let data = vec![7u8; 100_000];
        let body = zstd_frame(&data);
        assert!(body.len() < 1000, "compressible input gives a small body");
        assert!(matches!(
            maybe_decompress(Some("zstd"), &body, 99_999),
            Err(WireError::TooLarge { max_bytes: 99_999 })
        ));
    }

    #[test]
    fn corrupt_truncated_or_empty_zstd_bodies_are_user_errors() {
        let body = zstd_frame(&[1u8; 4096]);
        let truncated = &body[..body.len() - 3];
        assert!(matches!(maybe_decompress(Some("zstd"), truncated, 1 << 20), Err(WireError::Zstd { .. })));
        assert!(matches!(maybe_decompress(Some("zstd"), b"not zstd at all", 1 << 20), Err(WireError::Zstd { .. })));
        assert!(matches!(maybe_decompress(Some("zstd"), b"", 1 << 20), Err(WireError::Zstd { .. })));
        let skippable_too_short = [0x50, 0x2A, 0x4D, 0x18, 100, 0, 0, 0, 1];
        assert!(matches!(maybe_decompress(Some("zstd"), &skippable_too_short, 1 << 20), Err(WireError::Zstd { .. })));
    }
}
