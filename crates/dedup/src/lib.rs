//! `wsguard-dedup`: a tower middleware that lets each message through once in a time window.
//!
//! Clients retry, reconnect and resend; load balancers and message queues redeliver. [`Dedup`]
//! remembers the key of every request it lets through for `ttl` and drops any request whose key
//! it already remembers, so a handler sees each message once per window. It works on any
//! `tower::Service`: on HTTP routes (keyed by an `Idempotency-Key` header), and, through
//! `wsguard-axum`, on every message of a WebSocket connection.
//!
//! - **Keys** ([`DedupRequest`]): a keyed 128-bit [`Fingerprint`] of the content (JSON compared
//!   as a value, whatever its key order and whitespace, numbers by exact value; everything else,
//!   and JSON with a repeated key, as bytes; a text message never matches a binary one), a client
//!   message id in a JSON field, or a header. Scoped per connection, per client or global.
//! - **Window** ([`DedupStore`]): the embedded [`MemoryStore`] (sharded, O(1) check-and-insert
//!   and expiry, bounded by `max_entries`, 33 to 40 bytes per key measured), or `RedisStore` (feature
//!   `redis`) to share one window between nodes, failing open or closed when Redis fails; claims
//!   that wait together go to one server in one pipeline. On a Redis Cluster too
//!   (`store.redis.cluster_nodes`): one key per command, so the window spreads over the masters by
//!   slot.
//! - **At-least-once kept**: when the inner service fails (or its future is dropped unfinished),
//!   the key is released so that a retry passes (`release_on_failure`, on by default).
//! - **Policies**, the two every wsguard layer takes: a [`Classify`] policy says which outcomes
//!   release the key (failures and rejections further in), a [`Reject`] policy what a rejected
//!   call returns. [`DedupLayer::new`] turns a duplicate into the error
//!   [`Duplicate`](error::Duplicate); [`DedupLayer::http`] answers `409 Conflict` (configurable)
//!   and keeps the inner error type, as axum needs.
//! - **Counters** ([`DedupHandle`]): duplicates dropped, evictions, store errors, releases.
//!
//! Settings come from `wsguard_config::DedupConfig`, fixed or live through a `ConfigHandle`
//! (a change of `ttl`, `max_entries`, `key`, `scope` or the fingerprint key applies to the next
//! request; the remembered keys are kept).
//!
//! # Semantics worth knowing
//!
//! - A key is remembered from the moment `call` admits the request, before the inner service
//!   runs: a copy arriving while the first is still being handled is a duplicate. If the inner
//!   service then fails or rejects the call (as the classifier says) or its future is dropped,
//!   the key is released.
//! - Payloads that are `None` or empty are never deduplicated (control frames, empty messages).
//! - Changing `fingerprint_key`, `use_fast_hash` or `scope` changes every key: messages seen
//!   before the change are not recognised after it.
//!
//! # Example: `Idempotency-Key` on an axum route
//!
//! ```
//! use axum::{Router, body::Body, http::{Request, StatusCode}, routing::post};
//! use tower::ServiceExt;
//! use wsguard_config::{DedupConfig, DedupScope, KeySource};
//! use wsguard_dedup::DedupLayer;
//!
//! async fn create_order() -> &'static str {
//!     "created"
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let config = DedupConfig {
//!     key: KeySource::Header,
//!     header: "idempotency-key".into(),
//!     fingerprint_when_missing: false,
//!     scope: DedupScope::Global,
//!     ..DedupConfig::default()
//! };
//! let dedup = DedupLayer::http(config);
//! let stats = dedup.handle();
//! let app = Router::new().route("/orders", post(create_order)).route_layer(dedup);
//!
//! let order = || {
//!     Request::post("/orders")
//!         .header("idempotency-key", "order-7f3a")
//!         .body(Body::empty())
//!         .unwrap()
//! };
//! assert_eq!(app.clone().oneshot(order()).await.unwrap().status(), StatusCode::OK);
//! assert_eq!(app.clone().oneshot(order()).await.unwrap().status(), StatusCode::CONFLICT);
//! assert_eq!(stats.stats().duplicates, 1);
//! # }
//! ```
//!
//! # Example: any service, duplicates as errors
//!
//! ```
//! use tower::{ServiceExt, service_fn};
//! use wsguard_config::DedupConfig;
//! use wsguard_dedup::{DedupLayer, error::Duplicate};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let handler = service_fn(|msg: String| async move {
//!     Ok::<_, std::convert::Infallible>(msg.len())
//! });
//! let svc = tower::ServiceBuilder::new()
//!     .layer(DedupLayer::new(DedupConfig::default()))
//!     .service(handler);
//!
//! let first = svc.clone().oneshot(r#"{"op":"buy","qty":1}"#.to_owned()).await;
//! assert!(first.is_ok());
//! // Same JSON value, other key order and spacing: a duplicate.
//! let again = svc.clone().oneshot(r#"{ "qty": 1, "op": "buy" }"#.to_owned()).await;
//! assert!(again.unwrap_err().is::<Duplicate>());
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

pub mod error;
pub mod fingerprint;
pub mod future;
mod key;
mod layer;
mod request;
mod service;
mod shared;
mod stats;
pub mod store;

/// The classifier and rejection policies every wsguard layer takes (from `wsguard-policy`).
pub use wsguard_policy::{
    Classify, DefaultClassifier, Outcome, Reason, Reject, Rejection, ReturnError,
};
/// The policies for `http` services (from `wsguard-policy`).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use wsguard_policy::{RespondWithStatus, StatusClassifier};

pub use self::{
    fingerprint::{Fingerprint, Fingerprinter},
    layer::DedupLayer,
    request::{ClientScope, ConnectionScope, DedupRequest, Payload},
    service::Dedup,
    stats::{DedupHandle, DedupStats},
    store::{Claim, ClaimFuture, DedupStore, MemoryStore},
};
