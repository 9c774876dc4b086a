//! SipHash-c-d with a 128-bit output, fed whole 64-bit words.
//!
//! The hash of the words `w1..wn` is SipHash-c-d-128 (key as in the reference: two
//! little-endian halves) of the `8n` bytes `w1.to_le_bytes() ++ ... ++ wn.to_le_bytes()`: the
//! canonical encoding of a message is built of words, so no byte is ever buffered or shifted
//! into place, and each word costs exactly `C` rounds.

/// A SipHash-`C`-`D`-128 state that has absorbed a whole number of words.
#[derive(Clone, Copy)]
pub(super) struct Sip<const C: usize, const D: usize> {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    /// Words absorbed (only the low five bits matter: the final block carries `8n mod 256`).
    words: u64,
}

impl<const C: usize, const D: usize> Sip<C, D> {
    /// The initial state for `key`.
    pub(super) fn new(key: [u8; 16]) -> Self {
        let (k0, k1) = key.split_at(8);
        let k0 = u64::from_le_bytes(k0.try_into().expect("8 bytes"));
        let k1 = u64::from_le_bytes(k1.try_into().expect("8 bytes"));
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            // The 128-bit variant marks its initial state with 0xee.
            v1: k1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            words: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        for _ in 0..C {
            self.round();
        }
        self.v0 ^= m;
    }

    /// Absorbs one word (eight message bytes, little-endian).
    #[inline(always)]
    pub(super) fn word(&mut self, m: u64) {
        self.compress(m);
        self.words = self.words.wrapping_add(1);
    }

    /// The 128-bit hash: the low half is SipHash's first output word, the high half its second.
    #[inline]
    pub(super) fn finish(mut self) -> u128 {
        // The final block: no tail bytes (the message is whole words), the length mod 256 on top.
        self.compress(self.words << 59);
        self.v2 ^= 0xee;
        for _ in 0..D {
            self.round();
        }
        let h1 = self.v0 ^ self.v1 ^ self.v2 ^ self.v3;
        self.v1 ^= 0xdd;
        for _ in 0..D {
            self.round();
        }
        let h2 = self.v0 ^ self.v1 ^ self.v2 ^ self.v3;
        u128::from(h1) | u128::from(h2) << 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphasher::sip128::{Hasher128, SipHasher13, SipHasher24};
    use std::hash::Hasher;

    /// The word-fed state agrees with an independent byte-oriented SipHash-128 on every length
    /// of the final block's length byte (0 to 40 words wraps `8n mod 256` once).
    #[test]
    fn agrees_with_byte_oriented_siphash() {
        let key = *b"a 16-byte key!!!";
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let words: Vec<u64> = (0..40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        for n in 0..=words.len() {
            let bytes: Vec<u8> = words[..n].iter().flat_map(|w| w.to_le_bytes()).collect();

            let mut ours = Sip::<1, 3>::new(key);
            let mut theirs = SipHasher13::new_with_key(&key);
            words[..n].iter().for_each(|&w| ours.word(w));
            theirs.write(&bytes);
            assert_eq!(
                ours.finish(),
                theirs.finish128().as_u128(),
                "1-3, {n} words"
            );

            let mut ours = Sip::<2, 4>::new(key);
            let mut theirs = SipHasher24::new_with_key(&key);
            words[..n].iter().for_each(|&w| ours.word(w));
            theirs.write(&bytes);
            assert_eq!(
                ours.finish(),
                theirs.finish128().as_u128(),
                "2-4, {n} words"
            );
        }
    }
}
