//! A graceful shutdown of `wsguard_axum::serve` drains its WebSockets, over real sockets: calls in
//! flight finish, every client gets `1001` with a reconnect delay, upgrades meanwhile get `503`,
//! and the shutdown never waits past its drain timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower::service_fn;
use wsguard_axum::{BoxError, Drain, Inbound, serve, ws_route};
use wsguard_config::StabilityConfig;

type Client = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// Calls of `sleep N` started, in this test binary.
static SLEEPING: AtomicUsize = AtomicUsize::new(0);

/// Echo; `sleep N` answers after N ms.
fn app() -> Router {
    let echo = service_fn(|req: Inbound| async move {
        if let Some(ms) = req.text().and_then(|t| t.strip_prefix("sleep ")) {
            SLEEPING.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        }
        Ok::<_, BoxError>(Some(req.message))
    });
    Router::new().route("/ws", ws_route(echo, StabilityConfig::testing()))
}

struct Running {
    addr: std::net::SocketAddr,
    drain: Drain,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(drain_timeout: Duration) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = serve(listener, app())
        .drain_timeout(drain_timeout)
        .shutdown_timeout(Duration::from_millis(500))
        .reconnect_window(Duration::from_secs(2))
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        });
    let drain = server.drain();
    let done = tokio::spawn(server.into_future());
    Running {
        addr,
        drain,
        stop,
        done,
    }
}

async fn connect(addr: std::net::SocketAddr) -> Client {
    timeout(WAIT, connect_async(format!("ws://{addr}/ws")))
        .await
        .unwrap()
        .unwrap()
        .0
}

async fn next_frame(client: &mut Client) -> WsMessage {
    loop {
        match timeout(WAIT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            frame => return frame,
        }
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

#[tokio::test]
async fn shutdown_drains_websockets_with_1001_and_a_reconnect_delay_and_refuses_upgrades() {
    let server = start(Duration::from_secs(5)).await;
    let mut busy = connect(server.addr).await;
    let mut idle = [connect(server.addr).await, connect(server.addr).await];
    wait_until("three connections", || server.drain.open_connections() == 3).await;
    let sleeping = SLEEPING.load(Ordering::SeqCst);
    busy.send(WsMessage::text("sleep 400")).await.unwrap();
    wait_until("the call in flight", || {
        SLEEPING.load(Ordering::SeqCst) > sleeping
    })
    .await;

    server.stop.send(()).unwrap();
    wait_until("the drain to start", || server.drain.is_draining()).await;
    // While the busy call finishes, the server still answers, but refuses upgrades.
    match connect_async(format!("ws://{}/ws", server.addr)).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503 during the drain, got {other:?}"),
    }

    // The call in flight finishes and its reply goes out before the close.
    assert_eq!(
        next_frame(&mut busy).await.into_text().unwrap(),
        "sleep 400"
    );
    for client in std::iter::once(&mut busy).chain(idle.iter_mut()) {
        let WsMessage::Close(Some(frame)) = next_frame(client).await else {
            panic!("expected a close frame");
        };
        assert_eq!(u16::from(frame.code), 1001);
        assert!(frame.reason.contains("reconnect in"), "{}", frame.reason);
        // Reading on sends tungstenite's answer to the close, completing the handshake.
        timeout(WAIT, async {
            while let Some(Ok(_)) = client.next().await {}
        })
        .await
        .unwrap();
    }
    timeout(WAIT, server.done).await.unwrap().unwrap();
    assert_eq!(server.drain.open_connections(), 0);
}

#[tokio::test]
async fn shutdown_never_waits_past_the_drain_timeout() {
    let server = start(Duration::from_millis(300)).await;
    let mut stuck = connect(server.addr).await;
    // A call that never ends keeps its connection from closing.
    let sleeping = SLEEPING.load(Ordering::SeqCst);
    stuck.send(WsMessage::text("sleep 1000000")).await.unwrap();
    wait_until("the call in flight", || {
        SLEEPING.load(Ordering::SeqCst) > sleeping
    })
    .await;

    let stopping = Instant::now();
    server.stop.send(()).unwrap();
    timeout(WAIT, server.done).await.unwrap().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "stopped after {:?}",
        stopping.elapsed()
    );
    assert_eq!(
        server.drain.open_connections(),
        1,
        "reported, not waited for"
    );
}
