//! The pure codec: layout, round trips, and refusals decided from the prefix alone.

use std::path::PathBuf;

use super::{frame, prefix, SMALL};
use crate::transport::{decode_frame, encode_frame, Frame, Limits, TransportError, PREFIX_BYTES};

/// Goal: the bytes on the wire are exactly the documented layout.
/// Method: encode a known frame and compare with the layout written out by hand.
#[test]
fn encoded_frame_follows_the_documented_layout() {
    let f = Frame { generation: 0x0102, call: 0x0A0B, header: vec![0xEE; 3], body: vec![0xBB; 2] };
    let mut want = b"LTH1".to_vec();
    want.extend_from_slice(&[3, 0, 0, 0]); // header_len u32 LE
    want.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]); // body_len u64 LE
    want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0]); // generation u64 LE
    want.extend_from_slice(&[0x0B, 0x0A, 0, 0, 0, 0, 0, 0]); // call u64 LE
    want.extend_from_slice(&[0xEE, 0xEE, 0xEE, 0xBB, 0xBB]);
    assert_eq!(encode_frame(&f), want);
}

/// Goal: what encode_frame writes, decode_frame reads back, with and without header and body.
/// Method: round-trip single frames, then several frames back to back in one buffer.
#[test]
fn frames_round_trip_through_the_pure_codec() {
    let limits = Limits::default();
    let frames = [frame(0, 0, 0, 0), frame(1, 2, 17, 0), frame(3, 4, 0, 1000), frame(u64::MAX, u64::MAX, 300, 1 << 20)];
    for f in &frames {
        let bytes = encode_frame(f);
        assert_eq!(bytes.len(), PREFIX_BYTES + f.header.len() + f.body.len());
        let (got, used) = decode_frame(&bytes, &limits).expect("valid").expect("complete");
        assert_eq!((&got, used), (f, bytes.len()));
    }
    let stream: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
    let mut at = 0;
    for f in &frames {
        let (got, used) = decode_frame(&stream[at..], &limits).expect("valid").expect("complete");
        assert_eq!(&got, f);
        at += used;
    }
    assert_eq!(at, stream.len());
    assert!(decode_frame(&stream[at..], &limits).expect("empty is a valid beginning").is_none());
}

/// Goal: a frame cut anywhere asks for more bytes rather than failing or inventing a frame.
/// Method: decode every proper prefix of a frame with a header and a body.
#[test]
fn every_cut_of_a_valid_frame_needs_more_bytes() {
    let bytes = encode_frame(&frame(5, 6, 40, 100));
    for cut in 0..bytes.len() {
        assert!(decode_frame(&bytes[..cut], &SMALL).expect("a valid beginning").is_none(), "cut at {cut}");
    }
}

/// Goal: a huge announced length is refused from the prefix, before any allocation; if the
/// codec allocated first, these cases would abort the test process (1 TiB) or panic (u64::MAX).
/// Method: 8-, 16- and 20-byte buffers that claim huge headers and bodies.
#[test]
fn oversize_lengths_are_refused_from_a_partial_prefix() {
    let limits = Limits::default();
    let tib = 1u64 << 40;
    let oversize = |buf: &[u8]| match decode_frame(buf, &limits) {
        Err(TransportError::Oversize { what, len, max }) => (what, len, max),
        other => panic!("expected Oversize, got {other:?}"),
    };
    assert_eq!(oversize(&prefix(0, tib)[..20]), ("body", tib, 2 << 30));
    assert_eq!(oversize(&prefix(0, u64::MAX)[..16]), ("body", u64::MAX, 2 << 30));
    assert_eq!(oversize(&prefix(u32::MAX, 0)[..8]), ("header", u32::MAX as u64, 64 << 20));
}

/// Goal: the limits are inclusive maxima.
/// Method: frames exactly at the limits decode; one byte more is refused.
#[test]
fn limits_accept_their_maximum_and_refuse_one_more() {
    let at_max = encode_frame(&frame(0, 0, SMALL.header_bytes_max, SMALL.body_bytes_max as usize));
    assert!(decode_frame(&at_max, &SMALL).expect("at the limits").is_some());
    let header_over = prefix(SMALL.header_bytes_max as u32 + 1, 0);
    assert!(matches!(decode_frame(&header_over, &SMALL), Err(TransportError::Oversize { what: "header", .. })));
    let body_over = prefix(0, SMALL.body_bytes_max + 1);
    assert!(matches!(decode_frame(&body_over, &SMALL), Err(TransportError::Oversize { what: "body", .. })));
}

/// Goal: a stream that is not this protocol is refused at its first wrong byte.
/// Method: one wrong byte, a wrong magic, and the magic of another protocol version.
#[test]
fn a_wrong_magic_is_refused_at_the_first_wrong_byte() {
    assert!(matches!(decode_frame(b"G", &SMALL), Err(TransportError::BadMagic { .. })));
    assert!(matches!(decode_frame(b"GET / HTTP/1.1\r\n", &SMALL), Err(TransportError::BadMagic { .. })));
    let mut v2 = prefix(0, 0);
    v2[3] = b'2';
    assert!(matches!(decode_frame(&v2, &SMALL), Err(TransportError::BadMagic { .. })));
}

/// Goal: messages round-trip through a frame's header, and a header that is not exactly one
/// message is refused.
/// Method: encode/decode a message; then decode as a shorter type (bytes left over) and as a
/// longer one (bytes missing).
#[test]
fn headers_round_trip_and_must_hold_exactly_one_message() {
    let msg = (7u32, "seven".to_string(), vec![1.5f32, -2.0], Some(PathBuf::from("/a/b")));
    let f = Frame::encode(3, 4, &msg, vec![9; 5]).expect("encodes");
    assert_eq!((f.generation, f.call, f.body.as_slice()), (3, 4, &[9u8; 5][..]));
    assert_eq!(f.decode::<(u32, String, Vec<f32>, Option<PathBuf>)>().expect("decodes"), msg);
    assert!(matches!(f.decode::<(u32, String)>(), Err(TransportError::Decode(_))));
    assert!(matches!(f.decode::<(u32, String, Vec<f32>, Option<PathBuf>, u8)>(), Err(TransportError::Decode(_))));
}

/// Goal: a header claiming a string, byte buffer or path far longer than itself is refused
/// before that buffer is allocated (bincode allocates from the claimed length unless it is
/// given a limit; without one, 1 TiB aborts the process and u64::MAX panics).
/// Method: hand-written varint headers (251 + u16, 253 + u64 are bincode's wide markers).
#[test]
fn headers_claiming_huge_strings_are_refused_without_allocating() {
    let claim = |len: u64| {
        let mut h = vec![253u8];
        h.extend_from_slice(&len.to_le_bytes());
        Frame { generation: 0, call: 0, header: h, body: Vec::new() }
    };
    for len in [1u64 << 40, u64::MAX, (1 << 20) + 1] {
        assert!(matches!(claim(len).decode::<String>(), Err(TransportError::Decode(_))), "string of {len}");
        assert!(matches!(claim(len).decode::<PathBuf>(), Err(TransportError::Decode(_))), "path of {len}");
        assert!(matches!(claim(len).decode::<Vec<u8>>(), Err(TransportError::Decode(_))), "bytes of {len}");
        assert!(matches!(claim(len).decode::<Vec<String>>(), Err(TransportError::Decode(_))), "list of {len}");
    }
    // The limit is no smaller than what a valid header needs: a 60 KB string in a 60 KB header.
    let big = "x".repeat(60_000);
    let f = Frame::encode(0, 0, &big, Vec::new()).expect("encodes");
    assert_eq!(f.decode::<String>().expect("decodes"), big);
}

/// Goal: a valid header is never refused by the decode limit, at any size class.
/// Method: headers just under and over each class boundary, of the type that is charged most
/// per wire byte here (u64 values of one varint byte are charged 8 bytes each).
#[test]
fn valid_headers_decode_across_the_limit_classes() {
    for class in [1usize << 10, 1 << 14, 1 << 18, 1 << 22] {
        for len in [class - 16, class + 16] {
            let values = vec![1u64; len];
            let f = Frame::encode(0, 0, &values, Vec::new()).expect("encodes");
            assert_eq!(f.decode::<Vec<u64>>().expect("decodes"), values, "{len} values");
        }
    }
}
