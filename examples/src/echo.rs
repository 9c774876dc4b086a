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
}

/// The echo server: `/ws` echoes every text or binary message through metrics, dedup (content
/// fingerprint, per connection) and the circuit breaker; `/metrics` is Prometheus text (when a
/// `prometheus` handle is given), `/stats` a JSON snapshot (sessions included), `/health` 200.
/// `POST /sessions/{token}/messages?count=N` logs the request body N times (default 1) in a
/// `wsguard.v1` session, connected or not: what a detached client finds on resume.
pub fn app(config: &ConfigHandle, prometheus: Option<PrometheusHandle>) -> EchoApp {
    let registry = MetricsRegistry::new(config);
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
        let (registry, dedup, breaker, connections, handled) = (
            registry.clone(),
            dedup_handle.clone(),
            breaker_handle.clone(),
            connections.clone(),
            handled.clone(),
        );
        move || async move {
            let body = stats_json(
                &registry,
                &dedup,
                &breaker,
                &connections,
                &sessions.stats(),
                &handled,
            );
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
    }
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
