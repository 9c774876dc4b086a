//! `RedisStore` against a real `redis-server` started by the test on a free loopback port.
//! These tests need real time (the server is a real process); each is bounded to seconds.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::{Service, ServiceExt, service_fn};
use wsguard_config::{DedupConfig, DedupScope, FailureMode, StoreBackend};
use wsguard_dedup::error::{BoxError, Duplicate, StoreUnavailable};
use wsguard_dedup::store::RedisStore;
use wsguard_dedup::{Dedup, DedupLayer};
use wsguard_test_support::RedisServer;

const OP_TIMEOUT: Duration = Duration::from_millis(200);

fn config(url: &str, on_error: FailureMode) -> DedupConfig {
    let mut cfg = DedupConfig {
        ttl: Duration::from_secs(30),
        scope: DedupScope::Global,
        fingerprint_key: Some("00112233445566778899aabbccddeeff".into()),
        ..DedupConfig::default()
    };
    cfg.store.backend = StoreBackend::Redis;
    cfg.store.redis.url = url.to_owned();
    cfg.store.redis.operation_timeout = OP_TIMEOUT;
    cfg.store.redis.on_error = on_error;
    // A fresh prefix per test run, in case a server is ever reused.
    cfg.store.redis.key_prefix = format!("wsguard-test:{}:", std::process::id());
    cfg
}

type Handler = tower::util::BoxCloneSyncService<String, (), BoxError>;

fn handler(calls: &Arc<AtomicUsize>) -> Handler {
    let calls = Arc::clone(calls);
    tower::util::BoxCloneSyncService::new(service_fn(move |msg: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if msg.contains("fail") {
                Err::<(), BoxError>("handler failed".into())
            } else {
                Ok(())
            }
        }
    }))
}

async fn node(cfg: &DedupConfig, calls: &Arc<AtomicUsize>) -> (DedupLayer, Dedup<Handler>) {
    let store = RedisStore::connect(&cfg.store.redis).await.unwrap();
    let layer = DedupLayer::new(cfg.clone()).store(store);
    let svc = tower::Layer::layer(&layer, handler(calls));
    (layer, svc)
}

async fn send(svc: &mut Dedup<Handler>, msg: &str) -> Result<(), BoxError> {
    svc.ready().await?.call(msg.to_owned()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_redis_deliver_each_message_exactly_once() {
    let server = RedisServer::start();
    let cfg = config(&server.url(), FailureMode::FailClosed);
    let calls = Arc::new(AtomicUsize::new(0));
    let (a_layer, mut a) = node(&cfg, &calls).await;
    // The second node picks its store from the config.
    let b_layer = DedupLayer::new(cfg.clone()).connect_store().await.unwrap();
    assert!(b_layer.handle().store().is_shared());
    let mut b = tower::Layer::layer(&b_layer, handler(&calls));

    send(&mut a, r#"{"op":"buy","qty":1}"#).await.unwrap();
    let err = send(&mut b, r#"{ "qty": 1, "op": "buy" }"#)
        .await
        .unwrap_err();
    assert!(err.is::<Duplicate>(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Racing: both nodes get every message at the same time (each claim is in flight on
    // both connections at once).
    let n = 200;
    let race = |svc: Dedup<Handler>| async move {
        let mut passed = 0;
        for i in 0..n {
            if svc
                .clone()
                .oneshot(format!(r#"{{"seq":{i}}}"#))
                .await
                .is_ok()
            {
                passed += 1;
            }
        }
        passed
    };
    let (pa, pb) = tokio::join!(race(a.clone()), race(b.clone()));
    assert_eq!(pa + pb, n);
    assert_eq!(calls.load(Ordering::SeqCst), 1 + n);
    assert_eq!(
        a_layer.stats().duplicates + b_layer.stats().duplicates,
        1 + n as u64
    );

    // A failure on node A releases the key in Redis (DEL), so the retry on node B passes.
    send(&mut a, "fail once").await.unwrap_err();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match send(&mut b, "fail once").await {
            Err(e) if e.is::<Duplicate>() => {
                assert!(Instant::now() < deadline, "key never released");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => break, // reached the handler (which fails again)
            Ok(()) => unreachable!(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_open_within_the_timeout_and_recovers() {
    let mut server = RedisServer::start();
    let cfg = config(&server.url(), FailureMode::FailOpen);
    let calls = Arc::new(AtomicUsize::new(0));
    let (layer, mut svc) = node(&cfg, &calls).await;
    send(&mut svc, "before").await.unwrap();
    assert!(
        send(&mut svc, "before")
            .await
            .unwrap_err()
            .is::<Duplicate>()
    );

    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        // Fail open: delivered even though it is a duplicate, because nobody can tell.
        send(&mut svc, "before").await.unwrap();
        assert!(
            started.elapsed() < OP_TIMEOUT + Duration::from_millis(300),
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(layer.stats().store_errors >= 3);

    server.restart();
    wait_until_deduplicating(&mut svc, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_within_the_timeout_and_recovers() {
    let mut server = RedisServer::start();
    let cfg = config(&server.url(), FailureMode::FailClosed);
    let calls = Arc::new(AtomicUsize::new(0));
    let (layer, mut svc) = node(&cfg, &calls).await;
    send(&mut svc, "before").await.unwrap();

    server.stop();
    for i in 0..3 {
        let started = Instant::now();
        let err = send(&mut svc, &format!("new {i}")).await.unwrap_err();
        assert!(err.is::<StoreUnavailable>(), "{err}");
        assert!(
            started.elapsed() < OP_TIMEOUT + Duration::from_millis(300),
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "nothing delivered while Redis was down"
    );
    assert!(layer.stats().rejected_unavailable >= 3);

    server.restart();
    wait_until_deduplicating(&mut svc, "after").await;
}

/// After Redis comes back, the store reconnects by itself: the first copy passes and the
/// second is a duplicate again.
async fn wait_until_deduplicating(svc: &mut Dedup<Handler>, msg: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if send(svc, msg).await.is_ok() && send(svc, msg).await.is_err_and(|e| e.is::<Duplicate>())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_built_from_a_config_naming_redis_uses_redis() {
    let server = RedisServer::start();
    let cfg = config(&server.url(), FailureMode::FailClosed);
    let calls = Arc::new(AtomicUsize::new(0));
    // What every server does: `DedupLayer::new(&config)`, no store wired by hand.
    let (a_layer, b_layer) = (DedupLayer::new(cfg.clone()), DedupLayer::new(cfg));
    assert!(a_layer.handle().store().is_shared());
    let mut a = tower::Layer::layer(&a_layer, handler(&calls));
    let mut b = tower::Layer::layer(&b_layer, handler(&calls));

    send(&mut a, r#"{"order":7}"#).await.unwrap();
    let err = send(&mut b, r#"{"order":7}"#).await.unwrap_err();
    assert!(err.is::<Duplicate>(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(server.dbsize(), 1, "the window is in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_whose_redis_is_down_at_start_fails_as_configured_until_redis_comes_up() {
    let mut server = RedisServer::start();
    server.stop();
    let cfg = config(&server.url(), FailureMode::FailClosed);
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = DedupLayer::new(cfg);
    let mut svc = tower::Layer::layer(&layer, handler(&calls));
    for i in 0..3 {
        let started = Instant::now();
        let err = send(&mut svc, &format!("early {i}")).await.unwrap_err();
        assert!(err.is::<StoreUnavailable>(), "{err}");
        assert!(
            started.elapsed() < OP_TIMEOUT + Duration::from_millis(300),
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    server.restart();
    wait_until_deduplicating(&mut svc, "after").await;
}

#[test]
fn a_config_whose_redis_url_is_not_a_redis_url_is_refused_at_startup() {
    let cfg = config("http://127.0.0.1:1/", FailureMode::FailOpen);
    let err = DedupLayer::try_new(cfg).unwrap_err();
    assert!(err.to_string().contains("is not a Redis URL"), "{err}");
}
