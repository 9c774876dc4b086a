//! A message id read from a top-level field of a JSON object (`key = "json_field"`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Extracts the top-level field `name` of a JSON object as a message id: a string, or an
/// integer written without fraction or exponent (within `i128`). Anything else, and a field
/// that appears more than once, is no id.
///
/// The field's value is taken as raw text and read here, never through `deserialize_any`: that
/// way an object can never pass for a number (serde_json's `arbitrary_precision` hands numbers
/// to visitors as a one-entry map that any client can write), whatever features the build
/// enables.
pub(super) fn json_field_id<'a>(json: &'a [u8], name: &str) -> Option<FieldId<'a>> {
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(FindField { name }).ok().flatten()
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum FieldId<'a> {
    Str(Cow<'a, str>),
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
        let mut repeated = false;
        while let Some(is_name) = map.next_key_seed(KeyIs(self.name))? {
            if found.is_none() && is_name {
                found = Some(id_of(map.next_value::<&'de RawValue>()?));
            } else {
                repeated |= is_name;
                map.next_value::<IgnoredAny>()?;
            }
        }
        // The parser insists on reading the object to its end. A repeated id field has no one
        // meaning (JavaScript and serde_json keep the last, other readers the first): no id.
        Ok(if repeated { None } else { found.flatten() })
    }
}

/// The id a field's value denotes, from the value's JSON text (already validated).
fn id_of(raw: &RawValue) -> Option<FieldId<'_>> {
    let text = raw.get();
    match text.as_bytes() {
        [b'"', ..] => serde_json::Deserializer::from_str(text)
            .deserialize_str(StrId)
            .ok(),
        [b'-' | b'0'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => {
            text.parse().ok().map(FieldId::Int)
        }
        _ => None,
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

/// A string id, borrowed from the message unless it has escapes.
struct StrId;

impl<'de> Visitor<'de> for StrId {
    type Value = FieldId<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(FieldId::Str(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(FieldId::Str(v.to_owned().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(doc: &[u8]) -> Option<String> {
        match json_field_id(doc, "id") {
            Some(FieldId::Str(s)) => Some(s.into_owned()),
            Some(FieldId::Int(i)) => Some(format!("#{i}")),
            None => None,
        }
    }

    #[test]
    fn json_field_ids() {
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
        // Two ids: readers disagree on which one counts, so neither does.
        assert_eq!(id(br#"{"id":"a","id":"b"}"#), None);
        assert_eq!(id(br#"{"id":"a","x":1,"id":"a"}"#), None);
    }

    #[test]
    fn ids_are_read_only_from_string_and_integer_tokens() {
        // serde_json's `arbitrary_precision` number token, written by a client, is an object.
        assert_eq!(id(br#"{"id":{"$serde_json::private::Number":"5"}}"#), None);
        assert_eq!(
            id(br#"{"id" : {"$serde_json::private::Number":"5","x":1}}"#),
            None
        );
        assert_eq!(id(br#"{"id" : -5 }"#).as_deref(), Some("#-5"));
        assert_eq!(
            id(br#"{"id":170141183460469231731687303715884105727}"#).as_deref(),
            Some("#170141183460469231731687303715884105727")
        );
        for not_an_id in [&br#"{"id":5.0}"#[..], br#"{"id":5e0}"#, br#"{"id":true}"#] {
            assert_eq!(id(not_an_id), None, "{:?}", not_an_id);
        }
        assert_eq!(
            id(br#"{"id":170141183460469231731687303715884105728}"#),
            None
        );
        // Borrowed when it can be.
        assert!(matches!(
            json_field_id(br#"{"id":"m-1"}"#, "id"),
            Some(FieldId::Str(Cow::Borrowed("m-1")))
        ));
    }
}
