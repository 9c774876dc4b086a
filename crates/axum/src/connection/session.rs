//! The connection's side of a `wsguard.v1` session: the opening exchange, numbered inbound
//! messages, acknowledgements, and the outbound log written in `seq` order.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, timeout_at};
use wsguard_session::protocol::{
    ClientFrame, ClientFrameRef, ServerFrame, WireFrame, data_to_text, decode_binary,
};
use wsguard_session::store::Logged;
use wsguard_session::{Accept, CheckedJson, MessageData, Opened, Processing, Session, Sessions};

use super::WRITE_BATCH;
use crate::Sender;
use crate::close::{self, Ending};
use crate::inbound::ConnInfo;

/// What a connection needs to open a session: the route's registry and the client identity
/// sessions are bound to, when the route names its clients.
#[derive(Debug, Clone)]
pub(crate) struct Opening {
    pub(crate) sessions: Sessions,
    pub(crate) client: Option<Arc<str>>,
}

/// A connection's attached session.
pub(super) struct Live {
    pub(super) session: Session,
    /// The highest `seq` handed to the socket's queue.
    sent: u64,
    /// The log may hold messages after `sent`.
    dirty: bool,
    pub(super) ack_interval: Duration,
}

/// What a client frame asks of the connection.
pub(super) enum Admitted {
    /// A new message: call the service with it; report it processed when the call is done.
    Call(Message, Request),
    /// The client holds every message up to this `seq`.
    Ack(u64),
    /// A resend of a message processed or in flight: the next ack covers it.
    Resent,
}

/// A text frame after a session opened: a message (`id`, and its `data` if a JSON string, as
/// the text it stands for), or an ack.
enum TextFrame {
    Msg(u64, Option<String>),
    Ack(u64),
}

/// A client message in the service's hands.
pub(super) struct Request {
    /// Marks the message processed once the call is done (its reply logged).
    pub(super) guard: Processing,
    /// The message's `data` when it is JSON other than a string (the service got these bytes
    /// of the frame): a reply of that same text (an echo, a relay) is logged without being
    /// read again.
    pub(super) data: Option<CheckedJson>,
}

/// Reads the first frame (`hello` or `resume`) within `wait`, opens the session, and queues the
/// `session` frame and the replay. A refusal to open (`unavailable`) queues the frame and ends
/// the connection with 1013.
pub(super) async fn open<St>(
    stream: &mut St,
    conn: &ConnInfo,
    opening: &Opening,
    wait: Duration,
) -> Result<Live, Ending>
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let deadline = Instant::now() + wait;
    let mut peer_close = None;
    let text = loop {
        let Ok(frame) = timeout_at(deadline, stream.next()).await else {
            return Err(Ending::close(
                close::GOING_AWAY,
                "no hello or resume in time",
            ));
        };
        match frame {
            None => {
                let code =
                    peer_close.map(|code: Option<u16>| code.unwrap_or(close::NO_STATUS_RECEIVED));
                return Err(Ending::peer(code, "closed before hello or resume"));
            }
            Some(Err(err)) => return Err(super::read_error(err)),
            // tungstenite answers the close; the next read completes it and ends.
            Some(Ok(Message::Close(frame))) => peer_close = Some(frame.map(|f| f.code)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(Message::Binary(_))) => {
                return Err(protocol_error("the first frame must be hello or resume"));
            }
        }
    };
    let first =
        ClientFrame::parse(text.as_str()).map_err(|err| protocol_error(&err.to_string()))?;
    let Some(opened) = opening
        .sessions
        .open(&first, opening.client.as_deref())
        .await
    else {
        return Err(protocol_error("the first frame must be hello or resume"));
    };
    let out = &conn.sender;
    out.push_frame(Message::text(
        ServerFrame::Session(opened.frame().clone()).to_text(),
    ));
    match opened {
        Opened::Unavailable { .. } => Err(Ending::close(
            close::TRY_AGAIN_LATER,
            "no session available, try again later",
        )),
        Opened::Attached {
            session,
            frame,
            replay,
        } => {
            let mut sent = match first {
                ClientFrame::Resume { last, .. } if frame.resumed => last,
                _ => 0,
            };
            for logged in &replay {
                out.push_frame(wire(logged));
                sent = logged.seq;
            }
            let token = session.token();
            out.log_to(token, opening.sessions.sender_for_session(&token));
            tracing::debug!(
                conn = %conn.id, session = ?token, resumed = frame.resumed,
                reason = frame.reason.map_or("", |r| r.as_str()), replayed = replay.len(),
                "wsguard.v1 session attached"
            );
            Ok(Live {
                session,
                sent,
                dirty: true,
                ack_interval: opening.sessions.config().ack_interval,
            })
        }
    }
}

impl Live {
    /// Queues the next logged messages while the queue has room for a batch. A message the
    /// log dropped before it was written (a bound, while the client read too slowly) ends the
    /// connection with 1008: the client resumes and is told exactly what it lost.
    pub(super) async fn refill(&mut self, out: &Sender) -> Result<(), Ending> {
        if !self.dirty || out.len() >= WRITE_BATCH {
            return Ok(());
        }
        let batch = match self
            .session
            .read_after(self.sent, WRITE_BATCH - out.len())
            .await
        {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(%err, "session log read failed");
                return Err(Ending::close(close::INTERNAL_ERROR, "session store failed"));
            }
        };
        let Some(first) = batch.first() else {
            self.dirty = false;
            return Ok(());
        };
        if first.seq != self.sent + 1 {
            return Err(Ending::close(
                close::POLICY_VIOLATION,
                "client does not read (session log overflowed)",
            ));
        }
        for logged in &batch {
            out.push_frame(wire(logged));
            self.sent = logged.seq;
        }
        Ok(())
    }

    /// Waits until the log grows, or a newer connection takes the session over.
    pub(super) async fn changed(&mut self) -> Result<(), Ending> {
        self.session.changed().await;
        // A wake-up for an ack (a mark the store recorded) does not mean the log grew.
        self.dirty |= self.session.last_logged() > self.sent || self.session.take_reread();
        if self.session.is_superseded() {
            return Err(Ending::close(close::POLICY_VIOLATION, "superseded"));
        }
        if self.session.has_failed() {
            // The store lost (or may have lost) a step of this session: the client resumes
            // from what it holds, and resends what it does not know was processed.
            return Err(Ending::close(close::INTERNAL_ERROR, "session store failed"));
        }
        Ok(())
    }

    /// Reads a client frame.
    pub(super) fn admit(&mut self, message: Message) -> Result<Admitted, Ending> {
        let (id, message, data) = match message {
            Message::Text(text) => {
                // A JSON string's content is copied out; any other `data` is cut from the frame.
                let (read, data) =
                    CheckedJson::split(text, |text| match ClientFrameRef::parse(text) {
                        Ok(ClientFrameRef::Msg { id, data }) => {
                            let string = data.get().starts_with('"').then(|| data_to_text(data));
                            (Ok(TextFrame::Msg(id, string)), Some(data))
                        }
                        Ok(ClientFrameRef::Ack { seq }) => (Ok(TextFrame::Ack(seq)), None),
                        Ok(ClientFrameRef::Hello | ClientFrameRef::Resume { .. }) => {
                            (Err(protocol_error("the session is already open")), None)
                        }
                        Err(err) => (Err(protocol_error(&err.to_string())), None),
                    });
                let (id, string) = match read? {
                    TextFrame::Msg(id, string) => (id, string),
                    TextFrame::Ack(seq) => return Ok(Admitted::Ack(seq)),
                };
                let message = match (string, &data) {
                    (Some(string), _) => Message::text(string),
                    (None, Some(json)) => Message::Text(
                        Utf8Bytes::try_from(json.bytes().clone())
                            .map_err(|_| protocol_error("data is not UTF-8"))?,
                    ),
                    (None, None) => return Err(protocol_error("data is not in the frame")),
                };
                (id, message, data)
            }
            Message::Binary(bytes) => match decode_binary(&bytes) {
                Ok((id, payload)) => (id, Message::Binary(payload), None),
                Err(err) => return Err(protocol_error(&err.to_string())),
            },
            // Control frames never reach here.
            _ => return Ok(Admitted::Resent),
        };
        match self.session.accept(id) {
            Accept::New(guard) => Ok(Admitted::Call(message, Request { guard, data })),
            Accept::AlreadyProcessed => Ok(Admitted::Resent),
            Accept::OutOfOrder { expected } => {
                Err(protocol_error(&format!("message id {id} skips {expected}")))
            }
        }
    }

    /// Logs a reply of the connection's service. When it is the next message the client is
    /// owed and the queue has room, its frame is queued at once from what was appended,
    /// rather than read back from the log after a wake-up; otherwise the log has it and
    /// [`refill`](Self::refill) queues it in its turn. `writing`: the connection still writes
    /// (it is not finishing its calls after the client left). `call`: the client message
    /// replied to, marked processed with the reply, in one store step.
    pub(super) fn reply(
        &mut self,
        message: Message,
        out: &Sender,
        writing: bool,
        call: Option<Request>,
    ) {
        let (guard, request) = match call {
            Some(Request { guard, data }) => (Some(guard), data),
            None => (None, None),
        };
        let payload = match message {
            Message::Text(text) => match request.and_then(|json| json.reply(text.as_str())) {
                Some(json) => MessageData::Json(json),
                None => MessageData::from(text.as_str()),
            },
            Message::Binary(bytes) => MessageData::Binary(bytes),
            // Not a data message: not logged, as `Sender::send` does.
            message => {
                let _ = out.send(message);
                if let Some(guard) = guard {
                    guard.processed();
                }
                return;
            }
        };
        // The frame is made before the payload goes to the log, for the `seq` the client is
        // owed next: it is queued if the reply gets that `seq` (no other sender came first).
        let next = self.sent + 1;
        let frame = writing.then(|| to_message(payload.to_wire(next)));
        let appended = match guard {
            Some(guard) => self.session.append_reply(payload, guard),
            None => self.session.append_own(payload),
        };
        // `None`: a store that answers later wakes the connection once the reply is logged;
        // an error: the session is gone (expired, evicted), with no client to reply to.
        if let Ok(Some(seq)) = appended {
            if seq == next && frame.is_some_and(|frame| out.push_frame_below(frame, WRITE_BATCH)) {
                self.sent = seq;
            } else {
                self.dirty = true;
            }
        }
    }

    /// The `ack` frame to send now, if the processed mark moved since the last one.
    pub(super) fn ack_frame(&self) -> Option<Message> {
        self.session
            .ack_to_send()
            .map(|id| Message::text(ServerFrame::Ack { id }.to_text()))
    }
}

/// An error frame (`{"type":"error",...}`) about client message `id`: the frame with `"id"`
/// added. Error frames are not logged.
pub(super) fn with_id(frame: Message, id: u64) -> Message {
    let Message::Text(text) = &frame else {
        return frame;
    };
    match serde_json::from_str::<serde_json::Value>(text.as_str()) {
        Ok(serde_json::Value::Object(mut object)) => {
            object.insert("id".to_owned(), id.into());
            Message::text(serde_json::Value::Object(object).to_string())
        }
        _ => frame,
    }
}

fn wire(logged: &Logged) -> Message {
    to_message(logged.to_wire())
}

fn to_message(frame: WireFrame) -> Message {
    match frame {
        WireFrame::Text(text) => Message::text(text),
        WireFrame::Binary(bytes) => Message::Binary(bytes),
    }
}

/// A 1002 close; the reason is cut to fit a close frame (123 bytes).
fn protocol_error(reason: &str) -> Ending {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Ending::close(close::PROTOCOL_ERROR, reason[..end].to_owned())
}
