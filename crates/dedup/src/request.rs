//! What [`Dedup`](crate::Dedup) needs to know about a request.

use std::sync::Arc;

/// The view of a request (an HTTP request, a WebSocket message, ...) that
/// [`Dedup`](crate::Dedup) needs to find its deduplication key.
///
/// Which method is used depends on [`DedupConfig`](wsguard_config::DedupConfig):
///
/// | `key` | reads |
/// |---|---|
/// | `fingerprint` (default) | [`payload`](Self::payload) |
/// | `json_field` | [`payload`](Self::payload) (a [`Payload::Text`] holding a JSON object), the top-level field `json_field` |
/// | `header` | [`header`](Self::header)`(header)` |
///
/// With `json_field` or `header` and no id present, the payload is fingerprinted if
/// `fingerprint_when_missing` is on, else the request passes without deduplication.
///
/// The `scope` setting reads [`connection_id`](Self::connection_id) (`connection`) or
/// [`client_id`](Self::client_id) (`client`). A request that has no id for the configured scope
/// is deduplicated in one shared window together with every other request that lacks it (as if
/// the scope were `global`), never in the window of a connection or client that has an id.
///
/// Return `None` from `payload` for anything that must never be deduplicated: control frames
/// (ping, pong, close), empty messages, requests whose body is a stream. An empty payload is
/// treated the same as `None`.
///
/// # Implementing it for a WebSocket message
///
/// ```
/// use wsguard_dedup::{DedupRequest, Payload};
///
/// enum Message { Text(String), Binary(Vec<u8>), Ping(Vec<u8>), Close }
///
/// struct Inbound { message: Message, connection_id: u64, client_id: String }
///
/// impl DedupRequest for Inbound {
///     fn payload(&self) -> Option<Payload<'_>> {
///         match &self.message {
///             Message::Text(text) => Some(Payload::Text(text)),
///             Message::Binary(bytes) => Some(Payload::Binary(bytes)),
///             Message::Ping(_) | Message::Close => None,
///         }
///     }
///     fn connection_id(&self) -> Option<u64> {
///         Some(self.connection_id)
///     }
///     fn client_id(&self) -> Option<&str> {
///         Some(&self.client_id)
///     }
/// }
/// ```
pub trait DedupRequest {
    /// The content to fingerprint or to read a JSON id field from; `None` means "never
    /// deduplicate this one".
    fn payload(&self) -> Option<Payload<'_>>;

    /// The value of the header `name` (lower case), for `key = "header"`. Default: none.
    fn header(&self, name: &str) -> Option<&[u8]> {
        let _ = name;
        None
    }

    /// The connection this request came on, for `scope = "connection"`. Default: none.
    fn connection_id(&self) -> Option<u64> {
        None
    }

    /// The client that sent this request, for `scope = "client"`. Default: none.
    fn client_id(&self) -> Option<&str> {
        None
    }
}

/// A message's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Text: fingerprinted as a JSON value when it parses as JSON (with no repeated key), else as
    /// its bytes, never matching a [`Binary`](Self::Binary) payload of the same bytes; the only
    /// kind a JSON id field is read from.
    Text(&'a str),
    /// Binary: fingerprinted as bytes.
    Binary(&'a [u8]),
}

impl Payload<'_> {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(t) => t.as_bytes(),
            Payload::Binary(b) => b,
        }
    }
}

impl DedupRequest for String {
    fn payload(&self) -> Option<Payload<'_>> {
        Some(Payload::Text(self))
    }
}

impl DedupRequest for &str {
    fn payload(&self) -> Option<Payload<'_>> {
        Some(Payload::Text(self))
    }
}

impl DedupRequest for Vec<u8> {
    fn payload(&self) -> Option<Payload<'_>> {
        Some(Payload::Binary(self))
    }
}

/// The dedup window of a request's connection, as an `http::Request` extension read when
/// `scope = "connection"`: requests carrying the same value share one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionScope(pub u64);

/// The dedup window of a request's client, as an `http::Request` extension read when
/// `scope = "client"`: requests carrying the same value share one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientScope(pub Arc<str>);

/// An HTTP request: the body is a stream and is never read, so `payload` is `None` and only
/// `key = "header"` (for example `Idempotency-Key`) deduplicates HTTP requests. Scope ids come
/// from the [`ConnectionScope`] and [`ClientScope`] extensions, when present.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<B> DedupRequest for http::Request<B> {
    fn payload(&self) -> Option<Payload<'_>> {
        None
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().get(name).map(|v| v.as_bytes())
    }

    fn connection_id(&self) -> Option<u64> {
        self.extensions().get::<ConnectionScope>().map(|c| c.0)
    }

    fn client_id(&self) -> Option<&str> {
        self.extensions().get::<ClientScope>().map(|c| &*c.0)
    }
}
