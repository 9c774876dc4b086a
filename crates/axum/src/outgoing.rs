//! The sending direction as a request type, so wsguard layers can wrap sends.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ws::Message;
use tower_service::Service;

use crate::BoxError;
use crate::inbound::ConnInfo;
use crate::outbound::Queued;

/// One message to send on a connection: the request type of the sending side.
///
/// [`Outbound`](crate::Outbound) takes bare `Message`s; `Outgoing` carries the connection too,
/// so the layers' request traits (client id, size, payload for dedup) work on sends. Wrap
/// [`SendOutgoing`] with them:
///
/// ```
/// use tower::ServiceBuilder;
/// use wsguard_axum::{MessageClassifier, SendOutgoing};
/// use wsguard_config::{DedupConfig, MetricsConfig};
/// use wsguard_dedup::DedupLayer;
/// use wsguard_metrics::{Direction, MetricsLayer, MetricsRegistry};
///
/// let registry = MetricsRegistry::new(MetricsConfig::testing());
/// let send = ServiceBuilder::new()
///     .layer(MetricsLayer::new(registry).direction(Direction::Outbound).classifier(MessageClassifier))
///     .layer(DedupLayer::new(DedupConfig::testing())) // suppress re-sends
///     .service(SendOutgoing);
/// # let _ = send;
/// ```
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message to send.
    pub message: Message,
    /// The connection to send it on.
    pub conn: Arc<ConnInfo>,
}

impl Outgoing {
    /// `message` to send on `conn`.
    pub fn new(message: impl Into<Message>, conn: Arc<ConnInfo>) -> Self {
        Self {
            message: message.into(),
            conn,
        }
    }
}

/// Queues each [`Outgoing`] on its connection's send queue (overflow policy applies).
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOutgoing;

impl Service<Outgoing> for SendOutgoing {
    type Response = Queued;
    type Error = BoxError;
    type Future = Ready<Result<Queued, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Outgoing) -> Self::Future {
        ready(
            request
                .conn
                .sender()
                .send(request.message)
                .map_err(Into::into),
        )
    }
}
