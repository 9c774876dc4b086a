//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::breaker::Admitted;
use crate::classify::Classify;
use crate::error::CircuitOpen;
use crate::reject::Reject;
use crate::service::Stripe;

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    ///
    /// Dropping it before it finishes records nothing and gives a half-open probe slot back.
    pub struct ResponseFuture<F, C, R> {
        #[pin]
        kind: Kind<F>,
        // Records the outcome of an admitted call; empty for calls that record nothing.
        call: Call,
        classifier: C,
        reject: R,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
        },
        Rejected {
            open: Option<CircuitOpen>,
        },
    }
}

/// An admitted call to record when it finishes.
#[derive(Debug)]
pub(crate) struct Call {
    // `Some` until the call is finished; then it goes back to the thread's spare slot. A future
    // dropped unfinished drops it, and its permit, with no `Drop` of its own: that would keep the
    // whole future out of registers on every call.
    stripe: Option<Arc<Stripe>>,
    admitted: Admitted,
}

impl Call {
    pub(crate) fn new(stripe: Arc<Stripe>, admitted: Admitted) -> Self {
        Self {
            stripe: Some(stripe),
            admitted,
        }
    }

    /// A call that records nothing.
    fn none() -> Self {
        Self {
            stripe: None,
            admitted: Admitted::closed(0, 0),
        }
    }

    /// Records the outcome once, gives a probe slot back and recycles the reference.
    #[inline]
    fn finish(&mut self, outcome: crate::classify::Outcome) {
        if let Some(stripe) = self.stripe.take() {
            stripe.core.complete(&self.admitted, outcome, stripe.index);
            self.admitted.release();
            crate::service::recycle(stripe);
        }
    }
}

impl<F, C, R> ResponseFuture<F, C, R> {
    pub(crate) fn called(future: F, call: Option<Call>, classifier: C, reject: R) -> Self {
        Self {
            kind: Kind::Called { future },
            call: call.unwrap_or_else(Call::none),
            classifier,
            reject,
        }
    }

    pub(crate) fn rejected(open: CircuitOpen, classifier: C, reject: R) -> Self {
        Self {
            kind: Kind::Rejected { open: Some(open) },
            call: Call::none(),
            classifier,
            reject,
        }
    }
}

impl<F, T, E, C, R> Future for ResponseFuture<F, C, R>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    R: Reject<T, E>,
{
    type Output = Result<T, R::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                if this.call.stripe.is_some() {
                    this.call.finish(this.classifier.classify(result.as_ref()));
                }
                Poll::Ready(result.map_err(|e| this.reject.map_error(e)))
            }
            KindProj::Rejected { open } => {
                let open = open.take().expect("ResponseFuture polled after completion");
                Poll::Ready(this.reject.reject(open))
            }
        }
    }
}

impl<F, C, R> fmt::Debug for ResponseFuture<F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .field("recorded", &self.call.stripe.is_some())
            .finish_non_exhaustive()
    }
}
