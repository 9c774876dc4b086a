//! Keyed 128-bit content fingerprints.
//!
//! A [`Fingerprinter`] hashes a JSON document as a *value*: key order, whitespace and string
//! escapes do not change the result. It never builds a canonical string, a `serde_json::Value` or
//! any other tree: a single-pass reader validates the JSON and feeds a canonical encoding of each
//! token, as whole 64-bit words, straight into keyed SipHash-128. The result depends on no map
//! type's ordering and on no serde_json feature (`preserve_order`, `arbitrary_precision`) enabled
//! anywhere in the build.
//!
//! Canonical form of the values (two texts are the same message exactly when they denote the
//! same JSON value):
//! - **Numbers** compare by exact decimal value, never through a double: a number is its sign,
//!   its digits without leading or trailing zeros, and its exponent (`fingerprint/number.rs`),
//!   so `1`, `1.0`, `1e0`, `10e-1` and `0.10e1` are the same, `-0` equals `0`, and
//!   `9007199254740993.0`, `1e400` or `1e-400` are each told from every other number. An
//!   exponent written with more than 18 digits (leading zeros aside) is not read: the document
//!   hashes as bytes.
//! - **Strings** hash as their unescaped bytes: `"\u0041"` equals `"A"` (no Unicode normalisation).
//! - **Objects** of up to 16 entries hash their entries sorted by key; larger objects hash each
//!   entry on its own and add the entry hashes, which is order independent. An object or array
//!   that is the value of an entry hashes as its own keyed 128-bit hash, so the reader never
//!   parses any part of the input twice.
//! - A document with a **repeated key** in any of its objects hashes as bytes: readers disagree
//!   on what it means (JavaScript, Python and serde_json keep the last value; other readers keep
//!   the first or reject the document), so only the same text is the same message.
//! - Nesting deeper than [`MAX_DEPTH`] levels (the reader recurses once per level, so the stack
//!   stays small), invalid JSON, trailing garbage and non-JSON text hash as bytes too.
//!
//! Text hashed as bytes has a domain tag of its own, distinct from any JSON value and from a
//! binary message ([`Fingerprinter::fingerprint_bytes`]): a text frame and a binary frame are
//! never the same message, whatever their bytes.
//!
//! The sources follow these concepts: the word encoding in `fingerprint/encoding.rs`, the
//! reader in `fingerprint/reader.rs` (strings in `reader/string.rs`), numbers in
//! `fingerprint/number.rs`, the word-fed SipHash in `fingerprint/sip.rs`.

mod encoding;
mod number;
mod reader;
mod sip;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::OnceLock;

use wsguard_config::DedupConfig;

use encoding::{
    TAG_BYTES, TAG_ID_INT, TAG_ID_STR, TAG_JSON, TAG_SCOPE_CLIENT, TAG_SCOPE_CONNECTION,
    TAG_SCOPE_GLOBAL, TAG_TEXT, put_bytes,
};
use reader::{hash_json, looks_like_json};
use sip::Sip;

/// Deepest JSON nesting hashed as a value; deeper documents are hashed as bytes.
pub const MAX_DEPTH: u32 = 64;

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
/// // Numbers compare by exact value, not as doubles.
/// assert_ne!(
///     fp.fingerprint_json(b"[9007199254740993.0]"),
///     fp.fingerprint_json(b"[9007199254740992]"),
/// );
/// // Not JSON: hashed as text bytes, never equal to a binary message.
/// assert_ne!(fp.fingerprint_json(b"hello"), fp.fingerprint_bytes(b"hello"));
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

    /// Fingerprint of a text message: a JSON document compared as a value (see the [module
    /// docs](self) for the canonical form); other text, and JSON with a repeated key, as its
    /// bytes, never equal to [`fingerprint_bytes`](Self::fingerprint_bytes) of the same bytes.
    pub fn fingerprint_json(&self, json: &[u8]) -> Fingerprint {
        self.key(Scope::Unscoped, Content::Text(json))
    }

    /// Fingerprint of a binary message: its raw bytes.
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
    /// A text message: JSON if it parses (with no repeated key), else its bytes as text.
    Text(&'a [u8]),
    /// A binary message.
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
            put_bytes(&mut h, TAG_TEXT, text);
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
