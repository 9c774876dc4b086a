//! The wsguard layers' request and classifier traits, for WebSocket messages.

use std::borrow::Cow;

use axum::extract::ws::Message;
use wsguard_circuit_breaker::classify::{Classify, Outcome as BreakerOutcome};
use wsguard_circuit_breaker::error::CircuitOpen;
use wsguard_dedup::error::StoreUnavailable;
use wsguard_dedup::{DedupRequest, Payload};
use wsguard_metrics::{ClassifyOutcome, ClientIdOptions, ClientRequest, ConnectionSlot, Outcome};

use crate::BoxError;
use crate::inbound::Inbound;
use crate::outgoing::OutgoingMessage;
use crate::reply::find;

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

/// Classifies message outcomes for the metrics layer and the circuit breaker.
///
/// - Metrics: a reply (or none) is `ok`; a breaker rejection (`CircuitOpen`) and a fail-closed
///   dedup store's rejection (`StoreUnavailable`) are `rejected`; a dedup `Duplicate` is
///   `duplicate`; any other error is `error`.
/// - Breaker: errors fail, except rejections and duplicates, which are ignored (they say
///   nothing about the handler's health, wherever the dedup layer sits in the stack).
///
/// ```
/// use wsguard_axum::MessageClassifier;
/// use wsguard_config::{MetricsConfig, CircuitBreakerConfig};
/// use wsguard_metrics::{MetricsLayer, MetricsRegistry};
/// use wsguard_circuit_breaker::CircuitBreakerLayer;
///
/// let metrics = MetricsLayer::new(MetricsRegistry::new(MetricsConfig::testing()))
///     .classifier(MessageClassifier);
/// let breaker = CircuitBreakerLayer::new(CircuitBreakerConfig::testing())
///     .classifier(MessageClassifier);
/// # let _ = (metrics, breaker);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageClassifier;

impl MessageClassifier {
    fn error_outcome(err: &BoxError) -> Outcome {
        if find::<CircuitOpen>(&**err).is_some() || find::<StoreUnavailable>(&**err).is_some() {
            Outcome::Rejected
        } else if crate::reply::is_duplicate(&**err) {
            Outcome::Duplicate
        } else {
            Outcome::Error
        }
    }
}

impl<T> ClassifyOutcome<T, BoxError> for MessageClassifier {
    fn classify(&self, result: &Result<T, BoxError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(err) => Self::error_outcome(err),
        }
    }
}

impl<T> Classify<T, BoxError> for MessageClassifier {
    fn classify(&self, result: Result<&T, &BoxError>) -> BreakerOutcome {
        match result {
            Ok(_) => BreakerOutcome::Success,
            Err(err) => match Self::error_outcome(err) {
                Outcome::Rejected | Outcome::Duplicate => BreakerOutcome::Ignored,
                _ => BreakerOutcome::Failure,
            },
        }
    }
}
