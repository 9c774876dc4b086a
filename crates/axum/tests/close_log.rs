//! Every close is logged through `tracing` with its code and reason, and warnings a client can
//! cause are rate-limited. In a test binary of its own, because it installs the process-wide
//! subscriber that captures the server's events.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower::service_fn;
use wsguard_axum::{BoxError, Inbound, ws_route};
use wsguard_config::StabilityConfig;

mod support;

/// The level and fields of every event.
#[derive(Default)]
struct Closes(Mutex<Vec<String>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

struct Capture(Arc<Closes>);

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(format!("level={} ", event.metadata().level()));
        event.record(&mut fields);
        self.0.0.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn closes() -> Arc<Closes> {
    static CLOSES: OnceLock<Arc<Closes>> = OnceLock::new();
    CLOSES
        .get_or_init(|| {
            let closes = Arc::new(Closes::default());
            tracing::subscriber::set_global_default(Capture(Arc::clone(&closes)))
                .expect("first subscriber of this binary");
            closes
        })
        .clone()
}

async fn logged(closes: &Closes, needle: &[&str]) -> String {
    let found = timeout(Duration::from_secs(10), async {
        loop {
            let hit = closes
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|line| needle.iter().all(|n| line.contains(n)))
                .cloned();
            match hit {
                Some(line) => return line,
                // The server logs after the close handshake; poll until it has.
                None => sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "no close logged with {needle:?}; logged: {:?}",
            closes.0.lock().unwrap()
        )
    })
}

#[tokio::test]
async fn server_and_client_closes_are_logged_with_code_and_reason() {
    let closes = closes();
    let mut config = StabilityConfig::testing();
    config.connection.max_message_size = 1024;
    let echo = service_fn(|req: Inbound| async move { Ok::<_, BoxError>(Some(req.message)) });
    let addr = support::serve(Router::new().route("/ws", ws_route(echo, config))).await;

    // Closed by the server: a message over max_message_size.
    let (mut client, _) = connect_async(format!("ws://{addr}/ws")).await.unwrap();
    client
        .send(WsMessage::text("x".repeat(2048)))
        .await
        .unwrap();
    while let Some(Ok(frame)) = client.next().await {
        if frame.is_close() {
            break;
        }
    }
    let line = logged(&closes, &["code=1009", "websocket closed by server"]).await;
    assert!(line.contains("reason="), "the reason is logged: {line}");

    // Closed by the client, normally.
    let (mut client, _) = connect_async(format!("ws://{addr}/ws")).await.unwrap();
    client.close(None).await.unwrap();
    let line = logged(&closes, &["websocket closed by client", "code=1005"]).await;
    assert!(line.contains("detail="), "the detail is logged: {line}");
}

#[tokio::test]
async fn a_protocol_error_is_logged_as_a_server_close_with_its_code() {
    use tokio::io::AsyncWriteExt;
    let closes = closes();
    let echo = service_fn(|req: Inbound| async move { Ok::<_, BoxError>(Some(req.message)) });
    let config = StabilityConfig::testing();
    let addr = support::serve(Router::new().route("/ws", ws_route(echo, config))).await;
    let mut tcp = support::raw::upgrade(addr, None).await;
    // An unmasked frame from a client.
    tcp.write_all(&support::raw::frame(0x81, b"hi", false))
        .await
        .unwrap();
    let seen = support::raw::read_until_close(&mut tcp).await;
    assert_eq!(seen.code, Some(1002));
    let line = logged(&closes, &["code=1002", "websocket closed by server"]).await;
    assert!(line.contains("protocol error"), "{line}");
    assert!(line.contains("level=WARN"), "{line}");
}

#[tokio::test]
async fn refused_upgrades_warn_at_a_bounded_rate_and_count_the_rest() {
    let closes = closes();
    let mut config = StabilityConfig::testing();
    config.connection.max_connections = 1;
    let echo = service_fn(|req: Inbound| async move { Ok::<_, BoxError>(Some(req.message)) });
    let addr = support::serve(Router::new().route("/ws", ws_route(echo, config))).await;
    let (_held, _) = connect_async(format!("ws://{addr}/ws")).await.unwrap();

    let suppressed_before = wsguard_axum::suppressed_warnings();
    let started = std::time::Instant::now();
    let refusals = 300;
    for _ in 0..refusals {
        let refused = connect_async(format!("ws://{addr}/ws")).await.unwrap_err();
        assert!(refused.to_string().contains("503"), "{refused}");
    }
    let seconds = started.elapsed().as_secs() + 1;
    let warned = closes
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("websocket upgrade refused"))
        .count() as u64;
    assert!(
        (1..=10 * seconds).contains(&warned),
        "{warned} warnings for {refusals} refusals in under {seconds} s"
    );
    assert!(
        wsguard_axum::suppressed_warnings() - suppressed_before >= refusals - 10 * seconds,
        "the left-out warnings are counted"
    );
}
