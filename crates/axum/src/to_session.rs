//! Sending [`Message`]s to a session whether or not its client is connected.

use std::fmt;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::extract::ws::Message;
use futures_util::future::Either;
use tower_service::Service;
use wsguard_session::future::SendFuture;
use wsguard_session::{MessageData, SessionSender};

use crate::BoxError;

/// Sends to one `wsguard.v1` session, or to a client's newest session, whether or not its
/// client is connected: what [`Sender`](crate::Sender) is to a connection, made by
/// [`WsRoute::sender_for_client`](crate::WsRoute::sender_for_client) and
/// [`WsRoute::sender_for_session`](crate::WsRoute::sender_for_session).
///
/// A `tower::Service<Message>`, so the layers that wrap a connection's sending side wrap this
/// one too. A text or binary message is logged in the session: the connection attached to it
/// sends it, or the client gets it when it resumes. The response is the message's `seq`.
///
/// It fails with [`SessionGone`](crate::SessionGone) when there is no such session
/// (never opened, expired, evicted, or a client without one), and with [`NotData`] for ping,
/// pong and close, which belong to one connection and are never logged. It is always ready:
/// the session log's bounds apply (the oldest messages are dropped and the client is told
/// exactly how many on resume), never backpressure.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::ServiceExt;
/// use wsguard_axum::{BoxError, Inbound, Message, WsRoute};
/// use wsguard_config::StabilityConfig;
///
/// let handler = tower::service_fn(|_: Inbound| async { Ok::<_, BoxError>(None::<Message>) });
/// let route = WsRoute::new(handler, StabilityConfig::development());
/// // No session for this client yet: nothing is logged, and the caller is told.
/// let sent = route.sender_for_client("alice").oneshot(Message::text("hello")).await;
/// let err = sent.unwrap_err();
/// assert!(err.is::<wsguard_axum::SessionGone>(), "{err}");
/// # }
/// ```
#[derive(Clone)]
pub struct SendToSession {
    inner: SessionSender,
}

impl fmt::Debug for SendToSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SendToSession").field(&self.inner).finish()
    }
}

impl SendToSession {
    pub(crate) fn new(inner: SessionSender) -> Self {
        Self { inner }
    }
}

/// A [`Sessions`](crate::Sessions) sender
/// ([`sender_for_client`](crate::Sessions::sender_for_client),
/// [`sender_for_session`](crate::Sessions::sender_for_session)) as a service of [`Message`]s.
impl From<SessionSender> for SendToSession {
    fn from(inner: SessionSender) -> Self {
        Self::new(inner)
    }
}

impl Service<Message> for SendToSession {
    type Response = u64;
    type Error = BoxError;
    type Future = Either<SendFuture, Ready<Result<u64, BoxError>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        match data(message) {
            Ok(payload) => Either::Left(self.inner.call(payload)),
            Err(message) => Either::Right(ready(Err(NotData(kind(&message)).into()))),
        }
    }
}

/// The payload a session logs for `message`: its text or bytes. Ping, pong and close are not
/// data and come back.
pub(crate) fn data(message: Message) -> Result<MessageData, Message> {
    match message {
        Message::Text(text) => Ok(MessageData::from(text.as_str())),
        Message::Binary(bytes) => Ok(MessageData::Binary(bytes)),
        other => Err(other),
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
    }
}

/// A ping, pong or close given to a [`SendToSession`]: these belong to one connection and are
/// not logged in a session.
#[derive(Debug)]
pub struct NotData(&'static str);

impl fmt::Display for NotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} message is not logged in a session: only text and binary are",
            self.0
        )
    }
}

impl std::error::Error for NotData {}
