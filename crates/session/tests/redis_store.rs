//! `RedisSessionStore` against a real `redis-server` (and a three-master cluster) started by
//! the test on free loopback ports.
//!
//! The protocol's rules run on the memory store, on one Redis server and on a Redis Cluster
//! (`on_every_store!`), so that the stores cannot drift apart; then what only a shared store does: two registries (two nodes) on
//! one Redis, a resume on the other node, a message logged on one node waking the connection on
//! the other, a Redis outage. These tests need real time (the server is a real process): they
//! wait on conditions with deadlines, never on fixed sleeps.
#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wsguard_config::{SessionBackend, SessionConfig};
use wsguard_session::protocol::{RefusalReason, SessionFrame};
use wsguard_session::store::{Attached, Created, Logged, RedisSessionStore, SessionStore, Target};
use wsguard_session::{Accept, MessageData, Opened, Session, SessionToken, Sessions};
use wsguard_test_support::{RedisCluster, RedisServer};

const OP_TIMEOUT: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_millis(600);

fn config() -> SessionConfig {
    SessionConfig {
        ttl: Duration::from_secs(60),
        max_messages: 1000,
        max_bytes: 1 << 20,
        max_sessions: 100,
        max_total_bytes: 1 << 24,
        ..SessionConfig::testing()
    }
}

/// A store to run the rules on: memory, or a Redis server of the test's own.
struct Backend {
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
    prefix: String,
}

impl Backend {
    fn memory() -> Self {
        Self {
            redis: None,
            cluster: None,
            prefix: String::new(),
        }
    }

    /// A three-master Redis Cluster of the test's own.
    fn cluster() -> Self {
        Self {
            redis: None,
            cluster: Some(RedisCluster::start()),
            prefix: "wsguard-test:".into(),
        }
    }

    fn redis() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        Self {
            redis: Some(RedisServer::start()),
            cluster: None,
            prefix: format!(
                "wsguard-test:{}:{}:",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    fn with_store(&self, mut config: SessionConfig) -> SessionConfig {
        if let Some(redis) = &self.redis {
            config.store.backend = SessionBackend::Redis;
            config.store.redis.url = redis.url();
            config.store.redis.key_prefix = self.prefix.clone();
            config.store.redis.operation_timeout = OP_TIMEOUT;
        }
        if let Some(cluster) = &self.cluster {
            config.store.backend = SessionBackend::Redis;
            config.store.redis.cluster_nodes = cluster.seed_urls();
            config.store.redis.key_prefix = self.prefix.clone();
            config.store.redis.operation_timeout = OP_TIMEOUT;
        }
        config
    }

    /// A registry (a node) on this store: with Redis each call is another node on the same
    /// server; in memory there is only one.
    fn node(&self, config: SessionConfig) -> Sessions {
        Sessions::from_config(self.with_store(config)).expect("the store the config names")
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
    let token = session.token();
    assert_eq!(frame.session, Some(token));
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

/// Detaches `session` and waits until the store has it.
async fn detach(sessions: &Sessions, session: Session) {
    drop(session);
    sessions.flush().await.unwrap();
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a rule on every store: memory, one Redis server, a Redis Cluster.
macro_rules! on_every_store {
    ($rule:ident) => {
        mod $rule {
            #[tokio::test]
            async fn memory() {
                super::$rule(super::Backend::memory()).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$rule(super::Backend::redis()).await;
            }

            #[tokio::test]
            async fn redis_cluster() {
                super::$rule(super::Backend::cluster()).await;
            }
        }
    };
}

async fn resume_replays_what_follows_last_with_the_processed_mark(backend: Backend) {
    let sessions = backend.node(config());
    let (mut session, token) = hello(&sessions, Some("a")).await;
    for i in 1..=5 {
        assert_eq!(session.append(format!("m{i}")).await.unwrap(), i);
    }
    process(&mut session, 1).await;
    process(&mut session, 2).await;
    detach(&sessions, session).await;

    let (mut session, frame, replay) = attached(sessions.resume(&token, Some("a"), 2).await);
    assert!(frame.resumed);
    assert_eq!(frame.session, Some(token));
    assert_eq!(frame.last, 2, "ids 1 and 2 were processed");
    assert_eq!(
        texts(&replay),
        [
            (3, r#""m3""#.into()),
            (4, r#""m4""#.into()),
            (5, r#""m5""#.into())
        ]
    );
    assert!(matches!(session.accept(2), Accept::AlreadyProcessed));
    assert_eq!(session.append(vec![7u8, 8]).await.unwrap(), 6);
    let read = session.read_after(5, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload, MessageData::Binary(vec![7u8, 8].into()));
    assert_eq!(sessions.stats().replayed, 3);
}
on_every_store!(resume_replays_what_follows_last_with_the_processed_mark);

/// `append_reply` logs a reply and marks its message processed (in one step in memory, one
/// after the other in Redis): a resume finds both, and the client resends nothing answered.
async fn a_reply_and_the_processed_mark_of_its_message_are_kept_together(backend: Backend) {
    let sessions = backend.node(config());
    let (mut session, token) = hello(&sessions, Some("a")).await;
    for id in 1..=3 {
        let Accept::New(processing) = session.accept(id) else {
            panic!("id {id} is new");
        };
        session
            .append_reply(format!("reply {id}"), processing)
            .unwrap();
        assert_eq!(session.processed(), id);
    }
    // Id 5 answered before 4: its reply is logged, the mark waits for 4.
    let (Accept::New(four), Accept::New(five)) = (session.accept(4), session.accept(5)) else {
        panic!("ids 4 and 5 are new");
    };
    session.append_reply("reply 5", five).unwrap();
    assert_eq!(session.processed(), 3);
    drop(four);
    sessions.flush().await.unwrap();
    detach(&sessions, session).await;

    let (mut session, frame, replay) = attached(sessions.resume(&token, Some("a"), 0).await);
    assert!(frame.resumed);
    assert_eq!(frame.last, 3, "every reply logged carried its mark");
    assert_eq!(
        texts(&replay),
        [
            (1, r#""reply 1""#.into()),
            (2, r#""reply 2""#.into()),
            (3, r#""reply 3""#.into()),
            (4, r#""reply 5""#.into())
        ]
    );
    assert!(matches!(session.accept(3), Accept::AlreadyProcessed));
    assert!(matches!(session.accept(4), Accept::New(_)));
}
on_every_store!(a_reply_and_the_processed_mark_of_its_message_are_kept_together);

async fn bounds_drop_the_oldest_and_a_resume_needing_them_is_a_gap(backend: Backend) {
    let sessions = backend.node(SessionConfig {
        max_messages: 3,
        max_bytes: 10,
        ..config()
    });
    let (mut session, token) = hello(&sessions, None).await;
    process(&mut session, 1).await;
    // Five messages of 3 bytes: the count bound keeps 3 of them, the byte bound 3 (9 bytes).
    for i in 1..=5 {
        session.append(format!("m{i}")).await.unwrap();
    }
    // One large message: the newest always stays, however large.
    session.append("x".repeat(40)).await.unwrap();
    let held = session.read_after(0, 10).await.unwrap();
    assert_eq!(held.iter().map(|m| m.seq).collect::<Vec<_>>(), [6]);
    detach(&sessions, session).await;

    let opened = sessions.resume(&token, None, 2).await;
    let (_session, frame, replay) = attached(opened);
    assert!(!frame.resumed);
    assert_eq!(frame.reason, Some(RefusalReason::Gap));
    assert_eq!(frame.lost, Some(3), "seq 3, 4 and 5 are gone");
    assert_eq!(frame.last, 1, "the old session's processed mark");
    assert_ne!(frame.session, Some(token));
    assert!(replay.is_empty());
    assert_eq!(sessions.stats().dropped, 5);
    assert_eq!(sessions.stats().refused.gap, 1);
}
on_every_store!(bounds_drop_the_oldest_and_a_resume_needing_them_is_a_gap);

async fn acknowledged_messages_are_freed_and_not_counted_as_lost(backend: Backend) {
    let sessions = backend.node(SessionConfig {
        max_messages: 2,
        ..config()
    });
    let (session, token) = hello(&sessions, None).await;
    session.append("a").await.unwrap();
    session.append("b").await.unwrap();
    session.ack(2).await.unwrap();
    assert!(session.read_after(0, 10).await.unwrap().is_empty());
    session.append("c").await.unwrap();
    session.append("d").await.unwrap();
    // An ack past the last seq acknowledges everything sent.
    session.ack(99).await.unwrap();
    session.append("e").await.unwrap();
    detach(&sessions, session).await;

    let (_session, frame, replay) = attached(sessions.resume(&token, None, 4).await);
    assert!(frame.resumed, "{frame:?}");
    assert_eq!(texts(&replay), [(5, r#""e""#.into())]);
    assert_eq!(sessions.stats().dropped, 0);
}
on_every_store!(acknowledged_messages_are_freed_and_not_counted_as_lost);

async fn foreign_unknown_and_impossible_resumes_are_answered_unknown(backend: Backend) {
    let sessions = backend.node(config());
    let (session, token) = hello(&sessions, Some("alice")).await;
    session.append("for alice").await.unwrap();
    detach(&sessions, session).await;

    for (token, client, last) in [
        (token, Some("mallory"), 0),
        (token, None, 0),
        (SessionToken::generate(), Some("alice"), 0),
    ] {
        let (_s, frame, replay) = attached(sessions.resume(&token, client, last).await);
        assert_eq!(frame.reason, Some(RefusalReason::Unknown), "{client:?}");
        assert!(replay.is_empty());
    }
    // Alice's session is still hers.
    let (session, frame, replay) = attached(sessions.resume(&token, Some("alice"), 0).await);
    assert!(frame.resumed);
    assert_eq!(replay.len(), 1);
    detach(&sessions, session).await;
    // A `last` the session never sent is not this session's history: refused and freed.
    let (_s, frame, _) = attached(sessions.resume(&token, Some("alice"), 9).await);
    assert_eq!(frame.reason, Some(RefusalReason::Unknown));
    let (_s, frame, _) = attached(sessions.resume(&token, Some("alice"), 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Unknown));
    assert_eq!(sessions.stats().refused.unknown, 5);
}
on_every_store!(foreign_unknown_and_impossible_resumes_are_answered_unknown);

async fn a_client_is_reached_in_its_newest_session_connected_or_not(backend: Backend) {
    let sessions = backend.node(config());
    let sender = sessions.sender_for_client("bob");
    assert!(sender.send("nobody yet").await.is_err());
    let (old, _) = hello(&sessions, Some("bob")).await;
    let (new, new_token) = hello(&sessions, Some("bob")).await;
    assert_eq!(sender.send("hi").await.unwrap(), 1);
    assert!(old.read_after(0, 10).await.unwrap().is_empty());
    detach(&sessions, new).await;
    assert_eq!(sender.send("while away").await.unwrap(), 2);
    let (_s, frame, replay) = attached(sessions.resume(&new_token, Some("bob"), 0).await);
    assert!(frame.resumed);
    assert_eq!(
        texts(&replay),
        [(1, r#""hi""#.into()), (2, r#""while away""#.into())]
    );
    drop(old);
}
on_every_store!(a_client_is_reached_in_its_newest_session_connected_or_not);

async fn a_session_detached_past_the_ttl_is_expired_then_unknown(backend: Backend) {
    let sessions = backend.node(SessionConfig {
        ttl: TTL,
        ..config()
    });
    let (session, token) = hello(&sessions, Some("c")).await;
    session.append("held").await.unwrap();
    let detached = Instant::now();
    detach(&sessions, session).await;
    // Within the TTL it resumes; detached again, the TTL starts over.
    let (session, frame, _) = attached(sessions.resume(&token, Some("c"), 0).await);
    assert!(frame.resumed);
    assert!(detached.elapsed() < TTL, "the test machine is too slow");
    detach(&sessions, session).await;

    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(sessions.sweep().await, 1, "the sweep frees it once");
    assert_eq!(sessions.stats().expired, 1);
    let (_s, frame, _) = attached(sessions.resume(&token, Some("c"), 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Expired));
    // The tombstone lasts one more TTL.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    sessions.sweep().await;
    let (_s, frame, _) = attached(sessions.resume(&token, Some("c"), 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Unknown));
}
on_every_store!(a_session_detached_past_the_ttl_is_expired_then_unknown);

async fn max_sessions_evicts_the_oldest_detached_and_refuses_when_none_is(backend: Backend) {
    let sessions = backend.node(SessionConfig {
        max_sessions: 3,
        ..config()
    });
    let (a, a_token) = hello(&sessions, None).await;
    let (b, b_token) = hello(&sessions, None).await;
    let (_c, _) = hello(&sessions, None).await;
    detach(&sessions, a).await;
    detach(&sessions, b).await;
    let (_d, _) = hello(&sessions, None).await;
    assert_eq!(sessions.stats().evicted, 1);
    // The refused resume of a opens a session in its place, which evicts b.
    let (_a, frame, _) = attached(sessions.resume(&a_token, None, 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Expired), "a was evicted");
    assert_eq!(sessions.stats().evicted, 2);
    // Now all three are attached: no room for b's replacement, nor for a new session.
    assert!(matches!(
        sessions.resume(&b_token, None, 0).await,
        Opened::Unavailable { .. }
    ));
    assert!(matches!(
        sessions.hello(None).await,
        Opened::Unavailable { .. }
    ));
    assert_eq!(sessions.stats().refused.unavailable, 2);
}
on_every_store!(max_sessions_evicts_the_oldest_detached_and_refuses_when_none_is);

// What only a shared store does.

#[tokio::test]
async fn a_session_resumes_on_another_node_with_its_replay_and_processed_mark() {
    let backend = Backend::redis();
    let (node_a, node_b) = (backend.node(config()), backend.node(config()));
    let (mut session, token) = hello(&node_a, Some("dana")).await;
    for i in 1..=3 {
        session.append(format!("m{i}")).await.unwrap();
    }
    process(&mut session, 1).await;
    process(&mut session, 2).await;
    detach(&node_a, session).await;

    let (mut session, frame, replay) = attached(node_b.resume(&token, Some("dana"), 1).await);
    assert!(frame.resumed);
    assert_eq!(frame.last, 2);
    assert_eq!(
        texts(&replay),
        [(2, r#""m2""#.into()), (3, r#""m3""#.into())]
    );
    assert!(matches!(session.accept(2), Accept::AlreadyProcessed));
    assert!(matches!(session.accept(3), Accept::New(_)));
    // Node A's sender for the client reaches the session, now on B.
    assert_eq!(
        node_a
            .sender_for_client("dana")
            .send("from a")
            .await
            .unwrap(),
        4
    );
    assert_eq!(session.read_after(3, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_message_logged_on_one_node_wakes_the_connection_on_the_other() {
    let backend = Backend::redis();
    let (node_a, node_b) = (backend.node(config()), backend.node(config()));
    let (mut session, token) = hello(&node_a, None).await;
    let sender = node_b.sender_for_session(&token);
    let mut latencies = Vec::new();
    for i in 1..=20u64 {
        let sent = Instant::now();
        assert_eq!(sender.send(format!("n{i}")).await.unwrap(), i);
        tokio::time::timeout(Duration::from_secs(2), session.changed())
            .await
            .expect("woken by the other node");
        latencies.push(sent.elapsed());
        assert!(sent.elapsed() < Duration::from_secs(1));
        assert!(!session.is_superseded());
        let read = session.read_after(i - 1, 10).await.unwrap();
        assert_eq!(texts(&read), [(i, format!(r#""n{i}""#))]);
    }
    latencies.sort();
    eprintln!(
        "logged on B, woken on A: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

#[tokio::test]
async fn a_resume_on_another_node_waits_until_the_connection_here_lets_go() {
    let backend = Backend::redis();
    let (node_a, node_b) = (backend.node(config()), backend.node(config()));
    let (mut on_a, token) = hello(&node_a, None).await;
    on_a.append("one").await.unwrap();
    let resuming = tokio::spawn(async move {
        let started = Instant::now();
        let opened = node_b.resume(&token, None, 0).await;
        (opened, started.elapsed(), node_b)
    });
    // A's connection is told, finishes what it was doing (a reply logged, an id processed),
    // then ends: only then does B go on, with both in hand.
    tokio::time::timeout(Duration::from_secs(2), async {
        while !on_a.is_superseded() {
            on_a.changed().await;
        }
    })
    .await
    .expect("told by B");
    on_a.append("two").await.unwrap();
    process(&mut on_a, 1).await;
    drop(on_a);
    let (opened, waited, node_b) = resuming.await.unwrap();
    let (on_b, frame, replay) = attached(opened);
    assert!(frame.resumed);
    assert_eq!(frame.last, 1, "A's processed mark");
    assert_eq!(
        texts(&replay),
        [(1, r#""one""#.into()), (2, r#""two""#.into())]
    );
    assert!(waited < OP_TIMEOUT * 5, "waited {waited:?}");
    // B holds it now: A ending did not detach it, and a third node waits for B.
    on_b.append("three").await.unwrap();
    detach(&node_b, on_b).await;
    let node_c = backend.node(config());
    let (_on_c, frame, replay) = attached(node_c.resume(&token, None, 2).await);
    assert!(frame.resumed);
    assert_eq!(texts(&replay), [(3, r#""three""#.into())]);
}

#[tokio::test]
async fn a_node_that_does_not_let_go_in_time_is_taken_over() {
    let backend = Backend::redis();
    let (node_a, node_b) = (backend.node(config()), backend.node(config()));
    let (on_a, token) = hello(&node_a, None).await;
    on_a.append("one").await.unwrap();
    let started = Instant::now();
    let (on_b, frame, replay) = attached(node_b.resume(&token, None, 0).await);
    let waited = started.elapsed();
    assert!(frame.resumed);
    assert_eq!(replay.len(), 1);
    // Ten operation timeouts (3 s here), not more.
    assert!(waited >= OP_TIMEOUT * 9, "took over after {waited:?}");
    assert!(waited < OP_TIMEOUT * 15, "took over after {waited:?}");
    assert!(on_a.is_superseded());
    // A's connection ending late does not detach the session B holds.
    detach(&node_a, on_a).await;
    on_b.append("two").await.unwrap();
    drop(on_b);
    node_b.flush().await.unwrap();
    let (_s, frame, replay) = attached(node_a.resume(&token, None, 0).await);
    assert!(frame.resumed);
    assert_eq!(replay.len(), 2);
}

#[tokio::test]
async fn while_redis_is_down_hello_and_resume_are_unavailable_in_time_and_it_recovers() {
    let mut backend = Backend::redis();
    let sessions = backend.node(config());
    let (session, token) = hello(&sessions, None).await;
    session.append("kept").await.unwrap();
    detach(&sessions, session).await;

    backend.redis.as_mut().unwrap().stop();
    for first in [None, Some(token)] {
        let started = Instant::now();
        let opened = match first {
            None => sessions.hello(None).await,
            Some(token) => sessions.resume(&token, None, 0).await,
        };
        assert!(matches!(opened, Opened::Unavailable { .. }));
        // The sweep before the step fails, bounded by the operation timeout: no second wait.
        assert!(
            started.elapsed() < OP_TIMEOUT * 2,
            "answered after {:?}",
            started.elapsed()
        );
    }
    assert!(sessions.sender_for_session(&token).send("x").await.is_err());

    // A restarted server has lost everything (no persistence): the resume is unknown, but
    // sessions open again by themselves.
    backend.redis.as_mut().unwrap().restart();
    wait_until(
        "a hello succeeds again",
        Duration::from_secs(10),
        || async { matches!(sessions.hello(None).await, Opened::Attached { .. }) },
    )
    .await;
    let (_s, frame, _) = attached(sessions.resume(&token, None, 0).await);
    assert_eq!(frame.reason, Some(RefusalReason::Unknown));
    assert!(sessions.stats().refused.unavailable >= 2);
}

/// A call's reply whose answer never came (Redis froze with it in the pipeline) and the
/// call's processed mark asked for after that: once Redis is back it runs the reply, and it
/// must run the mark too, or a resume would have the client resend a call whose reply it is
/// given (the handler would run twice and the client get two replies). A reply that never
/// reached Redis (refused after the failure) keeps its mark out: that call is resent and run.
#[tokio::test]
async fn a_processed_mark_behind_a_reply_in_doubt_is_recorded_only_with_that_reply() {
    let backend = Backend::redis();
    let config = backend.with_store(config());
    let redis = backend.redis.as_ref().unwrap();
    let store = RedisSessionStore::connect(&config.store.redis)
        .await
        .unwrap();
    let token = SessionToken::generate();
    let now = tokio::time::Instant::now();
    assert!(matches!(
        store.create(token, None, now, &config).await.unwrap(),
        Created::Created { .. }
    ));
    let reply = |text: &str| store.append(Target::Session(&token), text.into(), &config);
    reply("\"reply 1\"").await.unwrap();
    store.record_processed(&token, 1);
    store.flush().await.unwrap();

    redis.freeze();
    // Call 2's reply goes out alone and gets no answer: the session failed on this node.
    assert!(reply("\"reply 2\"").await.is_err());
    store.record_processed(&token, 2);
    // Call 3's reply is refused (the session failed), so its mark must not be recorded.
    assert!(reply("\"reply 3\"").await.is_err());
    store.record_processed(&token, 3);
    redis.thaw();
    store.flush().await.unwrap();

    let attached = store.attach(&token, None, 0, now, &config).await.unwrap();
    let Attached::Held { state, messages } = attached else {
        panic!("not held: {attached:?}");
    };
    assert_eq!(
        texts(&messages),
        [(1, "\"reply 1\"".to_owned()), (2, "\"reply 2\"".to_owned())]
    );
    assert_eq!(
        state.processed, 2,
        "call 2's reply is in Redis: so is its mark (a resend of 2 would run it twice), and \
         call 3's reply is not: nor is its mark (3 would be lost)"
    );
}

#[tokio::test]
async fn a_freed_session_leaves_no_key_behind_but_its_tombstone() {
    let backend = Backend::redis();
    let sessions = backend.node(SessionConfig {
        ttl: TTL,
        ..config()
    });
    let (session, _) = hello(&sessions, Some("e")).await;
    session.append("x").await.unwrap();
    detach(&sessions, session).await;
    let redis = backend.redis.as_ref().unwrap();
    // meta, log, gone, the index and the client's entry.
    assert_eq!(redis.dbsize(), 5);
    // Redis expires the keys by itself; the tombstone and the index entry outlive them until
    // a sweep and one more TTL.
    wait_until(
        "only the tombstone and the index are left",
        TTL * 3,
        || async { redis.dbsize() == 2 },
    )
    .await;
    sessions.sweep().await;
    wait_until("nothing is left", TTL * 3, || async { redis.dbsize() == 0 }).await;
}

#[tokio::test]
async fn on_a_cluster_sessions_resume_across_nodes_and_wake_each_other() {
    let cluster = RedisCluster::start();
    let mut config = config();
    config.store.backend = SessionBackend::Redis;
    config.store.redis.cluster_nodes = cluster.seed_urls();
    config.store.redis.operation_timeout = Duration::from_secs(1);
    let node_a = Sessions::from_config(config.clone()).unwrap();
    let node_b = Sessions::from_config(config).unwrap();

    let mut tokens = Vec::new();
    for i in 0..12 {
        let client = format!("client-{i}");
        let (mut session, token) = hello(&node_a, Some(&client)).await;
        session.append("first").await.unwrap();
        process(&mut session, 1).await;
        detach(&node_a, session).await;
        tokens.push((client, token));
    }
    // Sessions spread over the three masters.
    let holding = cluster.dbsizes().iter().filter(|&&n| n > 0).count();
    assert!(holding >= 2, "keys on {holding} masters");

    for (client, token) in &tokens {
        let (mut session, frame, replay) = attached(node_b.resume(token, Some(client), 0).await);
        assert!(frame.resumed);
        assert_eq!(frame.last, 1);
        assert_eq!(texts(&replay), [(1, r#""first""#.into())]);
        node_a
            .sender_for_client(client)
            .send("second")
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), session.changed())
            .await
            .expect("woken across the cluster");
        assert_eq!(session.read_after(1, 10).await.unwrap().len(), 1);
    }
}

async fn messages_sent_without_waiting_keep_their_order(backend: Backend) {
    const SESSIONS: usize = 16;
    const EACH: usize = 300;
    let sessions = backend.node(config());
    let mut held = Vec::new();
    for _ in 0..SESSIONS {
        held.push(hello(&sessions, None).await);
    }
    let started = Instant::now();
    let senders: Vec<_> = held
        .iter()
        .map(|(_, token)| {
            let sender = sessions.sender_for_session(token);
            tokio::spawn(async move {
                for i in 1..=EACH {
                    // From synchronous code, as a connection's `Sender` does.
                    sender.send_now(format!("{i}")).unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    sessions.flush().await.unwrap();
    let elapsed = started.elapsed();
    for (session, _) in &held {
        let logged = session.read_after(0, EACH + 1).await.unwrap();
        let expected: Vec<(u64, String)> = (1..=EACH as u64).map(|i| (i, format!("{i}"))).collect();
        assert_eq!(texts(&logged), expected);
    }
    eprintln!(
        "{} appends from {SESSIONS} tasks without waiting: {:.0}/s",
        SESSIONS * EACH,
        (SESSIONS * EACH) as f64 / elapsed.as_secs_f64()
    );
}
on_every_store!(messages_sent_without_waiting_keep_their_order);

async fn a_resume_replays_a_full_log_at_once(backend: Backend) {
    const HELD: u64 = 1000;
    let sessions = backend.node(config());
    let (session, token) = hello(&sessions, Some("f")).await;
    let payload = format!("\"{}\"", "x".repeat(100));
    for _ in 0..HELD {
        session.append(payload.as_str()).await.unwrap();
    }
    detach(&sessions, session).await;
    let started = Instant::now();
    let (_session, frame, replay) = attached(sessions.resume(&token, Some("f"), 0).await);
    let took = started.elapsed();
    assert!(frame.resumed);
    assert_eq!(replay.len() as u64, HELD);
    assert!(replay.iter().zip(1..).all(|(m, seq)| m.seq == seq));
    eprintln!("resume with {HELD} messages of 102 bytes held: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
on_every_store!(a_resume_replays_a_full_log_at_once);

#[tokio::test]
async fn on_a_cluster_a_master_down_answers_unavailable_in_time_and_sessions_come_back() {
    let mut cluster = RedisCluster::start();
    let mut config = config();
    config.store.backend = SessionBackend::Redis;
    config.store.redis.cluster_nodes = cluster.seed_urls();
    config.store.redis.operation_timeout = OP_TIMEOUT;
    let sessions = Sessions::from_config(config).unwrap();
    let (_warm, _) = hello(&sessions, None).await;
    // The master holding the index: without it no session can be opened.
    let index = (0..3)
        .find(|&i| cluster.keys(i).iter().any(|k| k.contains("{index}")))
        .expect("the index is on a master");

    cluster.stop(index);
    for _ in 0..5 {
        let started = Instant::now();
        assert!(matches!(
            sessions.hello(None).await,
            Opened::Unavailable { .. }
        ));
        // The sweep fails, bounded by the operation timeout, and answers for the step.
        let took = started.elapsed();
        assert!(took < OP_TIMEOUT * 2, "answered after {took:?}");
    }

    cluster.restart(index);
    let restarted = Instant::now();
    // Every one of 30 new sessions, over all three masters, works again.
    wait_until("sessions on every master", WAIT_CLUSTER, || async {
        for _ in 0..30 {
            let Opened::Attached { session, .. } = sessions.hello(None).await else {
                return false;
            };
            if session.append("back").await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!(
        "sessions on every master {:?} after the restart",
        restarted.elapsed()
    );
}

const WAIT_CLUSTER: Duration = Duration::from_secs(20);

#[test]
fn the_sessions_of_a_node_that_died_are_detached_once_their_lease_lapses() {
    let backend = Backend::redis();
    // A lease lasts the TTL (and at least 20 operation timeouts).
    let config = SessionConfig {
        ttl: TTL,
        max_sessions: 2,
        store: {
            let mut store = backend.with_store(config()).store;
            store.redis.operation_timeout = Duration::from_millis(25);
            store
        },
        ..config()
    };
    // Node A opens two sessions, then dies: its runtime, and every task of its store, stops
    // without detaching anything.
    let on_a = config.clone();
    let tokens = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (held, tokens) = runtime.block_on(async {
            let node_a = Sessions::from_config(on_a).unwrap();
            let (one, first) = hello(&node_a, None).await;
            let (two, second) = hello(&node_a, None).await;
            one.append("before the crash").await.unwrap();
            ((one, two, node_a), [first, second])
        });
        drop(runtime);
        std::mem::forget(held);
        tokens
    })
    .join()
    .unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let node_b = Sessions::from_config(config.clone()).unwrap();
        // Both sessions count as attached: no room.
        assert!(matches!(
            node_b.hello(None).await,
            Opened::Unavailable { .. }
        ));
        // Once the lease lapses a sweep detaches them, and one is evicted for a new session.
        wait_until("a session opens", TTL * 3, || async {
            matches!(node_b.hello(None).await, Opened::Attached { .. })
        })
        .await;
        assert_eq!(node_b.stats().evicted, 1);
        // The other resumes at once: detached, it has no node to wait for.
        let node_c = Sessions::from_config(SessionConfig {
            max_sessions: 10,
            ..config
        })
        .unwrap();
        let started = Instant::now();
        let mut resumed = 0;
        for token in &tokens {
            let (_session, frame, replay) = attached(node_c.resume(token, None, 0).await);
            if frame.resumed {
                resumed += 1;
                assert!(replay.len() <= 1);
            } else {
                assert_eq!(frame.reason, Some(RefusalReason::Expired));
            }
        }
        assert_eq!(resumed, 1, "one evicted, one resumed");
        assert!(started.elapsed() < Duration::from_millis(200));
    });
}
