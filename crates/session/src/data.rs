//! What a session logs: an outbound message.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

/// The text of one JSON value, checked when made, shared by its clones: the `data` of a text
/// message. In one allocation with its reference counts (an `Arc<RawValue>` made from a `&str`
/// takes two: the `Box` serde gives, then the `Arc`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JsonText(Arc<str>);

impl JsonText {
    /// `text` if it is one JSON value (whitespace around it left out), else `None`.
    pub fn new(text: &str) -> Option<Self> {
        let raw: &RawValue = serde_json::from_str(text).ok()?;
        Some(Self::from(raw))
    }

    /// `text` as a JSON string.
    pub fn string(text: &str) -> Self {
        Self(Arc::from(
            serde_json::to_string(text).expect("a string always serialises"),
        ))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JsonText").field(&self.get()).finish()
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl From<&RawValue> for JsonText {
    fn from(raw: &RawValue) -> Self {
        Self(Arc::from(raw.get()))
    }
}

impl From<Box<RawValue>> for JsonText {
    fn from(raw: Box<RawValue>) -> Self {
        Self::from(&*raw)
    }
}

/// A client message's `data` that is one JSON value other than a string, as the bytes of the
/// frame it came in (no copy): what a handler gets for it. A reply of the same text is known to
/// be JSON without reading it again ([`reply`](Self::reply)), as for an echo or a relay.
///
/// ```
/// use bytes::Bytes;
/// use serde_json::value::RawValue;
/// use wsguard_session::CheckedJson;
///
/// let frame = Bytes::from_static(br#"{"type":"msg","id":1,"data":{"a":1}}"#);
/// let text = std::str::from_utf8(&frame).unwrap();
/// let data: &RawValue = serde_json::from_str(&text[28..text.len() - 1]).unwrap();
/// let checked = CheckedJson::within(&frame, data).unwrap();
/// assert_eq!(checked.bytes(), r#"{"a":1}"#.as_bytes());
/// assert_eq!(checked.reply(r#"{"a":1}"#).unwrap().get(), r#"{"a":1}"#);
/// assert!(checked.reply("something else").is_none());
///
/// // Text outside the frame, or a JSON string, is not taken.
/// let elsewhere: &RawValue = serde_json::from_str(r#"{"a":1}"#).unwrap();
/// assert!(CheckedJson::within(&frame, elsewhere).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct CheckedJson(Bytes);

impl CheckedJson {
    /// `data` as a slice of `frame`, when `data` lies within `frame` (it was parsed from it) and
    /// is not a JSON string (whose handler text is its unescaped content, not its JSON).
    pub fn within(frame: &Bytes, data: &RawValue) -> Option<Self> {
        let json = data.get();
        if json.starts_with('"') {
            return None;
        }
        let start = (json.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
        let end = start.checked_add(json.len())?;
        (end <= frame.len()).then(|| Self(frame.slice(start..end)))
    }

    /// The JSON text's bytes, shared with the frame.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// `text` to log, if it is this very JSON text: copied, not read again.
    pub fn reply(&self, text: &str) -> Option<JsonText> {
        (self.0 == text.as_bytes()).then(|| JsonText(Arc::from(text)))
    }
}

/// An outbound message: JSON for a text frame's `data`, or the payload of a binary frame.
///
/// Cloning shares the bytes (replay and the log hold the same message).
#[derive(Debug, Clone)]
pub enum MessageData {
    /// A text message as the JSON that goes into `data` (a non-JSON text is a JSON string).
    Json(JsonText),
    /// A binary message's bytes, sent after the 8-byte `seq`.
    Binary(Bytes),
}

impl MessageData {
    /// Bytes it takes in a log (what `max_bytes` and `max_total_bytes` count).
    pub fn len(&self) -> usize {
        match self {
            Self::Json(json) => json.get().len(),
            Self::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether it takes no bytes (an empty binary message).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for MessageData {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Json(a), Self::Json(b)) => a.get() == b.get(),
            (Self::Binary(a), Self::Binary(b)) => a == b,
            _ => false,
        }
    }
}

/// A text message: itself if it is JSON, else a JSON string.
impl From<&str> for MessageData {
    fn from(text: &str) -> Self {
        Self::Json(JsonText::new(text).unwrap_or_else(|| JsonText::string(text)))
    }
}

/// A text message: itself if it is JSON, else a JSON string.
impl From<String> for MessageData {
    fn from(text: String) -> Self {
        Self::from(text.as_str())
    }
}

/// JSON, encoded once here.
impl From<serde_json::Value> for MessageData {
    fn from(value: serde_json::Value) -> Self {
        Self::Json(JsonText(Arc::from(value.to_string())))
    }
}

/// JSON as it is.
impl From<Box<RawValue>> for MessageData {
    fn from(raw: Box<RawValue>) -> Self {
        Self::Json(raw.into())
    }
}

/// JSON as it is.
impl From<JsonText> for MessageData {
    fn from(json: JsonText) -> Self {
        Self::Json(json)
    }
}

/// A binary message.
impl From<Bytes> for MessageData {
    fn from(bytes: Bytes) -> Self {
        Self::Binary(bytes)
    }
}

/// A binary message.
impl From<Vec<u8>> for MessageData {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Binary(Bytes::from(bytes))
    }
}
