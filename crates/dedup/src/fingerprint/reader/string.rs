//! Strings: where a run of plain text ends, found eight bytes at a time, and unescaping.

use super::{AsBytes, Walk};
use crate::fingerprint::encoding::{Str, TAG_STR, load, low_bytes, tail};

/// The bytes of `w` that end a plain run of string text (`"`, `\` or a control byte): the high
/// bit of each such byte is set, and the lowest set bit is exact.
#[inline(always)]
fn stops(w: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let quote = w ^ (LO * u64::from(b'"'));
    let backslash = w ^ (LO * u64::from(b'\\'));
    // A zero byte (a match) or a byte below 0x20 sets its high bit; a borrow can set more only
    // above the lowest match.
    ((quote.wrapping_sub(LO) & !quote)
        | (backslash.wrapping_sub(LO) & !backslash)
        | (w.wrapping_sub(LO * 0x20) & !w))
        & HI
}

/// The index of the first `"`, `\` or control byte at or after `i` (or `src.len()`), eight
/// bytes at a time.
#[inline]
fn string_stop(src: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = src.get(i..).and_then(|rest| rest.first_chunk::<8>()) {
        let hits = stops(u64::from_le_bytes(*chunk));
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    // The last few bytes, zero-padded: a zero counts as a stop, so past the end means none.
    let hits = stops(tail(src, i));
    (i + (hits.trailing_zeros() / 8) as usize).min(src.len())
}

impl<const C: usize, const D: usize> Walk<'_, C, D> {
    /// Reads a string (at `"`).
    #[inline(always)]
    pub(super) fn string(&mut self) -> Result<Str, AsBytes> {
        self.key().map(|(s, _)| s)
    }

    /// Reads a string (at `"`), and its sort prefix (its first eight bytes, big-endian and
    /// zero-padded).
    ///
    /// Inlined, all but unescaping, so that the string it returns stays in registers.
    #[inline(always)]
    pub(super) fn key(&mut self) -> Result<(Str, u64), AsBytes> {
        let start = self.pos + 1;
        // The first eight bytes: most keys and many values end in them, and they are the
        // string's first word whatever its length.
        let head = match self
            .src
            .get(start..)
            .and_then(|rest| rest.first_chunk::<8>())
        {
            Some(chunk) => u64::from_le_bytes(*chunk),
            // Near the end of the input: zero-padded, and a zero is a stop (the end byte then
            // reads as 0, neither `"` nor `\`).
            None => tail(self.src, start.min(self.src.len())),
        };
        let hits = stops(head);
        let (stop, end) = if hits != 0 {
            // The stop is in the eight bytes already loaded.
            let bit = hits.trailing_zeros();
            (start + (bit / 8) as usize, (head >> (bit & !7)) as u8)
        } else {
            let stop = string_stop(self.src, start + 8);
            (stop, self.src.get(stop).copied().unwrap_or(0))
        };
        match end {
            b'"' => {
                self.pos = stop + 1;
                let prefix = (head & low_bytes((stop - start).min(8))).swap_bytes();
                Ok((Str::new(TAG_STR, start, stop, head), prefix))
            }
            b'\\' => {
                let first = self.unescape(start, stop)?;
                let (arena, len) = (&self.arena, self.arena.len() - first);
                let s = Str::of(TAG_STR, arena, first, first + len);
                let prefix = load(arena, first, len.min(8)).swap_bytes();
                let base = self.src.len();
                let s = Str {
                    rest: s.rest + base,
                    end: s.end + base,
                    ..s
                };
                Ok((s, prefix))
            }
            _ => Err(AsBytes),
        }
    }

    /// A string with escapes (`src[start..stop]` has none, `src[stop]` is `\`): unescaped onto
    /// the end of the arena; where in the arena it starts.
    #[cold]
    #[inline(never)]
    fn unescape(&mut self, start: usize, mut stop: usize) -> Result<usize, AsBytes> {
        let first = self.arena.len();
        let mut from = start;
        loop {
            self.arena.extend_from_slice(&self.src[from..stop]);
            match self.src.get(stop) {
                Some(b'"') => {
                    self.pos = stop + 1;
                    return Ok(first);
                }
                Some(b'\\') => {
                    let e = *self.src.get(stop + 1).ok_or(AsBytes)?;
                    self.pos = stop + 2;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(AsBytes),
                    };
                    let mut utf8 = [0u8; 4];
                    self.arena
                        .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    from = self.pos;
                    stop = string_stop(self.src, from);
                }
                _ => return Err(AsBytes),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, AsBytes> {
        let digits = self.src.get(self.pos..self.pos + 4).ok_or(AsBytes)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16).ok_or(AsBytes)?;
        }
        self.pos += 4;
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Result<char, AsBytes> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if self.src.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(AsBytes);
                }
                self.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(AsBytes);
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(AsBytes),
            _ => hi,
        };
        char::from_u32(code).ok_or(AsBytes)
    }
}
