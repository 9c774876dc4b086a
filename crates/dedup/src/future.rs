//! The response future of [`Dedup`](crate::Dedup).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::policy::DedupPolicy;
use crate::shared::{Admit, Check, ClaimGuard, Rejection, Shared};
use crate::store::BoxClaimFuture;

pin_project! {
    /// The response future of [`Dedup`](crate::Dedup). Dropping it before the inner call
    /// finished releases the key (with `release_on_failure`), as a failure would.
    pub struct ResponseFuture<S: Service<Req>, Req, P> {
        #[pin]
        state: State<S, Req>,
        guard: Option<ClaimGuard>,
        policy: P,
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

impl<S: Service<Req>, Req, P> ResponseFuture<S, Req, P> {
    pub(crate) fn called(
        future: S::Future,
        guard: Option<ClaimGuard>,
        policy: P,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Called { future },
            guard,
            policy,
            shared,
        }
    }

    pub(crate) fn rejected(rejection: Rejection, policy: P, shared: Arc<Shared>) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
            guard: None,
            policy,
            shared,
        }
    }

    pub(crate) fn claiming(
        claim: BoxClaimFuture,
        check: Check,
        service: S,
        request: Req,
        policy: P,
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
            policy,
            shared,
        }
    }
}

impl<S: Service<Req>, Req, P> fmt::Debug for ResponseFuture<S, Req, P> {
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

impl<S, Req, P> Future for ResponseFuture<S, Req, P>
where
    S: Service<Req>,
    P: DedupPolicy<S::Response, S::Error>,
{
    type Output = Result<S::Response, P::Error>;

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
                        if this.policy.is_failure(&outcome) {
                            drop(guard);
                        } else {
                            guard.keep();
                        }
                    }
                    return Poll::Ready(outcome.map_err(|e| this.policy.inner_error(e)));
                }
                StateProj::Rejected { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    let policy = &*this.policy;
                    return Poll::Ready(this.shared.config.with(|cfg| match rejection {
                        Rejection::Duplicate(d) => policy.duplicate(d, cfg),
                        Rejection::Unavailable(e) => policy.unavailable(e, cfg),
                    }));
                }
            }
        }
    }
}
