//! Upgrade admission over real sockets: open connections per client
//! (`connection.max_connections_per_client`, `429`), and new connections per IP per second
//! (`RateLimitLayer::http` on the route, keyed by the peer address `serve` gives requests).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use futures_util::SinkExt;
use tokio::time::timeout;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tower::service_fn;
use wsguard_axum::{BoxError, Inbound, WsRoute};
use wsguard_config::{ClientIdSource, RateLimitConfig, RateLimitScope, StabilityConfig};
use wsguard_rate_limit::RateLimitLayer;

const WAIT: Duration = Duration::from_secs(10);

fn echo() -> impl tower::Service<
    Inbound,
    Response = Option<wsguard_axum::Message>,
    Error = BoxError,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|req: Inbound| async move { Ok::<_, BoxError>(Some(req.message)) })
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { wsguard_axum::serve(listener, app).await });
    addr
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Upgrades as `client`; the socket, or the refusal's status and `Retry-After`.
async fn upgrade(addr: SocketAddr, client: &str) -> Result<Socket, (u16, Option<String>)> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-client", HeaderValue::from_str(client).unwrap());
    match timeout(WAIT, connect_async(request)).await.unwrap() {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err((
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        )),
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

#[tokio::test]
async fn a_client_past_its_open_connections_gets_429_and_others_are_not_affected() {
    let mut config = StabilityConfig::testing();
    config.connection.client_id = ClientIdSource::Header;
    config.connection.client_id_key = "x-client".into();
    config.connection.max_connections_per_client = 2;
    let route = WsRoute::new(echo(), config);
    let stats = route.stats();
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;

    let mut first = upgrade(addr, "alice").await.unwrap();
    let _second = upgrade(addr, "alice").await.unwrap();
    assert_eq!(
        upgrade(addr, "alice").await.err(),
        Some((429, Some("1".to_owned())))
    );
    let _bob = upgrade(addr, "bob")
        .await
        .expect("another client is not limited");
    assert_eq!(stats.refused(), 1);

    // A closed connection gives its place back.
    first.send(WsMessage::Close(None)).await.unwrap();
    drop(first);
    let deadline = Instant::now() + WAIT;
    while stats.open() > 2 {
        assert!(
            Instant::now() < deadline,
            "the closed connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upgrade(addr, "alice")
        .await
        .expect("a place came back when a connection closed");
}

#[tokio::test]
async fn new_connections_per_ip_are_limited_by_a_rate_limit_layer_on_the_route() {
    let mut limit = RateLimitConfig::testing();
    limit.enabled = true;
    limit.scope = RateLimitScope::Client;
    limit.messages_per_second = 1;
    limit.messages_burst = 3;
    limit.bytes_per_second = 0;
    let route = WsRoute::new(echo(), StabilityConfig::testing());
    let app = Router::new().route(
        "/ws",
        route
            .into_method_router()
            .layer(RateLimitLayer::http(limit)),
    );
    let addr = serve(app).await;

    let started = Instant::now();
    let mut accepted = 0;
    let mut refused = 0;
    let mut sockets = Vec::new();
    for _ in 0..10 {
        match upgrade(addr, "any").await {
            Ok(socket) => {
                accepted += 1;
                sockets.push(socket);
            }
            Err((status, retry_after)) => {
                assert_eq!(status, 429);
                assert!(retry_after.is_some(), "a refusal says when to come back");
                refused += 1;
            }
        }
    }
    // The burst, plus one per second elapsed.
    let allowed = 3 + started.elapsed().as_secs() as usize + 1;
    assert!(accepted >= 3, "the burst passes: {accepted}");
    assert!(
        accepted <= allowed,
        "{accepted} upgrades accepted, at most {allowed} allowed"
    );
    assert_eq!(accepted + refused, 10);

    // Another address has its own limit.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .unwrap()
        .expect("an upgrade from another address is not limited by this one's");
}
