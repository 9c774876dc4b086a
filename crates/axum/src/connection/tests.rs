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
use wsguard_config::{ConnectionConfig, DedupConfig, OverflowPolicy, SessionConfig};
use wsguard_session::Sessions;
use wsguard_session::protocol::{RefusalReason, ServerFrame};

use super::{Opening, Settings, run_on};
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
    /// How many frames had been sent at each flush that followed new frames.
    flushed: Vec<usize>,
    blocked: bool,
    waker: Option<Waker>,
}

impl Wire {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(WireState {
            opened: Instant::now(),
            sent: Vec::new(),
            flushed: Vec::new(),
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
        let open = self.poll_open(cx);
        if open.is_ready() {
            let mut state = self.0.lock().unwrap();
            let sent = state.sent.len();
            if state.flushed.last() != Some(&sent) {
                state.flushed.push(sent);
            }
        }
        open
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
        Self::start_with(edit, None)
    }

    /// A connection whose client offered `wsguard.v1`, on `sessions`.
    fn start_session(sessions: &Sessions) -> Self {
        let opening = Opening {
            sessions: sessions.clone(),
            client: None,
        };
        Self::start_with(|_| {}, Some(opening))
    }

    fn start_with(edit: impl FnOnce(&mut ConnectionConfig), opening: Option<Opening>) -> Self {
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
        let settings = Settings::new(&config, opening.is_some());
        let replies = Replies {
            connection: config.clone().into(),
            dedup: DedupConfig::testing().into(),
        };
        let stats = ConnectionStats::default();
        // Echo; `sleep N` answers after N ms, `send X` sends X through the connection's sender
        // before answering, a JSON array is answered without its last byte.
        let echo = tower::service_fn(|req: Inbound| async move {
            if let Some(cut) = req.text().filter(|t| t.starts_with('[')) {
                return Ok(Some(Message::text(&cut[..cut.len() - 1])));
            }
            if let Some(ms) = req.text().and_then(|t| t.strip_prefix("sleep ")) {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            if let Some(text) = req.text().and_then(|t| t.strip_prefix("send ")) {
                req.sender().send(text.to_owned()).unwrap();
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
            opening,
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

impl Wire {
    /// The protocol frames written, with when.
    fn frames(&self) -> Vec<(Duration, ServerFrame)> {
        self.sent()
            .into_iter()
            .filter_map(|(at, m)| match m {
                Message::Text(text) => Some((at, ServerFrame::parse(text.as_str()).unwrap())),
                _ => None,
            })
            .collect()
    }

    fn acks(&self) -> Vec<(Duration, u64)> {
        self.frames()
            .into_iter()
            .filter_map(|(at, f)| match f {
                ServerFrame::Ack { id } => Some((at, id)),
                _ => None,
            })
            .collect()
    }

    fn session_frame(&self) -> wsguard_session::protocol::SessionFrame {
        match self.frames().into_iter().next() {
            Some((_, ServerFrame::Session(frame))) => frame,
            other => panic!("the session frame comes first: {other:?}"),
        }
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
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

#[tokio::test(start_paused = true)]
async fn under_a_session_acks_are_batched_once_per_ack_interval() {
    let sessions = Sessions::new(SessionConfig {
        ack_interval: ms(50),
        ..SessionConfig::testing()
    });
    let served = Served::start_session(&sessions);
    served.send(Message::text(r#"{"type":"hello"}"#));
    for id in 1..=5 {
        served.send(Message::text(format!(
            r#"{{"type":"msg","id":{id},"data":"m{id}"}}"#
        )));
    }
    tokio::time::sleep(ms(49)).await;
    assert!(served.wire.acks().is_empty());
    tokio::time::sleep(ms(2)).await;
    assert_eq!(served.wire.acks(), [(ms(50), 5)]);
    let msgs: Vec<_> = served
        .wire
        .frames()
        .into_iter()
        .filter_map(|(_, f)| match f {
            ServerFrame::Msg { seq, data } => Some((seq, data.get().to_owned())),
            _ => None,
        })
        .collect();
    let expected: Vec<_> = (1..=5).map(|i| (i, format!(r#""m{i}""#))).collect();
    assert_eq!(msgs, expected, "the echoes, numbered from 1");
    // Nothing more to acknowledge: no more acks.
    tokio::time::sleep(ms(200)).await;
    assert_eq!(served.wire.acks().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_resume_elsewhere_supersedes_the_first_connection_which_closes_1008() {
    let sessions = Sessions::new(SessionConfig::testing());
    let first = Served::start_session(&sessions);
    first.send(Message::text(r#"{"type":"hello"}"#));
    tokio::time::sleep(ms(1)).await;
    let token = first.wire.session_frame().session.unwrap();

    let second = Served::start_session(&sessions);
    second.send(Message::text(format!(
        r#"{{"type":"resume","session":"{token}","last":0}}"#
    )));
    first.until_close_frame().await;
    assert_eq!(first.wire.closes()[0].1, close::POLICY_VIOLATION);
    assert!(second.wire.session_frame().resumed);
    assert!(second.wire.closes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_no_first_frame_is_closed_after_idle_timeout() {
    let sessions = Sessions::new(SessionConfig::testing());
    let served = Served::start_with(
        |c| c.idle_timeout = secs(3),
        Some(Opening {
            sessions: sessions.clone(),
            client: None,
        }),
    );
    served.until_close_frame().await;
    assert_eq!(served.wire.closes(), [(secs(3), close::GOING_AWAY)]);
    assert_eq!(sessions.stats().created, 0);
}

/// Under a session the send queue is filled from the log as it drains: a reader slower than
/// the queue's capacity (16 here) loses nothing while the log holds its backlog (64).
#[tokio::test(start_paused = true)]
async fn a_slow_reader_within_the_log_bound_gets_every_message_in_order_and_stays_connected() {
    let sessions = Sessions::new(SessionConfig::testing());
    let served = Served::start_session(&sessions);
    served.send(Message::text(r#"{"type":"hello"}"#));
    tokio::time::sleep(ms(1)).await;
    served.wire.0.lock().unwrap().blocked = true;
    let texts: Vec<String> = (1..=60).map(|i| format!("n{i}")).collect();
    for text in &texts {
        served.conn.sender.send(text.as_str()).unwrap();
    }
    tokio::time::sleep(secs(1)).await;
    assert!(!served.conn.sender.is_closed());
    assert_eq!(served.stats.closed_slow_reader(), 0);

    let waker = {
        let mut wire = served.wire.0.lock().unwrap();
        wire.blocked = false;
        wire.waker.take()
    };
    waker.expect("the writer waits on the wire").wake();
    tokio::time::sleep(ms(10)).await;
    let expected: Vec<(u64, String)> = (1..)
        .zip(texts.iter().map(|t| format!("\"{t}\"")))
        .collect();
    assert_eq!(served.wire.msgs(), expected);
    assert!(!served.conn.sender.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_whose_log_overflowed_is_closed_1008_and_its_resume_told_the_gap() {
    let sessions = Sessions::new(SessionConfig {
        max_messages: 8,
        ..SessionConfig::testing()
    });
    let served = Served::start_with(
        |c| c.close_timeout = secs(1),
        Some(Opening {
            sessions: sessions.clone(),
            client: None,
        }),
    );
    served.send(Message::text(r#"{"type":"hello"}"#));
    tokio::time::sleep(ms(1)).await;
    let token = served.wire.session_frame().session.unwrap();
    served.wire.0.lock().unwrap().blocked = true;
    for i in 1..=40 {
        served.conn.sender.send(format!("n{i}")).unwrap();
    }
    tokio::time::sleep(ms(10)).await;
    assert_eq!(served.stats.closed_slow_reader(), 1);
    let served = served.hang_up().await;
    assert_eq!(
        served.wire.frames().len(),
        1,
        "nothing but the session frame"
    );

    let resumed = Served::start_session(&sessions);
    resumed.send(Message::text(format!(
        r#"{{"type":"resume","session":"{token}","last":0}}"#
    )));
    tokio::time::sleep(ms(1)).await;
    let frame = resumed.wire.session_frame();
    assert_eq!(frame.reason, Some(RefusalReason::Gap));
    assert_eq!(frame.lost, Some(32));
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_when_the_client_drops_finishes_and_its_reply_waits_for_the_resume() {
    let sessions = Sessions::new(SessionConfig::testing());
    // With room for a second call the connection reads on, and sees the drop mid-call.
    let opening = Opening {
        sessions: sessions.clone(),
        client: None,
    };
    let served = Served::start_with(|c| c.message_concurrency = 2, Some(opening));
    served.send(Message::text(r#"{"type":"hello"}"#));
    served.send(Message::text(r#"{"type":"msg","id":1,"data":"sleep 500"}"#));
    tokio::time::sleep(ms(10)).await;
    let token = served.wire.session_frame().session.unwrap();
    // The client vanishes while its message is being handled.
    let served = served.hang_up().await;
    assert_eq!(served.wire.now(), ms(500), "the call finished first");
    assert_eq!(sessions.stats().detached, Some(1));

    let resumed = Served::start_session(&sessions);
    resumed.send(Message::text(format!(
        r#"{{"type":"resume","session":"{token}","last":0}}"#
    )));
    tokio::time::sleep(ms(1)).await;
    let frames: Vec<_> = resumed.wire.frames().into_iter().map(|(_, f)| f).collect();
    let ServerFrame::Session(frame) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert!(frame.resumed);
    assert_eq!(frame.last, 1, "processed: the client must not resend it");
    assert!(
        matches!(&frames[1], ServerFrame::Msg { seq: 1, data } if data.get() == r#""sleep 500""#),
        "{frames:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_superseded_connection_finishes_its_call_and_the_resend_on_the_new_one_is_not_run() {
    let sessions = Sessions::new(SessionConfig::testing());
    let first = Served::start_session(&sessions);
    first.send(Message::text(r#"{"type":"hello"}"#));
    first.send(Message::text(r#"{"type":"msg","id":1,"data":"sleep 500"}"#));
    tokio::time::sleep(ms(10)).await;
    let token = first.wire.session_frame().session.unwrap();

    // The client believes the first connection dead, resumes, and resends id 1.
    let second = Served::start_session(&sessions);
    second.send(Message::text(format!(
        r#"{{"type":"resume","session":"{token}","last":0}}"#
    )));
    second.send(Message::text(r#"{"type":"msg","id":1,"data":"sleep 500"}"#));
    first.until_close_frame().await;
    assert_eq!(first.wire.closes()[0].1, close::POLICY_VIOLATION);
    assert_eq!(
        first.wire.closes()[0].0,
        ms(500),
        "closed once its call finished"
    );

    tokio::time::sleep(ms(100)).await;
    let frames: Vec<_> = second.wire.frames().into_iter().map(|(_, f)| f).collect();
    let ServerFrame::Session(frame) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(frame.last, 0, "id 1 was still in flight");
    let replies: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Msg { seq, data } => Some((*seq, data.get().to_owned())),
            _ => None,
        })
        .collect();
    assert_eq!(
        replies,
        [(1, r#""sleep 500""#.to_owned())],
        "handled once, by the first connection; written by the second"
    );
    assert!(frames.contains(&ServerFrame::Ack { id: 1 }), "{frames:?}");
}

#[tokio::test(start_paused = true)]
async fn a_finishing_connection_is_not_cut_short_by_the_idle_timeout() {
    let sessions = Sessions::new(SessionConfig::testing());
    let opening = Opening {
        sessions: sessions.clone(),
        client: None,
    };
    let served = Served::start_with(
        |c| {
            c.message_concurrency = 2;
            c.idle_timeout = secs(3);
        },
        Some(opening),
    );
    served.send(Message::text(r#"{"type":"hello"}"#));
    served.send(Message::text(
        r#"{"type":"msg","id":1,"data":"sleep 5000"}"#,
    ));
    tokio::time::sleep(ms(10)).await;
    let served = served.hang_up().await;
    assert_eq!(served.wire.now(), secs(5), "the call finished");
    assert!(served.wire.closes().is_empty());
    let stats = sessions.stats();
    assert_eq!(
        stats.bytes,
        Some(r#""sleep 5000""#.len()),
        "its reply is logged"
    );
}

impl Wire {
    /// The `msg` frames written: `seq` and `data`.
    fn msgs(&self) -> Vec<(u64, String)> {
        self.frames()
            .into_iter()
            .filter_map(|(_, f)| match f {
                ServerFrame::Msg { seq, data } => Some((seq, data.get().to_owned())),
                _ => None,
            })
            .collect()
    }
}

fn numbered(texts: &[&str], from: u64) -> Vec<(u64, String)> {
    (from..)
        .zip(texts)
        .map(|(seq, text)| (seq, format!("{text:?}")))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn replies_written_at_once_are_logged_written_once_and_replayed_after_a_resume() {
    let sessions = Sessions::new(SessionConfig::testing());
    let served = Served::start_session(&sessions);
    served.send(Message::text(r#"{"type":"hello"}"#));
    for id in 1..=3 {
        served.send(Message::text(format!(
            r#"{{"type":"msg","id":{id},"data":"r{id}"}}"#
        )));
    }
    tokio::time::sleep(ms(100)).await;
    let token = served.wire.session_frame().session.unwrap();
    assert_eq!(
        served.wire.msgs(),
        numbered(&["r1", "r2", "r3"], 1),
        "each once, in order"
    );
    assert_eq!(
        sessions.stats().bytes,
        Some(3 * r#""r1""#.len()),
        "all three logged until acknowledged"
    );
    // The client holds seq 1 only when the connection drops.
    let served = served.hang_up().await;
    assert_eq!(served.wire.msgs().len(), 3, "nothing written twice");

    let resumed = Served::start_session(&sessions);
    resumed.send(Message::text(format!(
        r#"{{"type":"resume","session":"{token}","last":1}}"#
    )));
    resumed.send(Message::text(r#"{"type":"msg","id":4,"data":"r4"}"#));
    tokio::time::sleep(ms(100)).await;
    assert!(resumed.wire.session_frame().resumed);
    assert_eq!(
        resumed.wire.msgs(),
        numbered(&["r2", "r3", "r4"], 2),
        "the replay, then the new reply, each once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reply_behind_a_message_sent_during_its_call_goes_out_after_it_once() {
    let sessions = Sessions::new(SessionConfig::testing());
    let served = Served::start_session(&sessions);
    served.send(Message::text(r#"{"type":"hello"}"#));
    served.send(Message::text(r#"{"type":"msg","id":1,"data":"send note"}"#));
    served.send(Message::text(r#"{"type":"msg","id":2,"data":"plain"}"#));
    tokio::time::sleep(ms(100)).await;
    // "note" was logged by the handler before its reply: the reply is not the next message
    // the client is owed when it is logged, so both go out from the log, in order.
    assert_eq!(
        served.wire.msgs(),
        numbered(&["note", "send note", "plain"], 1)
    );
    let served = served.hang_up().await;
    assert_eq!(served.wire.msgs().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_connection_closing_after_its_call_logs_the_reply_for_the_resume_without_writing_it() {
    let sessions = Sessions::new(SessionConfig::testing());
    let served = Served::start_session(&sessions);
    served.send(Message::text(r#"{"type":"hello"}"#));
    served.send(Message::text(r#"{"type":"msg","id":1,"data":"r1"}"#));
    served.send(Message::text(r#"{"type":"msg","id":2,"data":"sleep 300"}"#));
    tokio::time::sleep(ms(10)).await;
    let token = served.wire.session_frame().session.unwrap();
    // The application closes the connection while id 2 is handled: the call finishes first.
    served.conn.sender.close(4000, "bye");
    served.until_close_frame().await;
    assert_eq!(served.wire.closes(), [(ms(300), 4000)]);
    assert_eq!(
        served.wire.msgs(),
        numbered(&["r1"], 1),
        "the reply that came once the connection was ending is not written"
    );
    assert_eq!(served.wire.acks().last().map(|a| a.1), Some(2));
    drop(served.hang_up().await);

    let resumed = Served::start_session(&sessions);
    resumed.send(Message::text(format!(
        r#"{{"type":"resume","session":"{token}","last":1}}"#
    )));
    tokio::time::sleep(ms(10)).await;
    assert_eq!(resumed.wire.session_frame().last, 2);
    assert_eq!(resumed.wire.msgs(), numbered(&["sleep 300"], 2));
}

#[tokio::test(start_paused = true)]
async fn replies_go_out_once_they_fill_the_write_buffer_before_more_frames_are_read() {
    let served = Served::start(|c| c.write_buffer_size = 500);
    let text = "x".repeat(120);
    for _ in 0..10 {
        served.send(Message::text(text.clone()));
    }
    tokio::time::sleep(ms(10)).await;
    // Frames of 124 bytes: five fill the 500 bytes and go out before the next frame is read,
    // in one write (the socket writes its buffer once a frame passes it), not ten in two.
    assert_eq!(served.wire.0.lock().unwrap().flushed, [5, 10]);
}

#[tokio::test(start_paused = true)]
async fn json_data_is_echoed_as_json_and_a_reply_that_is_not_json_as_a_string() {
    let sessions = Sessions::new(SessionConfig::testing());
    let served = Served::start_session(&sessions);
    served.send(Message::text(r#"{"type":"hello"}"#));
    let data = [
        r#"{"a":[1,"\u00e9"]}"#,
        "12.50",
        "null",
        r#""text""#,
        "[1,2]",
    ];
    for (id, data) in (1..).zip(data) {
        served.send(Message::text(format!(
            r#"{{"type":"msg","id":{id},"data":{data}}}"#
        )));
    }
    tokio::time::sleep(ms(1)).await;
    // The service gets each value's JSON text (a string's content), and its echo goes out as
    // the same JSON; the reply to `[1,2]` is `[1,2`, which is no JSON: a string.
    let expected: Vec<(u64, String)> = (1..)
        .zip([
            r#"{"a":[1,"\u00e9"]}"#,
            "12.50",
            "null",
            r#""text""#,
            r#""[1,2""#,
        ])
        .map(|(seq, data)| (seq, data.to_owned()))
        .collect();
    assert_eq!(served.wire.msgs(), expected);
}

#[tokio::test(start_paused = true)]
async fn a_batch_of_small_replies_goes_out_in_one_write_with_a_session_as_without() {
    let sessions = Sessions::new(SessionConfig::testing());
    let served = Served::start_session(&sessions);
    served.send(Message::text(r#"{"type":"hello"}"#));
    tokio::time::sleep(ms(1)).await;
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(90));
    for id in 1..=32 {
        served.send(Message::text(format!(
            r#"{{"type":"msg","id":{id},"data":{data}}}"#
        )));
    }
    tokio::time::sleep(ms(1)).await;
    assert_eq!(served.wire.msgs().len(), 32);
    // 32 `msg` frames of 136 to 137 bytes: 4.4 KB, past the 4 KiB write buffer that 32 replies
    // of the same data without a session fit in. They go out in one write all the same: the
    // session frame's write, then all 32.
    let config = ConnectionConfig::testing();
    assert_eq!(config.write_buffer_size, 4096);
    assert_eq!(served.wire.0.lock().unwrap().flushed, [1, 33]);
}
