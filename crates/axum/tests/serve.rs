//! `wsguard_axum::serve` over real sockets: header-read timeout, the bound on connections that
//! have not sent their request head, peer addresses, graceful shutdown.
//!
//! The tests run on a current-thread runtime, so that once a client sees a socket closed, the
//! server task that closed it has also finished updating its counters.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower::service_fn;
use wsguard_axum::{BoxError, Inbound, Message, Serve, ServeStats, serve, ws_route};
use wsguard_config::StabilityConfig;

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);
const HALF_HEAD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgra";

/// Echoes text messages; the text `who` is answered with the connection's client id and peer
/// address.
fn app() -> Router {
    let service = service_fn(|req: Inbound| async move {
        if req.text() == Some("who") {
            let peer = req.conn.peer_addr().map(|addr| addr.to_string());
            let reply = format!("{} {}", req.conn.client_id(), peer.unwrap_or_default());
            return Ok::<_, BoxError>(Some(Message::text(reply)));
        }
        Ok(Some(req.message))
    });
    Router::new()
        .route("/ws", ws_route(service, StabilityConfig::testing()))
        .route("/health", get(|| async { "ok" }))
}

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

struct Running {
    addr: SocketAddr,
    stats: ServeStats,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn start(server: Serve<Router>) -> Running {
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = server.with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    let stats = server.stats();
    let task = tokio::spawn(server.into_future());
    Running {
        addr,
        stats,
        stop,
        task,
    }
}

/// Reads until the server closes the connection; returns what it sent. A reset counts as closed.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    match timeout(WAIT, stream.read_to_end(&mut received)).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(err)) => panic!("read failed: {err}"),
        Err(_) => panic!("server did not close the connection within {WAIT:?}"),
    }
    received
}

/// True if the connection is open with nothing to read: the server has not closed it.
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0; 64];
    matches!(stream.try_read(&mut buf), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

async fn connect(addr: SocketAddr) -> Client {
    timeout(WAIT, connect_async(format!("ws://{addr}/ws")))
        .await
        .expect("connect in time")
        .expect("upgrade accepted")
        .0
}

async fn echo(client: &mut Client, text: &str) -> String {
    client.send(WsMessage::text(text)).await.unwrap();
    loop {
        let frame = timeout(WAIT, client.next())
            .await
            .expect("reply in time")
            .expect("stream open")
            .expect("no error");
        if let WsMessage::Text(reply) = frame {
            return reply.to_string();
        }
    }
}

#[tokio::test]
async fn half_sent_request_head_is_closed_after_header_read_timeout() {
    let header_read_timeout = Duration::from_millis(200);
    let server = start(serve(listen().await, app()).header_read_timeout(header_read_timeout));

    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(HALF_HEAD).await.unwrap();
    let received = read_until_closed(&mut stream).await;
    let elapsed = started.elapsed();

    assert!(
        elapsed >= header_read_timeout,
        "closed after {elapsed:?}, before the timeout"
    );
    assert!(
        received.is_empty(),
        "hyper closes without a response, got {:?}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(server.stats.header_timeouts(), 1);
    assert_eq!(server.stats.pending_handshakes(), 0);
    assert_eq!(server.stats.connections(), 0);
}

#[tokio::test]
async fn silent_connection_is_closed_after_header_read_timeout() {
    let header_read_timeout = Duration::from_millis(200);
    let server = start(serve(listen().await, app()).header_read_timeout(header_read_timeout));

    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let received = read_until_closed(&mut stream).await;

    assert!(started.elapsed() >= header_read_timeout);
    assert!(received.is_empty());
    assert_eq!(server.stats.header_timeouts(), 1);
}

#[tokio::test]
async fn connections_past_max_pending_handshakes_are_closed_at_once_and_counted() {
    let header_read_timeout = Duration::from_secs(2);
    let server = start(
        serve(listen().await, app())
            .header_read_timeout(header_read_timeout)
            .max_pending_handshakes(8),
    );

    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(HALF_HEAD).await.unwrap();
        held.push(stream);
    }
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let refused_at = Instant::now();
        assert!(read_until_closed(&mut stream).await.is_empty());
        assert!(
            refused_at.elapsed() < header_read_timeout / 4,
            "refused after {:?}, not at once",
            refused_at.elapsed()
        );
    }
    // A real client is refused too while the places are taken.
    assert!(
        timeout(WAIT, connect_async(format!("ws://{}/ws", server.addr)))
            .await
            .expect("refused in time")
            .is_err()
    );

    assert!(
        started.elapsed() < header_read_timeout,
        "test too slow to tell"
    );
    assert!(held.iter().all(still_open), "held connections were closed");
    assert_eq!(server.stats.pending_handshakes(), 8);
    assert_eq!(server.stats.refused(), 5);
    assert_eq!(server.stats.accepted(), 13);

    for stream in &mut held {
        read_until_closed(stream).await;
    }
    assert!(started.elapsed() >= header_read_timeout);
    assert_eq!(server.stats.header_timeouts(), 8);
    assert_eq!(server.stats.pending_handshakes(), 0);

    let mut client = connect(server.addr).await;
    assert_eq!(echo(&mut client, "hello").await, "hello");
    assert_eq!(server.stats.refused(), 5);
}

#[tokio::test]
async fn pending_place_is_freed_when_the_first_request_arrives() {
    let server = start(serve(listen().await, app()).max_pending_handshakes(1));

    // A keep-alive connection stays open after its response, past its first request.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\nok") {
        let mut buf = [0; 512];
        let n = timeout(WAIT, kept.read(&mut buf)).await.unwrap().unwrap();
        assert_ne!(
            n,
            0,
            "closed after {:?}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"));
    assert!(still_open(&kept));
    assert_eq!(server.stats.connections(), 1);
    assert_eq!(server.stats.pending_handshakes(), 0);

    let mut client = connect(server.addr).await;
    assert_eq!(echo(&mut client, "hello").await, "hello");
    assert_eq!(server.stats.refused(), 0);
}

#[tokio::test]
async fn websocket_echo_through_serve_sees_the_peer_address() {
    let server = start(serve(listen().await, app()));

    let mut client = connect(server.addr).await;
    let local = match client.get_ref() {
        MaybeTlsStream::Plain(stream) => stream.local_addr().unwrap(),
        _ => unreachable!("plain ws:// connection"),
    };
    assert_eq!(echo(&mut client, "hello").await, "hello");
    assert_eq!(
        echo(&mut client, "who").await,
        format!("{} {local}", local.ip())
    );
    assert_eq!(server.stats.accepted(), 1);
    assert_eq!(server.stats.pending_handshakes(), 0);
}

#[tokio::test]
async fn shutdown_drains_websockets_then_stops_accepting_and_ends_by_its_deadline() {
    let shutdown_timeout = Duration::from_millis(300);
    let server = start(
        serve(listen().await, app())
            .header_read_timeout(Duration::from_secs(30))
            .shutdown_timeout(shutdown_timeout),
    );
    let mut client = connect(server.addr).await;
    let mut half_sent = TcpStream::connect(server.addr).await.unwrap();
    half_sent.write_all(HALF_HEAD).await.unwrap();
    assert_eq!(echo(&mut client, "before").await, "before");
    assert_eq!(
        server.stats.connections(),
        1,
        "the half-sent request is being served"
    );

    let stopping = Instant::now();
    server.stop.send(()).unwrap();
    // The WebSocket is drained first: a close frame with 1001, answered by reading on.
    let close = loop {
        match timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
    while let Some(Ok(_)) = timeout(WAIT, client.next()).await.unwrap() {}

    timeout(WAIT, server.task)
        .await
        .expect("shutdown within its deadline")
        .unwrap();
    let took = stopping.elapsed();
    assert!(
        took >= shutdown_timeout,
        "returned after {took:?}, before the half-sent request's deadline"
    );

    read_until_closed(&mut half_sent).await;
    assert_eq!(server.stats.connections(), 0);
    assert!(TcpStream::connect(server.addr).await.is_err());
}
