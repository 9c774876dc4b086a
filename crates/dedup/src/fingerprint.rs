//! Keyed 128-bit content fingerprints.
//!
//! A [`Fingerprinter`] hashes a JSON document as a *value*: key order, whitespace and string
//! escapes do not change the result. It never builds a canonical string, a `serde_json::Value` or
//! any other tree: a single-pass reader validates the JSON and feeds each token straight into keyed
//! SipHash. Each object entry is hashed on its own and the entries are combined by wrapping
//! addition, which is order independent, so the result depends on no map type's ordering and on
//! no serde_json feature (`preserve_order`, `arbitrary_precision`) enabled anywhere in the build.
//!
//! Canonical form of the values:
//! - **Numbers** compare by mathematical value where JSON allows it: an integral number within
//!   ±2^64 hashes as that integer, so `1`, `1.0`, `1e0` and `10e-1` are the same, and `-0` equals `0`
//!   (as RFC 8785 and JavaScript see them; Python's `json.dumps` would write `1.0` and `1`
//!   differently). Other numbers hash as their IEEE-754 double, so `0.1` and `0.10` agree.
//! - **Strings** hash as their unescaped bytes: `"\u0041"` equals `"A"` (no Unicode normalisation).
//! - **Objects** with a repeated key hash every occurrence (serde_json's `Value` keeps only the last).
//! - Nesting deeper than [`MAX_DEPTH`] levels (the reader recurses once per level, so the stack
//!   stays small), invalid JSON, trailing garbage and non-JSON text hash as raw bytes (under a different domain tag than any JSON value), so deep nesting can
//!   neither overflow the stack nor collide with a JSON value.

use std::fmt;
use std::hash::Hasher;
use std::sync::OnceLock;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use siphasher::sip128::{Hasher128, SipHasher13, SipHasher24};
use wsguard_config::DedupConfig;

/// Deepest JSON nesting hashed as a value; deeper documents are hashed as bytes.
pub const MAX_DEPTH: u32 = 64;

// Domain tags: every hashed item starts with one, so no two kinds of input share an encoding.
const TAG_JSON: u8 = 0x01;
const TAG_BYTES: u8 = 0x02;
const TAG_ID_STR: u8 = 0x03;
const TAG_ID_INT: u8 = 0x04;
const TAG_NULL: u8 = 0x10;
const TAG_FALSE: u8 = 0x11;
const TAG_TRUE: u8 = 0x12;
const TAG_INT: u8 = 0x13;
const TAG_FLOAT: u8 = 0x14;
const TAG_STR: u8 = 0x15;
const TAG_ARRAY: u8 = 0x16;
const TAG_OBJECT: u8 = 0x17;
const TAG_ENTRY: u8 = 0x18;
const TAG_SORTED_OBJECT: u8 = 0x19;
const TAG_END: u8 = 0x1a;
const TAG_INT128: u8 = 0x1b;
const TAG_SCOPE_GLOBAL: u8 = 0x20;
const TAG_SCOPE_CONNECTION: u8 = 0x21;
const TAG_SCOPE_CLIENT: u8 = 0x22;

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
    hasher: Sip,
}

#[derive(Clone)]
enum Sip {
    Fast(SipHasher13),
    Strong(SipHasher24),
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        let algorithm = match self.hasher {
            Sip::Fast(_) => "SipHash-1-3-128",
            Sip::Strong(_) => "SipHash-2-4-128",
        };
        f.debug_struct("Fingerprinter")
            .field("algorithm", &algorithm)
            .finish_non_exhaustive()
    }
}

impl Fingerprinter {
    /// A fingerprinter keyed with `key`; `fast` selects SipHash-1-3, otherwise SipHash-2-4.
    pub fn new(key: [u8; 16], fast: bool) -> Self {
        let hasher = if fast {
            Sip::Fast(SipHasher13::new_with_key(&key))
        } else {
            Sip::Strong(SipHasher24::new_with_key(&key))
        };
        Self { hasher }
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
        match &self.hasher {
            Sip::Fast(h) => key_with(h, scope, content),
            Sip::Strong(h) => key_with(h, scope, content),
        }
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

/// The hasher state a JSON walk writes into (a [`Feed`]).
trait SipState: Hasher + Hasher128 + Clone {
    /// Writes `whole[start..end]` as [`write_bytes`] does.
    fn write_span(&mut self, whole: &[u8], start: usize, end: usize);
}

impl<S: Hasher + Hasher128 + Clone> SipState for Feed<S> {
    #[inline]
    fn write_span(&mut self, whole: &[u8], start: usize, end: usize) {
        let len = end - start;
        // Short strings (most keys and values) are copied as one fixed-size block from the
        // input, which inlines; bytes past `end` are overwritten by the next write.
        let done = if len <= 16 {
            self.put_block::<16>(whole, start, len)
        } else if len <= 32 {
            self.put_block::<32>(whole, start, len)
        } else {
            false
        };
        if !done {
            write_bytes(self, &whole[start..end]);
        }
    }
}

impl<S: Hasher> Feed<S> {
    /// Writes the length and then `len <= N` bytes of `whole` from `start` by copying a whole
    /// `N`-byte block, if the input and the buffer have room for it.
    #[inline(always)]
    fn put_block<const N: usize>(&mut self, whole: &[u8], start: usize, len: usize) -> bool {
        if self.len + 4 + N > self.buf.len() {
            return false;
        }
        let Some(block) = whole.get(start..).and_then(|w| w.first_chunk::<N>()) else {
            return false;
        };
        self.put_fixed((len as u32).to_le_bytes());
        self.buf[self.len..self.len + N].copy_from_slice(block);
        self.len += len;
        true
    }
}

/// Batches the many small writes of a JSON walk into 64-byte blocks: SipHash's per-call
/// overhead, not its rounds, dominated hashing of small documents.
#[derive(Clone)]
struct Feed<H> {
    h: H,
    len: usize,
    buf: [u8; 64],
}

impl<H: Hasher> Feed<H> {
    /// A constant-size write: inlined moves instead of a `memcpy` call.
    #[inline(always)]
    fn put_fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        if self.len + N <= self.buf.len() {
            self.buf[self.len..self.len + N].copy_from_slice(&bytes);
            self.len += N;
        } else {
            self.put(&bytes);
        }
    }

    fn new(h: H) -> Self {
        Self {
            h,
            len: 0,
            buf: [0; 64],
        }
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        if end <= self.buf.len() {
            self.buf[self.len..end].copy_from_slice(bytes);
            self.len = end;
            return;
        }
        self.h.write(&self.buf[..self.len]);
        if bytes.len() >= self.buf.len() {
            self.h.write(bytes);
            self.len = 0;
        } else {
            self.buf[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
        }
    }
}

impl<H: Hasher> Hasher for Feed<H> {
    fn finish(&self) -> u64 {
        unreachable!("fingerprints use finish128")
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.put(bytes);
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.put_fixed([v]);
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.put_fixed(v.to_le_bytes());
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.put_fixed(v.to_le_bytes());
    }
}

impl<H: Hasher + Hasher128 + Clone> Hasher128 for Feed<H> {
    fn finish128(&self) -> siphasher::sip128::Hash128 {
        let mut h = self.h.clone();
        h.write(&self.buf[..self.len]);
        h.finish128()
    }
}

fn key_with<S: Hasher + Hasher128 + Clone>(
    template: &S,
    scope: Scope<'_>,
    content: Content<'_>,
) -> Fingerprint {
    let template = &Feed::new(template.clone());
    let mut h = scoped(template, scope);
    match content {
        Content::Text(text) => {
            if looks_like_json(text) {
                h.write_u8(TAG_JSON);
                if hash_json(&mut h, template, text).is_ok() {
                    return Fingerprint(h.finish128().as_u128());
                }
                h = scoped(template, scope);
            }
            h.write_u8(TAG_BYTES);
            write_bytes(&mut h, text);
        }
        Content::Bytes(bytes) => {
            h.write_u8(TAG_BYTES);
            write_bytes(&mut h, bytes);
        }
        Content::IdStr(id) => {
            h.write_u8(TAG_ID_STR);
            write_bytes(&mut h, id);
        }
        Content::IdInt(id) => {
            h.write_u8(TAG_ID_INT);
            h.write(&id.to_le_bytes());
        }
    }
    Fingerprint(h.finish128().as_u128())
}

fn scoped<H: Hasher + Clone>(template: &H, scope: Scope<'_>) -> H {
    let mut h = template.clone();
    match scope {
        Scope::Unscoped => {}
        Scope::Global => h.write_u8(TAG_SCOPE_GLOBAL),
        Scope::Connection(id) => {
            h.write_u8(TAG_SCOPE_CONNECTION);
            h.write_u64(id);
        }
        Scope::Client(id) => {
            h.write_u8(TAG_SCOPE_CLIENT);
            write_bytes(&mut h, id.as_bytes());
        }
    }
    h
}

fn write_bytes<H: Hasher>(h: &mut H, bytes: &[u8]) {
    // A 4-byte length (4 GiB and longer escape to 12 bytes): fewer SipHash rounds per string.
    match u32::try_from(bytes.len()) {
        Ok(len) if len != u32::MAX => h.write_u32(len),
        _ => {
            h.write_u32(u32::MAX);
            h.write_u64(bytes.len() as u64);
        }
    }
    h.write(bytes);
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

fn hash_json<H: SipState>(h: &mut H, template: &H, text: &[u8]) -> Result<(), Invalid> {
    let mut walk = Walk {
        src: text,
        pos: 0,
        template,
        scratch: Vec::new(),
    };
    walk.top(h)?;
    walk.skip_ws();
    if walk.pos == text.len() {
        Ok(())
    } else {
        Err(Invalid)
    }
}

/// The input is not JSON (or nests deeper than [`MAX_DEPTH`]): hash it as bytes.
#[derive(Debug)]
struct Invalid;

/// The index of the first `"`, `\` or control byte at or after `i` (or `src.len()`), eight
/// bytes at a time.
#[inline]
fn string_stop(src: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = src.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let quote = w ^ (LO * u64::from(b'"'));
        let backslash = w ^ (LO * u64::from(b'\\'));
        // A set high bit marks a zero byte (a match) or a byte below 0x20; the lowest one is exact.
        let hits = ((quote.wrapping_sub(LO) & !quote)
            | (backslash.wrapping_sub(LO) & !backslash)
            | (w.wrapping_sub(LO * 0x20) & !w))
            & HI;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < src.len() && !matches!(src[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

/// Objects with at most this many entries are hashed with their entries sorted...
const SORTED_ENTRIES: usize = 16;
/// ...when they are nested at most this deep (the top-level object is at depth 1).
const SORTED_DEPTH: u32 = 3;

/// Where a string's unescaped bytes are: in the input, or (it had escapes) in the scratch buffer.
enum Text {
    Src(usize, usize),
    Scratch,
}

#[derive(Clone, Copy)]
enum KeyRef {
    Src(usize, usize),
    Arena(usize, usize),
}

/// A top-level entry: its key, and where its value starts.
#[derive(Clone, Copy)]
struct Entry {
    key: KeyRef,
    /// The key's first 8 bytes, big-endian and zero-padded: most comparisons stop here.
    prefix: u64,
    value: Val,
}

impl Entry {
    const EMPTY: Self = Self {
        key: KeyRef::Src(0, 0),
        prefix: 0,
        value: Val::Tag(0),
    };
}

fn prefix(key: &[u8]) -> u64 {
    match key.first_chunk::<8>() {
        Some(first) => u64::from_be_bytes(*first),
        // Built in registers: a short copy into a buffer and a wide load stalls the store buffer.
        None => key
            .iter()
            .fold(0u64, |p, &b| p << 8 | u64::from(b))
            .checked_shl(8 * (8 - key.len() as u32))
            .unwrap_or(0),
    }
}

#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

/// A top-level value as read by the first pass: scalars are kept, containers re-read.
#[derive(Clone, Copy)]
enum Val {
    Str(usize, usize),
    Int(i64),
    Float(f64),
    Tag(u8),
    Reread(usize),
}

/// A hasher that ignores its input, for validating without hashing.
struct Sink;

impl Hasher for Sink {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, _: &[u8]) {}
}

/// A single pass over JSON text that hashes each value as it is read, without building one.
///
/// Hand-written rather than a serde visitor: on small messages serde_json's generic machinery
/// cost more than the hashing. It accepts exactly RFC 8259 JSON; strings are compared as
/// their unescaped bytes.
struct Walk<'a, H> {
    src: &'a [u8],
    pos: usize,
    template: &'a H,
    /// Unescaped text of a string that contains escapes (rare; allocated on first use).
    scratch: Vec<u8>,
}

impl<H: SipState> Walk<'_, H> {
    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    /// The whole document.
    fn top(&mut self, h: &mut H) -> Result<(), Invalid> {
        self.value(h, 0)
    }

    /// An object (at `{`) of at most [`SORTED_ENTRIES`] entries within [`SORTED_DEPTH`] levels
    /// (the usual message) is hashed in the same stream as its parent with its entries sorted by
    /// key: no hash per entry. Its entries are read twice (once to find and sort them, once to
    /// hash the containers among their values), which the depth bound keeps to a small factor.
    /// Larger and deeper objects sum per-entry hashes. Which method applies depends only on the
    /// value (its entry count and depth), never on how it is written.
    fn sorted_object(&mut self, h: &mut H, depth: u32) -> Result<(), Invalid> {
        let open = self.pos;
        self.pos += 1;
        let mut entries = [Entry::EMPTY; SORTED_ENTRIES];
        let mut n = 0;
        let mut arena = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.peek() != Some(b'"') {
                    return Err(Invalid);
                }
                let key = match self.scan_string()? {
                    Text::Src(start, end) => KeyRef::Src(start, end),
                    Text::Scratch => {
                        let start = arena.len();
                        arena.extend_from_slice(&self.scratch);
                        KeyRef::Arena(start, arena.len())
                    }
                };
                self.skip_ws();
                if self.peek() != Some(b':') {
                    return Err(Invalid);
                }
                self.pos += 1;
                self.skip_ws();
                if n == SORTED_ENTRIES {
                    // Too many to sort on the stack: per-entry hashes instead.
                    self.pos = open;
                    return self.object(h, depth);
                }
                let prefix = prefix(match key {
                    KeyRef::Src(a, b) => &self.src[a..b],
                    KeyRef::Arena(a, b) => &arena[a..b],
                });
                let value = self.scalar(depth)?;
                entries[n] = Entry { key, prefix, value };
                n += 1;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(Invalid),
                }
            }
        }
        let end = self.pos;
        let key = |e: &Entry| match e.key {
            KeyRef::Src(a, b) => &self.src[a..b],
            KeyRef::Arena(a, b) => &arena[a..b],
        };
        // Insertion sort of indices: stable (repeated keys keep their order), fast for a few
        // entries, and it moves bytes, not entries.
        let mut order = [0u8; SORTED_ENTRIES];
        for i in 0..n {
            order[i] = i as u8;
            let mut j = i;
            while j > 0 && {
                let (a, b) = (&entries[order[j - 1] as usize], &entries[order[j] as usize]);
                a.prefix > b.prefix || (a.prefix == b.prefix && key(a) > key(b))
            } {
                order.swap(j - 1, j);
                j -= 1;
            }
        }
        let sorted = order[..n].iter().map(|&i| entries[i as usize]);
        h.write_u8(TAG_SORTED_OBJECT);
        h.write_u64(n as u64);
        for e in sorted.clone() {
            match e.key {
                KeyRef::Src(a, b) => h.write_span(self.src, a, b),
                KeyRef::Arena(a, b) => write_bytes(h, &arena[a..b]),
            }
        }
        for e in sorted {
            match e.value {
                Val::Str(a, b) => {
                    h.write_u8(TAG_STR);
                    h.write_span(self.src, a, b);
                }
                Val::Int(v) => write_int(h, v.into()),
                Val::Float(v) => write_f64(h, v),
                Val::Tag(tag) => h.write_u8(tag),
                Val::Reread(at) => {
                    self.pos = at;
                    self.value(h, depth)?;
                }
            }
        }
        self.pos = end;
        Ok(())
    }

    /// Reads a top-level entry's value: a scalar is kept, a container (or an escaped string) is
    /// validated and re-read when hashing.
    fn scalar(&mut self, depth: u32) -> Result<Val, Invalid> {
        let at = self.pos;
        Ok(match self.peek().ok_or(Invalid)? {
            b'"' => match self.scan_string()? {
                Text::Src(a, b) => Val::Str(a, b),
                Text::Scratch => Val::Reread(at),
            },
            b't' => self
                .literal(b"true", &mut Sink, TAG_TRUE)
                .map(|()| Val::Tag(TAG_TRUE))?,
            b'f' => self
                .literal(b"false", &mut Sink, TAG_FALSE)
                .map(|()| Val::Tag(TAG_FALSE))?,
            b'n' => self
                .literal(b"null", &mut Sink, TAG_NULL)
                .map(|()| Val::Tag(TAG_NULL))?,
            b'-' | b'0'..=b'9' => match self.parse_number()? {
                Num::Int(v) => i64::try_from(v).map_or(Val::Reread(at), Val::Int),
                Num::Float(v) => Val::Float(v),
            },
            _ => {
                self.skip(depth)?;
                Val::Reread(at)
            }
        })
    }

    /// Validates one value and moves past it, hashing nothing.
    fn skip(&mut self, depth: u32) -> Result<(), Invalid> {
        self.skip_ws();
        match self.peek().ok_or(Invalid)? {
            open @ (b'{' | b'[') => {
                if depth + 1 > MAX_DEPTH {
                    return Err(Invalid);
                }
                let (object, close) = (open == b'{', if open == b'{' { b'}' } else { b']' });
                self.pos += 1;
                self.skip_ws();
                if self.peek() == Some(close) {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    if object {
                        self.skip_ws();
                        if self.peek() != Some(b'"') {
                            return Err(Invalid);
                        }
                        self.scan_string()?;
                        self.skip_ws();
                        if self.peek() != Some(b':') {
                            return Err(Invalid);
                        }
                        self.pos += 1;
                    }
                    self.skip(depth + 1)?;
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(c) if c == close => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(Invalid),
                    }
                }
            }
            b'"' => self.scan_string().map(drop),
            b't' => self.literal(b"true", &mut Sink, 0),
            b'f' => self.literal(b"false", &mut Sink, 0),
            b'n' => self.literal(b"null", &mut Sink, 0),
            b'-' | b'0'..=b'9' => self.number(&mut Sink),
            _ => Err(Invalid),
        }
    }

    fn value(&mut self, h: &mut H, depth: u32) -> Result<(), Invalid> {
        self.skip_ws();
        match self.peek().ok_or(Invalid)? {
            b'{' if depth < SORTED_DEPTH => self.sorted_object(h, depth + 1),
            b'{' => self.object(h, depth + 1),
            b'[' => self.array(h, depth + 1),
            b'"' => {
                h.write_u8(TAG_STR);
                self.string(h)
            }
            b't' => self.literal(b"true", h, TAG_TRUE),
            b'f' => self.literal(b"false", h, TAG_FALSE),
            b'n' => self.literal(b"null", h, TAG_NULL),
            b'-' | b'0'..=b'9' => self.number(h),
            _ => Err(Invalid),
        }
    }

    fn literal<W: Hasher>(&mut self, word: &[u8], h: &mut W, tag: u8) -> Result<(), Invalid> {
        if self.src[self.pos..].starts_with(word) {
            self.pos += word.len();
            h.write_u8(tag);
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn object(&mut self, h: &mut H, depth: u32) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.pos += 1;
        let mut sum = 0u128;
        let mut len = 0u64;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.peek() != Some(b'"') {
                    return Err(Invalid);
                }
                // Each entry is hashed on its own; the sum does not depend on their order.
                let mut entry = self.template.clone();
                entry.write_u8(TAG_ENTRY);
                self.string(&mut entry)?;
                self.skip_ws();
                if self.peek() != Some(b':') {
                    return Err(Invalid);
                }
                self.pos += 1;
                self.value(&mut entry, depth)?;
                sum = sum.wrapping_add(entry.finish128().as_u128());
                len += 1;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(Invalid),
                }
            }
        }
        h.write_u8(TAG_OBJECT);
        h.write_u64(len);
        h.write(&sum.to_le_bytes());
        Ok(())
    }

    fn array(&mut self, h: &mut H, depth: u32) -> Result<(), Invalid> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.pos += 1;
        h.write_u8(TAG_ARRAY);
        let mut len = 0u64;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                self.value(h, depth)?;
                len += 1;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(Invalid),
                }
            }
        }
        // An end tag and the length close the array, so `[[1],2]` and `[[1,2]]` differ.
        h.write_u8(TAG_END);
        h.write_u64(len);
        Ok(())
    }

    /// Hashes a string (at `"`) as its length and unescaped bytes.
    fn string(&mut self, h: &mut H) -> Result<(), Invalid> {
        match self.scan_string()? {
            Text::Src(start, end) => h.write_span(self.src, start, end),
            Text::Scratch => write_bytes(h, &self.scratch),
        }
        Ok(())
    }

    /// Reads a string (at `"`): where its unescaped bytes are.
    fn scan_string(&mut self) -> Result<Text, Invalid> {
        self.pos += 1;
        let start = self.pos;
        self.pos = string_stop(self.src, self.pos);
        match *self.src.get(self.pos).ok_or(Invalid)? {
            b'"' => {
                self.pos += 1;
                return Ok(Text::Src(start, self.pos - 1));
            }
            b'\\' => {}
            _ => return Err(Invalid),
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.extend_from_slice(&self.src[start..self.pos]);
        let result = self.unescape_rest(&mut out);
        self.scratch = out;
        result.map(|()| Text::Scratch)
    }

    fn unescape_rest(&mut self, out: &mut Vec<u8>) -> Result<(), Invalid> {
        loop {
            let b = *self.src.get(self.pos).ok_or(Invalid)?;
            self.pos += 1;
            match b {
                b'"' => return Ok(()),
                0..=0x1f => return Err(Invalid),
                b'\\' => {
                    let e = *self.src.get(self.pos).ok_or(Invalid)?;
                    self.pos += 1;
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
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                _ => out.push(b),
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

    /// Validates a number by the JSON grammar and hashes its value.
    fn number<W: Hasher>(&mut self, h: &mut W) -> Result<(), Invalid> {
        match self.parse_number()? {
            Num::Int(v) => write_int(h, v),
            Num::Float(v) => write_f64(h, v),
        }
        Ok(())
    }

    fn parse_number(&mut self) -> Result<Num, Invalid> {
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
            // At most 38 digits always fit in an i128 (18 in a u64): no overflow check needed.
            if digits.len() <= 18 {
                // The common case: fits an i64, no conversion to think about.
                let v = digits
                    .iter()
                    .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
                return Ok(Num::Int(i128::from(if negative { -v } else { v })));
            }
            let v = digits
                .iter()
                .fold(0i128, |v, d| v * 10 + i128::from(d - b'0'));
            let v = if negative { -v } else { v };
            return Ok(if v.unsigned_abs() < 1 << 64 {
                Num::Int(v)
            } else {
                // Past ±2^64 numbers compare as doubles, like `1e20` and its digits.
                Num::Float(v as f64)
            });
        }
        let text = std::str::from_utf8(&self.src[start..self.pos]).map_err(|_| Invalid)?;
        text.parse().map(Num::Float).map_err(|_| Invalid)
    }

    #[inline]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

fn write_int<H: Hasher>(h: &mut H, v: i128) {
    match i64::try_from(v) {
        Ok(v) => {
            h.write_u8(TAG_INT);
            h.write_u64(v as u64);
        }
        Err(_) => {
            h.write_u8(TAG_INT128);
            h.write(&v.to_le_bytes());
        }
    }
}

fn write_f64<H: Hasher>(h: &mut H, v: f64) {
    // Integral values within ±2^64 hash as integers so that 1.0 == 1 (and -0.0 == 0).
    if v.fract() == 0.0 && v.abs() < 18_446_744_073_709_551_616.0 {
        write_int(h, v as i128);
    } else {
        h.write_u8(TAG_FLOAT);
        h.write_u64(v.to_bits());
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

        /// Writes `v` with object keys in reverse order and spaces everywhere.
        fn reversed(v: &serde_json::Value, out: &mut String) {
            use serde_json::Value;
            match v {
                Value::Array(a) => {
                    out.push_str("[ ");
                    for (i, x) in a.iter().enumerate() {
                        if i > 0 {
                            out.push_str(" , ");
                        }
                        reversed(x, out);
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
                        out.push_str(&serde_json::to_string(k).unwrap());
                        out.push_str(" : ");
                        reversed(x, out);
                    }
                    out.push_str("\r\n}");
                }
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
