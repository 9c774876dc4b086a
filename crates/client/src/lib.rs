//! A Rust client for wsguard's `wsguard.v1` protocol (`docs/protocol.md`): a WebSocket
//! connection that survives disconnects, losing nothing and delivering nothing twice.
//!
//! - [`Client::connect`] offers the `wsguard.v1` subprotocol, sends `hello` and keeps the
//!   session token the server answers with.
//! - When the connection drops (an error, the end of the stream, or a close that does not say
//!   "do not come back"), the client reconnects with backoff and jitter from
//!   [`ClientOptions::retry`] and resumes with the highest `seq` it delivered in order. It
//!   resends every message the server has not acknowledged, with its id. A refused resume is
//!   reported as [`Event::Restarted`]: with `gap`, how many server messages were lost; with
//!   `unknown` or `expired`, which sent messages may or may not have been processed.
//! - [`Client::send`] (or `Client` as a `tower::Service<Message>`) numbers messages from 1 and
//!   holds them until the server acknowledges them; at
//!   [`max_unacknowledged`](ClientOptions::max_unacknowledged) held, sending waits.
//! - [`Events`] yields the server's messages in order, exactly once in a session, and
//!   acknowledges them cumulatively in batches (every `ack_every` messages or `ack_interval`).
//!
//! - Several nodes: [`Client::connect_any`] takes a list of endpoints and tries the next one at
//!   each attempt, so a client whose node drains or dies resumes on another (the nodes share a
//!   Redis session store). A draining server's `1001` close carries a reconnect delay ("reconnect
//!   in N ms", spread over the drain's window), and a refused upgrade may carry `Retry-After`
//!   (`429`, `503`): the client waits that long instead of its backoff.
//!
//! A background task owns the socket; `Client` handles are cheap clones. [`Client::close`]
//! acknowledges what arrived and closes with `1000`.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use wsguard_client::{Client, ClientOptions, Event, Message};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::connect("ws://127.0.0.1:3000/ws", ClientOptions::default()).await?;
//! client.send("hello").await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message { seq, message: Message::Text(text) } => println!("{seq}: {text}"),
//!         Event::Restarted(restart) => eprintln!("session lost ({}), resynchronising", restart.reason),
//!         Event::Stopped(stopped) => eprintln!("stopped: {:?}", stopped.reason),
//!         _ => {}
//!     }
//! #   break;
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! Backpressure through tower: the service is ready once the unacknowledged buffer has room.
//!
//! ```
//! use wsguard_client::{Client, Message};
//!
//! fn assert_service<S: tower_service::Service<Message, Response = ()>>() {}
//! assert_service::<Client>();
//! ```

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod connection;
pub mod error;
mod event;
mod inbox;
mod message;
mod options;
mod outbox;

pub use self::{
    client::{Client, Events},
    event::{Disconnect, Event, Restart, StopReason, Stopped},
    message::Message,
    options::ClientOptions,
};
pub use wsguard_config::RetryConfig;
pub use wsguard_session::protocol::RefusalReason;
