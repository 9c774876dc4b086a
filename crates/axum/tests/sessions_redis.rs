//! `wsguard.v1` sessions on Redis over real sockets: two servers (two `WsRoute`s on two ports,
//! two nodes) on one `redis-server` started by the test, with `wsguard-client` clients.
//!
//! Real time (real servers and a real Redis): every wait is on a condition with a deadline.
#![cfg(feature = "redis")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tower::service_fn;
use wsguard_axum::{BoxError, Inbound, Message, WsRoute};
use wsguard_client::{Client, ClientOptions, Event, RetryConfig};
use wsguard_config::{ClientIdSource, SessionBackend, StabilityConfig};
use wsguard_session::Sessions;
use wsguard_session::protocol::SUBPROTOCOL;
use wsguard_test_support::RedisServer;

mod support;

const WAIT: Duration = Duration::from_secs(20);
const OP_TIMEOUT: Duration = Duration::from_millis(250);

fn config(redis: &RedisServer) -> StabilityConfig {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut config = StabilityConfig::testing();
    config.connection.client_id = ClientIdSource::Header;
    config.connection.client_id_key = "x-client".into();
    // Room for every echo of a run: a bound that drops one is a `gap`, not what is tested here.
    config.session.max_messages = 1000;
    config.session.store.backend = SessionBackend::Redis;
    config.session.store.redis.url = redis.url();
    config.session.store.redis.operation_timeout = OP_TIMEOUT;
    config.session.store.redis.key_prefix = format!(
        "wsguard-axum-test:{}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    config
}

/// Every message the nodes' handler saw, in the order it saw them.
type Handled = Arc<Mutex<Vec<String>>>;

/// A node: a route whose handler records each message and echoes it, on a port of its own.
async fn node(config: &StabilityConfig, handled: &Handled) -> (Sessions, SocketAddr) {
    let handled = handled.clone();
    let echo = service_fn(move |request: Inbound| {
        let handled = handled.clone();
        async move {
            let text = request.message.to_text()?.to_owned();
            handled.lock().unwrap().push(text.clone());
            Ok::<_, BoxError>(Some(Message::text(format!("echo:{text}"))))
        }
    });
    let route = WsRoute::new(echo, config.clone());
    let sessions = route.sessions();
    let app = Router::new().route("/ws", route.into_method_router());
    (sessions, support::serve(app).await)
}

fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryConfig {
            enabled: true,
            max_attempts: 0,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            multiplier: 2.0,
            jitter: 0.5,
        },
        max_unacknowledged: 64,
        ack_every: 8,
        ack_interval: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

fn request(
    addr: SocketAddr,
    client: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-client", HeaderValue::from_str(client).unwrap());
    request
}

async fn next_text(events: &mut wsguard_client::Events) -> (u64, String) {
    loop {
        let event = timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("the client runs");
        match event {
            Event::Message { seq, message } => {
                return (seq, message.as_text().expect("text").to_owned());
            }
            Event::Disconnected(_) | Event::Resumed => {}
            other => panic!("unexpected event: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_route_keeps_its_sessions_in_the_redis_the_config_names() {
    let redis = RedisServer::start();
    let handled = Handled::default();
    let config = config(&redis);
    let (_route, addr) = node(&config, &handled).await;
    let (client, mut events) = Client::connect(request(addr, "ann"), options())
        .await
        .unwrap();
    client.send("hi").await.unwrap();
    assert_eq!(next_text(&mut events).await, (1, "echo:hi".into()));
    // The session's hash and log, the index and the client's entry.
    assert!(redis.dbsize() >= 4, "{} keys", redis.dbsize());

    let mut bad = config.clone();
    bad.session.store.redis.url = "not a url".into();
    let service = service_fn(|_: Inbound| async { Ok::<_, BoxError>(None) });
    assert!(WsRoute::try_new(service, bad).is_err());
    client.close().await;
}

#[tokio::test]
async fn a_message_sent_on_node_b_reaches_the_client_attached_on_node_a() {
    let redis = RedisServer::start();
    let handled = Handled::default();
    let config = config(&redis);
    let (route_a, addr_a) = node(&config, &handled).await;
    let (route_b, _addr_b) = node(&config, &handled).await;
    // A bare protocol client, so that the figures are the server's.
    let mut request = request(addr_a, "bea");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(WsMessage::text(r#"{"type":"hello"}"#))
        .await
        .unwrap();
    let session = timeout(WAIT, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(session.to_text().unwrap().contains(r#""resumed":false"#));
    let mut seq = 0;
    // From node B (through Redis pub/sub), then from node A itself, for comparison.
    for (from, sessions) in [("B", &route_b), ("A", &route_a)] {
        let to_bea = sessions.sender_for_client("bea");
        let mut latencies = Vec::new();
        for i in 1..=100u64 {
            seq += 1;
            let sent = Instant::now();
            assert_eq!(to_bea.send(format!("from {from} {i}")).await.unwrap(), seq);
            let frame = timeout(WAIT, socket.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            latencies.push(sent.elapsed());
            assert_eq!(
                frame.to_text().unwrap(),
                format!(r#"{{"type":"msg","seq":{seq},"data":"from {from} {i}"}}"#)
            );
        }
        latencies.sort();
        eprintln!(
            "send on node {from} to the frame at a client of node A: median {:?}, p99 {:?}",
            latencies[50], latencies[98]
        );
    }
}

/// A TCP proxy that sends each new connection to the next node in turn and cuts it (no close
/// frame) after a random 10 to 40 ms: a client that reconnects lands on the other node.
async fn cutting_proxy(nodes: [SocketAddr; 2]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = Arc::new(AtomicUsize::new(0));
    let counted = cuts.clone();
    tokio::spawn(async move {
        let mut turn = 0usize;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let node = nodes[turn % 2];
            turn += 1;
            let cuts = counted.clone();
            let life = Duration::from_millis(10 + rand_below(30));
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(node).await else {
                    return;
                };
                let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                if timeout(life, copy).await.is_err() {
                    cuts.fetch_add(1, Ordering::Relaxed);
                }
                // Both ends dropped mid-stream: no close frame either way.
            });
        }
    });
    (addr, cuts)
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % n
}

#[tokio::test]
async fn a_client_switching_node_on_every_reconnect_gets_everything_once_and_in_order() {
    const N: usize = 1000;
    let redis = RedisServer::start();
    let handled = Handled::default();
    let config = config(&redis);
    let (_a, addr_a) = node(&config, &handled).await;
    let (_b, addr_b) = node(&config, &handled).await;
    let (proxy, cuts) = cutting_proxy([addr_a, addr_b]).await;

    let (client, mut events) = Client::connect(request(proxy, "cy"), options())
        .await
        .unwrap();
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        for i in 1..=N {
            sender.send(format!("m{i}")).await.unwrap();
        }
    });
    let started = Instant::now();
    let mut received = Vec::new();
    while received.len() < N {
        let (seq, text) = next_text(&mut events).await;
        assert_eq!(
            seq as usize,
            received.len() + 1,
            "in order, no gap, no repeat"
        );
        received.push(text);
        assert!(started.elapsed() < WAIT * 3, "took too long");
    }
    sending.await.unwrap();
    let expected: Vec<String> = (1..=N).map(|i| format!("echo:m{i}")).collect();
    assert_eq!(received, expected, "every echo once, in order");
    let handled = handled.lock().unwrap().clone();
    let expected: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    assert_eq!(
        handled, expected,
        "every message handled once, in order, across both nodes"
    );
    let cuts = cuts.load(Ordering::Relaxed);
    eprintln!(
        "{N} messages each way through {cuts} cuts in {:?}",
        started.elapsed()
    );
    assert!(
        cuts >= 5,
        "only {cuts} cuts: the test did not switch nodes enough"
    );
    client.close().await;
}

#[tokio::test]
async fn while_redis_is_down_a_hello_is_answered_unavailable_in_time_and_sessions_come_back() {
    let mut redis = RedisServer::start();
    let handled = Handled::default();
    let config = config(&redis);
    let (_route, addr) = node(&config, &handled).await;
    redis.stop();

    let hello = || async {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let started = Instant::now();
        socket
            .send(WsMessage::text(r#"{"type":"hello"}"#))
            .await
            .unwrap();
        let first = timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let answered = started.elapsed();
        let second = timeout(WAIT, socket.next()).await.unwrap();
        (first.into_text().unwrap().to_string(), answered, second)
    };
    let (frame, answered, next) = hello().await;
    assert!(frame.contains(r#""reason":"unavailable""#), "{frame}");
    assert!(answered < OP_TIMEOUT * 2, "answered after {answered:?}");
    match next {
        Some(Ok(WsMessage::Close(Some(close)))) => assert_eq!(u16::from(close.code), 1013),
        other => panic!("expected close 1013, got {other:?}"),
    }

    redis.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let (frame, _, _) = hello().await;
        if frame.contains(r#""resumed":false"#) && !frame.contains("reason") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no session after Redis came back: {frame}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Echoes `n` messages through one client with at most 512 unacknowledged; the time it took.
async fn echo_run(addr: SocketAddr, client: &str, n: usize) -> Duration {
    let options = ClientOptions {
        max_unacknowledged: 512,
        ack_every: 64,
        ..options()
    };
    let (client, mut events) = Client::connect(request(addr, client), options)
        .await
        .unwrap();
    let started = Instant::now();
    let sender = client.clone();
    let sending = tokio::spawn(async move {
        for i in 1..=n {
            sender.send(format!("m{i}")).await.unwrap();
        }
    });
    for i in 1..=n {
        assert_eq!(
            next_text(&mut events).await,
            (i as u64, format!("echo:m{i}"))
        );
    }
    sending.await.unwrap();
    let took = started.elapsed();
    client.close().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_throughput_on_redis_against_memory_and_an_application_registry() {
    const N: usize = 2000;
    let redis = RedisServer::start();
    let handled = Handled::default();
    let on_redis = config(&redis);
    let (_sessions, redis_addr) = node(&on_redis, &handled).await;
    let mut in_memory = on_redis.clone();
    in_memory.session.store.backend = SessionBackend::Memory;
    let (_sessions, memory_addr) = node(&in_memory, &handled).await;

    // A route given the application's registry keeps its sessions there.
    let registry = Sessions::from_config(on_redis.session.clone()).unwrap();
    let echo =
        service_fn(|request: Inbound| async move { Ok::<_, BoxError>(Some(request.message)) });
    let route = WsRoute::new(echo, in_memory.clone()).sessions_in(registry.clone());
    let app = Router::new().route("/ws", route.into_method_router());
    let shared_addr = support::serve(app).await;
    let (client, mut events) = Client::connect(request(shared_addr, "dee"), options())
        .await
        .unwrap();
    client.send("x").await.unwrap();
    assert_eq!(next_text(&mut events).await, (1, "x".into()));
    assert_eq!(registry.stats().created, 1);
    client.close().await;

    let memory = echo_run(memory_addr, "m", N).await;
    let redis = echo_run(redis_addr, "r", N).await;
    eprintln!(
        "{N} echoes under a session, one client, 512 in flight: memory {:.0}/s, Redis {:.0}/s ({:.2}x)",
        N as f64 / memory.as_secs_f64(),
        N as f64 / redis.as_secs_f64(),
        memory.as_secs_f64() / redis.as_secs_f64()
    );
}
