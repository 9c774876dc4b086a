//! One upgraded connection, served by a single task: it reads frames and calls the message
//! service, writes queued messages and heartbeats, and ends with the close handshake.
//!
//! One task rather than a reader and a writer: a reply is written by the task that produced it,
//! without waking another task (which, on a multi-threaded runtime, often meant waking another
//! worker thread per message), and an idle connection costs one task.

use std::any::Any;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::future::CatchUnwind;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{FutureExt, Sink, SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout_at};
use tower_service::Service;

use crate::BoxError;
use crate::Outbound;
use crate::close::{self, Ending};
use crate::inbound::{ConnInfo, Inbound};
use crate::reply::{Action, Replies};
use crate::route::ConnectionStats;
use crate::warn_limit::{WarnLimit, limited_warn};

/// Replies queued before the connection stops reading to write them: frames that are already
/// buffered are read first, so that replies go out in batches with one flush, but never more
/// than this many wait for a socket that can take them.
const WRITE_BATCH: usize = 32;

/// Settings read once when the connection opens.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) message_concurrency: usize,
    pub(crate) max_pending_pongs: usize,
    pub(crate) close_timeout: Duration,
}

type Sender = SplitSink<WebSocket, Message>;

pub(crate) async fn run<S>(
    socket: WebSocket,
    service: S,
    conn: Arc<ConnInfo>,
    settings: Settings,
    replies: Replies,
    stats: ConnectionStats,
) where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    tracing::debug!(
        conn = %conn.id, client = %conn.client_id, route = conn.route.as_deref().unwrap_or(""),
        "websocket connection opened"
    );

    let close_timeout = settings.close_timeout;
    let mut connection = Connection {
        service,
        conn: conn.clone(),
        settings,
        replies,
        writes: Writes::default(),
    };
    let ending = connection.serve(&mut stream, &mut sink).await;
    // The first reason recorded wins (a `close` asked by the handler, say, over what followed).
    conn.sender.end(ending);
    conn.sender.shut();
    let ending = conn
        .sender
        .ending()
        .borrow()
        .clone()
        .expect("recorded just above");

    let mut handshake = Handshake::NotTried;
    if let Ending::Close { code, reason } = &ending {
        stats.count_close(*code);
        let mut writes = connection.writes;
        // One deadline for the whole handshake: a client that does not read gets this long to
        // take what is ahead of the close frame and the frame itself.
        let deadline = Instant::now() + close_timeout;
        let sent = timeout_at(deadline, async {
            if !matches!(*code, close::POLICY | close::PROTOCOL | close::INVALID) {
                // Replies queued before the close still go out; to a client that does not read
                // or breaks the protocol, they do not.
                poll_fn(|cx| writes.poll_write(Pin::new(&mut sink), &conn.sender, cx)).await?;
            }
            let frame = CloseFrame {
                code: *code,
                reason: reason.as_ref().into(),
            };
            sink.send(Message::Close(Some(frame))).await
        })
        .await;
        // The peer's frames are read (and dropped) until its answer: closing a socket with
        // unread data resets it, and a reset may destroy our close frame before the peer reads it.
        handshake = match sent {
            Err(_) => Handshake::FrameNotTaken,
            Ok(Err(_)) => Handshake::PeerGone,
            // Let the peer answer our close frame, so the handshake completes cleanly.
            Ok(Ok(())) => match timeout_at(deadline, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await
            {
                Ok(()) => Handshake::Done,
                Err(_) => Handshake::NoAnswer,
            },
        };
        if matches!(handshake, Handshake::FrameNotTaken | Handshake::NoAnswer) {
            stats.count_close_timeout();
        }
    }
    // Whoever still holds the connection's info or sender keeps no unsent messages alive.
    conn.sender.discard();
    log_close(&conn, &ending, handshake);
    // Per-client metrics state goes with the client's last connection.
    conn.slot.release();
}

/// How the server's side of a close handshake went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
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

fn log_close(conn: &ConnInfo, ending: &Ending, handshake: Handshake) {
    // A client can cause these at will: they go through a rate limit.
    static WARN: WarnLimit = WarnLimit::new();
    let route = conn.route.as_deref().unwrap_or("");
    let handshake = handshake.as_str();
    match ending {
        Ending::Close { code, reason }
            if matches!(
                *code,
                close::ERROR | close::POLICY | close::PROTOCOL | close::INVALID
            ) =>
        {
            limited_warn!(WARN, conn = %conn.id, client = %conn.client_id, route, code, %reason, handshake, "websocket closed by server");
        }
        Ending::Close { code, reason } => {
            tracing::info!(conn = %conn.id, client = %conn.client_id, route, code, %reason, handshake, "websocket closed by server");
        }
        Ending::Peer { code, detail } => {
            tracing::info!(conn = %conn.id, client = %conn.client_id, route, code = code.unwrap_or(close::ABNORMAL), %detail, "websocket closed by client");
        }
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
}

impl<S> Connection<S>
where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>,
{
    /// Serves the connection until it ends; returns why.
    async fn serve(&mut self, stream: &mut SplitStream<WebSocket>, sink: &mut Sender) -> Ending {
        let out = self.conn.sender.clone();
        let mut ended = pin!(ended(out.ending()));
        let mut in_flight: FuturesOrdered<Call<S::Future>> = FuturesOrdered::new();
        let mut pending: Option<Inbound> = None;
        let mut peer_close: Option<Option<u16>> = None;
        let concurrency = self.settings.message_concurrency.max(1);

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

        // Two branches write, at different priorities; only one is polled at a time.
        let io = Mutex::new((Pin::new(sink), &mut self.writes));
        let lock = || io.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let queued = out.len();
            let (write_first, write_later) = {
                let io = lock();
                // A pong owed goes out before the next frame is read, so that a client that
                // pings without reading is seen while its pongs still fit the write buffer.
                let first = io.1.ping_due || io.1.pongs_owed > 0 || queued >= WRITE_BATCH;
                (first, !first && (queued > 0 || io.1.unflushed))
            };
            let write = || {
                poll_fn(|cx| {
                    let (sink, writes) = &mut *lock();
                    writes.poll_write(sink.as_mut(), &out, cx)
                })
            };
            tokio::select! {
                biased;
                () = &mut ended => {
                    return out.ending().borrow().clone().expect("waited for");
                }
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(end) = on_outcome(&self.conn, &self.replies, outcome) {
                        return end;
                    }
                }
                ready = poll_ready_unwinding(&mut self.service), if pending.is_some() => {
                    match ready {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            tracing::error!(conn = %self.conn.id, error = %err, "message service failed");
                            return Ending::close(close::ERROR, "service unavailable");
                        }
                        Err(panic) => return panicked(&self.conn, panic),
                    }
                    let request = pending.take().expect("branch enabled by pending");
                    let service = &mut self.service;
                    match std::panic::catch_unwind(AssertUnwindSafe(|| service.call(request))) {
                        Ok(fut) => in_flight.push_back(AssertUnwindSafe(fut).catch_unwind()),
                        Err(panic) => return panicked(&self.conn, panic),
                    }
                }
                written = write(), if write_first => {
                    if let Err(err) = written {
                        return write_error(err);
                    }
                }
                frame = stream.next(), if pending.is_none() && in_flight.len() < concurrency => {
                    last_heard = Instant::now();
                    heard = true;
                    match frame {
                        None => {
                            // A close frame without a code is 1005; no close frame at all, 1006 (logged).
                            let code = peer_close.map(|code| code.unwrap_or(close::NO_STATUS));
                            return Ending::peer(code, if peer_close.is_some() { "close handshake" } else { "connection dropped" });
                        }
                        Some(Err(err)) => return read_error(err),
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
                                return Ending::close(close::POLICY, "client does not read (pongs pending)");
                            }
                        }
                        Some(Ok(Message::Pong(_))) => {}
                        Some(Ok(message)) => {
                            pending = Some(Inbound::new(message, self.conn.clone()));
                        }
                    }
                }
                written = write(), if write_later => {
                    if let Err(err) = written {
                        return write_error(err);
                    }
                }
                // A message queued by another task: the next turn writes it.
                () = out.queued() => {}
                _ = ping.tick() => {
                    if !std::mem::take(&mut heard) {
                        lock().1.ping_due = true;
                    }
                }
                () = &mut idle => {
                    let deadline = last_heard + idle_timeout;
                    if Instant::now() >= deadline {
                        return Ending::close(close::AWAY, "idle timeout");
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        }
    }
}

fn on_outcome(conn: &ConnInfo, replies: &Replies, outcome: Outcome) -> Option<Ending> {
    let action = match outcome {
        Err(panic) => return Some(panicked(conn, panic)),
        Ok(Ok(reply)) => reply.map_or(Action::Nothing, Action::Reply),
        Ok(Err(err)) => replies.for_error(conn, &err),
    };
    match action {
        Action::Nothing => None,
        Action::Reply(message) => {
            // A closed queue means the connection is ending; the ending branch reports why.
            let _ = conn.sender.send(message);
            None
        }
        Action::Close { code, reason } => Some(Ending::close(code, reason)),
    }
}

/// What the connection owes the socket besides the queue.
#[derive(Debug, Default)]
struct Writes {
    /// A ping is to go out before the queued messages.
    ping_due: bool,
    /// Frames were handed to the socket and not yet flushed.
    unflushed: bool,
    /// Pings received since the socket last finished a flush: their pongs wait in tungstenite.
    pongs_owed: usize,
}

impl Writes {
    /// Writes a due ping, then everything queued, then flushes once.
    ///
    /// Cancel-safe: a message leaves the queue only once the socket has room for it, and an
    /// unfinished flush is remembered and finished by the next call.
    fn poll_write<K>(
        &mut self,
        mut sink: Pin<&mut K>,
        out: &Outbound,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), K::Error>>
    where
        K: Sink<Message> + ?Sized,
    {
        if self.ping_due {
            ready!(sink.as_mut().poll_ready(cx))?;
            sink.as_mut()
                .start_send(Message::Ping(Default::default()))?;
            self.ping_due = false;
            self.unflushed = true;
        }
        while !out.is_empty() {
            ready!(sink.as_mut().poll_ready(cx))?;
            let Some(message) = out.pop() else { break };
            sink.as_mut().start_send(message)?;
            self.unflushed = true;
        }
        if self.unflushed {
            ready!(sink.as_mut().poll_flush(cx))?;
            self.unflushed = false;
            self.pongs_owed = 0;
        }
        Poll::Ready(Ok(()))
    }
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
    Ending::close(close::ERROR, "internal error")
}

fn read_error(err: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            tracing::debug!(size, max_size, "inbound message too big");
            Ending::close(close::SIZE, "message too big")
        }
        // A peer that drops TCP without a close frame has gone; it broke nothing we can answer.
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
            Ending::peer(None, "connection reset without closing handshake")
        }
        // RFC 6455 7.4.1: the endpoint that sees a protocol error closes with 1002, and with
        // 1007 for a text message that is not UTF-8. The reason is ours, so it is short.
        Some(WsError::Protocol(p)) => {
            Ending::close(close::PROTOCOL, format!("protocol error: {p}"))
        }
        Some(WsError::Utf8(_)) => Ending::close(close::INVALID, "text message is not valid UTF-8"),
        _ => Ending::peer(None, format!("read error: {inner}")),
    }
}

fn write_error(err: axum::Error) -> Ending {
    use tokio_tungstenite::tungstenite::error::Error as WsError;
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        // Only frames the client does not read fill the capped buffer (ours never exceed
        // `write_buffer_size` plus one message).
        Some(WsError::WriteBufferFull(_)) => {
            Ending::close(close::POLICY, "client does not read (write buffer full)")
        }
        _ => Ending::peer(None, format!("write error: {inner}")),
    }
}

/// Resolves once the connection's ending is known.
async fn ended(mut ending: watch::Receiver<Option<Ending>>) {
    if ending.wait_for(Option::is_some).await.is_err() {
        // The sender lives as long as the connection's `Outbound`; never reached.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use wsguard_config::OverflowPolicy;

    use super::*;

    /// Records what the writer does to the socket.
    #[derive(Default)]
    struct Recorder {
        sent: Vec<Message>,
        flushes: usize,
    }

    impl futures_util::Sink<Message> for Recorder {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.sent.push(item);
            Ok(())
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn queued_messages_are_written_in_order_then_flushed_once() {
        let out = Outbound::new(8, OverflowPolicy::DropNewest);
        for text in ["a", "b", "c", "d", "e"] {
            out.send(text).unwrap();
        }
        let mut socket = Recorder::default();
        let mut writes = Writes {
            ping_due: true,
            ..Writes::default()
        };
        poll_fn(|cx| writes.poll_write(Pin::new(&mut socket), &out, cx))
            .await
            .unwrap();
        assert!(
            matches!(socket.sent[0], Message::Ping(_)),
            "a due ping goes first"
        );
        let sent: Vec<_> = socket.sent[1..]
            .iter()
            .map(|m| m.to_text().unwrap())
            .collect();
        assert_eq!(sent, ["a", "b", "c", "d", "e"]);
        assert_eq!(socket.flushes, 1);
        assert!(out.is_empty());
        assert_eq!(out.written(), 5);
        assert!(!writes.ping_due && !writes.unflushed);

        // Nothing queued: no write, no flush.
        poll_fn(|cx| writes.poll_write(Pin::new(&mut socket), &out, cx))
            .await
            .unwrap();
        assert_eq!(socket.flushes, 1);
    }

    /// A socket that takes `room` frames, then is full until `room` is raised; flushes only
    /// when `flushable`.
    struct Tight {
        sent: Vec<Message>,
        room: usize,
        flushable: bool,
    }

    impl futures_util::Sink<Message> for Tight {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.room > 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.room -= 1;
            self.sent.push(item);
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.flushable {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn an_interrupted_write_loses_nothing_and_finishes_its_flush_later() {
        let out = Outbound::new(8, OverflowPolicy::DropNewest);
        for text in ["a", "b", "c"] {
            out.send(text).unwrap();
        }
        let mut socket = Tight {
            sent: Vec::new(),
            room: 2,
            flushable: false,
        };
        let mut writes = Writes::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());

        // The socket takes two frames, then is full: the third stays queued.
        assert!(
            writes
                .poll_write(Pin::new(&mut socket), &out, &mut cx)
                .is_pending()
        );
        assert_eq!(socket.sent.len(), 2);
        assert_eq!(out.len(), 1, "nothing left the queue without room for it");

        // Room again, but the flush cannot finish yet: the write is remembered as unflushed.
        socket.room = 8;
        assert!(
            writes
                .poll_write(Pin::new(&mut socket), &out, &mut cx)
                .is_pending()
        );
        assert_eq!(socket.sent.len(), 3);
        assert!(out.is_empty());
        assert!(writes.unflushed);

        // With an empty queue the next call still finishes the flush.
        socket.flushable = true;
        assert!(
            writes
                .poll_write(Pin::new(&mut socket), &out, &mut cx)
                .is_ready()
        );
        assert!(!writes.unflushed);
        let sent: Vec<_> = socket.sent.iter().map(|m| m.to_text().unwrap()).collect();
        assert_eq!(sent, ["a", "b", "c"]);
    }
}
