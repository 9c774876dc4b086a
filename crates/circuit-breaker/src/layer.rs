use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;
use wsguard_config::{CircuitBreakerConfig, ConfigSource};

use crate::breaker::Core;
use crate::handle::Handle;
use crate::service::{CircuitBreaker, Shared};
use wsguard_policy::{DefaultClassifier, ReturnError};

/// Wraps services in a [`CircuitBreaker`].
///
/// The breaker's state is made here, once: every service this layer makes (axum calls
/// [`Layer::layer`] again per route and connection) and every clone of them share it.
///
/// The classifier `C` and the rejection `R` are swapped one at a time with
/// [`classifier`](Self::classifier) and [`rejection`](Self::rejection).
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier, R = ReturnError> {
    shared: Arc<Shared>,
    classifier: C,
    reject: R,
}

impl CircuitBreakerLayer {
    /// A breaker for any service: errors count as failures and become a
    /// [`BoxError`](crate::BoxError); a rejected call fails with
    /// [`CircuitOpen`](crate::error::CircuitOpen).
    pub fn new(config: impl Into<ConfigSource<CircuitBreakerConfig>>) -> Self {
        Self {
            shared: Arc::new(Shared::new(Core::new(config.into()))),
            classifier: DefaultClassifier,
            reject: ReturnError,
        }
    }
}

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
impl CircuitBreakerLayer<wsguard_policy::StatusClassifier, wsguard_policy::RespondWithStatus> {
    /// A breaker for `http::Request -> http::Response` services: `5xx` responses and errors
    /// count as failures, a rejected call is answered `503 Service Unavailable` with
    /// `Retry-After`, and the inner error type is kept (axum's `Infallible` holds).
    pub fn http(config: impl Into<ConfigSource<CircuitBreakerConfig>>) -> Self {
        Self {
            shared: Arc::new(Shared::new(Core::new(config.into()))),
            classifier: wsguard_policy::StatusClassifier,
            reject: wsguard_policy::RespondWithStatus,
        }
    }
}

impl<C, R> CircuitBreakerLayer<C, R> {
    /// Replaces the classifier, keeping the shared state.
    pub fn classifier<NewC>(self, classifier: NewC) -> CircuitBreakerLayer<NewC, R> {
        CircuitBreakerLayer {
            shared: self.shared,
            classifier,
            reject: self.reject,
        }
    }

    /// Replaces what a rejected call returns, keeping the shared state.
    pub fn rejection<NewR>(self, reject: NewR) -> CircuitBreakerLayer<C, NewR> {
        CircuitBreakerLayer {
            shared: self.shared,
            classifier: self.classifier,
            reject,
        }
    }

    /// A handle on the shared state: observe it, force it, subscribe to its transitions.
    pub fn handle(&self) -> Handle {
        Handle {
            core: Arc::clone(&self.shared.core),
        }
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for CircuitBreakerLayer<C, R> {
    type Service = CircuitBreaker<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            Arc::clone(&self.shared),
            self.classifier.clone(),
            self.reject.clone(),
        )
    }
}

impl<C, R> fmt::Debug for CircuitBreakerLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("state", &self.shared.core.state())
            .finish_non_exhaustive()
    }
}
