//! The response future of [`Dedup`](crate::Dedup).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use wsguard_policy::{Classify, Outcome, Reject, Rejection};

use crate::shared::{Admit, Check, ClaimGuard, Shared};
use crate::store::BoxClaimFuture;

pin_project! {
    /// The response future of [`Dedup`](crate::Dedup). Dropping it before the inner call
    /// finished releases the key (with `release_on_failure`), as a failure would.
    pub struct ResponseFuture<S: Service<Req>, Req, C, R> {
        #[pin]
        state: State<S, Req>,
        guard: Option<ClaimGuard>,
        policies: Policies<C, R>,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        Claiming {
            claim: BoxClaimFuture,
            check: Check,
            service: Option<S>,
            request: Option<Req>,
        },
        Called {
            #[pin]
            future: S::Future,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
    }
}

/// The layer's classifier and rejection, carried by each call.
#[derive(Debug, Clone)]
pub(crate) struct Policies<C, R> {
    pub(crate) classifier: C,
    pub(crate) rejection: R,
}

impl<S: Service<Req>, Req, C, R> ResponseFuture<S, Req, C, R> {
    pub(crate) fn called(
        future: S::Future,
        guard: Option<ClaimGuard>,
        policies: Policies<C, R>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Called { future },
            guard,
            policies,
            shared,
        }
    }

    pub(crate) fn rejected(
        rejection: Rejection,
        policies: Policies<C, R>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
            guard: None,
            policies,
            shared,
        }
    }

    pub(crate) fn claiming(
        claim: BoxClaimFuture,
        check: Check,
        service: S,
        request: Req,
        policies: Policies<C, R>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Claiming {
                claim,
                check,
                service: Some(service),
                request: Some(request),
            },
            guard: None,
            policies,
            shared,
        }
    }
}

impl<S: Service<Req>, Req, C, R> fmt::Debug for ResponseFuture<S, Req, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Claiming { .. } => "Claiming",
            State::Called { .. } => "Called",
            State::Rejected { .. } => "Rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, R> Future for ResponseFuture<S, Req, C, R>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    R: Reject<S::Response, S::Error>,
{
    type Output = Result<S::Response, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Claiming {
                    claim,
                    check,
                    service,
                    request,
                } => {
                    let answer = ready!(claim.as_mut().poll(cx));
                    match this.shared.admit(check, answer) {
                        Admit::Call(guard) => {
                            *this.guard = guard;
                            let mut service = service.take().expect("polled after completion");
                            let request = request.take().expect("polled after completion");
                            let future = service.call(request);
                            this.state.set(State::Called { future });
                        }
                        Admit::Reject(rejection) => this.state.set(State::Rejected {
                            rejection: Some(rejection),
                        }),
                    }
                }
                StateProj::Called { future } => {
                    let outcome = ready!(future.poll(cx));
                    if let Some(guard) = this.guard.take() {
                        // A message that failed or was turned away further in was not handled:
                        // its key goes, so that a retry is not taken for a duplicate.
                        match this.policies.classifier.classify(outcome.as_ref()) {
                            Outcome::Failure | Outcome::Rejected => drop(guard),
                            Outcome::Success | Outcome::Duplicate => guard.keep(),
                        }
                    }
                    let rejection = &this.policies.rejection;
                    return Poll::Ready(outcome.map_err(|e| rejection.map_error(e)));
                }
                StateProj::Rejected { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    return Poll::Ready(this.policies.rejection.reject(rejection));
                }
            }
        }
    }
}
