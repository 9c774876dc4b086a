//! The JSON reader: a single pass that validates a document and hashes each value as it reads
//! it, without building one.

use std::cell::RefCell;

use super::MAX_DEPTH;
use super::encoding::{
    LONG, Str, TAG_ARRAY, TAG_DECIMAL, TAG_DECIMAL_HASH, TAG_END, TAG_ENTRY, TAG_FALSE, TAG_INT,
    TAG_INT64, TAG_LONG_DECIMAL, TAG_NESTED, TAG_NESTED_HASH, TAG_NULL, TAG_OBJECT,
    TAG_SORTED_OBJECT, TAG_TRUE,
};
use super::number::{self, Decimal, Exact};
use super::sip::Sip;

mod string;

pub(super) fn looks_like_json(text: &[u8]) -> bool {
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b) => matches!(
            b,
            b'{' | b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9'
        ),
        None => false,
    }
}

/// The input is not JSON, nests deeper than [`MAX_DEPTH`], repeats a key in an object or has a
/// number exponent too long to read: hash it as bytes.
#[derive(Debug)]
pub(super) struct AsBytes;

/// Objects with at most this many entries are hashed with their entries sorted, in their
/// parent's stream; larger ones sum per-entry hashes.
const SORTED_ENTRIES: usize = 16;

/// A value read but not yet hashed: `n` words of a scalar (or of a nested container's hash),
/// or (`n == 0`) a string: `w` are its [`Str`]'s fields. Plain words, so that it lives in
/// registers.
#[derive(Clone, Copy)]
struct Val {
    n: u64,
    w: [u64; 3],
}

impl Val {
    const ZERO: Self = Self { n: 0, w: [0; 3] };

    const fn one(word: u64) -> Self {
        Self {
            n: 1,
            w: [word, 0, 0],
        }
    }

    const fn str(s: Str) -> Self {
        Self {
            n: 0,
            w: [s.first, s.rest as u64, s.end as u64],
        }
    }

    fn as_str(&self) -> Option<Str> {
        (self.n == 0).then(|| Str {
            first: self.w[0],
            rest: self.w[1] as usize,
            end: self.w[2] as usize,
        })
    }

    #[inline(always)]
    fn int64(v: i64) -> Self {
        if (v << 8) >> 8 == v {
            Self::one(TAG_INT | (v as u64) << 8)
        } else {
            Self {
                n: 2,
                w: [TAG_INT64, v as u64, 0],
            }
        }
    }
}

/// An object entry read but not yet hashed.
#[derive(Clone, Copy)]
struct Entry {
    key: Str,
    /// The key's first eight bytes, big-endian and zero-padded: most comparisons stop here.
    prefix: u64,
    val: Val,
}

/// A single pass over JSON text that hashes each value as it is read, without building one.
///
/// Hand-written rather than a serde visitor, whose generic machinery costs more than the hashing
/// on small messages. It accepts RFC 8259 JSON, except that it does not check that
/// strings are valid UTF-8 (such a string is compared as its bytes like any other); strings are
/// compared as their unescaped bytes.
struct Walk<'a, const C: usize, const D: usize> {
    src: &'a [u8],
    pos: usize,
    /// The keyed initial state, for entry and nested container hashes.
    init: Sip<C, D>,
    /// Unescaped text of the strings that contain escapes (rare; allocated on first use).
    /// Positions in it are offset by `src.len()`: a string in the input ends before the input
    /// does, so a [`Str`]'s `rest` tells which buffer it is in.
    arena: Vec<u8>,
}

thread_local! {
    /// Entry buffers reused by every walk on this thread: no allocation, and no kilobyte of
    /// stack to initialise, per object. Holds up to [`SORTED_ENTRIES`] per level of nesting, and
    /// every entry of an object larger than that (its keys are checked for repeats at its end);
    /// trimmed back to [`RETAINED_ENTRIES`] after a walk.
    static ENTRIES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Entries a thread keeps room for between walks: every level of nesting full.
const RETAINED_ENTRIES: usize = MAX_DEPTH as usize * SORTED_ENTRIES;

/// Hashes the JSON document `text` into `h`.
pub(super) fn hash_json<const C: usize, const D: usize>(
    h: &mut Sip<C, D>,
    init: Sip<C, D>,
    text: &[u8],
) -> Result<(), AsBytes> {
    let reused = ENTRIES.try_with(|cell| {
        cell.try_borrow_mut().ok().map(|mut entries| {
            entries.clear();
            let result = Walk::hash_with(h, init, text, &mut entries);
            if entries.capacity() > RETAINED_ENTRIES {
                entries.clear();
                entries.shrink_to(RETAINED_ENTRIES);
            }
            result
        })
    });
    match reused {
        Ok(Some(result)) => result,
        // The buffer is in use or gone (a thread-local destructor hashing): a fresh one.
        _ => Walk::hash_with(h, init, text, &mut Vec::new()),
    }
}

impl<'a, const C: usize, const D: usize> Walk<'a, C, D> {
    /// Hashes the document `text` into `h`.
    fn hash_with(
        h: &mut Sip<C, D>,
        init: Sip<C, D>,
        text: &'a [u8],
        es: &mut Vec<Entry>,
    ) -> Result<(), AsBytes> {
        let mut walk = Self {
            src: text,
            pos: 0,
            init,
            arena: Vec::new(),
        };
        let first = walk.token();
        walk.value(h, 0, es, first)?;
        walk.skip_ws();
        if walk.pos == text.len() {
            Ok(())
        } else {
            Err(AsBytes)
        }
    }

    /// The next byte that is not whitespace (not consumed), or 0 at the end of the input (0 is
    /// no JSON token either).
    #[inline(always)]
    fn token(&mut self) -> u8 {
        loop {
            let b = self.src.get(self.pos).copied().unwrap_or(0);
            if b > b' ' || !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return b;
            }
            self.pos += 1;
        }
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The buffer a string's remaining bytes are in, and their range in it.
    #[inline(always)]
    fn rest(&self, s: &Str) -> (&[u8], usize, usize) {
        let n = self.src.len();
        if s.rest < n {
            (self.src, s.rest, s.end)
        } else {
            (&self.arena[..], s.rest - n, s.end - n)
        }
    }

    #[inline(always)]
    fn put_str(&self, h: &mut Sip<C, D>, s: &Str) {
        if s.rest == s.end {
            // Short: all in the first word.
            return h.word(s.first);
        }
        let (whole, rest, end) = self.rest(s);
        Str { rest, end, ..*s }.put(h, whole);
    }

    #[inline(always)]
    fn put_val(&self, h: &mut Sip<C, D>, v: &Val) {
        if let Some(s) = v.as_str() {
            return self.put_str(h, &s);
        }
        h.word(v.w[0]);
        if v.n > 1 {
            h.word(v.w[1]);
            if v.n > 2 {
                h.word(v.w[2]);
            }
        }
    }

    /// A value (at its first byte, `first`).
    ///
    /// `es` holds the entries of the objects being read, innermost last (at most
    /// [`SORTED_ENTRIES`] per level of nesting); it is kept apart from `self` so that a value
    /// can be read straight into its entry.
    fn value(
        &mut self,
        h: &mut Sip<C, D>,
        depth: u32,
        es: &mut Vec<Entry>,
        first: u8,
    ) -> Result<(), AsBytes> {
        match first {
            b'{' => self.object(h, depth + 1, es),
            b'[' => self.array(h, depth + 1, es),
            _ => {
                let mut v = Val::ZERO;
                self.scalar(first, &mut v)?;
                self.put_val(h, &v);
                Ok(())
            }
        }
    }

    /// A string, number or literal (at its first byte, `first`), written in place into `out`, so
    /// that a value is never copied between being read and being hashed.
    #[inline(always)]
    fn scalar(&mut self, first: u8, out: &mut Val) -> Result<(), AsBytes> {
        *out = match first {
            b'"' => Val::str(self.string()?),
            b'-' | b'0'..=b'9' => self.number()?,
            b't' => self.literal(b"true", TAG_TRUE)?,
            b'f' => self.literal(b"false", TAG_FALSE)?,
            b'n' => self.literal(b"null", TAG_NULL)?,
            _ => return Err(AsBytes),
        };
        Ok(())
    }

    fn literal(&mut self, word: &[u8], tag: u64) -> Result<Val, AsBytes> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(Val::one(tag))
        } else {
            Err(AsBytes)
        }
    }

    /// A container that is an entry's value, hashed on its own.
    fn nested(&mut self, depth: u32, es: &mut Vec<Entry>, first: u8) -> Result<Val, AsBytes> {
        let mut nested = self.init;
        nested.word(TAG_NESTED_HASH);
        self.value(&mut nested, depth, es, first)?;
        let hash = nested.finish();
        Ok(Val {
            n: 3,
            w: [TAG_NESTED, hash as u64, (hash >> 64) as u64],
        })
    }

    /// An object (at `{`). Its entries are read once, with container values hashed on their own,
    /// and then hashed sorted (up to [`SORTED_ENTRIES`]) or summed as entry hashes. A repeated
    /// key is [`AsBytes`].
    fn object(
        &mut self,
        h: &mut Sip<C, D>,
        depth: u32,
        es: &mut Vec<Entry>,
    ) -> Result<(), AsBytes> {
        if depth > MAX_DEPTH {
            return Err(AsBytes);
        }
        self.pos += 1;
        // This object's entries are `es[base..]`; nested objects push theirs above and
        // truncate back.
        let base = es.len();
        let mut n = 0;
        let mut sum = 0u128;
        let mut t = self.token();
        if t == b'}' {
            self.pos += 1;
        } else {
            loop {
                if t != b'"' {
                    return Err(AsBytes);
                }
                let (key, prefix) = self.key()?;
                if self.token() != b':' {
                    return Err(AsBytes);
                }
                self.pos += 1;
                let first = self.token();
                if let b'{' | b'[' = first {
                    let val = self.nested(depth, es, first)?;
                    es.push(Entry { key, prefix, val });
                } else {
                    // Read straight into its entry, not through a temporary (see `scalar`).
                    es.push(Entry {
                        key,
                        prefix,
                        val: Val::ZERO,
                    });
                    let last = es.len() - 1;
                    self.scalar(first, &mut es[last].val)?;
                }
                if n >= SORTED_ENTRIES {
                    let (e, before) = es[base..].split_last().expect("just pushed");
                    if n == SORTED_ENTRIES {
                        // Too many to sort: per-entry hashes instead.
                        for e in before {
                            sum = sum.wrapping_add(self.entry_hash(e));
                        }
                    }
                    sum = sum.wrapping_add(self.entry_hash(e));
                }
                n += 1;
                match self.token() {
                    b',' => {
                        self.pos += 1;
                        t = self.token();
                    }
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(AsBytes),
                }
            }
        }
        if n > SORTED_ENTRIES {
            // The entries are kept, and sorted here, only to find a repeated key.
            let entries = &mut es[base..];
            entries.sort_unstable_by(|a, b| self.order(a, b));
            if entries.windows(2).any(|w| self.order(&w[0], &w[1]).is_eq()) {
                return Err(AsBytes);
            }
            es.truncate(base);
            h.word(TAG_OBJECT | (n as u64) << 8);
            h.word(sum as u64);
            h.word((sum >> 64) as u64);
            return Ok(());
        }
        let entries = &es[base..];
        // Insertion sort of indices by key, most comparisons on the eight-byte prefix alone: no
        // work on keys that come sorted already. A repeated key meets its twin here.
        let mut order = [0u8; SORTED_ENTRIES];
        for (i, e) in entries.iter().enumerate() {
            let mut j = i;
            while j > 0 {
                let before = &entries[order[j - 1] as usize];
                if before.prefix < e.prefix {
                    break;
                }
                if before.prefix == e.prefix {
                    match self.compare_keys(&before.key, &e.key) {
                        std::cmp::Ordering::Less => break,
                        std::cmp::Ordering::Equal => return Err(AsBytes),
                        std::cmp::Ordering::Greater => {}
                    }
                }
                order[j] = order[j - 1];
                j -= 1;
            }
            order[j] = i as u8;
        }
        let mut out = *h;
        out.word(TAG_SORTED_OBJECT | (n as u64) << 8);
        for &i in &order[..n] {
            let e = &entries[i as usize];
            self.put_str(&mut out, &e.key);
            self.put_val(&mut out, &e.val);
        }
        *h = out;
        es.truncate(base);
        Ok(())
    }

    /// The order of two entries' keys: by their prefixes, then in full.
    #[inline(always)]
    fn order(&self, a: &Entry, b: &Entry) -> std::cmp::Ordering {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| self.compare_keys(&a.key, &b.key))
    }

    /// The order of two keys with the same prefix.
    #[cold]
    fn compare_keys(&self, a: &Str, b: &Str) -> std::cmp::Ordering {
        // The whole of a string, from the end of its buffer and its length.
        let text = |s: &Str| {
            let (whole, rest, end) = self.rest(s);
            let len = if (s.first >> 8) & 0xffff == LONG as u64 {
                end - rest
            } else {
                ((s.first >> 8) & 0xffff) as usize
            };
            &whole[end - len..end]
        };
        text(a).cmp(text(b))
    }

    /// The hash of one entry of a large object.
    fn entry_hash(&self, e: &Entry) -> u128 {
        let mut h = self.init;
        h.word(TAG_ENTRY);
        self.put_str(&mut h, &e.key);
        self.put_val(&mut h, &e.val);
        h.finish()
    }

    /// An array (at `[`): its elements in order, then an end tag with the count, so `[[1],2]`
    /// and `[[1,2]]` differ.
    fn array(&mut self, h: &mut Sip<C, D>, depth: u32, es: &mut Vec<Entry>) -> Result<(), AsBytes> {
        if depth > MAX_DEPTH {
            return Err(AsBytes);
        }
        self.pos += 1;
        h.word(TAG_ARRAY);
        let mut len = 0u64;
        let mut t = self.token();
        if t == b']' {
            self.pos += 1;
        } else {
            loop {
                self.value(h, depth, es, t)?;
                len += 1;
                match self.token() {
                    b',' => {
                        self.pos += 1;
                        t = self.token();
                    }
                    b']' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(AsBytes),
                }
            }
        }
        h.word(TAG_END | len << 8);
        Ok(())
    }

    /// A number (at `-` or a digit). Integers of up to 18 digits are read here; anything else
    /// by [`Self::number_slow`].
    #[inline(always)]
    fn number(&mut self) -> Result<Val, AsBytes> {
        let (src, start) = (self.src, self.pos);
        let negative = src.get(start) == Some(&b'-');
        let first = start + usize::from(negative);
        // A local index: `self.pos` would be stored on every digit.
        let mut at = first;
        let mut v = 0i64;
        while let Some(&d @ b'0'..=b'9') = src.get(at) {
            // Wraps past 18 digits, which go the slow way below.
            v = v.wrapping_mul(10).wrapping_add(i64::from(d - b'0'));
            at += 1;
        }
        let digits = at - first;
        let simple = matches!(digits, 1..=18)
            && (digits == 1 || src[first] != b'0')
            && !matches!(src.get(at), Some(b'.' | b'e' | b'E'));
        if !simple {
            return self.number_slow();
        }
        self.pos = at;
        Ok(Val::int64(if negative { -v } else { v }))
    }

    /// Any number (at `-` or a digit), by the JSON grammar, as its exact value.
    #[cold]
    fn number_slow(&mut self) -> Result<Val, AsBytes> {
        let (exact, end) = number::read(self.src, self.pos).ok_or(AsBytes)?;
        self.pos = end;
        Ok(match exact {
            Exact::Int(v) => Val::int64(v),
            Exact::Decimal(d) => self.decimal(&d),
        })
    }

    /// A number that is not an `i64`: inline if short enough, else as its own keyed hash.
    fn decimal(&self, d: &Decimal) -> Val {
        let sign = u64::from(d.negative) << 8;
        if let (Some(digits), Ok(exponent)) = (d.mantissa(self.src), i32::try_from(d.exponent)) {
            let first = TAG_DECIMAL | sign | d.len << 16 | u64::from(exponent as u32) << 32;
            return Val {
                n: if d.len <= 19 { 2 } else { 3 },
                w: [first, digits as u64, (digits >> 64) as u64],
            };
        }
        let mut h = self.init;
        h.word(TAG_LONG_DECIMAL | sign);
        h.word(d.exponent as u64);
        h.word(d.len);
        d.chunks(self.src, |chunk| h.word(chunk));
        let hash = h.finish();
        Val {
            n: 3,
            w: [TAG_DECIMAL_HASH, hash as u64, (hash >> 64) as u64],
        }
    }
}
