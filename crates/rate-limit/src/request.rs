//! What the rate-limit layer learns from a request: [`RateLimitRequest`].

use std::borrow::Cow;

/// A request the rate-limit layer can key and weigh.
///
/// A WebSocket adapter implements it for its per-message request type (the client id and
/// connection id of the connection the message came on, the payload size); this crate implements
/// it for
/// `http::Request<B>` (feature `http`, on by default) and for plain payloads (`String`, `&str`,
/// `Vec<u8>`: a size and no ids).
///
/// Which id is read depends on `rate_limit.scope`: [`client_id`](Self::client_id) for `client`,
/// [`connection_id`](Self::connection_id) for `connection`, neither for `global`. A request that
/// has no id for the configured scope is limited in one shared bucket together with every other
/// request that lacks it (as if the scope were `global`), never in the bucket of a client or
/// connection that has one.
///
/// ```
/// use std::borrow::Cow;
/// use wsguard_rate_limit::RateLimitRequest;
///
/// struct Inbound { text: String, connection_id: u64, client_id: String }
///
/// impl RateLimitRequest for Inbound {
///     fn client_id(&self) -> Option<Cow<'_, str>> {
///         Some(Cow::Borrowed(&self.client_id))
///     }
///     fn connection_id(&self) -> Option<u64> {
///         Some(self.connection_id)
///     }
///     fn size(&self) -> Option<u64> {
///         Some(self.text.len() as u64)
///     }
/// }
/// ```
pub trait RateLimitRequest {
    /// The client this request comes from, for `scope = "client"`. Default: none.
    fn client_id(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// The connection this request came on, for `scope = "connection"`. Default: none.
    fn connection_id(&self) -> Option<u64> {
        None
    }

    /// The payload size in bytes, weighed against the byte limit; `None` (or 0) passes the byte
    /// limit unweighed. Default: none.
    fn size(&self) -> Option<u64> {
        None
    }
}

impl RateLimitRequest for String {
    fn size(&self) -> Option<u64> {
        u64::try_from(self.len()).ok()
    }
}

impl RateLimitRequest for &str {
    fn size(&self) -> Option<u64> {
        u64::try_from(self.len()).ok()
    }
}

impl RateLimitRequest for Vec<u8> {
    fn size(&self) -> Option<u64> {
        u64::try_from(self.len()).ok()
    }
}

/// Client id from the peer address, size from `Content-Length` (else the body's exact size
/// hint); no connection id, so `scope = "connection"` puts every HTTP request in one bucket.
///
/// The peer address is read from a plain [`std::net::SocketAddr`] request extension, and its IP
/// (without the port, so that one host's connections count as one client) is the id: a header
/// would be chosen by the client, which could then take a fresh limit with every request. This
/// crate does not depend on axum, so it cannot read axum's `ConnectInfo<SocketAddr>`; copy it
/// into a plain extension with a small middleware, as for `wsguard-metrics`:
///
/// ```
/// use std::net::SocketAddr;
/// use axum::{Router, extract::{ConnectInfo, Request}, middleware, routing::get};
/// use wsguard_config::RateLimitConfig;
/// use wsguard_rate_limit::RateLimitLayer;
///
/// async fn peer_addr(ConnectInfo(addr): ConnectInfo<SocketAddr>, mut req: Request) -> Request {
///     req.extensions_mut().insert(addr);
///     req
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hi" }))
///     // Layers run bottom-up: `peer_addr` sets the extension before the limit reads it.
///     .layer(RateLimitLayer::http(RateLimitConfig::default()))
///     .layer(middleware::map_request(peer_addr));
/// // Serve with `app.into_make_service_with_connect_info::<SocketAddr>()`.
/// # let _ = app;
/// # }
/// ```
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl<B> RateLimitRequest for http::Request<B>
where
    B: http_body::Body,
{
    fn client_id(&self) -> Option<Cow<'_, str>> {
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

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    #[test]
    fn http_request_is_keyed_by_peer_ip_and_weighed_by_its_length() {
        let mut req = http::Request::builder()
            .header("x-client-id", "chosen-by-the-client")
            .header("content-length", "42")
            .body(String::new())
            .unwrap();
        assert_eq!(req.client_id(), None, "a header is not an identity");
        assert_eq!(req.size(), Some(42));
        req.extensions_mut()
            .insert("10.1.2.3:4567".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(req.client_id().as_deref(), Some("10.1.2.3"));
        assert_eq!(req.connection_id(), None);
        assert_eq!(http::Request::new(String::from("hello")).size(), Some(5));
    }
}
