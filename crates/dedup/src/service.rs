use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;
use wsguard_config::{ConfigSource, DedupConfig};

use crate::future::ResponseFuture;
use crate::policy::{BoxErrors, DedupPolicy};
use crate::request::DedupRequest;
use crate::shared::{Admit, Shared};
use crate::stats::DedupHandle;

/// Drops requests whose key was seen within the window; see [`DedupLayer`](crate::DedupLayer).
///
/// With a store that answers at once (the [`MemoryStore`](crate::MemoryStore)) the decision is
/// made inside `call`. With a store that waits (Redis), the ready inner service is moved into the
/// response future and a clone takes its place, as tower recommends; hence `S: Clone`.
pub struct Dedup<S, P = BoxErrors> {
    inner: S,
    shared: Arc<Shared>,
    policy: P,
}

impl<S: Clone, P: Clone> Clone for Dedup<S, P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            policy: self.policy.clone(),
        }
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for Dedup<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("store", &self.shared.store)
            .field("policy", &self.policy)
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

impl<S, P> Dedup<S, P> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, policy: P) -> Self {
        Self {
            inner,
            shared,
            policy,
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

impl<S, Req, P> Service<Req> for Dedup<S, P>
where
    S: Service<Req> + Clone,
    Req: DedupRequest,
    P: DedupPolicy<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = P::Error;
    type Future = ResponseFuture<S, Req, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing to reserve: duplicates are decided in `call`, never as a readiness error.
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.policy.inner_error(e))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let policy = self.policy.clone();
        let shared = Arc::clone(&self.shared);
        let Some(check) = self.shared.check(&req) else {
            return ResponseFuture::called(self.inner.call(req), None, policy, shared);
        };
        match self.shared.store.claim(check.key, check.ttl).into_ready() {
            Ok(answer) => match self.shared.admit(&check, answer) {
                Admit::Call(guard) => {
                    ResponseFuture::called(self.inner.call(req), guard, policy, shared)
                }
                Admit::Reject(rejection) => ResponseFuture::rejected(rejection, policy, shared),
            },
            Err(pending) => {
                // The store must be asked first: take the ready service along.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::claiming(pending, check, ready, req, policy, shared)
            }
        }
    }
}
