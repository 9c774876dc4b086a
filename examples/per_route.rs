//! Different per-message stacks on different WebSocket routes of one server.
//!
//! ```text
//! cargo run --example per_route                             # 127.0.0.1:3000, development preset
//! cargo run --example per_route -- --addr 127.0.0.1:8080 --config examples/wsguard.toml
//! ```
//!
//! - `/ws/orders`: metrics, dedup and a circuit breaker around a handler that answers
//!   `{"accepted": <message>}`: orders must not run twice, and a failing order backend must not
//!   be hammered.
//! - `/ws/chat`: metrics only, echo: resent chat lines are legitimate.
//! - `/ws/raw`: no layers at all, echo.
//! - `/stats`: the shared metrics registry as JSON (routes are labelled), with the `wsguard.v1`
//!   session figures of each route given the registry (`WsRoute::metrics`) once it has had a
//!   connection.

use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use tower::ServiceBuilder;
use wsguard::prelude::*;
use wsguard_examples::{ServerArgs, init_tracing, serve};

async fn echo(request: Inbound) -> Result<Option<Message>, BoxError> {
    Ok(Some(request.message))
}

async fn accept_order(request: Inbound) -> Result<Option<Message>, BoxError> {
    let order = request.text().ok_or("orders are JSON text")?;
    let order: serde_json::Value = serde_json::from_str(order)?;
    let reply = serde_json::json!({ "accepted": order });
    Ok(Some(Message::text(reply.to_string())))
}

fn app(config: &ConfigHandle) -> Router {
    let registry = MetricsRegistry::new(config);
    let metrics = |route: &'static str| {
        MetricsLayer::new(registry.clone())
            .route(route)
            .classifier(MessageClassifier)
    };

    let orders = ServiceBuilder::new()
        .layer(metrics("/ws/orders"))
        .layer(DedupLayer::new(config).classifier(MessageClassifier))
        .layer(CircuitBreakerLayer::new(config).classifier(MessageClassifier))
        .service_fn(accept_order);
    let chat = ServiceBuilder::new()
        .layer(metrics("/ws/chat"))
        .service_fn(echo);
    let orders = WsRoute::new(orders, config).metrics(registry.clone());
    let chat = WsRoute::new(chat, config).metrics(registry.clone());
    let raw = tower::service_fn(echo);

    let stats = move || async move { axum::Json(registry.snapshot()) };
    Router::new()
        .route("/ws/orders", orders.into_method_router())
        .route("/ws/chat", chat.into_method_router())
        .route("/ws/raw", ws_route(raw, config))
        .route("/stats", get(stats))
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing();
    let args = match ServerArgs::from_env() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let (config, _watcher) = match args.config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration refused:\n{err}");
            return ExitCode::from(1);
        }
    };
    match serve(app(&config), args.addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("server failed: {err}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use futures_util::{SinkExt, StreamExt};
    use tokio::time::timeout;
    use tokio_tungstenite::connect_async;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tower::ServiceExt;

    use super::*;

    async fn start() -> (std::net::SocketAddr, Router) {
        let config = ConfigHandle::new(StabilityConfig::testing()).unwrap();
        let router = app(&config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = router.clone();
        tokio::spawn(async move { axum::serve(listener, serving).await.unwrap() });
        (addr, router)
    }

    /// Sends `texts` on `path`, then a marker; the replies before the marker's.
    async fn replies(addr: std::net::SocketAddr, path: &str, texts: &[&str]) -> Vec<String> {
        let (mut ws, _) = connect_async(format!("ws://{addr}{path}")).await.unwrap();
        for text in texts.iter().chain(&[r#"{"marker":true}"#]) {
            ws.send(WsMessage::text(*text)).await.unwrap();
        }
        let mut out = Vec::new();
        loop {
            let frame = timeout(Duration::from_secs(10), ws.next()).await.unwrap();
            let text = frame.unwrap().unwrap().into_text().unwrap().to_string();
            if text.contains("marker") {
                return out;
            }
            out.push(text);
        }
    }

    #[tokio::test]
    async fn routes_run_their_own_stacks() {
        let (addr, router) = start().await;
        let order = r#"{"item":"book","qty":1}"#;
        let resent = r#"{ "qty": 1, "item": "book" }"#;
        // Orders are deduplicated: the resent order is dropped.
        let orders = replies(addr, "/ws/orders", &[order, resent]).await;
        assert_eq!(orders, [r#"{"accepted":{"item":"book","qty":1}}"#]);
        // Chat has no dedup layer, raw no layer at all: both echo everything.
        let chat = replies(addr, "/ws/chat", &[order, order]).await;
        assert_eq!(chat, [order, order]);
        let raw = replies(addr, "/ws/raw", &[order, order]).await;
        assert_eq!(raw, [order, order]);

        // Each route given the registry reports its sessions under its own label.
        let request = Request::get("/stats").body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut routes: Vec<&str> = stats["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["route"].as_str().unwrap())
            .collect();
        routes.sort_unstable();
        assert_eq!(routes, ["/ws/chat", "/ws/orders"], "{stats}");
    }
}
