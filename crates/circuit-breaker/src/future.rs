//! Future types.

use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::breaker::{is_probe, is_timed};
use crate::error::CircuitOpen;
use crate::service::Recorder;
use wsguard_policy::{Classify, Outcome, Reason, Reject, Rejection};

pin_project! {
    /// Response future of [`CircuitBreaker`](crate::CircuitBreaker).
    ///
    /// Dropping it before it finishes records nothing and gives a half-open probe slot back.
    pub struct ResponseFuture<F, C, R> {
        // Records the outcome of an admitted call; empty for calls that record nothing. First,
        // so that it is dropped first: its drop cannot unwind, so the inner future's drop needs
        // no landing pad.
        call: Call,
        #[pin]
        kind: Kind<F>,
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
    // `Some` until the call is finished. A timed closed call's reference then goes back to the
    // thread's spare slot. An untimed one's is dropped, and so is a probe's (its own recorder,
    // which holds the probe slot, so dropping it gives the slot back). A future dropped
    // unfinished lets go of it through `release`, which cannot unwind, so that the future's drop
    // stays small enough to inline.
    recorder: Option<ManuallyDrop<Arc<Recorder>>>,
    /// State word at admission.
    word: u64,
    /// Admission time for the slow-call check, or `NOT_TIMED`.
    start: u64,
}

impl Call {
    pub(crate) fn new(recorder: Arc<Recorder>, word: u64, start: u64) -> Self {
        Self {
            recorder: Some(ManuallyDrop::new(recorder)),
            word,
            start,
        }
    }

    /// A call that records nothing.
    fn none() -> Self {
        Self {
            recorder: None,
            word: 0,
            start: 0,
        }
    }

    /// Records the outcome once and lets go of the reference.
    #[inline]
    fn finish(&mut self, outcome: Outcome) {
        if let Some(recorder) = self.recorder.take().map(ManuallyDrop::into_inner) {
            debug_assert_eq!(is_probe(self.word), recorder.probe.is_some());
            recorder
                .core
                .complete(self.word, self.start, outcome, &recorder);
            if is_timed(self.start) && !is_probe(self.word) {
                crate::service::recycle(recorder);
            }
        }
    }
}

impl Drop for Call {
    #[inline]
    fn drop(&mut self) {
        if self.recorder.is_some() {
            release(&mut self.recorder);
        }
    }
}

/// Lets go of the reference of a call dropped unfinished. It cannot unwind (a panic here would
/// abort; freeing a breaker's state does not panic), so dropping a response future needs no
/// landing pad and stays small enough to inline.
#[cold]
#[inline(never)]
#[allow(improper_ctypes_definitions)] // called from Rust only
extern "C" fn release(recorder: &mut Option<ManuallyDrop<Arc<Recorder>>>) {
    drop(recorder.take().map(ManuallyDrop::into_inner));
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
                if this.call.recorder.is_some() {
                    this.call.finish(this.classifier.classify(result.as_ref()));
                }
                Poll::Ready(result.map_err(|e| this.reject.map_error(e)))
            }
            KindProj::Rejected { open } => {
                let open = open.take().expect("ResponseFuture polled after completion");
                let wait = open.retry_after();
                let rejection = Rejection::new(Reason::CircuitOpen, open).with_retry_after(wait);
                Poll::Ready(this.reject.reject(rejection))
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
            .field("recorded", &self.call.recorder.is_some())
            .finish_non_exhaustive()
    }
}
