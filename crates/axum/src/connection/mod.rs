//! One upgraded connection, served by a single task: it reads frames and calls the message
//! service, writes queued messages and heartbeats, and ends with the close handshake.
//!
//! One task rather than a reader and a writer: a reply is written by the task that produced it,
//! without waking another task (which, on a multi-threaded runtime, often meant waking another
//! worker thread per message), and an idle connection costs one task.

mod handshake;
mod session;
#[cfg(test)]
mod tests;
mod write;

use std::any::Any;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::future::CatchUnwind;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, Sleep, interval_at, sleep_until};
use tower_service::Service;
use wsguard_config::ConnectionConfig;
use wsguard_session::protocol::MSG_FRAME_OVERHEAD;

use self::handshake::{Handshake, log_close};
use self::session::{Admitted, Live, Request};
use self::write::Writes;
use crate::BoxError;
use crate::close::{self, Ending};
use crate::drain::{DrainTicket, reconnect_delay};
use crate::inbound::{ConnInfo, Inbound};
use crate::reply::{Action, Replies};
use crate::route::ConnectionStats;

pub(crate) use self::session::Opening;

/// Replies queued before the connection stops reading to write them: frames that are already
/// buffered are read first, so that replies go out in batches with one flush, but never more
/// than this many wait for a socket that can take them.
const WRITE_BATCH: usize = 32;

/// Bytes a server frame adds to its payload (payloads of 126 B to 64 KiB).
const FRAME_HEADER: usize = 4;

/// Settings read once when the connection opens.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) message_concurrency: usize,
    pub(crate) max_pending_pongs: usize,
    pub(crate) close_timeout: Duration,
    /// The socket's write buffer: what one write of a batch carries.
    pub(crate) write_buffer_size: usize,
}

impl Settings {
    /// The settings of a connection on `config`; `session`: its client speaks `wsguard.v1`.
    pub(crate) fn new(config: &ConnectionConfig, session: bool) -> Self {
        // A session's messages travel in `msg` frames: its write buffer holds their framing for
        // a batch on top, so that a batch of small messages still goes out in one write.
        let write_buffer_size = if session {
            config
                .write_buffer_size
                .saturating_add(MSG_FRAME_OVERHEAD * WRITE_BATCH)
        } else {
            config.write_buffer_size
        };
        Self {
            idle_timeout: config.idle_timeout,
            ping_interval: config.ping_interval,
            message_concurrency: config.message_concurrency,
            max_pending_pongs: config.max_pending_pongs,
            close_timeout: config.close_timeout,
            write_buffer_size,
        }
    }
}

/// Serves an upgraded socket until the connection ends.
#[allow(clippy::too_many_arguments)] // the parts of one connection, each used once
pub(crate) fn run<S>(
    socket: WebSocket,
    service: S,
    conn: Arc<ConnInfo>,
    settings: Settings,
    replies: Replies,
    stats: ConnectionStats,
    drain: Option<DrainTicket>,
    opening: Option<Opening>,
) -> impl Future<Output = ()>
where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>,
{
    let (sink, stream) = socket.split();
    run_on(
        stream, sink, service, conn, settings, replies, stats, drain, opening,
    )
}

/// Serves a connection given as any stream and sink of messages (a socket's halves; in tests,
/// channels on paused time): the message loop, then the close handshake, the log line, and the
/// release of what the connection held. With an `opening` the client speaks `wsguard.v1`: the
/// connection opens its session first, and keeps it attached while it lives.
///
/// Not an `async fn`: its arguments go into one [`Parts`] here, and the future holds that
/// alone. (An `async fn` keeps each argument for its whole life beside the values it moved them
/// into, which made every idle connection's task hundreds of bytes larger.)
#[allow(clippy::too_many_arguments)] // the parts of one connection, each used once
pub(crate) fn run_on<St, Si, S>(
    stream: St,
    sink: Si,
    service: S,
    conn: Arc<ConnInfo>,
    settings: Settings,
    replies: Replies,
    stats: ConnectionStats,
    drain: Option<DrainTicket>,
    opening: Option<Opening>,
) -> impl Future<Output = ()>
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    Si: Sink<Message, Error = axum::Error> + Unpin,
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>,
{
    let mut parts = Parts {
        stream,
        sink,
        stats,
        opening,
        connection: Connection {
            service,
            conn,
            settings,
            replies,
            writes: Writes::default(),
            drain,
            written_at_drain: None,
            closed_by_drain: false,
        },
    };
    async move { parts.run().await }
}

/// Everything one connection is served with.
struct Parts<St, Si, S> {
    stream: St,
    sink: Si,
    stats: ConnectionStats,
    opening: Option<Opening>,
    connection: Connection<S>,
}

impl<St, Si, S> Parts<St, Si, S>
where
    St: Stream<Item = Result<Message, axum::Error>> + Unpin,
    Si: Sink<Message, Error = axum::Error> + Unpin,
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>,
{
    async fn run(&mut self) {
        let Self {
            stream,
            sink,
            stats,
            opening,
            connection,
        } = self;
        let conn = connection.conn.clone();
        tracing::debug!(
            conn = %conn.id, client = %conn.client_id, route = conn.route.as_deref().unwrap_or(""),
            "websocket connection opened"
        );
        let close_timeout = connection.settings.close_timeout;
        let idle_timeout = connection.settings.idle_timeout;
        let mut live = None;
        let opened = match opening {
            // Boxed, as the close handshake below: a future held only at the start (or the end)
            // would otherwise make every connection's task as large as it, for its whole life.
            Some(opening) => Box::pin(session::open(stream, &conn, opening, idle_timeout))
                .await
                .map(|session| live = Some(session)),
            None => Ok(()),
        };
        let ending = match opened {
            Ok(()) => connection.serve(stream, sink, &mut live).await,
            Err(ending) => ending,
        };
        // A clean close tells the client everything processed, so that it resends nothing twice.
        if let (Some(live), Ending::Close { code, .. }) = (&live, &ending)
            && !matches!(
                *code,
                close::POLICY_VIOLATION | close::PROTOCOL_ERROR | close::INVALID_PAYLOAD
            )
        {
            // An ack tells the client never to resend: it covers only marks the store keeps
            // (a shared store confirms them as they arrive), so the marks go out first.
            if let Some(opening) = opening.as_ref() {
                flush_sessions(&opening.sessions, close_timeout).await;
            }
            if let Some(ack) = live.ack_frame() {
                conn.sender.push_frame(ack);
            }
        }
        // The first reason recorded wins (a `close` asked by the handler, say, over what followed).
        conn.sender.end(ending);
        conn.sender.shut();
        let ending = conn
            .sender
            .ending()
            .borrow()
            .clone()
            .expect("recorded just above");

        let handshake = match &ending {
            Ending::Close { code, reason } => {
                stats.count_close(*code);
                let handshake = Box::pin(handshake::close(
                    stream,
                    sink,
                    std::mem::take(&mut connection.writes),
                    &conn.sender,
                    *code,
                    reason,
                    close_timeout,
                ))
                .await;
                if handshake.timed_out() {
                    stats.count_close_timeout();
                }
                handshake
            }
            Ending::Peer { .. } | Ending::Abort => Handshake::NotTried,
        };
        // Whoever still holds the connection's info or sender keeps no unsent messages alive.
        let dropped = conn.sender.discard();
        log_close(&conn, &ending, handshake);
        // Detaches the session: it waits `ttl` for a resume.
        let had_session = live.is_some();
        drop(live);
        if let Some(ticket) = &connection.drain {
            // The node is going away: its session steps (the detach, the last processed marks)
            // reach a shared store before the drain counts this connection done, so that the
            // client resumes on another node at once and is not asked for what it skipped.
            if had_session
                && ticket.is_draining()
                && let Some(opening) = opening.as_ref()
            {
                flush_sessions(&opening.sessions, close_timeout).await;
            }
            let flushed = connection
                .written_at_drain
                .map_or(0, |at| conn.sender.written() - at);
            ticket.finish(connection.closed_by_drain, flushed, dropped as u64);
        }
        // Per-client metrics state goes with the client's last connection.
        conn.slot.release();
    }
}

type Call<F> = CatchUnwind<AssertUnwindSafe<F>>;
type Outcome = Result<Result<Option<Message>, BoxError>, Box<dyn Any + Send>>;

struct Connection<S> {
    service: S,
    conn: Arc<ConnInfo>,
    settings: Settings,
    replies: Replies,
    writes: Writes,
    drain: Option<DrainTicket>,
    /// Messages written when the drain started, if it did.
    written_at_drain: Option<u64>,
    /// The drain, not something else, ended the connection.
    closed_by_drain: bool,
}

impl<S> Connection<S>
where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>,
{
    /// Serves the connection until it ends; returns why.
    async fn serve<St, Si>(
        &mut self,
        stream: &mut St,
        sink: &mut Si,
        live: &mut Option<Live>,
    ) -> Ending
    where
        St: Stream<Item = Result<Message, axum::Error>> + Unpin,
        Si: Sink<Message, Error = axum::Error> + Unpin,
    {
        let out = self.conn.sender.clone();
        let mut ended = pin!(ended(out.ending()));
        let mut in_flight: Calls<Call<S::Future>> = Calls::default();
        let mut pending: Option<(Inbound, Option<Request>)> = None;
        // Beside `in_flight`, in the same order: the session's guard of each call.
        let mut processing: VecDeque<Option<Request>> = VecDeque::new();
        // Under a session: acks go out at most every `ack_interval`.
        let ack_interval = live.as_ref().map_or(Duration::MAX, |l| l.ack_interval);
        let mut ack_due = false;
        // Made by the first ack: a connection without a session never has one.
        let mut ack_timer: Option<Pin<Box<Sleep>>> = None;
        let mut peer_close: Option<Option<u16>> = None;
        let concurrency = self.settings.message_concurrency.max(1);
        let write_buffer = self.settings.write_buffer_size;

        // One timer for the idle timeout, moved on only when it fires: a frame just records the
        // time it was heard.
        let idle_timeout = self.settings.idle_timeout;
        let mut last_heard = Instant::now();
        let mut idle = pin!(sleep_until(last_heard + idle_timeout));
        // Ping only a quiet peer; any frame from it proves it alive. A zero period would panic;
        // validated configs never have one.
        let ping_interval = self.settings.ping_interval.max(Duration::from_millis(1));
        let mut ping = interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard = false;

        // Once a drain starts: read no more, finish the calls in flight, then close 1001 with a
        // reconnect hint.
        let drain = &mut self.drain;
        let mut drain_started = pin!(async move {
            match drain {
                Some(ticket) => ticket.started().await,
                None => std::future::pending().await,
            }
        });
        let mut going_away: Option<String> = None;
        // Under a session, once the client is gone or superseded: no more reading or writing,
        // the calls in flight finish (their replies logged, their ids processed), then this.
        let mut finishing: Option<Ending> = None;

        // Two branches write, at different priorities; only one is polled at a time.
        let io = Mutex::new((Pin::new(sink), &mut self.writes));
        let lock = || io.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(reason) = &going_away
                && in_flight.is_empty()
                && pending.is_none()
            {
                self.closed_by_drain = true;
                return Ending::close(close::GOING_AWAY, reason.clone());
            }
            if let Some(ending) = &finishing
                && in_flight.is_empty()
                && pending.is_none()
            {
                return ending.clone();
            }
            if finishing.is_none()
                && let Some(live) = live.as_mut()
                && let Err(ending) = live.refill(&out).await
            {
                return ending;
            }
            let (queued, queued_bytes) = out.backlog();
            let (write_first, write_later) = {
                let io = lock();
                // A pong owed goes out before the next frame is read, so that a client that
                // pings without reading is seen while its pongs still fit the write buffer. A
                // batch goes out once it fills the write buffer too: past it the socket would
                // write it in two parts.
                let first = io.1.ping_due
                    || io.1.pongs_owed > 0
                    || queued >= WRITE_BATCH
                    || queued_bytes.saturating_add(FRAME_HEADER * queued) >= write_buffer;
                let writing = finishing.is_none();
                (
                    writing && first,
                    writing && !first && (queued > 0 || io.1.unflushed),
                )
            };
            let can_finish = live.is_some() && (!in_flight.is_empty() || pending.is_some());
            let write = || {
                poll_fn(|cx| {
                    let (sink, writes) = &mut *lock();
                    writes.poll_write(sink.as_mut(), &out, write_buffer, cx)
                })
            };
            tokio::select! {
                biased;
                // Asked by the application (`close`, `abort`) or by a full send queue. Under a
                // session the calls in flight finish first, as after a drop: their ids are then
                // processed, and a client that resends them after resuming does not run them twice.
                () = &mut ended, if finishing.is_none() => {
                    let ending = out.ending().borrow().clone().expect("waited for");
                    if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                        return ending;
                    }
                }
                window = &mut drain_started, if going_away.is_none() && finishing.is_none() => {
                    let delay = reconnect_delay(self.conn.id.get(), window);
                    going_away = Some(format!("server going away; reconnect in {} ms", delay.as_millis()));
                    self.written_at_drain = Some(out.written());
                }
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    let call = processing.pop_front().flatten();
                    // Handled, failed or rejected: processed once its reply is logged (by
                    // `on_outcome`). A panicked call is not: the client may resend it.
                    let acks = call.is_some() && outcome.is_ok();
                    let writing = finishing.is_none();
                    let end = on_outcome(&self.conn, &self.replies, outcome, live.as_mut().map(|l| (l, writing)), call);
                    if acks {
                        arm_ack(&mut ack_due, &mut ack_timer, ack_interval);
                    }
                    if let Some(end) = end
                        && let Some(end) = finish(end, live.is_some() && !in_flight.is_empty(), &mut finishing)
                    {
                        return end;
                    }
                }
                ready = poll_ready_unwinding(&mut self.service), if pending.is_some() => {
                    let failed = match ready {
                        Ok(Ok(())) => None,
                        Ok(Err(err)) => {
                            tracing::error!(conn = %self.conn.id, error = %err, "message service failed");
                            Some(Ending::close(close::INTERNAL_ERROR, "service unavailable"))
                        }
                        Err(panic) => Some(panicked(&self.conn, panic)),
                    };
                    if let Some(ending) = failed {
                        // The waiting message never ran: its id stays unprocessed (resent).
                        pending = None;
                        if let Some(ending) = finish(ending, live.is_some() && !in_flight.is_empty(), &mut finishing) {
                            return ending;
                        }
                        continue;
                    }
                    let (request, guard) = pending.take().expect("branch enabled by pending");
                    let service = &mut self.service;
                    match std::panic::catch_unwind(AssertUnwindSafe(|| service.call(request))) {
                        Ok(fut) => {
                            in_flight.push_back(AssertUnwindSafe(fut).catch_unwind());
                            processing.push_back(guard);
                        }
                        Err(panic) => {
                            if let Some(ending) = finish(panicked(&self.conn, panic), live.is_some() && !in_flight.is_empty(), &mut finishing) {
                                return ending;
                            }
                        }
                    }
                }
                written = write(), if write_first => {
                    if let Err(err) = written
                        && let Some(ending) = finish(write_error(err), can_finish, &mut finishing)
                    {
                        return ending;
                    }
                }
                frame = stream.next(), if pending.is_none() && in_flight.len() < concurrency && going_away.is_none() && finishing.is_none() => {
                    last_heard = Instant::now();
                    heard = true;
                    match frame {
                        None => {
                            // A close frame without a code is 1005; no close frame at all, 1006 (logged).
                            let code = peer_close.map(|code| code.unwrap_or(close::NO_STATUS_RECEIVED));
                            let ending = Ending::peer(code, if peer_close.is_some() { "close handshake" } else { "connection dropped" });
                            if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                                return ending;
                            }
                        }
                        Some(Err(err)) => match read_error(err) {
                            ending @ Ending::Peer { .. } => {
                                if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                                    return ending;
                                }
                            }
                            ending => {
                                if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                                    return ending;
                                }
                            }
                        },
                        Some(Ok(Message::Close(frame))) => {
                            // tungstenite answers the close; the next read completes it and ends.
                            peer_close = Some(frame.map(|f| f.code));
                        }
                        Some(Ok(Message::Ping(_))) => {
                            // tungstenite queues the pong; a flush sends it.
                            let mut io = lock();
                            io.1.pongs_owed += 1;
                            io.1.unflushed = true;
                            if io.1.pongs_owed > self.settings.max_pending_pongs {
                                drop(io);
                                let ending = Ending::close(close::POLICY_VIOLATION, "client does not read (pongs pending)");
                                if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                                    return ending;
                                }
                            }
                        }
                        Some(Ok(Message::Pong(_))) => {}
                        Some(Ok(message)) => match live.as_mut() {
                            None => pending = Some((Inbound::new(message, self.conn.clone()), None)),
                            Some(live) => match live.admit(message) {
                                Err(ending) => {
                                    if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                                        return ending;
                                    }
                                }
                                Ok(Admitted::Call(message, call)) => {
                                    pending = Some((Inbound::new(message, self.conn.clone()), Some(call)));
                                }
                                Ok(Admitted::Ack(seq)) => {
                                    if let Err(err) = live.session.ack(seq).await {
                                        tracing::warn!(%err, "session trim failed");
                                    }
                                }
                                Ok(Admitted::Resent) => {
                                    arm_ack(&mut ack_due, &mut ack_timer, ack_interval);
                                }
                            },
                        },
                    }
                }
                written = write(), if write_later => {
                    if let Err(err) = written
                        && let Some(ending) = finish(write_error(err), can_finish, &mut finishing)
                    {
                        return ending;
                    }
                }
                // A message queued by another task: the next turn writes it.
                () = out.queued() => {}
                // A message logged in the session: the next turn queues and writes it.
                changed = session_changed(live), if finishing.is_none() => {
                    match changed {
                        Err(ending) => {
                            if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                                return ending;
                            }
                        }
                        // Another connection of the session (one finishing its calls after a
                        // drop) may have processed messages: they are acknowledged here.
                        Ok(()) => {
                            arm_ack(&mut ack_due, &mut ack_timer, ack_interval);
                        }
                    }
                }
                () = poll_fn(|cx| ack_timer.as_mut().map_or(Poll::Pending, |t| t.as_mut().poll(cx))), if ack_due => {
                    ack_due = false;
                    if let Some(ack) = live.as_ref().and_then(Live::ack_frame) {
                        out.push_frame(ack);
                    }
                }
                _ = ping.tick() => {
                    if !std::mem::take(&mut heard) {
                        lock().1.ping_due = true;
                    }
                }
                // A finishing connection waits for its calls, however long they take.
                () = &mut idle, if finishing.is_none() => {
                    let deadline = last_heard + idle_timeout;
                    if Instant::now() >= deadline {
                        let ending = Ending::close(close::GOING_AWAY, "idle timeout");
                        if let Some(ending) = finish(ending, can_finish, &mut finishing) {
                            return ending;
                        }
                        continue;
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        }
    }
}

/// Waits, at most `limit`, until the session steps this node asked of the store have reached it
/// (immediate with the memory store).
async fn flush_sessions(sessions: &wsguard_session::Sessions, limit: Duration) {
    match tokio::time::timeout(limit, sessions.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(%err, "session store flush failed"),
        Err(_) => tracing::warn!(?limit, "session store flush timed out"),
    }
}

/// Acts on a call's outcome. `live`: the session, and whether the connection still writes.
/// `call`: the message under a session, marked processed here unless the call panicked (its
/// error frame carries its client id and is not logged).
fn on_outcome(
    conn: &ConnInfo,
    replies: &Replies,
    outcome: Outcome,
    live: Option<(&mut Live, bool)>,
    call: Option<Request>,
) -> Option<Ending> {
    let action = match outcome {
        // The call is dropped unprocessed: the client may resend it.
        Err(panic) => return Some(panicked(conn, panic)),
        Ok(Ok(reply)) => reply.map_or(Action::Nothing, Action::Reply),
        Ok(Err(err)) => match (replies.for_error(conn, &err), &call) {
            (Action::Reply(frame), Some(call)) => {
                conn.sender
                    .push_frame(session::with_id(frame, call.guard.id()));
                Action::Nothing
            }
            (action, _) => action,
        },
    };
    let ending = match action {
        Action::Nothing => None,
        Action::Reply(message) => {
            match live {
                // Logged, and the message processed with it.
                Some((live, writing)) => {
                    live.reply(message, &conn.sender, writing, call);
                    return None;
                }
                // A closed queue means the connection is ending; the ending branch reports why.
                None => {
                    let _ = conn.sender.send(message);
                }
            }
            None
        }
        Action::Close { code, reason } => Some(Ending::close(code, reason)),
    };
    if let Some(call) = call {
        call.guard.processed();
    }
    ending
}

/// `poll_ready` with a panic caught, as the calls' panics are.
async fn poll_ready_unwinding<S, R>(
    service: &mut S,
) -> Result<Result<(), S::Error>, Box<dyn Any + Send>>
where
    S: Service<R>,
{
    poll_fn(
        |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| service.poll_ready(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(ready)) => Poll::Ready(Ok(ready)),
            Err(panic) => Poll::Ready(Err(panic)),
        },
    )
    .await
}

fn panicked(conn: &ConnInfo, panic: Box<dyn Any + Send>) -> Ending {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(conn = %conn.id, client = %conn.client_id, panic = %message, "message service panicked");
    Ending::close(close::INTERNAL_ERROR, "internal error")
}

fn read_error(err: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            tracing::debug!(size, max_size, "inbound message too big");
            Ending::close(close::MESSAGE_TOO_BIG, "message too big")
        }
        // A peer that drops TCP without a close frame has gone; it broke nothing we can answer.
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
            Ending::peer(None, "connection reset without closing handshake")
        }
        // RFC 6455 7.4.1: the endpoint that sees a protocol error closes with 1002, and with
        // 1007 for a text message that is not UTF-8. The reason is ours, so it is short.
        Some(WsError::Protocol(p)) => {
            Ending::close(close::PROTOCOL_ERROR, format!("protocol error: {p}"))
        }
        Some(WsError::Utf8(_)) => {
            Ending::close(close::INVALID_PAYLOAD, "text message is not valid UTF-8")
        }
        _ => Ending::peer(None, format!("read error: {inner}")),
    }
}

fn write_error(err: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::error::Error as WsError;
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        // Only frames the client does not read fill the capped buffer (ours never exceed
        // `write_buffer_size` plus one message).
        Some(WsError::WriteBufferFull(_)) => Ending::close(
            close::POLICY_VIOLATION,
            "client does not read (write buffer full)",
        ),
        _ => Ending::peer(None, format!("write error: {inner}")),
    }
}

/// Schedules an ack `interval` from now, unless one is already due.
fn arm_ack(due: &mut bool, timer: &mut Option<Pin<Box<Sleep>>>, interval: Duration) {
    if !*due {
        *due = true;
        let at = Instant::now() + interval;
        match timer {
            Some(timer) => timer.as_mut().reset(at),
            None => *timer = Some(Box::pin(sleep_until(at))),
        }
    }
}

/// The calls in flight, in order; the queue is made by the first call, so that an idle
/// connection holds none.
struct Calls<F: Future>(Option<FuturesOrdered<F>>);

impl<F: Future> Default for Calls<F> {
    fn default() -> Self {
        Self(None)
    }
}

impl<F: Future> Calls<F> {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesOrdered::len)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, call: F) {
        self.0
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(call);
    }

    /// The next call to finish, in order; never resolves while there is none.
    async fn next(&mut self) -> Option<F::Output> {
        match &mut self.0 {
            Some(calls) if !calls.is_empty() => calls.next().await,
            _ => std::future::pending().await,
        }
    }
}

/// `ending` now, or `None` once recorded in `finishing` when calls are still to finish under a
/// session. The first ending recorded wins.
fn finish(ending: Ending, can_finish: bool, finishing: &mut Option<Ending>) -> Option<Ending> {
    if can_finish {
        finishing.get_or_insert(ending);
        None
    } else {
        Some(ending)
    }
}

/// Resolves when the session's log grows (or it is superseded: an error); never without one.
async fn session_changed(live: &mut Option<Live>) -> Result<(), Ending> {
    match live {
        Some(live) => live.changed().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the connection's ending is known.
async fn ended(mut ending: watch::Receiver<Option<Ending>>) {
    if ending.wait_for(Option::is_some).await.is_err() {
        // The sender lives as long as the connection's `Sender`; never reached.
        std::future::pending::<()>().await;
    }
}
