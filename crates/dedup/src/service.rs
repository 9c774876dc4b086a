use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;
use wsguard_config::{ConfigSource, DedupConfig};

use wsguard_policy::{Classify, DefaultClassifier, Reject, ReturnError};

use crate::future::{Policies, ResponseFuture};
use crate::request::DedupRequest;
use crate::shared::{Admit, Shared};
use crate::stats::DedupHandle;

/// Drops requests whose key was seen within the window; see [`DedupLayer`](crate::DedupLayer).
///
/// With a store that answers at once (the [`MemoryStore`](crate::MemoryStore)) the decision is
/// made inside `call`. With a store that waits (Redis), the ready inner service is moved into the
/// response future and a clone takes its place, as tower recommends; hence `S: Clone`.
pub struct Dedup<S, C = DefaultClassifier, R = ReturnError> {
    inner: S,
    shared: Arc<Shared>,
    policies: Policies<C, R>,
}

impl<S: Clone, C: Clone, R: Clone> Clone for Dedup<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            policies: self.policies.clone(),
        }
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for Dedup<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("store", &self.shared.store)
            .field("classifier", &std::any::type_name::<C>())
            .field("rejection", &std::any::type_name::<R>())
            .finish()
    }
}

impl<S> Dedup<S> {
    /// `inner` behind its own window (a [`MemoryStore`](crate::MemoryStore)); prefer
    /// [`DedupLayer`](crate::DedupLayer) to share one window between services.
    pub fn new(inner: S, config: impl Into<ConfigSource<DedupConfig>>) -> Self {
        tower_layer::Layer::layer(&crate::DedupLayer::new(config), inner)
    }
}

impl<S, C, R> Dedup<S, C, R> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, policies: Policies<C, R>) -> Self {
        Self {
            inner,
            shared,
            policies,
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

    /// A handle on the counters and the store.
    pub fn handle(&self) -> DedupHandle {
        DedupHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, Req, C, R> Service<Req> for Dedup<S, C, R>
where
    S: Service<Req> + Clone,
    Req: DedupRequest,
    C: Classify<S::Response, S::Error> + Clone,
    R: Reject<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S, Req, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing to reserve: duplicates are decided in `call`, never as a readiness error.
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.policies.rejection.map_error(e))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let policies = self.policies.clone();
        let shared = Arc::clone(&self.shared);
        let Some(check) = self.shared.check(&req) else {
            return ResponseFuture::called(self.inner.call(req), None, policies, shared);
        };
        match self.shared.store.claim(check.key, check.ttl).into_ready() {
            Ok(answer) => match self.shared.admit(&check, answer) {
                Admit::Call(guard) => {
                    ResponseFuture::called(self.inner.call(req), guard, policies, shared)
                }
                Admit::Reject(rejection) => ResponseFuture::rejected(rejection, policies, shared),
            },
            Err(pending) => {
                // The store must be asked first: take the ready service along.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::claiming(pending, check, ready, req, policies, shared)
            }
        }
    }
}
