//! The HTTP flavour on axum routes: 5xx trips it, a rejection is `503` + `Retry-After`.

#![cfg(feature = "http")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::{Router, routing::get};
use tower::ServiceExt;
use wsguard_circuit_breaker::{CircuitBreakerLayer, Reason, State};
use wsguard_config::{BackoffStrategy, CircuitBreakerConfig, OpenBackoff, TripMode};

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig {
        mode: TripMode::ConsecutiveFailures,
        failure_threshold: 2,
        timeout: Duration::from_secs(10),
        backoff: OpenBackoff {
            strategy: BackoffStrategy::Fixed,
            multiplier: 1.0,
            max_wait: Duration::from_secs(10),
            jitter: 0.0,
        },
        half_open_max_calls: 1,
        success_threshold: 1,
        ..CircuitBreakerConfig::testing()
    }
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// `/flaky` answers `status` (shared, so tests can heal it) behind a breaker; `/free` has none.
fn app(
    layer: CircuitBreakerLayer<
        wsguard_circuit_breaker::StatusClassifier,
        wsguard_circuit_breaker::RespondWithStatus,
    >,
    status: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
) -> Router {
    Router::new()
        .route(
            "/flaky",
            get(move || {
                let status = status.load(Ordering::SeqCst) as u16;
                hits.fetch_add(1, Ordering::SeqCst);
                async move { StatusCode::from_u16(status).unwrap() }
            })
            .layer(layer),
        )
        .route("/free", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
}

#[tokio::test(start_paused = true)]
async fn open_breaker_answers_503_with_retry_after_and_spares_the_handler() {
    let layer = CircuitBreakerLayer::http(config());
    let handle = layer.handle();
    let status = Arc::new(AtomicUsize::new(500));
    let hits = Arc::new(AtomicUsize::new(0));
    let app = app(layer, status.clone(), hits.clone());

    for _ in 0..2 {
        let resp = app.clone().oneshot(get_req("/flaky")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(handle.state(), State::Open);

    tokio::time::advance(Duration::from_millis(3500)).await;
    let resp = app.clone().oneshot(get_req("/flaky")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()[header::RETRY_AFTER],
        "7",
        "6.5 s left, rounded up"
    );
    assert_eq!(
        resp.extensions().get::<Reason>(),
        Some(&Reason::CircuitOpen),
        "the response says why"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2, "the handler was not called");

    // Another route is not guarded, even though it fails.
    for _ in 0..3 {
        let resp = app.clone().oneshot(get_req("/free")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    // Healed upstream: the probe after the wait closes the breaker.
    status.store(200, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(7)).await;
    let resp = app.clone().oneshot(get_req("/flaky")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn client_errors_do_not_trip_the_http_breaker() {
    let layer = CircuitBreakerLayer::http(config());
    let handle = layer.handle();
    let app = app(
        layer,
        Arc::new(AtomicUsize::new(404)),
        Arc::new(AtomicUsize::new(0)),
    );
    for _ in 0..5 {
        let resp = app.clone().oneshot(get_req("/flaky")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().failures, 0, "404 is no failure");
}

#[tokio::test(start_paused = true)]
async fn state_survives_routers_built_again_from_the_same_layer() {
    let layer = CircuitBreakerLayer::http(config());
    let handle = layer.handle();
    let status = Arc::new(AtomicUsize::new(503));
    let hits = Arc::new(AtomicUsize::new(0));
    // Two routers from one layer, as when an app is rebuilt per connection.
    let first = app(layer.clone(), status.clone(), hits.clone());
    let second = app(layer, status, hits.clone());
    first.oneshot(get_req("/flaky")).await.unwrap();
    second.clone().oneshot(get_req("/flaky")).await.unwrap();
    assert_eq!(handle.state(), State::Open);
    let resp = second.oneshot(get_req("/flaky")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn forced_open_route_says_when_to_retry() {
    let layer = CircuitBreakerLayer::http(config());
    layer.handle().force_open();
    let app = app(
        layer,
        Arc::new(AtomicUsize::new(200)),
        Arc::new(AtomicUsize::new(0)),
    );
    let resp = app.oneshot(get_req("/flaky")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "10");
}

#[tokio::test(start_paused = true)]
async fn another_tower_http_classifier_can_count_client_errors() {
    use tower_http::classify::StatusInRangeAsFailures;

    let layer = CircuitBreakerLayer::http(config())
        .classifier(StatusInRangeAsFailures::new(400..=599).into_make_classifier());
    let handle = layer.handle();
    let app = Router::new().route(
        "/missing",
        get(|| async { StatusCode::NOT_FOUND }).layer(layer),
    );
    for _ in 0..2 {
        let resp = app.clone().oneshot(get_req("/missing")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(handle.state(), State::Open);
    let resp = app.oneshot(get_req("/missing")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}
