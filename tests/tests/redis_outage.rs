//! Redis trouble under load, through the `echo` example's own stack with its dedup window and
//! its sessions in Redis: no message waits past the operation timeout (plus scheduling), the
//! window fails open as configured and deduplicates again by itself once Redis is back, and
//! session clients lose nothing and see nothing twice.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsguard::config::{
    ConfigHandle, DedupScope, FailureMode, SessionBackend, StabilityConfig, StoreBackend,
};
use wsguard_client::{Client, ClientOptions, Event, Message, RetryConfig};
use wsguard_examples::echo;
use wsguard_test_support::RedisServer;
use wsguard_tests::{connect, next_text, serve};

const OP_TIMEOUT: Duration = Duration::from_millis(200);

fn config(redis: &RedisServer) -> ConfigHandle {
    let mut config = StabilityConfig::testing();
    config.dedup.scope = DedupScope::Connection;
    config.dedup.ttl = Duration::from_secs(60);
    config.dedup.fingerprint_key = Some("00112233445566778899aabbccddeeff".into());
    config.dedup.store.backend = StoreBackend::Redis;
    config.dedup.store.redis.url = redis.url();
    config.dedup.store.redis.operation_timeout = OP_TIMEOUT;
    config.dedup.store.redis.on_error = FailureMode::FailOpen;
    config.session.enabled = true;
    config.session.store.backend = SessionBackend::Redis;
    config.session.store.redis.url = redis.url();
    config.session.store.redis.operation_timeout = OP_TIMEOUT;
    ConfigHandle::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_are_answered_within_the_timeout_while_redis_is_down_and_dedup_comes_back() {
    let mut redis = RedisServer::start();
    let config = config(&redis);
    let addr = serve(echo::app(&config, None).router).await;

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(addr, "/ws").await);
    }
    // Ping-pong on every client; the slowest answer of each phase.
    let mut n = 0u64;
    let mut round = async |clients: &mut Vec<wsguard_tests::Client>, rounds: usize| -> Duration {
        let mut slowest = Duration::ZERO;
        for _ in 0..rounds {
            for (i, client) in clients.iter_mut().enumerate() {
                n += 1;
                let text = format!("c{i}-{n}");
                let sent = Instant::now();
                client.send(WsMessage::text(text.clone())).await.unwrap();
                assert_eq!(
                    next_text(client).await,
                    text,
                    "fail open: every message answered"
                );
                slowest = slowest.max(sent.elapsed());
            }
        }
        slowest
    };
    round(&mut clients, 20).await;

    // A Redis that does not answer (frozen, its connections open): each message waits one
    // operation timeout for its claim, then goes through (fail open), never longer.
    redis.freeze();
    let frozen = round(&mut clients, 5).await;
    redis.thaw();
    assert!(
        frozen >= OP_TIMEOUT / 2 && frozen < OP_TIMEOUT * 2 + Duration::from_millis(500),
        "while Redis was frozen the slowest message took {frozen:?} (operation timeout {OP_TIMEOUT:?})"
    );

    // A Redis that is gone (killed: its connections reset): answered at once, fail open.
    redis.stop();
    let down = round(&mut clients, 10).await;
    assert!(
        down < OP_TIMEOUT * 2 + Duration::from_millis(500),
        "while Redis was down the slowest message took {down:?} (operation timeout {OP_TIMEOUT:?})"
    );
    redis.restart();

    // Back by itself: a message sent twice on one connection is dropped the second time.
    let client = &mut clients[0];
    let deadline = Instant::now() + Duration::from_secs(15);
    for attempt in 0.. {
        let text = format!("again-{attempt}");
        client.send(WsMessage::text(text.clone())).await.unwrap();
        assert_eq!(next_text(client).await, text);
        client.send(WsMessage::text(text.clone())).await.unwrap();
        client.send(WsMessage::text("marker")).await.unwrap();
        let next = next_text(client).await;
        if next == "marker" {
            break;
        }
        assert_eq!(next, text, "fail open repeats a duplicate, nothing else");
        assert_eq!(next_text(client).await, "marker");
        assert!(
            Instant::now() < deadline,
            "dedup did not come back after Redis restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_clients_lose_nothing_and_see_nothing_twice_across_a_redis_outage() {
    let redis = RedisServer::start();
    let config = config(&redis);
    let addr = serve(echo::app(&config, None).router).await;
    let options = ClientOptions {
        retry: RetryConfig {
            max_attempts: 0,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(300),
            ..RetryConfig::testing()
        },
        ..ClientOptions::default()
    };

    const CLIENTS: usize = 4;
    let mut logs = Vec::new();
    let mut handles = Vec::new();
    for i in 0..CLIENTS {
        let (client, mut events) = Client::connect(format!("ws://{addr}/ws"), options.clone())
            .await
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        logs.push(log.clone());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Event::Message {
                        message: Message::Text(text),
                        ..
                    } => log.lock().unwrap().push(text),
                    Event::Restarted(restart) => log
                        .lock()
                        .unwrap()
                        .push(format!("restarted: {}", restart.reason)),
                    Event::Disconnected(d) if d.code == Some(1011) => {
                        log.lock().unwrap().push("1011".to_owned())
                    }
                    _ => {}
                }
            }
        });
        handles.push((i, client));
    }
    let send = |n: std::ops::Range<u64>| {
        let handles = &handles;
        async move {
            for m in n {
                for (i, client) in handles {
                    client.send(format!("c{i}-{m}")).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    send(0..100).await;
    redis.freeze();
    send(100..200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.thaw();
    send(200..300).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, log) in logs.iter().enumerate() {
        let expected: Vec<String> = (0..300).map(|m| format!("c{i}-{m}")).collect();
        loop {
            let all = log.lock().unwrap().clone();
            let closed = all.iter().filter(|e| *e == "1011").count();
            let got: Vec<String> = all.into_iter().filter(|e| e != "1011").collect();
            if got.len() >= expected.len() || Instant::now() > deadline {
                assert!(
                    got == expected,
                    "client {i}: {} events, first difference at {:?}",
                    got.len(),
                    got.iter()
                        .zip(&expected)
                        .position(|(a, b)| a != b)
                        .map(|p| (&got[p], &expected[p]))
                );
                // The outage reached this client's session: its connection was closed 1011
                // ("session store failed") and it resumed from what Redis held.
                assert!(closed >= 1, "client {i} was never told the store failed");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
