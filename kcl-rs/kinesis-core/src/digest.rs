//! MD5 of many messages at once: what the KPL aggregated format puts after every
//! aggregate, and what routes every partition key.
//!
//! MD5 is a chain of dependent steps, so one message keeps a core's vector units
//! idle. [`md5_each`] runs sixteen messages side by side, one per 32-bit lane of an
//! AVX-512 register, where the CPU has AVX-512F (checked at run time); elsewhere, or
//! for a single message, it is the plain one-at-a-time digest. The results are the
//! same either way.
//!
//! ```
//! use kinesis_core::digest::md5_each;
//! use md5::{Digest, Md5};
//!
//! let messages: Vec<Vec<u8>> = (0..40).map(|n| vec![n as u8; n * 37]).collect();
//! let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
//! let digests = md5_each(&slices);
//! for (message, digest) in messages.iter().zip(&digests) {
//!     assert_eq!(digest[..], Md5::digest(message)[..]);
//! }
//! ```

use md5::{Digest, Md5};

/// The MD5 digest of each message, in order.
pub fn md5_each(messages: &[&[u8]]) -> Vec<[u8; 16]> {
    #[cfg(target_arch = "x86_64")]
    if messages.len() > 1 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { lanes::md5_each(messages) };
    }
    messages.iter().map(|m| Md5::digest(m).into()).collect()
}

/// Sixteen MD5 computations in the lanes of AVX-512 registers.
#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;

    const LANES: usize = 16;
    const INITIAL: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

    /// One message in a lane: its full 64-byte blocks come from the message itself, its
    /// last one or two from `tail` (the remaining bytes, the padding and the length).
    struct Lane {
        message: usize,
        block: usize,
        full_blocks: usize,
        blocks: usize,
        tail: [u8; 128],
    }

    impl Lane {
        fn new(message: usize, bytes: &[u8]) -> Lane {
            let full_blocks = bytes.len() / 64;
            let rest = &bytes[full_blocks * 64..];
            let mut tail = [0u8; 128];
            tail[..rest.len()].copy_from_slice(rest);
            tail[rest.len()] = 0x80;
            let tail_blocks = if rest.len() + 9 <= 64 { 1 } else { 2 };
            let bits = (bytes.len() as u64).wrapping_mul(8);
            tail[tail_blocks * 64 - 8..tail_blocks * 64].copy_from_slice(&bits.to_le_bytes());
            Lane {
                message,
                block: 0,
                full_blocks,
                blocks: full_blocks + tail_blocks,
                tail,
            }
        }

        /// The lane's current 64-byte block.
        fn current<'a>(&'a self, bytes: &'a [u8]) -> &'a [u8] {
            if self.block < self.full_blocks {
                &bytes[self.block * 64..][..64]
            } else {
                &self.tail[(self.block - self.full_blocks) * 64..][..64]
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn md5_each(messages: &[&[u8]]) -> Vec<[u8; 16]> {
        let mut digests = vec![[0u8; 16]; messages.len()];
        let mut lanes: [Option<Lane>; LANES] = std::array::from_fn(|_| None);
        // The state and the current block's words, lane by lane (word-major).
        let mut state = [[0u32; LANES]; 4];
        let mut words = [[0u32; LANES]; 16];
        let mut next = 0;
        loop {
            let mut active = 0u16;
            for (l, slot) in lanes.iter_mut().enumerate() {
                if slot.is_none() && next < messages.len() {
                    *slot = Some(Lane::new(next, messages[next]));
                    for (word, initial) in state.iter_mut().zip(INITIAL) {
                        word[l] = initial;
                    }
                    next += 1;
                }
                if let Some(lane) = slot {
                    active |= 1 << l;
                    let block = lane.current(messages[lane.message]);
                    for (w, word) in words.iter_mut().enumerate() {
                        word[l] = u32::from_le_bytes(block[w * 4..w * 4 + 4].try_into().unwrap());
                    }
                }
            }
            if active == 0 {
                return digests;
            }
            // SAFETY: the caller guarantees AVX-512F.
            unsafe { compress(&mut state, &words, active) };
            for (l, slot) in lanes.iter_mut().enumerate() {
                let Some(lane) = slot else { continue };
                lane.block += 1;
                if lane.block == lane.blocks {
                    let digest = &mut digests[lane.message];
                    for (i, word) in state.iter().enumerate() {
                        digest[i * 4..i * 4 + 4].copy_from_slice(&word[l].to_le_bytes());
                    }
                    *slot = None;
                }
            }
        }
    }

    /// One 64-byte block into each active lane's state (the other lanes' states are
    /// left as they are).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn compress(state: &mut [[u32; LANES]; 4], words: &[[u32; LANES]; 16], active: u16) {
        // SAFETY (every load and store): the arrays are 16 u32s, 64 bytes.
        let load = |v: &[u32; LANES]| unsafe { _mm512_loadu_si512(v.as_ptr().cast()) };
        let m: [__m512i; 16] = std::array::from_fn(|w| load(&words[w]));
        let initial: [__m512i; 4] = std::array::from_fn(|i| load(&state[i]));
        let [mut a, mut b, mut c, mut d] = initial;
        // a = b + ((a + f(b, c, d) + m[g] + k) <<< s), f as a ternary-logic table.
        macro_rules! step {
            ($f:literal, $a:ident, $b:ident, $c:ident, $d:ident, $g:literal, $k:literal, $s:literal) => {
                let f = _mm512_ternarylogic_epi32::<$f>($b, $c, $d);
                let t = _mm512_add_epi32(
                    _mm512_add_epi32($a, f),
                    _mm512_add_epi32(m[$g], _mm512_set1_epi32($k as u32 as i32)),
                );
                $a = _mm512_add_epi32($b, _mm512_rol_epi32::<$s>(t));
            };
        }
        step!(0xCA, a, b, c, d, 0, 0xd76aa478, 7);
        step!(0xCA, d, a, b, c, 1, 0xe8c7b756, 12);
        step!(0xCA, c, d, a, b, 2, 0x242070db, 17);
        step!(0xCA, b, c, d, a, 3, 0xc1bdceee, 22);
        step!(0xCA, a, b, c, d, 4, 0xf57c0faf, 7);
        step!(0xCA, d, a, b, c, 5, 0x4787c62a, 12);
        step!(0xCA, c, d, a, b, 6, 0xa8304613, 17);
        step!(0xCA, b, c, d, a, 7, 0xfd469501, 22);
        step!(0xCA, a, b, c, d, 8, 0x698098d8, 7);
        step!(0xCA, d, a, b, c, 9, 0x8b44f7af, 12);
        step!(0xCA, c, d, a, b, 10, 0xffff5bb1, 17);
        step!(0xCA, b, c, d, a, 11, 0x895cd7be, 22);
        step!(0xCA, a, b, c, d, 12, 0x6b901122, 7);
        step!(0xCA, d, a, b, c, 13, 0xfd987193, 12);
        step!(0xCA, c, d, a, b, 14, 0xa679438e, 17);
        step!(0xCA, b, c, d, a, 15, 0x49b40821, 22);
        step!(0xE4, a, b, c, d, 1, 0xf61e2562, 5);
        step!(0xE4, d, a, b, c, 6, 0xc040b340, 9);
        step!(0xE4, c, d, a, b, 11, 0x265e5a51, 14);
        step!(0xE4, b, c, d, a, 0, 0xe9b6c7aa, 20);
        step!(0xE4, a, b, c, d, 5, 0xd62f105d, 5);
        step!(0xE4, d, a, b, c, 10, 0x02441453, 9);
        step!(0xE4, c, d, a, b, 15, 0xd8a1e681, 14);
        step!(0xE4, b, c, d, a, 4, 0xe7d3fbc8, 20);
        step!(0xE4, a, b, c, d, 9, 0x21e1cde6, 5);
        step!(0xE4, d, a, b, c, 14, 0xc33707d6, 9);
        step!(0xE4, c, d, a, b, 3, 0xf4d50d87, 14);
        step!(0xE4, b, c, d, a, 8, 0x455a14ed, 20);
        step!(0xE4, a, b, c, d, 13, 0xa9e3e905, 5);
        step!(0xE4, d, a, b, c, 2, 0xfcefa3f8, 9);
        step!(0xE4, c, d, a, b, 7, 0x676f02d9, 14);
        step!(0xE4, b, c, d, a, 12, 0x8d2a4c8a, 20);
        step!(0x96, a, b, c, d, 5, 0xfffa3942, 4);
        step!(0x96, d, a, b, c, 8, 0x8771f681, 11);
        step!(0x96, c, d, a, b, 11, 0x6d9d6122, 16);
        step!(0x96, b, c, d, a, 14, 0xfde5380c, 23);
        step!(0x96, a, b, c, d, 1, 0xa4beea44, 4);
        step!(0x96, d, a, b, c, 4, 0x4bdecfa9, 11);
        step!(0x96, c, d, a, b, 7, 0xf6bb4b60, 16);
        step!(0x96, b, c, d, a, 10, 0xbebfbc70, 23);
        step!(0x96, a, b, c, d, 13, 0x289b7ec6, 4);
        step!(0x96, d, a, b, c, 0, 0xeaa127fa, 11);
        step!(0x96, c, d, a, b, 3, 0xd4ef3085, 16);
        step!(0x96, b, c, d, a, 6, 0x04881d05, 23);
        step!(0x96, a, b, c, d, 9, 0xd9d4d039, 4);
        step!(0x96, d, a, b, c, 12, 0xe6db99e5, 11);
        step!(0x96, c, d, a, b, 15, 0x1fa27cf8, 16);
        step!(0x96, b, c, d, a, 2, 0xc4ac5665, 23);
        step!(0x39, a, b, c, d, 0, 0xf4292244, 6);
        step!(0x39, d, a, b, c, 7, 0x432aff97, 10);
        step!(0x39, c, d, a, b, 14, 0xab9423a7, 15);
        step!(0x39, b, c, d, a, 5, 0xfc93a039, 21);
        step!(0x39, a, b, c, d, 12, 0x655b59c3, 6);
        step!(0x39, d, a, b, c, 3, 0x8f0ccc92, 10);
        step!(0x39, c, d, a, b, 10, 0xffeff47d, 15);
        step!(0x39, b, c, d, a, 1, 0x85845dd1, 21);
        step!(0x39, a, b, c, d, 8, 0x6fa87e4f, 6);
        step!(0x39, d, a, b, c, 15, 0xfe2ce6e0, 10);
        step!(0x39, c, d, a, b, 6, 0xa3014314, 15);
        step!(0x39, b, c, d, a, 13, 0x4e0811a1, 21);
        step!(0x39, a, b, c, d, 4, 0xf7537e82, 6);
        step!(0x39, d, a, b, c, 11, 0xbd3af235, 10);
        step!(0x39, c, d, a, b, 2, 0x2ad7d2bb, 15);
        step!(0x39, b, c, d, a, 9, 0xeb86d391, 21);
        for (i, v) in [a, b, c, d].into_iter().enumerate() {
            let sum = _mm512_mask_add_epi32(initial[i], active, initial[i], v);
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_si512(state[i].as_mut_ptr().cast(), sum) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(messages: &[&[u8]]) -> Vec<[u8; 16]> {
        messages.iter().map(|m| Md5::digest(m).into()).collect()
    }

    #[test]
    fn every_length_around_the_block_edges_matches_the_reference() {
        // Lengths 0..=200 cover one and two tail blocks and every padding case; 17
        // messages keep a lane refilled mid-run.
        let owned: Vec<Vec<u8>> = (0..=200usize)
            .map(|n| (0..n).map(|i| (i * 31 + n) as u8).collect())
            .collect();
        let messages: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        assert_eq!(md5_each(&messages), reference(&messages));
        for chunk in messages.chunks(17) {
            assert_eq!(md5_each(chunk), reference(chunk));
        }
    }

    #[test]
    fn messages_of_very_different_lengths_match_the_reference() {
        let owned: Vec<Vec<u8>> = [50_000usize, 3, 64, 1_000_000, 55, 56, 0, 129, 51_200]
            .iter()
            .map(|&n| (0..n).map(|i| (i % 251) as u8).collect())
            .collect();
        let messages: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        assert_eq!(md5_each(&messages), reference(&messages));
        assert_eq!(md5_each(&messages[..1]), reference(&messages[..1]));
        assert!(md5_each(&[]).is_empty());
    }

    #[test]
    fn known_digests() {
        let digests = md5_each(&[b"", b"abc"]);
        assert_eq!(
            digests[0],
            0xd41d8cd98f00b204e9800998ecf8427e_u128.to_be_bytes()
        );
        assert_eq!(
            digests[1],
            0x900150983cd24fb0d6963f7d28e17f72_u128.to_be_bytes()
        );
    }
}
