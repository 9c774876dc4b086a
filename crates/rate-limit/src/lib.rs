//! `wsguard-rate-limit`: a tower middleware that limits messages and bytes per second, per
//! client, per connection or for everyone.
//!
//! HTTP rate limiters key on the upgrade request and act once per connection, so a client that
//! opens more connections gets more capacity. [`RateLimit`] runs on every call of any
//! `tower::Service`: on HTTP routes, and on every message of a WebSocket connection when a
//! WebSocket adapter runs its stack per message. Keyed per client, one client's limit covers
//! all of its connections.
//!
//! - **Limits**: messages per second and payload bytes per second, each with a burst, on the
//!   `governor` crate's keyed GCRA (a quiet key may send its burst at once, then one message
//!   every `1 / rate`). A rate of 0 turns that limit off. A message also counts against the
//!   message limit when the byte limit refuses it.
//! - **Keys** ([`RateLimitRequest`]): the client id (`scope = "client"`), the connection id
//!   (`connection`) or none (`global`). Ids are hashed with a per-layer random key, so every
//!   tracked key costs the same whatever the id's length.
//! - **Bounded memory**: each limit's table holds at most `max_keys` keys; past it the key
//!   closest to a full limit is evicted (its client loses the least), and a background sweep
//!   every `cleanup_interval` forgets keys whose limit has refilled (they are indistinguishable
//!   from keys never seen). Both are counted.
//! - **On the limit** ([`Reject`]): [`RateLimitLayer::new`] returns the error
//!   [`RateLimited`](error::RateLimited), which carries the retry delay and the configured
//!   action (`drop`, `error_frame`, `close`) for the WebSocket adapter to carry out;
//!   [`RateLimitLayer::http`] answers `429 Too Many Requests` with `Retry-After` and keeps the
//!   inner error type, as axum needs. With `hold_refused` (on in the production preset), a
//!   refused message resolves only once its limit would let a message pass again: an adapter
//!   that reads a connection's next message after its calls are done (`wsguard-axum`) then reads
//!   a flooding client no faster than its limit, and TCP flow control slows the sender.
//! - **Counters** ([`RateLimitHandle`]): calls refused by limit and by action, keys tracked,
//!   evicted and expired. Calls that pass touch no shared counter (the metrics layer counts
//!   every call).
//!
//! Settings come from `wsguard_config::RateLimitConfig`, fixed or live through a
//! `ConfigHandle` (see [`RateLimitLayer::new`] for what a change keeps).
//!
//! # Example: `429` with `Retry-After` on an axum route
//!
//! ```
//! use axum::{Router, body::Body, http::{Request, StatusCode, header}, routing::post};
//! use tower::ServiceExt;
//! use wsguard_config::{RateLimitConfig, RateLimitScope};
//! use wsguard_rate_limit::RateLimitLayer;
//!
//! async fn create_order() -> &'static str {
//!     "created"
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config = RateLimitConfig {
//!     scope: RateLimitScope::Global,
//!     messages_per_second: 1,
//!     messages_burst: 2,
//!     ..RateLimitConfig::default()
//! };
//! let limit = RateLimitLayer::http(config).route("/orders");
//! let stats = limit.handle();
//! let app = Router::new().route("/orders", post(create_order)).route_layer(limit);
//!
//! let order = || Request::post("/orders").body(Body::empty()).unwrap();
//! for _ in 0..2 {
//!     assert_eq!(app.clone().oneshot(order()).await.unwrap().status(), StatusCode::OK);
//! }
//! let refused = app.clone().oneshot(order()).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
//! assert_eq!(stats.stats().limited(), 1);
//! # }
//! ```
//!
//! # Example: any service, refusals as errors
//!
//! ```
//! use std::borrow::Cow;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use wsguard_config::RateLimitConfig;
//! use wsguard_rate_limit::{RateLimitLayer, RateLimitRequest, error::{LimitKind, RateLimited}};
//!
//! /// A message and the client that sent it.
//! struct Message { client: &'static str, text: &'static str }
//!
//! impl RateLimitRequest for Message {
//!     fn client_id(&self) -> Option<Cow<'_, str>> {
//!         Some(Cow::Borrowed(self.client))
//!     }
//!     fn size(&self) -> Option<u64> {
//!         Some(self.text.len() as u64)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config = RateLimitConfig { messages_per_second: 10, messages_burst: 1, ..RateLimitConfig::default() };
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(config))
//!     .service(service_fn(|m: Message| async move { Ok::<_, std::io::Error>(m.text.len()) }));
//!
//! let alice = |text| Message { client: "alice", text };
//! assert!(svc.clone().oneshot(alice("hello")).await.is_ok());
//! let err = svc.clone().oneshot(alice("again")).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().expect("refused by the limit");
//! assert_eq!(limited.limit(), LimitKind::Messages);
//! assert!(limited.retry_after().unwrap() <= Duration::from_millis(100));
//! // Another client has its own limit.
//! assert!(svc.clone().oneshot(Message { client: "bob", text: "hi" }).await.is_ok());
//! # }
//! ```

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
pub mod error;
pub mod future;
mod layer;
mod request;
mod service;
mod shared;
mod stats;
mod table;

/// The policy for `http` services (from `wsguard-policy`).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use wsguard_policy::RespondWithStatus;
/// The rejection policies every wsguard layer takes (from `wsguard-policy`).
pub use wsguard_policy::{Reason, Reject, Rejection, ReturnError};

pub use self::{
    layer::RateLimitLayer,
    request::RateLimitRequest,
    service::RateLimit,
    stats::{RateLimitHandle, RateLimitStats},
};
