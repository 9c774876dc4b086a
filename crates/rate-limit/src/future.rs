//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use wsguard_policy::{Reject, Rejection};

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the inner call, or the rejection
    /// of a call over its limit.
    pub struct ResponseFuture<F, R> {
        #[pin]
        state: State<F>,
        rejection: R,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called {
            #[pin]
            future: F,
        },
        Limited {
            rejection: Option<Rejection>,
            // Boxed: only refused calls pay for a timer (`rate_limit.hold_refused`).
            hold: Option<Pin<Box<tokio::time::Sleep>>>,
        },
    }
}

impl<F, R> ResponseFuture<F, R> {
    pub(crate) fn called(future: F, rejection: R) -> Self {
        Self {
            state: State::Called { future },
            rejection,
        }
    }

    pub(crate) fn limited(limited: Rejection, rejection: R, hold: Option<Duration>) -> Self {
        Self {
            state: State::Limited {
                rejection: Some(limited),
                hold: hold.map(|wait| Box::pin(tokio::time::sleep(wait))),
            },
            rejection,
        }
    }
}

impl<F, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "Called",
            State::Limited { .. } => "Limited",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<F, T, E, R> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<T, E>>,
    R: Reject<T, E>,
{
    type Output = Result<T, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Called { future } => future
                .poll(cx)
                .map(|outcome| outcome.map_err(|e| this.rejection.map_error(e))),
            StateProj::Limited { rejection, hold } => {
                if let Some(sleep) = hold {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    *hold = None;
                }
                let limited = rejection.take().expect("polled after completion");
                Poll::Ready(this.rejection.reject(limited))
            }
        }
    }
}
