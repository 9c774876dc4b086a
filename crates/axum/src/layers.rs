//! The wsguard layers' request traits and the shared classifier, for WebSocket messages.

use std::borrow::Cow;

use axum::extract::ws::Message;
use wsguard_dedup::{DedupRequest, Payload};
use wsguard_metrics::{ClientIdOptions, ClientRequest, ConnectionSlot};
use wsguard_policy::{Classify, Outcome};

use crate::BoxError;
use crate::inbound::Inbound;
use crate::outgoing::OutgoingMessage;

/// The client id is the connection's; the size is the payload's; the connection registers with
/// the registry through its slot, and the adapter releases it on close.
impl ClientRequest for Inbound {
    fn client_id(&self, _options: &ClientIdOptions) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.conn.client_id()))
    }

    fn size(&self) -> Option<u64> {
        u64::try_from(self.len()).ok()
    }

    fn connection_slot(&self) -> Option<&ConnectionSlot> {
        Some(&self.conn.slot)
    }
}

/// Text and binary payloads are deduplicated (control frames never reach the service); the
/// connection scope is the connection id and the client scope its client id. A WebSocket message
/// has no headers, so `key = "header"` finds no key (and falls back to the fingerprint when
/// `fingerprint_when_missing` is on).
impl DedupRequest for Inbound {
    fn payload(&self) -> Option<Payload<'_>> {
        payload_of(&self.message)
    }

    fn connection_id(&self) -> Option<u64> {
        Some(self.conn.id().get())
    }

    fn client_id(&self) -> Option<&str> {
        Some(self.conn.client_id())
    }
}

/// Sends count under the connection's client, with their payload size; the sending side does
/// not register the connection (the inbound stack does).
impl ClientRequest for OutgoingMessage {
    fn client_id(&self, _options: &ClientIdOptions) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.conn.client_id()))
    }

    fn size(&self) -> Option<u64> {
        let len = match &self.message {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
            _ => 0,
        };
        u64::try_from(len).ok()
    }
}

/// A re-send of the same content on the same connection is a duplicate.
impl DedupRequest for OutgoingMessage {
    fn payload(&self) -> Option<Payload<'_>> {
        payload_of(&self.message)
    }

    fn connection_id(&self) -> Option<u64> {
        Some(self.conn.id().get())
    }

    fn client_id(&self) -> Option<&str> {
        Some(self.conn.client_id())
    }
}

fn payload_of(message: &Message) -> Option<Payload<'_>> {
    match message {
        Message::Text(text) => Some(Payload::Text(text.as_str())),
        Message::Binary(bytes) => Some(Payload::Binary(bytes)),
        _ => None,
    }
}

/// Classifies message outcomes for every wsguard layer: the one classifier of the stack.
///
/// A reply (or none) is a success; a breaker rejection (`CircuitOpen`), a fail-closed dedup
/// store's rejection (`StoreUnavailable`) and a rate limit's refusal (`RateLimited`) are
/// rejections; a dedup `Duplicate` is a duplicate;
/// any other error is a failure. So the metrics count `ok`, `rejected`, `duplicate` and `error`,
/// the breaker counts only the handler's failures (rejections and duplicates say nothing about
/// its health, wherever the dedup layer sits in the stack), and the dedup layer forgets a
/// message that failed or was rejected further in, so that its retry is handled.
///
/// ```
/// use wsguard_axum::MessageClassifier;
/// use wsguard_config::{CircuitBreakerConfig, DedupConfig, MetricsConfig};
/// use wsguard_circuit_breaker::CircuitBreakerLayer;
/// use wsguard_dedup::DedupLayer;
/// use wsguard_metrics::{MetricsLayer, MetricsRegistry};
///
/// let metrics = MetricsLayer::new(MetricsRegistry::new(MetricsConfig::testing()))
///     .classifier(MessageClassifier);
/// let dedup = DedupLayer::new(DedupConfig::testing()).classifier(MessageClassifier);
/// let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::testing())
///     .classifier(MessageClassifier);
/// # let _ = (metrics, dedup, breaker);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageClassifier;

impl<T> Classify<T, BoxError> for MessageClassifier {
    fn classify(&self, result: Result<&T, &BoxError>) -> Outcome {
        let Err(err) = result else {
            return Outcome::Success;
        };
        if crate::reply::is_rejection(&**err) {
            Outcome::Rejected
        } else if crate::reply::is_duplicate(&**err) {
            Outcome::Duplicate
        } else {
            Outcome::Failure
        }
    }
}
