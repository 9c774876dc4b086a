use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use crate::future::{CallRecord, ResponseFuture};
use crate::layer::Shared;
use crate::request::ClientRequest;
use wsguard_policy::Outcome;
use wsguard_policy::{Classify, DefaultClassifier};

use crate::MetricsRegistry;

/// Records each call of `S` into a [`MetricsRegistry`]; built by [`MetricsLayer`](crate::MetricsLayer).
///
/// Per call, always: messages and bytes (when the request knows its size) of the layer's
/// direction, in flight, and the outcome, in per-thread striped counters (published to the
/// `metrics` facade by [`MetricsRegistry::publish`]). On sampled calls: latency (also recorded
/// to the facade's histogram), and the client's detail. The inner service's readiness, errors
/// and responses pass through untouched.
pub struct Metrics<S, C = DefaultClassifier> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<C>>,
}

impl<S, C> Metrics<S, C> {
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

    /// The registry this service records into.
    pub fn registry(&self) -> &MetricsRegistry {
        &self.shared.registry
    }
}

/// Clones share the layer's state (one `Arc`).
impl<S: Clone, C> Clone for Metrics<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Metrics<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .field("route", &self.shared.route)
            .field("direction", &self.shared.direction)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for Metrics<S, C>
where
    S: Service<Req>,
    Req: ClientRequest,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let registry = &shared.registry.inner;
        registry.refresh();
        if !registry.enabled() {
            return ResponseFuture::new(self.inner.call(req), None);
        }
        let direction = shared.direction;
        let size = req.size();
        shared.stats().counters.start(direction, size);

        // The slot registers its connection on first sight, whether or not this call is sampled.
        let slot_entry = req
            .connection_slot()
            .map(|slot| slot.entry(registry, || req.client_id(&shared.options)));
        let (start, client) = if registry.sample() {
            let client = match slot_entry {
                Some(entry) => entry.cloned(),
                None => req
                    .client_id(&shared.options)
                    .map(|id| registry.touch_client(&id)),
            };
            // Timed from here: the latency is the inner service's, not the table lookup's.
            let start = Instant::now();
            if let Some(c) = &client {
                c.record_message(direction, size, registry.nanos_at(start));
            }
            (Some(start), client)
        } else {
            (None, None)
        };

        let record = CallRecord {
            shared: shared.clone(),
            start,
            client,
            finished: false,
        };
        ResponseFuture::new(self.inner.call(req), Some(record))
    }
}

impl<C> Shared<C> {
    /// Counts a finished call.
    pub(crate) fn finish(&self, outcome: Outcome, record: &CallRecord<C>) {
        self.stats().counters.finish(outcome);
        if let Some(start) = record.start {
            let elapsed = start.elapsed();
            self.registry.inner.record_latency(self.direction, elapsed);
            self.stats().record_latency(elapsed.as_secs_f64());
        }
        if let Some(client) = &record.client {
            client.record_outcome(outcome);
        }
    }

    /// Counts a call dropped before it finished.
    pub(crate) fn cancel(&self) {
        self.stats().counters.cancel();
    }
}
