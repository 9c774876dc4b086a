//! The adapter over real sockets: ordering, limits, closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower::service_fn;
use wsguard_axum::{BoxError, ConnectionStats, Inbound, Message, WsRoute, ws_route};
use wsguard_config::{ConnectionConfig, StabilityConfig};

mod support;

use support::{raw, serve};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(addr: SocketAddr) -> Client {
    timeout(WAIT, connect_async(format!("ws://{addr}/ws")))
        .await
        .expect("connect in time")
        .expect("upgrade accepted")
        .0
}

fn config(edit: impl FnOnce(&mut ConnectionConfig)) -> StabilityConfig {
    let mut config = StabilityConfig::testing();
    edit(&mut config.connection);
    config
}

/// Echo service: text "panic" panics; text "sleep N" waits N ms then echoes.
fn echo() -> impl tower::Service<
    Inbound,
    Response = Option<Message>,
    Error = BoxError,
    Future = impl Future<Output = Result<Option<Message>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|req: Inbound| async move {
        if let Some(text) = req.text() {
            if text == "panic" {
                panic!("handler asked to panic");
            }
            if let Some(ms) = text.strip_prefix("sleep ") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
        }
        Ok::<_, BoxError>(Some(req.message))
    })
}

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

async fn close_code(client: &mut Client) -> u16 {
    match next_frame(client).await {
        WsMessage::Close(Some(frame)) => frame.code.into(),
        other => panic!("expected a close frame, got {other:?}"),
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

/// Sends 8 messages whose handling takes less time the later they come; checks the replies
/// come in order; returns the most handled at once.
async fn most_at_once(concurrency: usize) -> usize {
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (run, max) = (running.clone(), most.clone());
    let service = service_fn(move |req: Inbound| {
        let now = run.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(now, Ordering::SeqCst);
        let run = run.clone();
        async move {
            // Later messages finish first.
            let ms: u64 = req.text().unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            run.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(Some(req.message))
        }
    });
    let config = config(|c| c.message_concurrency = concurrency);
    let addr = serve(Router::new().route("/ws", ws_route(service, config))).await;
    let mut client = connect(addr).await;
    let sent: Vec<String> = (0..8).map(|i| (80 - i * 10).to_string()).collect();
    for text in &sent {
        client.send(WsMessage::text(text.as_str())).await.unwrap();
    }
    for text in &sent {
        assert_eq!(
            next_frame(&mut client).await.into_text().unwrap(),
            text.as_str()
        );
    }
    most.load(Ordering::SeqCst)
}

#[tokio::test]
async fn messages_of_a_connection_run_one_at_a_time_by_default() {
    assert_eq!(most_at_once(1).await, 1);
}

#[tokio::test]
async fn replies_keep_message_order_with_concurrency() {
    let most = most_at_once(4).await;
    assert!(most > 1, "messages never overlapped");
    assert!(most <= 4, "{most} messages ran at once, limit 4");
}

#[tokio::test]
async fn control_frames_never_reach_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = service_fn(move |req: Inbound| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(Some(req.message)) }
    });
    let addr =
        serve(Router::new().route("/ws", ws_route(service, StabilityConfig::testing()))).await;
    let mut client = connect(addr).await;
    client
        .send(WsMessage::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    client
        .send(WsMessage::binary(b"data".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut client).await,
        WsMessage::binary(b"data".to_vec())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let config = config(|c| c.max_message_size = 1024);
    let addr = serve(Router::new().route("/ws", ws_route(echo(), config))).await;
    let mut client = connect(addr).await;
    client.send(WsMessage::text("small")).await.unwrap();
    assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "small");
    client
        .send(WsMessage::text("x".repeat(2048)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut client).await, 1009);
}

#[tokio::test]
async fn panic_closes_only_that_connection_with_1011() {
    let addr =
        serve(Router::new().route("/ws", ws_route(echo(), StabilityConfig::testing()))).await;
    let mut bystander = connect(addr).await;
    let mut victim = connect(addr).await;
    victim.send(WsMessage::text("panic")).await.unwrap();
    assert_eq!(close_code(&mut victim).await, 1011);
    bystander.send(WsMessage::text("still here")).await.unwrap();
    assert_eq!(
        next_frame(&mut bystander).await.into_text().unwrap(),
        "still here"
    );
    let mut newcomer = connect(addr).await;
    newcomer.send(WsMessage::text("hello")).await.unwrap();
    assert_eq!(
        next_frame(&mut newcomer).await.into_text().unwrap(),
        "hello"
    );
}

#[tokio::test]
async fn upgrades_past_max_connections_get_503_and_places_free_on_close() {
    let route = WsRoute::new(echo(), config(|c| c.max_connections = 2));
    let stats: ConnectionStats = route.stats();
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;
    let first = connect(addr).await;
    let _second = connect(addr).await;
    match connect_async(format!("ws://{addr}/ws")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!((stats.open(), stats.accepted(), stats.refused()), (2, 2, 1));
    drop(first);
    wait_until("a place to free", || stats.open() == 1).await;
    let _third = connect(addr).await;
}

#[tokio::test]
async fn silent_peer_is_pinged_then_closed_after_idle_timeout_while_a_live_one_stays() {
    let config = config(|c| {
        c.idle_timeout = Duration::from_millis(400);
        c.ping_interval = Duration::from_millis(100);
    });
    let route = WsRoute::new(echo(), config);
    let stats = route.stats();
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;
    let mut silent = raw::upgrade(addr, None).await;
    let mut live = connect(addr).await;
    // The live client keeps reading, so tungstenite answers the server's pings.
    let live_reader = tokio::spawn(async move {
        let listen = async {
            while let Some(frame) = live.next().await {
                match frame {
                    Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => {}
                    other => return other,
                }
            }
            panic!("live client's stream ended");
        };
        let outcome = timeout(Duration::from_millis(1500), listen).await;
        (outcome.is_err(), live)
    });
    let seen = timeout(WAIT, raw::read_until_close(&mut silent))
        .await
        .unwrap();
    assert_eq!(seen.code, Some(1001));
    assert!(
        seen.pings >= 2,
        "pinged {} times before closing",
        seen.pings
    );
    let (still_open, _live) = live_reader.await.unwrap();
    assert!(still_open, "the live client was closed");
    wait_until("the silent peer's place to free", || stats.open() == 1).await;
}

#[tokio::test]
async fn metrics_layer_registers_the_connection_and_forgets_the_client_on_close() {
    use tower::ServiceBuilder;
    use wsguard_axum::MessageClassifier;
    use wsguard_metrics::{MetricsLayer, MetricsRegistry};

    let config = StabilityConfig::testing();
    let registry = MetricsRegistry::new(config.metrics.clone());
    let stack = ServiceBuilder::new()
        .layer(MetricsLayer::new(registry.clone()).classifier(MessageClassifier))
        .service(echo());
    let route = WsRoute::new(stack, config).metrics(registry.clone());
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;
    let mut client = connect(addr).await;
    wait_until("the idle connection to register", || {
        registry.active_connections() == 1
    })
    .await;
    client.send(WsMessage::text("hello")).await.unwrap();
    assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "hello");
    assert_eq!(registry.active_connections(), 1);
    let seen = registry.client("127.0.0.1").expect("client registered");
    assert_eq!(seen.messages_in, 1);

    client.close(None).await.unwrap();
    wait_until("the client's state to go", || registry.client_count() == 0).await;
    assert_eq!(registry.active_connections(), 0);
    assert_eq!(registry.snapshot().calls.ok, 1);
}

#[tokio::test]
async fn breaker_rejection_is_an_error_frame_or_a_1013_close() {
    use tower::ServiceBuilder;
    use wsguard_axum::MessageClassifier;
    use wsguard_circuit_breaker::CircuitBreakerLayer;
    use wsguard_config::RejectionAction;

    for action in [RejectionAction::ErrorFrame, RejectionAction::Close] {
        let config = config(|c| c.on_rejection = action);
        let breaker =
            CircuitBreakerLayer::new(config.circuit_breaker.clone()).classifier(MessageClassifier);
        let handle = breaker.handle();
        let stack = ServiceBuilder::new().layer(breaker).service(echo());
        let addr = serve(Router::new().route("/ws", ws_route(stack, config))).await;
        let mut client = connect(addr).await;
        handle.force_open();
        client.send(WsMessage::text("hello")).await.unwrap();
        match action {
            RejectionAction::ErrorFrame => {
                let frame = next_frame(&mut client).await.into_text().unwrap();
                let json: serde_json::Value = serde_json::from_str(&frame).unwrap();
                assert_eq!(json["error"], "circuit_open", "{frame}");
                handle.reset();
                client.send(WsMessage::text("again")).await.unwrap();
                assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "again");
            }
            RejectionAction::Close => assert_eq!(close_code(&mut client).await, 1013),
        }
    }
}

#[tokio::test]
async fn duplicate_is_dropped_or_acknowledged_per_config() {
    use tower::ServiceBuilder;
    use wsguard_config::DuplicateAction;
    use wsguard_dedup::DedupLayer;

    for action in [DuplicateAction::Drop, DuplicateAction::Ack] {
        let mut config = StabilityConfig::testing();
        config.dedup.ttl = Duration::from_secs(60);
        config.dedup.on_duplicate = action;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let handler = service_fn(move |req: Inbound| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, BoxError>(Some(req.message)) }
        });
        let stack = ServiceBuilder::new()
            .layer(DedupLayer::new(config.dedup.clone()))
            .service(handler);
        let addr = serve(Router::new().route("/ws", ws_route(stack, config))).await;
        let mut client = connect(addr).await;
        client
            .send(WsMessage::text(r#"{"a":1,"b":2}"#))
            .await
            .unwrap();
        client
            .send(WsMessage::text(r#"{ "b": 2, "a": 1 }"#))
            .await
            .unwrap();
        client.send(WsMessage::text("marker")).await.unwrap();
        assert_eq!(
            next_frame(&mut client).await.into_text().unwrap(),
            r#"{"a":1,"b":2}"#
        );
        if action == DuplicateAction::Ack {
            let ack = next_frame(&mut client).await.into_text().unwrap();
            let json: serde_json::Value = serde_json::from_str(&ack).unwrap();
            assert_eq!(json["type"], "duplicate", "{ack}");
        }
        assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "marker");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}

/// A dedup store whose every claim fails, as a Redis that cannot be reached.
#[derive(Debug)]
struct DownStore;

impl wsguard_dedup::DedupStore for DownStore {
    fn claim(&self, _: wsguard_dedup::Fingerprint, _: Duration) -> wsguard_dedup::ClaimFuture {
        wsguard_dedup::ClaimFuture::boxed(async {
            Err(wsguard_dedup::error::StoreError::new("store down"))
        })
    }
    fn release(&self, _: wsguard_dedup::Fingerprint) {}
}

#[tokio::test]
async fn a_fail_closed_dedup_rejection_tells_the_client_unavailable() {
    use tower::ServiceBuilder;
    use wsguard_config::FailureMode;
    use wsguard_dedup::DedupLayer;

    let mut config = StabilityConfig::testing();
    config.dedup.store.redis.on_error = FailureMode::FailClosed;
    let registry = wsguard_metrics::MetricsRegistry::new(config.metrics.clone());
    let stack = ServiceBuilder::new()
        .layer(
            wsguard_metrics::MetricsLayer::new(registry.clone())
                .classifier(wsguard_axum::MessageClassifier),
        )
        .layer(DedupLayer::new(config.dedup.clone()).store(DownStore))
        .service(echo());
    let addr = serve(Router::new().route("/ws", ws_route(stack, config))).await;
    let mut client = connect(addr).await;
    client.send(WsMessage::text("hello")).await.unwrap();
    let reply = next_frame(&mut client).await.into_text().unwrap();
    let json: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(json["type"], "error", "{reply}");
    assert_eq!(json["error"], "unavailable", "{reply}");
    // The connection stays open for the next message.
    client.send(WsMessage::text("again")).await.unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(
            &next_frame(&mut client).await.into_text().unwrap()
        )
        .unwrap()["error"],
        "unavailable"
    );
    // The metrics count them as rejections, not handler errors.
    let calls = registry.snapshot().calls;
    assert_eq!((calls.rejected, calls.error), (2, 0));
}

#[tokio::test]
async fn dedup_layer_on_the_sending_side_suppresses_re_sends() {
    use tower::{ServiceBuilder, ServiceExt};
    use wsguard_axum::{OutgoingMessage, SendToConnection};
    use wsguard_dedup::DedupLayer;

    let config = StabilityConfig::testing();
    let send = ServiceBuilder::new()
        .layer(DedupLayer::new(config.dedup.clone()))
        .service(SendToConnection);
    let handler = service_fn(move |req: Inbound| {
        let send = send.clone();
        async move {
            // Every message is pushed three times; the client must hear it once.
            for _ in 0..3 {
                let outgoing = OutgoingMessage::new(req.message.clone(), req.conn.clone());
                let _ = send.clone().oneshot(outgoing).await;
            }
            Ok::<_, BoxError>(None)
        }
    });
    let addr = serve(Router::new().route("/ws", ws_route(handler, config))).await;
    let mut client = connect(addr).await;
    client.send(WsMessage::text("one")).await.unwrap();
    client.send(WsMessage::text("two")).await.unwrap();
    assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "one");
    assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "two");
}

#[tokio::test]
async fn a_live_config_changes_the_connection_limit_without_a_restart() {
    let handle = wsguard_config::ConfigHandle::new(StabilityConfig::testing()).unwrap();
    let route = WsRoute::new(echo(), &handle);
    let stats = route.stats();
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;
    let _first = connect(addr).await;
    let _second = connect(addr).await;

    let mut tighter = StabilityConfig::testing();
    tighter.connection.max_connections = 2;
    handle.update(tighter).unwrap();
    match connect_async(format!("ws://{addr}/ws")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!(stats.refused(), 1);

    handle.update(StabilityConfig::testing()).unwrap();
    let mut third = connect(addr).await;
    third.send(WsMessage::text("in")).await.unwrap();
    assert_eq!(next_frame(&mut third).await.into_text().unwrap(), "in");
}

/// Echoes; after the message "arm", its next `poll_ready` panics.
#[derive(Clone, Default)]
struct PanicsWhenArmed(Arc<std::sync::atomic::AtomicBool>);

impl tower::Service<Inbound> for PanicsWhenArmed {
    type Response = Option<Message>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Option<Message>, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        assert!(!self.0.load(Ordering::SeqCst), "poll_ready asked to panic");
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Inbound) -> Self::Future {
        if req.text() == Some("arm") {
            self.0.store(true, Ordering::SeqCst);
        }
        std::future::ready(Ok(Some(req.message)))
    }
}

#[tokio::test]
async fn panic_in_poll_ready_closes_that_connection_with_1011() {
    let service = PanicsWhenArmed::default();
    let route = WsRoute::new(service, StabilityConfig::testing());
    let stats = route.stats();
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;
    let mut client = connect(addr).await;
    client.send(WsMessage::text("arm")).await.unwrap();
    assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "arm");
    client.send(WsMessage::text("boom")).await.unwrap();
    assert_eq!(close_code(&mut client).await, 1011);
    wait_until("the connection's place to free", || stats.open() == 0).await;
}

#[tokio::test]
async fn messages_queued_by_another_task_reach_an_idle_connection_before_its_close() {
    let held: Arc<std::sync::Mutex<Option<wsguard_axum::Sender>>> = Arc::default();
    let hold = held.clone();
    let service = service_fn(move |req: Inbound| {
        *hold.lock().unwrap() = Some(req.sender().clone());
        async move { Ok::<_, BoxError>(Some(Message::text("joined"))) }
    });
    // No heartbeat for a long while: only the sends themselves can wake the connection.
    let config = config(|c| {
        c.ping_interval = Duration::from_secs(60);
        c.idle_timeout = Duration::from_secs(120);
    });
    let addr = serve(Router::new().route("/ws", ws_route(service, config))).await;
    let mut client = connect(addr).await;
    client.send(WsMessage::text("join")).await.unwrap();
    assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "joined");

    // The connection now waits for frames; this task sends to it.
    let sender = held
        .lock()
        .unwrap()
        .take()
        .expect("the handler kept the sender");
    for text in ["one", "two", "three"] {
        sender.send(text).unwrap();
    }
    for text in ["one", "two", "three"] {
        assert_eq!(next_frame(&mut client).await.into_text().unwrap(), text);
    }
    sender.send("last").unwrap();
    sender.close(4000, "bye");
    assert_eq!(next_frame(&mut client).await.into_text().unwrap(), "last");
    assert_eq!(close_code(&mut client).await, 4000);
}
