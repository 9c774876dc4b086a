//! What the message service receives: one data message and the connection it came on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Query;
use axum::extract::ws::Message;
use http::request::Parts;
use wsguard_config::{ClientIdSource, ConnectionConfig};

use crate::sender::Sender;

/// A process-unique id of one WebSocket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl ConnectionId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What is known about one connection; shared by every [`Inbound`] of it.
pub struct ConnInfo {
    pub(crate) id: ConnectionId,
    pub(crate) client_id: Arc<str>,
    pub(crate) peer_addr: Option<SocketAddr>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) sender: Sender,
    pub(crate) slot: Arc<wsguard_metrics::ConnectionSlot>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("peer_addr", &self.peer_addr)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl ConnInfo {
    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The client id, taken at the upgrade as `ConnectionConfig::client_id` says: the peer's IP
    /// address, or a header or query parameter named by `client_id_key` (falling back to the
    /// peer's IP address, then `"unknown"`, when it is missing).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The peer's address, when the server runs with
    /// `into_make_service_with_connect_info::<SocketAddr>()`.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The route pattern that accepted the upgrade, such as `/ws`.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The connection's sender: queue messages to the client from anywhere.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The slot holding this connection's metrics registration: made when it opened if the route
    /// was given a registry ([`WsRoute::metrics`](crate::WsRoute::metrics)), else by the first
    /// message through a `MetricsLayer`; the adapter releases it on close.
    pub fn connection_slot(&self) -> &wsguard_metrics::ConnectionSlot {
        &self.slot
    }
}

/// One inbound data message (text or binary; never a control frame) and its connection.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The message as received.
    pub message: Message,
    /// The connection it arrived on.
    pub conn: Arc<ConnInfo>,
}

impl Inbound {
    /// A message on `conn`.
    pub fn new(message: Message, conn: Arc<ConnInfo>) -> Self {
        Self { message, conn }
    }

    /// The text of a text message.
    pub fn text(&self) -> Option<&str> {
        match &self.message {
            Message::Text(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// The payload bytes (the UTF-8 of a text message).
    pub fn payload(&self) -> &[u8] {
        match &self.message {
            Message::Text(text) => text.as_str().as_bytes(),
            Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes) => bytes,
            Message::Close(_) => &[],
        }
    }

    /// The payload size in bytes.
    pub fn len(&self) -> usize {
        self.payload().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.payload().is_empty()
    }

    /// The connection's sender.
    pub fn sender(&self) -> &Sender {
        &self.conn.sender
    }
}

/// Keyed by the connection's client id (`scope = "client"`: every connection of a client
/// shares one limit) or its connection id (`scope = "connection"`); weighed by the payload size.
impl wsguard_rate_limit::RateLimitRequest for Inbound {
    fn client_id(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.conn.client_id()))
    }

    fn connection_id(&self) -> Option<u64> {
        Some(self.conn.id().get())
    }

    fn size(&self) -> Option<u64> {
        u64::try_from(self.len()).ok()
    }
}

pub(crate) fn client_id(
    config: &ConnectionConfig,
    parts: &Parts,
    peer: Option<SocketAddr>,
) -> String {
    let named = match config.client_id {
        ClientIdSource::PeerAddr => None,
        ClientIdSource::Header => parts
            .headers
            .get(config.client_id_key.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ClientIdSource::Query => Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|Query(mut q)| q.remove(&config.client_id_key)),
        // The upgrade handler refuses a request without one before it gets here.
        ClientIdSource::Authenticated => parts
            .extensions
            .get::<crate::ClientIdentity>()
            .map(|id| id.as_str().to_owned()),
    };
    named
        .filter(|id| !id.is_empty())
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, header: Option<(&str, &str)>) -> Parts {
        let mut req = http::Request::builder().uri(uri);
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn client_id_comes_from_the_configured_source() {
        let peer: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let mut config = ConnectionConfig::testing();
        config.client_id_key = "cid".to_owned();

        config.client_id = ClientIdSource::PeerAddr;
        assert_eq!(
            client_id(&config, &parts("/ws", None), Some(peer)),
            "10.1.2.3"
        );

        config.client_id = ClientIdSource::Header;
        let with_header = parts("/ws", Some(("cid", "alice")));
        assert_eq!(client_id(&config, &with_header, Some(peer)), "alice");
        assert_eq!(
            client_id(&config, &parts("/ws", None), Some(peer)),
            "10.1.2.3"
        );

        config.client_id = ClientIdSource::Query;
        let with_query = parts("/ws?x=1&cid=bob%20b", None);
        assert_eq!(client_id(&config, &with_query, None), "bob b");
        assert_eq!(client_id(&config, &parts("/ws", None), None), "unknown");
    }

    #[test]
    fn rate_limits_key_on_the_connection_and_weigh_the_payload() {
        use wsguard_rate_limit::RateLimitRequest;

        let conn = Arc::new(ConnInfo {
            id: ConnectionId::next(),
            client_id: Arc::from("alice"),
            peer_addr: None,
            route: None,
            sender: Sender::with_limits(1, 1024, wsguard_config::OverflowPolicy::DropNewest, None),
            slot: Arc::default(),
        });
        let inbound = Inbound::new(Message::text("héllo"), conn.clone());
        assert_eq!(inbound.client_id().as_deref(), Some("alice"));
        assert_eq!(inbound.connection_id(), Some(conn.id().get()));
        assert_eq!(inbound.size(), Some(6));
        let binary = Inbound::new(Message::binary(vec![0u8; 3]), conn);
        assert_eq!(binary.size(), Some(3));
    }
}
