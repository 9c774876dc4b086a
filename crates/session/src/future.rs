//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::error::{BoxError, SessionGone};
use crate::sessions::Sessions;
use crate::store::{Appended, SessionStore, SharedSessionStore, StoreFuture};

/// The response future of [`SessionSender`](crate::SessionSender): the message's `seq` once
/// it is logged.
pub struct SendFuture<S = SharedSessionStore> {
    append: StoreFuture<Option<Appended>>,
    sessions: Sessions<S>,
}

impl<S> SendFuture<S> {
    pub(crate) fn new(append: StoreFuture<Option<Appended>>, sessions: Sessions<S>) -> Self {
        Self { append, sessions }
    }

    /// The same future with the error unboxed.
    pub(crate) fn logged(self) -> Logged<S> {
        Logged(self)
    }
}

impl<S> fmt::Debug for SendFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture")
            .field("append", &self.append)
            .finish_non_exhaustive()
    }
}

impl<S: SessionStore> SendFuture<S> {
    fn poll_logged(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, SessionGone>> {
        let appended = ready!(Pin::new(&mut self.append).poll(cx)).map_err(SessionGone::store)?;
        Poll::Ready(self.sessions.appended(appended, None))
    }
}

impl<S: SessionStore> Future for SendFuture<S> {
    type Output = Result<u64, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_logged(cx).map_err(Into::into)
    }
}

/// [`SendFuture`] answering the [`SessionGone`] itself.
pub(crate) struct Logged<S>(SendFuture<S>);

impl<S: SessionStore> Future for Logged<S> {
    type Output = Result<u64, SessionGone>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_logged(cx)
    }
}
