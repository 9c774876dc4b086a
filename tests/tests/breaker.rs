//! A failing handler opens the breaker; clients hear it; after the wait, probes close it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower::ServiceBuilder;
use wsguard::circuit_breaker::{Handle, State};
use wsguard::config::{ConfigHandle, RejectionAction, StabilityConfig};
use wsguard::prelude::*;
use wsguard_tests::{close_code, connect, next_text, serve};

struct Server {
    addr: std::net::SocketAddr,
    healthy: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    breaker: Handle,
    registry: MetricsRegistry,
}

/// Echo through metrics, dedup and the breaker; fails while `healthy` is false.
async fn server(on_rejection: RejectionAction) -> Server {
    let mut config = StabilityConfig::testing();
    config.connection.on_rejection = on_rejection;
    let config = ConfigHandle::new(config).unwrap();
    let registry = MetricsRegistry::new(&config);
    let breaker = CircuitBreakerLayer::new(&config).classifier(MessageClassifier);
    let handle = breaker.handle();
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (ok, count) = (healthy.clone(), calls.clone());
    let stack = ServiceBuilder::new()
        .layer(MetricsLayer::new(registry.clone()).classifier(MessageClassifier))
        .layer(DedupLayer::new(&config))
        .layer(breaker)
        .service_fn(move |request: Inbound| {
            count.fetch_add(1, Ordering::SeqCst);
            let ok = ok.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok::<_, BoxError>(Some(request.message))
                } else {
                    Err::<Option<Message>, BoxError>("backend down".into())
                }
            }
        });
    let addr = serve(Router::new().route("/ws", ws_route(stack, &config))).await;
    Server {
        addr,
        healthy,
        calls,
        breaker: handle,
        registry,
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test]
async fn failing_handler_opens_the_breaker_clients_get_error_frames_and_probes_close_it() {
    let server = server(RejectionAction::ErrorFrame).await;
    let mut client = connect(server.addr, "/ws").await;

    // `testing()`: two failures in a row open the breaker for 1 s.
    for n in 0..2 {
        client.send(WsMessage::text(format!("m{n}"))).await.unwrap();
        assert_eq!(
            json(&next_text(&mut client).await)["error"],
            "handler_error"
        );
    }
    assert_eq!(server.breaker.state(), State::Open);

    client.send(WsMessage::text("m2")).await.unwrap();
    let rejection = json(&next_text(&mut client).await);
    assert_eq!(rejection["error"], "circuit_open", "{rejection}");
    let wait = rejection["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!(wait > 0 && wait <= 1000, "{rejection}");
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        2,
        "a rejection reached the handler"
    );

    // The backend recovers; after the advertised wait one successful probe closes the breaker.
    server.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    client.send(WsMessage::text("probe")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "probe");
    assert_eq!(server.breaker.state(), State::Closed);
    client.send(WsMessage::text("after")).await.unwrap();
    assert_eq!(next_text(&mut client).await, "after");

    let calls = server.registry.snapshot().calls;
    assert_eq!((calls.ok, calls.error, calls.rejected), (2, 2, 1));
}

#[tokio::test]
async fn with_on_rejection_close_an_open_breaker_closes_the_connection_with_1013() {
    let server = server(RejectionAction::Close).await;
    let mut client = connect(server.addr, "/ws").await;
    for n in 0..2 {
        client.send(WsMessage::text(format!("m{n}"))).await.unwrap();
        assert_eq!(
            json(&next_text(&mut client).await)["error"],
            "handler_error"
        );
    }
    client.send(WsMessage::text("m2")).await.unwrap();
    assert_eq!(close_code(&mut client).await, 1013);
}
