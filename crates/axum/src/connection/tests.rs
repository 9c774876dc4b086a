//! The connection's timing rules on paused time: the loop runs over channels instead of a socket,
//! so pings, the idle timeout, the pong bound and the close handshake are checked to the tick.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::Sink;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wsguard_config::{ConnectionConfig, DedupConfig, OverflowPolicy};

use super::{Settings, run_on};
use crate::close;
use crate::drain::Drain;
use crate::inbound::{ConnInfo, ConnectionId, Inbound};
use crate::reply::Replies;
use crate::route::ConnectionStats;
use crate::{BoxError, Sender};

/// The server's side of the wire: what it wrote and when; `blocked` makes it a socket whose
/// peer does not read (writes and flushes wait).
#[derive(Clone)]
struct Wire(Arc<Mutex<WireState>>);

struct WireState {
    opened: Instant,
    sent: Vec<(Duration, Message)>,
    blocked: bool,
    waker: Option<Waker>,
}

impl Wire {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(WireState {
            opened: Instant::now(),
            sent: Vec::new(),
            blocked: false,
            waker: None,
        })))
    }

    /// Time since the connection opened.
    fn now(&self) -> Duration {
        self.0.lock().unwrap().opened.elapsed()
    }

    fn sent(&self) -> Vec<(Duration, Message)> {
        self.0.lock().unwrap().sent.clone()
    }

    fn closes(&self) -> Vec<(Duration, u16)> {
        self.sent()
            .into_iter()
            .filter_map(|(at, m)| match m {
                Message::Close(Some(frame)) => Some((at, frame.code)),
                _ => None,
            })
            .collect()
    }

    fn pings(&self) -> Vec<Duration> {
        self.sent()
            .into_iter()
            .filter_map(|(at, m)| matches!(m, Message::Ping(_)).then_some(at))
            .collect()
    }

    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        let mut state = self.0.lock().unwrap();
        if state.blocked {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

impl Sink<Message> for Wire {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_open(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let mut state = self.0.lock().unwrap();
        let at = state.opened.elapsed();
        state.sent.push((at, item));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_open(cx)
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// A served connection: frames go in through `peer`, writes are recorded on `wire`.
struct Served {
    peer: Option<mpsc::UnboundedSender<Result<Message, axum::Error>>>,
    wire: Wire,
    conn: Arc<ConnInfo>,
    stats: ConnectionStats,
    drain: Drain,
    task: JoinHandle<()>,
}

impl Served {
    fn start(edit: impl FnOnce(&mut ConnectionConfig)) -> Self {
        let mut config = ConnectionConfig::testing();
        edit(&mut config);
        let (peer, mut frames) = mpsc::unbounded_channel();
        let stream = futures_util::stream::poll_fn(move |cx| frames.poll_recv(cx));
        let wire = Wire::new();
        let conn = Arc::new(ConnInfo {
            id: ConnectionId::next(),
            client_id: Arc::from("client"),
            peer_addr: None,
            route: Some(Arc::from("/ws")),
            sender: Sender::with_limits(
                config.send_queue_capacity,
                config.send_queue_bytes,
                OverflowPolicy::DropNewest,
                None,
            ),
            slot: Arc::default(),
        });
        let settings = Settings {
            idle_timeout: config.idle_timeout,
            ping_interval: config.ping_interval,
            message_concurrency: config.message_concurrency,
            max_pending_pongs: config.max_pending_pongs,
            close_timeout: config.close_timeout,
        };
        let replies = Replies {
            connection: config.clone().into(),
            dedup: DedupConfig::testing().into(),
        };
        let stats = ConnectionStats::default();
        // Echo; `sleep N` answers after N ms.
        let echo = tower::service_fn(|req: Inbound| async move {
            if let Some(ms) = req.text().and_then(|t| t.strip_prefix("sleep ")) {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            Ok::<_, BoxError>(Some(req.message))
        });
        let drain = Drain::new();
        let task = tokio::spawn(run_on(
            stream,
            wire.clone(),
            echo,
            conn.clone(),
            settings,
            replies,
            stats.clone(),
            Some(drain.ticket()),
        ));
        Self {
            peer: Some(peer),
            wire,
            conn,
            stats,
            drain,
            task,
        }
    }

    fn send(&self, message: Message) {
        let _ = self.peer.as_ref().unwrap().send(Ok(message));
    }

    /// Lets paused time run until the server has written a close frame.
    async fn until_close_frame(&self) {
        while self.wire.closes().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The peer answers the close (its stream ends); the connection task finishes.
    async fn hang_up(mut self) -> Self {
        self.peer = None;
        (&mut self.task).await.unwrap();
        self
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn a_quiet_peer_is_pinged_every_ping_interval_and_closed_after_idle_timeout() {
    let served = Served::start(|c| {
        c.ping_interval = secs(1);
        c.idle_timeout = secs(3) + Duration::from_millis(500);
    });
    served.until_close_frame().await;
    assert_eq!(served.wire.pings(), [secs(1), secs(2), secs(3)]);
    assert_eq!(
        served.wire.closes(),
        [(secs(3) + Duration::from_millis(500), close::GOING_AWAY)]
    );
    let served = served.hang_up().await;
    assert_eq!(served.stats.close_timeouts(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_talks_is_never_pinged_nor_closed() {
    let served = Served::start(|c| {
        c.ping_interval = secs(1);
        c.idle_timeout = secs(2);
    });
    for i in 0..20 {
        served.send(Message::text(format!("m{i}")));
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert!(served.wire.pings().is_empty(), "{:?}", served.wire.pings());
    assert!(served.wire.closes().is_empty());
    assert_eq!(
        served
            .wire
            .sent()
            .iter()
            .filter(|(_, m)| matches!(m, Message::Text(_)))
            .count(),
        20,
        "every message echoed"
    );
    assert!(!served.conn.sender.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_peer_heard_from_only_by_pongs_stays_open() {
    let served = Served::start(|c| {
        c.ping_interval = secs(1);
        c.idle_timeout = secs(2);
    });
    // The peer answers each ping: a pong is a frame, so it is alive.
    let mut answered = 0;
    while answered < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if served.wire.pings().len() > answered {
            answered += 1;
            served.send(Message::Pong(Default::default()));
        }
    }
    assert!(served.wire.closes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn pings_whose_pongs_cannot_be_written_close_1008_past_max_pending_pongs() {
    let served = Served::start(|c| {
        c.max_pending_pongs = 4;
        c.close_timeout = secs(2);
    });
    served.wire.0.lock().unwrap().blocked = true;
    for _ in 0..4 {
        served.send(Message::Ping(Default::default()));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !served.conn.sender.is_closed(),
        "4 pending pongs are allowed"
    );
    served.send(Message::Ping(Default::default()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(served.conn.sender.is_closed(), "the 5th closes");
    assert_eq!(served.stats.closed_slow_reader(), 1);
    // The peer never reads: the close frame cannot be written, and the connection is dropped
    // at close_timeout.
    let opened = Instant::now();
    let served = served.hang_up().await;
    assert!(opened.elapsed() <= secs(2));
    assert_eq!(served.stats.close_timeouts(), 1);
    assert!(served.wire.closes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn pending_pongs_are_forgiven_once_a_flush_finishes() {
    let served = Served::start(|c| c.max_pending_pongs = 4);
    for _ in 0..50 {
        for _ in 0..4 {
            served.send(Message::Ping(Default::default()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !served.conn.sender.is_closed(),
        "a reading peer may ping as it likes"
    );
}

#[tokio::test(start_paused = true)]
async fn the_close_handshake_waits_at_most_close_timeout_for_the_answer() {
    let served = Served::start(|c| c.close_timeout = secs(3));
    served.conn.sender.close(4000, "bye");
    // The peer never answers: the task ends on its own at the deadline.
    let Served {
        task,
        stats,
        wire,
        peer: _peer,
        ..
    } = served;
    task.await.unwrap();
    let [(sent_at, code)] = wire.closes()[..] else {
        panic!("one close frame: {:?}", wire.closes());
    };
    assert_eq!(code, 4000);
    assert_eq!(wire.now() - sent_at, secs(3));
    assert_eq!(stats.close_timeouts(), 1);
}

#[tokio::test(start_paused = true)]
async fn messages_queued_before_a_close_go_out_before_the_close_frame() {
    let served = Served::start(|_| {});
    served.conn.sender.send("last words").unwrap();
    served.conn.sender.close(close::NORMAL_CLOSURE, "done");
    served.until_close_frame().await;
    let sent: Vec<_> = served.wire.sent().into_iter().map(|(_, m)| m).collect();
    assert!(
        matches!(&sent[..], [Message::Text(t), Message::Close(_)] if t.as_str() == "last words")
    );
    served.hang_up().await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_lets_calls_in_flight_finish_then_closes_1001_with_a_reconnect_hint() {
    let served = Served::start(|_| {});
    served.send(Message::text("sleep 500"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let drain = served.drain.clone();
    let report = tokio::spawn(async move { drain.run(secs(10), secs(5)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Sent after the drain started: never read, so never handled.
    served.send(Message::text("too late"));
    served.until_close_frame().await;

    let sent: Vec<_> = served.wire.sent();
    let texts: Vec<_> = sent
        .iter()
        .filter_map(|(_, m)| m.to_text().ok().filter(|t| !t.is_empty()))
        .collect();
    assert_eq!(texts[0], "sleep 500", "the call in flight finished first");
    assert!(!texts.contains(&"too late"));
    let Some((at, Message::Close(Some(frame)))) = sent.last() else {
        panic!("ends with a close frame: {sent:?}");
    };
    assert_eq!(frame.code, close::GOING_AWAY);
    assert!(frame.reason.contains("reconnect in"), "{}", frame.reason);
    assert_eq!(
        *at,
        Duration::from_millis(500),
        "closed once the reply was out"
    );

    served.hang_up().await;
    let report = report.await.unwrap();
    assert_eq!(
        (
            report.connections_closed,
            report.messages_flushed,
            report.messages_dropped
        ),
        (1, 1, 0)
    );
    assert_eq!(report.still_open, 0);
}
