//! What a session logs: an outbound message.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::protocol::text_to_data;

/// An outbound message: JSON for a text frame's `data`, or the payload of a binary frame.
///
/// Cloning shares the bytes (replay and the log hold the same message).
#[derive(Debug, Clone)]
pub enum MessageData {
    /// A text message as the JSON that goes into `data` (a non-JSON text is a JSON string).
    Json(Arc<RawValue>),
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
        Self::Json(Arc::from(text_to_data(text)))
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
        let raw = serde_json::value::to_raw_value(&value).expect("a Value always serialises");
        Self::Json(Arc::from(raw))
    }
}

/// JSON as it is.
impl From<Box<RawValue>> for MessageData {
    fn from(raw: Box<RawValue>) -> Self {
        Self::Json(Arc::from(raw))
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
