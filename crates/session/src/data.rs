//! What a session logs: an outbound message.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use serde_json::value::RawValue;

use crate::protocol::{WireFrame, encode_binary, msg_frame};

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
/// use serde_json::value::RawValue;
/// use wsguard_session::CheckedJson;
///
/// // What a frame reader gives: its result (none here) and the `data` it found.
/// fn data_of(text: &str) -> ((), Option<&RawValue>) {
///     ((), serde_json::from_str(&text[28..text.len() - 1]).ok())
/// }
///
/// let frame = String::from(r#"{"type":"msg","id":1,"data":{"a":1}}"#);
/// let ((), checked) = CheckedJson::split(frame, data_of);
/// let checked = checked.unwrap();
/// assert_eq!(checked.bytes(), r#"{"a":1}"#.as_bytes());
/// assert_eq!(checked.reply(r#"{"a":1}"#).unwrap().get(), r#"{"a":1}"#);
/// assert!(checked.reply("something else").is_none());
///
/// // A JSON string is not taken: its handler text is its unescaped content.
/// let frame = String::from(r#"{"type":"msg","id":2,"data":"hi"}"#);
/// assert!(CheckedJson::split(frame, data_of).1.is_none());
/// ```
#[derive(Debug, Clone)]
pub struct CheckedJson(Bytes);

impl CheckedJson {
    /// Reads `frame` with `read`, which gives its result and the `data` it found in the text;
    /// returns that result, and the `data` cut from `frame` itself (no copy, and no count taken
    /// on its buffer) when it lies within the text `read` was given and is not a JSON string.
    pub fn split<F, T>(
        frame: F,
        read: impl for<'a> FnOnce(&'a str) -> (T, Option<&'a RawValue>),
    ) -> (T, Option<Self>)
    where
        F: std::ops::Deref<Target = str> + Into<Bytes>,
    {
        let text: &str = &frame;
        let whole = (text.as_ptr(), text.len());
        let (value, data) = read(text);
        let range = data.and_then(|data| span(text.as_bytes(), data));
        let checked = range.and_then(|range| {
            let mut bytes: Bytes = frame.into();
            // The very bytes `read` was given, or nothing is taken.
            if (bytes.as_ptr(), bytes.len()) != whole {
                return None;
            }
            bytes.truncate(range.end);
            bytes.advance(range.start);
            Some(Self(bytes))
        });
        (value, checked)
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

/// Where `data` lies in `frame`, if it does and is not a JSON string.
fn span(frame: &[u8], data: &RawValue) -> Option<Range<usize>> {
    let json = data.get();
    if json.starts_with('"') {
        return None;
    }
    let start = (json.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
    let end = start.checked_add(json.len())?;
    (end <= frame.len()).then_some(start..end)
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

    /// The WebSocket frame that carries it as message `seq`: `{"type":"msg","seq":N,"data":V}`,
    /// or a binary frame starting with the big-endian `seq`.
    pub fn to_wire(&self, seq: u64) -> WireFrame {
        match self {
            Self::Json(data) => WireFrame::Text(msg_frame(seq, data.get())),
            Self::Binary(bytes) => WireFrame::Binary(encode_binary(seq, bytes)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose text and bytes are not the same buffer.
    struct Mismatched(&'static str);

    impl std::ops::Deref for Mismatched {
        type Target = str;
        fn deref(&self) -> &str {
            self.0
        }
    }

    impl From<Mismatched> for Bytes {
        fn from(frame: Mismatched) -> Bytes {
            Bytes::copy_from_slice(frame.0.as_bytes())
        }
    }

    fn data_of(text: &str) -> (u8, Option<&RawValue>) {
        let start = text.find(":").unwrap() + 1;
        (1, serde_json::from_str(&text[start..text.len() - 1]).ok())
    }

    #[test]
    fn split_cuts_data_from_the_frame_it_read_only() {
        let (_, checked) = CheckedJson::split(String::from(r#"{"data":{"a":[1]}}"#), data_of);
        assert_eq!(checked.unwrap().bytes().as_ref(), br#"{"a":[1]}"#);
        // A string's JSON is not the handler's text: not taken.
        let (_, checked) = CheckedJson::split(String::from(r#"{"data":"a"}"#), data_of);
        assert!(checked.is_none());
        // Nothing found, nothing taken.
        let (_, checked) = CheckedJson::split(String::from(r#"{"data":[}"#), data_of);
        assert!(checked.is_none());
        // Bytes other than the text read are never taken for it.
        let (value, checked) = CheckedJson::split(Mismatched(r#"{"data":[2]}"#), data_of);
        assert_eq!(value, 1);
        assert!(checked.is_none());
    }
}
