//! The protocol's rules on the registry and the memory store, on paused time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready, task};
use tower_service::Service;
use wsguard_config::SessionConfig;
use wsguard_session::protocol::{RefusalReason, SessionFrame, WireFrame};
use wsguard_session::store::Logged;
use wsguard_session::{Accept, MessageData, Opened, Session, SessionGone, SessionToken, Sessions};

fn config() -> SessionConfig {
    SessionConfig {
        ttl: Duration::from_secs(300),
        max_messages: 1000,
        max_bytes: 1 << 20,
        max_sessions: 100,
        max_total_bytes: 1 << 24,
        ..SessionConfig::testing()
    }
}

fn attached(opened: Opened) -> (Session, SessionFrame, Vec<Logged>) {
    match opened {
        Opened::Attached {
            session,
            frame,
            replay,
        } => (session, frame, replay),
        Opened::Unavailable { frame } => panic!("unavailable: {frame:?}"),
    }
}

async fn hello(sessions: &Sessions, client: Option<&str>) -> (Session, SessionToken) {
    let (session, frame, _) = attached(sessions.hello(client).await);
    assert_eq!(frame.session, Some(session.token()));
    let token = session.token();
    (session, token)
}

fn texts(replay: &[Logged]) -> Vec<(u64, String)> {
    replay
        .iter()
        .map(|m| match &m.payload {
            MessageData::Json(data) => (m.seq, data.get().to_owned()),
            MessageData::Binary(b) => (m.seq, format!("{b:?}")),
        })
        .collect()
}

async fn process(session: &mut Session, id: u64) {
    match session.accept(id) {
        Accept::New(p) => p.processed(),
        other => panic!("id {id}: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn new_session_answers_with_a_fresh_token_and_no_reason() {
    let sessions = Sessions::new(config());
    let (_session, frame, replay) = attached(sessions.hello(Some("a")).await);
    assert!(!frame.resumed);
    assert_eq!(frame.last, 0);
    assert_eq!(frame.reason, None);
    assert_eq!(frame.lost, None);
    assert!(replay.is_empty());
    assert_eq!(sessions.stats().created, 1);
    assert_eq!(sessions.stats().sessions, Some(1));
    assert_eq!(sessions.stats().detached, Some(0));
}

#[tokio::test(start_paused = true)]
async fn resume_replays_exactly_the_messages_after_last_with_their_seq() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, Some("a")).await;
    for i in 1..=5 {
        assert_eq!(session.append(format!("m{i}")).await.unwrap(), i);
    }
    drop(session);
    assert_eq!(sessions.stats().detached, Some(1));

    let (session, frame, replay) = attached(sessions.resume(&token, Some("a"), 2).await);
    assert!(frame.resumed);
    assert_eq!(frame.session, Some(token));
    assert_eq!(frame.reason, None);
    assert_eq!(
        texts(&replay),
        [
            (3, r#""m3""#.into()),
            (4, r#""m4""#.into()),
            (5, r#""m5""#.into())
        ]
    );
    assert_eq!(sessions.stats().detached, Some(0));
    // Numbering goes on after the replayed messages.
    assert_eq!(session.append("m6").await.unwrap(), 6);

    // A second drop and resume: only what came after the new `last`.
    drop(session);
    let (_session, frame, replay) = attached(sessions.resume(&token, Some("a"), 5).await);
    assert!(frame.resumed);
    assert_eq!(texts(&replay), [(6, r#""m6""#.into())]);

    let stats = sessions.stats();
    assert_eq!(stats.resumed, 2);
    assert_eq!(stats.replayed, 4);
}

#[tokio::test(start_paused = true)]
async fn binary_messages_share_the_sequence_and_travel_behind_their_seq() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, None).await;
    session.append("t").await.unwrap();
    session.append(vec![1u8, 2, 3]).await.unwrap();
    drop(session);
    let (_session, _, replay) = attached(sessions.resume(&token, None, 0).await);
    let wire: Vec<WireFrame> = replay.iter().map(Logged::to_wire).collect();
    assert_eq!(
        wire,
        [
            WireFrame::Text(r#"{"type":"msg","seq":1,"data":"t"}"#.into()),
            WireFrame::Binary(vec![0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 3].into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_and_foreign_tokens_get_the_same_refusal() {
    let sessions = Sessions::new(config());
    let (alice, alice_token) = hello(&sessions, Some("alice")).await;
    alice.append("for alice").await.unwrap();
    drop(alice);

    let (_m, foreign, replay) = attached(sessions.resume(&alice_token, Some("mallory"), 0).await);
    assert!(replay.is_empty());
    let (_u, unknown, _) = attached(
        sessions
            .resume(&SessionToken::generate(), Some("mallory"), 0)
            .await,
    );
    let without_token = |f: &SessionFrame| SessionFrame {
        session: None,
        ..f.clone()
    };
    assert_eq!(without_token(&foreign), without_token(&unknown));
    assert_eq!(foreign.reason, Some(RefusalReason::Unknown));
    assert!(!foreign.resumed);
    assert_ne!(foreign.session, Some(alice_token));
    assert_eq!(sessions.stats().refused.unknown, 2);

    // The foreign attempt neither freed nor attached alice's session.
    assert_eq!(sessions.stats().detached, Some(1));
    let (_a, frame, replay) = attached(sessions.resume(&alice_token, Some("alice"), 0).await);
    assert!(frame.resumed);
    assert_eq!(texts(&replay), [(1, r#""for alice""#.into())]);
}

#[tokio::test(start_paused = true)]
async fn detached_session_expires_after_ttl_and_frees_everything() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, Some("a")).await;
    session.append("x".repeat(100)).await.unwrap();
    drop(session);
    assert_eq!(sessions.stats().bytes, Some(102));

    advance(Duration::from_secs(299)).await;
    assert_eq!(sessions.sweep().await, 0);
    assert_eq!(sessions.stats().sessions, Some(1));

    advance(Duration::from_secs(1)).await;
    assert_eq!(sessions.sweep().await, 1);
    let stats = sessions.stats();
    assert_eq!(
        (stats.sessions, stats.detached, stats.bytes, stats.expired),
        (Some(0), Some(0), Some(0), 1)
    );
    // A sender to the expired session finds nothing.
    let err = sessions.sender_for_session(&token).send("late").await;
    assert!(err.is_err());

    let (_s, frame, _) = attached(sessions.resume(&token, Some("a"), 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Expired));
    assert_eq!(sessions.stats().refused.expired, 1);
}

#[tokio::test(start_paused = true)]
async fn resume_past_the_ttl_is_refused_expired_without_the_periodic_sweep() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, None).await;
    drop(session);
    advance(Duration::from_secs(300)).await;
    let (_s, frame, _) = attached(sessions.resume(&token, None, 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Expired));
    assert_eq!(sessions.stats().expired, 1);
    // Only the new session is held.
    assert_eq!(sessions.stats().sessions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn an_attached_session_never_expires() {
    let sessions = Sessions::new(config());
    let (_session, token) = hello(&sessions, None).await;
    advance(Duration::from_secs(3600)).await;
    assert_eq!(sessions.sweep().await, 0);
    assert!(sessions.sender_for_session(&token).send("x").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn max_messages_drops_the_oldest_and_a_resume_needing_them_gets_gap_with_exact_lost() {
    let sessions = Sessions::new(SessionConfig {
        max_messages: 3,
        ..config()
    });
    let (mut session, token) = hello(&sessions, Some("a")).await;
    process(&mut session, 1).await;
    process(&mut session, 2).await;
    for i in 1..=5 {
        session.append(format!("m{i}")).await.unwrap();
    }
    assert_eq!(sessions.stats().dropped, 2);
    drop(session);

    // The client holds seq 1: seq 2 is gone, 3..5 are held.
    let (_s, frame, replay) = attached(sessions.resume(&token, Some("a"), 1).await);
    assert!(!frame.resumed);
    assert_ne!(frame.session, Some(token));
    assert_eq!(frame.reason, Some(RefusalReason::Gap));
    assert_eq!(frame.lost, Some(1));
    assert_eq!(frame.last, 2, "the old session's last processed client id");
    assert!(replay.is_empty());
    assert_eq!(sessions.stats().refused.gap, 1);
    // The old session is freed.
    assert_eq!(sessions.stats().sessions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_resume_past_the_dropped_messages_is_not_a_gap() {
    let sessions = Sessions::new(SessionConfig {
        max_messages: 3,
        ..config()
    });
    let (session, token) = hello(&sessions, None).await;
    for i in 1..=5 {
        session.append(format!("m{i}")).await.unwrap();
    }
    drop(session);
    let (_s, frame, replay) = attached(sessions.resume(&token, None, 2).await);
    assert!(frame.resumed);
    assert_eq!(replay.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn max_bytes_drops_the_oldest_but_keeps_the_newest() {
    let sessions = Sessions::new(SessionConfig {
        max_bytes: 10,
        ..config()
    });
    let (session, token) = hello(&sessions, None).await;
    // Each payload is 6 bytes of JSON ("abcd" with its quotes).
    for _ in 0..3 {
        session.append("abcd").await.unwrap();
    }
    assert_eq!(sessions.stats().bytes, Some(6));
    assert_eq!(sessions.stats().dropped, 2);
    // A message larger than the bound alone is still held.
    session.append("x".repeat(20)).await.unwrap();
    assert_eq!(sessions.stats().bytes, Some(22));
    drop(session);
    let (_s, frame, _) = attached(sessions.resume(&token, None, 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Gap));
    assert_eq!(frame.lost, Some(3));
}

#[tokio::test(start_paused = true)]
async fn acks_trim_and_acknowledged_messages_are_neither_replayed_nor_lost() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, None).await;
    for i in 1..=4 {
        session.append(format!("m{i}")).await.unwrap();
    }
    assert_eq!(sessions.stats().bytes, Some(16));
    session.ack(2).await.unwrap();
    assert_eq!(sessions.stats().bytes, Some(8));
    assert_eq!(
        session
            .read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [3, 4]
    );
    // An ack past the last seq frees only what exists.
    session.ack(99).await.unwrap();
    assert_eq!(sessions.stats().bytes, Some(0));
    assert_eq!(session.append("m5").await.unwrap(), 5);
    drop(session);
    let (_s, frame, replay) = attached(sessions.resume(&token, None, 4).await);
    assert!(frame.resumed);
    assert_eq!(replay.iter().map(|m| m.seq).collect::<Vec<_>>(), [5]);
}

#[tokio::test(start_paused = true)]
async fn resume_with_last_acknowledges_up_to_it() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, None).await;
    for i in 1..=3 {
        session.append(format!("m{i}")).await.unwrap();
    }
    drop(session);
    let (session, _, _) = attached(sessions.resume(&token, None, 2).await);
    assert_eq!(
        session
            .read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [3]
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_claiming_unsent_messages_is_refused_unknown() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, None).await;
    session.append("m1").await.unwrap();
    drop(session);
    let (_s, frame, _) = attached(sessions.resume(&token, None, 7).await);
    assert_eq!(frame.reason, Some(RefusalReason::Unknown));
    assert_eq!(sessions.stats().sessions, Some(1));
}

#[tokio::test(start_paused = true)]
async fn extreme_numbers_from_a_client_are_refused_not_panicked_on() {
    let sessions = Sessions::new(config());
    let (mut session, token) = hello(&sessions, None).await;
    session.append("m1").await.unwrap();
    assert!(matches!(
        session.accept(u64::MAX),
        Accept::OutOfOrder { expected: 1 }
    ));
    session.ack(u64::MAX).await.unwrap();
    assert!(
        session
            .read_after(u64::MAX, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );
    drop(session);
    let (_s, frame, _) = attached(sessions.resume(&token, None, u64::MAX).await);
    assert_eq!(frame.reason, Some(RefusalReason::Unknown));
}

#[tokio::test(start_paused = true)]
async fn inbound_ids_are_processed_once_across_a_resume() {
    let sessions = Sessions::new(config());
    let (mut session, token) = hello(&sessions, None).await;
    process(&mut session, 1).await;
    process(&mut session, 2).await;
    // Id 3 was in flight when the connection died: its handler was cancelled.
    let Accept::New(in_flight) = session.accept(3) else {
        panic!("3 is new")
    };
    assert_eq!(session.ack_to_send(), Some(2));
    assert_eq!(session.ack_to_send(), None, "nothing new to acknowledge");
    drop(in_flight);
    drop(session);

    let (mut session, frame, _) = attached(sessions.resume(&token, None, 0).await);
    assert_eq!(frame.last, 2);
    // The client resends everything after 2.
    assert!(matches!(session.accept(1), Accept::AlreadyProcessed));
    assert!(matches!(session.accept(2), Accept::AlreadyProcessed));
    process(&mut session, 3).await;
    assert!(matches!(
        session.accept(5),
        Accept::OutOfOrder { expected: 4 }
    ));
    assert_eq!(session.ack_to_send(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handlers_advance_the_ack_over_the_contiguous_prefix() {
    let sessions = Sessions::new(config());
    let (mut session, _) = hello(&sessions, None).await;
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let mut handlers = Vec::new();
    for id in 1..=300u64 {
        // Every message arrives twice, the copy while the first is still being handled.
        for _copy in 0..2 {
            if let Accept::New(processing) = session.accept(id) {
                let runs = Arc::clone(&runs);
                handlers.push(tokio::spawn(async move {
                    for _ in 0..(id * 7 % 5) {
                        tokio::task::yield_now().await;
                    }
                    *runs.lock().unwrap().entry(id).or_default() += 1;
                    processing.processed();
                }));
            }
        }
    }
    for handler in handlers {
        handler.await.unwrap();
    }
    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), 300);
    assert!(runs.values().all(|&n| n == 1));
    assert_eq!(session.processed(), 300);
    assert_eq!(session.ack_to_send(), Some(300));
}

#[tokio::test(start_paused = true)]
async fn max_sessions_evicts_the_oldest_detached_first_and_else_refuses() {
    let sessions = Sessions::new(SessionConfig {
        max_sessions: 2,
        ..config()
    });
    let (first, first_token) = hello(&sessions, None).await;
    let (second, second_token) = hello(&sessions, None).await;
    drop(first);
    advance(Duration::from_secs(1)).await;
    drop(second);
    let (_third, _) = hello(&sessions, None).await;
    assert_eq!(sessions.stats().evicted, 1);
    // The older detached one went; the other is still resumable.
    let (_s, frame, _) = attached(sessions.resume(&first_token, None, 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Expired));
    assert_eq!(
        sessions.stats().evicted,
        2,
        "making room for the replacement"
    );
    assert_eq!(sessions.stats().sessions, Some(2));

    // Nothing detached left: a new session is refused.
    let opened = sessions.hello(None).await;
    let Opened::Unavailable { frame } = opened else {
        panic!("expected unavailable")
    };
    assert_eq!(frame.session, None);
    assert_eq!(frame.reason, Some(RefusalReason::Unavailable));
    assert_eq!(sessions.stats().refused.unavailable, 1);
    let _ = second_token;
}

#[tokio::test(start_paused = true)]
async fn max_total_bytes_evicts_detached_sessions_before_dropping_live_messages() {
    let sessions = Sessions::new(SessionConfig {
        max_total_bytes: 25,
        ..config()
    });
    let (away, away_token) = hello(&sessions, None).await;
    away.append("x".repeat(18)).await.unwrap(); // 20 bytes
    drop(away);
    let (live, _) = hello(&sessions, None).await;
    live.append("y".repeat(8)).await.unwrap(); // 10 bytes: 30 in all
    assert_eq!(sessions.stats().evicted, 1);
    assert_eq!(sessions.stats().dropped, 0);
    assert_eq!(sessions.stats().bytes, Some(10));
    assert!(
        sessions
            .sender_for_session(&away_token)
            .send("z")
            .await
            .is_err()
    );
    live.append("y".repeat(8)).await.unwrap();
    assert_eq!(sessions.stats().bytes, Some(20));
    // With nothing detached, the live session's oldest message goes.
    live.append("y".repeat(8)).await.unwrap();
    assert_eq!(sessions.stats().bytes, Some(20));
    assert_eq!(sessions.stats().dropped, 1);
    assert_eq!(
        live.read_after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        [2, 3]
    );
}

#[tokio::test(start_paused = true)]
async fn sender_for_client_logs_for_an_absent_client_and_wakes_a_live_one() {
    let sessions = Sessions::new(config());
    let (mut session, token) = hello(&sessions, Some("bob")).await;
    let mut sender = sessions.sender_for_client("bob");

    {
        let mut changed = task::spawn(session.changed());
        assert_pending!(changed.poll());
        assert!(matches!(
            std::future::poll_fn(|cx| Service::<&str>::poll_ready(&mut sender, cx)).await,
            Ok(())
        ));
        assert_eq!(sender.call("live").await.unwrap(), 1);
        assert!(changed.is_woken());
        assert_ready!(changed.poll());
    }
    assert_eq!(session.last_logged(), 1);

    drop(session);
    assert_eq!(sender.call(serde_json::json!({"k": 1})).await.unwrap(), 2);
    let (_s, frame, replay) = attached(sessions.resume(&token, Some("bob"), 1).await);
    assert!(frame.resumed);
    assert_eq!(texts(&replay), [(2, r#"{"k":1}"#.into())]);

    let err = sessions
        .sender_for_client("nobody")
        .call("x")
        .await
        .unwrap_err();
    assert!(err.is::<SessionGone>());
    assert!(matches!(
        task::spawn(sessions.sender_for_client("nobody").send("x")).poll(),
        Poll::Ready(Err(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_newer_connection_supersedes_the_old_one_which_then_does_not_detach() {
    let sessions = Sessions::new(config());
    let (mut old, token) = hello(&sessions, None).await;
    let mut old_waits = task::spawn(old.changed());
    assert_pending!(old_waits.poll());
    let (new, frame, _) = attached(sessions.resume(&token, None, 0).await);
    assert!(frame.resumed);
    assert!(
        old_waits.is_woken(),
        "the old connection learns it was superseded"
    );
    assert_ready!(old_waits.poll());
    drop(old_waits);
    assert!(old.is_superseded());
    assert!(!new.is_superseded());
    drop(old);
    assert_eq!(sessions.stats().detached, Some(0));
    drop(new);
    assert_eq!(sessions.stats().detached, Some(1));
}

#[tokio::test(start_paused = true)]
async fn sweep_every_frees_sessions_nobody_resumes() {
    let sessions = Sessions::new(config());
    let (session, _) = hello(&sessions, None).await;
    drop(session);
    let mut sweeper = task::spawn(sessions.clone().sweep_every(Duration::from_secs(60)));
    assert_pending!(sweeper.poll());
    for _ in 0..4 {
        advance(Duration::from_secs(60)).await;
        assert_pending!(sweeper.poll());
    }
    assert_eq!(sessions.stats().expired, 0);
    advance(Duration::from_secs(60)).await;
    assert_pending!(sweeper.poll());
    assert_eq!(sessions.stats().expired, 1);
    assert_eq!(sessions.stats().sessions, Some(0));
}

#[tokio::test(start_paused = true)]
async fn counters_add_up_over_a_run() {
    let sessions = Sessions::new(SessionConfig {
        max_messages: 2,
        max_sessions: 4,
        ..config()
    });
    // a: three messages, one dropped; resumed past the drop, replaying two.
    let (a, a_token) = hello(&sessions, None).await;
    for i in 1..=3 {
        a.append(format!("a{i}")).await.unwrap();
    }
    drop(a);
    let (a, _, _) = attached(sessions.resume(&a_token, None, 1).await);
    // b: expires. c: dropped into a gap.
    let (b, b_token) = hello(&sessions, None).await;
    drop(b);
    advance(Duration::from_secs(300)).await;
    let (c, c_token) = hello(&sessions, None).await;
    for i in 1..=3 {
        c.append(format!("c{i}")).await.unwrap();
    }
    drop(c);
    let (_gap, _, _) = attached(sessions.resume(&c_token, None, 0).await);
    let (_e, frame, _) = attached(sessions.resume(&b_token, None, 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Expired));
    drop(a);
    let (_u, frame, _) = attached(sessions.resume(&SessionToken::generate(), None, 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Unknown));
    // Four sessions: f evicts the detached a; then none is detached and the next is refused.
    let (_f, _) = hello(&sessions, None).await;
    assert!(matches!(
        sessions.hello(None).await,
        Opened::Unavailable { .. }
    ));

    let stats = sessions.stats();
    assert_eq!(stats.created, 7, "a, b, c, gap, expired, unknown, f");
    assert_eq!(stats.resumed, 1);
    assert_eq!(stats.replayed, 2);
    assert_eq!(stats.dropped, 2, "a1 and c1");
    assert_eq!(stats.expired, 1);
    assert_eq!(stats.evicted, 1);
    assert_eq!(
        (
            stats.refused.unknown,
            stats.refused.expired,
            stats.refused.gap,
            stats.refused.unavailable
        ),
        (1, 1, 1, 1)
    );
    assert_eq!((stats.sessions, stats.detached), (Some(4), Some(0)));
}

#[tokio::test(start_paused = true)]
async fn send_now_logs_without_waiting_and_wakes_the_connection() {
    let sessions = Sessions::new(config());
    let (mut session, token) = hello(&sessions, None).await;
    let sender = sessions.sender_for_session(&token);
    assert_eq!(sender.send_now("a").unwrap(), Some(1));
    assert_eq!(sender.send_now(vec![1u8]).unwrap(), Some(2));
    let mut changed = task::spawn(session.changed());
    assert_ready!(changed.poll());
    drop(changed);
    assert_eq!(session.last_logged(), 2);
    let logged = session.read_after(0, 10).await.unwrap();
    assert_eq!(logged.len(), 2);
    drop(session);
    advance(Duration::from_secs(300)).await;
    assert_eq!(sessions.sweep().await, 1);
    assert!(sender.send_now("too late").is_err());
}

#[tokio::test(start_paused = true)]
async fn the_periodic_sweep_ends_once_nothing_else_holds_the_registry() {
    let sessions = Sessions::new(config());
    let sweeper = tokio::spawn(sessions.clone().sweep_every(Duration::from_secs(1)));
    advance(Duration::from_secs(3)).await;
    tokio::task::yield_now().await;
    assert!(!sweeper.is_finished());
    drop(sessions);
    advance(Duration::from_secs(2)).await;
    tokio::time::timeout(Duration::from_secs(5), sweeper)
        .await
        .expect("the sweep ended")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_registry_debug_shows_sizes_not_messages_or_tokens() {
    let sessions = Sessions::new(config());
    let (session, token) = hello(&sessions, None).await;
    session.append("a secret message").await.unwrap();
    let debug = format!("{sessions:?}");
    assert!(debug.contains("sessions: 1"), "{debug}");
    assert!(!debug.contains("secret"), "{debug}");
    assert!(!debug.contains(&token.to_string()[..8]), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn append_own_logs_without_waking_its_own_connection_but_wakes_a_newer_one() {
    let sessions = Sessions::new(config());
    let (mut session, token) = hello(&sessions, None).await;
    {
        let mut changed = task::spawn(session.changed());
        assert_pending!(changed.poll());
    }
    assert_eq!(session.append_own("own 1").unwrap(), Some(1));
    assert_eq!(session.append_own(vec![7u8]).unwrap(), Some(2));
    {
        let mut changed = task::spawn(session.changed());
        assert_pending!(changed.poll());
        assert!(
            !changed.is_woken(),
            "the appending connection writes it itself"
        );
    }
    assert_eq!(session.last_logged(), 2);
    // Logged like any other message: read back, and replayed on resume.
    assert_eq!(session.read_after(0, 10).await.unwrap().len(), 2);

    // A newer connection on the same session is woken by the old one's appends.
    let (mut new, frame, replay) = attached(sessions.resume(&token, None, 1).await);
    assert!(frame.resumed);
    assert_eq!(replay.len(), 1, "seq 2 only: the client held seq 1");
    let mut new_waits = task::spawn(new.changed());
    assert_pending!(new_waits.poll());
    assert_eq!(session.append_own("from the old one").unwrap(), Some(3));
    assert!(new_waits.is_woken());
    assert_ready!(new_waits.poll());
    drop(new_waits);
    assert_eq!(
        texts(&new.read_after(2, 10).await.unwrap()),
        [(3, r#""from the old one""#.into())]
    );
    // And the new connection's own appends do not wake it either.
    assert_eq!(new.append_own("mine").unwrap(), Some(4));
    let mut new_waits = task::spawn(new.changed());
    assert_pending!(new_waits.poll());
}

#[tokio::test(start_paused = true)]
async fn append_own_on_a_freed_session_is_refused() {
    let sessions = Sessions::new(config());
    let (mut session, token) = hello(&sessions, None).await;
    drop(sessions.resume(&token, None, 0).await);
    advance(Duration::from_secs(300)).await;
    assert_eq!(sessions.sweep().await, 1);
    assert!(session.append_own("gone").is_err());
}
