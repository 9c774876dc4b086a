use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;
use wsguard_config::{ConfigSource, RateLimitConfig};
use wsguard_policy::ReturnError;

use crate::service::RateLimit;
use crate::shared::Shared;
use crate::stats::{RateLimitHandle, RateLimitStats};

/// Applies [`RateLimit`] to a service: a call over its limit never reaches it.
///
/// The limits and their key tables live in the layer: every service built by [`Layer::layer`]
/// (axum builds one per route and clones it per request or connection) shares them, and so do
/// the layer's clones. Built inside a tokio runtime, the layer runs a background sweep every
/// `cleanup_interval` that forgets keys whose limit has refilled; it ends with the layer.
///
/// The rejection policy `R` says what a refused call returns: [`RateLimitLayer::new`] returns
/// the error [`RateLimited`](crate::error::RateLimited) (for WebSocket message services, whose
/// adapter answers as `on_limit` says); [`RateLimitLayer::http`] answers `429 Too Many
/// Requests` with `Retry-After` and keeps the inner error type, as axum needs.
#[derive(Clone)]
pub struct RateLimitLayer<R = ReturnError> {
    shared: Arc<Shared>,
    rejection: R,
    /// Whether refusals are held as `hold_refused` says (not on HTTP routes).
    holds: bool,
}

impl<R> fmt::Debug for RateLimitLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("route", &self.shared.route())
            .field("limits", &self.shared.describe())
            .field("rejection", &std::any::type_name::<R>())
            .field("holds", &self.holds)
            .finish()
    }
}

impl RateLimitLayer {
    /// A layer reading `config` (fixed, or live through a `ConfigHandle`). A refused call is the
    /// error [`RateLimited`](crate::error::RateLimited) (a `BoxError`).
    ///
    /// A live change of `enabled`, `on_limit`, `max_keys` or `cleanup_interval` applies to the
    /// next call and keeps every key's state; a change of a limit's rate or burst starts that
    /// limit afresh (every key with a full burst), and a change of `scope` starts both afresh.
    pub fn new(config: impl Into<ConfigSource<RateLimitConfig>>) -> Self {
        Self {
            shared: Shared::new(config.into()),
            rejection: ReturnError,
            holds: true,
        }
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl RateLimitLayer<wsguard_policy::RespondWithStatus> {
    /// For HTTP services: the inner error type is kept and a refused request is answered `429
    /// Too Many Requests` with `Retry-After` in whole seconds (rounded up; none for a body larger
    /// than `bytes_burst`, which never passes), at once: `hold_refused` does not apply.
    pub fn http(config: impl Into<ConfigSource<RateLimitConfig>>) -> Self {
        let mut layer = RateLimitLayer::new(config).rejection(wsguard_policy::RespondWithStatus);
        layer.holds = false;
        layer
    }
}

impl<R> RateLimitLayer<R> {
    /// Replaces the rejection, which says what a refused call returns.
    pub fn rejection<R2>(self, rejection: R2) -> RateLimitLayer<R2> {
        RateLimitLayer {
            shared: self.shared,
            rejection,
            holds: self.holds,
        }
    }

    /// Names the route the layer guards, for its [stats](RateLimitStats::route) (and the
    /// metrics that export them).
    pub fn route(self, route: impl Into<Arc<str>>) -> Self {
        self.shared.set_route(route.into());
        self
    }

    /// A handle on the counters, shared with every service of this layer.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> RateLimitStats {
        self.handle().stats()
    }
}

impl<S, R: Clone> Layer<S> for RateLimitLayer<R> {
    type Service = RateLimit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_parts(
            inner,
            Arc::clone(&self.shared),
            self.rejection.clone(),
            self.holds,
        )
    }
}
