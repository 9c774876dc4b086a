//! The sending direction as a request type, so wsguard layers can wrap sends.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::Message;
use tower_service::Service;

use crate::BoxError;
use crate::inbound::ConnInfo;
use crate::sender::SendStatus;

/// One message to send on a connection: the request type of the sending side.
///
/// [`Sender`](crate::Sender) takes bare `Message`s; `OutgoingMessage` carries the connection too,
/// so the layers' request traits (client id, size, payload for dedup) work on sends. Wrap
/// [`SendToConnection`] with them:
///
/// ```
/// use tower::ServiceBuilder;
/// use wsguard_axum::{MessageClassifier, SendToConnection};
/// use wsguard_config::{DedupConfig, MetricsConfig};
/// use wsguard_dedup::DedupLayer;
/// use wsguard_metrics::{Direction, MetricsLayer, MetricsRegistry};
///
/// let registry = MetricsRegistry::new(MetricsConfig::testing());
/// let send = ServiceBuilder::new()
///     .layer(MetricsLayer::new(registry).direction(Direction::Outbound).classifier(MessageClassifier))
///     .layer(DedupLayer::new(DedupConfig::testing())) // suppress re-sends
///     .service(SendToConnection);
/// # let _ = send;
/// ```
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// The message to send.
    pub message: Message,
    /// The connection to send it on.
    pub conn: Arc<ConnInfo>,
}

impl OutgoingMessage {
    /// `message` to send on `conn`.
    pub fn new(message: impl Into<Message>, conn: Arc<ConnInfo>) -> Self {
        Self {
            message: message.into(),
            conn,
        }
    }
}

/// Queues each [`OutgoingMessage`] on its connection's send queue (overflow policy applies).
#[derive(Debug, Clone, Copy, Default)]
pub struct SendToConnection;

impl Service<OutgoingMessage> for SendToConnection {
    type Response = SendStatus;
    type Error = BoxError;
    type Future = Ready<Result<SendStatus, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: OutgoingMessage) -> Self::Future {
        ready(
            request
                .conn
                .sender()
                .send(request.message)
                .map_err(Into::into),
        )
    }
}
