//! What the metrics layer learns from a request: [`ClientRequest`].

use std::borrow::Cow;

use crate::ConnectionSlot;

/// Longest client id kept, in bytes; longer ids are cut (at a character boundary) so that a
/// client cannot grow the table's memory with a huge header.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// A request the metrics layer can attribute to a client.
///
/// `wsguard-axum` implements it for its per-message request type; this crate implements it for
/// `http::Request<B>` (feature `http`, on by default).
///
/// - [`client_id`](Self::client_id) names the client for per-client detail. It is asked only on
///   sampled calls (and once per connection slot), so it may allocate.
/// - [`size`](Self::size) is the payload size in bytes, if known; it feeds the exact byte
///   counters.
/// - [`connection_slot`](Self::connection_slot) lets a long-lived connection register itself:
///   the first call carrying a slot registers the connection with the layer's registry (as
///   [`MetricsRegistry::connect`](crate::MetricsRegistry::connect) does) and keeps the guard in
///   the slot; the connection's owner calls [`ConnectionSlot::release`] (or drops the slot) when
///   it closes.
pub trait ClientRequest {
    /// The client this request comes from, if known.
    fn client_id(&self, options: &ClientIdOptions) -> Option<Cow<'_, str>>;

    /// The size of the request's payload in bytes, if known.
    fn size(&self) -> Option<u64> {
        None
    }

    /// The slot of the long-lived connection this request arrived on, if any.
    fn connection_slot(&self) -> Option<&ConnectionSlot> {
        None
    }
}

/// Settings a [`ClientRequest`] may use to find the client id, set on the
/// [`MetricsLayer`](crate::MetricsLayer).
#[derive(Debug, Clone)]
pub struct ClientIdOptions {
    #[cfg(feature = "http")]
    header: http::HeaderName,
}

impl ClientIdOptions {
    /// The HTTP header naming the client, `x-client-id` unless set with
    /// [`MetricsLayer::client_id_header`](crate::MetricsLayer::client_id_header).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    #[cfg(feature = "http")]
    pub(crate) fn set_header(&mut self, header: http::HeaderName) {
        self.header = header;
    }
}

#[allow(clippy::derivable_impls)] // not derivable with the `http` feature on
impl Default for ClientIdOptions {
    fn default() -> Self {
        Self {
            #[cfg(feature = "http")]
            header: http::HeaderName::from_static("x-client-id"),
        }
    }
}

/// Cuts `id` to at most [`MAX_CLIENT_ID_LEN`] bytes, at a character boundary.
pub(crate) fn bounded_id(id: &str) -> &str {
    if id.len() <= MAX_CLIENT_ID_LEN {
        return id;
    }
    let mut end = MAX_CLIENT_ID_LEN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// Client id from a header, else the peer address; size from `Content-Length`, else the body's
/// exact size hint.
///
/// - The header is `x-client-id` unless changed with
///   [`MetricsLayer::client_id_header`](crate::MetricsLayer::client_id_header); an empty or
///   non-UTF-8 value is ignored.
/// - The peer address is read from a plain [`std::net::SocketAddr`] request extension, and its
///   IP (without the port, so that one host's connections count as one client) is the id. This
///   crate does not depend on axum, so it cannot read axum's `ConnectInfo<SocketAddr>`; copy it
///   into a plain extension with a small middleware:
///
/// ```
/// use std::net::SocketAddr;
/// use axum::{Router, extract::{ConnectInfo, Request}, middleware, routing::get};
/// use wsguard_metrics::{MetricsLayer, MetricsRegistry};
/// use wsguard_config::MetricsConfig;
///
/// async fn peer_addr(ConnectInfo(addr): ConnectInfo<SocketAddr>, mut req: Request) -> Request {
///     req.extensions_mut().insert(addr);
///     req
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let registry = MetricsRegistry::new(MetricsConfig::default());
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hi" }))
///     // Layers run bottom-up: `peer_addr` sets the extension before metrics read it.
///     .layer(MetricsLayer::new(registry.clone()).route("/"))
///     .layer(middleware::map_request(peer_addr));
/// // Serve with `app.into_make_service_with_connect_info::<SocketAddr>()`.
/// # let _ = app;
/// # }
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<B> ClientRequest for http::Request<B>
where
    B: http_body::Body,
{
    fn client_id(&self, options: &ClientIdOptions) -> Option<Cow<'_, str>> {
        if let Some(v) = self.headers().get(&options.header)
            && let Ok(s) = v.to_str()
            && !s.is_empty()
        {
            return Some(Cow::Borrowed(s));
        }
        self.extensions()
            .get::<std::net::SocketAddr>()
            .map(|addr| Cow::Owned(addr.ip().to_string()))
    }

    fn size(&self) -> Option<u64> {
        self.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or_else(|| self.body().size_hint().exact())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_are_cut_at_a_char_boundary() {
        let id = "é".repeat(100);
        let cut = bounded_id(&id);
        assert!(cut.len() <= MAX_CLIENT_ID_LEN);
        assert_eq!(cut.len(), 128);
        assert_eq!(bounded_id("short"), "short");
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_request_id_from_header_then_peer_ip() {
        let opts = ClientIdOptions::default();
        let req = http::Request::builder()
            .header("x-client-id", "alice")
            .body(String::from("hello"))
            .unwrap();
        assert_eq!(req.client_id(&opts).as_deref(), Some("alice"));
        assert_eq!(req.size(), Some(5));

        let mut req = http::Request::new(String::new());
        assert_eq!(req.client_id(&opts), None);
        req.extensions_mut()
            .insert("10.1.2.3:4567".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(req.client_id(&opts).as_deref(), Some("10.1.2.3"));

        let mut opts = ClientIdOptions::default();
        opts.set_header(http::HeaderName::from_static("x-user"));
        let req = http::Request::builder()
            .header("x-user", "bob")
            .header("content-length", "42")
            .body(String::new())
            .unwrap();
        assert_eq!(req.client_id(&opts).as_deref(), Some("bob"));
        assert_eq!(req.size(), Some(42));
    }
}
