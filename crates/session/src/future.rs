//! Future types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::error::BoxError;
use crate::store::{MemorySessionStore, SessionStore};

/// The response future of [`SessionSender`](crate::SessionSender): the message's `seq` once
/// it is logged.
pub struct SendFuture<S = MemorySessionStore>(pub(crate) crate::sender::SendFuture<S>);

impl<S> fmt::Debug for SendFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendFuture")
    }
}

impl<S: SessionStore> Future for SendFuture<S> {
    type Output = Result<u64, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(Pin::new(&mut self.0).poll(cx));
        Poll::Ready(result.map_err(Into::into))
    }
}
