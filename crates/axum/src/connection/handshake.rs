//! The server's side of the close handshake, and the log line every connection ends with.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::{Instant, timeout_at};

use super::write::Writes;
use crate::Sender;
use crate::close::{self, Ending};
use crate::inbound::ConnInfo;
use crate::warn_limit::{WarnLimit, limited_warn};

/// How the server's side of a close handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// The peer had gone already, or it was not the server that closed.
    NotTried,
    /// Our close frame went out and the peer answered (or hung up after reading it).
    Done,
    /// The peer did not take our close frame within `close_timeout` (it does not read).
    FrameNotTaken,
    /// Our close frame went out; no answer within `close_timeout`.
    NoAnswer,
    /// Writing the close frame failed: the peer had gone.
    PeerGone,
}

impl Handshake {
    /// The peer was given up on when `close_timeout` ran out.
    pub(super) fn timed_out(self) -> bool {
        matches!(self, Self::FrameNotTaken | Self::NoAnswer)
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::NotTried => "not tried",
            Self::Done => "done",
            Self::FrameNotTaken => "close frame not taken in time",
            Self::NoAnswer => "no answer in time",
            Self::PeerGone => "peer gone",
        }
    }
}

/// Sends what is still queued (unless the peer is closed for misbehaving), then the close frame
/// with `code` and `reason`, then reads until the peer answers; all within `close_timeout`.
pub(super) async fn close<St, Si>(
    stream: &mut St,
    sink: &mut Si,
    mut writes: Writes,
    out: &Sender,
    code: u16,
    reason: &str,
    close_timeout: Duration,
) -> Handshake
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    Si: Sink<Message, Error = axum::Error> + Unpin,
{
    // One deadline for the whole handshake: a client that does not read gets this long to take
    // what is ahead of the close frame and the frame itself.
    let deadline = Instant::now() + close_timeout;
    let sent = timeout_at(deadline, async {
        if !matches!(
            code,
            close::POLICY_VIOLATION | close::PROTOCOL_ERROR | close::INVALID_PAYLOAD
        ) {
            // Replies queued before the close still go out; to a client that does not read or
            // breaks the protocol, they do not.
            poll_fn(|cx| writes.poll_write(Pin::new(&mut *sink), out, usize::MAX, cx)).await?;
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        sink.send(Message::Close(Some(frame))).await
    })
    .await;
    match sent {
        Err(_) => Handshake::FrameNotTaken,
        Ok(Err(_)) => Handshake::PeerGone,
        // The peer's frames are read (and dropped) until its answer: closing a socket with
        // unread data resets it, and a reset may destroy our close frame before it is read.
        Ok(Ok(())) => match timeout_at(deadline, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await
        {
            Ok(()) => Handshake::Done,
            Err(_) => Handshake::NoAnswer,
        },
    }
}

/// Logs why the connection ended. Closes a client can cause at will go through a rate limit.
pub(super) fn log_close(conn: &ConnInfo, ending: &Ending, handshake: Handshake) {
    static WARN: WarnLimit = WarnLimit::new();
    let route = conn.route.as_deref().unwrap_or("");
    let handshake = handshake.as_str();
    match ending {
        Ending::Close { code, reason }
            if matches!(
                *code,
                close::INTERNAL_ERROR
                    | close::POLICY_VIOLATION
                    | close::PROTOCOL_ERROR
                    | close::INVALID_PAYLOAD
            ) =>
        {
            limited_warn!(WARN, conn = %conn.id, client = %conn.client_id, route, code, %reason, handshake, "websocket closed by server");
        }
        Ending::Close { code, reason } => {
            tracing::info!(conn = %conn.id, client = %conn.client_id, route, code, %reason, handshake, "websocket closed by server");
        }
        Ending::Peer { code, detail } => {
            tracing::info!(conn = %conn.id, client = %conn.client_id, route, code = code.unwrap_or(close::ABNORMAL_CLOSURE), %detail, "websocket closed by client");
        }
        Ending::Abort => {
            tracing::info!(conn = %conn.id, client = %conn.client_id, route, "websocket aborted by server (no close frame)");
        }
    }
}
