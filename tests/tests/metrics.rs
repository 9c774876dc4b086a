//! Per-client state lives as long as the client's connections; `/metrics` names the series.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsguard::config::{ClientIdSource, ConfigHandle, StabilityConfig};
use wsguard_examples::{echo, prometheus};
use wsguard_tests::{connect, http_get, next_text, serve, wait_until};

/// The testing preset, with the client named by the `client` query parameter.
fn clients_by_query() -> ConfigHandle {
    let mut config = StabilityConfig::testing();
    config.connection.client_id = ClientIdSource::Query;
    config.connection.client_id_key = "client".to_owned();
    ConfigHandle::new(config).unwrap()
}

#[tokio::test]
async fn client_state_is_removed_on_disconnect_and_metrics_carry_the_expected_names() {
    let config = clients_by_query();
    // The recorder first: the registry binds its exported series to it.
    let app = echo::app(&config, Some(prometheus()));
    let addr = serve(app.router.clone()).await;

    let mut alice = connect(addr, "/ws?client=alice").await;
    let mut alice_again = connect(addr, "/ws?client=alice").await;
    let mut bob = connect(addr, "/ws?client=bob").await;
    for (client, text) in [
        (&mut alice, "a1"),
        (&mut alice_again, "a2"),
        (&mut bob, "b1"),
    ] {
        client.send(WsMessage::text(text)).await.unwrap();
        assert_eq!(next_text(client).await, text);
    }
    assert_eq!(app.registry.client_count(), 2);
    assert_eq!(app.registry.client("alice").unwrap().connections, 2);
    assert_eq!(app.registry.active_connections(), 3);

    let (status, body) = http_get(addr, "/stats").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<&str> = stats["metrics"]["clients"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["alice", "bob"], "{body}");

    // Alice keeps her state while one of her connections lives.
    alice.close(None).await.unwrap();
    wait_until("alice's first connection to go", || {
        app.registry.active_connections() == 2
    })
    .await;
    assert_eq!(app.registry.client("alice").unwrap().connections, 1);
    alice_again.close(None).await.unwrap();
    bob.close(None).await.unwrap();
    wait_until("every client's state to go", || {
        app.registry.client_count() == 0
    })
    .await;
    assert!(app.registry.client("alice").is_none());
    let (_, body) = http_get(addr, "/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        stats["metrics"]["clients"]["top"],
        serde_json::json!([]),
        "{body}"
    );
    assert_eq!(stats["metrics"]["connections_active"], 0, "{body}");

    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "wsguard_calls_total",
        "wsguard_bytes_total",
        "wsguard_call_duration_seconds",
        "wsguard_connections_active",
        "wsguard_connections_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        text.contains(r#"wsguard_calls_total{route="/ws",direction="in",outcome="ok"} 3"#),
        "{text}"
    );
    assert!(!text.contains("alice"), "client ids must not become labels");
}

#[tokio::test]
async fn idle_connections_are_registered_when_they_open() {
    let config = clients_by_query();
    let app = echo::app(&config, Some(prometheus()));
    let addr = serve(app.router.clone()).await;

    // Neither client sends a message.
    let mut carol = connect(addr, "/ws?client=carol").await;
    let mut dave = connect(addr, "/ws?client=dave").await;
    wait_until("both connections to register", || {
        app.registry.active_connections() == 2
    })
    .await;
    assert_eq!(app.registry.client("carol").unwrap().connections, 1);
    assert_eq!(app.registry.client("dave").unwrap().messages_in, 0);
    let (_, body) = http_get(addr, "/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["metrics"]["connections_active"], 2, "{body}");
    assert_eq!(stats["metrics"]["clients"]["tracked"], 2, "{body}");

    // A message afterwards does not register the connection a second time.
    carol.send(WsMessage::text("c1")).await.unwrap();
    assert_eq!(next_text(&mut carol).await, "c1");
    assert_eq!(app.registry.snapshot().connections_total, 2);
    assert_eq!(app.registry.client("carol").unwrap().messages_in, 1);

    carol.close(None).await.unwrap();
    dave.close(None).await.unwrap();
    wait_until("both registrations to end", || {
        app.registry.active_connections() == 0 && app.registry.client_count() == 0
    })
    .await;
}
