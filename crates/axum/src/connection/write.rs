//! The connection's write path: a due ping, then every queued message, then one flush.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::Message;
use futures_util::Sink;

use crate::Sender;

/// What the connection owes the socket besides the queue.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// A ping is to go out before the queued messages.
    pub(super) ping_due: bool,
    /// Frames were handed to the socket and not yet flushed.
    pub(super) unflushed: bool,
    /// Pings received since the socket last finished a flush: their pongs wait in tungstenite.
    pub(super) pongs_owed: usize,
}

impl Writes {
    /// Writes a due ping, then what is queued, then flushes once.
    ///
    /// `buffer` is the socket's write buffer (`write_buffer_size`), which the socket writes out
    /// by itself once it holds more. Frames are handed over until one passes it (the socket has
    /// then written them), and past that only while at least another buffer's worth is queued:
    /// a short tail stays queued for the next batch rather than costing a second write of its
    /// own. `usize::MAX` writes everything.
    ///
    /// Cancel-safe: a message leaves the queue only once the socket has room for it, and an
    /// unfinished flush is remembered and finished by the next call.
    pub(super) fn poll_write<K>(
        &mut self,
        mut sink: Pin<&mut K>,
        out: &Sender,
        buffer: usize,
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
        let mut handed = 0usize;
        while !out.is_empty() {
            if handed > buffer && out.queued_bytes() < buffer {
                break;
            }
            ready!(sink.as_mut().poll_ready(cx))?;
            let Some(message) = out.pop() else { break };
            handed = handed.saturating_add(frame_len(&message));
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

/// Bytes a server frame (unmasked) takes on the wire.
fn frame_len(message: &Message) -> usize {
    let payload = match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes) => bytes.len(),
        Message::Close(frame) => frame.as_ref().map_or(0, |f| 2 + f.reason.len()),
    };
    let header = match payload {
        0..126 => 2,
        126..65_536 => 4,
        _ => 10,
    };
    header + payload
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

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
        let out = Sender::new(8, OverflowPolicy::DropNewest);
        for text in ["a", "b", "c", "d", "e"] {
            out.send(text).unwrap();
        }
        let mut socket = Recorder::default();
        let mut writes = Writes {
            ping_due: true,
            ..Writes::default()
        };
        poll_fn(|cx| writes.poll_write(Pin::new(&mut socket), &out, usize::MAX, cx))
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
        poll_fn(|cx| writes.poll_write(Pin::new(&mut socket), &out, usize::MAX, cx))
            .await
            .unwrap();
        assert_eq!(socket.flushes, 1);
    }

    #[tokio::test]
    async fn a_flush_stops_past_the_write_buffer_when_less_than_another_is_queued() {
        let out = Sender::new(32, OverflowPolicy::DropNewest);
        for i in 0..10 {
            out.send(format!("{i}").repeat(300)).unwrap();
        }
        let mut socket = Recorder::default();
        let mut writes = Writes::default();
        // Frames of 304 bytes: the fourth passes 1000 bytes, and 1800 more are queued, so the
        // write goes on; after the seventh, 900 are left: a batch of their own.
        poll_fn(|cx| writes.poll_write(Pin::new(&mut socket), &out, 1000, cx))
            .await
            .unwrap();
        assert_eq!((socket.sent.len(), socket.flushes, out.len()), (7, 1, 3));
        poll_fn(|cx| writes.poll_write(Pin::new(&mut socket), &out, 1000, cx))
            .await
            .unwrap();
        assert_eq!((socket.sent.len(), socket.flushes, out.len()), (10, 2, 0));
        let first: Vec<_> = socket
            .sent
            .iter()
            .map(|m| m.to_text().unwrap()[..1].to_owned())
            .collect();
        assert_eq!(first, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
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
        let out = Sender::new(8, OverflowPolicy::DropNewest);
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
                .poll_write(Pin::new(&mut socket), &out, usize::MAX, &mut cx)
                .is_pending()
        );
        assert_eq!(socket.sent.len(), 2);
        assert_eq!(out.len(), 1, "nothing left the queue without room for it");

        // Room again, but the flush cannot finish yet: the write is remembered as unflushed.
        socket.room = 8;
        assert!(
            writes
                .poll_write(Pin::new(&mut socket), &out, usize::MAX, &mut cx)
                .is_pending()
        );
        assert_eq!(socket.sent.len(), 3);
        assert!(out.is_empty());
        assert!(writes.unflushed);

        // With an empty queue the next call still finishes the flush.
        socket.flushable = true;
        assert!(
            writes
                .poll_write(Pin::new(&mut socket), &out, usize::MAX, &mut cx)
                .is_ready()
        );
        assert!(!writes.unflushed);
        let sent: Vec<_> = socket.sent.iter().map(|m| m.to_text().unwrap()).collect();
        assert_eq!(sent, ["a", "b", "c"]);
    }
}
