//! Clients that attack or misbehave, over real sockets: a ping flood that never reads, frames
//! that break RFC 6455, readers too slow for what the server sends. Each must cost the server a
//! bounded amount of memory and time, and hear why it was closed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tower::service_fn;
use wsguard_axum::{BoxError, ConnectionStats, Inbound, Message, WsRoute};
use wsguard_config::{ConnectionConfig, OverflowPolicy, StabilityConfig};

mod support;

use support::raw::{self, BINARY, PING, TEXT};
use support::serve;

const WAIT: Duration = Duration::from_secs(20);

/// Echo; the text `flood N SIZE` queues N binary messages of SIZE bytes at once instead.
fn flooding_echo() -> impl tower::Service<
    Inbound,
    Response = Option<Message>,
    Error = BoxError,
    Future = impl Future<Output = Result<Option<Message>, BoxError>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|req: Inbound| async move {
        if let Some(args) = req.text().and_then(|t| t.strip_prefix("flood ")) {
            let (n, size) = args.split_once(' ').unwrap();
            let payload = bytes::Bytes::from(vec![7u8; size.parse().unwrap()]);
            for _ in 0..n.parse::<usize>().unwrap() {
                if req
                    .conn
                    .sender()
                    .send(Message::Binary(payload.clone()))
                    .is_err()
                {
                    break;
                }
            }
            return Ok(None);
        }
        Ok::<_, BoxError>(Some(req.message))
    })
}

async fn start(edit: impl FnOnce(&mut ConnectionConfig)) -> (SocketAddr, ConnectionStats) {
    let mut config = StabilityConfig::testing();
    edit(&mut config.connection);
    let route = WsRoute::new(flooding_echo(), config);
    let stats = route.stats();
    let addr = serve(Router::new().route("/ws", route.into_method_router())).await;
    (addr, stats)
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
async fn a_ping_flood_that_never_reads_is_closed_with_1008() {
    let (addr, stats) = start(|c| {
        c.max_pending_pongs = 64;
        c.close_timeout = Duration::from_secs(10);
    })
    .await;
    let mut tcp = raw::upgrade(addr, Some(4096)).await;
    let (_, mut writer) = tcp.split();

    // 125-byte pings, written in batches, never reading a pong: until the server gives up on
    // this client. Without a bound the server buffers a pong per ping for ever.
    let batch: Vec<u8> = (0..64)
        .flat_map(|_| raw::final_frame(PING, &[b'p'; 125]))
        .collect();
    let mut sent = 0usize;
    let flood = async {
        while stats.closed_slow_reader() == 0 {
            if writer.write_all(&batch).await.is_err() {
                break;
            }
            sent += 64;
        }
    };
    // Once the server stops reading, a write may block for ever: the counter is what ends it.
    let _ = timeout(WAIT, async {
        tokio::select! {
            () = flood => {}
            () = wait_until("the flood to be closed", || stats.closed_slow_reader() == 1) => {}
        }
    })
    .await;
    assert_eq!(
        stats.closed_slow_reader(),
        1,
        "the server closed the flooding client for not reading ({sent} pings sent)"
    );

    // The client reads at last: its pongs, then the close frame.
    let seen = timeout(WAIT, raw::read_until_close(&mut tcp))
        .await
        .unwrap();
    assert_eq!(seen.code, Some(1008), "{seen:?}");
    assert!(
        seen.pongs < sent,
        "pongs owed past the bound were never buffered: {} pongs for {sent} pings",
        seen.pongs
    );
    wait_until("the place to free", || stats.open() == 0).await;
}

#[tokio::test]
async fn a_client_that_pings_and_reads_is_answered_and_stays() {
    let (addr, stats) = start(|c| c.max_pending_pongs = 4).await;
    let mut tcp = raw::upgrade(addr, None).await;
    for _ in 0..200 {
        tcp.write_all(&raw::final_frame(PING, b"hi")).await.unwrap();
        let (opcode, payload) = timeout(WAIT, raw::read_frame(&mut tcp))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((opcode, payload.as_slice()), (raw::PONG, &b"hi"[..]));
    }
    tcp.write_all(&raw::final_frame(TEXT, b"still here"))
        .await
        .unwrap();
    let (opcode, payload) = timeout(WAIT, raw::read_frame(&mut tcp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((opcode, payload.as_slice()), (TEXT, &b"still here"[..]));
    assert_eq!(stats.closed_slow_reader(), 0);
}

#[tokio::test]
async fn a_client_that_drops_tcp_without_a_close_frame_is_not_a_protocol_error() {
    let (addr, stats) = start(|_| {}).await;
    let mut tcp = raw::upgrade(addr, None).await;
    tcp.write_all(&raw::final_frame(TEXT, b"hi")).await.unwrap();
    let (opcode, _) = timeout(WAIT, raw::read_frame(&mut tcp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(opcode, TEXT);
    drop(tcp);
    wait_until("the connection to end", || stats.open() == 0).await;
    assert_eq!(stats.closed_protocol_error(), 0);
}

#[tokio::test]
async fn protocol_errors_are_closed_by_the_server_with_1002_or_1007() {
    let (addr, stats) = start(|_| {}).await;
    let cases: [(&str, Vec<u8>, u16); 8] = [
        (
            "unmasked frame",
            raw::frame(0x80 | TEXT, b"hi", false),
            1002,
        ),
        (
            "reserved bit",
            raw::frame(0x80 | 0x40 | TEXT, b"hi", true),
            1002,
        ),
        ("unknown data opcode", raw::final_frame(0x3, b"hi"), 1002),
        ("unknown control opcode", raw::final_frame(0xB, b"hi"), 1002),
        (
            "control frame over 125 bytes",
            raw::final_frame(PING, &[0; 126]),
            1002,
        ),
        (
            "fragmented control frame",
            raw::frame(PING, b"hi", true),
            1002,
        ),
        (
            "continuation without a start",
            raw::final_frame(0x0, b"hi"),
            1002,
        ),
        (
            "text that is not UTF-8",
            raw::final_frame(TEXT, &[0xff, 0xfe]),
            1007,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut tcp = raw::upgrade(addr, None).await;
        tcp.write_all(&bytes).await.unwrap();
        let seen = timeout(WAIT, raw::read_until_close(&mut tcp))
            .await
            .unwrap();
        assert_eq!(
            seen.code,
            Some(code),
            "{what}: the server sends a close frame"
        );
    }
    wait_until("every close counted", || stats.closed_protocol_error() == 8).await;
}

/// Connects with a small receive buffer, asks for `n` messages of `size` bytes and reads
/// nothing until the server has given up on it.
async fn slow_reader(
    addr: SocketAddr,
    stats: &ConnectionStats,
    n: usize,
    size: usize,
) -> TcpStream {
    let mut tcp = raw::upgrade(addr, Some(4096)).await;
    let ask = format!("flood {n} {size}");
    tcp.write_all(&raw::final_frame(TEXT, ask.as_bytes()))
        .await
        .unwrap();
    wait_until("the slow reader to be closed", || {
        stats.closed_slow_reader() == 1
    })
    .await;
    tcp
}

#[tokio::test]
async fn a_slow_reader_that_reads_within_close_timeout_gets_its_1008_close_frame() {
    let (addr, stats) = start(|c| {
        c.overflow = OverflowPolicy::Close;
        c.send_queue_bytes = 64 * 1024;
        c.send_queue_capacity = 1024;
        c.close_timeout = Duration::from_secs(10);
    })
    .await;
    // 32 MiB asked for: far more than the queue and the kernel's buffers hold.
    let mut tcp = slow_reader(addr, &stats, 2048, 16 * 1024).await;
    // It starts reading well after the close was decided (a fixed 2 s wait used to lose the
    // frame); a real pause, since the server's timer runs on a real socket.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = timeout(WAIT, raw::read_until_close(&mut tcp))
        .await
        .unwrap();
    assert_eq!(seen.code, Some(1008), "{seen:?}");
    assert!(seen.data < 2048, "the overflowing messages were not sent");
    assert_eq!(stats.close_timeouts(), 0);
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_after_close_timeout_and_counted() {
    let (addr, stats) = start(|c| {
        c.overflow = OverflowPolicy::Close;
        c.send_queue_bytes = 64 * 1024;
        c.send_queue_capacity = 1024;
        c.close_timeout = Duration::from_millis(300);
    })
    .await;
    let _tcp = slow_reader(addr, &stats, 2048, 16 * 1024).await;
    let closed_at = Instant::now();
    wait_until("the close to time out", || stats.close_timeouts() == 1).await;
    wait_until("the place to free", || stats.open() == 0).await;
    assert!(
        closed_at.elapsed() < Duration::from_secs(5),
        "the connection went within about close_timeout"
    );
}

#[tokio::test]
async fn the_send_queue_is_bounded_in_bytes_and_drops_are_counted() {
    let (addr, stats) = start(|c| {
        c.overflow = OverflowPolicy::DropNewest;
        c.send_queue_capacity = 100_000;
        c.send_queue_bytes = 64 * 1024;
    })
    .await;
    // 8 clients ask for 64 MiB each and never read. Bounded by messages alone (100,000 here),
    // every queue would hold all of it.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut tcp = raw::upgrade(addr, Some(4096)).await;
        tcp.write_all(&raw::final_frame(TEXT, b"flood 1024 65536"))
            .await
            .unwrap();
        clients.push(tcp);
    }
    // Each queue holds at most 64 KiB (one message); the rest of each flood is dropped.
    wait_until("the floods to be dropped", || {
        stats.send_dropped() >= 8 * (1024 - 200)
    })
    .await;
    assert_eq!(stats.open(), 8, "drop_newest keeps the connections");
    // A client that reads gets the start of its flood, then an echo: the connection works.
    let mut tcp = clients.pop().unwrap();
    tcp.write_all(&raw::final_frame(TEXT, b"marker"))
        .await
        .unwrap();
    let mut binaries = 0;
    loop {
        let (opcode, payload) = timeout(WAIT, raw::read_frame(&mut tcp))
            .await
            .unwrap()
            .unwrap();
        if opcode == TEXT {
            assert_eq!(payload, b"marker");
            break;
        }
        assert_eq!(opcode, BINARY);
        binaries += 1;
    }
    assert!(binaries < 1024, "{binaries} of 1024 delivered");
}
