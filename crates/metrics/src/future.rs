//! [`ResponseFuture`] of the [`Metrics`](crate::Metrics) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::layer::Shared;
use crate::registry::clients::ClientEntry;
use wsguard_policy::Classify;

/// What a call in flight needs to be counted when it ends. Dropping it unfinished counts the
/// call as cancelled, so in-flight figures stay right when the caller gives up.
pub(crate) struct CallRecord<C> {
    pub(crate) shared: Arc<Shared<C>>,
    pub(crate) start: Option<Instant>,
    pub(crate) client: Option<Arc<ClientEntry>>,
    pub(crate) finished: bool,
}

impl<C> Drop for CallRecord<C> {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.cancel();
        }
    }
}

pin_project! {
    /// Response future of [`Metrics`](crate::Metrics): the inner future, and the call's
    /// record, counted when the inner future completes (or as cancelled when dropped first).
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        record: Option<CallRecord<C>>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, record: Option<CallRecord<C>>) -> Self {
        Self { inner, record }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(mut record) = this.record.take() {
            let outcome = record.shared.classifier.classify(result.as_ref());
            record.shared.finish(outcome, &record);
            record.finished = true;
        }
        Poll::Ready(result)
    }
}

impl<F: fmt::Debug, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .field("recording", &self.record.is_some())
            .finish()
    }
}
