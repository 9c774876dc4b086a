//! Metrics for long-lived WebSocket services, as tower middleware: exact aggregates, bounded
//! per-client state, export through the [`metrics`] facade.
//!
//! [`MetricsLayer`] wraps a service (an axum route, or with `wsguard-axum` each WebSocket
//! message) and records every call into a shared [`MetricsRegistry`]:
//!
//! - **Aggregates**, exact and lock-free: calls by [`Outcome`] (ok, error, rejected by a circuit
//!   breaker, dropped as duplicate), in flight, messages and bytes in and out, active and total
//!   connections, and a latency histogram over `latency_buckets`.
//! - **Per client**: connected at, last activity, messages and bytes in and out, errors,
//!   duplicates, rejections. A connection registers through [`MetricsRegistry::connect`] (or a
//!   [`ConnectionSlot`]) and its client's state goes when its last connection does; a sweep
//!   and the `max_clients` cap bound the table whatever clients do.
//! - **Sampling**: `sample_rate` applies to latency timing and per-client detail only; the
//!   aggregate counters are always exact.
//! - **Export**: the [`metrics`] facade with low-cardinality labels (route, direction, outcome;
//!   never a client id), see [`export`]: counts are published from the layer's own counters
//!   every second and by [`MetricsRegistry::publish`] (call it before rendering); and
//!   [`MetricsRegistry::snapshot`], serialisable, for a JSON endpoint.
//! - **Sessions**: the `wsguard.v1` figures of each route (live and detached sessions, resumes,
//!   refusals by reason, replays, drops by a bound, expiries), read from a [`SessionSource`]
//!   ([`MetricsRegistry::watch_sessions`]; `WsRoute::metrics` in `wsguard-axum` connects one).
//! - **Rate limits**: calls each route's rate limit refused, by limit and action, and the keys it
//!   tracks, evicts and forgets, read from a [`RateLimitSource`]
//!   ([`MetricsRegistry::watch_rate_limit`]; the `wsguard` crate's `watch_rate_limit` connects a
//!   `RateLimitLayer`).
//!
//! ```
//! use axum::{Router, body::Body, http::Request, routing::get};
//! use tower::ServiceExt;
//! use wsguard_config::MetricsConfig;
//! use wsguard_metrics::{MetricsLayer, MetricsRegistry};
//!
//! # #[cfg(feature = "http")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Install a `metrics` recorder (e.g. metrics-exporter-prometheus) before this line.
//! let registry = MetricsRegistry::new(MetricsConfig::development());
//! let stats = registry.clone();
//! let app = Router::new()
//!     .route("/ws", get(|| async { "upgrade here" }))
//!     .route_layer(MetricsLayer::new(registry.clone()).route("/ws"))
//!     .route("/stats", get(move || async move { serde_json::to_string(&stats.snapshot()).unwrap() }));
//!
//! let request = Request::get("/ws").header("x-client-id", "alice").body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert!(response.status().is_success());
//!
//! let snapshot = registry.snapshot();
//! assert_eq!(snapshot.calls.ok, 1);
//! assert_eq!(snapshot.messages_in, 1);
//! // Seen without a connection: kept until the inactivity sweep or the cap removes it.
//! assert_eq!(snapshot.clients.top[0].client_id, "alice");
//! # }
//! # #[cfg(not(feature = "http"))] fn main() {}
//! ```
//!
//! For WebSocket connections, register each connection for its lifetime:
//!
//! ```
//! # use wsguard_config::MetricsConfig;
//! # use wsguard_metrics::MetricsRegistry;
//! let registry = MetricsRegistry::new(MetricsConfig::development());
//! let guard = registry.connect("alice");
//! assert_eq!(registry.client_count(), 1);
//! drop(guard); // disconnect: alice's state goes with her last connection
//! assert_eq!(registry.client_count(), 0);
//! ```
//!
//! # Per-message use (for adapters)
//!
//! An adapter that turns each WebSocket message into a call gives every connection a
//! [`ConnectionSlot`] and implements [`ClientRequest`] for its message type. Given the registry,
//! it registers each connection as it opens with [`ConnectionSlot::register`], so idle
//! connections are counted; otherwise the layer registers it on its first message. Outcomes of the
//! other wsguard layers arrive as marker errors, which a classifier closure recognises:
//!
//! ```
//! use std::{borrow::Cow, sync::Arc};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use wsguard_config::MetricsConfig;
//! use wsguard_metrics::{ClientIdOptions, ClientRequest, ConnectionSlot, MetricsLayer, MetricsRegistry, Outcome};
//!
//! struct Connection { client: String, slot: ConnectionSlot }
//! struct Inbound { text: String, conn: Arc<Connection> }
//!
//! impl ClientRequest for Inbound {
//!     fn client_id(&self, _: &ClientIdOptions) -> Option<Cow<'_, str>> {
//!         Some(Cow::Borrowed(&self.conn.client))
//!     }
//!     fn size(&self) -> Option<u64> {
//!         Some(self.text.len() as u64)
//!     }
//!     fn connection_slot(&self) -> Option<&ConnectionSlot> {
//!         Some(&self.conn.slot)
//!     }
//! }
//!
//! // Stands for a marker error such as the circuit breaker's `CircuitOpen`.
//! #[derive(Debug)]
//! struct Refused;
//! impl std::fmt::Display for Refused {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("refused") }
//! }
//! impl std::error::Error for Refused {}
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let registry = MetricsRegistry::new(MetricsConfig::development());
//! let layer = MetricsLayer::new(registry.clone())
//!     .route("/ws")
//!     .classifier(|r: Result<&(), &BoxError>| match r {
//!         Ok(()) => Outcome::Success,
//!         Err(e) if e.is::<Refused>() => Outcome::Rejected,
//!         Err(_) => Outcome::Failure,
//!     });
//! let mut handler = layer.layer(service_fn(|m: Inbound| async move {
//!     if m.text == "refuse me" { Err::<(), BoxError>(Box::new(Refused)) } else { Ok(()) }
//! }));
//!
//! let conn = Arc::new(Connection { client: "alice".into(), slot: ConnectionSlot::new() });
//! for text in ["hi", "refuse me"] {
//!     let msg = Inbound { text: text.into(), conn: conn.clone() };
//!     let _ = handler.ready().await.unwrap().call(msg).await;
//! }
//! assert_eq!(registry.active_connections(), 1);
//! assert_eq!(registry.client("alice").unwrap().rejections, 1);
//!
//! conn.slot.release(); // the connection closed
//! assert_eq!(registry.client_count(), 0);
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

mod classify;
pub mod export;
pub mod future;
mod layer;
mod rate_limits;
mod registry;
mod request;
mod sample;
mod service;
mod sessions;
mod snapshot;
mod watched;

/// Classifies `http::Response`s by status (re-exported from `wsguard-policy`).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use wsguard_policy::StatusClassifier;
/// The classifier every wsguard layer takes (re-exported from `wsguard-policy`).
pub use wsguard_policy::{Classify, DefaultClassifier, Outcome};

pub use self::{
    layer::{Direction, MetricsLayer},
    rate_limits::{RateLimitActions, RateLimitFigures, RateLimitRefusals, RateLimitSource},
    registry::{ConnectionGuard, ConnectionSlot, MetricsRegistry},
    request::{ClientIdOptions, ClientRequest, MAX_CLIENT_ID_LEN},
    sample::Sampler,
    service::Metrics,
    sessions::{SessionFigures, SessionRefusals, SessionSource},
    snapshot::{
        ClientSnapshot, ClientsSnapshot, HistogramSnapshot, MetricsSnapshot, OutcomeCounts,
        RateLimitsSnapshot, RouteSnapshot, SessionsSnapshot,
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_and_sync() {
        send_sync::<MetricsRegistry>();
        send_sync::<ConnectionSlot>();
        send_sync::<ConnectionGuard>();
        send_sync::<MetricsLayer>();
        send_sync::<Metrics<(), DefaultClassifier>>();
        let _: ConnectionSlot = Default::default();
    }
}
