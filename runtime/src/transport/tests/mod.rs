//! Tests of `runtime::transport`, one file per concern; shared helpers here.

mod bench;
mod control;
mod frame;
mod fuzz;
mod handshake;
mod stream;

use super::{Frame, Limits};

/// splitmix64: a seeded generator, so every "random" input here is the same on every run and a
/// failure can be replayed from its seed.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Random bytes of a random length in `0..len_end`.
    pub fn bytes_below(&mut self, len_end: usize) -> Vec<u8> {
        let len = self.below(len_end);
        self.bytes(len)
    }
}

/// Small limits, so that the hostile-input tests can check that nothing past them is accepted.
pub(super) const SMALL: Limits = Limits { header_bytes_max: 4 << 10, body_bytes_max: 64 << 10 };

/// A frame with a `header_bytes`-byte header and a `body_bytes`-byte body of recognisable bytes.
pub(super) fn frame(generation: u64, call: u64, header_bytes: usize, body_bytes: usize) -> Frame {
    Frame {
        generation,
        call,
        header: (0..header_bytes).map(|i| (i * 7 + 1) as u8).collect(),
        body: (0..body_bytes).map(|i| (i * 13 + 5) as u8).collect(),
    }
}

/// A 32-byte prefix with the given lengths (and the right magic).
pub(super) fn prefix(header_len: u32, body_len: u64) -> Vec<u8> {
    let mut p = b"LTH1".to_vec();
    p.extend_from_slice(&header_len.to_le_bytes());
    p.extend_from_slice(&body_len.to_le_bytes());
    p.extend_from_slice(&7u64.to_le_bytes());
    p.extend_from_slice(&9u64.to_le_bytes());
    p
}
