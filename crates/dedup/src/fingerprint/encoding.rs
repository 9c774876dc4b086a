//! The canonical encoding: a sequence of 64-bit words that can be decoded back.
//!
//! Every item starts with a word whose low byte is a tag, and a string's first word also holds
//! its length, so no two inputs of different kinds or values share an encoding.

use super::sip::Sip;

// Domain tags (the low byte of an item's first word): no two kinds of input share an encoding.
pub(super) const TAG_JSON: u64 = 0x01;
pub(super) const TAG_BYTES: u64 = 0x02;
pub(super) const TAG_ID_STR: u64 = 0x03;
pub(super) const TAG_ID_INT: u64 = 0x04;
/// Text that is not hashed as a JSON value.
pub(super) const TAG_TEXT: u64 = 0x05;
pub(super) const TAG_NULL: u64 = 0x10;
pub(super) const TAG_FALSE: u64 = 0x11;
pub(super) const TAG_TRUE: u64 = 0x12;
/// An integer that fits in 56 bits, in the word's upper seven bytes.
pub(super) const TAG_INT: u64 = 0x13;
/// A decimal of at most 38 digits with an `i32` exponent: sign, digit count and exponent here,
/// the digits as an integer in the next one or two words.
pub(super) const TAG_DECIMAL: u64 = 0x14;
pub(super) const TAG_STR: u64 = 0x15;
pub(super) const TAG_ARRAY: u64 = 0x16;
/// A large object: entry count, then the sum of the entry hashes.
pub(super) const TAG_OBJECT: u64 = 0x17;
/// First word of an entry hash.
pub(super) const TAG_ENTRY: u64 = 0x18;
pub(super) const TAG_SORTED_OBJECT: u64 = 0x19;
pub(super) const TAG_END: u64 = 0x1a;
/// First word of a longer decimal's own hash.
pub(super) const TAG_LONG_DECIMAL: u64 = 0x1b;
/// Any other `i64`, in the next word.
pub(super) const TAG_INT64: u64 = 0x1c;
/// A container that is an entry's value: its hash follows.
pub(super) const TAG_NESTED: u64 = 0x1d;
/// First word of such a container's own hash.
pub(super) const TAG_NESTED_HASH: u64 = 0x1e;
/// A longer decimal: its hash follows.
pub(super) const TAG_DECIMAL_HASH: u64 = 0x1f;
pub(super) const TAG_SCOPE_GLOBAL: u64 = 0x20;
pub(super) const TAG_SCOPE_CONNECTION: u64 = 0x21;
pub(super) const TAG_SCOPE_CLIENT: u64 = 0x22;

/// A string's length in its first word: two bytes, all ones meaning "in the next word".
pub(super) const LONG: usize = 0xffff;

/// `whole[at..at + n]` (`n <= 8`) as a little-endian word, zero-extended.
#[inline(always)]
pub(super) fn load(whole: &[u8], at: usize, n: usize) -> u64 {
    match whole.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
        // One unaligned load; the bytes past `n` (still inside the buffer) are masked off.
        Some(chunk) => u64::from_le_bytes(*chunk) & low_bytes(n),
        None => tail(whole, at) & low_bytes(n),
    }
}

/// `whole[at..]`, fewer than eight bytes, as a little-endian word, zero-padded: the buffer's last
/// eight bytes shifted down (one load, no loop), unless the whole buffer is shorter.
#[inline(always)]
pub(super) fn tail(whole: &[u8], at: usize) -> u64 {
    match whole.last_chunk::<8>() {
        Some(last) => u64::from_le_bytes(*last)
            .checked_shr(8 * (at + 8 - whole.len()) as u32)
            .unwrap_or(0),
        None => whole[at..]
            .iter()
            .rev()
            .fold(0, |w, &b| w << 8 | u64::from(b)),
    }
}

/// A mask of the low `n <= 8` bytes.
#[inline(always)]
pub(super) fn low_bytes(n: usize) -> u64 {
    // `checked_shr` on a `u64`: a 128-bit shift would compile to branches.
    u64::MAX.checked_shr(64 - 8 * n as u32).unwrap_or(0)
}

/// A string (or byte string) ready to hash: its first word, then the bytes `rest..end` of its
/// buffer.
///
/// The first word holds the tag, a two-byte length and the first [`HEAD`] bytes; a length of
/// [`LONG`] or more is written as all ones there and in full in the next word, and then `rest`
/// is the string's start. The remaining bytes follow eight a word, the last one zero-padded (the
/// length tells the padding from data). Most keys and many values are a single word.
#[derive(Clone, Copy)]
pub(super) struct Str {
    pub(super) first: u64,
    pub(super) rest: usize,
    pub(super) end: usize,
}

impl Str {
    /// `tag` and `whole[start..end]`, whose first bytes are the low bytes of `head` (at least
    /// [`HEAD`] of them, or all; more are masked off).
    #[inline(always)]
    pub(super) fn new(tag: u64, start: usize, end: usize, head: u64) -> Self {
        let len = end - start;
        if len < LONG {
            let n = len.min(HEAD);
            Self {
                first: tag | (len as u64) << 8 | (head & low_bytes(n)) << 24,
                rest: start + n,
                end,
            }
        } else {
            Self {
                first: tag | (LONG as u64) << 8,
                rest: start,
                end,
            }
        }
    }

    /// `tag` and `whole[start..end]`.
    #[inline(always)]
    pub(super) fn of(tag: u64, whole: &[u8], start: usize, end: usize) -> Self {
        Self::new(tag, start, end, load(whole, start, (end - start).min(HEAD)))
    }

    /// Hashes the string; `whole` is the buffer `rest..end` are in.
    #[inline(always)]
    pub(super) fn put<const C: usize, const D: usize>(&self, out: &mut Sip<C, D>, whole: &[u8]) {
        // A local copy stays in registers; through `out` it would be stored back after each word.
        let mut h = *out;
        h.word(self.first);
        let end = self.end;
        if (self.first >> 8) & 0xffff == LONG as u64 {
            h.word((end - self.rest) as u64);
        }
        let mut words = whole[self.rest..end].chunks_exact(8);
        for w in &mut words {
            h.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let tail = words.remainder().len();
        if tail > 0 {
            h.word(load(whole, end - tail, tail));
        }
        *out = h;
    }
}

/// Bytes of a string in its first word.
pub(super) const HEAD: usize = 5;

/// Hashes `tag` and `bytes`.
pub(super) fn put_bytes<const C: usize, const D: usize>(h: &mut Sip<C, D>, tag: u64, bytes: &[u8]) {
    Str::of(tag, bytes, 0, bytes.len()).put(h, bytes);
}
