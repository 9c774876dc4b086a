use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens when a connection's send queue is full (the client reads too slowly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Drop the message being sent.
    DropNewest,
    /// Drop the oldest queued message to make room.
    DropOldest,
    /// Close the connection with `1008 Policy Violation`.
    Close,
}

/// Where a connection's client id comes from.
///
/// A header or query parameter is chosen by the client, so any client can claim another's id
/// unless something it cannot bypass sets or checks the value (see
/// [`ConnectionConfig::client_id_trusted`]). The peer address cannot be forged over TCP, but is
/// shared by every client behind one NAT or proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIdSource {
    /// The peer's IP address. A client cannot forge it over TCP, but every client behind one NAT
    /// or proxy shares it (behind a reverse proxy, all clients are the proxy).
    PeerAddr,
    /// The upgrade request's header named by `client_id_key`. Chosen by the client: forgeable
    /// unless a proxy overwrites the header or the application's authentication checks it.
    Header,
    /// The upgrade request's query parameter named by `client_id_key`. Chosen by the client:
    /// forgeable unless the application's authentication checks it.
    Query,
    /// The identity the application's own authentication put on the upgrade request (in
    /// `wsguard-axum`, a `ClientIdentity` request extension written by a middleware or
    /// extractor that checked a token). Trusted: the client cannot choose it. An upgrade without
    /// one is refused `401` before the upgrade.
    Authenticated,
}

/// What a WebSocket client hears when an open breaker rejects its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionAction {
    /// A JSON error frame; the connection stays open.
    ErrorFrame,
    /// Close the connection with `1013 Try Again Later`.
    Close,
}

/// Settings of WebSocket connections (used by `wsguard-axum`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Most connections open at once; further upgrades get `503`.
    pub max_connections: usize,
    /// Most connections one client (by `client_id`) may have open at once on a route; its
    /// further upgrades get `429 Too Many Requests` with `Retry-After`. `0`: no limit. Limits
    /// the tabs a client opens to multiply its per-connection limits; meaningful with an
    /// identity the client cannot choose (`authenticated`, `peer_addr`), since a client-chosen
    /// one can be changed at each upgrade.
    pub max_connections_per_client: usize,
    /// Largest message accepted, in bytes; larger ones close the connection with `1009`.
    pub max_message_size: usize,
    /// A connection that has received nothing (not even a pong) for this long is closed.
    #[serde(with = "crate::duration")]
    pub idle_timeout: Duration,
    /// How often the server pings an otherwise quiet client.
    #[serde(with = "crate::duration")]
    pub ping_interval: Duration,
    /// Outbound messages queued per connection before `overflow` applies.
    pub send_queue_capacity: usize,
    /// Outbound bytes (payloads) queued per connection before `overflow` applies. It also caps
    /// the socket's write buffer beyond `write_buffer_size` (tungstenite's
    /// `max_write_buffer_size`), so a client that never reads holds at most about twice this.
    pub send_queue_bytes: usize,
    /// What happens when the send queue is full.
    pub overflow: OverflowPolicy,
    /// Inbound messages of one connection handled at once (replies still go out in order).
    pub message_concurrency: usize,
    /// Read buffer per connection, in bytes (tungstenite's default is 128 KiB).
    pub read_buffer_size: usize,
    /// Write buffer per connection, in bytes, before a flush is forced. A `wsguard.v1` session's
    /// connection has about 1.5 KiB more, the framing of a batch of 32 `msg` frames, so that a
    /// batch of small messages goes out in one write with a session as without.
    pub write_buffer_size: usize,
    /// Pings a client may send while the server cannot write their pongs (the client does not
    /// read); one more closes the connection with `1008 Policy Violation`.
    pub max_pending_pongs: usize,
    /// Longest wait for the close handshake when the server closes: its close frame out (a
    /// client that does not read may take that long to get it), the client's back.
    #[serde(with = "crate::duration")]
    pub close_timeout: Duration,
    /// Where the client id comes from.
    pub client_id: ClientIdSource,
    /// Header or query parameter name for `client_id = "header"` or `"query"`.
    pub client_id_key: String,
    /// Whether a `"header"` or `"query"` client id can be trusted. Set it only when the value is
    /// set or verified by something the client cannot bypass: the application's own
    /// authentication layer, a proxy that overwrites the header. Unset, `dedup.scope = "client"`
    /// is refused with those sources, since any client could claim another's id and suppress its
    /// messages.
    pub client_id_trusted: bool,
    /// What a client hears when an open breaker rejects its message.
    pub on_rejection: RejectionAction,
}

impl ConnectionConfig {
    /// Production settings: 10 000 connections, 64 KiB messages, 60 s idle timeout.
    pub fn production() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_client: 0,
            max_message_size: 64 * 1024,
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            send_queue_capacity: 256,
            send_queue_bytes: 256 * 1024,
            overflow: OverflowPolicy::Close,
            message_concurrency: 1,
            read_buffer_size: 4096,
            write_buffer_size: 4096,
            max_pending_pongs: 64,
            close_timeout: Duration::from_secs(5),
            client_id: ClientIdSource::PeerAddr,
            client_id_key: "x-client-id".to_owned(),
            client_id_trusted: false,
            on_rejection: RejectionAction::ErrorFrame,
        }
    }

    /// Development settings: fewer connections, longer idle timeout.
    pub fn development() -> Self {
        Self {
            max_connections: 1_000,
            idle_timeout: Duration::from_secs(120),
            ping_interval: Duration::from_secs(30),
            ..Self::production()
        }
    }

    /// Testing settings: short idle timeout and small queues.
    pub fn testing() -> Self {
        Self {
            max_connections: 100,
            idle_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            send_queue_capacity: 16,
            ..Self::production()
        }
    }
}

impl Default for ConnectionConfig {
    /// Same as [`ConnectionConfig::production`].
    fn default() -> Self {
        Self::production()
    }
}
