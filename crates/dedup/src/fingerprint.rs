//! Keyed 128-bit content fingerprints.
//!
//! A [`Fingerprinter`] hashes a JSON document as a *value*: key order, whitespace and string
//! escapes do not change the result. It never builds a canonical string, a `serde_json::Value` or
//! any other tree: a single-pass reader validates the JSON and feeds a canonical encoding of each
//! token, as whole 64-bit words, straight into keyed SipHash-128. The result depends on no map
//! type's ordering and on no serde_json feature (`preserve_order`, `arbitrary_precision`) enabled
//! anywhere in the build.
//!
//! Canonical form of the values:
//! - **Numbers** compare by mathematical value where JSON allows it: an integral number within
//!   ±2^64 hashes as that integer, so `1`, `1.0`, `1e0` and `10e-1` are the same, and `-0` equals `0`
//!   (as RFC 8785 and JavaScript see them; Python's `json.dumps` would write `1.0` and `1`
//!   differently). Other numbers hash as their IEEE-754 double, so `0.1` and `0.10` agree.
//! - **Strings** hash as their unescaped bytes: `"\u0041"` equals `"A"` (no Unicode normalisation).
//! - **Objects** of up to 16 entries hash their entries sorted by key (then by value, so that
//!   repeated keys do not depend on their order either); larger objects hash each entry on its
//!   own and add the entry hashes, which is order independent. An object or array that is the
//!   value of an entry hashes as its own keyed 128-bit hash, so the reader never parses any part
//!   of the input twice.
//! - **Objects** with a repeated key hash every occurrence (serde_json's `Value` keeps only the last).
//! - Nesting deeper than [`MAX_DEPTH`] levels (the reader recurses once per level, so the stack
//!   stays small), invalid JSON, trailing garbage and non-JSON text hash as raw bytes (under a
//!   different domain tag than any JSON value), so deep nesting can neither overflow the stack nor
//!   collide with a JSON value.
//!
//! The encoding is a sequence of words that can be decoded back: every item starts with a word
//! whose low byte is a tag, and a string's first word also holds its length, so no two inputs of
//! different kinds or values share an encoding.

mod sip;

use std::cell::RefCell;
use std::fmt;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use wsguard_config::DedupConfig;

use sip::Sip;

/// Deepest JSON nesting hashed as a value; deeper documents are hashed as bytes.
pub const MAX_DEPTH: u32 = 64;

// Domain tags (the low byte of an item's first word): no two kinds of input share an encoding.
const TAG_JSON: u64 = 0x01;
const TAG_BYTES: u64 = 0x02;
const TAG_ID_STR: u64 = 0x03;
const TAG_ID_INT: u64 = 0x04;
const TAG_NULL: u64 = 0x10;
const TAG_FALSE: u64 = 0x11;
const TAG_TRUE: u64 = 0x12;
/// An integer that fits in 56 bits, in the word's upper seven bytes.
const TAG_INT: u64 = 0x13;
const TAG_FLOAT: u64 = 0x14;
const TAG_STR: u64 = 0x15;
const TAG_ARRAY: u64 = 0x16;
/// A large object: entry count, then the sum of the entry hashes.
const TAG_OBJECT: u64 = 0x17;
/// First word of an entry hash.
const TAG_ENTRY: u64 = 0x18;
const TAG_SORTED_OBJECT: u64 = 0x19;
const TAG_END: u64 = 0x1a;
const TAG_INT128: u64 = 0x1b;
/// Any other `i64`, in the next word.
const TAG_INT64: u64 = 0x1c;
/// A container that is an entry's value: its hash follows.
const TAG_NESTED: u64 = 0x1d;
/// First word of such a container's own hash.
const TAG_NESTED_HASH: u64 = 0x1e;
const TAG_SCOPE_GLOBAL: u64 = 0x20;
const TAG_SCOPE_CONNECTION: u64 = 0x21;
const TAG_SCOPE_CLIENT: u64 = 0x22;

/// A string's length in its first word: two bytes, all ones meaning "in the next word".
const LONG: usize = 0xffff;

// serde_json's `arbitrary_precision` feature hands numbers over as this one-entry map.
const ARBITRARY_PRECISION_TOKEN: &str = "$serde_json::private::Number";

/// A keyed 128-bit fingerprint: the identity under which a message is remembered.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(u128);

impl Fingerprint {
    /// The fingerprint as a number.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// A fingerprint from its number (for stores that persist them).
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({:032x})", self.0)
    }
}

/// 32 lowercase hex digits.
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Computes keyed 128-bit fingerprints of messages (SipHash-1-3 or SipHash-2-4).
///
/// The key is what makes the fingerprints safe: without it nobody can craft two messages with
/// the same fingerprint. [`Fingerprinter::from_config`] takes it from `fingerprint_key` (set the
/// same key on every node that shares a window) or else uses a random key chosen once per process.
///
/// ```
/// use wsguard_dedup::Fingerprinter;
///
/// let fp = Fingerprinter::new([7; 16], true);
/// let a = fp.fingerprint_json(br#"{"type":"chat","room":"lobby","n":1}"#);
/// let b = fp.fingerprint_json(br#"{ "n": 1.0, "room": "lobby", "type": "chat" }"#);
/// assert_eq!(a, b);
/// assert_ne!(a, fp.fingerprint_json(br#"{"type":"chat","room":"lobby","n":2}"#));
/// // Not JSON: hashed as bytes.
/// assert_eq!(fp.fingerprint_json(b"hello"), fp.fingerprint_bytes(b"hello"));
/// ```
#[derive(Clone)]
pub struct Fingerprinter {
    key: [u8; 16],
    /// SipHash-1-3 rather than SipHash-2-4.
    fast: bool,
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        let algorithm = if self.fast {
            "SipHash-1-3-128"
        } else {
            "SipHash-2-4-128"
        };
        f.debug_struct("Fingerprinter")
            .field("algorithm", &algorithm)
            .finish_non_exhaustive()
    }
}

impl Fingerprinter {
    /// A fingerprinter keyed with `key`; `fast` selects SipHash-1-3, otherwise SipHash-2-4.
    pub fn new(key: [u8; 16], fast: bool) -> Self {
        Self { key, fast }
    }

    /// A fingerprinter keyed with this process's random key (the same key for every call in
    /// this process, a different one in every other process).
    pub fn random(fast: bool) -> Self {
        Self::new(process_key(), fast)
    }

    /// From `fingerprint_key` and `use_fast_hash`; without a valid `fingerprint_key`, the
    /// process's random key.
    pub fn from_config(config: &DedupConfig) -> Self {
        match config.fingerprint_key_bytes() {
            Some(key) => Self::new(key, config.use_fast_hash),
            None => Self::random(config.use_fast_hash),
        }
    }

    /// Fingerprint of a JSON document compared as a value (see the [module docs](self) for the
    /// canonical form); input that is not JSON is fingerprinted as bytes.
    pub fn fingerprint_json(&self, json: &[u8]) -> Fingerprint {
        self.key(Scope::Unscoped, Content::Text(json))
    }

    /// Fingerprint of raw bytes.
    pub fn fingerprint_bytes(&self, bytes: &[u8]) -> Fingerprint {
        self.key(Scope::Unscoped, Content::Bytes(bytes))
    }

    pub(crate) fn key(&self, scope: Scope<'_>, content: Content<'_>) -> Fingerprint {
        Fingerprint(if self.fast {
            key_with(Sip::<1, 3>::new(self.key), scope, content)
        } else {
            key_with(Sip::<2, 4>::new(self.key), scope, content)
        })
    }
}

/// Whose window a key belongs to; written ahead of the content so scopes never share keys.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    Unscoped,
    Global,
    Connection(u64),
    Client(&'a str),
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Content<'a> {
    /// JSON if it parses, else bytes.
    Text(&'a [u8]),
    Bytes(&'a [u8]),
    IdStr(&'a [u8]),
    IdInt(i128),
}

fn key_with<const C: usize, const D: usize>(
    init: Sip<C, D>,
    scope: Scope<'_>,
    content: Content<'_>,
) -> u128 {
    let mut h = init;
    match scope {
        Scope::Unscoped => {}
        Scope::Global => h.word(TAG_SCOPE_GLOBAL),
        Scope::Connection(id) => {
            h.word(TAG_SCOPE_CONNECTION);
            h.word(id);
        }
        Scope::Client(id) => put_bytes(&mut h, TAG_SCOPE_CLIENT, id.as_bytes()),
    }
    match content {
        Content::Text(text) => {
            if looks_like_json(text) {
                let mut json = h;
                json.word(TAG_JSON);
                if hash_json(&mut json, init, text).is_ok() {
                    return json.finish();
                }
            }
            put_bytes(&mut h, TAG_BYTES, text);
        }
        Content::Bytes(bytes) => put_bytes(&mut h, TAG_BYTES, bytes),
        Content::IdStr(id) => put_bytes(&mut h, TAG_ID_STR, id),
        Content::IdInt(id) => {
            h.word(TAG_ID_INT);
            h.word(id as u64);
            h.word((id >> 64) as u64);
        }
    }
    h.finish()
}

/// `whole[at..at + n]` (`n <= 8`) as a little-endian word, zero-extended.
#[inline(always)]
fn load(whole: &[u8], at: usize, n: usize) -> u64 {
    match whole.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
        // One unaligned load; the bytes past `n` (still inside the buffer) are masked off.
        Some(chunk) => u64::from_le_bytes(*chunk) & low_bytes(n),
        None => tail(whole, at) & low_bytes(n),
    }
}

/// `whole[at..]`, fewer than eight bytes, as a little-endian word, zero-padded: the buffer's last
/// eight bytes shifted down (one load, no loop), unless the whole buffer is shorter.
#[inline(always)]
fn tail(whole: &[u8], at: usize) -> u64 {
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
fn low_bytes(n: usize) -> u64 {
    // A shift and a conditional move (a 128-bit shift costs branches).
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
struct Str {
    first: u64,
    rest: usize,
    end: usize,
}

impl Str {
    /// `tag` and `whole[start..end]`, whose first bytes are the low bytes of `head` (at least
    /// [`HEAD`] of them, or all; more are masked off).
    #[inline(always)]
    fn new(tag: u64, start: usize, end: usize, head: u64) -> Self {
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
    fn of(tag: u64, whole: &[u8], start: usize, end: usize) -> Self {
        Self::new(tag, start, end, load(whole, start, (end - start).min(HEAD)))
    }

    /// Hashes the string; `whole` is the buffer `rest..end` are in.
    #[inline(always)]
    fn put<const C: usize, const D: usize>(&self, out: &mut Sip<C, D>, whole: &[u8]) {
        // A local copy stays in registers (through `out` it would be stored after every word, as
        // a bounds check could panic in between).
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
const HEAD: usize = 5;

/// Hashes `tag` and `bytes`.
fn put_bytes<const C: usize, const D: usize>(h: &mut Sip<C, D>, tag: u64, bytes: &[u8]) {
    Str::of(tag, bytes, 0, bytes.len()).put(h, bytes);
}

fn looks_like_json(text: &[u8]) -> bool {
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b) => matches!(
            b,
            b'{' | b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9'
        ),
        None => false,
    }
}

/// The input is not JSON (or nests deeper than [`MAX_DEPTH`]): hash it as bytes.
#[derive(Debug)]
struct Invalid;

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

    fn int(v: i128) -> Self {
        match i64::try_from(v) {
            Ok(v) => Self::int64(v),
            Err(_) => Self {
                n: 3,
                w: [TAG_INT128, v as u64, (v >> 64) as u64],
            },
        }
    }

    fn float(v: f64) -> Self {
        // Integral values within ±2^64 hash as integers so that 1.0 == 1 (and -0.0 == 0).
        if v.fract() == 0.0 && v.abs() < 18_446_744_073_709_551_616.0 {
            Self::int(v as i128)
        } else {
            Self {
                n: 2,
                w: [TAG_FLOAT, v.to_bits(), 0],
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
/// Hand-written rather than a serde visitor: on small messages serde_json's generic machinery
/// cost more than the hashing. It accepts RFC 8259 JSON, except that it does not check that
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
    /// stack to initialise, per object. Bounded by [`MAX_DEPTH`] times [`SORTED_ENTRIES`].
    static ENTRIES: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Hashes the JSON document `text` into `h`.
fn hash_json<const C: usize, const D: usize>(
    h: &mut Sip<C, D>,
    init: Sip<C, D>,
    text: &[u8],
) -> Result<(), Invalid> {
    let reused = ENTRIES.try_with(|cell| {
        cell.try_borrow_mut().ok().map(|mut entries| {
            entries.clear();
            Walk::hash_with(h, init, text, &mut entries)
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
    ) -> Result<(), Invalid> {
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
            Err(Invalid)
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

    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
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
    ) -> Result<(), Invalid> {
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

    /// A string, number or literal (at its first byte, `first`), into `out` (written in place:
    /// moving a value read as words through wider copies stalls store forwarding).
    #[inline(always)]
    fn scalar(&mut self, first: u8, out: &mut Val) -> Result<(), Invalid> {
        *out = match first {
            b'"' => Val::str(self.string()?),
            b'-' | b'0'..=b'9' => self.number()?,
            b't' => self.literal(b"true", TAG_TRUE)?,
            b'f' => self.literal(b"false", TAG_FALSE)?,
            b'n' => self.literal(b"null", TAG_NULL)?,
            _ => return Err(Invalid),
        };
        Ok(())
    }

    fn literal(&mut self, word: &[u8], tag: u64) -> Result<Val, Invalid> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(Val::one(tag))
        } else {
            Err(Invalid)
        }
    }

    /// A container that is an entry's value, hashed on its own.
    fn nested(&mut self, depth: u32, es: &mut Vec<Entry>, first: u8) -> Result<Val, Invalid> {
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
    /// and then hashed sorted (up to [`SORTED_ENTRIES`]) or summed as entry hashes.
    fn object(
        &mut self,
        h: &mut Sip<C, D>,
        depth: u32,
        es: &mut Vec<Entry>,
    ) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.pos += 1;
        // This object's entries are `es[base..]`; nested objects push theirs above and
        // truncate back.
        let base = es.len();
        let mut spare = Entry {
            key: Str {
                first: 0,
                rest: 0,
                end: 0,
            },
            prefix: 0,
            val: Val::ZERO,
        };
        let mut n = 0;
        let mut sum = 0u128;
        let mut t = self.token();
        if t == b'}' {
            self.pos += 1;
        } else {
            loop {
                if t != b'"' {
                    return Err(Invalid);
                }
                let (key, prefix) = self.key()?;
                if self.token() != b':' {
                    return Err(Invalid);
                }
                self.pos += 1;
                let first = self.token();
                let sorted = n < SORTED_ENTRIES;
                if let b'{' | b'[' = first {
                    let val = self.nested(depth, es, first)?;
                    let entry = Entry { key, prefix, val };
                    if sorted {
                        es.push(entry);
                    } else {
                        spare = entry;
                    }
                } else {
                    // The value is read straight into its entry: moving it from a temporary
                    // through wide copies stalls on the narrow stores that wrote it.
                    let slot = if sorted {
                        es.push(Entry {
                            key,
                            prefix,
                            val: Val::ZERO,
                        });
                        let last = es.len() - 1;
                        &mut es[last]
                    } else {
                        spare.key = key;
                        spare.prefix = prefix;
                        &mut spare
                    };
                    self.scalar(first, &mut slot.val)?;
                }
                if !sorted {
                    if n == SORTED_ENTRIES {
                        // Too many to sort: per-entry hashes instead.
                        for e in &es[base..] {
                            sum = sum.wrapping_add(self.entry_hash(e));
                        }
                        es.truncate(base);
                    }
                    sum = sum.wrapping_add(self.entry_hash(&spare));
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
                    _ => return Err(Invalid),
                }
            }
        }
        if n > SORTED_ENTRIES {
            h.word(TAG_OBJECT | (n as u64) << 8);
            h.word(sum as u64);
            h.word((sum >> 64) as u64);
            return Ok(());
        }
        let entries = &es[base..];
        // Insertion sort of indices by key (then value), most comparisons on the eight-byte
        // prefix alone: no work on keys that come sorted already.
        let mut order = [0u8; SORTED_ENTRIES];
        for (i, e) in entries.iter().enumerate() {
            let mut j = i;
            while j > 0 && {
                let before = &entries[order[j - 1] as usize];
                before.prefix > e.prefix
                    || (before.prefix == e.prefix && self.compare(before, e).is_gt())
            } {
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

    /// The order of two entries whose keys have the same prefix: by key, then (a repeated key)
    /// by value.
    #[cold]
    fn compare(&self, a: &Entry, b: &Entry) -> std::cmp::Ordering {
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
        text(&a.key)
            .cmp(text(&b.key))
            .then_with(|| match (a.val.as_str(), b.val.as_str()) {
                (Some(x), Some(y)) => text(&x).cmp(text(&y)),
                _ => (a.val.n, a.val.w).cmp(&(b.val.n, b.val.w)),
            })
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
    fn array(&mut self, h: &mut Sip<C, D>, depth: u32, es: &mut Vec<Entry>) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
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
                    _ => return Err(Invalid),
                }
            }
        }
        h.word(TAG_END | len << 8);
        Ok(())
    }

    /// Reads a string (at `"`).
    #[inline(always)]
    fn string(&mut self) -> Result<Str, Invalid> {
        self.key().map(|(s, _)| s)
    }

    /// Reads a string (at `"`), and its sort prefix (its first eight bytes, big-endian and
    /// zero-padded).
    ///
    /// Everything but unescaping is inlined: a string returned by a call comes back through
    /// memory, and reading it back wider than it was written stalls.
    #[inline(always)]
    fn key(&mut self) -> Result<(Str, u64), Invalid> {
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
            _ => Err(Invalid),
        }
    }

    /// A string with escapes (`src[start..stop]` has none, `src[stop]` is `\`): unescaped onto
    /// the end of the arena; where in the arena it starts.
    #[cold]
    #[inline(never)]
    fn unescape(&mut self, start: usize, mut stop: usize) -> Result<usize, Invalid> {
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
                    let e = *self.src.get(stop + 1).ok_or(Invalid)?;
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
                        _ => return Err(Invalid),
                    };
                    let mut utf8 = [0u8; 4];
                    self.arena
                        .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    from = self.pos;
                    stop = string_stop(self.src, from);
                }
                _ => return Err(Invalid),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Invalid> {
        let digits = self.src.get(self.pos..self.pos + 4).ok_or(Invalid)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16).ok_or(Invalid)?;
        }
        self.pos += 4;
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Result<char, Invalid> {
        let hi = self.hex4()?;
        let code = match hi {
            0xD800..=0xDBFF => {
                if self.src.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(Invalid);
                }
                self.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&lo) {
                    return Err(Invalid);
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(Invalid),
            _ => hi,
        };
        char::from_u32(code).ok_or(Invalid)
    }

    /// A number (at `-` or a digit). Integers of up to 18 digits are read here; anything else
    /// by [`Self::number_slow`].
    #[inline(always)]
    fn number(&mut self) -> Result<Val, Invalid> {
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

    /// Any number (at `-` or a digit), by the JSON grammar.
    #[cold]
    fn number_slow(&mut self) -> Result<Val, Invalid> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Invalid),
        }
        let int_end = self.pos;
        let mut integral = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integral = false;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Invalid);
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integral = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Invalid);
            }
            self.digits();
        }
        let digits = &self.src[int_start..int_end];
        if integral && digits.len() <= 38 {
            // At most 38 digits always fit in an i128: no overflow check needed.
            let v = digits
                .iter()
                .fold(0i128, |v, d| v * 10 + i128::from(d - b'0'));
            let v = if negative { -v } else { v };
            return Ok(if v.unsigned_abs() < 1 << 64 {
                Val::int(v)
            } else {
                // Past ±2^64 numbers compare as doubles, like `1e20` and its digits.
                Val::float(v as f64)
            });
        }
        let text = std::str::from_utf8(&self.src[start..self.pos]).map_err(|_| Invalid)?;
        text.parse().map(Val::float).map_err(|_| Invalid)
    }

    #[inline(always)]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

/// This process's random fingerprint key, drawn once from the OS.
fn process_key() -> [u8; 16] {
    static KEY: OnceLock<[u8; 16]> = OnceLock::new();
    *KEY.get_or_init(|| {
        use rand::TryRngCore;
        let mut key = [0u8; 16];
        if rand::rngs::OsRng.try_fill_bytes(&mut key).is_err() {
            // No OS randomness: std's per-process random hasher seeds are the next best thing.
            use std::hash::BuildHasher;
            let a = std::collections::hash_map::RandomState::new().hash_one(1u8);
            let b = std::collections::hash_map::RandomState::new().hash_one(2u8);
            key[..8].copy_from_slice(&a.to_le_bytes());
            key[8..].copy_from_slice(&b.to_le_bytes());
        }
        key
    })
}

/// Extracts the top-level field `name` of a JSON object as a message id (a string or an integer).
pub(crate) fn json_field_id<'a>(json: &'a [u8], name: &str) -> Option<FieldId<'a>> {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(FindField { name }).ok().flatten()
}

#[derive(Debug)]
pub(crate) enum FieldId<'a> {
    Str(std::borrow::Cow<'a, str>),
    Int(i128),
}

struct FindField<'n> {
    name: &'n str,
}

impl<'de> Visitor<'de> for FindField<'_> {
    type Value = Option<FieldId<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_name) = map.next_key_seed(KeyIs(self.name))? {
            if found.is_none() && is_name {
                found = Some(map.next_value::<IdValue<'de>>()?.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        // The parser insists on reading the object to its end.
        Ok(found.flatten())
    }
}

/// Reads an object key, answering whether it is the one named (without allocating).
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

struct IdValue<'de>(Option<FieldId<'de>>);

impl<'de> de::Deserialize<'de> for IdValue<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdVisitor)
    }
}

struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = IdValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message id")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(IdValue(Some(FieldId::Str(v.into()))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(IdValue(Some(FieldId::Str(v.to_owned().into()))))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(IdValue(Some(FieldId::Int(v.into()))))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(IdValue(Some(FieldId::Int(v.into()))))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(IdValue(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(IdValue(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(IdValue(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(IdValue(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // The number token of `arbitrary_precision`, or an object (not an id).
        let mut out = None;
        if let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == ARBITRARY_PRECISION_TOKEN {
                let text: std::borrow::Cow<'de, str> = map.next_value()?;
                out = text.parse::<i128>().ok().map(FieldId::Int);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        }
        Ok(IdValue(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprinter {
        Fingerprinter::new(*b"0123456789abcdef", true)
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let f = fp();
        let a = f.fingerprint_json(br#"{"a":1,"b":{"x":[1,2,{"k":"v","j":null}],"y":true}}"#);
        let b = f.fingerprint_json(
            b"{ \"b\" : { \"y\" : true, \"x\" : [ 1 , 2 , { \"j\": null, \"k\": \"v\" } ] },\n \"a\" : 1 }",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn different_values_differ() {
        let f = fp();
        let docs: [&[u8]; 12] = [
            br#"{"a":1}"#,
            br#"{"a":2}"#,
            br#"{"a":"1"}"#,
            br#"{"b":1}"#,
            br#"{"a":1,"b":1}"#,
            br#"[1,2]"#,
            br#"[2,1]"#,
            br#"[[1],2]"#,
            br#"[[1,2]]"#,
            br#"{"a":[]}"#,
            br#"{"a":{}}"#,
            br#"{"a":null}"#,
        ];
        let mut seen = std::collections::HashSet::new();
        for d in docs {
            assert!(seen.insert(f.fingerprint_json(d)), "collision for {:?}", d);
        }
    }

    #[test]
    fn numbers_compare_by_value() {
        let f = fp();
        let one = f.fingerprint_json(b"[1]");
        assert_eq!(one, f.fingerprint_json(b"[1.0]"));
        assert_eq!(one, f.fingerprint_json(b"[1e0]"));
        assert_eq!(one, f.fingerprint_json(b"[10e-1]"));
        assert_eq!(f.fingerprint_json(b"[0]"), f.fingerprint_json(b"[-0.0]"));
        assert_eq!(f.fingerprint_json(b"[0.1]"), f.fingerprint_json(b"[0.10]"));
        assert_ne!(one, f.fingerprint_json(b"[1.5]"));
        assert_ne!(
            f.fingerprint_json(b"[18446744073709551615]"),
            f.fingerprint_json(b"[18446744073709551614]")
        );
    }

    #[test]
    fn large_top_level_objects_and_escaped_keys_are_order_invariant() {
        let f = fp();
        let entries: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let sizes = [1, 2, 15, 16, 17, 40];
        for n in sizes {
            let forward = format!("{{{}}}", entries[..n].join(","));
            let backward: Vec<_> = entries[..n].iter().rev().cloned().collect();
            let backward = format!("{{ {} }}", backward.join(" , "));
            let a = f.fingerprint_json(forward.as_bytes());
            assert_eq!(a, f.fingerprint_json(backward.as_bytes()), "{n} entries");
            assert_ne!(a, f.fingerprint_bytes(forward.as_bytes()));
        }
        assert_eq!(
            f.fingerprint_json(br#"{"\u0062":[1,{"y":2,"x":1}],"a":"\u00e9"}"#),
            f.fingerprint_json("{\"a\":\"\u{e9}\",\"b\":[1,{\"x\":1,\"y\":2}]}".as_bytes())
        );
        // The same object nested and at the top level is found equal in both layouts.
        assert_eq!(
            f.fingerprint_json(br#"[{"a":1,"b":2}]"#),
            f.fingerprint_json(br#"[{"b":2,"a":1}]"#)
        );
        assert_ne!(
            f.fingerprint_json(br#"{"a":1,"b":2}"#),
            f.fingerprint_json(br#"{"a":2,"b":1}"#)
        );
    }

    #[test]
    fn escapes_are_compared_unescaped() {
        let f = fp();
        assert_eq!(
            f.fingerprint_json(br#"{"\u0061":"\u0041"}"#),
            f.fingerprint_json(br#"{"a":"A"}"#)
        );
    }

    #[test]
    fn non_json_and_malformed_hash_as_bytes() {
        let f = fp();
        for text in [
            &b"hello"[..],
            b"{\"a\":",
            b"{\"a\":1} trailing",
            b"",
            b"   ",
            b"\xff\x00",
        ] {
            assert_eq!(f.fingerprint_json(text), f.fingerprint_bytes(text));
        }
        assert_ne!(
            f.fingerprint_json(b"{\"a\":1} x"),
            f.fingerprint_json(b"{\"a\":1} y")
        );
        // A JSON value never shares a fingerprint with the same bytes taken raw.
        assert_ne!(f.fingerprint_json(b"[1]"), f.fingerprint_bytes(b"[1]"));
    }

    #[test]
    fn deep_nesting_falls_back_to_bytes_without_overflow() {
        let f = fp();
        let deep = |n: usize| {
            let mut s = "[".repeat(n);
            s.push_str(&"]".repeat(n));
            s.into_bytes()
        };
        let ok = deep(MAX_DEPTH as usize);
        assert_ne!(f.fingerprint_json(&ok), f.fingerprint_bytes(&ok));
        for n in [MAX_DEPTH as usize + 1, 200, 100_000] {
            let d = deep(n);
            assert_eq!(f.fingerprint_json(&d), f.fingerprint_bytes(&d));
        }
        let objects = "{\"a\":".repeat(50_000);
        assert_eq!(
            f.fingerprint_json(objects.as_bytes()),
            f.fingerprint_bytes(objects.as_bytes())
        );
    }

    #[test]
    fn keys_and_algorithms_change_fingerprints() {
        let doc = br#"{"a":1}"#;
        let a = Fingerprinter::new([1; 16], true).fingerprint_json(doc);
        assert_ne!(a, Fingerprinter::new([2; 16], true).fingerprint_json(doc));
        assert_ne!(a, Fingerprinter::new([1; 16], false).fingerprint_json(doc));
        assert_eq!(a, Fingerprinter::new([1; 16], true).fingerprint_json(doc));
        assert_eq!(
            Fingerprinter::random(true).fingerprint_json(doc),
            Fingerprinter::random(true).fingerprint_json(doc)
        );
    }

    #[test]
    fn duplicate_keys_and_swapped_values_differ() {
        let f = fp();
        assert_ne!(
            f.fingerprint_json(br#"{"a":1,"b":2}"#),
            f.fingerprint_json(br#"{"a":2,"b":1}"#)
        );
        assert_ne!(
            f.fingerprint_json(br#"{"a":1,"a":1}"#),
            f.fingerprint_json(br#"{"a":1}"#)
        );
    }

    #[test]
    fn scopes_separate_keys() {
        let f = fp();
        let c = Content::Text(br#"{"a":1}"#);
        let keys = [
            f.key(Scope::Global, c),
            f.key(Scope::Connection(1), c),
            f.key(Scope::Connection(2), c),
            f.key(Scope::Client("alice"), c),
            f.key(Scope::Client("bob"), c),
        ];
        let set: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(set.len(), keys.len());
    }

    #[test]
    fn reader_accepts_exactly_json() {
        let f = fp();
        let valid: [&[u8]; 10] = [
            b"0",
            b"-0.5e-3",
            b"\"\\u00e9\\ud83d\\ude00\\n\"",
            b"[]",
            b"{}",
            b" [ true , false , null ] ",
            b"{\"a\":{\"b\":[{}]}}",
            b"1E+2",
            b"\"\xc3\xa9\"",
            b"123456789012345678901234567890",
        ];
        for v in valid {
            assert!(serde_json::from_slice::<serde_json::Value>(v).is_ok());
            assert_ne!(f.fingerprint_json(v), f.fingerprint_bytes(v), "{:?}", v);
        }
        let invalid: [&[u8]; 14] = [
            b"01",
            b"1.",
            b".5",
            b"-",
            b"1e",
            b"tru",
            b"[1,]",
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"tab\there\"",
            b"[1] [2]",
        ];
        for v in invalid {
            assert!(
                serde_json::from_slice::<serde_json::Value>(v).is_err(),
                "{:?}",
                v
            );
            assert_eq!(f.fingerprint_json(v), f.fingerprint_bytes(v), "{:?}", v);
        }
        assert_eq!(
            f.fingerprint_json(b"\"\\u00e9\""),
            f.fingerprint_json("\"\u{e9}\"".as_bytes())
        );
        assert_eq!(
            f.fingerprint_json(b"[1e20]"),
            f.fingerprint_json(b"[100000000000000000000]")
        );
        assert_eq!(
            f.fingerprint_json(b"[1e19]"),
            f.fingerprint_json(b"[10000000000000000000]")
        );
    }

    /// `s` as a JSON string with every character written as a `\u` escape.
    fn all_escaped(s: &str) -> String {
        let mut out = String::from("\"");
        for unit in s.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
        out
    }

    #[test]
    fn strings_of_every_length_in_every_place() {
        let f = fp();
        for len in 0..=40 {
            let s: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let plain = format!("\"{s}\"");
            let escaped = all_escaped(&s);
            // At the very end of the input, with room after it, and unescaped into the arena.
            let top = f.fingerprint_json(plain.as_bytes());
            assert_eq!(
                top,
                f.fingerprint_json(format!("{plain}        ").as_bytes())
            );
            assert_eq!(top, f.fingerprint_json(escaped.as_bytes()), "{len}");
            // As a key and as a value, in each of those forms.
            let obj = f.fingerprint_json(format!("{{{plain}:{plain}}}").as_bytes());
            assert_eq!(
                obj,
                f.fingerprint_json(format!("{{ {escaped} : {escaped} }}").as_bytes())
            );
            assert_eq!(
                f.fingerprint_json(format!("[{plain},1]").as_bytes()),
                f.fingerprint_json(format!("[{escaped},1]").as_bytes())
            );
            // A trailing NUL is data, not padding; one byte more or less is another string.
            let nul = f.fingerprint_json(format!("\"{s}\\u0000\"").as_bytes());
            assert_ne!(top, nul, "{len}");
            if len > 0 {
                let shorter = format!("\"{}\"", &s[..len - 1]);
                assert_ne!(top, f.fingerprint_json(shorter.as_bytes()));
                let other = format!("{{\"{}_\":\"{s}\"}}", &s[..len - 1]);
                assert_ne!(obj, f.fingerprint_json(other.as_bytes()));
            }
            // Raw bytes of every length are told apart too.
            assert_ne!(
                f.fingerprint_bytes(s.as_bytes()),
                f.fingerprint_bytes(format!("{s}\0").as_bytes())
            );
        }
    }

    #[test]
    fn long_strings_keep_their_length() {
        let f = fp();
        for len in [LONG - 1, LONG, LONG + 1, LONG + 8] {
            let s = "x".repeat(len);
            let doc = format!("{{\"{s}\":\"{s}\"}}");
            let a = f.fingerprint_json(doc.as_bytes());
            let escaped = format!("{{\"\\u0078{}\":\"{s}\"}}", &s[1..]);
            assert_eq!(a, f.fingerprint_json(escaped.as_bytes()), "{len}");
            let longer = format!("{{\"{s}\":\"{s}x\"}}");
            assert_ne!(a, f.fingerprint_json(longer.as_bytes()), "{len}");
        }
    }

    #[test]
    fn keys_that_share_their_first_bytes_and_repeated_keys_are_order_invariant() {
        let f = fp();
        let pairs: [(&[u8], &[u8]); 6] = [
            (br#"{"abcdeX":1,"abcdeY":2}"#, br#"{"abcdeY":2,"abcdeX":1}"#),
            (br#"{"a":1,"a":2}"#, br#"{"a":2,"a":1}"#),
            (br#"{"a":"x","a":1}"#, br#"{"a":1,"a":"x"}"#),
            (
                br#"{"k":"abcdefgh1","k":"abcdefgh2"}"#,
                br#"{"k":"abcdefgh2","k":"abcdefgh1"}"#,
            ),
            (br#"{"a":[1],"a":{},"b":0}"#, br#"{"b":0,"a":{},"a":[1]}"#),
            (br#"{"a":null,"a":null}"#, br#"{ "a" : null , "a" : null }"#),
        ];
        for (a, b) in pairs {
            assert_eq!(f.fingerprint_json(a), f.fingerprint_json(b), "{:?}", a);
        }
        assert_ne!(
            f.fingerprint_json(br#"{"abcdeX":1,"abcdeY":2}"#),
            f.fingerprint_json(br#"{"abcdeX":2,"abcdeY":1}"#)
        );
        // Repeated keys past the sorted size, where entry hashes are summed.
        let many: Vec<String> = (0..20).map(|i| format!("\"k\":{}", i % 3)).collect();
        let mut reversed = many.clone();
        reversed.reverse();
        assert_eq!(
            f.fingerprint_json(format!("{{{}}}", many.join(",")).as_bytes()),
            f.fingerprint_json(format!("{{{}}}", reversed.join(",")).as_bytes())
        );
    }

    #[test]
    fn large_objects_with_nested_values_are_order_invariant() {
        let f = fp();
        for n in [15, 16, 17, 18, 40] {
            let entries: Vec<String> = (0..n)
                .map(|i| match i % 4 {
                    0 => format!("\"key{i}\":{{\"x\":[{i},{{\"y\":\"{i}\",\"z\":null}}]}}"),
                    1 => format!("\"key{i}\":[\"long enough to take three words {i}\"]"),
                    2 => format!("\"key{i}\":{i}.5"),
                    _ => format!("\"k\\u0065y{i}\":\"v\\n{i}\""),
                })
                .collect();
            let forward = format!("{{{}}}", entries.join(","));
            let mut backward = entries.clone();
            backward.reverse();
            let backward = format!("{{\n  {}\n}}", backward.join(",\n  "));
            let a = f.fingerprint_json(forward.as_bytes());
            assert_eq!(a, f.fingerprint_json(backward.as_bytes()), "{n} entries");
            // One nested value changed changes the whole.
            let changed = forward.replacen("\"z\":null", "\"z\":false", 1);
            assert_ne!(a, f.fingerprint_json(changed.as_bytes()), "{n} entries");
            // The same object as an array element.
            assert_eq!(
                f.fingerprint_json(format!("[{forward}]").as_bytes()),
                f.fingerprint_json(format!("[{backward}]").as_bytes())
            );
        }
    }

    #[test]
    fn integers_at_the_word_boundaries() {
        let f = fp();
        let edges: [i128; 10] = [
            (1 << 55) - 1,
            1 << 55,
            -(1 << 55),
            -(1 << 55) - 1,
            i64::MAX as i128,
            i64::MIN as i128,
            i64::MAX as i128 + 1,
            i64::MIN as i128 - 1,
            999_999_999_999_999_999,
            1_000_000_000_000_000_000,
        ];
        let mut seen = std::collections::HashSet::new();
        for v in edges {
            let a = f.fingerprint_json(format!("[{v}]").as_bytes());
            assert!(seen.insert(a), "{v}");
            // Written as a float with the same value where a double holds it exactly.
            if v.unsigned_abs() <= 1 << 53 || v.unsigned_abs().trailing_zeros() >= 11 {
                assert_eq!(a, f.fingerprint_json(format!("[{v}.0]").as_bytes()), "{v}");
                assert_eq!(
                    a,
                    f.fingerprint_json(format!("[{}e0]", v).as_bytes()),
                    "{v}"
                );
            }
        }
        assert_eq!(
            f.fingerprint_json(b"[1000000000000000000]"),
            f.fingerprint_json(b"[1e18]")
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                // Integral doubles equal integers by design; keep the two apart here.
                (-1e6f64..1e6)
                    .prop_filter("non-integral", |x| x.fract() != 0.0)
                    .prop_map(Value::from),
                "[a-z\\\\\"\u{e9}\u{1f600}\n]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 40, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6)
                        .prop_map(serde_json::Value::Array),
                    proptest::collection::btree_map("[a-z]{0,4}", inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Wide objects (past the sorted size) of keys that often share their first bytes, long
        /// strings and strings with control characters.
        fn wide_value() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            let leaf = prop_oneof![
                any::<i64>().prop_map(Value::from),
                "[a-z\u{1}\t\"\\\\]{0,40}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 80, 24, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map("[ab]{4,7}", inner, 0..24)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Writes `v` with object keys in reverse order and spaces everywhere.
        fn reversed(v: &serde_json::Value, out: &mut String) {
            write_reversed(v, out, false);
        }

        /// As [`reversed`], with every string written as `\u` escapes if `escape`.
        fn write_reversed(v: &serde_json::Value, out: &mut String, escape: bool) {
            let string = |s: &str| {
                if escape {
                    all_escaped(s)
                } else {
                    serde_json::to_string(s).unwrap()
                }
            };
            use serde_json::Value;
            match v {
                Value::Array(a) => {
                    out.push_str("[ ");
                    for (i, x) in a.iter().enumerate() {
                        if i > 0 {
                            out.push_str(" , ");
                        }
                        write_reversed(x, out, escape);
                    }
                    out.push_str(" ]");
                }
                Value::Object(m) => {
                    out.push_str("{\n");
                    let mut entries: Vec<_> = m.iter().collect();
                    entries.reverse();
                    for (i, (k, x)) in entries.into_iter().enumerate() {
                        if i > 0 {
                            out.push_str(",\t");
                        }
                        out.push_str(&string(k));
                        out.push_str(" : ");
                        write_reversed(x, out, escape);
                    }
                    out.push_str("\r\n}");
                }
                Value::String(s) => out.push_str(&string(s)),
                other => out.push_str(&serde_json::to_string(other).unwrap()),
            }
        }

        proptest! {
            #[test]
            fn same_value_same_fingerprint_whatever_the_layout(v in value()) {
                let f = fp();
                let compact = serde_json::to_string(&v).unwrap();
                let mut other = String::new();
                reversed(&v, &mut other);
                prop_assert_ne!(f.fingerprint_json(compact.as_bytes()), f.fingerprint_bytes(compact.as_bytes()));
                prop_assert_eq!(f.fingerprint_json(compact.as_bytes()), f.fingerprint_json(other.as_bytes()));
            }

            #[test]
            fn wide_objects_escapes_and_layout_do_not_matter(v in wide_value()) {
                let f = fp();
                let compact = serde_json::to_string(&v).unwrap();
                let a = f.fingerprint_json(compact.as_bytes());
                let mut other = String::new();
                reversed(&v, &mut other);
                prop_assert_eq!(a, f.fingerprint_json(other.as_bytes()));
                let mut escaped = String::new();
                write_reversed(&v, &mut escaped, true);
                prop_assert_eq!(a, f.fingerprint_json(escaped.as_bytes()));
                prop_assert_ne!(a, f.fingerprint_bytes(compact.as_bytes()));
            }

            #[test]
            fn wide_different_values_differ(a in wide_value(), b in wide_value()) {
                prop_assume!(a != b);
                let f = fp();
                let (a, b) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
                prop_assert_ne!(f.fingerprint_json(&a), f.fingerprint_json(&b));
            }

            /// Every cut of a document is JSON exactly when serde_json says so, and hashes as
            /// bytes otherwise.
            #[test]
            fn truncated_documents_hash_as_bytes(v in value()) {
                let f = fp();
                let doc = serde_json::to_vec(&v).unwrap();
                for cut in 0..doc.len() {
                    let part = &doc[..cut];
                    let json = serde_json::from_slice::<serde_json::Value>(part).is_ok();
                    prop_assert_eq!(
                        json,
                        f.fingerprint_json(part) != f.fingerprint_bytes(part),
                        "{:?}",
                        String::from_utf8_lossy(part)
                    );
                }
            }

            #[test]
            fn number_forms_compare_by_value(n in any::<i32>(), x in -1e6f64..1e6) {
                let f = fp();
                let one = |text: String| f.fingerprint_json(format!("{{\"n\":[{text}]}}").as_bytes());
                let int = one(n.to_string());
                for form in [format!("{n}.0"), format!("{n}e0"), format!("{n}0e-1"), format!("{n}.000E+0")] {
                    prop_assert_eq!(int, one(form));
                }
                prop_assert_ne!(int, one(format!("{}", i64::from(n) + 1)));
                prop_assert_eq!(one(format!("{x}")), one(format!("{x:e}")));
                prop_assert_eq!(one(format!("{x:e}")), one(format!("{x:E}")));
            }

            #[test]
            fn different_values_differ(a in value(), b in value()) {
                prop_assume!(a != b);
                let f = fp();
                let (a, b) = (serde_json::to_vec(&a).unwrap(), serde_json::to_vec(&b).unwrap());
                prop_assert_ne!(f.fingerprint_json(&a), f.fingerprint_json(&b));
            }
        }
    }

    #[test]
    fn json_field_ids() {
        let id = |doc: &[u8]| match json_field_id(doc, "id") {
            Some(FieldId::Str(s)) => Some(s.into_owned()),
            Some(FieldId::Int(i)) => Some(format!("#{i}")),
            None => None,
        };
        assert_eq!(id(br#"{"x":{"id":1},"id":"m-1"}"#).as_deref(), Some("m-1"));
        assert_eq!(id(br#"{"id":"m\u002d1"}"#).as_deref(), Some("m-1"));
        assert_eq!(
            id(br#"{"id":42,"later":[1,{"a":2}]}"#).as_deref(),
            Some("#42")
        );
        assert_eq!(id(br#"{"id":null}"#), None);
        assert_eq!(id(br#"{"id":[1]}"#), None);
        assert_eq!(id(br#"{"other":1}"#), None);
        assert_eq!(id(br#"[1]"#), None);
        assert_eq!(id(b"not json"), None);
    }
}
