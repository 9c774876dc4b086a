//! 64 connections x 1000 messages through the `echo` example, 10% of them duplicates.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsguard::config::{ConfigHandle, OverflowPolicy, StabilityConfig};
use wsguard_examples::echo;
use wsguard_tests::{WAIT, connect, http_get, serve, wait_until};

const CONNECTIONS: usize = 64;
const MESSAGES: usize = 1000;

/// Message `seq` of connection `conn`: unique JSON, or every tenth one a re-serialisation of an
/// earlier message (keys reordered, extra whitespace), which must count as the same message.
fn message(conn: usize, seq: usize) -> (String, bool) {
    if seq % 10 == 9 {
        let of = seq - 5;
        let text =
            format!("{{ \"body\" : \"payload {of}\",\n  \"seq\": {of},   \"conn\" : {conn} }}");
        (text, true)
    } else {
        (
            format!(r#"{{"conn":{conn},"seq":{seq},"body":"payload {seq}"}}"#),
            false,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unique_message_is_handled_once_and_every_duplicate_dropped() {
    let mut config = StabilityConfig::development();
    config.dedup.ttl = Duration::from_secs(600);
    // Clients read while they write; a queue that still overflowed would close with 1008 and
    // fail the test, never drop replies silently.
    config.connection.send_queue_capacity = 1024;
    config.connection.overflow = OverflowPolicy::Close;
    let config = ConfigHandle::new(config).unwrap();
    let app = echo::app(&config, None);
    let addr = serve(app.router.clone()).await;

    let started = tokio::time::Instant::now();
    let clients = (0..CONNECTIONS).map(|conn| {
        tokio::spawn(async move {
            let client = connect(addr, "/ws").await;
            let (mut tx, mut rx) = client.split();
            let writer = tokio::spawn(async move {
                for seq in 0..MESSAGES {
                    tx.feed(WsMessage::text(message(conn, seq).0))
                        .await
                        .unwrap();
                }
                tx.send(WsMessage::text(format!("end {conn}")))
                    .await
                    .unwrap();
                tx
            });
            let expected: Vec<String> = (0..MESSAGES)
                .map(|seq| message(conn, seq))
                .filter(|(_, duplicate)| !duplicate)
                .map(|(text, _)| text)
                .collect();
            let mut echoed = Vec::with_capacity(expected.len());
            loop {
                let frame = tokio::time::timeout(WAIT, rx.next())
                    .await
                    .expect("echo in time")
                    .expect("open")
                    .expect("no error");
                match frame {
                    WsMessage::Text(text) if text.as_str() == format!("end {conn}") => break,
                    WsMessage::Text(text) => echoed.push(text.to_string()),
                    WsMessage::Ping(_) | WsMessage::Pong(_) => {}
                    other => panic!("connection {conn}: unexpected {other:?}"),
                }
            }
            assert_eq!(echoed, expected, "connection {conn}: echoes differ");
            let mut client = writer.await.unwrap().reunite(rx).unwrap();
            client.close(None).await.unwrap();
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
    let elapsed = started.elapsed();

    let unique = (CONNECTIONS * (MESSAGES - MESSAGES / 10 + 1)) as u64; // + each "end" marker
    let duplicates = (CONNECTIONS * MESSAGES / 10) as u64;
    assert_eq!(
        app.handled.load(std::sync::atomic::Ordering::Relaxed),
        unique
    );
    assert_eq!(app.dedup.stats().duplicates, duplicates);

    let (status, body) = http_get(addr, "/stats").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["handled"], unique, "{body}");
    assert_eq!(stats["dedup"]["duplicates"], duplicates, "{body}");
    assert_eq!(stats["metrics"]["calls"]["ok"], unique, "{body}");
    assert_eq!(stats["metrics"]["calls"]["duplicate"], duplicates, "{body}");
    assert_eq!(stats["metrics"]["calls"]["error"], 0, "{body}");
    assert_eq!(
        stats["metrics"]["messages_in"],
        unique + duplicates,
        "{body}"
    );
    assert_eq!(stats["connections"]["accepted"], CONNECTIONS, "{body}");
    wait_until("every connection to close", || app.connections.open() == 0).await;
    eprintln!(
        "{} messages over {CONNECTIONS} connections in {elapsed:?}",
        CONNECTIONS * (MESSAGES + 1)
    );
}
