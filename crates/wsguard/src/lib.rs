//! wsguard: tower middleware that keeps WebSocket services stable.
//!
//! One crate for the whole set, each part behind a feature (all on by default):
//!
//! | module | crate | feature | what |
//! |---|---|---|---|
//! | [`config`] | `wsguard-config` | always (`load`, `watch` for file loading and watching) | `StabilityConfig`, presets, validation, live updates |
//! | [`policy`] | `wsguard-policy` | always | `Classify` and `Reject`: the classifier and rejection every layer takes |
//! | `circuit_breaker` | `wsguard-circuit-breaker` | `circuit-breaker` | `CircuitBreakerLayer` |
//! | `dedup` | `wsguard-dedup` | `dedup` (`redis` for the shared store) | `DedupLayer` |
//! | `metrics` | `wsguard-metrics` | `metrics` | `MetricsLayer`, `MetricsRegistry` |
//! | `rate_limit` | `wsguard-rate-limit` | `rate-limit` | `RateLimitLayer` |
//! | `axum` | `wsguard-axum` | `axum` | the layers on every WebSocket message of an axum route |
//!
//! [`prelude`] brings the names most servers use:
//!
//! ```
//! # #[cfg(feature = "axum")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::Router;
//! use tower::ServiceBuilder;
//! use wsguard::prelude::*;
//!
//! async fn echo(request: Inbound) -> Result<Option<Message>, BoxError> {
//!     Ok(Some(request.message))
//! }
//!
//! let config = ConfigHandle::new(StabilityConfig::development())?;
//! let registry = MetricsRegistry::new(&config);
//! // Per client (all of its connections), as `rate_limit` in the config says.
//! let limit = RateLimitLayer::new(&config).route("/ws");
//! wsguard::watch_rate_limit(&registry, limit.handle());
//! let stack = ServiceBuilder::new()
//!     .layer(MetricsLayer::new(registry.clone()).route("/ws").classifier(MessageClassifier))
//!     .layer(limit)
//!     .layer(DedupLayer::new(&config).classifier(MessageClassifier))
//!     .layer(CircuitBreakerLayer::new(&config).classifier(MessageClassifier))
//!     .service_fn(echo);
//! // Given the registry, the route counts idle connections from the moment they open.
//! let route = WsRoute::new(stack, &config).metrics(registry);
//! let app: Router = Router::new().route("/ws", route.into_method_router());
//! # let _ = app;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```

#![warn(
    missing_debug_implementations,
    missing_docs,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use wsguard_axum as axum;
#[cfg(feature = "circuit-breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "circuit-breaker")))]
pub use wsguard_circuit_breaker as circuit_breaker;
pub use wsguard_config as config;
#[cfg(feature = "dedup")]
#[cfg_attr(docsrs, doc(cfg(feature = "dedup")))]
pub use wsguard_dedup as dedup;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use wsguard_metrics as metrics;
pub use wsguard_policy as policy;
#[cfg(feature = "rate-limit")]
#[cfg_attr(docsrs, doc(cfg(feature = "rate-limit")))]
pub use wsguard_rate_limit as rate_limit;

#[cfg(all(feature = "metrics", feature = "rate-limit"))]
mod rate_limit_figures;
#[cfg(all(feature = "metrics", feature = "rate-limit"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "metrics", feature = "rate-limit"))))]
pub use self::rate_limit_figures::watch_rate_limit;

/// The names most wsguard servers use: `use wsguard::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "load")]
    pub use wsguard_config::ConfigLoader;
    pub use wsguard_config::{ConfigHandle, Preset, StabilityConfig};
    pub use wsguard_policy::{Classify, Outcome, Reject};

    #[cfg(feature = "circuit-breaker")]
    pub use wsguard_circuit_breaker::{CircuitBreakerLayer, error::CircuitOpen};

    #[cfg(feature = "dedup")]
    pub use wsguard_dedup::{DedupLayer, error::Duplicate};

    #[cfg(feature = "metrics")]
    pub use wsguard_metrics::{MetricsLayer, MetricsRegistry};

    #[cfg(feature = "rate-limit")]
    pub use wsguard_rate_limit::{RateLimitLayer, error::RateLimited};

    #[cfg(feature = "axum")]
    pub use wsguard_axum::{
        BoxError, ConnInfo, Inbound, Message, MessageClassifier, Sender, WsConfig, WsRoute,
        ws_route,
    };
}
