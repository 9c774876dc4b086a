//! What a client hears when the message service answers with an error.

use std::borrow::Cow;

use axum::extract::ws::Message;
use wsguard_config::{ConfigSource, ConnectionConfig, DedupConfig};

use crate::BoxError;
use crate::inbound::ConnInfo;

/// What the connection does with one outcome.
#[derive(Debug)]
pub(crate) enum Action {
    Nothing,
    Reply(Message),
    #[allow(dead_code)] // until the breaker's rejection maps to a close
    Close {
        code: u16,
        reason: Cow<'static, str>,
    },
}

/// Maps service errors to frames or closes, as the (live) config says.
#[derive(Debug, Clone)]
pub(crate) struct Replies {
    #[allow(dead_code)]
    pub(crate) connection: ConfigSource<ConnectionConfig>,
    #[allow(dead_code)]
    pub(crate) dedup: ConfigSource<DedupConfig>,
}

impl Replies {
    pub(crate) fn for_error(&self, conn: &ConnInfo, err: &BoxError) -> Action {
        tracing::warn!(conn = %conn.id, client = %conn.client_id, error = %err, "message service error");
        Action::Reply(error_frame("handler_error", None))
    }
}

/// `{"type":"error","error":KIND}` plus `retry_after_ms` when known.
pub(crate) fn error_frame(kind: &str, retry_after_ms: Option<u64>) -> Message {
    let mut frame = serde_json::json!({ "type": "error", "error": kind });
    if let Some(ms) = retry_after_ms {
        frame["retry_after_ms"] = ms.into();
    }
    Message::text(frame.to_string())
}
