//! One upgraded connection: a reader that calls the message service, a writer that drains the
//! send queue, heartbeats, and the close that ends both.

use std::any::Any;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::future::CatchUnwind;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tower_service::Service;

use crate::BoxError;
use crate::close::{self, Ending};
use crate::inbound::{ConnInfo, Inbound};
use crate::reply::{Action, Replies};

/// Longest wait for the close handshake (our close frame out, the peer's back).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Settings read once when the connection opens.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) message_concurrency: usize,
}

pub(crate) async fn run<S>(
    socket: WebSocket,
    service: S,
    conn: Arc<ConnInfo>,
    settings: Settings,
    replies: Replies,
) where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError> + Send + 'static,
    S::Future: Send + 'static,
{
    let (sink, mut stream) = socket.split();
    let heard = Arc::new(AtomicBool::new(false));
    tracing::debug!(
        conn = %conn.id, client = %conn.client_id, route = conn.route.as_deref().unwrap_or(""),
        "websocket connection opened"
    );

    let writer = tokio::spawn(write_loop(
        sink,
        conn.clone(),
        settings.ping_interval,
        heard.clone(),
    ));
    let mut reader = Reader {
        service,
        conn: conn.clone(),
        settings,
        replies,
        heard,
    };
    let ending = reader.read(&mut stream).await;
    conn.sender.end(ending);
    conn.sender.shut();
    let _ = writer.await;
    // Whoever still holds the connection's info or sender keeps no unsent messages alive.
    conn.sender.discard();

    let ending = conn
        .sender
        .ending()
        .borrow()
        .clone()
        .expect("set before the writer is awaited");
    if matches!(ending, Ending::Close { .. }) {
        // Let the peer answer our close frame, so the handshake completes cleanly.
        let _ = timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    log_close(&conn, &ending);
    // Per-client metrics state goes with the client's last connection.
    conn.slot.release();
}

fn log_close(conn: &ConnInfo, ending: &Ending) {
    let route = conn.route.as_deref().unwrap_or("");
    match ending {
        Ending::Close { code, reason } if *code == close::ERROR || *code == close::POLICY => {
            tracing::warn!(conn = %conn.id, client = %conn.client_id, route, code, %reason, "websocket closed by server");
        }
        Ending::Close { code, reason } => {
            tracing::info!(conn = %conn.id, client = %conn.client_id, route, code, %reason, "websocket closed by server");
        }
        Ending::Peer { code, detail } => {
            tracing::info!(conn = %conn.id, client = %conn.client_id, route, code = code.unwrap_or(close::ABNORMAL), %detail, "websocket closed by client");
        }
    }
}

type Call<F> = CatchUnwind<AssertUnwindSafe<F>>;
type Outcome = Result<Result<Option<Message>, BoxError>, Box<dyn Any + Send>>;

struct Reader<S> {
    service: S,
    conn: Arc<ConnInfo>,
    settings: Settings,
    replies: Replies,
    heard: Arc<AtomicBool>,
}

impl<S> Reader<S>
where
    S: Service<Inbound, Response = Option<Message>, Error = BoxError>,
{
    async fn read(&mut self, stream: &mut SplitStream<WebSocket>) -> Ending {
        let mut ending = self.conn.sender.ending();
        let mut in_flight: FuturesOrdered<Call<S::Future>> = FuturesOrdered::new();
        let mut pending: Option<Inbound> = None;
        let mut peer_close: Option<Option<u16>> = None;
        let concurrency = self.settings.message_concurrency.max(1);
        let mut deadline = Instant::now() + self.settings.idle_timeout;

        loop {
            tokio::select! {
                biased;
                () = ended(&mut ending) => {
                    return ending.borrow().clone().expect("waited for");
                }
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(end) = self.on_outcome(outcome) {
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
                frame = stream.next(), if pending.is_none() && in_flight.len() < concurrency => {
                    deadline = Instant::now() + self.settings.idle_timeout;
                    self.heard.store(true, Ordering::Relaxed);
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
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(message)) => {
                            pending = Some(Inbound::new(message, self.conn.clone()));
                        }
                    }
                }
                () = sleep_until(deadline) => {
                    return Ending::close(close::AWAY, "idle timeout");
                }
            }
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) -> Option<Ending> {
        let action = match outcome {
            Err(panic) => return Some(panicked(&self.conn, panic)),
            Ok(Ok(reply)) => reply.map_or(Action::Nothing, Action::Reply),
            Ok(Err(err)) => self.replies.for_error(&self.conn, &err),
        };
        match action {
            Action::Nothing => None,
            Action::Reply(message) => {
                // A closed queue means the connection is ending; the ending branch reports why.
                let _ = self.conn.sender.send(message);
                None
            }
            Action::Close { code, reason } => Some(Ending::close(code, reason)),
        }
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
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            tracing::debug!(size, max_size, "inbound message too big");
            Ending::close(close::SIZE, "message too big")
        }
        Some(WsError::Protocol(p)) => Ending::peer(None, format!("protocol error: {p}")),
        _ => Ending::peer(None, format!("read error: {inner}")),
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    conn: Arc<ConnInfo>,
    ping_interval: Duration,
    heard: Arc<AtomicBool>,
) {
    let out = &conn.sender;
    let mut ending = out.ending();
    // A zero period would panic; validated configs never have one.
    let ping_interval = ping_interval.max(Duration::from_millis(1));
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let written = tokio::select! {
            biased;
            () = ended(&mut ending) => break,
            written = write_queued(&mut sink, out) => written,
        };
        if let Err(err) = written {
            out.end(Ending::peer(None, format!("write error: {err}")));
            return;
        }
        tokio::select! {
            biased;
            () = ended(&mut ending) => break,
            () = out.queued() => {}
            _ = ping.tick() => {
                // Ping only a quiet peer; any frame from it proves it alive.
                if !heard.swap(false, Ordering::Relaxed) {
                    let sent = tokio::select! {
                        biased;
                        () = ended(&mut ending) => break,
                        sent = sink.send(Message::Ping(Default::default())) => sent,
                    };
                    if let Err(err) = sent {
                        out.end(Ending::peer(None, format!("write error: {err}")));
                        return;
                    }
                }
            }
        }
    }

    let end = ending.borrow().clone();
    if let Some(Ending::Close { code, reason }) = end {
        let _ = timeout(CLOSE_WAIT, async {
            if code != close::POLICY {
                // Replies queued before the close still go out; an overflowing queue does not.
                write_queued(&mut sink, out).await?;
            }
            let frame = CloseFrame {
                code,
                reason: reason.as_ref().into(),
            };
            sink.send(Message::Close(Some(frame))).await
        })
        .await;
    }
}

/// Writes everything queued, then flushes once.
async fn write_queued<K>(sink: &mut K, out: &crate::Outbound) -> Result<(), K::Error>
where
    K: futures_util::Sink<Message> + Unpin,
{
    let mut fed = false;
    while let Some(message) = out.pop() {
        sink.feed(message).await?;
        fed = true;
    }
    if fed {
        sink.flush().await?;
    }
    Ok(())
}

/// Resolves once the connection's ending is known.
async fn ended(ending: &mut watch::Receiver<Option<Ending>>) {
    if ending.wait_for(Option::is_some).await.is_err() {
        // The sender lives as long as the connection's `Outbound`; never reached.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::Context;

    use wsguard_config::OverflowPolicy;

    use super::*;
    use crate::Outbound;

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
        write_queued(&mut socket, &out).await.unwrap();
        let sent: Vec<_> = socket.sent.iter().map(|m| m.to_text().unwrap()).collect();
        assert_eq!(sent, ["a", "b", "c", "d", "e"]);
        assert_eq!(socket.flushes, 1);
        assert!(out.is_empty());
        assert_eq!(out.written(), 5);

        // Nothing queued: no write, no flush.
        write_queued(&mut socket, &out).await.unwrap();
        assert_eq!(socket.flushes, 1);
    }
}
