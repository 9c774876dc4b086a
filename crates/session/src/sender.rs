//! Sending to a session whether or not its client is connected.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::data::MessageData;
use crate::error::{BoxError, SessionGone};
use crate::future::SendFuture;
use crate::sessions::Sessions;
use crate::store::{SessionStore, SharedSessionStore, Target};
use crate::token::SessionToken;

#[derive(Debug, Clone)]
pub(crate) enum SenderTarget {
    Session(SessionToken),
    Client(Arc<str>),
}

/// Logs messages for a session, connected or not: a live connection is woken and sends them,
/// a detached session delivers them on resume.
///
/// A `tower::Service` of anything that converts into a [`MessageData`] (`String`, `&str`,
/// `serde_json::Value`, `Bytes`...), answering the message's `seq`; the error is a
/// [`SessionGone`] when there is no such session. It is always ready: the session log's bounds
/// apply, never backpressure. Made by [`Sessions::sender_for_client`] (which follows the
/// client's newest session at each call) and [`Sessions::sender_for_session`].
pub struct SessionSender<S = SharedSessionStore> {
    sessions: Sessions<S>,
    target: SenderTarget,
}

impl<S> Clone for SessionSender<S> {
    fn clone(&self) -> Self {
        Self {
            sessions: self.sessions.clone(),
            target: self.target.clone(),
        }
    }
}

impl<S> fmt::Debug for SessionSender<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSender")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl<S: SessionStore> SessionSender<S> {
    pub(crate) fn new(sessions: Sessions<S>, target: SenderTarget) -> Self {
        Self { sessions, target }
    }

    /// Logs `payload` and returns its `seq`.
    pub async fn send(&self, payload: impl Into<MessageData>) -> Result<u64, SessionGone> {
        self.start(payload.into()).logged().await
    }

    fn target(&self) -> Target<'_> {
        match &self.target {
            SenderTarget::Session(token) => Target::Session(token),
            SenderTarget::Client(client) => Target::Client(client),
        }
    }

    fn start(&self, payload: MessageData) -> SendFuture<S> {
        SendFuture::new(
            self.sessions.start_append(self.target(), payload),
            self.sessions.clone(),
        )
    }
}

impl<S: SessionStore> SessionSender<S> {
    /// Logs `payload` without waiting, from synchronous code: its `seq` when the store answers
    /// at once (the memory store), `None` when it answers later (a network store).
    ///
    /// In the second case the message's place in the log is already fixed (see
    /// [`SessionStore::append`]), so messages sent one after another keep their order; a
    /// message the store then fails to log, or that finds no session, is reported in the log
    /// (WARN) rather than to the caller. Needs a tokio runtime for that case.
    pub fn send_now(&self, payload: impl Into<MessageData>) -> Result<Option<u64>, SessionGone> {
        let append = self.sessions.start_append(self.target(), payload.into());
        self.sessions.append_now(append, None)
    }
}

impl<S: SessionStore, M: Into<MessageData>> Service<M> for SessionSender<S> {
    type Response = u64;
    type Error = BoxError;
    type Future = SendFuture<S>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: M) -> Self::Future {
        self.start(message.into())
    }
}
