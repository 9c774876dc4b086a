//! What a client hears when the message service answers with an error.

use std::borrow::Cow;

use axum::extract::ws::Message;
use wsguard_circuit_breaker::error::CircuitOpen;
use wsguard_config::{
    ConfigSource, ConnectionConfig, DedupConfig, DuplicateAction, RejectionAction,
};
use wsguard_dedup::error::{Duplicate, StoreUnavailable};

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

/// `{"type":"error","error":KIND}` plus `retry_after_ms` when known.
pub(crate) fn error_frame(kind: &str, retry_after_ms: Option<u64>) -> Message {
    let mut frame = serde_json::json!({ "type": "error", "error": kind });
    if let Some(ms) = retry_after_ms {
        frame["retry_after_ms"] = ms.into();
    }
    Message::text(frame.to_string())
}

/// Whether `err` says "duplicate message".
pub(crate) fn is_duplicate(err: &(dyn std::error::Error + 'static)) -> bool {
    find::<Duplicate>(err).is_some()
}
