//! Run tower middleware on every WebSocket message of an axum route.
//!
//! Layers on an axum route see only the HTTP upgrade. `wsguard-axum` turns the upgraded socket
//! into calls of a `tower::Service<Inbound>`: one call per text or binary message, answered with
//! zero or one reply, so the wsguard layers (or any tower layer) run on each message. The
//! per-message stack is one `ServiceBuilder` expression and the route two lines:
//!
//! ```
//! use axum::Router;
//! use tower::ServiceBuilder;
//! use wsguard_axum::{BoxError, Inbound, Message, MessageClassifier, WsRoute};
//! use wsguard_circuit_breaker::CircuitBreakerLayer;
//! use wsguard_config::{ConfigHandle, StabilityConfig};
//! use wsguard_dedup::DedupLayer;
//! use wsguard_metrics::{MetricsLayer, MetricsRegistry};
//!
//! async fn echo(request: Inbound) -> Result<Option<Message>, BoxError> {
//!     Ok(Some(request.message))
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Live-reloadable: `config.update(..)` or `config.watch_file(..)` apply without a restart.
//! let config = ConfigHandle::new(StabilityConfig::development())?;
//! let registry = MetricsRegistry::new(&config);
//!
//! let stack = ServiceBuilder::new()
//!     .layer(MetricsLayer::new(registry.clone()).route("/ws").classifier(MessageClassifier))
//!     .layer(DedupLayer::new(&config).classifier(MessageClassifier))
//!     .layer(CircuitBreakerLayer::new(&config).classifier(MessageClassifier))
//!     .service_fn(echo);
//!
//! // Given the registry, the route counts idle connections from the moment they open.
//! let route = WsRoute::new(stack, &config).metrics(registry);
//! let app: Router = Router::new().route("/ws", route.into_method_router());
//! // axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! Put the dedup layer outside the breaker, so duplicates never count for the breaker, and the
//! metrics layer outermost, so it sees rejections and duplicates (as `rejected` and `duplicate`
//! through [`MessageClassifier`]).
//!
//! # Behaviour
//!
//! - [`Inbound`] carries the message and an `Arc` of the connection's [`ConnInfo`]: id, client id
//!   (peer IP, header or query parameter, per `ConnectionConfig::client_id`), peer address,
//!   route, sender. It implements the layers' request traits (`DedupRequest`, `ClientRequest`).
//! - Messages of one connection are handled in order; `message_concurrency > 1` lets that many
//!   run at once, with replies still sent in order.
//! - Replies and [`Sender`] sends go through a queue bounded in messages
//!   (`send_queue_capacity`) and payload bytes (`send_queue_bytes`), whose overflow policy drops
//!   the newest, drops the oldest, or closes with `1008`; dropped messages are counted per route
//!   ([`ConnectionStats::send_dropped`]) and, with a `MetricsLayer`, per route and per client
//!   in its registry and in `wsguard_send_dropped_total`. Queued messages are written together
//!   and flushed once. `Sender` is a `tower::Service<Message>`; for layers on the sending side,
//!   wrap [`SendToConnection`] (a `Service<`[`OutgoingMessage`]`>`, which carries the connection so that
//!   dedup can suppress re-sends and metrics count them per client).
//! - Ping/pong, the close handshake and frame assembly stay tungstenite's; the service never sees
//!   a control frame. The server pings a quiet client every `ping_interval` and closes with
//!   `1001` after `idle_timeout` of silence.
//! - Memory per connection is bounded whatever the client sends or fails to read: the socket's
//!   write buffer is capped (`write_buffer_size + send_queue_bytes`), and a client that keeps
//!   pinging while its pongs cannot be written (more than `max_pending_pongs`) is closed with
//!   `1008`, as is one whose write buffer fills ([`ConnectionStats::closed_slow_reader`]).
//! - A message over `max_message_size` closes with `1009`; a frame that breaks RFC 6455 with
//!   `1002`, a text message that is not UTF-8 with `1007` (sent by the server and logged as a
//!   server close, [`ConnectionStats::closed_protocol_error`]); a panicking service closes that
//!   connection with `1011` and nothing else; past `max_connections`, upgrades get `503`.
//! - When the server closes, the client has `close_timeout` to take what is ahead of the close
//!   frame and the frame; after it the TCP connection is dropped
//!   ([`ConnectionStats::close_timeouts`]).
//! - An open breaker's rejection becomes a JSON error frame
//!   (`{"type":"error","error":"circuit_open","retry_after_ms":..}`) or a `1013` close, per
//!   `connection.on_rejection`; a duplicate is dropped or acknowledged
//!   (`{"type":"duplicate","age_ms":..}`) per `dedup.on_duplicate`; a dedup store that fails
//!   closed answers `{"type":"error","error":"unavailable"}`; any other error becomes
//!   `{"type":"error","error":"handler_error"}` and the connection stays open.
//! - With [`WsRoute::metrics`] each connection registers with that registry when it opens (no
//!   message needed, no readiness reserved) and is released on close, so idle connections are
//!   counted and per-client state goes with the last connection. Without it a `MetricsLayer` in
//!   the stack registers the connection on its first message.
//! - Every close is logged through `tracing` with its code and reason. Warnings a client can
//!   cause (refused upgrades, closes for misbehaviour, handler errors) pass at most 10 a second
//!   per kind; the next one written carries `suppressed = N`, and [`suppressed_warnings`] counts
//!   them all.
//! - [`serve()`] serves a router (HTTP/1) with what `axum::serve` lacks against clients that
//!   never finish their request: a header-read timeout (10 s) and a bound on connections that
//!   have not sent their request head (1,024); past it a new connection is closed at once. On its
//!   shutdown signal it [drains](Drain) the WebSockets, which `axum::serve` does not see: upgrades
//!   get `503`, each connection finishes its calls, writes its queue and closes with `1001` and a
//!   reconnect delay, within a drain timeout.
//! - Read and write buffers come from `read_buffer_size` and `write_buffer_size` (4 KiB by
//!   default instead of tungstenite's 128 KiB), which keeps idle connections cheap.
//! - A client that offers the `wsguard.v1` subprotocol, on a route whose `session.enabled` is
//!   on, gets a session (specified in `docs/protocol.md`): it opens or resumes one with its first
//!   frame, every message to it is logged in the session, numbered and replayed after a
//!   reconnect until it acknowledges it, and every message from it runs the service once, however
//!   often it is resent. The service sees the same plain [`Inbound`] messages as without a
//!   session. Under a session the connection's [`Sender`] (replies included) logs its text and
//!   binary messages instead of queueing them, with no overflow policy: a client that does not
//!   read is closed with `1008` once the log has dropped what it did not get, and its resume says
//!   how many were lost. Error frames are not logged and carry the message's `"id"`. The route's
//!   registry ([`WsRoute::sessions`]) sends to a client or session whether or not it is
//!   connected, and counts sessions ([`SessionStats`]). Clients that do not offer the
//!   subprotocol get plain WebSocket, unchanged.

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod close;
mod config;
mod connection;
pub mod drain;
mod identity;
mod inbound;
mod layers;
mod outgoing;
mod reply;
mod route;
mod sender;
pub mod serve;
mod to_session;
mod warn_limit;

pub use axum::extract::ws::Message;

pub use self::{
    config::WsConfig,
    drain::{Drain, DrainReport},
    identity::ClientIdentity,
    inbound::{ConnInfo, ConnectionId, Inbound},
    layers::MessageClassifier,
    outgoing::{OutgoingMessage, SendToConnection},
    route::{ConnectionStats, WsRoute, ws_route},
    sender::{ConnectionClosed, SendStatus, Sender},
    serve::{Serve, ServeFuture, ServeStats, serve},
    to_session::{NotData, SendToSession},
    warn_limit::suppressed_warnings,
};

pub use wsguard_session::{SessionGone, SessionStats, SessionToken, Sessions};

/// The error type of message services: any error, boxed (tower's `BoxError`).
pub use wsguard_policy::BoxError;
