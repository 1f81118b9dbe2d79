//! Hostile input for the pure codec: seeded random buffers, truncations and corruptions.
//! Every case must end in `Ok` or `Err`; a panic fails the test and an allocation past the
//! limits would show as a frame over them (or, for a huge claim, abort the process).

use super::{frame, prefix, Rng, SMALL};
use crate::control::{Envelope, FromWorker};
use crate::transport::{decode_frame, encode_frame, Frame, Hello, HelloReply, Limits, TransportError};

/// What happened to one input.
#[derive(Default, Debug)]
struct Outcomes {
    complete: usize,
    incomplete: usize,
    refused: usize,
}

/// Decodes `buf` and checks the invariants any outcome must satisfy; returns what happened.
fn check(buf: &[u8], limits: &Limits, seen: &mut Outcomes) -> Option<Frame> {
    match decode_frame(buf, limits) {
        Ok(Some((f, used))) => {
            assert!(f.header.len() <= limits.header_bytes_max, "header over the limit accepted");
            assert!(f.body.len() as u64 <= limits.body_bytes_max, "body over the limit accepted");
            assert!(used <= buf.len() && used == 32 + f.header.len() + f.body.len());
            // The header is untrusted too: decoding it as any message must not panic either.
            let _ = f.decode::<Envelope>();
            let _ = f.decode::<FromWorker>();
            let _ = f.decode::<Hello>();
            let _ = f.decode::<HelloReply>();
            seen.complete += 1;
            Some(f)
        }
        Ok(None) => {
            seen.incomplete += 1;
            None
        }
        Err(_) => {
            seen.refused += 1;
            None
        }
    }
}

/// A valid frame of random shape within `SMALL`, its header a real control message half the time.
fn random_valid(rng: &mut Rng) -> Vec<u8> {
    let f = if rng.below(2) == 0 {
        frame(rng.next_u64(), rng.next_u64(), rng.below(200), rng.below(300))
    } else {
        let msg =
            Envelope { generation: 3, body: crate::control::ToWorker::DropRun { run: "r".repeat(rng.below(50)) } };
        let call = rng.next_u64();
        Frame::encode(3, call, &msg, rng.bytes_below(100)).expect("encodes")
    };
    encode_frame(&f)
}

/// Goal: random bytes, with and without a valid magic, never panic or exceed the limits.
/// Method: 12,000 seeded buffers of 0..300 bytes; two thirds start with the magic so that the
/// length checks and the header decoders are reached, not just the magic check.
#[test]
fn random_buffers_never_panic() {
    let mut rng = Rng::new(0x5EED_0001);
    let mut seen = Outcomes::default();
    for _ in 0..12_000 {
        let mut buf = rng.bytes_below(300);
        if rng.below(3) > 0 && buf.len() >= 4 {
            buf[..4].copy_from_slice(b"LTH1");
            // Small lengths too, so that complete frames with random headers occur.
            if buf.len() >= 16 && rng.below(2) == 0 {
                buf[4..8].copy_from_slice(&(rng.below(64) as u32).to_le_bytes());
                buf[8..16].copy_from_slice(&(rng.below(64) as u64).to_le_bytes());
            }
        }
        check(&buf, &SMALL, &mut seen);
    }
    assert!(seen.complete > 500 && seen.incomplete > 500 && seen.refused > 500, "{seen:?}");
}

/// Goal: a valid frame cut short is always "need more", never an error or a frame.
/// Method: 10,000 random cuts of random valid frames.
#[test]
fn truncated_valid_frames_need_more_bytes() {
    let mut rng = Rng::new(0x5EED_0002);
    for _ in 0..10_000 {
        let bytes = random_valid(&mut rng);
        let cut = rng.below(bytes.len());
        assert!(matches!(decode_frame(&bytes[..cut], &SMALL), Ok(None)), "cut {cut} of {}", bytes.len());
    }
}

/// Goal: a valid frame with one corrupted byte decodes, is refused, or waits for more, and a
/// corrupted magic is always refused.
/// Method: 10,000 random single-byte corruptions of random valid frames.
#[test]
fn corrupted_valid_frames_never_panic() {
    let mut rng = Rng::new(0x5EED_0003);
    let mut seen = Outcomes::default();
    for _ in 0..10_000 {
        let mut bytes = random_valid(&mut rng);
        let at = rng.below(bytes.len());
        bytes[at] ^= 1 + rng.below(255) as u8;
        let refused_before = seen.refused;
        check(&bytes, &SMALL, &mut seen);
        if at < 4 {
            assert_eq!(seen.refused, refused_before + 1, "corrupted magic byte {at} accepted");
        }
    }
    assert!(seen.complete > 1000 && seen.incomplete > 100 && seen.refused > 100, "{seen:?}");
}

/// Goal: every oversize length, up to the type's maximum, is refused from the prefix alone.
/// Method: each extreme length with every prefix length from the one that completes the field.
#[test]
fn extreme_lengths_are_refused_from_the_prefix() {
    let limits = Limits::default();
    let headers = [u32::MAX, u32::MAX - 1, 1 << 31, (64 << 20) + 1];
    let bodies = [u64::MAX, u64::MAX - 1, 1 << 63, 1 << 40, (2 << 30) + 1];
    for h in headers {
        let p = prefix(h, 0);
        for cut in 8..=32 {
            assert!(matches!(decode_frame(&p[..cut], &limits), Err(TransportError::Oversize { what: "header", .. })));
        }
    }
    for b in bodies {
        let p = prefix(0, b);
        for cut in 16..=32 {
            assert!(matches!(decode_frame(&p[..cut], &limits), Err(TransportError::Oversize { what: "body", .. })));
        }
    }
}

/// Goal: random headers inside well-formed frames never make the message decoders panic or
/// allocate from a claimed length.
/// Method: 10,000 random headers of 0..64 bytes, decoded as each control message; in a third,
/// one byte is bincode's marker for an 8-byte varint (253), so that huge lengths are common.
#[test]
fn random_headers_never_panic_the_message_decoders() {
    let mut rng = Rng::new(0x5EED_0004);
    let mut seen = Outcomes::default();
    for _ in 0..10_000 {
        let mut header = rng.bytes_below(64);
        if rng.below(3) == 0 && header.len() > 10 {
            let at = rng.below(header.len() - 9);
            header[at] = 253;
        }
        let f = Frame { generation: 0, call: 0, header, body: Vec::new() };
        check(&encode_frame(&f), &SMALL, &mut seen);
    }
    assert_eq!(seen.complete, 10_000);
}
