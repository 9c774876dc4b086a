//! Run tower middleware on every WebSocket message of an axum route.
//!
//! Layers on an axum route see only the HTTP upgrade. `wsguard-axum` turns the upgraded socket
//! into calls of a `tower::Service<Inbound>`: one call per text or binary message, answered with
//! zero or one reply, so a `ServiceBuilder` stack of wsguard layers runs on each message.
//!
//! # Behaviour
//!
//! - Messages of one connection are handled in order; `message_concurrency > 1` lets that many
//!   run at once, with replies still sent in order.
//! - Replies and [`Outbound`] sends go through a bounded queue (`send_queue_capacity`) whose
//!   overflow policy drops the newest, drops the oldest, or closes with `1008`. Queued messages
//!   are written together and flushed once.
//! - Ping/pong, the close handshake and frame assembly stay tungstenite's; the service never sees
//!   a control frame. The server pings a quiet client every `ping_interval` and closes with
//!   `1001` after `idle_timeout` of silence.
//! - A message over `max_message_size` closes with `1009`; a panicking service closes that
//!   connection with `1011` and nothing else; past `max_connections`, upgrades get `503`.
//! - Every close is logged through `tracing` with its code and reason.

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
mod inbound;
mod layers;
mod outbound;
mod reply;
mod route;

pub use axum::extract::ws::Message;

pub use self::{
    config::WsConfig,
    inbound::{ConnInfo, ConnectionId, Inbound},
    layers::MessageClassifier,
    outbound::{ConnectionClosed, Outbound, Queued},
    route::{ConnectionStats, WsRoute, ws_route},
};

/// The error type of message services: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
