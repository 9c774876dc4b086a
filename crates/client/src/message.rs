use bytes::Bytes;
use serde_json::value::RawValue;
use wsguard_session::protocol::{data_to_text, text_to_data};

/// A message of the application, either way.
///
/// Text travels as the frame's `data`: text that is JSON as itself, any other text as a JSON
/// string (the server's handlers see the text unchanged). Binary travels in a binary frame behind
/// its 8-byte number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// A binary message.
    pub fn binary(payload: impl Into<Bytes>) -> Self {
        Self::Binary(payload.into())
    }

    /// The text, if it is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            Self::Binary(_) => None,
        }
    }

    pub(crate) fn from_data(data: &RawValue) -> Self {
        Self::Text(data_to_text(data))
    }

    pub(crate) fn to_data(text: &str) -> Box<RawValue> {
        text_to_data(text)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<Bytes> for Message {
    fn from(payload: Bytes) -> Self {
        Self::Binary(payload)
    }
}

impl From<Vec<u8>> for Message {
    fn from(payload: Vec<u8>) -> Self {
        Self::Binary(payload.into())
    }
}
