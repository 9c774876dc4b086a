//! Oversized messages, panics, the connection limit and a client that never reads.

use std::sync::{Arc, Mutex};

use axum::Router;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tower::ServiceBuilder;
use wsguard::axum::{Sender, WsRoute};
use wsguard::config::{ConfigHandle, OverflowPolicy, StabilityConfig};
use wsguard::prelude::*;
use wsguard_examples::echo;
use wsguard_tests::{close_code, connect, next_text, serve, wait_until};

fn echo_app(edit: impl FnOnce(&mut StabilityConfig)) -> echo::EchoApp {
    let mut config = StabilityConfig::testing();
    edit(&mut config);
    echo::app(&ConfigHandle::new(config).unwrap(), None)
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let app = echo_app(|c| c.connection.max_message_size = 4096);
    let addr = serve(app.router).await;
    let mut client = connect(addr, "/ws").await;
    client
        .send(WsMessage::text("x".repeat(4096)))
        .await
        .unwrap();
    assert_eq!(next_text(&mut client).await.len(), 4096);
    client
        .send(WsMessage::binary(vec![0u8; 4097]))
        .await
        .unwrap();
    assert_eq!(close_code(&mut client).await, 1009);
}

#[tokio::test]
async fn handler_panic_closes_that_connection_with_1011_while_others_keep_working() {
    let config = ConfigHandle::new(StabilityConfig::testing()).unwrap();
    let registry = MetricsRegistry::new(&config);
    let stack = ServiceBuilder::new()
        .layer(MetricsLayer::new(registry.clone()).classifier(MessageClassifier))
        .layer(DedupLayer::new(&config))
        .layer(CircuitBreakerLayer::new(&config).classifier(MessageClassifier))
        .service_fn(|request: Inbound| async move {
            if request.text() == Some("panic") {
                panic!("handler bug");
            }
            Ok::<_, BoxError>(Some(request.message))
        });
    let addr = serve(Router::new().route("/ws", ws_route(stack, &config))).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(connect(addr, "/ws").await);
    }
    let mut victim = connect(addr, "/ws").await;
    victim.send(WsMessage::text("panic")).await.unwrap();
    assert_eq!(close_code(&mut victim).await, 1011);
    for (n, other) in others.iter_mut().enumerate() {
        let text = format!("still here {n}");
        other.send(WsMessage::text(text.as_str())).await.unwrap();
        assert_eq!(next_text(other).await, text);
    }
    let mut newcomer = connect(addr, "/ws").await;
    newcomer.send(WsMessage::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut newcomer).await, "hello");
    wait_until("the victim's registration to go", || {
        registry.active_connections() == 4
    })
    .await;
}

#[tokio::test]
async fn upgrades_past_max_connections_get_503() {
    let app = echo_app(|c| c.connection.max_connections = 3);
    let addr = serve(app.router).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(addr, "/ws").await);
    }
    for _ in 0..2 {
        match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
            other => panic!("expected 503, got {other:?}"),
        }
    }
    assert_eq!(app.connections.refused(), 2);
    assert_eq!(app.connections.open(), 3);
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    wait_until("a place to free", || app.connections.open() == 2).await;
    let mut again = connect(addr, "/ws").await;
    again.send(WsMessage::text("in")).await.unwrap();
    assert_eq!(next_text(&mut again).await, "in");
}

/// A server whose handler, on `flood N`, queues N messages of 1 KiB through the connection's
/// sender; the test keeps that sender to look at the queue.
async fn flood_server(
    overflow: OverflowPolicy,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Option<Sender>>>,
    wsguard::axum::ConnectionStats,
) {
    let mut config = StabilityConfig::testing();
    config.connection.overflow = overflow;
    config.connection.send_queue_capacity = 16;
    let kept: Arc<Mutex<Option<Sender>>> = Arc::default();
    let keep = kept.clone();
    let handler = tower::service_fn(move |request: Inbound| {
        let sender = request.sender().clone();
        *keep.lock().unwrap() = Some(sender.clone());
        async move {
            let n: usize = request
                .text()
                .and_then(|t| t.strip_prefix("flood "))
                .unwrap()
                .parse()?;
            let chunk = "x".repeat(1024);
            for _ in 0..n {
                if sender.send(Message::text(chunk.as_str())).is_err() {
                    break;
                }
            }
            Ok::<Option<Message>, BoxError>(None)
        }
    });
    let route = WsRoute::new(handler, config);
    let stats = route.stats();
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;
    (addr, kept, stats)
}

#[tokio::test]
async fn client_that_never_reads_keeps_the_queue_bounded_by_dropping() {
    for policy in [OverflowPolicy::DropNewest, OverflowPolicy::DropOldest] {
        let (addr, kept, _) = flood_server(policy).await;
        let mut client = connect(addr, "/ws").await;
        // 64 MiB, far more than the socket buffers hold; the client reads none of it.
        client.send(WsMessage::text("flood 65536")).await.unwrap();
        let sender = || kept.lock().unwrap().clone();
        wait_until("the handler to run", || sender().is_some()).await;
        let sender = sender().unwrap();
        wait_until("the policy to drop", || sender.dropped() > 0).await;
        assert!(
            sender.high_water() <= 16,
            "{policy:?}: queue grew to {}",
            sender.high_water()
        );
        assert!(sender.len() <= 16);
        assert!(!sender.is_closed(), "{policy:?} must keep the connection");
        assert!(sender.written() < 65536);
        // The client goes away: nothing it never read stays in memory.
        drop(client);
        wait_until("the queue to be discarded", || {
            sender.is_closed() && sender.is_empty()
        })
        .await;
    }
}

#[tokio::test]
async fn client_that_never_reads_is_closed_under_the_close_policy() {
    let (addr, kept, stats) = flood_server(OverflowPolicy::Close).await;
    let mut client = connect(addr, "/ws").await;
    client.send(WsMessage::text("flood 65536")).await.unwrap();
    wait_until("the connection to close", || stats.open() == 0).await;
    let sender = kept.lock().unwrap().clone().unwrap();
    assert!(sender.is_closed());
    assert!(sender.high_water() <= 16);
    assert!(sender.dropped() >= 1);
    assert!(sender.send(Message::text("late")).is_err());
}
