//! The `echo` example's own construction (`DedupLayer::new(&config)` in the stack given to
//! `ws_route`) with a config naming a Redis store: two nodes share one window in a real Redis
//! that the test starts itself.

use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsguard::config::{ConfigHandle, DedupScope, StabilityConfig, StoreBackend};
use wsguard_examples::echo;
use wsguard_test_support::RedisServer;
use wsguard_tests::{connect, next_frame, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_echo_nodes_configured_for_redis_share_one_window() {
    let redis = RedisServer::start();
    let mut config = StabilityConfig::development();
    config.dedup.scope = DedupScope::Global;
    config.dedup.ttl = Duration::from_secs(60);
    config.dedup.fingerprint_key = Some("00112233445566778899aabbccddeeff".into());
    config.dedup.store.backend = StoreBackend::Redis;
    config.dedup.store.redis.url = redis.url();
    config.dedup.store.redis.operation_timeout = Duration::from_millis(500);
    let config = ConfigHandle::new(config).unwrap();
    let node_a = serve(echo::app(&config, None).router).await;
    let node_b = serve(echo::app(&config, None).router).await;

    let order = r#"{"order":42,"qty":1}"#;
    let mut a = connect(node_a, "/ws").await;
    a.send(WsMessage::text(order)).await.unwrap();
    assert_eq!(next_frame(&mut a).await.into_text().unwrap(), order);

    // The same order through the other node, spelled differently: dropped as a duplicate.
    let mut b = connect(node_b, "/ws").await;
    b.send(WsMessage::text(r#"{ "qty": 1, "order": 42 }"#))
        .await
        .unwrap();
    b.send(WsMessage::text("marker")).await.unwrap();
    assert_eq!(next_frame(&mut b).await.into_text().unwrap(), "marker");
    assert!(redis.dbsize() >= 2, "the window lives in Redis");
}
