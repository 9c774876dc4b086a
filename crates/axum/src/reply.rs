//! What a client hears when the message service answers with an error.

use std::borrow::Cow;

use axum::extract::ws::Message;
use wsguard_circuit_breaker::error::CircuitOpen;
use wsguard_config::{
    ConfigSource, ConnectionConfig, DedupConfig, DuplicateAction, RateLimitAction, RejectionAction,
};
use wsguard_dedup::error::{Duplicate, StoreUnavailable};
use wsguard_rate_limit::error::RateLimited;

use crate::BoxError;
use crate::close;
use crate::inbound::ConnInfo;
use crate::warn_limit::{WarnLimit, limited_warn};

/// What the connection does with one outcome.
#[derive(Debug)]
pub(crate) enum Action {
    Nothing,
    Reply(Message),
    Close {
        code: u16,
        reason: Cow<'static, str>,
    },
}

/// Maps service errors to frames or closes, as the (live) config says.
#[derive(Debug, Clone)]
pub(crate) struct Replies {
    pub(crate) connection: ConfigSource<ConnectionConfig>,
    pub(crate) dedup: ConfigSource<DedupConfig>,
}

impl Replies {
    pub(crate) fn for_error(&self, conn: &ConnInfo, err: &BoxError) -> Action {
        if let Some(open) = find::<CircuitOpen>(&**err) {
            tracing::debug!(conn = %conn.id, client = %conn.client_id, "message rejected: {open}");
            return match self.connection.with(|c| c.on_rejection) {
                RejectionAction::ErrorFrame => {
                    let wait = u64::try_from(open.retry_after().as_millis()).unwrap_or(u64::MAX);
                    Action::Reply(error_frame("circuit_open", Some(wait)))
                }
                RejectionAction::Close => Action::Close {
                    code: close::TRY_AGAIN_LATER,
                    reason: "circuit open, try again later".into(),
                },
            };
        }
        if let Some(duplicate) = find::<Duplicate>(&**err) {
            tracing::trace!(conn = %conn.id, "{duplicate}");
            return match self.dedup.with(|d| d.on_duplicate) {
                DuplicateAction::Drop => Action::Nothing,
                DuplicateAction::Ack => {
                    let age = u64::try_from(duplicate.age().as_millis()).unwrap_or(u64::MAX);
                    let frame = serde_json::json!({ "type": "duplicate", "age_ms": age });
                    Action::Reply(Message::text(frame.to_string()))
                }
            };
        }
        if let Some(limited) = find::<RateLimited>(&**err) {
            tracing::debug!(conn = %conn.id, client = %conn.client_id, "message rejected: {limited}");
            // The action travels with the refusal: `rate_limit.on_limit` when it was refused.
            return match limited.action() {
                RateLimitAction::Drop => Action::Nothing,
                RateLimitAction::ErrorFrame => {
                    // Rounded up: a client that waits exactly this long is not refused again.
                    let wait = limited.retry_after().map(|wait| {
                        u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
                    });
                    Action::Reply(error_frame("rate_limited", wait))
                }
                RateLimitAction::Close => Action::Close {
                    code: close::POLICY_VIOLATION,
                    reason: "rate limit exceeded".into(),
                },
            };
        }
        if find::<StoreUnavailable>(&**err).is_some() {
            // The dedup layer logs its store's failures itself, rate-limited.
            tracing::debug!(conn = %conn.id, client = %conn.client_id, "message rejected: {err}");
            return Action::Reply(error_frame("unavailable", None));
        }
        static WARN: WarnLimit = WarnLimit::new();
        limited_warn!(WARN, conn = %conn.id, client = %conn.client_id, error = %err, "message service error");
        Action::Reply(error_frame("handler_error", None))
    }
}

/// `err` or the first error of its source chain that is an `E`.
pub(crate) fn find<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

/// `{"type":"error","error":KIND}` plus `retry_after_ms` when known: `circuit_open`,
/// `rate_limited` (no `retry_after_ms` when the message can never pass: it is larger than the
/// byte burst), `unavailable`, `handler_error`.
pub(crate) fn error_frame(kind: &str, retry_after_ms: Option<u64>) -> Message {
    let mut frame = serde_json::json!({ "type": "error", "error": kind });
    if let Some(ms) = retry_after_ms {
        frame["retry_after_ms"] = ms.into();
    }
    Message::text(frame.to_string())
}

/// Whether `err` is a refusal that says nothing about the service's health: an open breaker, a
/// dedup store failing closed, a rate limit.
pub(crate) fn is_rejection(err: &(dyn std::error::Error + 'static)) -> bool {
    find::<CircuitOpen>(err).is_some()
        || find::<StoreUnavailable>(err).is_some()
        || find::<RateLimited>(err).is_some()
}

/// Whether `err` says "duplicate message".
pub(crate) fn is_duplicate(err: &(dyn std::error::Error + 'static)) -> bool {
    find::<Duplicate>(err).is_some()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tower::{Layer, ServiceExt, service_fn};
    use wsguard_config::{OverflowPolicy, RateLimitConfig};
    use wsguard_rate_limit::RateLimitLayer;

    use super::*;
    use crate::inbound::{ConnectionId, Inbound};
    use crate::sender::Sender;

    fn conn() -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            id: ConnectionId::next(),
            client_id: Arc::from("alice"),
            peer_addr: None,
            route: Some(Arc::from("/ws")),
            sender: Sender::with_limits(8, 1 << 16, OverflowPolicy::DropNewest, None),
            slot: Arc::default(),
        })
    }

    /// The error of a message over a limit of one message (10 per second) with `on_limit`.
    async fn refusal(on_limit: RateLimitAction, text: &str) -> BoxError {
        let layer = RateLimitLayer::new(RateLimitConfig {
            messages_per_second: 10,
            messages_burst: 1,
            bytes_per_second: 1_000,
            bytes_burst: 10,
            on_limit,
            ..RateLimitConfig::default()
        });
        let svc = layer.layer(service_fn(|_: Inbound| async {
            Ok::<_, BoxError>(None::<Message>)
        }));
        let conn = conn();
        let message = |text: &str| Inbound::new(Message::text(text), conn.clone());
        if text.len() <= 10 {
            svc.clone().oneshot(message("first")).await.unwrap();
        }
        svc.oneshot(message(text)).await.unwrap_err()
    }

    fn replies() -> Replies {
        Replies {
            connection: ConfigSource::fixed(ConnectionConfig::testing()),
            dedup: ConfigSource::fixed(DedupConfig::testing()),
        }
    }

    fn frame(action: Action) -> serde_json::Value {
        match action {
            Action::Reply(Message::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_rate_limited_message_is_answered_as_its_action_says() {
        let (replies, conn) = (replies(), conn());

        let dropped = refusal(RateLimitAction::Drop, "again").await;
        assert!(matches!(
            replies.for_error(&conn, &dropped),
            Action::Nothing
        ));

        let framed = refusal(RateLimitAction::ErrorFrame, "again").await;
        let json = frame(replies.for_error(&conn, &framed));
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"], "rate_limited");
        let wait = json["retry_after_ms"].as_u64().unwrap();
        assert!((1..=100).contains(&wait), "{json}");

        let closed = refusal(RateLimitAction::Close, "again").await;
        match replies.for_error(&conn, &closed) {
            Action::Close { code, reason } => {
                assert_eq!(code, close::POLICY_VIOLATION);
                assert_eq!(reason, "rate limit exceeded");
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_message_larger_than_the_byte_burst_gets_no_retry_delay() {
        let err = refusal(RateLimitAction::ErrorFrame, "far more than ten bytes").await;
        let json = frame(replies().for_error(&conn(), &err));
        assert_eq!(json["error"], "rate_limited");
        assert!(json.get("retry_after_ms").is_none(), "{json}");
    }

    #[tokio::test]
    async fn a_rate_limit_refusal_is_a_rejection_not_a_failure() {
        let err = refusal(RateLimitAction::Drop, "again").await;
        assert!(is_rejection(&*err));
        assert!(!is_duplicate(&*err));
        let handler_error: BoxError = "handler failed".into();
        assert!(!is_rejection(&*handler_error));
    }
}
