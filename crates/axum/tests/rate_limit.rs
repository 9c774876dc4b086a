//! `RateLimitLayer` on every message of a route, over real sockets: each action as the client
//! meets it, per-client keying across connections, and the refusals in the metrics.
//!
//! Limits here never refill within a test: a byte limit of 1,000 bytes refilled at 1 byte per
//! second lets five 200-byte messages through, and the sixth would wait 200 s. So no figure
//! depends on timing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower::ServiceBuilder;
use wsguard_axum::{BoxError, Inbound, MessageClassifier, WsRoute};
use wsguard_circuit_breaker::{CircuitBreakerLayer, Handle as BreakerHandle, State};
use wsguard_config::{
    ClientIdSource, ConfigHandle, RateLimitAction, RateLimitScope, StabilityConfig,
};
use wsguard_metrics::{MetricsLayer, MetricsRegistry, RateLimitFigures};
use wsguard_rate_limit::error::LimitKind;
use wsguard_rate_limit::{RateLimitHandle, RateLimitLayer};

mod support;

use support::serve;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);
/// The size of every message: five fit in a client's byte burst.
const SIZE: usize = 200;
/// Messages a client may send before its limit refuses one.
const BURST: usize = 5;

struct Server {
    addr: SocketAddr,
    registry: MetricsRegistry,
    limit: RateLimitHandle,
    breaker: BreakerHandle,
    prometheus: PrometheusHandle,
}

/// An echo route behind metrics, a breaker (opened by 2 failures in a row) and a per-client
/// limit of five messages; the client id comes from the `x-client-id` header.
async fn server(on_limit: RateLimitAction) -> Server {
    server_with(|config| config.rate_limit.on_limit = on_limit).await
}

/// The server of [`server`], its config changed by `configure` last.
async fn server_with(configure: impl FnOnce(&mut StabilityConfig)) -> Server {
    let mut config = StabilityConfig::testing();
    config.connection.client_id = ClientIdSource::Header;
    config.connection.client_id_key = "x-client-id".to_owned();
    // The test sets the header itself; a real server sets or checks it in its own auth layer.
    config.connection.client_id_trusted = true;
    config.connection.max_message_size = 1_000;
    // Room for every reply to a flood of 20, read after it is sent.
    config.connection.send_queue_capacity = 64;
    config.rate_limit.scope = RateLimitScope::Client;
    config.rate_limit.messages_per_second = 0;
    config.rate_limit.bytes_per_second = 1;
    config.rate_limit.bytes_burst = 1_000;
    configure(&mut config);
    let config = ConfigHandle::new(config).unwrap();

    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    // The registry, the layers and the watched figures bind their series to this recorder.
    let (registry, limit, breaker, app) = metrics::with_local_recorder(&recorder, || {
        let registry = MetricsRegistry::new(&config);
        let limit = RateLimitLayer::new(&config).route("/ws");
        let breaker = CircuitBreakerLayer::new(&config).classifier(MessageClassifier);
        let (limit_handle, breaker_handle) = (limit.handle(), breaker.handle());
        let figures = limit.handle();
        registry.watch_rate_limit("/ws", move || figures_of(&figures));
        let stack = ServiceBuilder::new()
            .layer(
                MetricsLayer::new(registry.clone())
                    .route("/ws")
                    .classifier(MessageClassifier),
            )
            // Outside the limit, so that it sees every refusal: they must not open it.
            .layer(breaker)
            .layer(limit)
            .service_fn(|req: Inbound| async move { Ok::<_, BoxError>(Some(req.message)) });
        let route = WsRoute::new(stack, &config).metrics(registry.clone());
        let app = Router::new().route("/ws", route.into_method_router());
        (registry, limit_handle, breaker_handle, app)
    });
    Server {
        addr: serve(app).await,
        registry,
        limit,
        breaker,
        prometheus,
    }
}

/// The limit's counters as the registry reports them.
fn figures_of(limit: &RateLimitHandle) -> RateLimitFigures {
    let stats = limit.stats();
    let mut figures = RateLimitFigures::default();
    for (kind, action, n) in stats.limited_by_limit_and_action() {
        let by_action = match kind {
            LimitKind::Messages => &mut figures.limited.messages,
            LimitKind::Bytes => &mut figures.limited.bytes,
            _ => &mut figures.limited.larger_than_burst,
        };
        match action {
            RateLimitAction::Drop => by_action.drop = n,
            RateLimitAction::ErrorFrame => by_action.error_frame = n,
            RateLimitAction::Close => by_action.close = n,
        }
    }
    figures.tracked_keys = stats.tracked_keys as u64;
    figures.evicted = stats.evicted;
    figures.expired = stats.expired;
    figures
}

async fn connect(addr: SocketAddr, client: &str) -> Client {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-client-id", client.parse().unwrap());
    timeout(WAIT, connect_async(request))
        .await
        .expect("connect in time")
        .expect("upgrade accepted")
        .0
}

/// Message `n`, `SIZE` bytes long.
fn message(n: usize) -> WsMessage {
    WsMessage::text(format!("{n:0width$}", width = SIZE))
}

async fn send_all(client: &mut Client, messages: std::ops::Range<usize>) {
    for n in messages {
        client.feed(message(n)).await.unwrap();
    }
    client.flush().await.unwrap();
}

/// The next data or close frame.
async fn next_frame(client: &mut Client) -> WsMessage {
    loop {
        let frame = timeout(WAIT, client.next())
            .await
            .expect("frame in time")
            .expect("stream open")
            .expect("no error");
        if !matches!(frame, WsMessage::Ping(_) | WsMessage::Pong(_)) {
            return frame;
        }
    }
}

/// Closes from the client side and returns every data frame that came before the server's
/// close frame: all the replies the server queued.
async fn replies_until_closed(mut client: Client) -> Vec<WsMessage> {
    client.close(None).await.unwrap();
    let mut replies = Vec::new();
    loop {
        match timeout(WAIT, client.next()).await.expect("frame in time") {
            Some(Ok(WsMessage::Close(_))) | None => return replies,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(frame)) => replies.push(frame),
            Some(Err(tungstenite::Error::ConnectionClosed)) => return replies,
            Some(Err(err)) => panic!("read failed: {err}"),
        }
    }
}

fn is_echo_of(frame: &WsMessage, n: usize) -> bool {
    *frame == message(n)
}

fn error_frame(frame: &WsMessage) -> serde_json::Value {
    match frame {
        WsMessage::Text(text) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Another client on the same route gets every message of its own burst echoed.
async fn assert_not_limited(addr: SocketAddr, client: &str) {
    let mut quiet = connect(addr, client).await;
    send_all(&mut quiet, 0..BURST).await;
    for n in 0..BURST {
        let frame = next_frame(&mut quiet).await;
        assert!(is_echo_of(&frame, n), "{client} got {frame:?}");
    }
}

#[tokio::test]
async fn drop_answers_nothing_for_refused_messages() {
    let server = server(RateLimitAction::Drop).await;
    let mut flooder = connect(server.addr, "flooder").await;
    send_all(&mut flooder, 0..20).await;
    wait_until("15 refusals", || server.limit.stats().limited() == 15).await;

    let replies = replies_until_closed(flooder).await;
    assert_eq!(replies.len(), BURST, "{replies:?}");
    for (n, frame) in replies.iter().enumerate() {
        assert!(is_echo_of(frame, n), "{frame:?}");
    }
    assert_eq!(server.limit.stats().dropped, 15);
    assert_not_limited(server.addr, "quiet").await;
}

#[tokio::test]
async fn error_frame_answers_each_refused_message_with_its_retry_delay() {
    let server = server(RateLimitAction::ErrorFrame).await;
    let mut flooder = connect(server.addr, "flooder").await;
    send_all(&mut flooder, 0..20).await;
    for n in 0..BURST {
        let frame = next_frame(&mut flooder).await;
        assert!(is_echo_of(&frame, n), "{frame:?}");
    }
    for _ in BURST..20 {
        let json = error_frame(&next_frame(&mut flooder).await);
        assert_eq!(json["type"], "error", "{json}");
        assert_eq!(json["error"], "rate_limited", "{json}");
        // 200 bytes at 1 byte per second, less what refilled meanwhile.
        let wait = json["retry_after_ms"].as_u64().expect("a retry delay");
        assert!((190_000..=200_000).contains(&wait), "{json}");
    }
    assert_not_limited(server.addr, "quiet").await;
    assert!(replies_until_closed(flooder).await.is_empty());
}

#[tokio::test]
async fn held_refusals_read_a_flooder_no_faster_than_its_limit() {
    // 50 messages a second after a burst of five; each refusal held until the limit refills.
    // The connection's next message is read only once its call is done
    // (`message_concurrency = 1`), so after a held refusal a message has refilled and passes:
    // past the burst, refusals and echoes alternate. Refused at once, all 20 after the burst
    // would be refusals. No figure depends on how long anything took.
    let server = server_with(|config| {
        config.connection.message_concurrency = 1;
        config.rate_limit.messages_per_second = 50;
        config.rate_limit.messages_burst = BURST as u32;
        config.rate_limit.bytes_per_second = 0;
        config.rate_limit.on_limit = RateLimitAction::ErrorFrame;
        config.rate_limit.hold_refused = Duration::from_secs(1);
    })
    .await;
    let mut flooder = connect(server.addr, "flooder").await;
    send_all(&mut flooder, 0..25).await;
    for n in 0..BURST {
        let frame = next_frame(&mut flooder).await;
        assert!(is_echo_of(&frame, n), "{frame:?}");
    }
    for n in BURST..25 {
        let frame = next_frame(&mut flooder).await;
        if (n - BURST).is_multiple_of(2) {
            let json = error_frame(&frame);
            assert_eq!(json["error"], "rate_limited", "message {n}: {json}");
            let wait = json["retry_after_ms"].as_u64().expect("a retry delay");
            assert!(wait <= 20, "message {n}: {json}");
        } else {
            assert!(is_echo_of(&frame, n), "message {n}: {frame:?}");
        }
    }
    assert_eq!(server.limit.stats().limited(), 10);
    // Another client is not held behind the flooder.
    assert_not_limited(server.addr, "quiet").await;
}

#[tokio::test]
async fn close_ends_the_connection_with_1008_at_the_first_refusal() {
    let server = server(RateLimitAction::Close).await;
    let mut flooder = connect(server.addr, "flooder").await;
    // The burst's echoes are read first: a 1008 close does not wait for replies still queued
    // (it is the close of clients that do not read), so they could be cut off.
    send_all(&mut flooder, 0..BURST).await;
    for n in 0..BURST {
        let frame = next_frame(&mut flooder).await;
        assert!(is_echo_of(&frame, n), "{frame:?}");
    }
    send_all(&mut flooder, BURST..20).await;
    match next_frame(&mut flooder).await {
        WsMessage::Close(Some(close)) => {
            assert_eq!(u16::from(close.code), 1008);
            assert_eq!(close.reason.as_str(), "rate limit exceeded");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(server.limit.stats().closed, 1);
    assert_not_limited(server.addr, "quiet").await;
}

#[tokio::test]
async fn one_limit_covers_every_connection_of_a_client() {
    let server = server(RateLimitAction::ErrorFrame).await;
    let mut first = connect(server.addr, "alice").await;
    let mut second = connect(server.addr, "alice").await;
    send_all(&mut first, 0..3).await;
    for n in 0..3 {
        assert!(is_echo_of(&next_frame(&mut first).await, n));
    }
    // Two more fit in alice's burst, whichever connection they come on; the third does not.
    send_all(&mut second, 3..6).await;
    for n in 3..5 {
        assert!(is_echo_of(&next_frame(&mut second).await, n));
    }
    let json = error_frame(&next_frame(&mut second).await);
    assert_eq!(json["error"], "rate_limited", "{json}");
    // A new connection of alice's starts with nothing left either.
    let mut third = connect(server.addr, "alice").await;
    send_all(&mut third, 6..7).await;
    let json = error_frame(&next_frame(&mut third).await);
    assert_eq!(json["error"], "rate_limited", "{json}");
    assert_not_limited(server.addr, "bob").await;
    assert_eq!(server.limit.stats().limited(), 2);
}

#[tokio::test]
async fn refusals_are_rejections_in_the_metrics_and_never_open_the_breaker() {
    let server = server(RateLimitAction::ErrorFrame).await;
    let mut flooder = connect(server.addr, "flooder").await;
    send_all(&mut flooder, 0..20).await;
    for _ in 0..20 {
        next_frame(&mut flooder).await;
    }
    assert_eq!(server.breaker.state(), State::Closed);
    assert_not_limited(server.addr, "quiet").await;

    let snapshot = server.registry.snapshot();
    assert_eq!(snapshot.calls.rejected, 15, "{snapshot:?}");
    assert_eq!(snapshot.calls.error, 0, "{snapshot:?}");
    assert_eq!(snapshot.calls.ok, 10, "{snapshot:?}");
    let flooder_figures = server.registry.client("flooder").unwrap();
    assert_eq!(flooder_figures.rejections, 15);
    assert_eq!(flooder_figures.errors, 0);
    let limits = &snapshot.rate_limits;
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert_eq!(limits[0].route, "/ws");
    assert_eq!(limits[0].figures.limited.bytes.error_frame, 15);
    assert_eq!(limits[0].figures.limited.total(), 15);
    assert_eq!(limits[0].figures.tracked_keys, 2);

    server.registry.publish();
    let text = server.prometheus.render();
    for line in [
        r#"wsguard_calls_total{route="/ws",direction="in",outcome="rejected"} 15"#,
        r#"wsguard_calls_total{route="/ws",direction="in",outcome="error"} 0"#,
        r#"wsguard_rate_limited_total{route="/ws",limit="bytes",action="error_frame"} 15"#,
        r#"wsguard_rate_limited_total{route="/ws",limit="messages",action="error_frame"} 0"#,
        r#"wsguard_rate_limit_tracked_keys{route="/ws"} 2"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}
