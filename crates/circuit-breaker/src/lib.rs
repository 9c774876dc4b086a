//! A tower circuit breaker with resilience4j's semantics at tower's speed.
//!
//! [`CircuitBreakerLayer`] stops calling a failing service for a while, then lets a few probe
//! calls decide whether it has recovered. It is configured by `wsguard-config`'s
//! [`CircuitBreakerConfig`](wsguard_config::CircuitBreakerConfig), fixed or live (a new config
//! takes effect without losing the breaker's state).
//!
//! - **Trip modes**: failures in a row (`consecutive_failures`), or the failure rate and the
//!   slow-call rate over the last `window_size` calls (`count_window`) or the last
//!   `window_duration` (`time_window`), once `minimum_calls` calls are in the window. Thresholds
//!   are inclusive. Recording a call is O(1) and takes no lock.
//! - **Open**: calls are rejected at once; the first call strictly after the open wait moves the
//!   breaker to half-open (no timer). The wait grows per consecutive open cycle (fixed or
//!   exponential with a cap, optional jitter) and starts over when the breaker closes.
//! - **Half-open**: at most `half_open_max_calls` probes at once. In consecutive mode any failed
//!   probe reopens and `success_threshold` successful probes close; in the rate modes the failure
//!   and slow-call rates over `half_open_max_calls` probes decide (from
//!   `min(minimum_calls, half_open_max_calls)` probes on). Probes undecided within
//!   `half_open_max_wait` reopen it.
//! - **Classification**: a [`Classify`] policy (the one every wsguard layer takes) sorts each
//!   result into an [`Outcome`]: successes and failures count; rejections and duplicates say
//!   nothing about the service's health and, like calls whose future is dropped before it
//!   finishes, record nothing and give their probe slot back.
//! - **Rejection**: a [`Reject`] policy says what a rejected call returns: the
//!   [`CircuitOpen`](error::CircuitOpen) error ([`ReturnError`], the default) or a `503` with
//!   `Retry-After` ([`RespondWithStatus`], for `http` services).
//! - **Manual control** through a [`Handle`]: state, force open, disable, metrics only, reset,
//!   a [`Snapshot`] of the window and a subscription to [`Event`]s (also `tracing` events).
//!
//! A closed or disabled breaker admits a call when `poll_ready` answers for it, as resilience4j
//! grants a permission before the call: a transition between `poll_ready` and `call` does not
//! reject it.
//! An open breaker reports ready and rejects in `call`, leaving the inner service unpolled.
//! Calls admitted before a transition that finish after it are not recorded: a half-open
//! verdict rests on its own probes only. Nor are calls admitted before a reload that changes
//! the trip mode between consecutive failures and a rate mode: consecutive mode does not time
//! its calls, and a rate window does not count failures in a row. A reload that changes a
//! window's size or kind starts the window afresh.
//!
//! # Cost
//!
//! A closed breaker takes no lock, allocates nothing and boxes no future: admission is one atomic
//! load of the state word; recording is a load (consecutive mode) or an O(1) lock-free update of
//! a window whose hot counters are per thread. The rate modes read the clock twice per call to
//! spot slow calls. A response future holds a reference to the breaker's state, counted on a
//! cache line of the calling thread's own; in the rate modes it is recycled through one spare
//! slot per thread, which may keep a dropped breaker's state alive until that thread's next timed
//! call through another breaker or its exit. A disabled breaker's call holds no reference and
//! records nothing: one load of the state word. Figures against other crates are in
//! `BENCHMARKS.md`.
//!
//! # On an axum route
//!
//! [`CircuitBreakerLayer::http`] keeps the inner error type, so axum's `Infallible`
//! holds, counts `5xx` responses as failures and answers a rejected request with
//! `503 Service Unavailable` and `Retry-After`.
//!
//! ```
//! use axum::{Router, body::Body, http::{Request, StatusCode}, routing::get};
//! use tower::ServiceExt;
//! use wsguard_circuit_breaker::CircuitBreakerLayer;
//! use wsguard_config::CircuitBreakerConfig;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreakerLayer::http(CircuitBreakerConfig::production());
//! let handle = breaker.handle();
//!
//! let app = Router::new()
//!     // Guarded: a failing upstream behind `/ws` trips the breaker.
//!     .route("/ws", get(|| async { "upgrade here" }).layer(breaker))
//!     // Not guarded.
//!     .route("/health", get(|| async { "ok" }));
//!
//! handle.force_open();
//! let get = |uri| Request::get(uri).body(Body::empty()).unwrap();
//! let guarded = app.clone().oneshot(get("/ws")).await.unwrap();
//! assert_eq!(guarded.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert!(guarded.headers().contains_key("retry-after"));
//! let free = app.oneshot(get("/health")).await.unwrap();
//! assert_eq!(free.status(), StatusCode::OK);
//! # }
//! ```
//!
//! # On any service
//!
//! [`CircuitBreakerLayer::new`] turns errors into a [`BoxError`]; a rejection is a
//! [`CircuitOpen`](error::CircuitOpen) inside it, which tells when the next probe may go.
//!
//! ```
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use wsguard_circuit_breaker::{CircuitBreakerLayer, error::CircuitOpen};
//! use wsguard_config::CircuitBreakerConfig;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // `testing()`: open after 2 failures in a row, for 1 s.
//! let mut svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(CircuitBreakerConfig::testing()))
//!     .service(service_fn(|_: ()| async { Err::<(), _>("upstream down") }));
//!
//! for _ in 0..2 {
//!     let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//!     assert!(!err.is::<CircuitOpen>());
//! }
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().expect("rejected");
//! assert!(open.retry_after() <= std::time::Duration::from_secs(1));
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

mod backoff;
mod breaker;
pub mod error;
pub mod future;
mod handle;
mod layer;
mod service;
mod shard;
mod window;

pub use self::{
    handle::{Event, Handle, Snapshot, State},
    layer::CircuitBreakerLayer,
    service::CircuitBreaker,
};

/// The classifier and rejection policies every wsguard layer takes (from `wsguard-policy`).
pub use wsguard_policy::{
    BoxError, Classify, DefaultClassifier, Outcome, Reason, Reject, Rejection, ReturnError,
};
/// The policies for `http` services (from `wsguard-policy`).
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use wsguard_policy::{RespondWithStatus, StatusClassifier};
