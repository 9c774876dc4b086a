//! The `echo` example's application, shared with the end-to-end tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use wsguard::axum::{ConnectionStats, SessionStats, SessionToken, Sessions};
use wsguard::circuit_breaker::Handle as BreakerHandle;
use wsguard::dedup::DedupHandle;
use wsguard::prelude::*;
use wsguard::rate_limit::RateLimitHandle;

/// The echo server's routes and the handles that look into it.
#[derive(Debug, Clone)]
pub struct EchoApp {
    /// `/ws`, `/metrics`, `/stats`, `/health`.
    pub router: Router,
    /// The registry behind `/stats` and `/metrics`.
    pub registry: MetricsRegistry,
    /// The dedup layer's counters.
    pub dedup: DedupHandle,
    /// The breaker's handle.
    pub breaker: BreakerHandle,
    /// Open, accepted and refused connections of `/ws`.
    pub connections: ConnectionStats,
    /// Messages that reached the echo handler.
    pub handled: Arc<AtomicU64>,
    /// The rate limit's counters, when [`EchoOptions::rate_limit`] put it in the stack.
    pub rate_limit: Option<RateLimitHandle>,
}

/// What the echo server puts in its stack beyond metrics, dedup and the breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoOptions {
    /// `RateLimitLayer` after the metrics layer, reading the config's `rate_limit` section live
    /// (with `enabled = false` there it passes everything). Off by default: the presets enable
    /// rate limits, and an echo server loaded from one host (load generators, tests) would be
    /// limited as one client, since the client id is the peer address unless the config says
    /// otherwise.
    pub rate_limit: bool,
}

/// The echo server: `/ws` echoes every text or binary message through metrics, dedup (content
/// fingerprint, per connection) and the circuit breaker; `/metrics` is Prometheus text (when a
/// `prometheus` handle is given), `/stats` a JSON snapshot (sessions included), `/health` 200.
/// `POST /sessions/{token}/messages?count=N` logs the request body N times (default 1) in a
/// `wsguard.v1` session, connected or not: what a detached client finds on resume.
///
/// No rate limit: see [`app_with`] and [`EchoOptions::rate_limit`].
pub fn app(config: &ConfigHandle, prometheus: Option<PrometheusHandle>) -> EchoApp {
    app_with(config, prometheus, EchoOptions::default())
}

/// The echo server of [`app`] with `options`. With a rate limit, a refused message is answered
/// as `rate_limit.on_limit` says, counted as `rejected` by the metrics layer, and reported in
/// `/stats` (`rate_limit`, and the registry's `rate_limits`) and `/metrics`
/// (`wsguard_rate_limited_total`, ...).
pub fn app_with(
    config: &ConfigHandle,
    prometheus: Option<PrometheusHandle>,
    options: EchoOptions,
) -> EchoApp {
    let registry = MetricsRegistry::new(config);
    let rate_limit = options
        .rate_limit
        .then(|| RateLimitLayer::new(config).route("/ws"));
    let rate_limit_handle = rate_limit.as_ref().map(RateLimitLayer::handle);
    if let Some(handle) = &rate_limit_handle {
        wsguard::watch_rate_limit(&registry, handle.clone());
    }
    let dedup = DedupLayer::new(config).classifier(MessageClassifier);
    let breaker = CircuitBreakerLayer::new(config).classifier(MessageClassifier);
    let (dedup_handle, breaker_handle) = (dedup.handle(), breaker.handle());
    let handled = Arc::new(AtomicU64::new(0));

    let counter = handled.clone();
    let stack = ServiceBuilder::new()
        .layer(
            MetricsLayer::new(registry.clone())
                .route("/ws")
                .classifier(MessageClassifier),
        )
        // Before dedup: a flood of duplicates is a flood all the same.
        .option_layer(rate_limit)
        .layer(dedup)
        .layer(breaker)
        .service_fn(move |request: Inbound| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, BoxError>(Some(request.message)) }
        });
    let ws = WsRoute::new(stack, config).metrics(registry.clone());
    let connections = ws.stats();
    let sessions = ws.sessions();
    let log = {
        let sessions = sessions.clone();
        move |Path(token): Path<String>, Query(query): Query<LogQuery>, body: String| async move {
            log_to_session(&sessions, &token, query.count.unwrap_or(1), &body).await
        }
    };

    let stats = {
        let (registry, dedup, breaker, connections, handled, rate_limit) = (
            registry.clone(),
            dedup_handle.clone(),
            breaker_handle.clone(),
            connections.clone(),
            handled.clone(),
            rate_limit_handle.clone(),
        );
        move || async move {
            let mut body = stats_json(
                &registry,
                &dedup,
                &breaker,
                &connections,
                &sessions.stats(),
                &handled,
            );
            body["rate_limit"] = rate_limit
                .as_ref()
                .map_or(serde_json::Value::Null, rate_limit_json);
            axum::Json(body)
        }
    };
    let published = registry.clone();
    let metrics = move || async move {
        match &prometheus {
            Some(handle) => {
                // Push the exact counters to the recorder, then render.
                published.publish();
                handle.run_upkeep();
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
                    .into_response()
            }
            None => (StatusCode::NOT_FOUND, "no Prometheus recorder").into_response(),
        }
    };

    let router = Router::new()
        .route("/ws", ws.into_method_router())
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/sessions/{token}/messages", post(log))
        .route("/health", get(|| async { "ok" }));
    EchoApp {
        router,
        registry,
        dedup: dedup_handle,
        breaker: breaker_handle,
        connections,
        handled,
        rate_limit: rate_limit_handle,
    }
}

/// The rate limit's counters as `/stats` shows them; `null` there when the stack has none.
fn rate_limit_json(limit: &RateLimitHandle) -> serde_json::Value {
    let s = limit.stats();
    serde_json::json!({
        "limited": s.limited(),
        "limited_messages": s.limited_messages,
        "limited_bytes": s.limited_bytes,
        "larger_than_burst": s.larger_than_burst,
        "dropped": s.dropped,
        "error_frames": s.error_frames,
        "closed": s.closed,
        "tracked_keys": s.tracked_keys,
        "evicted": s.evicted,
        "expired": s.expired,
    })
}

/// The query of `POST /sessions/{token}/messages`.
#[derive(Debug, serde::Deserialize)]
struct LogQuery {
    count: Option<u32>,
}

/// At most this many messages per request: a session log holds `max_messages` anyway.
const MAX_LOGGED_PER_REQUEST: u32 = 100_000;

async fn log_to_session(
    sessions: &Sessions,
    token: &str,
    count: u32,
    body: &str,
) -> axum::response::Response {
    let Ok(token) = token.parse::<SessionToken>() else {
        return (StatusCode::BAD_REQUEST, "not a session token").into_response();
    };
    if count > MAX_LOGGED_PER_REQUEST {
        return (StatusCode::BAD_REQUEST, "count is at most 100000").into_response();
    }
    let sender = sessions.sender_for_session(&token);
    let mut last = 0;
    for _ in 0..count {
        match sender.send(body).await {
            Ok(seq) => last = seq,
            Err(_) => return (StatusCode::NOT_FOUND, "no such session").into_response(),
        }
    }
    axum::Json(serde_json::json!({ "logged": count, "last_seq": last })).into_response()
}

fn stats_json(
    registry: &MetricsRegistry,
    dedup: &DedupHandle,
    breaker: &BreakerHandle,
    connections: &ConnectionStats,
    sessions: &SessionStats,
    handled: &AtomicU64,
) -> serde_json::Value {
    let d = dedup.stats();
    let b = breaker.snapshot();
    serde_json::json!({
        "handled": handled.load(Ordering::Relaxed),
        "metrics": registry.snapshot(),
        "dedup": {
            "checked": d.checked,
            "duplicates": d.duplicates,
            "evictions": d.evictions,
            "released": d.released,
            "store_errors": d.store_errors,
            "remembered": d.remembered,
        },
        "breaker": {
            "state": format!("{:?}", b.state),
            "rejected": b.rejected,
        },
        "connections": {
            "open": connections.open(),
            "accepted": connections.accepted(),
            "refused": connections.refused(),
        },
        "sessions": crate::sessions_json(sessions),
        "allocator": crate::allocator::allocator_json(),
    })
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;
    use wsguard_config::StabilityConfig;

    use super::*;

    #[tokio::test]
    async fn stats_show_the_route_sessions() {
        let config = ConfigHandle::new(StabilityConfig::testing()).unwrap();
        let echo = app(&config, None);
        let request = Request::get("/stats").body(Body::empty()).unwrap();
        let response = echo.router.oneshot(request).await.unwrap();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let sessions = &stats["sessions"];
        assert_eq!(sessions["live"], 0, "{stats}");
        assert_eq!(sessions["created"], 0, "{stats}");
        assert_eq!(sessions["refused"]["gap"], 0, "{stats}");
        assert!(stats["metrics"]["sessions"].is_array(), "{stats}");
    }

    async fn stats_of(echo: &EchoApp) -> serde_json::Value {
        let request = Request::get("/stats").body(Body::empty()).unwrap();
        let response = echo.router.clone().oneshot(request).await.unwrap();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn stats_show_the_rate_limit_only_when_it_is_in_the_stack() {
        let config = ConfigHandle::new(StabilityConfig::testing()).unwrap();
        let plain = app(&config, None);
        assert!(plain.rate_limit.is_none());
        let stats = stats_of(&plain).await;
        assert!(stats["rate_limit"].is_null(), "{stats}");
        assert_eq!(
            stats["metrics"]["rate_limits"],
            serde_json::json!([]),
            "{stats}"
        );

        let options = EchoOptions { rate_limit: true };
        let limited = app_with(&config, None, options);
        assert!(limited.rate_limit.is_some());
        let stats = stats_of(&limited).await;
        assert_eq!(stats["rate_limit"]["limited"], 0, "{stats}");
        assert_eq!(stats["rate_limit"]["tracked_keys"], 0, "{stats}");
        assert_eq!(
            stats["metrics"]["rate_limits"][0]["route"], "/ws",
            "{stats}"
        );
    }

    #[tokio::test]
    async fn logging_to_a_session_needs_a_token_it_holds() {
        let config = ConfigHandle::new(StabilityConfig::testing()).unwrap();
        let echo = app(&config, None);
        let post = |path: String| {
            let request = Request::post(path).body(Body::from("hi")).unwrap();
            echo.router.clone().oneshot(request)
        };
        let response = post("/sessions/nope/messages".to_owned()).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let unknown = SessionToken::generate();
        let response = post(format!("/sessions/{unknown}/messages?count=3"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
