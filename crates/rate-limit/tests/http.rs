//! `RateLimitLayer::http` on an axum route: `429` with `Retry-After`, keyed by peer address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::post;
use tower::ServiceExt;
use wsguard_config::{RateLimitAction, RateLimitConfig};
use wsguard_rate_limit::{RateLimitLayer, Reason};

fn from(peer: &str, body: impl Into<String>) -> Request<Body> {
    let body = body.into();
    let mut req = Request::post("/orders")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap();
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    req
}

#[tokio::test(start_paused = true)]
async fn http_route_answers_429_with_retry_after_per_peer_address() {
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    let limit = RateLimitLayer::http(RateLimitConfig {
        messages_per_second: 1,
        messages_burst: 2,
        bytes_per_second: 1000,
        bytes_burst: 1000,
        // Not a WebSocket: whatever the action, HTTP answers 429.
        on_limit: RateLimitAction::Close,
        ..RateLimitConfig::testing()
    })
    .route("/orders");
    let stats = limit.handle();
    let app = Router::new()
        .route(
            "/orders",
            post(move || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                "created"
            }),
        )
        .route_layer(limit);

    // Two ports of one host are one client.
    for port in [1000, 1001] {
        let ok = app
            .clone()
            .oneshot(from(&format!("10.0.0.1:{port}"), "{}"))
            .await;
        assert_eq!(ok.unwrap().status(), StatusCode::OK);
    }
    let refused = app
        .clone()
        .oneshot(from("10.0.0.1:1002", "{}"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
    assert_eq!(
        refused.extensions().get::<Reason>(),
        Some(&Reason::RateLimited)
    );
    assert_eq!(handled.load(Ordering::SeqCst), 2);

    // Another host has its own limit.
    let other = app.clone().oneshot(from("10.0.0.2:1000", "{}")).await;
    assert_eq!(other.unwrap().status(), StatusCode::OK);

    // A body larger than the byte burst never passes: 429 without a retry delay.
    let too_big = app
        .clone()
        .oneshot(from("10.0.0.3:1000", "x".repeat(1001)))
        .await
        .unwrap();
    assert_eq!(too_big.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(!too_big.headers().contains_key(header::RETRY_AFTER));

    tokio::time::advance(Duration::from_secs(1)).await;
    let again = app.clone().oneshot(from("10.0.0.1:1003", "{}")).await;
    assert_eq!(again.unwrap().status(), StatusCode::OK);

    let stats = stats.stats();
    assert_eq!(stats.route.as_deref(), Some("/orders"));
    assert_eq!((stats.limited_messages, stats.larger_than_burst), (1, 1));
    assert_eq!(handled.load(Ordering::SeqCst), 4);
}
