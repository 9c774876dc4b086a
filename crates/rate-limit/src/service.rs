use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;
use wsguard_config::{ConfigSource, RateLimitConfig};
use wsguard_policy::{Reject, ReturnError};

use crate::future::ResponseFuture;
use crate::request::RateLimitRequest;
use crate::shared::{DerivedCache, Shared};
use crate::stats::RateLimitHandle;

/// Turns away calls over their rate limit; see [`RateLimitLayer`](crate::RateLimitLayer).
///
/// The decision is made in `call`, before the inner service is called; readiness is the inner
/// service's. A refused call never reaches it.
pub struct RateLimit<S, R = ReturnError> {
    inner: S,
    shared: Arc<Shared>,
    derived: DerivedCache,
    rejection: R,
    holds: bool,
}

impl<S: Clone, R: Clone> Clone for RateLimit<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            derived: self.derived.clone(),
            rejection: self.rejection.clone(),
            holds: self.holds,
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for RateLimit<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limits", &self.shared.describe())
            .field("rejection", &std::any::type_name::<R>())
            .finish()
    }
}

impl<S> RateLimit<S> {
    /// `inner` behind its own limits; prefer [`RateLimitLayer`](crate::RateLimitLayer) to share
    /// one set of limits between services.
    pub fn new(inner: S, config: impl Into<ConfigSource<RateLimitConfig>>) -> Self {
        tower_layer::Layer::layer(&crate::RateLimitLayer::new(config), inner)
    }
}

impl<S, R> RateLimit<S, R> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, rejection: R, holds: bool) -> Self {
        Self {
            inner,
            derived: shared.cache(),
            shared,
            rejection,
            holds,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A handle on the counters.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, Req, R> Service<Req> for RateLimit<S, R>
where
    S: Service<Req>,
    Req: RateLimitRequest,
    R: Reject<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing to reserve: limits are decided in `call`, never as a readiness error.
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.rejection.map_error(e))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.shared.check(&mut self.derived, &req) {
            Ok(()) => ResponseFuture::called(self.inner.call(req), self.rejection.clone()),
            Err(refused) => {
                let hold = refused.hold.filter(|_| self.holds);
                ResponseFuture::limited(refused.rejection, self.rejection.clone(), hold)
            }
        }
    }
}
