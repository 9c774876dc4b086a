//! Keyed 128-bit content fingerprints.
//!
//! A [`Fingerprinter`] hashes a JSON document as a *value*: key order, whitespace and string
//! escapes do not change the result. It never builds a canonical string and never builds a
//! `serde_json::Value`: a serde visitor feeds the tokens straight into keyed SipHash as the
//! parser produces them. Each object entry is hashed on its own and the entries are combined
//! by wrapping addition, which is order independent, so the result does not depend on serde_json's
//! `preserve_order` feature or on how any map type sorts.
//!
//! Canonical form of the values:
//! - **Numbers** compare by mathematical value where JSON allows it: an integral number within
//!   ±2^64 hashes as that integer, so `1`, `1.0`, `1e0` and `10e-1` are the same, and `-0` equals `0`
//!   (as RFC 8785 and JavaScript see them; Python's `json.dumps` would write `1.0` and `1`
//!   differently). Other numbers hash as their IEEE-754 double, so `0.1` and `0.10` agree.
//! - **Strings** hash as their unescaped UTF-8 text: `"\u0041"` equals `"A"`.
//! - **Objects** with a repeated key hash every occurrence (serde_json's `Value` keeps only the last).
//! - Nesting deeper than [`MAX_DEPTH`] levels, invalid JSON, trailing garbage and non-JSON text
//!   hash as raw bytes (under a different domain tag than any JSON value), so deep nesting can
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

trait SipState: Hasher + Hasher128 + Clone {}
impl<T: Hasher + Hasher128 + Clone> SipState for T {}

fn key_with<H: SipState>(template: &H, scope: Scope<'_>, content: Content<'_>) -> Fingerprint {
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
    match content {
        Content::Text(text) => {
            if looks_like_json(text) {
                let before = h.clone();
                h.write_u8(TAG_JSON);
                if hash_json(&mut h, template, text).is_ok() {
                    return Fingerprint(h.finish128().as_u128());
                }
                h = before;
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

fn write_bytes<H: Hasher>(h: &mut H, bytes: &[u8]) {
    h.write_u64(bytes.len() as u64);
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

fn hash_json<H: SipState>(h: &mut H, template: &H, text: &[u8]) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    HashValue {
        h,
        template,
        depth: 0,
    }
    .deserialize(&mut de)?;
    de.end()
}

fn write_int<H: Hasher>(h: &mut H, v: i128) {
    h.write_u8(TAG_INT);
    h.write(&v.to_le_bytes());
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

fn write_str<H: Hasher>(h: &mut H, s: &str) {
    h.write_u8(TAG_STR);
    write_bytes(h, s.as_bytes());
}

/// Hashes one JSON value into `h` as the parser reads it.
struct HashValue<'a, H> {
    h: &'a mut H,
    template: &'a H,
    depth: u32,
}

impl<'de, H: SipState> DeserializeSeed<'de> for HashValue<'_, H> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, H: SipState> Visitor<'de> for HashValue<'_, H> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.h.write_u8(TAG_NULL);
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.h.write_u8(if v { TAG_TRUE } else { TAG_FALSE });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        write_int(self.h, v.into());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        write_int(self.h, v.into());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        write_f64(self.h, v);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_str(self.h, v);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("nested too deep"));
        }
        self.h.write_u8(TAG_ARRAY);
        let mut len = 0u64;
        while seq
            .next_element_seed(HashValue {
                h: &mut *self.h,
                template: self.template,
                depth,
            })?
            .is_some()
        {
            len += 1;
        }
        // The length ends the array, so `[[1],2]` and `[[1,2]]` differ.
        self.h.write_u64(len);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("nested too deep"));
        }
        let mut sum = 0u128;
        let mut len = 0u64;
        loop {
            let mut entry = self.template.clone();
            entry.write_u8(TAG_ENTRY);
            let Some(is_number_token) = map.next_key_seed(HashKey { h: &mut entry })? else {
                break;
            };
            if is_number_token && len == 0 {
                // `arbitrary_precision` is on somewhere in the build: the value is the number's text.
                let text: std::borrow::Cow<'de, str> = map.next_value()?;
                if map.next_key::<IgnoredAny>()?.is_none() {
                    write_number_text(self.h, &text);
                    return Ok(());
                }
                return Err(de::Error::custom("unexpected entry after a number token"));
            }
            map.next_value_seed(HashValue {
                h: &mut entry,
                template: self.template,
                depth,
            })?;
            sum = sum.wrapping_add(entry.finish128().as_u128());
            len += 1;
        }
        self.h.write_u8(TAG_OBJECT);
        self.h.write_u64(len);
        self.h.write(&sum.to_le_bytes());
        Ok(())
    }
}

fn write_number_text<H: Hasher>(h: &mut H, text: &str) {
    if let Ok(v) = text.parse::<i128>() {
        write_int(h, v);
    } else if let Ok(v) = text.parse::<f64>() {
        write_f64(h, v);
    } else {
        write_str(h, text);
    }
}

/// Hashes an object key into its entry's hasher; answers whether it is serde_json's number token.
struct HashKey<'a, H> {
    h: &'a mut H,
}

impl<'de, H: Hasher> DeserializeSeed<'de> for HashKey<'_, H> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<H: Hasher> Visitor<'_> for HashKey<'_, H> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        write_bytes(self.h, v.as_bytes());
        Ok(v == ARBITRARY_PRECISION_TOKEN)
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
